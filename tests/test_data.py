"""tucker_attention.data: real corpora offline, and the download paths run on small local files."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from tucker_attention.data import (
    TINYSHAKESPEARE_URL,
    ImageData,
    SeededSampler,
    TextData,
    augment_crop_flip,
    cifar10,
    digits,
    get_batch,
    get_tokenizer,
    image_folder,
    load_images,
    load_text,
    make_loader,
    openwebtext,
    stdlib_corpus,
    stdlib_files,
    tinyshakespeare,
)
from tucker_attention.data import text as text_module

datasets = pytest.importorskip("datasets")
PIL_Image = pytest.importorskip("PIL.Image")
datasets.disable_progress_bars()

SHAKESPEARE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
)
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tucker attention factorizes the attention tensor — ünïcödé too.",
    "A third document, a little longer than the others, to fill the stream.",
    "Short.",
]


def _gpt2_unavailable() -> str | None:
    """Why tiktoken's gpt2 encoding cannot load here (it downloads its files), or None if it can."""
    try:
        get_tokenizer("gpt2")
    except (RuntimeError, ImportError) as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def stdlib_default() -> TextData:
    return stdlib_corpus()


@pytest.fixture
def shakespeare_file(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "input.txt"
    path.parent.mkdir()
    path.write_text(SHAKESPEARE * 10, encoding="utf-8")
    return path


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    return path


def _bytes_stream(docs: list[str]) -> bytes:
    return b"".join(d.encode("utf-8") + b"\0" for d in docs)


def _png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    array = np.clip(rng.normal(value, 30, shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL_Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat/ (dark) and dog/ (bright) PNGs of mixed sizes: 5 images each."""
    root = tmp_path_factory.mktemp("folder")
    for i in range(5):
        _png(root / "cat" / f"{i}.png", (12 + i, 10), 60)
        _png(root / "dog" / f"{i}.png", (20, 20 - i), 190)
    return root


def _cifar_like(n_train: int = 9, n_test: int = 3, mode: str = "RGB") -> datasets.DatasetDict:
    """A tiny DatasetDict with CIFAR-10's columns: img (Image), label (ClassLabel)."""
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["airplane", "automobile", "bird"])}
    )
    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if mode == "RGB" else (32, 32)

    def split(n: int) -> datasets.Dataset:
        images = [PIL_Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)]},
                                          features=features)

    return datasets.DatasetDict({"train": split(n_train), "test": split(n_test)})


# ----------------------------------------------------------------------------------------------
# stdlib corpus


def test_stdlib_corpus_is_deterministic_bytes_of_the_stdlib_sources():
    a = stdlib_corpus(max_bytes=200_000)
    b = stdlib_corpus(max_bytes=200_000)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert (a.vocab_size, a.tokenizer, a.name, a.train.dtype) == (256, "bytes", "stdlib", torch.uint8)
    assert (len(a.train), len(a.val)) == (180_000, 20_000)
    # the stream is the sorted training files, concatenated: it starts with the first file's bytes
    train_paths, val_paths = stdlib_files()
    first = train_paths[0].read_bytes()[:1000]
    assert bytes(a.train[: len(first)].tolist()) == first
    assert bytes(a.val[:1000].tolist()) == val_paths[0].read_bytes()[:1000]


def test_stdlib_default_split_is_by_file_and_about_the_val_fraction(stdlib_default):
    d = stdlib_default
    train_files, val_files = set(d.info["train_files"]), set(d.info["val_files"])
    assert train_files and val_files and not train_files & val_files
    assert len(d.train) + len(d.val) == text_module.DEFAULT_STDLIB_MAX_BYTES
    assert len(d.val) / (len(d.train) + len(d.val)) == pytest.approx(0.1, abs=1e-6)
    assert d.info["stdlib_dir"] == str(Path(sysconfig.get_paths()["stdlib"]))


def test_stdlib_files_fixed_selection_rule():
    train, val = stdlib_files(val_fraction=0.25)
    everything = sorted(train + val, key=lambda p: p.name)
    assert all(p.suffix == ".py" and p.parent == everything[0].parent for p in everything)
    assert not any(p.name.startswith("_sysconfigdata") for p in everything)
    assert val == [p for i, p in enumerate(everything) if i % 4 == 3]
    assert train == [p for i, p in enumerate(everything) if i % 4 != 3]
    assert {"os.py", "typing.py"} <= {p.name for p in everything}  # real modules, top level only


