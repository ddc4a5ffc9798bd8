"""Conversions: exact MHA/GQA/MQA/MLA → Tucker (paper §4), HOSVD/HOOI compression, query folding
(paper §6) and peers' attention modules in (PyTorch, Hugging Face GPT-2 / ViT / DeepSeek-V2).

- ``to_tucker(layer)``: the exact Tucker layer of Theorems B.2–B.4, built from ``layer.tucker_factors()``
  (each layer class holds its own theorem), so its output equals the original's to round-off.
- ``compress(layer, ranks, post_ranks)``: truncated HOSVD (or HOOI) of the layer's dense tensors 𝒲, 𝒲̃ with
  tensorly — the paper's initialization of Tucker layers from pretrained attention (paper §7).
- ``fold_queries`` / ``folded_scores`` / ``layer_scores`` / ``head_rope_scores``: the folded query matrices
  ``F_i = W^{DQ} W^{UQ}_i (W^{UK}_i)ᵀ`` of MLA (``U2 G_i`` of Tucker) and the scores they give with latent
  RoPE (exact) or against head-dim RoPE (the control that fails).
- ``from_peer(module)``: our layer with the same output as ``torch.nn.MultiheadAttention``, 🤗 ``GPT2Attention``,
  ``ViTAttention`` or ``DeepseekV2Attention``.

Biases convert exactly (``attention.factors.fold_biases``): a key bias adds a per-query-row constant to the
scores, which the softmax cancels; value and output biases fold into one output bias (softmax rows sum to 1,
``b_out' = b_V W^O + b_O``); a query bias is a per-head query offset in the latent key space after U3,

    s (x W^Q_i + b^Q_i)(W^K_i)ᵀ x_kᵀ = s x W_i x_kᵀ + s (b^Q_i (W^K_i)ᵀ) x_kᵀ = s (x U2 G_i + c_i) (x_k U3)ᵀ,

with ``c_i = b^Q G_i`` (r3,) — ``TuckerAttention(bias=True)``'s ``q_bias`` — and ``out_bias`` (d,).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import tensorly as tl
import torch
from torch import nn

from .attention import (
    AttentionLayer,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    TuckerAttention,
)
from .attention._checks import check_input, check_positions
from .attention.rope import apply_rope, rope_angles
from .tensors import _check_layer, attention_biases, attention_tensors, mode_product, tucker_decomposition, unfold
from .validation import check_bool, check_float, check_int, check_ranks

__all__ = ["to_tucker", "compress", "COMPRESS_METHODS", "fold_queries", "folded_scores", "layer_scores",
           "head_rope_scores", "from_peer", "peer_kind", "PEERS"]

COMPRESS_METHODS = ("hosvd", "hooi")
PEERS = ("torch.nn.MultiheadAttention", "transformers GPT2Attention", "transformers ViTAttention",
         "transformers ViTSelfAttention (transformers 4.x)", "transformers DeepseekV2Attention")


# ------------------------------------------------------------------------------------- helpers
def _param(module: nn.Module) -> torch.Tensor:
    p = next(module.parameters(), None)
    if p is None:
        raise ValueError(f"{type(module).__name__} has no parameters to convert")
    return p


def _new_tucker(layer: AttentionLayer, ranks: Sequence[int], post_ranks: Sequence[int], *, shared_kv: bool,
                bias: bool) -> TuckerAttention:
    """An empty TuckerAttention with ``layer``'s sizes, settings, dtype, device and train/eval mode."""
    p = _param(layer)
    new = TuckerAttention(layer.d_model, layer.n_heads, tuple(ranks), tuple(post_ranks), shared_kv=shared_kv,
                          bias=bias, max_seq_len=layer.max_seq_len, dropout=layer.dropout, backend=layer.backend,
                          rope_base=layer.rope_base, rope_style=layer.rope_style)
    return new.to(device=p.device, dtype=p.dtype).train(layer.training)


@torch.no_grad()
def _fill_tucker(new: TuckerAttention, pre: Sequence[torch.Tensor], post: Sequence[torch.Tensor], *,
                 alpha: float, q_bias: torch.Tensor | None, out_bias: torch.Tensor | None) -> TuckerAttention:
    """Copy (core, U1, U2, U3) and (post_core, post_U1, post_U2, post_U3) into ``new``; ``alpha`` rescales the
    pre-softmax core and the query bias so that ``new.scale * alpha`` is the source layer's score scale."""
    core, U1, U2, U3 = pre
    pcore, pU1, pU2, pU3 = post
    new.core.copy_(core * alpha)
    new.U1.copy_(U1)
    new.U2.copy_(U2)
    new.U3.copy_(U3)
    new.post_core.copy_(pcore)
    new.post_U1.copy_(pU1)
    new.post_U2.copy_(pU2)
    if not new.shared_kv:
        new.post_U3.copy_(pU3)
    if new.bias:
        new.q_bias.copy_(q_bias * alpha)
        new.out_bias.copy_(out_bias)
    return new


# ---------------------------------------------------------------------------- exact conversions
def to_tucker(layer: AttentionLayer) -> TuckerAttention:
    """The exact Tucker layer of a RoPE-free MHA, GQA/MQA or MLA layer (paper §4, Theorems B.2–B.4).

    Uses the layer's own factors, so the result has the theorem's ranks: MHA ``(n_H, d, d)`` twice;
    GQA ``(n_H, d, n_kv d_H)`` twice (MQA: n_kv = 1); MLA ``ranks=(n_H, d_c^Q, d_c^K)``,
    ``post_ranks=(n_H, d, d_c^K)`` and ``shared_kv=True`` when K and V share the latent (then its cache is MLA's
    ``d_c^K`` per token). Biases become ``q_bias``/``out_bias`` (module docstring); a score scale different
    from ``1/sqrt(d_H)`` is folded into the core. A ``TuckerAttention`` maps to a copy of itself.
    Dtype, device, dropout, backend, max_seq_len and train/eval mode are copied.

    Raises ``ValueError`` for RoPE layers and latent RMSNorms (no attention tensors).
    """
    layer = _check_layer(layer)
    if isinstance(layer, TuckerAttention):
        return copy.deepcopy(layer)
    pre, post = layer.tucker_factors()
    shared = pre.U3.shape == post.U3.shape and bool(torch.equal(pre.U3, post.U3))
    biases = layer.tucker_biases()
    new = _new_tucker(layer, pre.ranks, post.ranks, shared_kv=shared, bias=biases is not None)
    q_bias, out_bias = biases if biases is not None else (None, None)
    return _fill_tucker(new, (pre.core, pre.U1, pre.U2, pre.U3), (post.core, post.U1, post.U2, post.U3),
                        alpha=layer.scale / new.scale, q_bias=q_bias, out_bias=out_bias)


