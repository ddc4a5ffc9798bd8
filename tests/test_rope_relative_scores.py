"""``attention.rope.rope_relative_scores``: RoPE scores against relative distance (the book's RoPE curves)."""

from __future__ import annotations

import math

import pytest
import torch

from tucker_attention.attention.rope import rope_matrix, rope_relative_scores


def test_matches_rotation_matrices_and_ignores_offset():
    dim, base = 8, 100.0
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    dist = [0, 1, 5, 17]
    for style in ("interleaved", "half"):
        for offset in (0, 3, 250):
            got = rope_relative_scores(dim, dist, base=base, offset=offset, query=q, key=k, style=style)
            want = torch.stack([(q @ rope_matrix(offset + d, dim, base=base, style=style))
                                @ (k @ rope_matrix(offset, dim, base=base, style=style)) for d in dist])
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("style", ["interleaved", "half"])
def test_all_ones_curve_is_a_sum_of_cosines(style):
    """With q = k = 1 each rotated pair contributes 2 cos(Δ θ_j): the closed form of RoFormer's decay curve."""
    dim, base = 16, 10000.0
    dist = list(range(0, 200, 7))
    got = rope_relative_scores(dim, dist, base=base, offset=41, style=style)
    want = torch.tensor([sum(2 * math.cos(d * base ** (-2 * j / dim)) for j in range(dim // 2)) for d in dist],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert got[0] == pytest.approx(dim) and got.dtype == torch.float64


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        rope_relative_scores(8, [0, 1], query=torch.ones(6))
    with pytest.raises(ValueError, match="offset"):
        rope_relative_scores(8, [-3, 0], offset=2)
    with pytest.raises(ValueError, match="offset"):
        rope_relative_scores(8, [0, 1], offset=-1)
    with pytest.raises(ValueError, match="even"):
        rope_relative_scores(7, [0, 1])
