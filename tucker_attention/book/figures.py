"""The book's figures: matplotlib drawing functions that take an ``Axes`` or return a ``Figure``.

They never call ``plt.show()`` (the chapter or a widget callback does) and import matplotlib lazily, so
``import tucker_attention`` works without it (matplotlib is in the ``book`` extra). Methods keep one
colour across the book (``METHOD_COLORS``), the three modes of a tensor another (``MODE_COLORS``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import counting
from .records import BudgetRow, Config, budget_rows

__all__ = [
    "METHOD_COLORS", "MODE_COLORS", "MODE_NAMES", "TIMING_KEYS", "bar_budget", "budget_figure", "cache_figure",
    "compact", "plot_cache_vs_length", "plot_layer_spectra", "plot_mask", "plot_recorded_timings",
    "plot_unfolding_spectra",
]


METHOD_COLORS: dict[str, str] = {"mha": "C0", "gqa": "C1", "mqa": "C2", "mla": "C3", "tucker": "C4"}
"""One colour per method family, used by every figure of the book."""

_LINESTYLES = ("-", "--", ":", "-.")


def _colors(methods: Sequence[str]) -> list[str]:
    return [METHOD_COLORS.get(m, "C7") for m in methods]


def compact(value: float) -> str:
    """A short label for a count: 2,359,296 -> "2.36M", 426,176 -> "426k", 1,536 -> "1,536", 3.14 -> "3.14".

    >>> [compact(v) for v in (2359296, 426176, 1536, 3.14159)]
    ['2.36M', '426k', '1,536', '3.14']
    """
    v = float(value)
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:,.0f}" if v == int(v) else f"{v:.3g}"


def bar_budget(ax, labels: Sequence[str], values: Sequence[float], *, methods: Sequence[str] | None = None,
               log: bool = False, ylabel: str = "", reference: int | None = 0, value_fmt: str | None = None):
    """Bars of ``values`` with each value (and its share of ``values[reference]``) written above it.

    Args:
        ax: matplotlib Axes to draw into. labels, values: one bar each. methods: the bars' method
            families (colours, ``METHOD_COLORS``). log: logarithmic y axis. reference: index of the bar
            that others are compared with ("37%"), or None. value_fmt: format of the value labels
            (default ``compact``: "2.36M", "426k", short enough for narrow bars).
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
        text = compact(v) if value_fmt is None else value_fmt.format(v)
        if ref and i != reference:
            text += f"\n{100 * v / ref:.0f}%"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8.5,
                    xytext=(0, 2), textcoords="offset points")
    ax.margins(y=0.25 if not log else 0.0)
    if log and len(values):
        lo, hi = min(v for v in values if v > 0), max(values)
        ax.set_ylim(lo / 3, hi * 6)
    return bars


def budget_figure(rows: Sequence[BudgetRow], *, title: str = "", log: bool = True):
    """Two panels, one above the other: attention parameters and KV cache per token (one layer), one bar per row.

    Stacked (not side by side) so that every bar keeps the full page width for its value label, however many
    rows there are. Percentages are relative to the first row (put MHA first). Returns the ``Figure``.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6.4), layout="constrained", sharex=True)
    labels, methods = [r.label for r in rows], [r.method for r in rows]
    bar_budget(ax1, labels, [r.params for r in rows], methods=methods, log=log,
               ylabel="parameters per layer")
    bar_budget(ax2, labels, [r.kv_per_token for r in rows], methods=methods, log=log,
               ylabel="KV cache per token\nand layer (elements)")
    ax1.tick_params(labelbottom=False)
    ax1.set_title("attention parameters", fontsize=11)
    ax2.set_title("KV cache", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _error_figure(message: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.6))
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

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 4), layout="constrained")
    lens = sorted({max(1, seq_len * k // 16) for k in range(17)})               # 1 .. seq_len
    plot_cache_vs_length(ax1, configs, lens, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                         batch_size=batch_size, bytes_per_elem=bytes_per_elem)
    ax1.legend(fontsize=8.5)
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
    ax.legend(fontsize=8.5)
    if devices:
        ax.set_title("recorded on " + ", ".join(sorted(devices)), fontsize=10)
    return len(series)


# ------------------------------------------------ ranks and unfolding spectra (chapter 04 and later)
MODE_NAMES: dict[str, tuple[str, str, str]] = {"W": ("head", "query", "key"), "W_tilde": ("head", "output", "value")}
"""The three modes of the pre-softmax tensor 𝒲 and of the post-softmax tensor 𝒲̃ (paper §2)."""

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


# ------------------------------------------------------------------ diagrams (introduction, chapter 03)
def _box(ax, x, y, w, h, label, *, color, fontsize=11, text_color="k", alpha=0.9, lw=1.2):
    """A rectangle with its lower-left corner at (x, y) and ``label`` in its middle."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="0.2", lw=lw, alpha=alpha))
    if label:
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize, color=text_color)


