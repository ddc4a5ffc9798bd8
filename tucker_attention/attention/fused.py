"""Fused Tucker attention in Triton: the per-head queries are formed inside the kernel (paper §3, §6).

Tucker attention (paper §3) is multi-query attention whose head-``i`` query is
``Q_i = P G_i`` with ``P = X U₂`` (N, r2) shared by all heads and the core ``G_i`` (r2, r3). The default
path (``kernel="sdpa"``) writes ``Q`` (B, n_H, N, r3) to memory and calls a generic kernel. This one reads
``P`` once and forms each query block in registers (``tl.dot``), rotates it by latent RoPE in-kernel (paper
§6), and runs a flash-attention-2 online softmax against the single key/value head, so the (B, n_H, N, r3)
query never exists in memory. Beyond the paper's official kernel (non-causal, no RoPE) it has:

- causal masking, bottom-right aligned when N < S (query ``n`` sits at position ``S - N + n``, as
  ``backends.attend``), and the layer's per-head query bias;
- latent RoPE in-kernel: ``rot(q) = q * cos + (q R) * sin`` where ``R`` is the fixed pair-swap-with-sign
  matrix of the RoPE style, and ``q R = P (G_i R)`` with ``G R`` formed once on the host (n_H r2 r3 numbers);
- a backward pass (flash-attention-2 recompute of the probabilities): one kernel accumulates dK, dV over all
  heads and queries (one K/V head, no atomics), one writes ``dq`` (B, n_H, N, r3). The backward *does*
  materialize the rotated queries (float32, one product ``P G``: the dK/dV kernel visits every query for
  each key block, and forming them there would repeat that product S/BLOCK_N times) and ``dq``, which it
  contracts with torch: ``dP = Σ_i dq_i G_iᵀ``, ``dG_i = Σ_b Pᵀ dq_i`` (after undoing the rotation);
- decoding: heads are folded into the query rows (row = (head, n)), so for N = 1 one program serves up to
  ``BLOCK_M`` heads and reads each key/value block once for all of them; with few programs the keys are
  split over several programs and the partial results merged (flash-decoding).

Any r2, r3, r̃3 up to 256 in float16/bfloat16 and 128 in float32 (non powers of two are padded with masks;
float32 products are exact, not TF32). Runs on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``,
read when a kernel is called: slow, for tests; float32 and float16 there, since the interpreter's ``tl.dot``
multiplies bfloat16 wrongly). Attention dropout is not implemented.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from .rope import ROPE_STYLES

__all__ = ["fused_tucker_attention", "fused_unavailable", "rope_swap", "triton_available"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Largest r2, r3, r̃3 per dtype: what fits the shared memory of one H100/H200 program (checked by compiling
#: for sm_90: 16-bit at 256 needs up to 176 KiB, float32 at 128 up to 160 KiB, float32 at 256 over 500 KiB).
MAX_RANK = {torch.float16: 256, torch.bfloat16: 256, torch.float32: 128}

_modules: dict[bool, ModuleType] = {}


def triton_available() -> bool:
    """Whether ``triton`` imports."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    """Whether Triton's interpreter is on now (``TRITON_INTERPRET``; ``triton.knobs`` where it exists)."""
    import triton

    knobs = getattr(triton, "knobs", None)              # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def fused_unavailable(device: torch.device) -> str | None:
    """Why the fused kernel cannot run on ``device`` now (a sentence with the fix), or None if it can."""
    if not triton_available():
        return "triton is not installed (pip install 'tucker-attention[kernels]', or pip install triton)"
    if device.type == "cuda" or _interpreting():
        return None
    return (f"the fused Triton kernel needs CUDA tensors, got device {device}; on CPU set the environment "
            "variable TRITON_INTERPRET=1 (Triton's interpreter: slow, for tests) or use kernel='sdpa'")


