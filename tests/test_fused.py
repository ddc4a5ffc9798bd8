"""The fused Triton kernel (attention/fused.py) against an independent float64 computation.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set per test): float32, tiny shapes,
values and gradients of P, G, q_bias, K, V; causal and not, RoPE off and in both pairings, N < S, decoding
(N = 1, heads folded into rows), key splits, a static cache's fill, non-power-of-two ranks, and the layer
with kernel="fused" against the default path. The interpreter mode is chosen when a kernel is called, not
when triton is imported, so other test files importing triton first cannot change these tests.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import tucker_attention as ta

pytest.importorskip("triton", reason="the fused kernel needs triton (pip install 'tucker-attention[kernels]')")

from tucker_attention.attention import fused  # noqa: E402
from tucker_attention.attention.fused import fused_tucker_attention  # noqa: E402
from tucker_attention.attention.rope import apply_rope, rope_angles  # noqa: E402


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# ------------------------------------------------------------------------------------ the reference
def rotation(positions: torch.Tensor, dim: int, style: str, base: float = 10000.0) -> torch.Tensor:
    """(N, dim, dim) float64 matrices R(m) with row-vector convention x -> x R(m), built pair by pair."""
    R = torch.zeros(len(positions), dim, dim, dtype=torch.float64)
    for j in range(dim // 2):
        a, b = (2 * j, 2 * j + 1) if style == "interleaved" else (j, j + dim // 2)
        ang = positions.double() * base ** (-2.0 * j / dim)
        R[:, a, a], R[:, b, b] = ang.cos(), ang.cos()
        R[:, a, b], R[:, b, a] = ang.sin(), -ang.sin()          # (x_a, x_b) -> (x_a c - x_b s, x_a s + x_b c)
    return R


def reference(P, G, K, V, *, scale, causal, q_bias=None, rot=None, kv_len=None):
    """softmax(scale · (P G_i + b_i) R(n) Kᵀ + mask) V in float64, bottom-right causal, keys < kv_len."""
    P, G, K, V = P.double(), G.double(), K.double(), V.double()
    if kv_len is not None:
        K, V = K[:, :kv_len], V[:, :kv_len]
    N, S = P.shape[1], K.shape[1]
    q = torch.einsum("bnk,hkc->bhnc", P, G)
    if q_bias is not None:
        q = q + q_bias.double()[:, None]
    if rot is not None:
        q = torch.einsum("bhnc,ncd->bhnd", q, rot)
    s = scale * torch.einsum("bhnc,bsc->bhns", q, K)
    if causal:
        visible = torch.arange(S, device=s.device)[None, :] <= torch.arange(N, device=s.device)[:, None] + (S - N)
        s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhns,bsv->bhnv", torch.softmax(s, dim=-1), V)


def make(B, N, S, H, r2, r3, dv, *, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(B, N, r2, generator=g, dtype=torch.float64)
    G = torch.randn(H, r2, r3, generator=g, dtype=torch.float64) / math.sqrt(r2)
    K = torch.randn(B, S, r3, generator=g, dtype=torch.float64)
    V = torch.randn(B, S, dv, generator=g, dtype=torch.float64)
    b = torch.randn(H, r3, generator=g, dtype=torch.float64) if bias else None
    return [P, G, K, V, b]


def compare(inputs, *, causal, style=None, positions=None, kv_len=None, scale=0.4, **kernel_args):
    """Kernel (float32) vs reference (float64): outputs and the gradients of every input."""
    P, G, K, V, b = inputs
    r3 = G.shape[2]
    N = P.shape[1]
    cos = sin = rot = None
    if style is not None:
        S_eff = K.shape[1] if kv_len is None else kv_len
        positions = torch.arange(S_eff - N, S_eff) if positions is None else positions
        cos, sin = rope_angles(positions, r3)
        rot = rotation(positions, r3, style)
    ours = [t.float().requires_grad_() if t is not None else None for t in inputs]
    theirs = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    out = fused_tucker_attention(*ours[:4], scale=scale, causal=causal, q_bias=ours[4], rope_cos=cos, rope_sin=sin,
                                 rope_style=style or "interleaved",
                                 kv_len=None if kv_len is None else torch.tensor(kv_len), **kernel_args)
    ref = reference(*theirs[:4], scale=scale, causal=causal, q_bias=theirs[4], rot=rot, kv_len=kv_len)
    assert out.shape == ref.shape and out.dtype == torch.float32
    w = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out.double() * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)
    for name, a, r in zip("P G K V q_bias".split(), ours, theirs):
        if a is None:
            continue
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"d{n}: {m}")
    return out


# ------------------------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("style", [None, "interleaved", "half"])
def test_values_and_gradients(interpret, causal, style):
    """N < S (a cache holds 4 earlier tokens), 3 heads, r2 = 9, r3 = 6, r̃3 = 5, with the query bias."""
    compare(make(2, 5, 9, 3, 9, 6, 5, bias=True), causal=causal, style=style)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_without_bias(interpret, causal):
    """N == S, no bias, RoPE at arbitrary (non-contiguous) positions."""
    compare(make(1, 7, 7, 2, 8, 10, 8), causal=causal, style="half", positions=torch.tensor([0, 3, 4, 9, 10, 30, 31]))


@pytest.mark.parametrize("causal", [False, True])
def test_many_blocks_odd_ranks(interpret, causal):
    """Row blocks that cross head boundaries (N = 37, block_m = 16), several key blocks with a ragged
    tail (S = 53, block_n = 16), the causal unmasked/masked split, and ranks 24, 22, 20 (padded to 32)."""
    compare(make(1, 37, 53, 2, 24, 22, 20, bias=True), causal=causal, style="interleaved", block_m=16, block_n=16)


@pytest.mark.parametrize("causal", [False, True])
def test_decode_heads_folded_and_split(interpret, causal):
    """N = 1: 20 heads are 20 rows of one program; keys split over 3 programs and merged."""
    compare(make(2, 1, 45, 20, 7, 6, 11, bias=True), causal=causal, style="half", block_n=16, num_splits=3)
    compare(make(1, 1, 45, 20, 7, 6, 11), causal=causal, style=None, block_m=16, block_n=32)   # 2 row blocks


def test_splits_with_empty_chunks(interpret):
    """Causal with key splits: the last split holds no key visible to the first queries (empty chunk)."""
    compare(make(1, 20, 40, 2, 8, 8, 8), causal=True, style=None, block_m=16, block_n=16, num_splits=3)


@pytest.mark.parametrize("causal", [False, True])
def test_static_fill(interpret, causal):
    """kv_len (a static cache's device-side fill): keys past it are invisible and get zero gradients."""
    inputs = make(2, 3, 40, 3, 8, 8, 6)
    compare(inputs, causal=causal, style="interleaved", kv_len=21, block_n=16)
    ours = [t.float().requires_grad_() for t in inputs[:4]]
    out = fused_tucker_attention(*ours, scale=0.4, causal=causal, kv_len=torch.tensor(21), block_n=16)
    out.sum().backward()
    assert ours[2].grad[:, 21:].abs().max() == 0 and ours[3].grad[:, 21:].abs().max() == 0


@pytest.mark.parametrize("causal", [False, True])
def test_float16(interpret, causal):
    """Half-precision inputs (float32 accumulation, probabilities rounded to float16 for the value product):
    within float16's rounding of the float64 result. (bfloat16 runs only on the GPU test: the interpreter's
    ``tl.dot`` multiplies bfloat16 wrongly.)"""
    P, G, K, V, b = make(2, 6, 20, 3, 16, 16, 16, bias=True)
    cos, sin = rope_angles(torch.arange(14, 20), 16)
    ref = reference(P, G, K, V, scale=0.4, causal=causal, q_bias=b, rot=rotation(torch.arange(14, 20), 16, "half"))
    out = fused_tucker_attention(*(t.half() for t in (P, G, K, V)), scale=0.4, causal=causal, q_bias=b.half(),
                                 rope_cos=cos, rope_sin=sin, rope_style="half")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


def test_rope_swap_is_the_rotation(interpret):
    """apply_rope(x) == x * cos + (x R) * sin with R = rope_swap, in both pairings."""
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    cos, sin = rope_angles(torch.arange(5) * 3, 8)
    for style in ("interleaved", "half"):
        full = fused._expand(cos, style).double(), fused._expand(sin, style).double()
        expected = apply_rope(x, cos, sin, style=style)
        torch.testing.assert_close(x * full[0] + fused.rope_swap(x, style) * full[1], expected)
        torch.testing.assert_close(fused.rope_swap(fused.rope_swap(x, style), style), -x)     # R² = -I


def test_any_import_order(interpret):
    """The compiled copy of the kernels may be loaded first (as a GPU process would); the interpreted call
    still works, because the mode is picked per call."""
    fused._kernels(False)
    compare(make(1, 2, 3, 2, 4, 4, 4), causal=True)


# -------------------------------------------------------------------------------------- the layer
LAYERS = [dict(rope=False, shared_kv=False, bias=False),
          dict(rope=True, shared_kv=False, bias=True, rope_style="half"),
          dict(rope=True, shared_kv=True, bias=False),
          dict(rope=False, shared_kv=True, bias=True)]


@pytest.mark.parametrize("opts", LAYERS, ids=lambda o: "-".join(k for k, v in o.items() if v))
def test_layer_fused_equals_default(interpret, opts):
    """Same output and gradients (input and every parameter) as kernel="sdpa", causal and not, and the same
    outputs while decoding from a dynamic and a static cache."""
    post = (3, 9, 10 if opts["shared_kv"] else 7)
    default = ta.TuckerAttention(24, 4, (2, 12, 10), post, **opts)
    with torch.no_grad():
        for p in default.parameters():
            p.normal_(0.0, 0.3)
    layer = ta.TuckerAttention(24, 4, (2, 12, 10), post, kernel="fused", **opts)
    layer.load_state_dict(default.state_dict())
    x = torch.randn(2, 6, 24)
    for causal in (False, True):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = default(xa, causal=causal), layer(xb, causal=causal)
        torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
        w = torch.randn_like(ya)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        grads = dict(default.named_parameters())
        for name, p in layer.named_parameters():
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
        default.zero_grad()
        layer.zero_grad()
    with torch.no_grad():
        for static in (False, True):
            ca, cb = default.make_cache(2, 9, static=static), layer.make_cache(2, 9, static=static)
            for piece in (x[:, :4], x[:, 4:5], x[:, 5:]):
                torch.testing.assert_close(layer(piece, causal=True, cache=cb), default(piece, causal=True, cache=ca),
                                           rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ errors
def test_layer_errors(interpret, monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of"):
        ta.TuckerAttention(16, 2, (2, 4, 4), kernel="triton")
    layer = ta.TuckerAttention(16, 2, (2, 4, 4), kernel="fused", dropout=0.1)
    with pytest.raises(ValueError, match="no attention dropout"):
        layer(torch.randn(1, 3, 16))
    layer.eval()
    assert layer(torch.randn(1, 3, 16)).shape == (1, 3, 16)          # dropout is off in eval
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        layer(torch.randn(1, 3, 16))
    monkeypatch.setattr(fused.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs triton"):
        ta.TuckerAttention(16, 2, (2, 4, 4), kernel="fused")


def test_function_errors(interpret):
    P, G, K, V, _ = make(1, 3, 5, 2, 4, 6, 4)
    P, G, K, V = P.float(), G.float(), K.float(), V.float()
    with pytest.raises(ValueError, match="at least as many"):
        fused_tucker_attention(P, G, K[:, :2], V[:, :2], scale=1.0)
    with pytest.raises(ValueError, match="G.shape\\[1\\]"):
        fused_tucker_attention(P, G[:, :3], K, V, scale=1.0)
    with pytest.raises(TypeError, match="differs from P.dtype"):
        fused_tucker_attention(P, G.double(), K, V, scale=1.0)
    with pytest.raises(ValueError, match="both rope_cos and rope_sin"):
        fused_tucker_attention(P, G, K, V, scale=1.0, rope_cos=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="block_m must be a power of two"):
        fused_tucker_attention(P, G, K, V, scale=1.0, block_m=24)
    wide = torch.zeros(2, 4, 130)
    with pytest.raises(ValueError, match="ranks <= 128 in torch.float32, got r3=130"):
        fused_tucker_attention(P, wide, torch.zeros(1, 5, 130), V, scale=1.0)


def test_model_config_and_cli_pass_the_kernel(capsys):
    from tucker_attention.cli import main
    from tucker_attention.models import AttentionConfig
    from tucker_attention.models.config import build_attention

    cfg = AttentionConfig(method="tucker", ranks=(2, 8, 8), kernel="fused")
    assert build_attention(cfg, 32, 4, max_seq_len=16).kernel == "fused"
    assert build_attention(AttentionConfig(method="tucker", ranks=(2, 8, 8)), 32, 4, max_seq_len=16).kernel == "sdpa"
    assert AttentionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Tucker attention's fused kernel"):
        AttentionConfig(method="gqa", n_kv_heads=2, kernel="fused")
    with pytest.raises(SystemExit) as info:
        main(["train", "lm", "--steps", "1", "--no-progress", "--attention", "mha", "--kernel", "fused"])
    assert info.value.code == 2 and "--kernel fused is for --attention tucker" in capsys.readouterr().err


def test_package_import_does_not_import_triton():
    code = ("import sys, tucker_attention as ta; ta.TuckerAttention(8, 2, (2, 4, 4)); "
            "f = ta.attention.fused_tucker_attention; assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_bf16(monkeypatch, causal):
    """Compiled kernels on CUDA in bfloat16 (and float32) vs the float64 reference, and the layer vs its
    default path; N < S with RoPE and decoding with folded heads."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _check_on("cuda", causal)


def _check_on(device: str, causal: bool, low: torch.dtype = torch.bfloat16) -> None:
    """The GPU test's checks on ``device`` with the low precision ``low`` (also runnable on CPU under the
    interpreter, slowly, with float16: the interpreter's ``tl.dot`` gives wrong bfloat16 products)."""
    for shape in ((2, 100, 300, 6, 48, 64, 64), (3, 1, 1000, 12, 128, 64, 64)):
        inputs = [t.to(device).requires_grad_() for t in make(*shape, bias=True)]
        N, S, r3 = shape[1], shape[2], shape[5]
        cos, sin = rope_angles(torch.arange(S - N, S, device=device), r3)
        rot = rotation(torch.arange(S - N, S), r3, "interleaved").to(device)
        ref = reference(*inputs[:4], scale=0.125, causal=causal, q_bias=inputs[4], rot=rot)
        w = torch.randn_like(ref)
        ref_grads = torch.autograd.grad((ref * w).sum(), inputs)
        for dtype, tol in ((low, 3e-2), (torch.float32, 1e-4)):
            ours = [t.detach().to(dtype).requires_grad_() for t in inputs]
            out = fused_tucker_attention(*ours[:4], scale=0.125, causal=causal, q_bias=ours[4], rope_cos=cos,
                                         rope_sin=sin)
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
            if dtype == torch.float32:
                grads = torch.autograd.grad((out.double() * w).sum(), ours)
                for g, r in zip(grads, ref_grads):
                    torch.testing.assert_close(g.double(), r, rtol=1e-3, atol=1e-3)
    default = ta.TuckerAttention(256, 8, (4, 64, 32), rope=True).to(device)
    layer = ta.TuckerAttention(256, 8, (4, 64, 32), rope=True, kernel="fused").to(device)
    layer.load_state_dict(default.state_dict())
    x = torch.randn(2, 200, 256, device=device)
    with torch.autocast(device, dtype=low):
        ya, yb = default(x, causal=causal), layer(x, causal=causal)
        (yb.float().square().sum()).backward()
    torch.testing.assert_close(yb.float(), ya.float(), rtol=3e-2, atol=3e-2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
