"""Helpers the book's chapters share: device setup, result files, text tables, figures and widgets.

Only presentation lives here. Every number a helper draws comes from the package proper
(``tucker_attention.counting`` for parameters and KV caches, the layers themselves for tensors), so a
chapter that uses a helper still computes what it shows. The conventions, so that chapters agree:

- ``device = book.pick_device()`` in every chapter's first cell; ``book.scale_for_device(cpu=..., gpu=...)``
  picks problem sizes (a chapter runs in seconds on 2 CPU cores and grows by itself on a GPU).
- Figure helpers take a matplotlib ``Axes`` (``bar_budget``, ``plot_cache_vs_length``, ``plot_mask``,
  ``plot_recorded_timings``) or return a ``Figure`` (``budget_figure``, ``cache_figure``) and never call
  ``plt.show()``; the chapter (or a widget callback) does. Methods keep one colour across the book
  (``METHOD_COLORS``).
- Widgets (``budget_widget``, ``cache_widget``) are ``ipywidgets.interactive_output`` boxes whose default
  state is already a complete figure: the static website shows that saved state.
- A *configuration* is ``(label, method, sizes)``, where ``method`` and ``sizes`` are exactly the arguments of
  ``tucker_attention.counting.attention_params`` (e.g. ``("Tucker [8,128,64]", "tucker", {"ranks": (8, 128, 64)})``).

Nothing in the package imports this module; it imports matplotlib and ipywidgets (core dependencies)
lazily, so ``import tucker_attention`` stays light.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__, counting
from .attention import available_backends
from .attention.backends import flash_attn_module, resolve_backend

__all__ = [
    "METHOD_COLORS", "TIMING_KEYS", "AttentionCall", "BudgetRow", "Config", "bar_budget", "budget_figure",
    "budget_rows", "budget_widget", "cache_figure", "cache_widget", "capture_attention", "environment",
    "family_configs", "figure_widget", "format_table", "gpt2_small_configs", "load_results", "on_gpu", "pick_device",
    "plot_cache_vs_length", "plot_mask", "plot_recorded_timings", "print_table", "results_dir", "scale_for_device",
]

Config = tuple[str, str, dict]
"""``(label, method, sizes)``: a labelled argument set of ``counting.attention_params``."""

METHOD_COLORS: dict[str, str] = {"mha": "C0", "gqa": "C1", "mqa": "C2", "mla": "C3", "tucker": "C4"}
"""One colour per method family, used by every figure of the book."""

_LINESTYLES = ("-", "--", ":", "-.")


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
    repo_default = Path(__file__).resolve().parent.parent / "book" / "results"
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


def capture_attention(layer: torch.nn.Module, x: torch.Tensor, **forward_kwargs) -> AttentionCall:
    """Run ``layer(x, **forward_kwargs)`` and return the q, k, v the layer gave the kernel, and its output.

    Every layer of the package calls ``attend`` once per forward pass (``AttentionLayer.forward``); this
    wraps that call for the duration of the pass (the module attribute is restored afterwards, also on
    error). Raises ``RuntimeError`` if the kernel was not called exactly once.
    """
    from .attention import base

    calls: list[tuple] = []
    original = base.attend

    def spy(q, k, v, **kw):
        o = original(q, k, v, **kw)
        calls.append((q, k, v, o, kw))
        return o

    base.attend = spy
    try:
        y = layer(x, **forward_kwargs)
    finally:
        base.attend = original
    if len(calls) != 1:
        raise RuntimeError(f"expected the layer to call the attention kernel once, it called it {len(calls)} times")
    q, k, v, o, kw = calls[0]
    backend = resolve_backend(kw.get("backend", "auto"), q, k, v)
    return AttentionCall(q=q, k=k, v=v, o=o, scale=kw["scale"], causal=kw["causal"], backend=backend, y=y)


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
    """One configuration per method family at comparable settings: MHA, GQA, MQA, MLA, Tucker.

    MLA uses one shared K/V latent of width ``kv_latent`` and ``q_latent`` (default: ``kv_latent``).
    """
    r = tuple(ranks)
    return [("MHA", "mha", {}),
            (f"GQA n_KV={n_kv_heads}", "gqa", {"n_kv_heads": n_kv_heads}),
            ("MQA", "mqa", {}),
            (f"MLA d_c={kv_latent}", "mla", {"q_latent": q_latent or kv_latent, "kv_latent": kv_latent}),
            (f"Tucker [{r[0]},{r[1]},{r[2]}]", "tucker", {"ranks": r})]


def gpt2_small_configs() -> list[Config]:
    """The configurations of the paper's Table 2 (GPT-2 small), from ``counting.gpt2_small_table``."""
    return [(row.label, row.method, row.sizes) for row in counting.gpt2_small_table()]


