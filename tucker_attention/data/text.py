"""Text data: a real corpus that is on every machine, and the real big ones when there is internet.

Three corpora, one result type (:class:`TextData`: a train and a validation stream of token ids):

- :func:`stdlib_corpus` — **offline default.** Byte-level (vocab 256) text built from the Python
  standard library's own ``.py`` source files: real, human-written text that every Python install
  carries, so tests and chapters run on CI machines without internet.
- :func:`tinyshakespeare` — Karpathy's 1 MB ``input.txt``, byte-level, downloaded once into a cache.
- :func:`openwebtext` — any 🤗 ``datasets`` text corpus (OpenWebText by default, streamed), GPT-2 BPE
  via ``tiktoken`` nanoGPT style (an end-of-text token after every document), optional ``.bin`` cache.

:func:`get_batch` draws nanoGPT-style random windows ``x, y`` from a stream.

Token dtypes (documented, deliberately compact): byte-level streams are ``torch.uint8``, GPT-2 BPE
streams are ``torch.int32`` (``.bin`` caches on disk are ``uint16``, as nanoGPT's). :func:`get_batch`
always returns ``int64``, which is what ``nn.Embedding`` and ``F.cross_entropy`` take.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write
from ..validation import check_choice, check_float, check_int

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
OPENWEBTEXT = "Skylion007/openwebtext"

DEFAULT_STDLIB_MAX_BYTES = 4_000_000
"""Default size cap of :func:`stdlib_corpus`: 3.6 MB train + 0.4 MB validation at ``val_fraction=0.1``
(the whole selection is about 4.7 MB on Python 3.11) — minutes of training on a CPU, and the same size
on every Python version whose standard library is at least that large."""

DEFAULT_OPENWEBTEXT_MAX_TOKENS = 10_000_000
"""Default number of tokens :func:`openwebtext` collects (about 40 MB of text; ~20 s to tokenize)."""

TOKENIZERS = ("bytes", "gpt2")

_EXTRA_HINT = 'install the data extra: pip install "tucker-attention[data]"'


# ----------------------------------------------------------------------------------------------
# optional dependencies


def _import_optional(module: str) -> Any:
    """Import an optional dependency, or fail with the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module!r} is needed here but is not installed; {_EXTRA_HINT}") from e


