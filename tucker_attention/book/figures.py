"""The book's figures: matplotlib drawing functions that take an ``Axes`` or return a ``Figure``.

They never call ``plt.show()`` (the chapter or a widget callback does) and import matplotlib lazily, so
``import tucker_attention`` works without it (matplotlib is in the ``book`` extra). Methods keep one
colour across the book (``METHOD_COLORS``), the three modes of a tensor another (``MODE_COLORS``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import counting
from .records import BudgetRow, Config, budget_rows

__all__ = [
    "METHOD_COLORS", "MODE_COLORS", "MODE_NAMES", "TIMING_KEYS", "bar_budget", "budget_figure", "cache_figure",
    "plot_cache_vs_length", "plot_layer_spectra", "plot_mask", "plot_recorded_timings", "plot_unfolding_spectra",
]


METHOD_COLORS: dict[str, str] = {"mha": "C0", "gqa": "C1", "mqa": "C2", "mla": "C3", "tucker": "C4"}
"""One colour per method family, used by every figure of the book."""

_LINESTYLES = ("-", "--", ":", "-.")


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
    from .. import analysis

    spectra = analysis.model_spectra(layer)[0]
    ranks = analysis.model_ranks(layer, rtol)[0]
    plot_unfolding_spectra(ax, spectra.pre, names=MODE_NAMES["W"], rtol=rtol, label_prefix=_W_TEX + " ")
    plot_unfolding_spectra(ax, spectra.post, names=MODE_NAMES["W_tilde"], rtol=rtol, linestyle="--",
                           label_prefix=_WT_TEX + " ")
    ax.set_title(f"{title}\n{_W_TEX} {ranks.ranks}, {_WT_TEX} {ranks.post_ranks}".strip(), fontsize=9)
    return ranks