# ---------------------------------------------------------------------------------- compression
def _decompose_fixed_mode3(T: torch.Tensor, U3: torch.Tensor, ranks: Sequence[int], method: str,
                           n_iter_max: int, tol: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """HOSVD/HOOI of T over modes 1, 2 with the (orthonormal) mode-3 factor U3 fixed."""
    Tp = mode_product(T, U3.T, 3)                                      # (n_H, d, r3)
    core, (U1, U2) = tucker_decomposition(Tp, ranks[:2], method=method, n_iter_max=n_iter_max, tol=tol, modes=(1, 2))
    return core, [U1, U2, U3]


@torch.no_grad()
def compress(layer: AttentionLayer, ranks: Sequence[int], post_ranks: Sequence[int] | None = None, *,
             method: str = "hosvd", n_iter_max: int = 100, tol: float = 1e-8, shared_kv: bool = False
             ) -> TuckerAttention:
    """A ``TuckerAttention`` with exactly ``ranks`` / ``post_ranks`` approximating ``layer``'s tensors.

    Args:
        layer: any RoPE-free layer of the family (a converted peer too).
        ranks: (r1, r2, r3) for 𝒲 (head, query, key), ``1 <= r <= (n_heads, d_model, d_model)``.
        post_ranks: (r̃1, r̃2, r̃3) for 𝒲̃ (head, output, value); None: the same as ``ranks``.
        method: "hosvd" — truncated HOSVD (``tensorly.decomposition.tucker(init="svd", n_iter_max=0)``: the
            leading left singular vectors of each unfolding, core ``𝒲 ×₁ U1ᵀ ×₂ U2ᵀ ×₃ U3ᵀ``); "hooi" — higher-order
            orthogonal iteration started from it (``n_iter_max`` sweeps, stop when the error changes < ``tol``).
        shared_kv: one key/value factor U3 = Ũ3 (needs ranks[2] == post_ranks[2]), the leading left singular
            vectors of the stacked mode-3 unfoldings ``[𝒲_(3), 𝒲̃_(3)]``; modes 1, 2 as ``method`` with it fixed.

    Full multilinear ranks reproduce the layer to round-off. Biases: the dense query bias ``β_i`` (n_H, d)
    is projected onto the new key factor (``q_bias = β U3``, least squares since U3 is orthonormal), the output
    bias is kept. Runs under ``torch.no_grad()`` with tensorly's pytorch backend, in the layer's dtype.
    """
    layer = _check_layer(layer)
    d, H = layer.d_model, layer.n_heads
    limits, names = (H, d, d), ("n_heads", "d_model", "d_model")
    ranks = check_ranks("ranks", ranks, limits, names)
    post_ranks = ranks if post_ranks is None else check_ranks("post_ranks", post_ranks, limits, names)
    if method not in COMPRESS_METHODS:
        raise ValueError(f"method must be one of {COMPRESS_METHODS}, got method={method!r}")
    check_int("n_iter_max", n_iter_max)
    check_float("tol", tol, low=0.0)
    check_bool("shared_kv", shared_kv)
    if shared_kv and ranks[2] != post_ranks[2]:
        raise ValueError(f"shared_kv=True needs equal key and value ranks, got ranks[2]={ranks[2]} and "
                         f"post_ranks[2]={post_ranks[2]}")
    W, Wt, scale = attention_tensors(layer)
    W, Wt = W.detach(), Wt.detach()
    biases = attention_biases(layer)
    with tl.backend_context("pytorch"):
        if shared_kv:
            stacked = torch.cat((unfold(W, 3), unfold(Wt, 3)), dim=1)  # (d, 2 n_H d)
            U3 = torch.linalg.svd(stacked, full_matrices=False).U[:, : ranks[2]]
            core, f = _decompose_fixed_mode3(W, U3, ranks, method, n_iter_max, tol)
            pcore, pf = _decompose_fixed_mode3(Wt, U3, post_ranks, method, n_iter_max, tol)
        else:
            core, f = tucker_decomposition(W, ranks, method=method, n_iter_max=n_iter_max, tol=tol)
            pcore, pf = tucker_decomposition(Wt, post_ranks, method=method, n_iter_max=n_iter_max, tol=tol)
    new = _new_tucker(layer, ranks, post_ranks, shared_kv=shared_kv, bias=biases is not None)
    q_bias, out_bias = (biases[0] @ f[2], biases[1]) if biases is not None else (None, None)
    return _fill_tucker(new, (core, *f), (pcore, *pf), alpha=scale / new.scale, q_bias=q_bias, out_bias=out_bias)


# ------------------------------------------------------------------- query folding (paper §6)
def fold_queries(layer: AttentionLayer) -> torch.Tensor:
    """The folded query matrices ``F`` (n_H, d, r3): head i's latent query is ``x F_i``, its keys the cached
    latents (paper §6) — ``layer.fold_queries()``.

    MLA: ``F_i = W^{DQ} W^{UQ}_i (W^{UK}_i)ᵀ`` (d, d_c^K) for any ``rope`` (with "decoupled" this is the no-RoPE
    part; the decoupled dims stay separate). Tucker: ``F_i = U2 G_i`` (d, r3). Other RoPE-free layers:
    ``U2 G_i`` from their Tucker factors. An MLA query-latent RMSNorm sits between W^{DQ} and W^{UQ}: no fold.
    """
    return _check_layer(layer).fold_queries()


def _positions(layer: AttentionLayer, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    check_input(x, layer.d_model, param=_param(layer))
    if positions is None:
        positions = torch.arange(x.shape[1], device=x.device)
    return check_positions(positions, x.shape[1], layer.max_seq_len).to(x.device)


def folded_scores(layer: AttentionLayer, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled pre-softmax scores (B, n_H, N, N) from the folded queries and the latent keys a cache holds:

        score_i(m, n) = s · (x_m F_i R(m)) (c_n R(n))ᵀ,      c_n = x_n W^{DKV} (MLA) or x_n U3 (Tucker)

    with ``R`` the layer's latent RoPE (identity without RoPE), plus DeepSeek's decoupled RoPE term for
    ``rope="decoupled"``, plus a Tucker/biased layer's query offset. With latent RoPE this equals
    ``layer_scores`` to round-off (paper §6); it cannot equal ``head_rope_scores`` (the control).

    The keys are the ones the layer gives its kernel (``layer.qkv``) when that is one shared latent head (MLA,
    Tucker, MQA); layers with per-head keys (MHA, GQA) use their latent keys ``x U3``.
    """
    layer = _check_layer(layer)
    positions = _positions(layer, x, positions)
    F = layer.fold_queries()                                           # (H, d, r3)
    q = torch.einsum("bnd,hdr->bhnr", x, F)                            # (B, H, N, r3)
    biases = layer.tucker_biases()
    if biases is not None:
        q = q + biases[0].unsqueeze(1)                                 # per-head query offset (H, 1, r3)
    if layer.latent_rope:
        q = layer.rotate(q, positions)
    q_layer, k, _ = layer.qkv(x, positions=positions)                  # (B, H, N, D), (B, Hkv, N, D)
    r = F.shape[-1]
    if k.shape[1] != 1 or k.shape[-1] < r:                             # per-head keys: use the latent x U3
        k = (x @ layer.tucker_factors()[0].U3).unsqueeze(1)            # (B, 1, N, r3)
    elif k.shape[-1] > r:                                              # DeepSeek's decoupled dims
        q = torch.cat((q, q_layer[..., r:]), dim=-1)
    return layer.scale * (q @ k.transpose(-1, -2))


def layer_scores(layer: AttentionLayer, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's own scaled pre-softmax scores (B, n_H, N, N), from the q and k its kernel gets
    (``layer.qkv``; no mask). With a key bias they differ from ``folded_scores`` by a per-row constant, which
    the softmax cancels."""
    layer = _check_layer(layer)
    q, k, _ = layer.qkv(x, positions=_positions(layer, x, positions))  # (B, Hq, N, D), (B, Hkv, N, D)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)           # head h uses kv group h // (Hq / Hkv)
    return layer.scale * (q @ k.transpose(-1, -2))


def head_rope_scores(layer: MultiHeadLatentAttention, x: torch.Tensor,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
    """Scores (B, n_H, N, N) of an MLA with **head-dim RoPE** on ``layer``'s weights (the control of §6):

        q_i = c_q W^{UQ}_i R_{d_H}(m),   k_i = c_kv W^{UK}_i R_{d_H}(n),   score_i = s q_i k_iᵀ

    The rotation sits between W^{UQ}_i and (W^{UK}_i)ᵀ, so no position-independent ``F_i`` reproduces it:
    ``folded_scores`` differs (what DeepSeek-V2's decoupled RoPE works around). Uses the no-RoPE weights
    (``rope`` None or "latent"; the layer's own latent rotation is not applied).
    """
    layer = _check_layer(layer)
    if not isinstance(layer, MultiHeadLatentAttention) or layer.rope == "decoupled":
        raise TypeError("head_rope_scores needs a MultiHeadLatentAttention with rope None or 'latent', got "
                        f"{type(layer).__name__}" + (f"(rope={layer.rope!r})" if hasattr(layer, "rope") else ""))
    positions = _positions(layer, x, positions)
    B, N, _ = x.shape
    c_q = layer.q_down(x)
    if layer.latent_norm == "q_kv":
        c_q = layer.q_norm(c_q)
    c_kv = layer.kv_down(x)
    if layer.latent_norm is not None:
        c_kv = layer.kv_norm(c_kv)
    q = layer.q_up(c_q).view(B, N, layer.n_heads, layer.head_dim).transpose(1, 2)   # (B, H, N, d_H)
    k = layer.k_up(c_kv).view(B, N, layer.n_heads, layer.head_dim).transpose(1, 2)  # (B, H, N, d_H)
    cos, sin = rope_angles(positions, layer.head_dim, base=layer.rope_base)
    q, k = apply_rope(q, cos, sin, style=layer.rope_style), apply_rope(k, cos, sin, style=layer.rope_style)
    return layer.scale * (q @ k.transpose(-1, -2))


# ------------------------------------------------------------------------------------ peers in
@torch.no_grad()
def _mha_from_linears(d: int, n_heads: int, q: tuple, k: tuple, v: tuple, o: tuple, *, scale: float,
                      dropout: float, like: torch.Tensor, **kwargs) -> MultiHeadAttention:
    """Our MHA from (weight (out, in), bias or None) pairs of q, k, v, o (``o`` weight None: identity).

    A score scale other than 1/sqrt(d_H) is folded into W^Q and b^Q; missing biases are zeros.
    """
    has_bias = any(b is not None for _, b in (q, k, v, o))
    layer = MultiHeadAttention(d, n_heads, bias=has_bias, dropout=dropout, **kwargs)
    layer = layer.to(device=like.device, dtype=like.dtype)
    alpha = scale / layer.scale
    eye = torch.eye(d, dtype=like.dtype, device=like.device)
    for lin, (w, b), a in ((layer.q_proj, q, alpha), (layer.k_proj, k, 1.0), (layer.v_proj, v, 1.0),
                           (layer.o_proj, o, 1.0)):
        lin.weight.copy_((eye if w is None else w) * a)
        if has_bias:
            lin.bias.copy_(torch.zeros_like(lin.bias) if b is None else b * a)
    return layer


def _from_torch_mha(m: nn.MultiheadAttention) -> MultiHeadAttention:
    if not m._qkv_same_embed_dim:
        raise ValueError(f"from_peer: nn.MultiheadAttention with kdim={m.kdim} / vdim={m.vdim} different from "
                         f"embed_dim={m.embed_dim} (cross-attention) is not supported")
    if m.bias_k is not None or m.bias_v is not None:
        raise ValueError("from_peer: nn.MultiheadAttention with add_bias_kv=True (an extra learned key/value "
                         "token) is not supported")
    if m.add_zero_attn:
        raise ValueError("from_peer: nn.MultiheadAttention with add_zero_attn=True is not supported")
    d = m.embed_dim
    W, b = m.in_proj_weight, m.in_proj_bias                            # (3d, d), (3d,) or None
    parts = [(W[i * d:(i + 1) * d], None if b is None else b[i * d:(i + 1) * d]) for i in range(3)]
    return _mha_from_linears(d, m.num_heads, *parts, (m.out_proj.weight, m.out_proj.bias),
                             scale=(d // m.num_heads) ** -0.5, dropout=float(m.dropout), like=W)


def _from_gpt2(m: nn.Module) -> MultiHeadAttention:
    if getattr(m, "is_cross_attention", False):
        raise ValueError("from_peer: GPT2Attention with is_cross_attention=True is not supported")
    d, H = m.embed_dim, m.num_heads
    if hasattr(m, "scaling"):
        scale = float(m.scaling)
    else:                                                              # transformers 4.x
        scale = (m.head_dim ** -0.5) if m.scale_attn_weights else 1.0
        if m.scale_attn_by_inverse_layer_idx:
            scale /= float(m.layer_idx + 1)
    W, b = m.c_attn.weight, m.c_attn.bias                              # Conv1D: x @ W + b, W (d, 3d)
    parts = [(W[:, i * d:(i + 1) * d].T, b[i * d:(i + 1) * d]) for i in range(3)]
    return _mha_from_linears(d, H, *parts, (m.c_proj.weight.T, m.c_proj.bias), scale=scale,
                             dropout=float(m.attn_dropout.p), like=W)


def _from_vit(m: nn.Module) -> MultiHeadAttention:
    if hasattr(m, "q_proj"):                                           # transformers 5.x ViTAttention
        lins, o = (m.q_proj, m.k_proj, m.v_proj), m.o_proj
        H, head_dim, scale, dropout = m.num_attention_heads, m.head_dim, m.scaling, m.attention_dropout
    else:                                                              # 4.x: ViTAttention(.attention, .output)
        sa = m.attention if hasattr(m, "attention") else m
        o = m.output.dense if hasattr(m, "output") else None
        lins = (sa.query, sa.key, sa.value)
        H, head_dim = sa.num_attention_heads, sa.attention_head_size
        scale, dropout = head_dim ** -0.5, sa.dropout.p if hasattr(sa, "dropout") else 0.0
    d = lins[0].in_features
    if H * head_dim != d:
        raise ValueError(f"from_peer: ViT attention with n_heads * head_dim = {H} * {head_dim} != hidden_size={d} "
                         "is not supported (our layers use d_H = d_model / n_heads)")
    parts = [(lin.weight, lin.bias) for lin in lins]
    o_pair = (None, None) if o is None else (o.weight, o.bias)
    return _mha_from_linears(d, H, *parts, o_pair, scale=float(scale), dropout=float(dropout),
                             like=lins[0].weight)


@torch.no_grad()
def _from_deepseek_v2(m: nn.Module) -> MultiHeadLatentAttention:
    """DeepSeek-V2 MLA: decoupled RoPE, RMSNorms on the latents (kept exactly: ``latent_norm``)."""
    cfg = m.config
    d, H = m.hidden_size, m.num_heads
    d_h, d_r, d_v = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    if d_h * H != d or d_v * H != d:
        raise ValueError(f"from_peer: DeepseekV2Attention needs qk_nope_head_dim = v_head_dim = hidden_size / "
                         f"num_heads = {d // H} to map onto our MLA, got qk_nope_head_dim={d_h}, v_head_dim={d_v}")
    if getattr(cfg, "num_key_value_heads", H) != H:
        raise ValueError(f"from_peer: DeepseekV2Attention with num_key_value_heads={cfg.num_key_value_heads} != "
                         f"num_attention_heads={H} is not supported")
    if getattr(cfg, "attention_bias", False):
        raise ValueError("from_peer: DeepseekV2Attention with attention_bias=True (biases before the latent "
                         "RMSNorm and on the rotated key) is not supported")
    rope_params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"from_peer: DeepseekV2Attention with rope_type={rope_type!r} (scaled RoPE) is not "
                         "supported, only 'default'")
    base = float(rope_params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    kv_lat = m.kv_lora_rank
    has_q_latent = m.q_lora_rank is not None
    q_lat = m.q_lora_rank if has_q_latent else d
    like = m.kv_a_proj_with_mqa.weight
    layer = MultiHeadLatentAttention(
        d, H, q_lat, kv_lat, rope="decoupled", rope_dim=d_r, latent_norm="q_kv" if has_q_latent else "kv",
        norm_eps=float(m.kv_a_layernorm.variance_epsilon), rope_base=base, rope_style="interleaved",
        max_seq_len=int(cfg.max_position_embeddings), dropout=float(m.attention_dropout or 0.0),
    ).to(device=like.device, dtype=like.dtype)
    alpha = float(m.scaling) / layer.scale
    # queries: per head [nope (d_H) | rope (d_R)] rows of q_b_proj (or q_proj without a query latent)
    Wq = (m.q_b_proj if has_q_latent else m.q_proj).weight.view(H, d_h + d_r, q_lat)
    layer.q_up.weight.copy_(Wq[:, :d_h].reshape(H * d_h, q_lat) * alpha)
    layer.q_rope.weight.copy_(Wq[:, d_h:].reshape(H * d_r, q_lat) * alpha)
    if has_q_latent:
        layer.q_down.weight.copy_(m.q_a_proj.weight)
        layer.q_norm.weight.copy_(m.q_a_layernorm.weight)
        layer.q_norm.eps = float(m.q_a_layernorm.variance_epsilon)
    else:
        layer.q_down.weight.copy_(torch.eye(d, dtype=like.dtype, device=like.device))
    # keys/values: kv_a_proj_with_mqa = [W^DKV | W^KR], kv_b_proj per head [k_nope (d_H) | v (d_H)]
    layer.kv_down.weight.copy_(like[:kv_lat])
    layer.k_rope.weight.copy_(like[kv_lat:])
    layer.kv_norm.weight.copy_(m.kv_a_layernorm.weight)
    Wkv = m.kv_b_proj.weight.view(H, d_h + d_v, kv_lat)
    layer.k_up.weight.copy_(Wkv[:, :d_h].reshape(H * d_h, kv_lat))
    layer.v_up.weight.copy_(Wkv[:, d_h:].reshape(H * d_v, kv_lat))
    layer.o_proj.weight.copy_(m.o_proj.weight)
    return layer.train(m.training)


_PEER_CONVERTERS = {
    "GPT2Attention": _from_gpt2,
    "ViTAttention": _from_vit,
    "ViTSdpaAttention": _from_vit,
    "ViTSelfAttention": _from_vit,
    "ViTSdpaSelfAttention": _from_vit,
    "DeepseekV2Attention": _from_deepseek_v2,
}


def peer_kind(module: object) -> str | None:
    """The name under which ``from_peer`` converts ``module``, or None if it is not a supported peer."""
    if isinstance(module, nn.MultiheadAttention):
        return "MultiheadAttention"
    for cls in type(module).__mro__:
        if cls.__name__ in _PEER_CONVERTERS:
            return cls.__name__
    return None


def from_peer(module: nn.Module) -> AttentionLayer:
    """Our layer computing exactly what a peer's attention module computes (same weights, same output).

    - ``torch.nn.MultiheadAttention`` (kdim = vdim = embed_dim; with or without bias; batch_first either way —
      our layer always takes (B, N, d)) → ``MultiHeadAttention``; pass ``causal=True`` where the peer gets a
      causal mask.
    - 🤗 ``GPT2Attention`` (Conv1D ``c_attn``/``c_proj`` with biases; causal: call with ``causal=True``) →
      ``MultiHeadAttention(bias=True)``; GPT-2's optional layer-index score scaling is folded into W^Q.
    - 🤗 ``ViTAttention`` (5.x: q/k/v/o_proj; 4.x: ``.attention`` query/key/value + ``.output.dense``) or a 4.x
      ``ViTSelfAttention`` alone (W^O = I) → ``MultiHeadAttention``, non-causal.
    - 🤗 ``DeepseekV2Attention`` → ``MultiHeadLatentAttention(rope="decoupled", latent_norm=...)``: the RMSNorms on
      the latents are nonlinear and cannot fold into a linear map, so our MLA applies the same RMSNorms
      (``latent_norm="q_kv"``, or "kv" without a query latent — then W^{DQ} = I_d); RoPE is DeepSeek's
      interleaved pairing on the ``qk_rope_head_dim`` dims with ``rope_theta``. Position ``m`` of the peer's
      ``position_embeddings`` is our ``positions[m]``.

    Biases are kept as biases of our ``MultiHeadAttention(bias=True)``; ``to_tucker`` then folds them exactly.
    The result has the peer's dtype, device, dropout and train/eval mode.
    """
    if isinstance(module, AttentionLayer):
        raise TypeError(f"from_peer: {type(module).__name__} is already a tucker_attention layer")
    kind = peer_kind(module)
    if kind is None:
        raise TypeError(f"from_peer supports {', '.join(PEERS)}; got {type(module).__name__}")
    if kind == "MultiheadAttention":
        layer = _from_torch_mha(module)
    else:
        layer = _PEER_CONVERTERS[kind](module)
    return layer.train(module.training)


# ------------------------------------------------------- initializers from a trained layer (paper §7)
# The paper's transfer protocol starts from a pretrained MHA model and replaces its attention by GQA or MLA
# initialized from an SVD of the pretrained weights, or by Tucker initialized from the HOSVD of 𝒲 and 𝒲̃.
# Each initializer below works on the dense tensors (so it is independent of how the source layer happens
# to factor them), is exact when the target can hold the source, and is the Eckart–Young optimum (best
# truncated SVD) of the matrices it truncates otherwise. Each returns the new layer; ``conversion_report``
# measures what was lost.
COMPRESS_MODEL_METHODS = ("gqa", "mqa", "mla", "tucker")


def _dense_view(layer: AttentionLayer) -> tuple[torch.Tensor, torch.Tensor, float, tuple | None]:
    """(𝒲, 𝒲̃, s, dense biases or None) of a RoPE-free layer, detached."""
    W, Wt, scale = attention_tensors(layer)
    biases = attention_biases(layer)
    if biases is not None:
        biases = (biases[0].detach(), biases[1].detach())
    return W.detach(), Wt.detach(), scale, biases


def _layer_options(layer: AttentionLayer) -> dict:
    """Constructor options of ``layer`` that a converted layer keeps."""
    return {"max_seq_len": layer.max_seq_len, "dropout": layer.dropout, "backend": layer.backend,
            "rope_base": layer.rope_base, "rope_style": layer.rope_style}


def _split_svd(M: torch.Tensor, r: int, c: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``r`` truncated SVD ``M ≈ A Bᵀ`` with the singular values split evenly, ``A = U_r S_r^½ c``,
    ``B = V_r S_r^½ / c`` (so ``A`` and ``B`` start at comparable scales); also returns all singular values.
    Columns beyond the rank of ``M`` (r > min(M.shape)) are zero."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    k = min(r, S.shape[0])
    sq = S[:k].sqrt()
    A = M.new_zeros(M.shape[0], r)
    B = M.new_zeros(M.shape[1], r)
    A[:, :k] = U[:, :k] * sq * c
    B[:, :k] = Vh[:k].T * sq / c
    return A, B, S


@torch.no_grad()
def mha_to_gqa(layer: AttentionLayer, n_kv_heads: int) -> GroupedQueryAttention:  # noqa: F821
    """The ``GroupedQueryAttention`` with ``n_kv_heads`` groups closest to ``layer`` (an MHA, or a GQA with
    more groups): for each group, the best common key and value projections by SVD.

    Construction (on the dense tensors, paper §2). Group g holds heads ``i ∈ S_g`` (contiguous,
    ``g(i) = ⌊i n_kv / n_H⌋``, m = n_H / n_kv heads). GQA gives its heads one key ``W^K_g`` (d × d_H), so
    ``W_i = W^Q_i (W^K_g)ᵀ`` for all ``i ∈ S_g``: the stacked ``M_g = [W_i]_{i∈S_g}`` (m d × d) has rank ≤ d_H.
    The best such approximation in Frobenius norm is the rank-d_H truncated SVD ``M_g ≈ U S Vᵀ``
    (Eckart–Young): ``W^K_g ∝ V S^½``, ``W^Q_i ∝ U_i S^½`` (U_i: head i's rows of U). Values alike on
    ``N_g = [W̃_i]_{i∈S_g}`` (d × m d, ``W̃_i = W^V_i W^O_i``): ``W^V_g ∝ U S^½``, ``W^O_i ∝ S^½ V_iᵀ``. The singular
    values are split evenly (scaled by m^{±¼}) so queries and keys start at comparable sizes.
    The error is exactly the discarded singular-value energy, ``‖𝒲 − 𝒲'‖² = Σ_g Σ_{j>d_H} σ_j(M_g)²`` (the same
    for 𝒲̃), and zero when every group already shares a key/value subspace (``n_kv_heads = n_H`` from MHA).

    This is the weight-space analogue of merging key/value heads by SVD/PCA (cf. Yu et al. 2024,
    "Effectively compress KV heads for LLM", arXiv:2406.07056, who use the PCA of the cached keys and values);
    Ainslie et al. 2023 (GQA) initialize by mean-pooling the heads of a group, which is not exact even when the
    heads agree up to a rotation. Biases (peers' layers): the dense query bias ``β_i`` is projected onto the
    group's key space (least squares), the key bias cancels, value and output biases fold into the output bias.

    Args:
        layer: a RoPE-free layer with attention tensors (MHA, GQA, or any layer whose groups fit).
        n_kv_heads: key/value heads of the result; divides ``n_heads`` (1 = MQA).
    Returns:
        ``GroupedQueryAttention(d_model, n_heads, n_kv_heads, bias=<layer has biases>)`` with ``layer``'s
        dtype, device, options and train/eval mode.
    """
    from .attention import GroupedQueryAttention
    from .attention._checks import check_divisible

    layer = _check_layer(layer)
    d, H, dH = layer.d_model, layer.n_heads, layer.head_dim
    n_kv = check_int("n_kv_heads", n_kv_heads, high=H)
    check_divisible("n_heads", H, "n_kv_heads", n_kv)
    W, Wt, scale, biases = _dense_view(layer)
    p = _param(layer)
    new = GroupedQueryAttention(d, H, n_kv, bias=biases is not None, **_layer_options(layer))
    new = new.to(device=p.device, dtype=p.dtype).train(layer.training)
    alpha = scale / new.scale                                          # fold a different score scale into W^Q
    m = H // n_kv
    c = m ** 0.25
    Wq, Wo = W.new_zeros(d, d), W.new_zeros(d, d)
    Wk, Wv = W.new_zeros(d, n_kv * dH), W.new_zeros(d, n_kv * dH)
    bq = W.new_zeros(d)
    for g in range(n_kv):
        heads = slice(g * m, (g + 1) * m)
        cols = slice(g * dH, (g + 1) * dH)
        Q, K, _ = _split_svd(W[heads].reshape(m * d, d), dH, c)        # M_g = [W_i; ...] ≈ Q Kᵀ
        Wk[:, cols] = K
        Wq[:, g * m * dH:(g + 1) * m * dH] = (Q.reshape(m, d, dH) * alpha).permute(1, 0, 2).reshape(d, m * dH)
        N = Wt[heads].transpose(1, 2).permute(1, 0, 2).reshape(d, m * d)   # [W̃_i, ...]: (d_value, m d_out)
        V, O, _ = _split_svd(N, dH, c)                                 # N_g ≈ V Oᵀ
        Wv[:, cols] = V
        Wo[g * m * dH:(g + 1) * m * dH] = O.T.reshape(dH, m, d).permute(1, 0, 2).reshape(m * dH, d)
        if biases is not None:                                         # β_i ≈ b_i (W^K_g)ᵀ, least squares
            b = biases[0][heads] @ torch.linalg.pinv(K).T * alpha      # (m, d_H)
            bq[g * m * dH:(g + 1) * m * dH] = b.reshape(-1)
    new.q_proj.weight.copy_(Wq.T)
    new.k_proj.weight.copy_(Wk.T)
    new.v_proj.weight.copy_(Wv.T)
    new.o_proj.weight.copy_(Wo.T)
    if biases is not None:
        new.q_proj.bias.copy_(bq)
        new.k_proj.bias.zero_()
        new.v_proj.bias.zero_()
        new.o_proj.bias.copy_(biases[1])
    return new


@torch.no_grad()
def mha_to_mla(layer: AttentionLayer, q_latent: int, kv_latent: int, *, separate_kv: bool = False
               ) -> MultiHeadLatentAttention:
    """The ``MultiHeadLatentAttention`` (no RoPE) closest to ``layer`` by truncated SVD of its stacked fused
    matrices.

    Construction (paper §4, Theorem B.4: MLA is Tucker with ``U2 = W^{DQ}``, ``U3 = W^{DKV}``, ``Ũ2 = I``):

    - query latent ``W^{DQ}`` (d × d_c^Q): the leading left singular vectors of the query unfolding
      ``𝒲_(2) = [W_1 … W_{n_H}]`` (d × n_H d) — the query directions the heads use, weighted by how much;
    - key/value latent ``W^{DKV}`` (d × d_c^K): the leading left singular vectors of the stacked key and value
      unfoldings ``[𝒲_(3), 𝒲̃_(3)]`` (d × 2 n_H d), since one latent serves both (``separate_kv``: one SVD each);
    - per head, ``G_i = W^{DQ}ᵀ W_i W^{DKV}`` (d_c^Q × d_c^K, rank ≤ d_H) factors exactly as
      ``W^{UQ}_i (W^{UK}_i)ᵀ`` by its SVD, and ``W^{DKV}ᵀ W̃_i`` (d_c^K × d) as ``W^{UV}_i W^O_i``.

    With ``q_latent = kv_latent = d_model`` the result equals the layer to round-off. With only the key/value
    latent truncated (``q_latent = d_model``), ``‖𝒲 − 𝒲'‖² + ‖𝒲̃ − 𝒲̃'‖²`` is exactly the discarded energy
    ``Σ_{j>d_c^K} σ_j([𝒲_(3), 𝒲̃_(3)])²``; truncating both latents is a truncated HOSVD of modes 2 and 3 with
    the head mode kept whole (error at most the root of the summed discarded energies).
    MLA has no biases: a layer with biases raises ``ValueError`` (convert it to Tucker or GQA instead).
    """
    layer = _check_layer(layer)
    d, H, dH = layer.d_model, layer.n_heads, layer.head_dim
    qL = check_int("q_latent", q_latent, high=d, high_name="d_model")
    kL = check_int("kv_latent", kv_latent, high=d, high_name="d_model")
    if not isinstance(separate_kv, bool):
        raise TypeError(f"separate_kv must be a bool, got separate_kv={separate_kv!r}")
    W, Wt, scale, biases = _dense_view(layer)
    if biases is not None:
        raise ValueError(f"mha_to_mla: {type(layer).__name__} has biases, which MultiHeadLatentAttention cannot "
                         "hold; use mha_to_gqa or compress (Tucker), which fold them exactly")
    p = _param(layer)
    new = MultiHeadLatentAttention(d, H, qL, kL, separate_kv=separate_kv, **_layer_options(layer))
    new = new.to(device=p.device, dtype=p.dtype).train(layer.training)
    alpha = scale / new.scale

    def left(M: torch.Tensor, r: int) -> torch.Tensor:
        return torch.linalg.svd(M, full_matrices=False).U[:, :r]

    Uq = left(unfold(W, 2), qL)                                        # (d, dcQ)
    if separate_kv:
        Uk, Uv = left(unfold(W, 3), kL), left(unfold(Wt, 3), kL)
    else:
        Uk = Uv = left(torch.cat((unfold(W, 3), unfold(Wt, 3)), dim=1), kL)
    G = Uq.T @ W @ Uk                                                  # (H, dcQ, dcK)
    Gt = Uv.T @ Wt.transpose(1, 2)                                     # (H, dcK, d): W^DKVᵀ W̃_i
    WUQ, WUK, WUV = W.new_zeros(qL, d), W.new_zeros(kL, d), W.new_zeros(kL, d)
    WO = W.new_zeros(d, d)
    for i in range(H):
        cols = slice(i * dH, (i + 1) * dH)
        A, B, _ = _split_svd(G[i], dH, 1.0)                            # G_i = W^UQ_i (W^UK_i)ᵀ
        WUQ[:, cols], WUK[:, cols] = A * alpha, B
        C, D, _ = _split_svd(Gt[i], dH, 1.0)                           # W^DKVᵀ W̃_i = W^UV_i W^O_i
        WUV[:, cols], WO[cols] = C, D.T
    new.q_down.weight.copy_(Uq.T)
    new.kv_down.weight.copy_(Uk.T)
    if separate_kv:
        new.v_down.weight.copy_(Uv.T)
    new.q_up.weight.copy_(WUQ.T)
    new.k_up.weight.copy_(WUK.T)
    new.v_up.weight.copy_(WUV.T)
    new.o_proj.weight.copy_(WO.T)
    return new


def conversion_report(source: AttentionLayer, converted: AttentionLayer) -> dict:
    """What a conversion kept: relative errors of the scaled pre-softmax tensor ``s𝒲`` and of ``𝒲̃`` (float64),
    and the parameters and KV cache per token of both layers."""
    from .tensors import relative_error

    W0, Wt0, s0 = attention_tensors(source)
    W1, Wt1, s1 = attention_tensors(converted)
    return {"rel_error_W": relative_error(W1.double() * s1, W0.double() * s0),
            "rel_error_W_tilde": relative_error(Wt1, Wt0),
            "params_before": sum(p.numel() for p in source.parameters()),
            "params_after": sum(p.numel() for p in converted.parameters()),
            "kv_cache_before": source.kv_cache_per_token(), "kv_cache_after": converted.kv_cache_per_token()}


def convert_layer(layer: AttentionLayer, method: str, *, decomposition: str = "hosvd", **sizes
                  ) -> AttentionLayer:
    """``layer`` converted to ``method`` at ``sizes`` by this module's initializers.

    - "gqa": ``mha_to_gqa(layer, n_kv_heads)``; "mqa": the same with one group;
    - "mla": ``mha_to_mla(layer, q_latent, kv_latent, separate_kv=False)``;
    - "tucker": ``compress(layer, ranks, post_ranks, shared_kv=False, method=decomposition)`` — truncated HOSVD
      (``decomposition="hosvd"``) or HOOI started from it (``"hooi"``).
    """
    allowed = {"gqa": {"n_kv_heads"}, "mqa": set(), "mla": {"q_latent", "kv_latent", "separate_kv"},
               "tucker": {"ranks", "post_ranks", "shared_kv"}}
    if method not in allowed:
        raise ValueError(f"method must be one of {COMPRESS_MODEL_METHODS}, got method={method!r}")
    unknown = set(sizes) - allowed[method]
    if unknown:
        raise ValueError(f"method={method!r} takes sizes {sorted(allowed[method]) or 'none'}, got "
                         f"{', '.join(f'{k}={sizes[k]!r}' for k in sorted(unknown))}")
    if decomposition not in COMPRESS_METHODS:
        raise ValueError(f"decomposition must be one of {COMPRESS_METHODS}, got decomposition={decomposition!r}")
    required = {"gqa": ("n_kv_heads",), "mla": ("q_latent", "kv_latent"), "tucker": ("ranks",)}[method] \
        if method != "mqa" else ()
    missing = [k for k in required if sizes.get(k) is None]
    if missing:
        raise ValueError(f"method={method!r} needs {', '.join(missing)}")
    if method == "gqa":
        return mha_to_gqa(layer, sizes["n_kv_heads"])
    if method == "mqa":
        return mha_to_gqa(layer, 1)
    if method == "mla":
        return mha_to_mla(layer, sizes["q_latent"], sizes["kv_latent"], separate_kv=sizes.get("separate_kv", False))
    return compress(layer, sizes["ranks"], sizes.get("post_ranks"), method=decomposition,
                    shared_kv=sizes.get("shared_kv", False))


_SIZE_FIELDS = {"n_kv_heads": None, "q_latent": None, "kv_latent": None, "separate_kv": False, "rope_dim": None,
                "ranks": None, "post_ranks": None, "shared_kv": False}


def _converted_attention_config(cfg: object, method: str, sizes: dict) -> object:
    """A model config's attention config (any class with ``to_dict``/``from_dict``) for the converted layers."""
    d = cfg.to_dict()
    key = "method" if "method" in d else "kind"
    d[key] = method
    d.update({k: v for k, v in _SIZE_FIELDS.items() if k in d})
    d.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in sizes.items() if v is not None})
    return type(cfg).from_dict(d)


@torch.no_grad()
def compress_model(model: nn.Module, method: str, *, decomposition: str = "hosvd", **sizes
                   ) -> tuple[nn.Module, list[dict]]:
    """A copy of ``model`` with every attention layer converted to ``method`` (see ``convert_layer``), and a
    per-layer report.

    Args:
        model: any module holding this package's attention layers (e.g. our GPT or ViT); the original is left
            untouched (the result is a deep copy). A model with a ``config.attention`` (our GPT/ViT) gets it
            updated, so the new model can be saved and rebuilt from its config.
        method: "gqa" | "mqa" | "mla" | "tucker". sizes: that method's sizes (``n_kv_heads``; ``q_latent``,
            ``kv_latent``, ``separate_kv``; ``ranks``, ``post_ranks``, ``shared_kv``).
        decomposition: Tucker only: "hosvd" (the paper's initialization) or "hooi".
    Returns:
        ``(new_model, report)``: report has one dict per layer — ``layer`` (module name), ``rel_error_W``,
        ``rel_error_W_tilde``, ``params_before``, ``params_after``, ``kv_cache_before``, ``kv_cache_after``
        (``conversion_report``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    new_model = copy.deepcopy(model)
    targets = [(name, m) for name, m in new_model.named_modules() if isinstance(m, AttentionLayer)]
    if not targets:
        raise ValueError(f"compress_model: {type(model).__name__} holds no tucker_attention layers; for a 🤗 "
                         "model (GPT-2, ViT, Llama) use compress_peer_model")
    report = []
    for name, layer in targets:
        new = convert_layer(layer, method, decomposition=decomposition, **sizes)
        report.append({"layer": name, **conversion_report(layer, new)})
        parent_name, _, child = name.rpartition(".")
        setattr(new_model.get_submodule(parent_name) if parent_name else new_model, child, new)
    cfg = getattr(new_model, "config", None)
    if cfg is not None and hasattr(getattr(cfg, "attention", None), "to_dict"):
        cfg.attention = _converted_attention_config(cfg.attention, method, sizes)
    return new_model, report


__all__ += ["COMPRESS_MODEL_METHODS", "mha_to_gqa", "mha_to_mla", "conversion_report", "convert_layer",
            "compress_model"]


# ------------------------------------------------------------------ 🤗 models: Llama in, converted layers back
@torch.no_grad()
def _from_llama(m: nn.Module) -> AttentionLayer:
    """🤗 ``LlamaAttention`` → ``GroupedQueryAttention(rope=True)`` (``MultiHeadAttention`` when every head has its
    own key/value): the same projections, RoPE on the head dimension with Llama's pairing (``rotate_half``:
    our ``rope_style="half"``) and base (``rope_theta``); Llama's score scale is folded into W^Q."""
    from .attention import GroupedQueryAttention

    cfg = m.config
    d, H = cfg.hidden_size, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or H
    head_dim = m.head_dim
    if head_dim * H != d:
        raise ValueError(f"from_peer: LlamaAttention with head_dim * num_attention_heads = {head_dim} * {H} != "
                         f"hidden_size={d} is not supported (our layers use d_H = d_model / n_heads)")
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"from_peer: LlamaAttention with rope_type={rope_type!r} (scaled RoPE) is not supported, "
                         "only 'default'")
    if float(rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ValueError("from_peer: LlamaAttention with partial_rotary_factor != 1 is not supported")
    base = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    lins = (m.q_proj, m.k_proj, m.v_proj, m.o_proj)
    bias = any(lin.bias is not None for lin in lins)
    like = m.q_proj.weight
    layer = GroupedQueryAttention(d, H, n_kv, rope=True, bias=bias, rope_base=base, rope_style="half",
                                  max_seq_len=int(cfg.max_position_embeddings),
                                  dropout=float(getattr(cfg, "attention_dropout", 0.0) or 0.0))
    layer = layer.to(device=like.device, dtype=like.dtype)
    alpha = float(m.scaling) / layer.scale
    for ours, theirs, a in ((layer.q_proj, m.q_proj, alpha), (layer.k_proj, m.k_proj, 1.0),
                            (layer.v_proj, m.v_proj, 1.0), (layer.o_proj, m.o_proj, 1.0)):
        ours.weight.copy_(theirs.weight * a)
        if bias:
            ours.bias.copy_(theirs.bias * a if theirs.bias is not None else torch.zeros_like(ours.bias))
    return layer.train(m.training)


_PEER_CONVERTERS["LlamaAttention"] = _from_llama
PEERS = (*PEERS, "transformers LlamaAttention")
_CAUSAL_PEERS = ("GPT2Attention", "LlamaAttention")


class PeerAttention(nn.Module):
    """One of our layers standing in for a 🤗 attention module inside a 🤗 model.

    ``forward(hidden_states, ...)`` returns ``(output, None)``, what GPT-2, ViT and Llama blocks unpack
    (output (B, N, d); no attention weights). Causal for GPT-2 and Llama. Positions for RoPE come from
    ``position_ids`` when the model passes them (default ``0 .. N-1``). Not supported: 🤗 KV caches (call the model
    with ``use_cache=False``) and padding masks (the causal or full mask is the layer's own).
    """

    def __init__(self, layer: AttentionLayer, *, peer: str, causal: bool) -> None:
        super().__init__()
        self.layer = _check_layer(layer)
        self.peer = peer
        self.causal = causal

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("layer_past")))
        if cache is not None and (not hasattr(cache, "get_seq_length") or cache.get_seq_length() > 0
                                  or kwargs.get("use_cache")):
            raise ValueError(f"PeerAttention ({self.peer} converted) does not use 🤗 KV caches; call the model "
                             "with use_cache=False")
        positions = None
        ids = kwargs.get("position_ids")
        if self.layer.has_rope and ids is not None:
            ids = ids.reshape(-1, ids.shape[-1])
            if not bool((ids == ids[:1]).all()):
                raise ValueError("PeerAttention: position_ids differ between sequences of the batch; run them "
                                 "one at a time")
            positions = ids[0]
        return self.layer(hidden_states, causal=self.causal, positions=positions), None

    def extra_repr(self) -> str:
        return f"peer={self.peer}, causal={self.causal}"


@torch.no_grad()
def with_latent_rope(layer: AttentionLayer, method: str, **sizes) -> AttentionLayer:
    """A layer with **head-dim** RoPE (e.g. ``from_peer`` of a Llama) converted to Tucker or MLA with **latent**
    RoPE (paper §6): the projections are compressed as if there were no rotation (``convert_layer`` on a RoPE-free
    copy), then the result rotates in its latent key space (Tucker ``rope=True``, MLA ``rope="latent"``).

    This is *not* the same function: head-dim RoPE rotates between W^Q_i and (W^K_i)ᵀ, where no Tucker or MLA
    factor can hold it, so the converted model differs from the source and needs fine-tuning — the point of
    paper §6 measured (``conversion_report`` compares the RoPE-free tensors only)."""
    layer = _check_layer(layer)
    if method not in ("tucker", "mla"):
        raise ValueError(f"with_latent_rope: method must be 'tucker' or 'mla', got method={method!r}")
    free = copy.deepcopy(layer)
    if getattr(free, "rope", None) not in (True, None, False):
        raise ValueError(f"with_latent_rope needs a layer with head-dim RoPE (rope=True), got rope={free.rope!r}")
    free.rope = False
    new = convert_layer(free, method, **sizes)
    if method == "tucker":
        out = TuckerAttention(new.d_model, new.n_heads, new.ranks, new.post_ranks, shared_kv=new.shared_kv,
                              rope=True, bias=new.bias, **_layer_options(layer))
    else:
        out = MultiHeadLatentAttention(new.d_model, new.n_heads, new.q_latent, new.kv_latent,
                                       separate_kv=new.separate_kv, rope="latent", **_layer_options(layer))
    p = _param(new)
    out = out.to(device=p.device, dtype=p.dtype).train(layer.training)
    out.load_state_dict(new.state_dict())
    return out


@torch.no_grad()
def compress_peer_model(model: nn.Module, method: str, *, decomposition: str = "hosvd", latent_rope: bool = False,
                        **sizes) -> tuple[nn.Module, list[dict]]:
    """A copy of a 🤗 model (GPT-2, ViT, Llama) with every attention module replaced by ``PeerAttention`` holding
    our layer: ``from_peer`` (exact) then ``convert_layer(method, **sizes)``; ``method="mha"`` keeps the exact
    ``from_peer`` layer. A layer with head-dim RoPE (Llama) stays exact only with ``method="mha"`` (its
    ``GroupedQueryAttention(rope=True)``); "tucker"/"mla" need ``latent_rope=True`` (``with_latent_rope``: not exact,
    fine-tune afterwards); "gqa"/"mqa" of a RoPE layer are not offered.

    Returns ``(new_model, report)`` with one ``conversion_report`` per module (``layer``: its name; for RoPE layers
    the report compares the RoPE-free tensors).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    new_model = copy.deepcopy(model)
    targets, done = [], []
    for name, m in new_model.named_modules():
        if any(name.startswith(p + ".") for p in done):
            continue
        kind = peer_kind(m)
        if kind is not None and kind != "MultiheadAttention":
            targets.append((name, m, kind))
            done.append(name)
    if not targets:
        raise ValueError(f"compress_peer_model: {type(model).__name__} holds no attention module that from_peer "
                         f"converts ({', '.join(PEERS)})")
    report = []
    for name, m, kind in targets:
        ours = from_peer(m)
        if method == "mha":
            new = ours
        elif ours.has_rope:
            if method not in ("tucker", "mla") or not latent_rope:
                raise ValueError(f"{name} ({kind}) has head-dim RoPE, which {method} cannot hold exactly; pass "
                                 "latent_rope=True for Tucker/MLA with latent RoPE (then fine-tune), or method='mha'")
            new = with_latent_rope(ours, method, **sizes)
        else:
            new = convert_layer(ours, method, decomposition=decomposition, **sizes)
        src, dst = ours, new
        if ours.has_rope:
            src = copy.deepcopy(ours)
            src.rope = False
            dst = copy.deepcopy(new)
            dst.rope = None if isinstance(dst, MultiHeadLatentAttention) else False
        report.append({"layer": name, **conversion_report(src, dst)})
        parent, _, child = name.rpartition(".")
        setattr(new_model.get_submodule(parent) if parent else new_model, child,
                PeerAttention(new, peer=kind, causal=kind in _CAUSAL_PEERS))
    return new_model, report


__all__ += ["PeerAttention", "with_latent_rope", "compress_peer_model"]