def test_stdlib_uncapped_is_everything_and_roughly_the_val_fraction():
    d = stdlib_corpus(max_bytes=None)
    train, val = stdlib_files()
    assert len(d.train) == sum(p.stat().st_size for p in train)
    assert len(d.val) == sum(p.stat().st_size for p in val)
    assert 0.05 < len(d.val) / (len(d.train) + len(d.val)) < 0.2


def test_encode_decode_roundtrip(stdlib_default):
    s = "def f(x):\n    return x ** 2  # ünïcödé ✓\n"
    ids = stdlib_default.encode(s)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(s.encode("utf-8"))
    assert stdlib_default.decode(ids) == s
    assert stdlib_default.decode(torch.tensor(ids)) == s
    assert stdlib_default.eot == 0
    with pytest.raises(TypeError, match="text"):
        stdlib_default.encode(b"bytes")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_bytes": 0}, ValueError, "max_bytes must be an int >= 2, got max_bytes=0"),
        ({"max_bytes": "1000"}, TypeError, "max_bytes must be an int"),
        ({"val_fraction": 0.7}, ValueError, r"val_fraction must be in \(0.0, 0.5\], got val_fraction=0.7"),
        ({"val_fraction": 0}, ValueError, "val_fraction"),
    ],
)
def test_stdlib_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        stdlib_corpus(**kwargs)


def test_textdata_validates_its_streams():
    with pytest.raises(ValueError, match="train must be a 1-D integer tensor"):
        TextData(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 256, "x", "bytes")
    with pytest.raises(ValueError, match="val must be a 1-D integer tensor"):
        TextData(torch.zeros(3, dtype=torch.long), torch.zeros(3), 256, "x", "bytes")
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        TextData(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 256, "x", "chars")


# ----------------------------------------------------------------------------------------------
# get_batch


