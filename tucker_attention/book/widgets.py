"""The book's widgets: controls whose default state is already a complete figure.

``_widget_box`` wraps ``ipywidgets.interactive_output``; ``figure_widget`` shows a returned ``Figure`` as a
PNG image widget (for large pictures). The static site shows each widget's saved default state; Colab runs
them live. ``box.controls`` (name -> control) and, where documented, ``box.last`` (what was last drawn)
give tests and readers programmatic access.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..attention import registry
from ..attention.rope import rope_relative_scores
from .figures import _error_figure, budget_figure, cache_figure, plot_layer_spectra
from .records import RANK_METHODS, Config, budget_rows, family_configs, gpt2_small_configs, rank_layer_sizes

__all__ = ["budget_widget", "cache_widget", "figure_widget", "rank_widget", "rope_widget"]


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


def rank_widget(*, d_model: int = 64, n_heads: int = 8, method: str = "mla", n_kv_heads: int = 2,
                q_latent: int = 32, kv_latent: int = 16, separate_kv: bool = False, ranks: Sequence[int] = (4, 32, 16),
                seed: int = 0, device: str | torch.device = "cpu", rtol: float = 1e-10):
    """Pick a method and its sizes → measured multilinear ranks and the unfolding spectra of 𝒲 and 𝒲̃.

    The layer is ``attention.build(method, d_model, n_heads, **sizes)`` with seed ``seed``, in float64 on
    ``device``; the figure is ``plot_layer_spectra``, and a line below compares the measured ranks with the
    exact Tucker construction (the layer's ``tucker_factors``). Controls that a method does not use are ignored.
    Settings that define no valid layer draw the package's error message instead of raising.
    Returns an ``ipywidgets.VBox``; ``box.controls`` maps names to controls, ``box.last`` holds the last
    drawn ``{"sizes": ..., "ranks": analysis.LayerRanks}`` (``ranks`` None after an error).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    registry.spec(method)                                      # ValueError naming the methods
    divisors = [k for k in range(1, n_heads + 1) if n_heads % k == 0]
    if n_kv_heads not in divisors:
        raise ValueError(f"n_kv_heads must divide n_heads={n_heads}, got n_kv_heads={n_kv_heads}")
    style = {"description_width": "90px"}
    controls = {
        "method": widgets.Dropdown(options=[(registry.spec(m).title, m) for m in RANK_METHODS],
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
            layer = registry.build(method, d_model, n_heads, **sizes).to(device=device, dtype=torch.float64)
            fig, ax = plt.subplots(figsize=(8.5, 3.8), layout="constrained")
            ranks_ = plot_layer_spectra(ax, layer, rtol=rtol, title=f"{method.upper()} {sizes}, d={d_model}, "
                                                                     f"n_H={n_heads}")
        except (ValueError, TypeError) as err:
            plt.close("all")
            _error_figure(str(err))
        else:
            ax.legend(fontsize=8.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
            last["ranks"] = ranks_
            same = (ranks_.ranks, ranks_.post_ranks) == (ranks_.tucker_ranks, ranks_.tucker_post_ranks)
            print(f"measured ranks 𝒲 {ranks_.ranks}, 𝒲̃ {ranks_.post_ranks}; exact Tucker construction "
                  f"𝒲 {ranks_.tucker_ranks}, 𝒲̃ {ranks_.tucker_post_ranks} -> "
                  f"{'equal' if same else 'the construction is not minimal here'}")
        plt.show()

    box = _widget_box(controls, draw, columns=4)
    box.last = last
    return box


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
        ax.legend(fontsize=8.5, loc="upper right")
        ax.grid(True, alpha=0.3)
        plt.show()

    box = _widget_box(controls, draw, columns=3)
    box.last = last
    return box


def latent_rope_widget(*, d_model: int = 64, n_heads: int = 8, ranks: Sequence[int] = (4, 32, 16),
                       n_tokens: int = 48, offset: int = 1000, base: float = 10000.0, head: int = 0,
                       seed: int = 0, device: str | torch.device = "cpu"):
    """Latent RoPE in a Tucker layer: shift every position by t, and the layer's scores do not move.

    Controls: the latent key size r₃ (the dimension RoPE rotates in), the common shift t, the RoPE base and
    the head shown. For each setting a ``TuckerAttention(d_model, n_heads, ranks=(r₁, r₂, r₃), rope=True)``
    (seed ``seed``, float64, on ``device``) scores ``n_tokens`` random tokens (``convert.layer_scores``) at
    positions 0..N−1 and t..t+N−1. The figure shows the last query's scores against the relative distance
    Δ = m − n: lines at positions shifted by t, circles unshifted (they coincide: the scores depend on m − n
    only), grey the same weights without RoPE; the title gives the largest score difference over all heads
    and tokens. Returns an ``ipywidgets.VBox`` with ``box.controls`` and ``box.last`` =
    ``{"r3", "offset", "base", "max_shift_difference", "rope_effect"}`` (``rope_effect``: the largest
    change RoPE makes to the scores, against the same layer without RoPE).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from ..attention.tucker import TuckerAttention
    from ..convert import layer_scores

    r1, r2, r3 = (int(r) for r in ranks)
    bases = [100.0, 1000.0, 10000.0, 100000.0]
    if float(base) not in bases:
        raise ValueError(f"base must be one of {bases}, got base={base!r}")
    r3_options = list(range(2, r2 + 1, 2))
    if r3 not in r3_options:
        raise ValueError(f"ranks[2] must be even and at most ranks[1]={r2} (latent RoPE rotates pairs), "
                         f"got ranks={tuple(ranks)}")
    if not 0 <= head < n_heads:
        raise ValueError(f"head must be in [0, n_heads={n_heads}), got head={head}")
    max_offset = 20000
    style = {"description_width": "130px"}
    controls = {
        "r3": widgets.SelectionSlider(options=r3_options, value=r3, description="latent key size r3",
                                      style=style),
        "offset": widgets.IntSlider(value=offset, min=0, max=max_offset, step=100, description="shift t",
                                    style=style),
        "base": widgets.SelectionSlider(options=[(f"{b:,.0f}", b) for b in bases], value=float(base),
                                        description="RoPE base", style=style),
        "head": widgets.IntSlider(value=head, min=0, max=n_heads - 1, description="head shown", style=style),
    }
    last: dict = {}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n_tokens, d_model, generator=gen, dtype=torch.float64).to(device)
    pos = torch.arange(n_tokens, device=device)

    def draw(r3, offset, base, head):
        torch.manual_seed(seed)
        sizes = dict(ranks=(r1, r2, r3), max_seq_len=max_offset + n_tokens, rope_base=base)
        layer = TuckerAttention(d_model, n_heads, rope=True, **sizes).to(device=device, dtype=torch.float64)
        plain = TuckerAttention(d_model, n_heads, **sizes).to(device=device, dtype=torch.float64)
        plain.load_state_dict(layer.state_dict())
        with torch.no_grad():
            s0 = layer_scores(layer, x, pos)[0]                 # (n_H, N, N), positions 0..N-1
            st = layer_scores(layer, x, pos + offset)[0]        # positions t..t+N-1
            sp = layer_scores(plain, x)[0]                      # no RoPE
        diff = float((st - s0).abs().max())
        effect = float((s0 - sp).abs().max())
        last.clear()
        last.update(r3=r3, offset=offset, base=base, max_shift_difference=diff, rope_effect=effect)
        m = n_tokens - 1
        delta = (m - pos).cpu()                                 # relative distance of each key
        fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
        ax.plot(delta, sp[head, m].cpu(), color="0.65", lw=1.2, ls="--", label="same weights, no RoPE")
        ax.plot(delta, st[head, m].cpu(), color="C4", lw=1.8, label=f"latent RoPE, positions shifted by t = {offset:,}")
        ax.plot(delta, s0[head, m].cpu(), "o", color="C4", ms=4, mfc="none", label="latent RoPE, positions 0..N-1")
        ax.set_xlabel("relative distance Δ = m − n (last query m, every key n)")
        ax.set_ylabel(f"score, head {head}")
        ax.set_title(f"r3 = {r3}, base {base:,.0f}: max |score shifted − unshifted| = {diff:.1e} "
                     f"(RoPE itself changes scores by up to {effect:.2g})", fontsize=10)
        ax.legend(fontsize=9, loc="best")
        ax.grid(True, alpha=0.3)
        plt.show()

    box = _widget_box(controls, draw, columns=2)
    box.last = last
    return box


__all__ += ["latent_rope_widget"]