def _kernels(interpret: bool) -> ModuleType:
    """``_fused_kernels`` compiled for the GPU or run by the interpreter. ``triton.jit`` picks the mode when a
    module is imported, so each mode loads its own copy of the file (at most two, cached)."""
    if interpret not in _modules:
        import triton

        name = f"{__package__}._fused_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_fused_kernels.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        knobs = getattr(triton, "knobs", None)
        if knobs is not None:
            with knobs.runtime.scope():
                knobs.runtime.interpret = interpret
                spec.loader.exec_module(module)
        else:                                            # older triton reads the variable when decorating
            before = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
            try:
                spec.loader.exec_module(module)
            finally:
                if before is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = before
        _modules[interpret] = module
    return _modules[interpret]


def rope_swap(x: torch.Tensor, style: str) -> torch.Tensor:
    """``x R``: the pair swap with sign of the RoPE style, so that ``apply_rope(x) = x * cos + (x R) * sin``
    with cos/sin expanded to the style's pairing. ``R`` is orthogonal with ``R² = -I`` (``x Rᵀ = -x R``)."""
    if style == "interleaved":
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _expand(t: torch.Tensor, style: str) -> torch.Tensor:
    """(N, r3/2) angle table -> (N, r3) float32, one entry per coordinate in the style's pairing."""
    t = t.to(torch.float32)
    t = t.repeat_interleave(2, dim=-1) if style == "interleaved" else torch.cat((t, t), dim=-1)
    return t.contiguous()


