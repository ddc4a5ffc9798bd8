"""Tests of the book helpers chapters 04 (special cases, ranks) and 05 (latent RoPE) use."""

import matplotlib

matplotlib.use("Agg")  # tests only: no display here (never set for notebook runs, see TOOLCHAIN.md)

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tucker_attention as ta  # noqa: E402
from tucker_attention import book  # noqa: E402
from tucker_attention.tensors import unfolding_spectra  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _low_rank_tensor(ranks, shape=(6, 10, 12)):
    """A dense tensor of exact multilinear rank ``ranks`` (generic random Tucker factors, float64)."""
    g = torch.Generator().manual_seed(1)
    core = torch.randn(*ranks, generator=g, dtype=torch.float64)
    Us = [torch.randn(n, r, generator=g, dtype=torch.float64) for n, r in zip(shape, ranks)]
    return ta.TuckerFactors(core, *Us).full()


def test_plot_unfolding_spectra_marks_the_numerical_rank():
    spectra = unfolding_spectra(_low_rank_tensor((2, 3, 4)))
    fig, ax = plt.subplots()
    lines = book.plot_unfolding_spectra(ax, spectra, rtol=1e-10, floor=1e-20)
    assert len(lines) == 3
    labels = [line.get_label() for line in lines]
    assert labels == ["mode 1 (head): rank 2", "mode 2 (query): rank 3", "mode 3 (key): rank 4"]
    for line, s in zip(lines, spectra):
        y = line.get_ydata()
        assert y[0] == pytest.approx(1.0)
        assert len(y) == len(s)
        assert min(y) >= 1e-20                     # exact zeros are drawn at the floor of the log axis
    assert ax.get_yscale() == "log"


def test_plot_unfolding_spectra_rejects_bad_input():
    spectra = unfolding_spectra(_low_rank_tensor((2, 3, 4)))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="names"):
        book.plot_unfolding_spectra(ax, spectra, names=("head", "query"))
    with pytest.raises(ValueError, match=r"spectra\[0\]"):
        book.plot_unfolding_spectra(ax, [torch.ones(2, 2)], names=("head",))


def test_plot_layer_spectra_gives_theorem_ranks_of_gqa():
    layer = ta.GroupedQueryAttention(16, 4, 2).double()         # d_H = 4: key/value rank n_kv d_H = 8
    _, ax = plt.subplots()
    ranks = book.plot_layer_spectra(ax, layer, title="GQA")
    assert ranks.ranks == ranks.post_ranks == (4, 16, 8)
    assert ranks.tucker_ranks == ranks.tucker_post_ranks == (4, 16, 8)
    assert "(4, 16, 8)" in ax.get_title()
    assert len(ax.get_lines()) == 6 + 6 + 1                      # 6 spectra, 6 rank markers, 1 threshold


def test_rank_layer_sizes_picks_each_methods_arguments():
    kw = dict(n_kv_heads=2, q_latent=8, kv_latent=4, separate_kv=True, ranks=[2, 8, 4])
    assert book.rank_layer_sizes("mha", **kw) == {}
    assert book.rank_layer_sizes("mqa", **kw) == {}
    assert book.rank_layer_sizes("gqa", **kw) == {"n_kv_heads": 2}
    assert book.rank_layer_sizes("mla", **kw) == {"q_latent": 8, "kv_latent": 4, "separate_kv": True}
    assert book.rank_layer_sizes("tucker", **kw) == {"ranks": (2, 8, 4)}
    with pytest.raises(ValueError, match="method"):
        book.rank_layer_sizes("mlp", **kw)


def test_rank_widget_default_and_updates():
    box = book.rank_widget(d_model=32, n_heads=4, q_latent=16, kv_latent=8, ranks=(2, 16, 8))
    assert set(box.controls) == {"method", "n_kv_heads", "q_latent", "kv_latent", "separate_kv", "r1", "r2", "r3"}
    r = box.last["ranks"]                                        # default: MLA, shared latent
    assert (r.ranks, r.post_ranks) == ((4, 16, 8), (4, 32, 8))
    box.controls["method"].value = "mqa"
    assert box.last["sizes"] == {}
    assert box.last["ranks"].ranks == (4, 32, 8)              # d_H = 8
    box.controls["method"].value = "tucker"
    box.controls["r1"].value = 3
    assert box.last["ranks"].ranks == (3, 16, 8)
    assert box.last["ranks"].tucker_ranks == (3, 16, 8)


def test_rank_widget_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_kv_heads"):
        book.rank_widget(n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="method"):
        book.rank_widget(method="rnn")


def test_book_reexports_the_rope_curve_from_the_rope_module():
    """The curve is package maths (tested in test_rope_relative_scores.py); chapters reach it through book."""
    from tucker_attention.attention import rope

    assert book.rope_relative_scores is rope.rope_relative_scores


def test_rope_widget_default_shows_shift_invariance():
    box = book.rope_widget(dim=16, offset=500, max_distance=64)
    assert set(box.controls) == {"base", "dim", "offset"}
    last = box.last
    assert len(last["distances"]) == 65
    assert float(last["ones"][0]) == pytest.approx(1.0)
    assert float(last["random"][0]) == pytest.approx(1.0)
    assert last["max_shift_difference"] < 1e-10
    box.controls["dim"].value = 32
    assert len(box.last["ones"]) == 65
    with pytest.raises(ValueError, match="base"):
        book.rope_widget(base=12345.0)
