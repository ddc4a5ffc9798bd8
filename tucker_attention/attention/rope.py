"""Rotary position embedding (RoPE), in a head's space or in a latent space (paper §6).

``R(m)`` is block diagonal with 2x2 rotations by angles ``m * theta_j``, ``theta_j = base^(-2j/D)``,
``j = 0 .. D/2-1``. With row vectors, ``(q R(m)) (k R(n))^T = q R(m - n) k^T``: scores depend on the
relative position only. Latent RoPE is the same map applied with ``D = r3`` (Tucker) or ``D = d_c^K``
(MLA) to the latent queries and the single shared latent key.

Two pairings of the D coordinates are supported: ``"interleaved"`` rotates (x[2j], x[2j+1]) (RoFormer,
DeepSeek's complex form) and ``"half"`` rotates (x[j], x[j + D/2]) (GPT-NeoX / Hugging Face Llama).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ROPE_STYLES = ("interleaved", "half")


def rope_angles(positions: torch.Tensor, dim: int, *, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``positions[n] * theta_j``, each (N, dim/2), computed in float64 for exactness."""
    if dim % 2 != 0:
        raise ValueError(f"RoPE dimension must be even, got dim={dim}")
    j = torch.arange(dim // 2, device=positions.device, dtype=torch.float64)
    theta = base ** (-2.0 * j / dim)                                  # (dim/2,)
    angles = positions.to(torch.float64).unsqueeze(-1) * theta        # (N, dim/2)
    return angles.cos(), angles.sin()


def rope_table(length: int, dim: int, *, base: float = 10000.0, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope_angles`` of the positions ``0 .. length-1`` as (length, dim/2) tables in ``dtype``.

    Computed in float64 and then cast, so ``table[positions]`` equals ``rope_angles(positions)`` cast to
    ``dtype`` exactly; a layer builds it once per device and dtype and gathers rows instead of recomputing.
    """
    cos, sin = rope_angles(torch.arange(length, device=device), dim, base=base)
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, style: str = "interleaved") -> torch.Tensor:
    """Rotate the last dimension of ``x`` (..., N, D) by ``R(positions)`` given ``cos, sin`` (N, D/2)."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    if style == "interleaved":
        x0, x1 = x[..., 0::2], x[..., 1::2]                            # (..., N, D/2) each
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.flatten(-2)
    if style == "half":
        h = x.shape[-1] // 2
        x0, x1 = x[..., :h], x[..., h:]
        return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    raise ValueError(f"rope style must be one of {ROPE_STYLES}, got style={style!r}")


def rope_matrix(position: int, dim: int, *, base: float = 10000.0, style: str = "interleaved",
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The (dim, dim) matrix ``R(m)`` with ``x R(m) == apply_rope(x, ...)`` (for teaching and tests)."""
    eye = torch.eye(dim, dtype=dtype)
    cos, sin = rope_angles(torch.tensor([position]), dim, base=base)
    return apply_rope(eye.unsqueeze(-2), cos, sin, style=style).squeeze(-2)


def rope_relative_scores(dim: int, distances: Sequence[int] | torch.Tensor, *, base: float = 10000.0, offset: int = 0,
                         query: torch.Tensor | None = None, key: torch.Tensor | None = None,
                         style: str = "interleaved") -> torch.Tensor:
    """RoPE scores against relative distance: ``(q R(offset + Δ)) · (k R(offset))`` for each Δ in ``distances``.

    ``R`` is ``rope_matrix``'s rotation of size ``dim`` (``θ_j = base^(-2j/dim)``); by
    ``R(m) R(n)ᵀ = R(m − n)`` the result does not depend on ``offset`` (up to round-off in the angles).
    ``query``/``key``: (dim,) vectors, default all ones (the curve of RoFormer's long-term decay).
    Returns a float64 tensor (len(distances),). The book's chapter on latent RoPE draws it.
    """
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
