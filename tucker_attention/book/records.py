"""The book's records: device setup, recorded result files, text tables, configurations, a layer's kernel call.

Everything a chapter *computes or reads* before it draws: the device and problem sizes
(``pick_device``, ``scale_for_device``, ``environment``), recorded runs under ``book/results/``
(``results_dir``, ``load_results``), plain-text tables (``format_table``), what a layer handed its
attention kernel (``capture_attention``), and the configurations whose budgets the chapters compare
(``family_configs``, ``gpt2_small_configs``, ``budget_rows``, ``rank_layer_sizes``). Every number comes
from the package proper (``tucker_attention.counting``, the layers themselves).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__, counting
from ..attention import available_backends, registry
from ..attention.backends import flash_attn_module, resolve_backend

__all__ = [
    "RANK_METHODS", "AttentionCall", "BudgetRow", "Config", "budget_rows", "capture_attention", "environment",
    "family_configs", "format_table", "gpt2_small_configs", "load_results", "on_gpu", "pick_device",
    "print_table", "rank_layer_sizes", "results_dir", "scale_for_device",
]


Config = tuple[str, str, dict]
"""``(label, method, sizes)``: a labelled argument set of ``counting.attention_params``."""


# ------------------------------------------------------------------------------------------ device
def on_gpu() -> bool:
    """True when a CUDA device is usable (a Colab GPU runtime, a workstation GPU)."""
    return torch.cuda.is_available()


def pick_device() -> str:
    """``"cuda"`` on a GPU runtime, else ``"cpu"`` — the ``device`` every chapter computes on."""
    return "cuda" if on_gpu() else "cpu"


def scale_for_device(*, cpu: Any, gpu: Any, device: str | torch.device | None = None) -> Any:
    """Return ``gpu`` when computing on CUDA, else ``cpu``: how chapters pick their problem sizes.

    ``device`` defaults to ``pick_device()``; pass the chapter's ``device`` to keep the two in step.

    >>> scale_for_device(cpu=256, gpu=4096, device="cpu")
    256
    """
    dev = torch.device(pick_device() if device is None else device)
    return gpu if dev.type == "cuda" else cpu


def environment() -> str:
    """One line per fact a reader needs to interpret a chapter's numbers: versions, device, kernels."""
    lines = [f"tucker_attention {__version__} | torch {torch.__version__} | python {platform.python_version()}"]
    if on_gpu():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"device: cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"{torch.cuda.device_count()} GPU(s))")
    else:
        lines.append(f"device: cpu ({torch.get_num_threads()} threads; no CUDA device: sizes are scaled down)")
    flash = "installed" if flash_attn_module() is not None else "not installed"
    lines.append(f"attention backends: {', '.join(available_backends())} (flash-attn: {flash})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- recorded results
def results_dir(start: str | os.PathLike | None = None) -> Path:
    """The folder ``book/results/`` of recorded (GPU) runs.

    Looked for from ``start`` (default: the working directory) upwards — a chapter runs with ``book/`` as
    its working directory, a script from the repository root — then next to the installed package
    (an editable install lives in the repository). Returns the first existing folder, else the
    repository's ``book/results`` path (which may not exist: no run has been recorded).
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    candidates = []
    for folder in (here, *here.parents):
        candidates += [folder / "book" / "results"]
        if folder.name == "book":
            candidates.append(folder / "results")
    repo_default = Path(__file__).resolve().parents[2] / "book" / "results"
    candidates.append(repo_default)
    for c in candidates:
        if c.is_dir():
            return c
    return repo_default


def load_results(pattern: str = "*.json*", directory: str | os.PathLike | None = None) -> list[dict]:
    """All records in the files matching ``pattern`` in ``directory`` (default ``results_dir()``).

    A ``.json`` file holds one record (an object) or a list of records; a ``.jsonl`` file one record per
    line. Each record gets ``"_source"`` (the file name). Returns ``[]`` when nothing has been recorded.
    Raises ``ValueError`` naming the file and line of a record that is not a JSON object.
    """
    folder = Path(directory) if directory is not None else results_dir()
    if not folder.is_dir():
        return []
    records: list[dict] = []
    for path in sorted(folder.glob(pattern)):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            items = [(i + 1, json.loads(line)) for i, line in enumerate(text.splitlines()) if line.strip()]
        else:
            data = json.loads(text)
            items = [(None, r) for r in (data if isinstance(data, list) else [data])]
        for line, rec in items:
            if not isinstance(rec, dict):
                where = f"{path.name}" + (f" line {line}" if line else "")
                raise ValueError(f"every result record must be a JSON object; {where} holds {type(rec).__name__}")
            records.append({**rec, "_source": path.name})
    return records


# -------------------------------------------------------------------------------------------- tables
def _fmt(value: Any, floatfmt: str) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def format_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], *, floatfmt: str = ".4g") -> str:
    """A plain-text table: ints with thousands separators, floats by ``floatfmt``, ``None`` as "—".

    Text columns are left-aligned, numeric ones right-aligned. Raises ``ValueError`` if a row's length
    differs from ``len(headers)``.
    """
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != len(headers):
            raise ValueError(f"row {i} has {len(r)} cells but there are {len(headers)} headers: {r!r}")
    cells = [[_fmt(v, floatfmt) for v in r] for r in rows]
    numeric = [all(isinstance(r[j], (int, float)) or r[j] is None for r in rows) and bool(rows)
               for j in range(len(headers))]
    widths = [max([len(h)] + [len(c[j]) for c in cells]) for j, h in enumerate(headers)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], *, floatfmt: str = ".4g") -> None:
    """Print ``format_table(rows, headers, floatfmt=floatfmt)``."""
    print(format_table(rows, headers, floatfmt=floatfmt))


# --------------------------------------------------------------------------- looking inside a layer
@dataclass(frozen=True)
class AttentionCall:
    """What a layer handed to the attention kernel in one forward pass (``capture_attention``).

    q: (B, H_q, N, D) queries. k: (B, H_kv, S, D) keys. v: (B, H_kv, S, D_v) values. o: (B, H_q, N, D_v)
    the kernel's output. scale, causal: as passed. backend: the kernel that ran ("flash" | "sdpa" | "math").
    y: (B, N, d) the layer's output.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    scale: float
    causal: bool
    backend: str
    y: torch.Tensor


def capture_attention(layer: torch.nn.Module, x: torch.Tensor, *, causal: bool = False, cache=None,
                      positions: torch.Tensor | None = None) -> AttentionCall:
    """Run ``layer`` on ``x`` through its public steps and return the q, k, v its kernel gets, and its output.

    ``layer.qkv`` (queries, keys and values, appending to ``cache``), ``layer.attention`` (the kernel) and
    ``layer.output`` are exactly what ``layer(x, causal=, cache=, positions=)`` runs, so ``y`` is its output.
    """
    q, k, v = layer.qkv(x, cache=cache, positions=positions)
    o = layer.attention(q, k, v, causal=causal, cache=cache)
    return AttentionCall(q=q, k=k, v=v, o=o, scale=layer.scale, causal=causal,
                         backend=resolve_backend(layer.backend, q, k, v), y=layer.output(o))


# -------------------------------------------------------------------------------- budgets (Table 1)
@dataclass(frozen=True)
class BudgetRow:
    """One method at one size: its attention parameters and KV cache per token (per layer)."""

    label: str
    method: str
    sizes: dict
    params: int
    kv_per_token: int


def budget_rows(configs: Iterable[Config], d_model: int, n_heads: int) -> list[BudgetRow]:
    """``counting.attention_params`` and ``counting.kv_cache_per_token`` of each configuration.

    Raises the package's ``ValueError``/``TypeError`` if a configuration does not fit ``d_model, n_heads``.
    """
    return [BudgetRow(label, method, dict(sizes),
                      counting.attention_params(method, d_model, n_heads, **sizes),
                      counting.kv_cache_per_token(method, d_model, n_heads, **sizes))
            for label, method, sizes in configs]


def family_configs(*, n_kv_heads: int, kv_latent: int, ranks: Sequence[int],
                   q_latent: int | None = None) -> list[Config]:
    """One configuration per method of the registry (``attention.METHODS``: MHA, GQA, MQA, MLA, Tucker) at
    comparable settings, labelled like the models label them (``GQA n_kv=4``, ``MLA d_c=128``, ...).

    MLA uses one shared K/V latent of width ``kv_latent`` and ``q_latent`` (default: ``kv_latent``).
    """
    configs = []
    for method in RANK_METHODS:
        sizes = rank_layer_sizes(method, n_kv_heads=n_kv_heads, q_latent=q_latent or kv_latent, kv_latent=kv_latent,
                                 separate_kv=False, ranks=ranks)
        sizes = {k: v for k, v in sizes.items() if v is not False}
        configs.append((registry.spec(method).label(sizes), method, sizes))
    return configs


def gpt2_small_configs() -> list[Config]:
    """The configurations of the paper's Table 2 (GPT-2 small), from ``counting.gpt2_small_table``."""
    return [(row.label, row.method, row.sizes) for row in counting.gpt2_small_table()]


RANK_METHODS = registry.method_names()
"""Every method of the package's registry (``attention.METHODS``)."""


def rank_layer_sizes(method: str, *, n_kv_heads: int, q_latent: int, kv_latent: int, separate_kv: bool,
                     ranks: Sequence[int]) -> dict:
    """The ``attention.build`` size arguments of ``method`` picked from a full set of widget settings
    (the method's size fields in ``attention.METHODS``).

    >>> rank_layer_sizes("gqa", n_kv_heads=2, q_latent=8, kv_latent=4, separate_kv=False, ranks=(2, 8, 4))
    {'n_kv_heads': 2}
    """
    settings = {"n_kv_heads": n_kv_heads, "q_latent": q_latent, "kv_latent": kv_latent, "separate_kv": separate_kv,
                "ranks": tuple(ranks)}
    return {k: v for k, v in settings.items() if k in registry.spec(method).sizes}