def _colors(methods: Sequence[str]) -> list[str]:
    return [METHOD_COLORS.get(m, "C7") for m in methods]


def bar_budget(ax, labels: Sequence[str], values: Sequence[float], *, methods: Sequence[str] | None = None,
               log: bool = False, ylabel: str = "", reference: int | None = 0, value_fmt: str = "{:,.0f}"):
    """Bars of ``values`` with each value (and its share of ``values[reference]``) written above it.

    Args:
        ax: matplotlib Axes to draw into. labels, values: one bar each. methods: the bars' method
            families (colours, ``METHOD_COLORS``). log: logarithmic y axis. reference: index of the bar
            that others are compared with ("37%"), or None. value_fmt: format of the value labels.
    Returns:
        The ``BarContainer`` (one patch per bar).
    """
    if len(labels) != len(values):
        raise ValueError(f"labels and values must have the same length, got {len(labels)} and {len(values)}")
    colors = _colors(methods) if methods is not None else None
    bars = ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ref = values[reference] if reference is not None else None
    for i, (bar, v) in enumerate(zip(bars, values)):
        text = value_fmt.format(v)
        if ref and i != reference:
            text += f"\n{100 * v / ref:.0f}%"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7.5,
                    xytext=(0, 2), textcoords="offset points")
    ax.margins(y=0.25 if not log else 0.0)
    if log and len(values):
        lo, hi = min(v for v in values if v > 0), max(values)
        ax.set_ylim(lo / 3, hi * 6)
    return bars


def budget_figure(rows: Sequence[BudgetRow], *, title: str = "", log: bool = True):
    """Two panels: attention parameters and KV cache per token (one layer), one bar per row.

    Percentages are relative to the first row (put MHA first). Returns the ``Figure``.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    labels, methods = [r.label for r in rows], [r.method for r in rows]
    bar_budget(ax1, labels, [r.params for r in rows], methods=methods, log=log,
               ylabel="attention parameters per layer")
    bar_budget(ax2, labels, [r.kv_per_token for r in rows], methods=methods, log=log,
               ylabel="KV cache per token and layer (elements)")
    ax1.set_title("parameters")
    ax2.set_title("KV cache")
    if title:
        fig.suptitle(title)
    return fig


def _error_figure(message: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, "These settings do not define valid layers:\n" + message, ha="center", va="center",
            wrap=True, fontsize=10, color="C3")
    return fig


def _controls_row(controls: dict, columns: int, min_width: str):
    """The controls in up to ``columns`` columns sharing the page width, wrapping to fewer columns when a
    control would get narrower than ``min_width`` (the book's text column is narrow), so they never overlap."""
    import ipywidgets as widgets

    for w in controls.values():
        w.layout.width = f"calc({100 / columns:.4g}% - 8px)"
        w.layout.min_width = min_width
    return widgets.Box(list(controls.values()), layout=widgets.Layout(display="flex", flex_flow="row wrap"))


def _widget_box(controls: dict, draw: Callable[..., None], columns: int = 4, min_width: str = "240px"):
    """``interactive_output(draw, controls)`` under its controls; ``box.controls`` = ``controls``.

    The controls sit in up to ``columns`` columns that share the page width and wrap to fewer columns when
    a control would get narrower than ``min_width`` (the book's text column is narrow), so they never overlap.
    """
    import ipywidgets as widgets

    out = widgets.interactive_output(draw, controls)
    box = widgets.VBox([_controls_row(controls, columns, min_width), out])
    box.controls = controls  # for programmatic access (tests, readers): name -> control widget
    return box


def figure_widget(draw: Callable[..., Any], controls: dict, *, columns: int = 4, min_width: str = "240px",
                  dpi: float | None = None):
    """Controls → the matplotlib ``Figure`` that ``draw(**values)`` returns, shown as a PNG ``ipywidgets.Image``.

    An alternative to ``interactive_output`` (``_widget_box``) for pictures with many pixels (heatmaps): the
    figure is the value of an image widget instead of an output captured by an ``Output`` widget. Notebook
    executors (nbclient, i.e. ``jupyter-book build`` and ``nbconvert --execute``) were seen to stall when an
    ``Output`` widget captured a large image (a ~0.6 MB PNG); an image widget's state travels with the widget,
    and the static site shows it. ``draw`` receives every control's current value as a keyword argument and must
    return a ``Figure``; it is rendered (at ``dpi``, default the figure's own) and closed, so nothing stays open
    or is shown twice. Moving a control redraws.

    Returns an ``ipywidgets.VBox`` (controls, then the image) with ``box.controls`` (name -> control),
    ``box.image`` and ``box.redraw()``. Raises ``TypeError`` if ``controls`` is not a non-empty dict of
    ipywidgets value controls, or if ``draw`` does not return a ``Figure``.
    """
    import io

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    if not isinstance(controls, dict) or not controls:
        raise TypeError(f"controls must be a non-empty dict name -> ipywidgets control, got {controls!r}")
    for name, w in controls.items():
        if not isinstance(w, widgets.ValueWidget):
            raise TypeError(f"controls[{name!r}] must be an ipywidgets control with a value, got {type(w).__name__}")

    def render() -> bytes:
        fig = draw(**{name: w.value for name, w in controls.items()})
        if not isinstance(fig, Figure):
            raise TypeError(f"draw must return a matplotlib Figure (and not show it), got {type(fig).__name__}")
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=dpi if dpi is not None else "figure", bbox_inches="tight")
        finally:
            plt.close(fig)
        return buf.getvalue()

    image = widgets.Image(value=render(), format="png", layout=widgets.Layout(max_width="100%", height="auto"))

    def redraw(change: Any = None) -> None:
        image.value = render()

    for w in controls.values():
        w.observe(redraw, names="value")
    box = widgets.VBox([_controls_row(controls, columns, min_width), image])
    box.controls, box.image, box.redraw = controls, image, redraw  # programmatic access (tests, readers)
    return box


