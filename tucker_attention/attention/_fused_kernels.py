"""Triton kernels of the fused Tucker attention (host code, shapes and maths: ``fused.py``).

This module holds only ``@triton.jit`` functions. ``fused.py`` loads it twice at most, once compiled for the
GPU and once under Triton's CPU interpreter, because ``triton.jit`` decides between the two when a module
is imported (``TRITON_INTERPRET``), and a process may need the mode it did not start with.

Layout of the query rows. All heads share one key and one value (Tucker attention is multi-query
attention with head size r3), so the kernels fold heads into the query rows: row ``r`` of a batch element
is the pair ``(h, n) = (r // N, r % N)`` (head-major). A block of ``BLOCK_M`` rows holds one head when
N >= BLOCK_M (the training case) and up to ``BLOCK_M`` heads when N is small (decoding: N = 1 gives one
row per head), so one program reads each key/value block once for all the heads it holds. The query of
row ``(h, n)`` is formed in registers, ``q = P[n] G_h (+ b_h)``, one ``tl.dot`` per head present in the
block (rows of other heads masked to zero), then rotated by latent RoPE:

    q_rot = q * C[n] + (q R) * S[n],   q R = P[n] (G_h R) (+ b_h R)

with ``C``, ``S`` (N, r3) the cos/sin tables expanded to the RoPE style's pairing and ``R`` the fixed
pair-swap-with-sign matrix (``G R`` precomputed on the host). Scores use ``exp2``: the query is scaled by
``scale * log2(e)`` and the log-sum-exp ``L`` is kept in base 2. The backward kernels read the rotated
queries that the host forms once (float32, rows folded the same way).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Reductions through ``tl.reduce`` with triton's own combine functions, and ``tl.full`` instead of ``tl.zeros``:
# ``tl.max``/``tl.sum``/``tl.zeros`` are themselves ``triton.jit`` functions whose mode was fixed when triton
# was imported, so calling them would tie the interpreted copy to a process that imported triton with
# ``TRITON_INTERPRET=1``; the combine functions are only compared or traced, which works in both modes.
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine


@triton.jit
def _queries(P, G, GR, QB, QBR, C, Sn, b, rows, row_ok, h_lo, h_hi, N, R2, R3,
             s_pb, s_pn, s_pk,
             BLOCK_M: tl.constexpr, BR2: tl.constexpr, BR3: tl.constexpr,
             ROPE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PREC: tl.constexpr):
    """Rotated latent queries (BLOCK_M, BR3) in float32 for folded rows ``rows`` of batch ``b``;
    heads ``h_lo..h_hi`` are those present in the block. Padded rows and columns are zero."""
    n = rows % N
    h = rows // N
    k = tl.arange(0, BR2)
    c = tl.arange(0, BR3)
    k_ok = k < R2
    c_ok = c < R3
    p = tl.load(P + b * s_pb + n[:, None] * s_pn + k[None, :] * s_pk,
                mask=row_ok[:, None] & k_ok[None, :], other=0.0)                       # (BLOCK_M, BR2)
    g_off = k[:, None] * R3 + c[None, :]
    g_ok = k_ok[:, None] & c_ok[None, :]
    q = tl.full((BLOCK_M, BR3), 0.0, dtype=tl.float32)
    q2 = tl.full((BLOCK_M, BR3), 0.0, dtype=tl.float32)
    for hh in range(h_lo, h_hi + 1):
        ph = tl.where((h == hh)[:, None], p, 0.0).to(p.dtype)
        g = tl.load(G + hh * R2 * R3 + g_off, mask=g_ok, other=0.0)                    # (BR2, BR3)
        q = tl.dot(ph, g, acc=q, input_precision=DOT_PREC)
        if ROPE:
            gr = tl.load(GR + hh * R2 * R3 + g_off, mask=g_ok, other=0.0)
            q2 = tl.dot(ph, gr, acc=q2, input_precision=DOT_PREC)
    rc_ok = row_ok[:, None] & c_ok[None, :]
    if HAS_BIAS:
        q += tl.load(QB + h[:, None] * R3 + c[None, :], mask=rc_ok, other=0.0).to(tl.float32)
        if ROPE:
            q2 += tl.load(QBR + h[:, None] * R3 + c[None, :], mask=rc_ok, other=0.0).to(tl.float32)
    if ROPE:
        cos = tl.load(C + n[:, None] * R3 + c[None, :], mask=rc_ok, other=0.0)
        sin = tl.load(Sn + n[:, None] * R3 + c[None, :], mask=rc_ok, other=0.0)
        q = q * cos + q2 * sin
    return q


@triton.jit
def _kv_len(KVLEN, S, HAS_KVLEN: tl.constexpr):
    """The number of keys in use: ``S``, or the device scalar at ``KVLEN`` (a static-shape cache's fill,
    read on the device: no host sync); keys at or past it are invisible."""
    if HAS_KVLEN:
        S = tl.minimum(tl.load(KVLEN).to(tl.int32), S)
    return S


@triton.jit
def _row_range(start, last, N):
    """(h_lo, h_hi, n_min, n_max) of the folded rows ``start..last``."""
    h_lo = start // N
    h_hi = last // N
    n_min = start % N
    n_max = last % N
    if h_hi > h_lo:            # the block crosses a head boundary: it holds n = 0 and n = N - 1
        n_min = 0
        n_max = N - 1
    return h_lo, h_hi, n_min, n_max


@triton.jit
def _fwd_step(acc, l_i, m_i, q, K, V, b, start, hi, qpos, s_kb, s_ks, s_kc, s_vb, s_vs, s_vc, R3, DV,
              BLOCK_N: tl.constexpr, BR3: tl.constexpr, BDV: tl.constexpr, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key block of the online softmax (flash-attention 2): update ``acc``, ``l_i``, ``m_i``."""
    cols = start + tl.arange(0, BLOCK_N)
    c = tl.arange(0, BR3)
    dv = tl.arange(0, BDV)
    if MASKED:
        col_ok = cols < hi
    else:
        col_ok = cols < cols + 1           # all true: the block lies inside the unmasked range
    kt = tl.load(K + b * s_kb + cols[None, :] * s_ks + c[:, None] * s_kc,
                 mask=col_ok[None, :] & (c < R3)[:, None], other=0.0)                  # (BR3, BLOCK_N)
    s = tl.dot(q, kt, input_precision=DOT_PREC)                                        # (BLOCK_M, BLOCK_N)
    if MASKED:
        ok = col_ok[None, :]
        if CAUSAL:
            ok = ok & (cols[None, :] <= qpos[:, None])
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)     # rows with no key yet: keep exp2 finite
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
    v = tl.load(V + b * s_vb + cols[:, None] * s_vs + dv[None, :] * s_vc,
                mask=col_ok[:, None] & (dv < DV)[None, :], other=0.0)                   # (BLOCK_N, BDV)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc=acc, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def fwd_kernel(P, G, GR, QB, QBR, C, Sn, K, V, O, L, KVLEN,
               s_pb, s_pn, s_pk, s_kb, s_ks, s_kc, s_vb, s_vs, s_vc, s_os, s_ob, s_ls, s_lb,
               H, N, S, R2, R3, DV, qk_scale, chunk,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BR2: tl.constexpr, BR3: tl.constexpr,
               BDV: tl.constexpr, CAUSAL: tl.constexpr, ROPE: tl.constexpr, HAS_BIAS: tl.constexpr,
               HAS_KVLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """Forward: grid (row blocks, B, splits). Writes O (rows, r̃3) and L (rows,) of split ``program_id(2)``,
    which covers keys ``[split*chunk, split*chunk + chunk)``; with one split these are the final O and L."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    split = tl.program_id(2)
    total = H * N
    start_m = pid * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < total
    last = tl.minimum(start_m + BLOCK_M, total) - 1
    h_lo, h_hi, n_min, n_max = _row_range(start_m, last, N)
    q = _queries(P, G, GR, QB, QBR, C, Sn, b, rows, row_ok, h_lo, h_hi, N, R2, R3, s_pb, s_pn, s_pk,
                 BLOCK_M, BR2, BR3, ROPE, HAS_BIAS, DOT_PREC)
    q = (q * qk_scale).to(K.dtype.element_ty)
    S = _kv_len(KVLEN, S, HAS_KVLEN)
    qpos = rows % N + (S - N)                      # bottom-right causal alignment: query n sits at S - N + n
    lo = split * chunk
    hi = tl.minimum(lo + chunk, S)
    full = hi
    if CAUSAL:
        hi = tl.minimum(hi, n_max + (S - N) + 1)
        full = tl.minimum(hi, n_min + (S - N) + 1)
    mid = lo + tl.maximum(full - lo, 0) // BLOCK_N * BLOCK_N
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.full((BLOCK_M,), 0.0, dtype=tl.float32)
    acc = tl.full((BLOCK_M, BDV), 0.0, dtype=tl.float32)
    for start in range(lo, mid, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, b, start, hi, qpos, s_kb, s_ks, s_kc, s_vb, s_vs,
                                  s_vc, R3, DV, BLOCK_N, BR3, BDV, False, CAUSAL, DOT_PREC)
    for start in range(mid, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, b, start, hi, qpos, s_kb, s_ks, s_kc, s_vb, s_vs,
                                  s_vc, R3, DV, BLOCK_N, BR3, BDV, True, CAUSAL, DOT_PREC)
    empty = l_i == 0.0                             # only possible in a split that holds no visible key
    l_safe = tl.where(empty, 1.0, l_i)
    m_safe = tl.where(empty, 0.0, m_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), m_safe + tl.math.log2(l_safe))
    dv = tl.arange(0, BDV)
    tl.store(O + split * s_os + b * s_ob + rows[:, None] * DV + dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (dv < DV)[None, :])
    tl.store(L + split * s_ls + b * s_lb + rows, lse, mask=row_ok)


@triton.jit
def combine_kernel(Op, Lp, O, L, n_splits, total, DV, s_ps, s_pb, s_ls, s_lb, s_ob,
                   BLOCK_M: tl.constexpr, BDV: tl.constexpr):
    """Merge split partial outputs: O = Σ_s 2^(L_s - L) O_s with L = log2 Σ_s 2^L_s. Grid (row blocks, B)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < total
    dv = tl.arange(0, BDV)
    mask = row_ok[:, None] & (dv < DV)[None, :]
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    for s in range(n_splits):
        m = tl.maximum(m, tl.load(Lp + s * s_ls + b * s_lb + rows, mask=row_ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)
    den = tl.full((BLOCK_M,), 0.0, dtype=tl.float32)
    acc = tl.full((BLOCK_M, BDV), 0.0, dtype=tl.float32)
    for s in range(n_splits):
        w = tl.math.exp2(tl.load(Lp + s * s_ls + b * s_lb + rows, mask=row_ok, other=float("-inf")) - m)
        den += w
        o = tl.load(Op + s * s_ps + b * s_pb + rows[:, None] * DV + dv[None, :], mask=mask, other=0.0)
        acc += w[:, None] * o
    den = tl.where(den == 0.0, 1.0, den)
    tl.store(O + b * s_ob + rows[:, None] * DV + dv[None, :], (acc / den[:, None]).to(O.dtype.element_ty),
             mask=mask)
    tl.store(L + b * total + rows, m + tl.math.log2(den), mask=row_ok)


@triton.jit
def bwd_dkdv_kernel(Q, K, V, DO, L, D, DK, DV_out, KVLEN,
                    s_kb, s_ks, s_kc, s_vb, s_vs, s_vc,
                    H, N, S, R3, DV, qk_scale, scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BR3: tl.constexpr, BDV: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_KVLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dK, dV of one key block, summed over every head and query (one K/V head): grid (key blocks, B).
    The probabilities are recomputed (flash-attention 2) from the rotated queries ``Q`` (rows, r3) in
    float32, which the backward forms once; D = rowsum(dO * O)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    total = H * N
    S_alloc = S
    S = _kv_len(KVLEN, S, HAS_KVLEN)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < S
    c = tl.arange(0, BR3)
    dv = tl.arange(0, BDV)
    k = tl.load(K + b * s_kb + cols[:, None] * s_ks + c[None, :] * s_kc,
                mask=col_ok[:, None] & (c < R3)[None, :], other=0.0)                   # (BLOCK_N, BR3)
    v = tl.load(V + b * s_vb + cols[:, None] * s_vs + dv[None, :] * s_vc,
                mask=col_ok[:, None] & (dv < DV)[None, :], other=0.0)                  # (BLOCK_N, BDV)
    dk = tl.full((BLOCK_N, BR3), 0.0, dtype=tl.float32)
    dvacc = tl.full((BLOCK_N, BDV), 0.0, dtype=tl.float32)
    n_lo = 0
    if CAUSAL:                                     # queries before this block's first key see none of it
        n_lo = tl.maximum(pid * BLOCK_N - (S - N), 0)
    for h in range(0, H):
        for m0 in range(n_lo, N, BLOCK_M):
            n = m0 + tl.arange(0, BLOCK_M)
            n_ok = n < N
            rows = h * N + n
            q = tl.load(Q + b * total * R3 + rows[:, None] * R3 + c[None, :],
                        mask=n_ok[:, None] & (c < R3)[None, :], other=0.0)             # (BLOCK_M, BR3)
            qs = (q * qk_scale).to(k.dtype)
            s = tl.dot(qs, tl.trans(k), input_precision=DOT_PREC)                      # (BLOCK_M, BLOCK_N)
            lse = tl.load(L + b * total + rows, mask=n_ok, other=0.0)
            ok = n_ok[:, None] & col_ok[None, :]
            if CAUSAL:
                ok = ok & (cols[None, :] <= (n + (S - N))[:, None])
            p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)
            do = tl.load(DO + b * total * DV + rows[:, None] * DV + dv[None, :],
                         mask=n_ok[:, None] & (dv < DV)[None, :], other=0.0)           # (BLOCK_M, BDV)
            dvacc = tl.dot(tl.trans(p.to(do.dtype)), do, acc=dvacc, input_precision=DOT_PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)                     # (BLOCK_M, BLOCK_N)
            delta = tl.load(D + b * total + rows, mask=n_ok, other=0.0)
            ds = p * (dp - delta[:, None])
            dk = tl.dot(tl.trans(ds.to(k.dtype)), q.to(k.dtype), acc=dk, input_precision=DOT_PREC)
    dk = dk * scale
    store_ok = cols < S_alloc                      # slots past a static cache's fill get zero gradients
    tl.store(DK + b * S_alloc * R3 + cols[:, None] * R3 + c[None, :], dk.to(DK.dtype.element_ty),
             mask=store_ok[:, None] & (c < R3)[None, :])
    tl.store(DV_out + b * S_alloc * DV + cols[:, None] * DV + dv[None, :], dvacc.to(DV_out.dtype.element_ty),
             mask=store_ok[:, None] & (dv < DV)[None, :])


@triton.jit
def bwd_dq_kernel(Q, K, V, DO, L, D, DQ, KVLEN,
                  s_kb, s_ks, s_kc, s_vb, s_vs, s_vc,
                  H, N, S, R3, DV, qk_scale, scale,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BR3: tl.constexpr, BDV: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_KVLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dq (rows, r3) in float32: the gradient with respect to the rotated query, rows folded as in the
    forward. Grid (row blocks, B). The host contracts it to dP, dG (and the bias gradient)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    total = H * N
    start_m = pid * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < total
    last = tl.minimum(start_m + BLOCK_M, total) - 1
    h_lo, h_hi, n_min, n_max = _row_range(start_m, last, N)
    c = tl.arange(0, BR3)
    dv = tl.arange(0, BDV)
    q = tl.load(Q + b * total * R3 + rows[:, None] * R3 + c[None, :],
                mask=row_ok[:, None] & (c < R3)[None, :], other=0.0)                   # (BLOCK_M, BR3)
    qs = (q * qk_scale).to(K.dtype.element_ty)
    S = _kv_len(KVLEN, S, HAS_KVLEN)
    qpos = rows % N + (S - N)
    lse = tl.load(L + b * total + rows, mask=row_ok, other=0.0)
    delta = tl.load(D + b * total + rows, mask=row_ok, other=0.0)
    do = tl.load(DO + b * total * DV + rows[:, None] * DV + dv[None, :],
                 mask=row_ok[:, None] & (dv < DV)[None, :], other=0.0)                 # (BLOCK_M, BDV)
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, n_max + (S - N) + 1)
    dq = tl.full((BLOCK_M, BR3), 0.0, dtype=tl.float32)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        k = tl.load(K + b * s_kb + cols[:, None] * s_ks + c[None, :] * s_kc,
                    mask=col_ok[:, None] & (c < R3)[None, :], other=0.0)               # (BLOCK_N, BR3)
        v = tl.load(V + b * s_vb + cols[:, None] * s_vs + dv[None, :] * s_vc,
                    mask=col_ok[:, None] & (dv < DV)[None, :], other=0.0)              # (BLOCK_N, BDV)
        s = tl.dot(qs, tl.trans(k), input_precision=DOT_PREC)
        ok = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            ok = ok & (cols[None, :] <= qpos[:, None])
        p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, acc=dq, input_precision=DOT_PREC)
    dq = dq * scale
    tl.store(DQ + b * total * R3 + rows[:, None] * R3 + c[None, :], dq,
             mask=row_ok[:, None] & (c < R3)[None, :])