def _cuboid(ax, x, y, w, h, depth, label, *, color, fontsize=12, skew=(0.55, 0.45)):
    """A box in oblique projection: front face w x h at (x, y), ``depth`` drawn up and to the right."""
    from matplotlib.patches import Polygon

    dx, dy = skew[0] * depth, skew[1] * depth
    faces = ([(x, y + h), (x + dx, y + h + dy), (x + w + dx, y + h + dy), (x + w, y + h)],       # top
             [(x + w, y), (x + w + dx, y + dy), (x + w + dx, y + h + dy), (x + w, y + h)])       # side
    for shade, face in zip((0.78, 0.62), faces):
        ax.add_patch(Polygon(face, closed=True, facecolor=color, edgecolor="0.2", lw=1.0, alpha=shade))
    _box(ax, x, y, w, h, label, color=color, fontsize=fontsize)
    return dx, dy


def tucker_schematic(ax=None, *, n_heads: int = 6, d: int = 10, ranks: Sequence[int] = (2, 5, 3)):
    """The Tucker decomposition of an attention tensor, drawn to scale: 𝒲 = 𝒞 ×₁ U₁ ×₂ U₂ ×₃ U₃.

    Left, the dense tensor 𝒲 (n_H × d × d: head, query and key modes); right, the small core 𝒞
    (r₁ × r₂ × r₃) with one factor per mode: U₂ (d × r₂) on the query side, U₃ᵀ (r₃ × d) on the key side,
    and U₁ (n_H × r₁) along the head (depth) axis. Box sizes are proportional to ``n_heads``, ``d`` and
    ``ranks`` (small schematic values by default). Draws into ``ax`` (default: a new 8 × 3.4 in figure)
    and returns the ``Axes``. Raises ``ValueError`` unless 1 <= r₁ <= n_heads and 1 <= r₂, r₃ <= d.
    """
    import matplotlib.pyplot as plt

    r1, r2, r3 = (int(r) for r in ranks)
    if not (1 <= r1 <= n_heads and 1 <= r2 <= d and 1 <= r3 <= d):
        raise ValueError(f"ranks must satisfy 1 <= r1 <= n_heads={n_heads} and 1 <= r2, r3 <= d={d}, "
                         f"got ranks={tuple(ranks)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
    u = 1.0                                                   # drawing units per index
    # dense tensor: rows = query (d), columns = key (d), depth = heads (n_H)
    dx, dy = _cuboid(ax, 0, 0, d * u, d * u, n_heads * u, r"$\mathcal{W}$", color="#c9d7ee", fontsize=16)
    ax.text(d * u / 2, -0.9, f"key  (d = {d})", ha="center", va="top", fontsize=10)
    ax.text(-0.7, d * u / 2, f"query  (d = {d})", ha="right", va="center", rotation=90, fontsize=10)
    ax.text(d * u + dx / 2 + 1.4, d * u + dy / 2, f"head\n($n_H$ = {n_heads})", ha="left", va="center",
            fontsize=10)
    x0 = d * u + dx + 4.8
    ax.text(x0 - 1.8, d * u / 2, "=", ha="center", va="center", fontsize=22)
    # U2 (d x r2), core (r2 x r3, depth r1), U3^T (r3 x d), U1 along the depth axis
    _box(ax, x0, 0, r2 * u, d * u, r"$U_2$", color="#f4c27a", fontsize=13)
    ax.text(x0 + r2 * u / 2, -0.9, f"$r_2$ = {r2}", ha="center", va="top", fontsize=10)
    cx, cy = x0 + r2 * u + 0.9, (d - r2) * u / 2
    cdx, cdy = _cuboid(ax, cx, cy, r3 * u, r2 * u, r1 * u, r"$\mathcal{C}$", color="#b9dfb0", fontsize=14)
    ax.text(cx + r3 * u / 2, cy - 0.9, f"$r_3$ = {r3}", ha="center", va="top", fontsize=10)
    ux = cx + r3 * u + cdx + 0.9
    _box(ax, ux, cy + (r2 - r3) * u / 2, d * u, r3 * u, r"$U_3^\top$", color="#e9a3a3", fontsize=13)
    ax.text(ux + d * u / 2, cy + (r2 - r3) * u / 2 - 0.9, f"d = {d}", ha="center", va="top", fontsize=10)
    # U1: n_H x r1, drawn above the core, its long side along the head (depth) direction
    from matplotlib.patches import Polygon

    bx, by = cx + cdx + 0.3, cy + r2 * u + cdy + 1.2
    sx, sy = 0.55 * n_heads * u, 0.45 * n_heads * u
    ax.add_patch(Polygon([(bx, by), (bx + sx, by + sy), (bx + sx + r1 * u, by + sy), (bx + r1 * u, by)],
                         closed=True, facecolor="#cdb4e6", edgecolor="0.2", lw=1.0))
    ax.text(bx + r1 * u + sx / 2 + 0.5, by + sy / 2, rf"$U_1$  ($n_H \times r_1$, $r_1$ = {r1})", ha="left",
            va="center", fontsize=11)
    ax.annotate("", (cx + cdx / 2 + r3 * u / 2, cy + r2 * u + cdy / 2), (bx + sx / 2, by),
                arrowprops=dict(arrowstyle="->", color="0.3", lw=1.0))
    ax.set_aspect("equal")
    ax.set_xlim(-2.6, ux + d * u + 0.6)
    ax.set_ylim(-2.2, max(d * u + dy, by + sy) + 0.8)
    ax.axis("off")
    return ax


def layer_dataflow(ax=None):
    """One Tucker Attention layer as data flow: X → U₂ → G_i per head; K = XU₃ and V = XŨ₃ shared; → Ũ₂.

    Boxes are tensors with their shapes (N tokens), arrows the products of the paper's forward pass: the
    queries go through the shared factor U₂ and then each head's core G_i (n_H of them), the single key
    K = X U₃ and the single value V = X Ũ₃ are shared by all heads (multi-query attention of head size r₃),
    and each head's output O_i goes back through G̃_iᵀ, summed over heads, and Ũ₂ᵀ. Draws into ``ax``
    (default: a new 8 × 3.6 in figure) and returns the ``Axes``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
    tensor, shared, head, op = "#dfe7f3", "#e9a3a3", "#b9dfb0", "#f6f6f6"
    h = 1.0

    def arrow(x0, y0, x1, y1, label=None, dy=0.18):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.1,
                                                            shrinkA=0, shrinkB=0))
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, label, ha="center", va="bottom", fontsize=10)

    _box(ax, 0, 1.5, 1.4, h, "$X$\n$N\\times d$", color=tensor, fontsize=10)
    # query row: X -> P = X U2 -> Q_i = P G_i (stacked heads)
    arrow(1.4, 2.3, 3.0, 3.6, r"$U_2$")
    _box(ax, 3.0, 3.1, 1.5, h, "$P = XU_2$\n$N\\times r_2$", color=tensor, fontsize=10)
    for k in (2, 1, 0):
        _box(ax, 5.8 + 0.12 * k, 3.1 + 0.12 * k, 1.5, h, "" if k else "$Q_i = PG_i$\n$N\\times r_3$",
             color=head, fontsize=10)
    arrow(4.5, 3.6, 5.8, 3.6, r"$G_i$")
    ax.text(6.65, 4.45, "one per head ($i = 1..n_H$)", ha="center", va="bottom", fontsize=9)
    # key and value rows: shared by all heads
    arrow(1.4, 2.0, 5.8, 2.0, r"$U_3$")
    _box(ax, 5.8, 1.5, 1.5, h, "$K = XU_3$\n$N\\times r_3$", color=shared, fontsize=10)
    arrow(1.4, 1.7, 5.8, 0.4, r"$\tilde U_3$", dy=-0.55)
    _box(ax, 5.8, -0.1, 1.5, h, "$V = X\\tilde U_3$\n$N\\times \\tilde r_3$", color=shared, fontsize=10)
    ax.text(6.55, -0.3, "shared by all heads", ha="center", va="top", fontsize=9)
    # attention (MQA) -> O_i -> output
    _box(ax, 8.3, 1.1, 2.3, 1.8, "softmax\nattention\n(multi-query)", color=op, fontsize=10)
    for y0 in (3.6, 2.0, 0.4):
        arrow(7.55 if y0 != 2.0 else 7.3, y0, 8.3, 2.0 + (y0 - 2.0) * 0.35)
    arrow(10.6, 2.0, 11.3, 2.0)
    for k in (2, 1, 0):
        _box(ax, 11.3 + 0.12 * k, 1.5 + 0.12 * k, 1.5, h, "" if k else "$O_i$\n$N\\times \\tilde r_3$",
             color=head, fontsize=10)
    arrow(13.05, 2.0, 14.7, 2.0, r"$\sum_i \tilde G_i^\top$")
    arrow(14.7, 2.0, 16.0, 2.0, r"$\tilde U_2^\top$")
    _box(ax, 16.0, 1.5, 1.4, h, "out\n$N\\times d$", color=tensor, fontsize=10)
    ax.set_xlim(-0.2, 17.6)
    ax.set_ylim(-0.8, 4.9)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def small_text(fig, *, column_px: float = 720.0, min_px: float = 9.0) -> list[tuple[str, float]]:
    """Texts of ``fig`` smaller than ``min_px`` pixels when the figure is shown ``column_px`` pixels wide.

    The site scales a figure to the width of its text column, so a font of ``s`` points appears as
    ``s * column_px / (72 * figure width in inches)`` pixels (never enlarged beyond its natural size).
    Returns ``[(text, pixels), ...]``; empty when everything is readable.
    """
    width_in = fig.get_size_inches()[0]
    scale = min(1.0, column_px / (fig.dpi * width_in)) * fig.dpi / 72   # pixels per point on the page
    return [(t.get_text(), round(t.get_fontsize() * scale, 1)) for t in _drawn_texts(fig)
            if t.get_fontsize() * scale < min_px]


def _drawn_texts(fig) -> list:
    """The visible, non-empty ``Text`` artists of ``fig`` that a draw puts on the canvas (each once).

    Tick labels count only for ticks inside the view limits (matplotlib keeps hidden ones around).
    """
    from matplotlib.text import Text

    hidden: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not (lo - 1e-9 * abs(hi - lo) <= loc <= hi + 1e-9 * abs(hi - lo)):
                    hidden.update((id(tick.label1), id(tick.label2)))
    seen, out = set(), []
    for t in fig.findobj(Text):
        if id(t) in seen or id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        seen.add(id(t))
        out.append(t)
    return out


def overlapping_text(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts of ``fig`` whose bounding boxes overlap (drawn first, so positions are final).

    Two labels rotated by the same non-zero angle (slanted tick labels) are not compared: their axis-aligned
    boxes overlap although the letters do not.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_rotation() % 180, t.get_window_extent(renderer)) for t in _drawn_texts(fig)]
    pairs = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (a, ra, ba), (b, rb, bb) = boxes[i], boxes[j]
            if ra and ra == rb:
                continue
            if ba.width and bb.width and ba.overlaps(bb):
                pairs.append((a, b))
    return pairs


DIAGRAMS = {"tucker_schematic": tucker_schematic, "layer_dataflow": layer_dataflow}
"""The diagrams the introduction shows as committed SVG files (``book/images/<name>.svg``)."""


def save_diagrams(folder: str | os.PathLike) -> list[Path]:
    """Draw every diagram of ``DIAGRAMS`` into ``folder/<name>.svg``, reproducibly (fixed hash salt, no date).

    The introduction is a Markdown page (nothing executes there), so it shows these files; regenerate them
    after changing a drawing function with ``python -c "from tucker_attention import book;
    book.save_diagrams('book/images')"``. Returns the written paths.
    """
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context({"svg.hashsalt": "tucker-attention"}):
        for name, draw in DIAGRAMS.items():
            fig = draw().figure
            path = folder / f"{name}.svg"
            fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
            plt.close(fig)
            paths.append(path)
    return paths


__all__ += ["DIAGRAMS", "layer_dataflow", "overlapping_text", "save_diagrams", "small_text", "tucker_schematic"]
