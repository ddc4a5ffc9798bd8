"""One function picks the attention kernel: flash-attn, PyTorch SDPA, or an explicit math reference.

All three compute, for query heads ``h`` grouped onto key/value heads ``h // (H_q // H_kv)``,

    out[b, h] = softmax(scale * q[b, h] @ k[b, g(h)]^T + mask) @ v[b, g(h)]

with shapes ``q (B, H_q, N, D)``, ``k (B, H_kv, S, D)``, ``v (B, H_kv, S, D_v)`` -> ``(B, H_q, N, D_v)``.
Keys and values with fewer heads (GQA/MQA, Tucker's single latent key) are never repeated in memory:
SDPA gets ``enable_gqa=True``, flash-attn takes fewer KV heads natively, the math path broadcasts a view.

``causal=True`` with ``N < S`` (decoding after a cache) uses the *bottom-right* aligned mask: query ``i``
sees keys ``j <= i + (S - N)``. (SDPA's ``is_causal`` is top-left aligned when ``N != S``, so it is only
used when ``N == S``.) An explicit boolean ``mask`` (N, S) (True: may attend) is what a static-shape cache
passes instead: it hides the unwritten slots of the preallocated buffers and the future.

**Folded heads.** With shared key/value heads and few queries (decoding), the SDPA and math paths fold the
query heads of each key/value head into the query length, ``q (B, H_q, N, D) -> (B, H_kv, G·N, D)`` with
``G = H_q / H_kv`` — for a single key/value head (Tucker, MQA, absorbed MLA) ``(B, 1, H·N, D)`` — and run one
product per key/value head instead of G small ones against a repeated K/V (what FlashMLA does for MLA's
latent decode, and flash-attn for GQA decoding). Row ``g·N + i`` of a folded group keeps query ``i``'s mask
row, so the result is the same function.
"""

from __future__ import annotations

import importlib
import logging
import math
from types import ModuleType

import torch
import torch.nn.functional as F

__all__ = ["BACKENDS", "FOLD_MAX_QUERIES", "attend", "available_backends", "causal_mask", "flash_attn_module",
           "fold_heads", "resolve_backend"]

BACKENDS = ("auto", "flash", "sdpa", "math")
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_DEVICE_TYPES = ("cuda",)
FLASH_MAX_HEAD_DIM = 256
FOLD_MAX_QUERIES = 8
"""Fold the query heads sharing a K/V head into the query length when a call has at most this many queries."""

log = logging.getLogger("tucker_attention")
_logged: set[str] = set()
_flash_cache: dict[str, ModuleType | None] = {}


def flash_attn_module() -> ModuleType | None:
    """The importable ``flash_attn`` module, or None. Cached; tests may replace the cache entry."""
    if "flash_attn" not in _flash_cache:
        try:
            _flash_cache["flash_attn"] = importlib.import_module("flash_attn")
        except Exception:  # ImportError, or a broken CUDA build raising at import
            _flash_cache["flash_attn"] = None
    return _flash_cache["flash_attn"]


def _flash_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> str | None:
    """Why flash-attn cannot run these inputs, or None if it can."""
    if mask is not None:
        return "flash_attn_func takes no explicit mask (a static-shape cache passes one)"
    if flash_attn_module() is None:
        return "flash_attn is not installed (pip install 'tucker-attention[flash]' on a CUDA machine)"
    if q.device.type not in FLASH_DEVICE_TYPES:
        return f"flash-attn needs CUDA tensors, got device {q.device}"
    if q.dtype not in FLASH_DTYPES:
        return f"flash-attn needs float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] != v.shape[-1]:
        return f"flash-attn needs equal query and value head sizes, got {q.shape[-1]} and {v.shape[-1]}"
    if q.shape[-1] > FLASH_MAX_HEAD_DIM:
        return f"flash-attn supports head sizes <= {FLASH_MAX_HEAD_DIM}, got {q.shape[-1]}"
    return None


def available_backends() -> list[str]:
    """Backends importable on this machine (flash only if flash_attn imports and CUDA is present)."""
    out = ["sdpa", "math"]
    if flash_attn_module() is not None and torch.cuda.is_available():
        out.insert(0, "flash")
    return out


def resolve_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None) -> str:
    """Return the concrete backend for these inputs. ``auto`` = flash if it can run them, else sdpa."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got backend={backend!r}")
    if backend == "auto":
        chosen = "flash" if _flash_unsupported(q, k, v, mask) is None else "sdpa"
    elif backend == "flash":
        why = _flash_unsupported(q, k, v, mask)
        if why is not None:
            raise ValueError(f"backend='flash' cannot run here: {why}. Use backend='sdpa' or 'auto'.")
        chosen = "flash"
    else:
        chosen = backend
    key = f"{backend}->{chosen}"
    if key not in _logged:
        _logged.add(key)
        log.info("tucker_attention: attention backend %r resolved to %r", backend, chosen)
    return chosen


def causal_mask(n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned boolean mask (n_q, n_k): True where query i may attend key j."""
    i = torch.arange(n_q, device=device).unsqueeze(1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return j <= i + (n_k - n_q)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, N, D); got q{tuple(q.shape)}, k{tuple(k.shape)}, "
                         f"v{tuple(v.shape)}")
    B, Hq, N, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must share batch, heads and length with each other and batch with q; "
                         f"got q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}")
    if k.shape[-1] != D:
        raise ValueError(f"k's head size must equal q's ({D}), got k.shape={tuple(k.shape)}")
    if Hq % k.shape[1] != 0:
        raise ValueError(f"query heads ({Hq}) must be divisible by key/value heads ({k.shape[1]})")
    if k.shape[2] < N:
        raise ValueError(f"keys ({k.shape[2]}) must be at least as many as queries ({N})")


