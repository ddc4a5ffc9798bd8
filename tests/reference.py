"""Independent reference computations for the tests: explicit per-head loops from the layers' weights,
written without the package's forward code (only its weight tensors and the RoPE matrix R(m))."""

from __future__ import annotations

import math

import torch

from tucker_attention.attention.rope import rope_matrix


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    return float((a - b).detach().norm() / b.detach().norm())


def randomize(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64, generic weights (including biases and Tucker biases, which start at zero)."""
    torch.manual_seed(seed)
    layer = layer.double().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(max(p.shape[-1], 1)))
    return layer


def softmax_attend(scores: torch.Tensor, causal: bool) -> torch.Tensor:
    """Row softmax of (N, S) scores, with a bottom-right causal mask."""
    N, S = scores.shape
    if causal:
        i = torch.arange(N).unsqueeze(1)
        j = torch.arange(S).unsqueeze(0)
        scores = scores.masked_fill(j > i + (S - N), float("-inf"))
    return torch.softmax(scores, dim=-1)


def rotate(t: torch.Tensor, positions: torch.Tensor, style: str = "interleaved", base: float = 10000.0):
    """Rows t[n] @ R(positions[n]) with explicit rotation matrices."""
    D = t.shape[-1]
    return torch.stack([t[n] @ rope_matrix(int(positions[n]), D, base=base, style=style).to(t.dtype)
                        for n in range(t.shape[0])])


def gqa_reference(layer, x: torch.Tensor, causal: bool, positions=None) -> torch.Tensor:
    """Per sequence, per head: softmax(s q_i k_g^T) v_g W^O_i, g = floor(i n_kv / n_H)."""
    H, Hkv, dh = layer.n_heads, layer.n_kv_heads, layer.head_dim
    Wq, Wk, Wv, Wo = (layer.q_proj.weight.T, layer.k_proj.weight.T, layer.v_proj.weight.T, layer.o_proj.weight.T)
    N = x.shape[1]
    positions = torch.arange(N) if positions is None else positions
    outs = []
    for b in range(x.shape[0]):
        X = x[b]
        y = torch.zeros_like(X)
        for i in range(H):
            g = i * Hkv // H
            q = X @ Wq[:, i * dh:(i + 1) * dh]
            k = X @ Wk[:, g * dh:(g + 1) * dh]
            v = X @ Wv[:, g * dh:(g + 1) * dh]
            if layer.rope:
                q, k = rotate(q, positions, layer.rope_style), rotate(k, positions, layer.rope_style)
            A = softmax_attend(q @ k.T / math.sqrt(dh), causal)
            y = y + A @ v @ Wo[i * dh:(i + 1) * dh]
        outs.append(y)
    return torch.stack(outs)


def mla_reference(layer, x: torch.Tensor, causal: bool, positions=None) -> torch.Tensor:
    """MLA in its expanded (training) form: per-head q_i, k_i, v_i from the latents.

    rope="latent": scores s (q_i W_UK_i^T R(m)) (c_kv R(n))^T; rope="decoupled": DeepSeek-V2's concatenation.
    """
    H, dh = layer.n_heads, layer.head_dim
    N = x.shape[1]
    positions = torch.arange(N) if positions is None else positions
    Wdq, Wuq = layer.q_down.weight.T, layer.q_up.weight.T
    Wdkv, Wuk, Wuv, Wo = layer.kv_down.weight.T, layer.k_up.weight.T, layer.v_up.weight.T, layer.o_proj.weight.T
    Wdv = layer.v_down.weight.T if layer.separate_kv else Wdkv
    outs = []
    for b in range(x.shape[0]):
        X = x[b]
        cq, ck, cv = X @ Wdq, X @ Wdkv, X @ Wdv
        y = torch.zeros_like(X)
        for i in range(H):
            sl = slice(i * dh, (i + 1) * dh)
            q, k, v = cq @ Wuq[:, sl], ck @ Wuk[:, sl], cv @ Wuv[:, sl]
            if layer.rope == "latent":
                scores = rotate(q @ Wuk[:, sl].T, positions) @ rotate(ck, positions).T / math.sqrt(dh)
            elif layer.rope == "decoupled":
                dr = layer.rope_dim
                qr = rotate(cq @ layer.q_rope.weight.T[:, i * dr:(i + 1) * dr], positions)
                kr = rotate(X @ layer.k_rope.weight.T, positions)
                scores = (torch.cat([q, qr], -1) @ torch.cat([k, kr], -1).T) / math.sqrt(dh + dr)
            else:
                scores = q @ k.T / math.sqrt(dh)
            y = y + softmax_attend(scores, causal) @ v @ Wo[sl]
        outs.append(y)
    return torch.stack(outs)


def tucker_reference(layer, x: torch.Tensor, causal: bool, positions=None) -> torch.Tensor:
    """PAPER.md §2–3 with explicit fused matrices: W_i = U2 G_i U3^T, W~_i = U3~ G~_i^T U2~^T;
    out = Σ_i softmax(s X W_i X^T) X W~_i (latent RoPE: s (X U2 G_i R(m)) (X U3 R(n))^T)."""
    N = x.shape[1]
    positions = torch.arange(N) if positions is None else positions
    s = 1.0 / math.sqrt(layer.d_model // layer.n_heads)
    G = torch.stack([sum(layer.U1[i, a] * layer.core[a] for a in range(layer.ranks[0]))
                     for i in range(layer.n_heads)])
    Gt = torch.stack([sum(layer.post_U1[i, a] * layer.post_core[a] for a in range(layer.post_ranks[0]))
                      for i in range(layer.n_heads)])
    Ut3 = layer.post_U3
    outs = []
    for b in range(x.shape[0]):
        X = x[b]
        y = torch.zeros_like(X)
        for i in range(layer.n_heads):
            if layer.rope:
                scores = rotate(X @ layer.U2 @ G[i], positions) @ rotate(X @ layer.U3, positions).T
            else:
                scores = X @ (layer.U2 @ G[i] @ layer.U3.T) @ X.T
            A = softmax_attend(s * scores, causal)
            y = y + A @ X @ (Ut3 @ Gt[i].T @ layer.post_U2.T)
        outs.append(y)
    return torch.stack(outs)


def reference(layer, x, causal, positions=None):
    from tucker_attention import GroupedQueryAttention, MultiHeadLatentAttention, TuckerAttention
    if isinstance(layer, GroupedQueryAttention):
        return gqa_reference(layer, x, causal, positions)
    if isinstance(layer, MultiHeadLatentAttention):
        return mla_reference(layer, x, causal, positions)
    if isinstance(layer, TuckerAttention):
        return tucker_reference(layer, x, causal, positions)
    raise TypeError(type(layer))