def budget_widget(*, d_model: int = 768, n_heads: int = 12, ranks: Sequence[int] = (8, 128, 64),
                  n_kv_heads: int = 4, kv_latent: int = 128, log: bool = True):
    """Sliders for d, n_H, the Tucker ranks (r1, r2, r3), GQA's n_KV and MLA's d_c → ``budget_figure``.

    All methods are drawn at the same ``(d, n_H)``. Settings that define no valid layer (e.g. r1 > n_H)
    draw the package's own error message instead of raising. Defaults: GPT-2 small, Tucker [8,128,64].
    Returns an ``ipywidgets.VBox`` (controls, then the figure); ``box.controls`` maps names to sliders.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    style = {"description_width": "70px"}
    controls = {
        "d_model": widgets.Dropdown(options=[256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096], value=d_model,
                                    description="d", style=style),
        "n_heads": widgets.Dropdown(options=[1, 2, 4, 8, 12, 16, 24, 32, 64], value=n_heads,
                                    description="heads n_H", style=style),
        "r1": widgets.IntSlider(value=ranks[0], min=1, max=64, description="r1 (head)", style=style),
        "r2": widgets.IntSlider(value=ranks[1], min=8, max=1024, step=8, description="r2 (query)", style=style),
        "r3": widgets.IntSlider(value=ranks[2], min=8, max=1024, step=8, description="r3 (key)", style=style),
        "n_kv_heads": widgets.IntSlider(value=n_kv_heads, min=1, max=64, description="GQA n_KV", style=style),
        "kv_latent": widgets.IntSlider(value=kv_latent, min=16, max=1024, step=16, description="MLA d_c",
                                       style=style),
        "log": widgets.Checkbox(value=log, description="log scale"),
    }

    def draw(d_model, n_heads, r1, r2, r3, n_kv_heads, kv_latent, log):
        configs = family_configs(n_kv_heads=n_kv_heads, kv_latent=kv_latent, ranks=(r1, r2, r3))
        try:
            rows = budget_rows(configs, d_model, n_heads)
        except (ValueError, TypeError) as err:
            _error_figure(str(err))
        else:
            budget_figure(rows, log=log, title=f"one attention layer, d={d_model}, n_H={n_heads} "
                                               f"(percentages: share of MHA)")
        plt.show()

    return _widget_box(controls, draw)


# ---------------------------------------------------------------------------------- KV cache vs N
def plot_cache_vs_length(ax, configs: Sequence[Config], seq_lens: Sequence[int], *, d_model: int, n_heads: int,
                         n_layers: int, batch_size: int = 1, bytes_per_elem: int = 2, log: bool = False):
    """Whole-model KV cache (MB = 10⁶ bytes) against sequence length, one line per configuration.

    Bytes = ``bytes_per_elem * n_layers * batch_size * N * counting.kv_cache_per_token(...)``; linear axes
    (log-log with ``log=True``). Configurations of the same method family share a colour and differ in
    line style; each legend entry gives the elements cached per token and layer.
    Returns the list of ``Line2D`` (one per configuration).
    """
    seen: dict[str, int] = {}
    lines = []
    n = [int(s) for s in seq_lens]
    for label, method, sizes in configs:
        per_tok = counting.kv_cache_per_token(method, d_model, n_heads, **sizes)
        mb = [bytes_per_elem * n_layers * batch_size * s * per_tok / 1e6 for s in n]
        style = _LINESTYLES[seen.get(method, 0) % len(_LINESTYLES)]
        seen[method] = seen.get(method, 0) + 1
        (line,) = ax.plot(n, mb, style, color=METHOD_COLORS.get(method, "C7"), label=f"{label} ({per_tok:,}/token)",
                          lw=1.8)
        lines.append(line)
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    else:
        ax.set_xlim(0, max(n))
        ax.set_ylim(bottom=0)
    ax.set_xlabel("sequence length N (tokens)")
    ax.set_ylabel("KV cache (MB)")
    ax.grid(True, which="major", alpha=0.3)
    return lines


def cache_figure(configs: Sequence[Config], *, seq_len: int, batch_size: int, d_model: int, n_heads: int,
                 n_layers: int, bytes_per_elem: int = 2):
    """Left: KV cache against N up to ``seq_len``; right: bars of the cache at ``seq_len``. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    lens = sorted({max(1, seq_len * k // 16) for k in range(17)})               # 1 .. seq_len
    plot_cache_vs_length(ax1, configs, lens, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                         batch_size=batch_size, bytes_per_elem=bytes_per_elem)
    ax1.legend(fontsize=7)
    ax1.set_title(f"batch {batch_size}, {n_layers} layers, {8 * bytes_per_elem}-bit entries")
    rows = budget_rows(configs, d_model, n_heads)
    mb = [bytes_per_elem * n_layers * batch_size * seq_len * r.kv_per_token / 1e6 for r in rows]
    bar_budget(ax2, [r.label for r in rows], mb, methods=[r.method for r in rows], log=True,
               ylabel=f"KV cache at N={seq_len:,} (MB)", value_fmt="{:,.2f}")
    ax2.set_title(f"at N = {seq_len:,} (percentages: share of {rows[0].label})")
    return fig


def cache_widget(configs: Sequence[Config] | None = None, *, d_model: int = 768, n_heads: int = 12,
                 n_layers: int = 12, batch_size: int = 1, seq_len: int = 1024, bytes_per_elem: int = 2):
    """Batch-size and sequence-length sliders → ``cache_figure``. Defaults: GPT-2 small (Table 2), bf16.

    Returns an ``ipywidgets.VBox``; ``box.controls`` maps names to sliders.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    configs = gpt2_small_configs() if configs is None else list(configs)
    style = {"description_width": "90px"}
    lens = [2 ** k for k in range(7, 18)]
    if seq_len not in lens:
        raise ValueError(f"seq_len must be a power of two in [{lens[0]}, {lens[-1]}], got seq_len={seq_len}")
    controls = {
        "batch_size": widgets.IntSlider(value=batch_size, min=1, max=128, description="batch size", style=style),
        "seq_len": widgets.SelectionSlider(options=lens, value=seq_len, description="sequence N", style=style),
    }

    def draw(batch_size, seq_len):
        cache_figure(configs, seq_len=seq_len, batch_size=batch_size, d_model=d_model, n_heads=n_heads,
                     n_layers=n_layers, bytes_per_elem=bytes_per_elem)
        plt.show()

    return _widget_box(controls, draw, columns=2)


# ------------------------------------------------------------------------------------------ misc
def plot_mask(ax, mask: torch.Tensor, *, title: str = "", query_offset: int = 0):
    """Draw a boolean attention mask (n_q, n_k): allowed = dark. Rows are labelled with absolute query
    positions ``query_offset + i``. Returns the ``AxesImage``."""
    m = mask.detach().to("cpu", torch.float32).numpy()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1.25)
    n_q, n_k = m.shape
    ax.set_xticks(range(n_k))
    ax.set_yticks(range(n_q), [str(query_offset + i) for i in range(n_q)])
    ax.set_xticks([x - 0.5 for x in range(1, n_k)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, n_q)], minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if title:
        ax.set_title(title, fontsize=10)
    return im


TIMING_KEYS = ("method", "seq_len", "ms")
"""The fields ``plot_recorded_timings`` needs in a record (``label``, ``device``, ``batch_size``, ``dtype``
are used when present)."""


def plot_recorded_timings(ax, records: Sequence[dict]) -> int:
    """Forward time (ms) against sequence length from recorded benchmark records, one line per label.

    A usable record has ``method``, ``seq_len`` and ``ms`` (see ``TIMING_KEYS``); its line is
    ``record.get("label", method)`` and the device ``record.get("device")``. Other records are ignored.
    Returns the number of lines drawn (0: nothing usable, and the axes say so).
    """
    series: dict[str, dict[int, float]] = {}
    method_of: dict[str, str] = {}
    devices = set()
    for r in records:
        if not all(k in r for k in TIMING_KEYS):
            continue
        label = str(r.get("label", r["method"]))
        series.setdefault(label, {})[int(r["seq_len"])] = float(r["ms"])
        method_of[label] = str(r["method"])
        if r.get("device"):
            devices.add(str(r["device"]))
    seen: dict[str, int] = {}
    for label, pts in series.items():
        xs = sorted(pts)
        method = method_of[label]
        style = _LINESTYLES[seen.get(method, 0) % len(_LINESTYLES)]
        seen[method] = seen.get(method, 0) + 1
        ax.plot(xs, [pts[x] for x in xs], style, marker="o", ms=3, color=METHOD_COLORS.get(method, "C7"),
                label=label)
    if not series:
        ax.axis("off")
        ax.text(0.5, 0.5, "no usable benchmark records", ha="center", va="center")
        return 0
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("forward time (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if devices:
        ax.set_title("recorded on " + ", ".join(sorted(devices)), fontsize=10)
    return len(series)


# ------------------------------------------------ ranks and unfolding spectra (chapter 04 and later)
MODE_NAMES: dict[str, tuple[str, str, str]] = {"W": ("head", "query", "key"), "W_tilde": ("head", "output", "value")}
"""The three modes of the pre-softmax tensor 𝒲 and of the post-softmax tensor 𝒲̃ (PAPER.md §2)."""

MODE_COLORS: tuple[str, str, str] = ("C9", "C6", "C8")
"""One colour per mode (1, 2, 3) in spectra figures; distinct from ``METHOD_COLORS``."""

_W_TEX, _WT_TEX = r"$\mathcal{W}$", r"$\tilde{\mathcal{W}}$"   # matplotlib's fonts lack the glyph 𝒲


def plot_unfolding_spectra(ax, spectra: Sequence[torch.Tensor], *, names: Sequence[str] = MODE_NAMES["W"],
                           linestyle: str = "-", label_prefix: str = "", rtol: float | None = None,
                           floor: float = 1e-18, logx: bool = True) -> list:
    """Normalized singular values ``σ_k / σ_1`` of each unfolding, one line per mode, on a log axis.

    Args:
        ax: matplotlib Axes. spectra: one 1-D tensor of singular values (descending) per mode, as returned by
            ``tucker_attention.tensors.unfolding_spectra``. names: the modes' names (legend).
        linestyle: line style of all lines (e.g. "-" for 𝒲, "--" for 𝒲̃). label_prefix: prepended to labels.
        rtol: if given, the threshold of ``tensors.multilinear_rank(T, rtol)`` is drawn as a grey line and the
            last singular value above it (the numerical rank) is marked on each line; the legend gives the rank.
        floor: values below it (exact zeros) are drawn at ``floor`` so that the log axis can show them.
        logx: logarithmic index axis (base 2), so that a short head mode (n_H values) and the d-long modes
            are both readable.
    Returns:
        The list of ``Line2D``, one per mode.
    Raises ``ValueError`` if ``len(names) != len(spectra)`` or a spectrum is not a non-empty 1-D tensor.
    """
    if len(names) != len(spectra):
        raise ValueError(f"names must name every mode: got {len(names)} names for {len(spectra)} spectra")
    lines = []
    for n, (s, name) in enumerate(zip(spectra, names)):
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.numel() == 0:
            raise ValueError(f"spectra[{n}] must be a non-empty 1-D tensor of singular values, got "
                             f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
        s = s.detach().to("cpu", torch.float64)
        top = float(s[0])
        y = (s / top if top > 0 else s).clamp_min(floor).numpy()
        k = range(1, len(y) + 1)
        label = f"{label_prefix}mode {n + 1} ({name})"
        color = MODE_COLORS[n % len(MODE_COLORS)]
        if rtol is not None:
            rank = int((s > rtol * top).sum()) if top > 0 else 0
            label += f": rank {rank}"
            if rank:
                ax.plot([rank], [y[rank - 1]], "o", color=color, ms=5, mfc="none")
        (line,) = ax.plot(k, y, linestyle, color=color, label=label, lw=1.6)
        lines.append(line)
    if rtol is not None and not any(line.get_gid() == f"rtol={rtol}" for line in ax.get_lines()):
        ax.axhline(rtol, color="0.6", lw=0.8, ls=":", gid=f"rtol={rtol}")   # once per Axes and threshold
    ax.set_yscale("log")
    if logx:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 1, 2, 4, ... rather than 2^k
    ax.set_xlabel("index k")
    ax.set_ylabel(r"$\sigma_k / \sigma_1$")
    ax.grid(True, alpha=0.3)
    return lines


def plot_layer_spectra(ax, layer: torch.nn.Module, *, rtol: float = 1e-10, title: str = ""):
    """The unfolding spectra of both attention tensors of a RoPE-free ``layer`` in one Axes.

    𝒲 is drawn solid, 𝒲̃ dashed (``plot_unfolding_spectra`` with ``rtol``), from ``analysis.model_spectra``;
    the ranks are ``analysis.model_ranks(layer, rtol)`` (``tensors.multilinear_rank`` of 𝒲 and 𝒲̃, next to the
    core shape of the layer's exact Tucker factors, Theorems B.2–B.4). The title (``title`` + the measured
    ranks) is set on ``ax``. Use float64 weights with the default ``rtol``.
    Returns the layer's ``analysis.LayerRanks``.
    """
    from . import analysis

    spectra = analysis.model_spectra(layer)[0]
    ranks = analysis.model_ranks(layer, rtol)[0]
    plot_unfolding_spectra(ax, spectra.pre, names=MODE_NAMES["W"], rtol=rtol, label_prefix=_W_TEX + " ")
    plot_unfolding_spectra(ax, spectra.post, names=MODE_NAMES["W_tilde"], rtol=rtol, linestyle="--",
                           label_prefix=_WT_TEX + " ")
    ax.set_title(f"{title}\n{_W_TEX} {ranks.ranks}, {_WT_TEX} {ranks.post_ranks}".strip(), fontsize=9)
    return ranks


RANK_METHODS = ("mha", "gqa", "mqa", "mla", "tucker")


def rank_layer_sizes(method: str, *, n_kv_heads: int, q_latent: int, kv_latent: int, separate_kv: bool,
                     ranks: Sequence[int]) -> dict:
    """The ``counting.build_layer`` size arguments of ``method`` picked from a full set of widget settings.

    >>> rank_layer_sizes("gqa", n_kv_heads=2, q_latent=8, kv_latent=4, separate_kv=False, ranks=(2, 8, 4))
    {'n_kv_heads': 2}
    """
    if method not in RANK_METHODS:
        raise ValueError(f"method must be one of {RANK_METHODS}, got method={method!r}")
    return {"mha": {}, "mqa": {}, "gqa": {"n_kv_heads": n_kv_heads},
            "mla": {"q_latent": q_latent, "kv_latent": kv_latent, "separate_kv": separate_kv},
            "tucker": {"ranks": tuple(ranks)}}[method]


def rank_widget(*, d_model: int = 64, n_heads: int = 8, method: str = "mla", n_kv_heads: int = 2,
                q_latent: int = 32, kv_latent: int = 16, separate_kv: bool = False, ranks: Sequence[int] = (4, 32, 16),
                seed: int = 0, device: str | torch.device = "cpu", rtol: float = 1e-10):
    """Pick a method and its sizes → measured multilinear ranks and the unfolding spectra of 𝒲 and 𝒲̃.

    The layer is ``counting.build_layer(method, d_model, n_heads, **sizes)`` with seed ``seed``, in float64 on
    ``device``; the figure is ``plot_layer_spectra``, and a line below compares the measured ranks with the
    exact Tucker construction (the layer's ``tucker_factors``). Controls that a method does not use are ignored.
    Settings that define no valid layer draw the package's error message instead of raising.
    Returns an ``ipywidgets.VBox``; ``box.controls`` maps names to controls, ``box.last`` holds the last
    drawn ``{"sizes": ..., "ranks": analysis.LayerRanks}`` (``ranks`` None after an error).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    if method not in RANK_METHODS:
        raise ValueError(f"method must be one of {RANK_METHODS}, got method={method!r}")
    divisors = [k for k in range(1, n_heads + 1) if n_heads % k == 0]
    if n_kv_heads not in divisors:
        raise ValueError(f"n_kv_heads must divide n_heads={n_heads}, got n_kv_heads={n_kv_heads}")
    style = {"description_width": "90px"}
    controls = {
        "method": widgets.Dropdown(options=[(m.upper() if m != "tucker" else "Tucker", m) for m in RANK_METHODS],
                                   value=method, description="method", style=style),
        "n_kv_heads": widgets.SelectionSlider(options=divisors, value=n_kv_heads, description="GQA n_KV",
                                              style=style),
        "q_latent": widgets.IntSlider(value=q_latent, min=1, max=d_model, description="MLA d_c^Q", style=style),
        "kv_latent": widgets.IntSlider(value=kv_latent, min=1, max=d_model, description="MLA d_c^K", style=style),
        "separate_kv": widgets.Checkbox(value=separate_kv, description="MLA separate K/V latents"),
        "r1": widgets.IntSlider(value=ranks[0], min=1, max=n_heads, description="Tucker r1", style=style),
        "r2": widgets.IntSlider(value=ranks[1], min=1, max=d_model, description="Tucker r2", style=style),
        "r3": widgets.IntSlider(value=ranks[2], min=1, max=d_model, description="Tucker r3", style=style),
    }
    last: dict = {}

    def draw(method, n_kv_heads, q_latent, kv_latent, separate_kv, r1, r2, r3):
        sizes = rank_layer_sizes(method, n_kv_heads=n_kv_heads, q_latent=q_latent, kv_latent=kv_latent,
                                 separate_kv=separate_kv, ranks=(r1, r2, r3))
        last.clear()
        last.update(sizes=sizes, ranks=None)
        try:
            torch.manual_seed(seed)
            layer = counting.build_layer(method, d_model, n_heads, **sizes).to(device=device, dtype=torch.float64)
            fig, ax = plt.subplots(figsize=(10, 3.8), layout="constrained")
            ranks_ = plot_layer_spectra(ax, layer, rtol=rtol, title=f"{method.upper()} {sizes}, d={d_model}, "
                                                                     f"n_H={n_heads}")
        except (ValueError, TypeError) as err:
            plt.close("all")
            _error_figure(str(err))
        else:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            last["ranks"] = ranks_
            same = (ranks_.ranks, ranks_.post_ranks) == (ranks_.tucker_ranks, ranks_.tucker_post_ranks)
            print(f"measured ranks 𝒲 {ranks_.ranks}, 𝒲̃ {ranks_.post_ranks}; exact Tucker construction "
                  f"𝒲 {ranks_.tucker_ranks}, 𝒲̃ {ranks_.tucker_post_ranks} -> "
                  f"{'equal' if same else 'the construction is not minimal here'}")
        plt.show()

    box = _widget_box(controls, draw, columns=4)
    box.last = last
    return box


# ------------------------------------------------------------------------- RoPE curves (chapter 05)
def rope_relative_scores(dim: int, distances: Sequence[int] | torch.Tensor, *, base: float = 10000.0, offset: int = 0,
                         query: torch.Tensor | None = None, key: torch.Tensor | None = None,
                         style: str = "interleaved") -> torch.Tensor:
    """RoPE scores against relative distance: ``(q R(offset + Δ)) · (k R(offset))`` for each Δ in ``distances``.

    ``R`` is ``attention.rope``'s rotation of size ``dim`` (``θ_j = base^(-2j/dim)``); by
    ``R(m) R(n)ᵀ = R(m − n)`` the result does not depend on ``offset`` (up to round-off in the angles).
    ``query``/``key``: (dim,) vectors, default all ones (the curve of RoFormer's long-term decay).
    Returns a float64 tensor (len(distances),).
    """
    from .attention import apply_rope, rope_angles

    dist = torch.as_tensor(distances, dtype=torch.long).reshape(-1)
    q = torch.ones(dim, dtype=torch.float64) if query is None else query.detach().to("cpu", torch.float64)
    k = torch.ones(dim, dtype=torch.float64) if key is None else key.detach().to("cpu", torch.float64)
    if q.shape != (dim,) or k.shape != (dim,):
        raise ValueError(f"query and key must have shape (dim,)=({dim},), got {tuple(q.shape)} and {tuple(k.shape)}")
    lowest = int(dist.min()) if dist.numel() else 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or lowest + offset < 0:
        raise ValueError(f"offset must be an int >= 0 with offset + min(distances) >= 0, got offset={offset!r}")
    cos, sin = rope_angles(offset + dist, dim, base=base)                       # (len, dim/2)
    q_rot = apply_rope(q.expand(len(dist), dim), cos, sin, style=style)          # q R(offset + Δ): (len, dim)
    cos0, sin0 = rope_angles(torch.tensor([offset]), dim, base=base)
    k_rot = apply_rope(k.unsqueeze(0), cos0, sin0, style=style)                 # k R(offset): (1, dim)
    return q_rot @ k_rot[0]


def rope_widget(*, dim: int = 64, base: float = 10000.0, offset: int = 2000, max_distance: int = 256, seed: int = 0):
    """RoPE base, head size and position offset → score against relative distance (``rope_relative_scores``).

    Two curves, each normalized to 1 at distance 0: all-ones query and key (RoFormer's decay) and a random
    query scored against itself (seed ``seed``). Lines are computed at positions ``offset + Δ`` and
    ``offset``, markers at ``Δ`` and 0: they coincide, the title gives the largest difference.
    Returns an ``ipywidgets.VBox``; ``box.controls`` maps names to controls, ``box.last`` holds the last
    ``{"distances", "ones", "random", "max_shift_difference"}``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    bases = [100.0, 1000.0, 10000.0, 100000.0, 500000.0, 1000000.0]
    if float(base) not in bases:
        raise ValueError(f"base must be one of {bases}, got base={base!r}")
    style = {"description_width": "90px"}
    controls = {
        "base": widgets.SelectionSlider(options=[(f"{b:,.0f}", b) for b in bases], value=float(base),
                                        description="RoPE base", style=style),
        "dim": widgets.IntSlider(value=dim, min=4, max=256, step=2, description="head size D", style=style),
        "offset": widgets.IntSlider(value=offset, min=0, max=100000, step=100, description="offset t",
                                    style=style),
    }
    last: dict = {}

    def draw(base, dim, offset):
        dist = torch.arange(max_distance + 1)
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(dim, generator=gen, dtype=torch.float64)
        curves, diff = {}, 0.0
        for name, vec in (("ones", None), ("random", q)):
            norm = dim if vec is None else float(vec @ vec)
            at_t = rope_relative_scores(dim, dist, base=base, offset=offset, query=vec, key=vec) / norm
            at_0 = rope_relative_scores(dim, dist, base=base, offset=0, query=vec, key=vec) / norm
            curves[name] = (at_t, at_0)
            diff = max(diff, float((at_t - at_0).abs().max()))
        last.clear()
        last.update(distances=dist, ones=curves["ones"][0], random=curves["random"][0], max_shift_difference=diff)
        fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
        every = max(1, max_distance // 32)
        for (at_t, at_0), color, text in zip(curves.values(), ("C0", "C3"),
                                             ("all-ones query and key", "random query, key = query")):
            ax.plot(dist, at_t, color=color, lw=1.5, label=f"{text}, positions (t + Δ, t)")
            ax.plot(dist[::every], at_0[::every], "o", color=color, ms=4, mfc="none",
                    label=f"{text}, positions (Δ, 0)")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("relative distance Δ = m − n")
        ax.set_ylabel("score / score at Δ = 0")
        ax.set_title(f"D = {dim}, base = {base:,.0f}, t = {offset:,}: "
                     f"max |score(t + Δ, t) − score(Δ, 0)| = {diff:.1e}", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(True, alpha=0.3)
        plt.show()

    box = _widget_box(controls, draw, columns=3)
    box.last = last
    return box


__all__ += ["MODE_COLORS", "MODE_NAMES", "RANK_METHODS", "plot_layer_spectra", "plot_unfolding_spectra",
            "rank_layer_sizes", "rank_widget", "rope_relative_scores", "rope_widget"]
