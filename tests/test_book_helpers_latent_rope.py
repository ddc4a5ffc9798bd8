"""``book.latent_rope_widget``: the chapter on latent RoPE shows a Tucker layer's shift-invariant scores."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tucker_attention as ta  # noqa: E402
from tucker_attention import book  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")  # plt.show() under Agg


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_default_state_is_shift_invariant_and_rope_acts():
    box = book.latent_rope_widget(d_model=32, n_heads=4, ranks=(2, 16, 8), n_tokens=24, offset=1000)
    last = box.last
    assert last["r3"] == 8 and last["offset"] == 1000
    assert last["max_shift_difference"] < 1e-10            # scores depend on m - n only
    assert last["rope_effect"] > 1e-2                      # and RoPE does change them
    fig = plt.gcf()                                         # the drawn default state
    assert book.small_text(fig) == [] and book.overlapping_text(fig) == []


def test_moving_controls_redraws_with_the_new_latent_size_and_shift():
    box = book.latent_rope_widget(d_model=32, n_heads=4, ranks=(2, 16, 8), n_tokens=16)
    box.controls["r3"].value = 4
    assert box.last["r3"] == 4 and box.last["max_shift_difference"] < 1e-10
    box.controls["offset"].value = 0
    assert box.last["offset"] == 0 and box.last["max_shift_difference"] == 0.0


def test_widget_scores_are_an_independent_latent_rope_computation():
    """The widget's invariance is the layer's: recompute Q_i R(m) (K R(n))ᵀ from the factors with rope_matrix."""
    from tucker_attention.attention import rope_matrix
    from tucker_attention.convert import layer_scores

    torch.manual_seed(0)
    layer = ta.TuckerAttention(16, 2, ranks=(2, 8, 4), rope=True).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    pos = torch.arange(5) + 7
    with torch.no_grad():   # a RoPE layer has no tucker_factors(); its parameters are the factors
        G = torch.einsum("ia,abc->ibc", layer.U1, layer.core)              # (n_H, r2, r3)
        q = torch.einsum("nr,hrs->hns", x[0] @ layer.U2, G)                # (n_H, N, r3)
        k = x[0] @ layer.U3                                                  # (N, r3)
    rot = torch.stack([rope_matrix(int(p), 4, base=layer.rope_base) for p in pos])   # (N, r3, r3)
    want = layer.scale * torch.einsum("hmr,mrs,nts,nt->hmn", q, rot, rot, k)
    with torch.no_grad():
        got = layer_scores(layer, x, pos)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="even"):
        book.latent_rope_widget(ranks=(4, 32, 15))
    with pytest.raises(ValueError, match="base"):
        book.latent_rope_widget(base=123.0)
    with pytest.raises(ValueError, match="head"):
        book.latent_rope_widget(n_heads=8, head=8)
