"""The book's diagrams (Tucker schematic, layer data flow) and the readability checks used on figures."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from tucker_attention import book  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_tucker_schematic_is_drawn_to_scale_and_labelled():
    ax = book.tucker_schematic(n_heads=6, d=10, ranks=(2, 5, 3))
    labels = " ".join(_texts(ax))
    for needle in (r"$\mathcal{W}$", r"$\mathcal{C}$", "$U_1$", "$U_2$", r"$U_3^\top$", "d = 10", "$r_2$ = 5",
                   "$r_3$ = 3", "$r_1$ = 2", "$n_H$ = 6"):
        assert needle in labels, needle
    boxes = {(p.get_width(), p.get_height()) for p in ax.patches if isinstance(p, Rectangle)}
    # 𝒲's front face d x d (query x key), U2 d x r2, the core's front face r2 x r3, U3^T r3 x d: (width, height)
    assert boxes == {(10, 10), (5, 10), (3, 5), (10, 3)}
    assert book.overlapping_text(ax.figure) == [] and book.small_text(ax.figure) == []


def test_tucker_schematic_rejects_impossible_ranks():
    with pytest.raises(ValueError, match="r1 <= n_heads"):
        book.tucker_schematic(n_heads=4, d=10, ranks=(5, 2, 2))
    with pytest.raises(ValueError, match="ranks"):
        book.tucker_schematic(n_heads=4, d=10, ranks=(2, 11, 2))


def test_layer_dataflow_shows_the_papers_forward_pass():
    ax = book.layer_dataflow()
    labels = " ".join(_texts(ax))
    for needle in ("$U_2$", "$G_i$", "$U_3$", r"$\tilde U_3$", r"$\tilde U_2^\top$", "$K = XU_3$",
                   r"$V = X\tilde U_3$", "shared by all heads", "one per head", "multi-query"):
        assert needle in labels, needle
    assert book.overlapping_text(ax.figure) == [] and book.small_text(ax.figure) == []


def test_readability_checks_catch_small_and_overlapping_text():
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.text(0.5, 0.5, "tiny", fontsize=6)
    ax.text(0.5, 0.5, "on top", fontsize=12)
    ax.axis("off")
    assert [t for t, _ in book.small_text(fig, column_px=720)] == ["tiny"]    # 6 pt in 720 px / 10 in
    assert ("tiny", "on top") in book.overlapping_text(fig)
    assert book.small_text(fig, column_px=720, min_px=4) == []


def test_committed_diagrams_are_the_drawing_functions_output(tmp_path):
    for name in book.DIAGRAMS:
        committed = ROOT / "book" / "images" / f"{name}.svg"
        assert committed.is_file(), f"{committed} is missing: run book.save_diagrams('book/images')"
    version = re.search(r"Matplotlib v([\d.]+)", (ROOT / "book/images/tucker_schematic.svg").read_text("utf8"))
    if version is None or version.group(1) != matplotlib.__version__:
        pytest.skip("the committed SVGs were drawn with another matplotlib version")
    for path in book.save_diagrams(tmp_path):
        assert path.read_bytes() == (ROOT / "book" / "images" / path.name).read_bytes(), (
            f"book/images/{path.name} is out of date: run book.save_diagrams('book/images')")


def test_compact_labels():
    assert [book.compact(v) for v in (2359296, 426176, 15360, 1536, 128, 3.14159)] == \
        ["2.36M", "426k", "15.4k", "1,536", "128", "3.14"]


CHAPTER_04_CONFIGS = [
    ("MHA", "mha", {}), ("GQA n_KV=4", "gqa", {"n_kv_heads": 4}), ("GQA n_KV=2", "gqa", {"n_kv_heads": 2}),
    ("MQA", "mqa", {}), ("MLA d_c=128", "mla", {"q_latent": 128, "kv_latent": 128}),
    ("MLA d_c=128, separate", "mla", {"q_latent": 128, "kv_latent": 128, "separate_kv": True}),
    ("Tucker [8,128,64]", "tucker", {"ranks": (8, 128, 64)}), ("Tucker [8,64,64]", "tucker", {"ranks": (8, 64, 64)}),
]


@pytest.mark.parametrize("which", ["budget", "cache", "gpt2_budget", "chapter_04_budget"])
def test_budget_and_cache_figures_are_readable_at_the_sites_width(which):
    """No label overlaps another and none is below ~9 px when the figure is scaled to the text column."""
    if which == "budget":
        rows = book.budget_rows(book.family_configs(n_kv_heads=4, kv_latent=128, ranks=(8, 128, 64)), 768, 12)
        fig = book.budget_figure(rows, title="one attention layer")
    elif which == "gpt2_budget":
        fig = book.budget_figure(book.budget_rows(book.gpt2_small_configs(), 768, 12))
    elif which == "chapter_04_budget":
        fig = book.budget_figure(book.budget_rows(CHAPTER_04_CONFIGS, 768, 12),
                                 title="one attention layer, d = 768, n_H = 12 (percentages: share of MHA)")
    else:
        fig = book.cache_figure(book.gpt2_small_configs(), seq_len=1024, batch_size=1, d_model=768, n_heads=12,
                                n_layers=12)
    assert book.small_text(fig) == []
    assert book.overlapping_text(fig) == []