def _pad(n: int) -> int:
    """The block width for a size ``n``: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, 1 << (n - 1).bit_length())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _check(P, G, K, V, q_bias, rope_cos, rope_sin, rope_style, scale):
    for name, t in (("P", P), ("G", G), ("K", K), ("V", V)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if P.dim() != 3 or G.dim() != 3 or K.dim() != 3 or V.dim() != 3:
        raise ValueError(f"P (B, N, r2), G (H, r2, r3), K (B, S, r3) and V (B, S, r̃3) must be 3-D; got "
                         f"P{tuple(P.shape)}, G{tuple(G.shape)}, K{tuple(K.shape)}, V{tuple(V.shape)}")
    B, N, r2 = P.shape
    H, r2g, r3 = G.shape
    if r2g != r2:
        raise ValueError(f"G.shape[1] must equal P's query rank r2={r2}, got G.shape={tuple(G.shape)}")
    if K.shape[0] != B or V.shape[0] != B or K.shape[1] != V.shape[1]:
        raise ValueError(f"K and V must share batch B={B} and length S; got K{tuple(K.shape)}, V{tuple(V.shape)}")
    if K.shape[2] != r3:
        raise ValueError(f"K's width must equal G's key rank r3={r3}, got K.shape={tuple(K.shape)}")
    if K.shape[1] < N:
        raise ValueError(f"keys (S={K.shape[1]}) must be at least as many as queries (N={N})")
    if min(B, N, H, r2, r3, V.shape[2]) == 0:
        raise ValueError("empty inputs: every size must be positive, got "
                         f"P{tuple(P.shape)}, G{tuple(G.shape)}, K{tuple(K.shape)}, V{tuple(V.shape)}")
    tensors = {"P": P, "G": G, "K": K, "V": V} | ({} if q_bias is None else {"q_bias": q_bias})
    if P.dtype not in DTYPES:
        raise TypeError(f"P.dtype must be one of {DTYPES}, got {P.dtype}")
    for name, val in (("r2", r2), ("r3", r3), ("r̃3", V.shape[2])):
        if val > MAX_RANK[P.dtype]:
            raise ValueError(f"the fused kernel supports ranks <= {MAX_RANK[P.dtype]} in {P.dtype}, got {name}={val}; "
                             "use kernel='sdpa' (or a 16-bit dtype, up to 256)")
    for name, t in tensors.items():
        if t.dtype != P.dtype:
            raise TypeError(f"{name}.dtype={t.dtype} differs from P.dtype={P.dtype}; cast them to one dtype")
        if t.device != P.device:
            raise ValueError(f"{name} is on {t.device} but P is on {P.device}")
    if q_bias is not None and tuple(q_bias.shape) != (H, r3):
        raise ValueError(f"q_bias must have shape (H, r3)=({H}, {r3}), got {tuple(q_bias.shape)}")
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError("give both rope_cos and rope_sin (latent RoPE) or neither")
    if rope_cos is not None:
        if r3 % 2:
            raise ValueError(f"latent RoPE rotates pairs of the r3 key dims: r3 must be even, got r3={r3}")
        for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
            if tuple(t.shape) != (N, r3 // 2):
                raise ValueError(f"{name} must have shape (N, r3/2)=({N}, {r3 // 2}), got {tuple(t.shape)}")
    if rope_style not in ROPE_STYLES:
        raise ValueError(f"rope_style must be one of {ROPE_STYLES}, got rope_style={rope_style!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got scale={scale!r}")
    why = fused_unavailable(P.device)
    if why is not None:
        raise RuntimeError(why)


class _Launch:
    """Block sizes and launch options for one call."""

    def __init__(self, P, G, K, V, *, block_m, block_n, num_splits):
        B, N, r2 = P.shape
        H, _, r3 = G.shape
        S, dv = K.shape[1], V.shape[2]
        self.interpret = _interpreting()
        self.kernels = _kernels(self.interpret)
        self.BR2, self.BR3, self.BDV = _pad(r2), _pad(r3), _pad(dv)
        rows = H * N
        # wide ranks take smaller blocks and fewer pipeline stages (shared memory)
        fp32 = P.dtype == torch.float32
        widest = max(self.BR2, self.BR3, self.BDV)
        self.wide = widest > (64 if fp32 else 128)
        cap = 128 if not self.wide else 64 if fp32 else 32
        self.block_m = block_m or min(cap, 16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 64 else 128)
        self.block_n = block_n or (32 if self.wide else 64)
        self.num_stages = 2 if self.wide else 3
        for name, val in (("block_m", self.block_m), ("block_n", self.block_n)):
            if val < 16 or val & (val - 1):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum), got {name}={val}")
        self.num_warps = 8 if self.block_m >= 128 else 4
        self.dot_prec = "ieee" if P.dtype == torch.float32 else "tf32"
        row_blocks = -(-rows // self.block_m)
        if num_splits is None:
            num_splits = 1
            if P.device.type == "cuda" and not self.interpret:
                programs, sms = row_blocks * B, _sm_count(P.device.index or 0)
                if programs < sms and S >= 4 * self.block_n:
                    num_splits = min(-(-2 * sms // programs), -(-S // (2 * self.block_n)))
                    # every split forms its block's queries again, reading those heads' cores: keep that
                    # below the key/value traffic it spreads out
                    cores = min(H, -(-self.block_m // N) + 1) * r2 * r3
                    num_splits = max(1, min(num_splits, S * (r3 + dv) // cores))
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits must be a positive int, got num_splits={num_splits!r}")
        chunk = -(-S // num_splits)
        self.chunk = -(-chunk // self.block_n) * self.block_n               # a whole number of key blocks
        self.num_splits = -(-S // self.chunk)
        self.row_blocks = row_blocks


def _forward(P, G, GR, qb, qbr, C, Sn, K, V, kv_len, scale, causal, cfg: _Launch):
    B, N, r2 = P.shape
    H, _, r3 = G.shape
    S, dv = K.shape[1], V.shape[2]
    rows = H * N
    splits = cfg.num_splits
    O = torch.empty(B, H, N, dv, dtype=P.dtype, device=P.device)
    L = torch.empty(B, rows, dtype=torch.float32, device=P.device)
    if splits == 1:
        Ow, Lw = O, L
    else:
        Ow = torch.empty(splits, B, rows, dv, dtype=torch.float32, device=P.device)
        Lw = torch.empty(splits, B, rows, dtype=torch.float32, device=P.device)
    dummy = G                                     # pointer for absent optional inputs (never read)
    k = cfg.kernels
    k.fwd_kernel[(cfg.row_blocks, B, splits)](
        P, G, GR if GR is not None else dummy, qb if qb is not None else dummy, qbr if qbr is not None else dummy,
        C if C is not None else dummy, Sn if Sn is not None else dummy, K, V, Ow, Lw,
        kv_len if kv_len is not None else dummy,
        P.stride(0), P.stride(1), P.stride(2), K.stride(0), K.stride(1), K.stride(2),
        V.stride(0), V.stride(1), V.stride(2), B * rows * dv, rows * dv, B * rows, rows,
        H, N, S, r2, r3, dv, scale * math.log2(math.e), cfg.chunk,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BR2=cfg.BR2, BR3=cfg.BR3, BDV=cfg.BDV, CAUSAL=causal,
        ROPE=C is not None, HAS_BIAS=qb is not None, HAS_KVLEN=kv_len is not None, DOT_PREC=cfg.dot_prec,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    if splits > 1:
        k.combine_kernel[(-(-rows // 64), B)](
            Ow, Lw, O, L, splits, rows, dv, B * rows * dv, rows * dv, B * rows, rows, rows * dv,
            BLOCK_M=64, BDV=cfg.BDV, num_warps=4)
    return O, L


class _FusedTuckerAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P, G, q_bias, K, V, C, Sn, kv_len, scale, causal, rope_style, cfg):
        GR = rope_swap(G, rope_style).contiguous() if C is not None else None
        qbr = rope_swap(q_bias, rope_style).contiguous() if (C is not None and q_bias is not None) else None
        O, L = _forward(P, G, GR, q_bias, qbr, C, Sn, K, V, kv_len, scale, causal, cfg)
        ctx.save_for_backward(P, G, q_bias, K, V, C, Sn, kv_len, O, L)
        ctx.scale, ctx.causal, ctx.rope_style, ctx.cfg = scale, causal, rope_style, cfg
        return O

    @staticmethod
    def backward(ctx, dO):
        P, G, q_bias, K, V, C, Sn, kv_len, O, L = ctx.saved_tensors
        cfg, scale, causal, style = ctx.cfg, ctx.scale, ctx.causal, ctx.rope_style
        B, N, r2 = P.shape
        H, _, r3 = G.shape
        S, dv = K.shape[1], V.shape[2]
        rows = H * N
        dO = dO.contiguous()
        delta = (dO.float() * O.float()).sum(-1).reshape(B, rows).contiguous()
        # the rotated queries, formed once in float32 (the dK/dV kernel visits every query for each key block:
        # forming them there would repeat the P·G_i product S/BLOCK_N times)
        q = torch.einsum("bnk,hkc->bhnc", P.float(), G.float())                   # (B, H, N, r3)
        if q_bias is not None:
            q = q + q_bias.float()[:, None]
        if C is not None:
            q = q * C + rope_swap(q, style) * Sn
        q = q.contiguous()
        kvl = kv_len if kv_len is not None else q
        common = (K.stride(0), K.stride(1), K.stride(2), V.stride(0), V.stride(1), V.stride(2),
                  H, N, S, r3, dv, scale * math.log2(math.e), scale)
        flags = dict(BR3=cfg.BR3, BDV=cfg.BDV, CAUSAL=causal, HAS_KVLEN=kv_len is not None, DOT_PREC=cfg.dot_prec)
        k = cfg.kernels
        dK = torch.empty(B, S, r3, dtype=K.dtype, device=K.device)
        dV = torch.empty(B, S, dv, dtype=V.dtype, device=V.device)
        bm1, bn1 = min(cfg.block_m, 32), 32 if cfg.wide else 64
        k.bwd_dkdv_kernel[(-(-S // bn1), B)](q, K, V, dO, L, delta, dK, dV, kvl, *common,
                                            BLOCK_M=bm1, BLOCK_N=bn1, num_warps=4, num_stages=1, **flags)
        dq = torch.empty(B, rows, r3, dtype=torch.float32, device=P.device)
        bm2, bn2 = cfg.block_m, 32
        k.bwd_dq_kernel[(-(-rows // bm2), B)](q, K, V, dO, L, delta, dq, kvl, *common,
                                             BLOCK_M=bm2, BLOCK_N=bn2, num_warps=cfg.num_warps, num_stages=1,
                                             **flags)
        dq = dq.view(B, H, N, r3)
        if C is not None:                           # undo the rotation: d(q*C + (qR)*S) -> dq*C + (dq*S) Rᵀ
            dq = dq * C - rope_swap(dq * Sn, style)
        dP = torch.einsum("bhnc,hkc->bnk", dq, G.float()).to(P.dtype) if ctx.needs_input_grad[0] else None
        dG = torch.einsum("bnk,bhnc->hkc", P.float(), dq).to(G.dtype) if ctx.needs_input_grad[1] else None
        db = dq.sum((0, 2)).to(q_bias.dtype) if q_bias is not None and ctx.needs_input_grad[2] else None
        return dP, dG, db, dK, dV, None, None, None, None, None, None, None


def fused_tucker_attention(P: torch.Tensor, G: torch.Tensor, K: torch.Tensor, V: torch.Tensor, *, scale: float,
                           causal: bool = False, q_bias: torch.Tensor | None = None,
                           rope_cos: torch.Tensor | None = None, rope_sin: torch.Tensor | None = None,
                           rope_style: str = "interleaved", kv_len: torch.Tensor | None = None,
                           num_splits: int | None = None,
                           block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """Tucker attention with the per-head queries formed in the kernel (differentiable in P, G, q_bias, K, V).

    ``O[b, i] = softmax(scale · rot(P[b] G_i + q_bias_i) K[b]ᵀ + mask) V[b]`` for every head ``i`` (paper §3),
    with ``rot`` latent RoPE at the query positions (paper §6) and the mask bottom-right causal.

    Args:
        P: (B, N, r2) query latents ``X U₂``, shared by all heads.
        G: (n_H, r2, r3) per-head query cores ``G_i = Σ_a U₁[i, a] 𝒞[a]``.
        K: (B, S, r3) keys ``X U₃``, already rotated when RoPE is on (what the cache holds); S >= N.
        V: (B, S, r̃3) values ``X Ũ₃``.
        scale: the score scale ``s`` (the layer's ``1/√d_H``).
        causal: mask key ``j`` for query ``n`` unless ``j <= n + S - N`` (bottom-right aligned).
        q_bias: optional (n_H, r3) per-head query offset, added before RoPE.
        rope_cos, rope_sin: (N, r3/2) cos and sin of the query positions times the RoPE frequencies
            (``rope.rope_angles(positions, r3)``); both or neither. rope_style: "interleaved" | "half".
        kv_len: optional one-element integer tensor on the device: only keys ``j < kv_len`` exist (a
            static-shape cache's fill; read by the kernels, no host sync). It must be >= N; the causal mask is
            then aligned to it (query ``n`` sits at ``kv_len - N + n``). Default: all S keys.
        num_splits: split the keys over this many programs per row block (None: chosen from the GPU's size).
        block_m, block_n: query-row and key block sizes (powers of two >= 16; None: chosen from the shapes).
    Returns:
        O: (B, n_H, N, r̃3), the layout ``TuckerAttention``'s output projection takes.

    All tensors share one dtype (float16, bfloat16 or float32) and device (CUDA, or CPU with
    ``TRITON_INTERPRET=1``).
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    _check(P, G, K, V, q_bias, rope_cos, rope_sin, rope_style, scale)
    cfg = _Launch(P, G, K, V, block_m=block_m, block_n=block_n, num_splits=num_splits)
    C = Sn = None
    if rope_cos is not None:
        C, Sn = _expand(rope_cos.to(P.device), rope_style), _expand(rope_sin.to(P.device), rope_style)
    G = G.contiguous()
    q_bias = q_bias.contiguous() if q_bias is not None else None
    if kv_len is not None:
        if not isinstance(kv_len, torch.Tensor) or kv_len.numel() != 1 or kv_len.is_floating_point():
            raise ValueError(f"kv_len must be a one-element integer tensor, got {kv_len!r}")
        kv_len = kv_len.reshape(1).to(device=P.device)
    return _FusedTuckerAttention.apply(P, G, q_bias, K, V, C, Sn, kv_len, float(scale), causal, rope_style, cfg)