def test_get_batch_windows_are_shifted_slices():
    data = torch.arange(1000, dtype=torch.int32)
    x, y = get_batch(data, batch_size=8, block_size=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    offsets = x[:, :1]
    assert torch.equal(x, offsets + torch.arange(16))
    assert torch.equal(y, x + 1)
    assert (offsets >= 0).all() and (offsets + 16 < 1000).all()


def test_get_batch_reproducible_numpy_and_device(stdlib_default):
    kw = {"batch_size": 4, "block_size": 32}
    x1, y1 = get_batch(stdlib_default.train, generator=torch.Generator().manual_seed(3), **kw)
    x2, y2 = get_batch(stdlib_default.train, generator=torch.Generator().manual_seed(3), **kw)
    x3, y3 = get_batch(stdlib_default.train.numpy(), generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(x1, x2) and torch.equal(x1, x3) and torch.equal(y1, y3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    x, _ = get_batch(stdlib_default.val, device=torch.device("cpu"), **kw)
    assert x.device.type == "cpu"
    if torch.cuda.is_available():
        x, y = get_batch(stdlib_default.val, device="cuda", **kw)
        assert x.is_cuda and y.is_cuda


def test_get_batch_smallest_stream_and_errors():
    data = torch.arange(5)
    x, y = get_batch(data, batch_size=3, block_size=4)
    assert torch.equal(x, torch.arange(4).expand(3, 4)) and torch.equal(y, torch.arange(1, 5).expand(3, 4))
    with pytest.raises(ValueError, match=r"block_size must be < len\(data\).*block_size=5 and len\(data\)=5"):
        get_batch(data, batch_size=1, block_size=5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got batch_size=0"):
        get_batch(data, batch_size=0, block_size=2)
    with pytest.raises(TypeError, match="block_size must be an int"):
        get_batch(data, batch_size=1, block_size=2.0)
    with pytest.raises(ValueError, match=r"data must be 1-D \(N,\), got shape \(2, 5\)"):
        get_batch(torch.zeros(2, 5, dtype=torch.long), batch_size=1, block_size=2)
    with pytest.raises(TypeError, match="integer token ids"):
        get_batch(torch.zeros(10), batch_size=1, block_size=2)
    with pytest.raises(TypeError, match="data must be a torch.Tensor or numpy.ndarray, got list"):
        get_batch(list(range(10)), batch_size=1, block_size=2)


# ----------------------------------------------------------------------------------------------
# tinyshakespeare: the real download code, through file://


def test_tinyshakespeare_downloads_once_then_reads_the_cache(tmp_path, shakespeare_file):
    url = shakespeare_file.as_uri()
    cache = tmp_path / "cache"
    d = tinyshakespeare(cache_dir=cache, url=url)
    content = shakespeare_file.read_bytes()
    n_val = round(len(content) * 0.1)
    assert bytes(d.train.tolist()) == content[:-n_val] and bytes(d.val.tolist()) == content[-n_val:]
    assert (d.name, d.vocab_size, d.tokenizer) == ("tinyshakespeare", 256, "bytes")
    cached = Path(d.info["path"])
    assert cached.parent == cache / "tinyshakespeare" and cached.read_bytes() == content
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp file left behind

    shakespeare_file.unlink()  # a second call must not download again
    again = tinyshakespeare(cache_dir=cache, url=url)
    assert torch.equal(again.train, d.train) and torch.equal(again.val, d.val)


def test_tinyshakespeare_default_url_uses_input_txt_in_the_cache(tmp_path):
    path = tmp_path / "tinyshakespeare" / "input.txt"
    path.parent.mkdir()
    path.write_text(SHAKESPEARE, encoding="utf-8")
    d = load_text("tinyshakespeare", cache_dir=tmp_path, val_fraction=0.5)
    assert d.info["url"] == TINYSHAKESPEARE_URL
    assert d.decode(torch.cat([d.train, d.val])) == SHAKESPEARE


def test_failed_download_raises_and_leaves_nothing(tmp_path):
    url = (tmp_path / "missing.txt").as_uri()
    with pytest.raises(OSError, match="could not download"):
        tinyshakespeare(cache_dir=tmp_path / "cache", url=url)
    assert list((tmp_path / "cache" / "tinyshakespeare").iterdir()) == []


# ----------------------------------------------------------------------------------------------
# openwebtext pipeline on local files


def test_openwebtext_pipeline_json_streaming_bytes(tmp_path, jsonl_file):
    d = openwebtext(dataset_name="json", data_files=str(jsonl_file), tokenizer="bytes",
                    max_tokens=100, val_fraction=0.1, cache_dir=tmp_path)
    expected = _bytes_stream(DOCS)[:100]
    assert bytes(torch.cat([d.train, d.val]).tolist()) == expected
    assert (len(d.train), len(d.val)) == (90, 10)
    assert (d.vocab_size, d.tokenizer, d.train.dtype, d.eot) == (256, "bytes", torch.uint8, 0)
    assert int((torch.cat([d.train, d.val]) == 0).sum()) == expected.count(b"\0") >= 1  # EOT separators


def test_openwebtext_bin_cache_is_reused(tmp_path, jsonl_file):
    kw = {"dataset_name": "json", "data_files": str(jsonl_file), "tokenizer": "bytes",
          "max_tokens": None, "val_fraction": 0.25, "cache_dir": tmp_path / "cache"}
    first = openwebtext(**kw)
    cache_path = Path(first.info["cache_path"])
    assert cache_path.suffix == ".bin"
    assert np.memmap(cache_path, dtype=np.uint8, mode="r").tobytes() == _bytes_stream(DOCS)
    jsonl_file.unlink()  # the second call must come from the .bin cache
    second = openwebtext(**kw)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)


def test_openwebtext_text_loader_not_streaming(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    d = load_text("openwebtext", dataset_name="text", data_files=str(path), streaming=False,
                  tokenizer="bytes", max_tokens=None, val_fraction=0.2, cache_dir=tmp_path / "cache")
    assert bytes(torch.cat([d.train, d.val]).tolist()) == _bytes_stream(DOCS)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 2, got max_tokens=1"):
        openwebtext(dataset_name="text", data_files=str(path), tokenizer="bytes", max_tokens=1)
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        openwebtext(dataset_name="text", data_files=str(path), tokenizer="chars")


def test_openwebtext_gpt2_bpe(jsonl_file):
    reason = _gpt2_unavailable()  # tiktoken downloads the gpt2 files on first use: offline, skip
    if reason is not None:
        pytest.skip(f"tiktoken gpt2 unavailable: {reason}")
    d = openwebtext(dataset_name="json", data_files=str(jsonl_file), max_tokens=None, val_fraction=0.1)
    stream = torch.cat([d.train, d.val])
    assert (d.vocab_size, d.tokenizer, d.train.dtype, d.eot) == (50257, "gpt2", torch.int32, 50256)
    assert int((stream == 50256).sum()) == len(DOCS) and int(stream[-1]) == 50256
    assert d.decode(stream[stream != 50256]) == "".join(DOCS)
    assert d.decode(d.encode(DOCS[1])) == DOCS[1]


@pytest.fixture
def local_bpe(monkeypatch):
    """tiktoken.get_encoding("gpt2") replaced by a real tiktoken Encoding built offline (byte-level ranks,
    GPT-2's split pattern, <|endoftext|> = 256), so the BPE branch runs without tiktoken's downloads."""
    tiktoken = pytest.importorskip("tiktoken")
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    encoding = tiktoken.Encoding("local", pat_str=pattern, mergeable_ranks={bytes([i]): i for i in range(256)},
                                 special_tokens={"<|endoftext|>": 256})
    text_module._load_tokenizer.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encoding)
    yield encoding
    text_module._load_tokenizer.cache_clear()


def test_openwebtext_bpe_branch_with_a_local_encoding(tmp_path, jsonl_file, local_bpe):
    kw = {"dataset_name": "json", "data_files": str(jsonl_file), "max_tokens": None, "val_fraction": 0.1,
          "cache_dir": tmp_path}
    d = openwebtext(**kw)
    stream = torch.cat([d.train, d.val])
    assert (d.vocab_size, d.tokenizer, d.train.dtype, d.eot) == (257, "gpt2", torch.int32, 256)
    expected = sum((local_bpe.encode_ordinary(doc) + [256] for doc in DOCS), [])
    assert stream.tolist() == expected
    cached = np.memmap(d.info["cache_path"], dtype=np.uint16, mode="r")  # nanoGPT's on-disk dtype
    assert cached.tolist() == expected
    jsonl_file.unlink()
    assert torch.equal(openwebtext(**kw).val, d.val)
    assert d.decode(d.encode(DOCS[1])) == DOCS[1]


def test_gpt2_tokenizer_offline_error_is_explained(monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    text_module._load_tokenizer.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    try:
        with pytest.raises(RuntimeError, match=r"offline, use tokenizer='bytes'.*ConnectionError"):
            get_tokenizer("gpt2")
    finally:
        text_module._load_tokenizer.cache_clear()


def test_load_text_dispatch_and_errors():
    d = load_text("stdlib", max_bytes=1000)
    assert (d.name, len(d.train) + len(d.val)) == ("stdlib", 1000)
    assert load_text(max_bytes=1000).name == "stdlib"
    with pytest.raises(ValueError, match=r"name must be one of \['openwebtext', 'stdlib', 'tinyshakespeare'\], "
                       r"got name='wikitext'"):
        load_text("wikitext")
    with pytest.raises(TypeError, match="name must be a str"):
        load_text(3)


# ----------------------------------------------------------------------------------------------
# images: digits


@pytest.fixture(scope="module")
def digits8() -> ImageData:
    return digits()


def test_digits_shapes_split_and_normalization(digits8):
    d = digits8
    assert (d.num_classes, d.channels, d.image_size, d.name) == (10, 1, 8, "digits")
    assert len(d.train) + len(d.val) == 1797
    assert abs(len(d.val) - 0.2 * 1797) <= 10
    image, label = d.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and isinstance(label, int)
    assert d.train.images.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert d.train.images.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # mean/std are those of pixels in [0, 1]: un-normalizing gives back [0, 1]
    raw = d.val.images * d.std[0] + d.mean[0]
    assert raw.min().item() >= -1e-5 and raw.max().item() <= 1 + 1e-5
    # stratified: every class has about 20 % of its images in validation
    for c in range(10):
        n_val, n_train = int((d.val.labels == c).sum()), int((d.train.labels == c).sum())
        assert abs(n_val - 0.2 * (n_val + n_train)) <= 0.5


def test_digits_deterministic_seeded_and_resized(digits8):
    again = digits()
    assert torch.equal(again.train.images, digits8.train.images)
    assert torch.equal(again.val.labels, digits8.val.labels)
    other = digits(seed=1)
    assert len(other.val) == len(digits8.val) and not torch.equal(other.val.images, digits8.val.images)
    big = digits(image_size=16, val_fraction=0.5)
    assert big.train[0][0].shape == (1, 16, 16) and abs(len(big.val) - 1797 / 2) <= 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_size": 12}, ValueError, "image_size must be a multiple of 8, got 12"),
        ({"image_size": 4}, ValueError, "image_size must be an int >= 8, got image_size=4"),
        ({"val_fraction": 1.5}, ValueError, r"val_fraction must be in \(0.0, 1.0\), got val_fraction=1.5"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
    ],
)
def test_digits_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        digits(**kwargs)


# ----------------------------------------------------------------------------------------------
# images: 🤗 datasets on tiny local data


def test_image_folder_resizes_normalizes_and_splits(folder, tmp_path):
    d = image_folder(folder, image_size=16, cache_dir=tmp_path)
    assert (d.num_classes, d.channels, d.class_names, d.name) == (2, 3, ("cat", "dog"), "image_folder")
    assert (len(d.train), len(d.val)) == (8, 2)
    assert sorted(d.val[i][1] for i in range(2)) == [0, 1]  # stratified
    images = torch.stack([d.train[i][0] for i in range(len(d.train))])
    assert images.shape == (8, 3, 16, 16)
    # stats over all training images (stats_samples >= 8): normalized train pixels are mean 0, std 1
    assert torch.allclose(images.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(images.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # labels follow folder names: cat images are dark, dog images bright
    by_label = {label: x.mean().item() for x, label in (d.train[i] for i in range(len(d.train)))}
    assert by_label[0] < 0 < by_label[1]


def test_image_folder_given_stats_grayscale_and_split_folders(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 3), ("test", 2)):
        for label, value in (("a", 50), ("b", 200)):
            for i in range(n):
                _png(root / split / label / f"{i}.png", (8, 8), value, mode="L")
    d = image_folder(root, image_size=8, mean=(0.5,), std=(0.25,), cache_dir=tmp_path / "cache")
    assert (len(d.train), len(d.val), d.channels) == (6, 4, 1)
    assert (d.mean, d.std, d.class_names) == ((0.5,), (0.25,), ("a", "b"))
    for i in range(len(d.val)):
        x, label = d.val[i]
        row = d.val.dataset[i]
        raw = torch.from_numpy(np.asarray(row["image"], dtype=np.float32)) / 255
        assert x.shape == (1, 8, 8) and label == row["label"]
        assert torch.allclose(x[0], (raw - 0.5) / 0.25, atol=1e-5)
    assert sorted(d.val[i][1] for i in range(4)) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"std must be > 0 in every channel"):
        image_folder(root, std=(0.0,), mean=(0.5,), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="data_dir must be an existing folder"):
        image_folder(tmp_path / "nope")


def test_cifar10_from_save_to_disk_folder_and_in_memory(tmp_path):
    dd = _cifar_like()
    dd.save_to_disk(str(tmp_path / "cifar"))
    on_disk = cifar10(dataset_name=str(tmp_path / "cifar"))
    in_memory = cifar10(dataset_name=dd)
    for d in (on_disk, in_memory):
        assert (len(d.train), len(d.val), d.num_classes, d.channels, d.image_size) == (9, 3, 3, 3, 32)
        assert d.class_names == ("airplane", "automobile", "bird")
        x, label = d.val[1]
        assert x.shape == (3, 32, 32) and label == 1
        expected = torch.from_numpy(np.asarray(dd["test"][1]["img"], dtype=np.float32)).permute(2, 0, 1) / 255
        mean, std = torch.tensor(d.mean).view(3, 1, 1), torch.tensor(d.std).view(3, 1, 1)
        assert torch.allclose(x, (expected - mean) / std, atol=1e-5)
    assert on_disk.mean == pytest.approx(in_memory.mean) and on_disk.std == pytest.approx(in_memory.std)


def test_cifar10_options_and_errors():
    dd = _cifar_like(n_train=12)
    d = cifar10(dataset_name=dd, image_size=16, val_split=None, val_fraction=0.25, augment=True,
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), max_val=2)
    assert (len(d.train), len(d.val)) == (9, 2) and d.train[0][0].shape == (3, 16, 16)
    torch.manual_seed(0)
    assert not all(torch.equal(d.train[0][0], d.train[0][0]) for _ in range(8))  # augmented
    assert torch.equal(d.val[0][0], d.val[0][0])  # validation is never augmented
    gray = cifar10(dataset_name=_cifar_like(mode="L"), max_train=4)
    assert (gray.channels, len(gray.train), gray.train[0][0].shape) == (1, 4, (1, 32, 32))
    with pytest.raises(ValueError, match=r"val_split must be one of the data set's splits \['train', 'test'\]"):
        cifar10(dataset_name=dd, val_split="validation")
    with pytest.raises(ValueError, match="image_column must be one of the columns"):
        cifar10(dataset_name=dd, image_column="image")
    with pytest.raises(ValueError, match=r"mean must have one value per channel \(3\)"):
        cifar10(dataset_name=dd, mean=(0.5,), std=(0.2,))
    with pytest.raises(TypeError, match="dataset_name must be"):
        cifar10(dataset_name=42)


def test_load_images_dispatch(folder, tmp_path):
    assert load_images().name == "digits"
    assert load_images("image_folder", data_dir=folder, image_size=8, cache_dir=tmp_path).image_size == 8
    assert load_images("cifar10", dataset_name=_cifar_like()).num_classes == 3
    with pytest.raises(ValueError,
                       match=r"name must be one of \['cifar10', 'digits', 'image_folder'\], got name='mnist'"):
        load_images("mnist")


# ----------------------------------------------------------------------------------------------
# loaders and augmentation


def test_make_loader_order_depends_only_on_seed_and_epoch(digits8):
    def epochs(loader, n):
        return [torch.cat([y for _, y in loader]) for _ in range(n)]

    a = epochs(make_loader(digits8.val, batch_size=64, shuffle=True, seed=7), 2)
    b = epochs(make_loader(digits8.val, batch_size=64, shuffle=True, seed=7), 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])
    assert torch.equal(a[0].sort().values, digits8.val.labels.sort().values)  # a permutation

    resumed = make_loader(digits8.val, batch_size=64, shuffle=True, seed=7)
    resumed.sampler.set_epoch(1, start=128)  # resume in epoch 1 after two batches
    assert len(resumed) == -(-(len(digits8.val) - 128) // 64)
    assert torch.equal(torch.cat([y for _, y in resumed]), a[1][128:])

    x, y = next(iter(make_loader(digits8.val, batch_size=5, shuffle=False, seed=0)))
    assert x.shape == (5, 1, 8, 8) and y.dtype == torch.int64 and torch.equal(y, digits8.val.labels[:5])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got batch_size=0"):
        make_loader(digits8.val, batch_size=0, shuffle=True, seed=0)


def test_seeded_sampler_replicas_cover_everything():
    parts = [list(SeededSampler(10, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    assert set(sum(parts, [])) == set(range(10))
    assert list(SeededSampler(10, seed=3)) == SeededSampler(10, seed=3).indices(0)
    with pytest.raises(ValueError, match="rank must be < num_replicas=2, got 2"):
        SeededSampler(10, num_replicas=2, rank=2)


def test_augment_crop_flip():
    image = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6)
    assert torch.equal(augment_crop_flip(image, padding=0, flip=False), image)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    outs = [augment_crop_flip(image, padding=2, generator=g1) for _ in range(10)]
    assert all(torch.equal(o, augment_crop_flip(image, padding=2, generator=g2)) for o in outs)
    assert all(o.shape == image.shape for o in outs) and len({o.sum().item() for o in outs}) > 1