def default_cache_dir() -> Path:
    """Where downloads are cached: ``$TUCKER_ATTENTION_CACHE``, else ``$XDG_CACHE_HOME/tucker_attention``,
    else ``~/.cache/tucker_attention``."""
    if os.environ.get("TUCKER_ATTENTION_CACHE"):
        return Path(os.environ["TUCKER_ATTENTION_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tucker_attention"


# ----------------------------------------------------------------------------------------------
# tokenizers


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer as the data pipeline needs it.

    ``eot`` separates documents in multi-document streams: GPT-2's ``<|endoftext|>`` (50256) for
    ``"gpt2"``; the NUL byte (0), which never occurs in text, for ``"bytes"``.
    """

    name: str
    vocab_size: int
    eot: int
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    np_dtype: Any  # on-disk dtype of a token stream
    torch_dtype: torch.dtype  # in-memory dtype of a token stream


def _bytes_encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _bytes_decode(ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def get_tokenizer(name: str = "bytes") -> Tokenizer:
    """The tokenizer called ``name``: ``"bytes"`` (UTF-8 bytes, vocab 256) or ``"gpt2"`` (tiktoken BPE,
    vocab 50257). The GPT-2 encoding files are downloaded by tiktoken on first use (then cached in
    ``$TIKTOKEN_CACHE_DIR``); without internet and without that cache, ``"gpt2"`` raises RuntimeError."""
    return _load_tokenizer(check_choice("tokenizer", name, TOKENIZERS))


@functools.cache
def _load_tokenizer(name: str) -> Tokenizer:
    if name == "bytes":
        return Tokenizer("bytes", 256, 0, _bytes_encode, _bytes_decode, np.uint8, torch.uint8)
    tiktoken = _import_optional("tiktoken")
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come from requests/urllib3/ssl: catch them all
        raise RuntimeError(
            "tiktoken could not load the 'gpt2' encoding: it downloads vocab.bpe and encoder.json from "
            "openaipublic.blob.core.windows.net on first use and caches them in $TIKTOKEN_CACHE_DIR; "
            f"offline, use tokenizer='bytes'. The error was: {type(e).__name__}: {e}"
        ) from e
    return Tokenizer(
        "gpt2", enc.n_vocab, enc.eot_token, enc.encode_ordinary,
        lambda ids: enc.decode([int(i) for i in ids]), np.uint16, torch.int32,
    )


# ----------------------------------------------------------------------------------------------
# the result type


@dataclass
class TextData:
    """A tokenized corpus: two 1-D streams of token ids and how to read them.

    Attributes:
        train: (N_train,) token ids; ``uint8`` for ``tokenizer="bytes"``, ``int32`` for ``"gpt2"``.
        val: (N_val,) token ids, same dtype.
        vocab_size: number of distinct ids (256 for bytes, 50257 for GPT-2).
        name: corpus name (``"stdlib"``, ``"tinyshakespeare"``, ``"openwebtext"``, ...).
        tokenizer: ``"bytes"`` or ``"gpt2"``.
        info: provenance (files, URL, cache path, ...); not part of the repr.
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    name: str
    tokenizer: str
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_choice("tokenizer", self.tokenizer, TOKENIZERS)
        for split in ("train", "val"):
            t = getattr(self, split)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{split} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise ValueError(
                    f"{split} must be a 1-D integer tensor of token ids, got shape "
                    f"{tuple(t.shape)} and dtype {t.dtype}"
                )

    def __repr__(self) -> str:
        return (
            f"TextData(name={self.name!r}, tokenizer={self.tokenizer!r}, vocab_size={self.vocab_size}, "
            f"train={len(self.train):,} tokens, val={len(self.val):,} tokens, dtype={self.train.dtype})"
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (GPT-2: ``encode_ordinary``, special tokens are plain text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return get_tokenizer(self.tokenizer).encode(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids (bytes: invalid UTF-8, e.g. a cut multi-byte character, becomes U+FFFD)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return get_tokenizer(self.tokenizer).decode(ids)

    @property
    def eot(self) -> int:
        """The id that separates documents (see :class:`Tokenizer`)."""
        return get_tokenizer(self.tokenizer).eot


def _split_stream(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``1 - val_fraction`` of a stream for training, the rest for validation (both non-empty)."""
    n = len(tokens)
    n_val = max(1, round(n * val_fraction))
    if n < 2 or n_val >= n:
        raise ValueError(
            f"a corpus of {n} tokens is too small to split with val_fraction={val_fraction}: "
            "both splits need at least one token"
        )
    return tokens[: n - n_val], tokens[n - n_val :]


# ----------------------------------------------------------------------------------------------
# 1. the standard library's own source: offline, on every machine


def stdlib_files(*, val_fraction: float = 0.1) -> tuple[list[Path], list[Path]]:
    """The fixed selection of standard-library sources behind :func:`stdlib_corpus`, split by file.

    Selection: every ``*.py`` directly inside ``sysconfig.get_paths()["stdlib"]`` — the top-level modules
    only, so packages (``asyncio/``, ``email/``, ...) and in particular ``test/``, ``idlelib/``,
    ``lib2to3/``, ``site-packages/`` are never descended into — minus ``_sysconfigdata_*.py``, which is
    generated per platform. Sorted by file name (code-point order, not locale). With
    ``k = round(1 / val_fraction)``, file ``i`` (0-based) goes to validation when ``i % k == k - 1``.

    Returns:
        (train_paths, val_paths): disjoint, each sorted.
    """
    val_fraction = check_float("val_fraction", val_fraction, low=0.0, high=0.5, low_open=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("_sysconfigdata")),
        key=lambda p: p.name,
    )
    if not files:
        raise FileNotFoundError(
            f"no *.py sources in the standard library folder {str(root)!r} (a stripped Python?); "
            "use load_text('tinyshakespeare') instead"
        )
    k = max(2, round(1 / val_fraction))
    train = [p for i, p in enumerate(files) if i % k != k - 1]
    val = [p for i, p in enumerate(files) if i % k == k - 1]
    return train, val


def _read_capped(paths: Sequence[Path], cap: int | None) -> tuple[bytes, list[str]]:
    """Concatenate files in order, stopping (mid-file if needed) once ``cap`` bytes are read."""
    chunks: list[bytes] = []
    used: list[str] = []
    total = 0
    for p in paths:
        if cap is not None and total >= cap:
            break
        b = p.read_bytes()
        if cap is not None:
            b = b[: cap - total]
        chunks.append(b)
        used.append(p.name)
        total += len(b)
    return b"".join(chunks), used


def stdlib_corpus(
    *, max_bytes: int | None = DEFAULT_STDLIB_MAX_BYTES, val_fraction: float = 0.1
) -> TextData:
    """Byte-level corpus (vocab 256) of the Python standard library's own source code. Offline.

    Files are chosen and split by :func:`stdlib_files` (train and validation never share a file), then
    each split's files are concatenated in sorted order and cut to its share of ``max_bytes``:
    ``round(max_bytes * (1 - val_fraction))`` bytes of training text and the rest for validation (the
    last file of a split may be cut mid-way). The result depends only on the Python version's standard
    library: the same bytes on every machine with the same Python version. Nothing is cached; it loads
    in well under a second.

    Args:
        max_bytes: total size cap (train + val), ``None`` for everything (about 4.7 MB on 3.11).
        val_fraction: fraction of files (and of ``max_bytes``) for validation, ``0 < f <= 0.5``.

    Returns:
        TextData with ``uint8`` streams ``train`` (N_train,), ``val`` (N_val,); ``info`` lists the files.
    """
    if max_bytes is not None:
        max_bytes = check_int("max_bytes", max_bytes, low=2)
    train_paths, val_paths = stdlib_files(val_fraction=val_fraction)
    train_cap = val_cap = None
    if max_bytes is not None:
        val_cap = max(1, round(max_bytes * val_fraction))
        train_cap = max_bytes - val_cap
    train_bytes, train_used = _read_capped(train_paths, train_cap)
    val_bytes, val_used = _read_capped(val_paths, val_cap)
    return TextData(
        train=torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val_bytes), dtype=torch.uint8),
        vocab_size=256,
        name="stdlib",
        tokenizer="bytes",
        info={
            "stdlib_dir": str(Path(sysconfig.get_paths()["stdlib"])),
            "train_files": train_used,
            "val_files": val_used,
            "max_bytes": max_bytes,
        },
    )


# ----------------------------------------------------------------------------------------------
# 2. TinyShakespeare: one file, downloaded once


def download(url: str, path: str | os.PathLike[str], *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``path`` unless ``path`` exists; atomic (temp file + ``os.replace``).

    Any URL ``urllib`` opens works, ``file://`` included (that is how the tests run it offline).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {url!r}")
    path = Path(path)
    if path.is_file():
        return path

    def write(f: Any) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)

    try:
        atomic_write(path, write)
    except OSError as e:  # URLError is an OSError
        raise OSError(
            f"could not download {url!r} to {str(path)!r} ({type(e).__name__}: {e}); without internet, "
            "use load_text('stdlib'), or put the file at that path yourself"
        ) from e
    if path.stat().st_size == 0:
        path.unlink()
        raise OSError(f"downloaded an empty file from {url!r}")
    return path


def tinyshakespeare(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    url: str = TINYSHAKESPEARE_URL,
    val_fraction: float = 0.1,
) -> TextData:
    """Karpathy's TinyShakespeare (about 1.1 MB), byte-level; the first ``1 - val_fraction`` is train.

    The file is downloaded once to ``<cache_dir>/tinyshakespeare/input.txt`` (another ``url`` gets its
    own file name, keyed by the URL's hash) and read from there afterwards — no network needed then.

    Args:
        cache_dir: cache folder; default :func:`default_cache_dir`.
        url: where to download from (any ``urllib`` URL, e.g. ``file:///path/input.txt``).
        val_fraction: validation fraction of the bytes, ``0 < f < 1``.
    """
    val_fraction = check_float("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = "input.txt" if url == TINYSHAKESPEARE_URL else f"input-{_hash(url)}.txt"
    path = download(url, cache / "tinyshakespeare" / name)
    tokens = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    train, val = _split_stream(tokens, val_fraction)
    return TextData(
        train, val, vocab_size=256, name="tinyshakespeare", tokenizer="bytes",
        info={"url": url, "path": str(path)},
    )


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# 3. OpenWebText (or any 🤗 text data set): streamed, BPE-tokenized, optionally cached as .bin


def openwebtext(
    *,
    split: str = "train",
    streaming: bool = True,
    max_tokens: int | None = DEFAULT_OPENWEBTEXT_MAX_TOKENS,
    dataset_name: str = OPENWEBTEXT,
    data_files: str | Sequence[str] | dict[str, Any] | None = None,
    val_fraction: float = 0.0005,
    cache_dir: str | os.PathLike[str] | None = None,
    tokenizer: str = "gpt2",
    text_column: str = "text",
) -> TextData:
    """A text data set from 🤗 ``datasets``, tokenized nanoGPT style, the first ``max_tokens`` tokens.

    Documents are read in the data set's order, each encoded (GPT-2: ``encode_ordinary``) and followed
    by the end-of-text id (:class:`Tokenizer`), until ``max_tokens`` are collected; the last
    ``round(n * val_fraction)`` tokens (at least one) are validation. Any ``load_dataset`` source works:
    ``dataset_name="json"`` or ``"text"`` with ``data_files=<local files>`` runs offline.

    With ``cache_dir``, the collected stream is saved to ``<cache_dir>/openwebtext/<key>.bin``
    (``uint16`` for GPT-2, ``uint8`` for bytes; read back with ``np.memmap``), the key hashing
    ``dataset_name, data_files, split, max_tokens, tokenizer, text_column`` — change the files behind a
    path and you must delete the cache. ``cache_dir`` is also given to ``load_dataset``.

    Args:
        split: data set split to read.
        streaming: stream (no full download: OpenWebText is 54 GB) or download and prepare it first.
        max_tokens: stop after this many tokens; ``None`` reads the whole split.
        val_fraction: ``0 < f < 1``.
        tokenizer: ``"gpt2"`` (needs tiktoken's encoding files, see :func:`get_tokenizer`) or ``"bytes"``.
        text_column: the column holding the text.

    Returns:
        TextData with ``int32`` (GPT-2) or ``uint8`` (bytes) streams.
    """
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, low=2)
    val_fraction = check_float("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    tok = get_tokenizer(tokenizer)
    for arg, value in (("split", split), ("dataset_name", dataset_name), ("text_column", text_column)):
        if not isinstance(value, str):
            raise TypeError(f"{arg} must be a str, got {value!r}")
    key_files = data_files if data_files is None or isinstance(data_files, str) else (
        dict(data_files) if isinstance(data_files, dict) else list(data_files)
    )
    bin_path = None
    if cache_dir is not None:
        key = _hash(dataset_name, key_files, split, max_tokens, tokenizer, text_column)
        bin_path = Path(cache_dir) / "openwebtext" / f"{key}.bin"

    if bin_path is not None and bin_path.is_file():
        array = np.asarray(np.memmap(bin_path, dtype=tok.np_dtype, mode="r"))
    else:
        datasets = _import_optional("datasets")
        ds = datasets.load_dataset(
            dataset_name, data_files=data_files, split=split, streaming=streaming,
            cache_dir=None if cache_dir is None else str(Path(cache_dir) / "hf"),
        )
        array = _tokenize_documents((row[text_column] for row in ds), tok, max_tokens)
        if bin_path is not None:
            atomic_write(bin_path, lambda f: f.write(array.tobytes()))
    tokens = torch.from_numpy(array.astype(np.int32 if tok.torch_dtype == torch.int32 else np.uint8))
    train, val = _split_stream(tokens, val_fraction)
    return TextData(
        train, val, vocab_size=tok.vocab_size, name=dataset_name.rsplit("/", 1)[-1], tokenizer=tokenizer,
        info={"dataset_name": dataset_name, "data_files": key_files, "split": split,
              "cache_path": None if bin_path is None else str(bin_path)},
    )


def _tokenize_documents(texts: Any, tok: Tokenizer, max_tokens: int | None) -> np.ndarray:
    """Encode documents (each followed by ``tok.eot``) into one stream of at most ``max_tokens`` ids."""
    parts: list[np.ndarray] = []
    total = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"text column must hold str, got {type(text).__name__}")
        ids = tok.encode(text)
        ids.append(tok.eot)
        parts.append(np.asarray(ids, dtype=tok.np_dtype))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if not parts:
        raise ValueError("the data set has no documents")
    stream = np.concatenate(parts)
    return stream if max_tokens is None else stream[:max_tokens]


# ----------------------------------------------------------------------------------------------
# dispatch and batches

TEXT_LOADERS: dict[str, Callable[..., TextData]] = {
    "stdlib": stdlib_corpus,
    "tinyshakespeare": tinyshakespeare,
    "openwebtext": openwebtext,
}


def load_text(name: str = "stdlib", **kwargs: Any) -> TextData:
    """Load a corpus by name: ``"stdlib"`` (offline), ``"tinyshakespeare"``, ``"openwebtext"``;
    ``kwargs`` go to :func:`stdlib_corpus`, :func:`tinyshakespeare` or :func:`openwebtext`."""
    check_choice("name", name, sorted(TEXT_LOADERS))
    return TEXT_LOADERS[name](**kwargs)


def get_batch(
    data: torch.Tensor | np.ndarray,
    *,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows from a token stream, nanoGPT style.

    Offsets ``i ~ U{0, ..., N - block_size - 1}`` are drawn with ``generator`` (a CPU generator; default
    torch's global one); ``x = data[i : i + block_size]`` and ``y = data[i + 1 : i + block_size + 1]``.

    Args:
        data: (N,) integer token ids, ``N > block_size``; a tensor or a NumPy array (e.g. a memmap).
        batch_size: B >= 1.
        block_size: T >= 1.
        generator: CPU ``torch.Generator`` for reproducible batches.
        device: where x and y go (on CUDA: pinned memory, non-blocking copy).

    Returns:
        x, y: (B, T) ``int64`` on ``device``; ``y[:, :-1] == x[:, 1:]``.
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    block_size = check_int("block_size", block_size, low=1)
    if isinstance(data, np.ndarray):
        kind = data.dtype.kind
    elif isinstance(data, torch.Tensor):
        kind = "f" if (data.dtype.is_floating_point or data.dtype.is_complex) else (
            "b" if data.dtype == torch.bool else "i"
        )
    else:
        raise TypeError(f"data must be a torch.Tensor or numpy.ndarray, got {type(data).__name__}")
    if kind not in "iu":
        raise TypeError(f"data must hold integer token ids, got dtype {data.dtype}")
    if data.ndim != 1:
        raise ValueError(f"data must be 1-D (N,), got shape {tuple(data.shape)}")
    if len(data) <= block_size:
        raise ValueError(
            f"block_size must be < len(data) (a window needs block_size + 1 tokens), got "
            f"block_size={block_size} and len(data)={len(data)}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = torch.device(device)

    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    if isinstance(data, np.ndarray):
        offsets = ix.numpy()[:, None] + np.arange(block_size + 1)
        windows = torch.from_numpy(data[offsets].astype(np.int64))
    else:
        windows = data.unfold(0, block_size + 1, 1)[ix].to(torch.int64)  # (B, T + 1)
    x = windows[:, :-1].contiguous()
    y = windows[:, 1:].contiguous()
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