def _check_mask(mask: torch.Tensor, n_q: int, n_k: int) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != (n_q, n_k):
        raise ValueError(f"mask must be a boolean (queries, keys) = ({n_q}, {n_k}) tensor, got "
                         f"dtype={mask.dtype}, shape={tuple(mask.shape)}")


def _visible(n_q: int, n_k: int, causal: bool, mask: torch.Tensor | None, device: torch.device
             ) -> torch.Tensor | None:
    """The (n_q, n_k) boolean mask of keys each query sees (None: all): ``mask`` and the causal mask."""
    if causal:
        cm = causal_mask(n_q, n_k, device)
        return cm if mask is None else cm & mask
    return mask


def fold_heads(q: torch.Tensor, mask: torch.Tensor | None, n_kv_heads: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``q`` (B, H, N, D) as ``n_kv_heads`` heads of ``G·N`` queries (B, H_kv, G·N, D), ``G = H / H_kv``, with
    the matching (G·N, S) mask.

    Query head ``h = j·G + g`` belongs to key/value head ``j`` (contiguous groups); its query ``i`` becomes
    row ``g·N + i`` of folded head ``j``, so it keeps row ``i`` of ``mask`` (N, S) — pass the causal mask
    already combined in (a single query seeing every key needs none: None).
    """
    B, H, N, D = q.shape
    G = H // n_kv_heads
    return q.reshape(B, n_kv_heads, G * N, D), None if mask is None else mask.repeat(G, 1)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                   dropout_p: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference path: explicit scores and softmax; query heads grouped, K/V broadcast (no copies).
    ``mask`` (N, S): True where a query may attend (combined with ``causal``)."""
    B, Hq, N, D = q.shape
    Hk, S = k.shape[1], k.shape[2]
    G = Hq // Hk
    qg = q.reshape(B, Hk, G, N, D)                                    # (B, Hk, G, N, D)
    scores = scale * (qg @ k.unsqueeze(2).transpose(-1, -2))          # (B, Hk, G, N, S)
    visible = _visible(N, S, causal, mask, q.device)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    out = probs @ v.unsqueeze(2)                                      # (B, Hk, G, N, Dv)
    return out.reshape(B, Hq, N, v.shape[-1])


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                   dropout_p: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch's fused kernels (flash / memory-efficient / math, chosen by PyTorch).
    ``mask`` (N, S): True where a query may attend (combined with ``causal``)."""
    N, S = q.shape[2], k.shape[2]
    is_causal = causal and N == S and mask is None
    attn_mask = None if is_causal else _visible(N, S, causal, mask, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                    dropout_p: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """flash-attn 2's ``flash_attn_func``: layout (B, N, H, D), fewer KV heads natively (MQA/GQA),
    ``causal`` aligned bottom-right when N != S (flash-attn >= 2.1)."""
    fa = flash_attn_module()
    out = fa.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             dropout_p=dropout_p, softmax_scale=scale, causal=causal)
    return out.transpose(1, 2)


_KERNELS = {"math": math_attention, "sdpa": sdpa_attention, "flash": flash_attention}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
           causal: bool = False, dropout_p: float = 0.0, backend: str = "auto",
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V heads.

    Args:
        q: (B, H_q, N, D) queries. k: (B, H_kv, S, D) keys. v: (B, H_kv, S, D_v) values; H_q % H_kv == 0.
        scale: score scale ``s`` (default 1/sqrt(D)). causal: bottom-right aligned causal mask.
        dropout_p: attention-probability dropout. backend: "auto" | "flash" | "sdpa" | "math".
        mask: optional (N, S) boolean tensor, True where query ``i`` may attend key ``j`` (and-ed with
            ``causal``); flash-attn takes none, so "auto" then runs SDPA.
    Returns:
        (B, H_q, N, D_v).

    With fewer K/V heads than query heads and at most ``FOLD_MAX_QUERIES`` queries, the SDPA and math paths
    run the query heads folded into the query length (``fold_heads``): one product per K/V head.
    """
    _check_shapes(q, k, v)
    if mask is not None:
        _check_mask(mask, q.shape[2], k.shape[2])
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    chosen = resolve_backend(backend, q, k, v, mask)
    B, Hq, N, _ = q.shape
    if chosen != "flash" and Hq > k.shape[1] and N <= FOLD_MAX_QUERIES:
        visible = _visible(N, k.shape[2], causal, mask, q.device) if N > 1 or mask is not None else None
        qf, mf = fold_heads(q, visible, k.shape[1])
        out = _KERNELS[chosen](qf, k, v, scale=scale, causal=False, dropout_p=dropout_p, mask=mf)
        return out.reshape(B, Hq, N, v.shape[-1])                        # row h·N + i -> (h, i)
    return _KERNELS[chosen](q, k, v, scale=scale, causal=causal, dropout_p=dropout_p, mask=mask)
