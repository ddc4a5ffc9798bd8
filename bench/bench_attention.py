"""Benchmark the attention layers side by side: forward, forward+backward and one decoding step.

Prints a table of times and their ratios to MHA, measured in one run, and saves the numbers (with the
device, torch version, git commit and command) as JSON. A benchmark, not a test: nothing asserts on time.

    python bench/bench_attention.py                       # CPU-sized defaults
    python bench/bench_attention.py --preset gpt2 --device cuda --dtype bfloat16 --out book/results/kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.utils.benchmark as tbench

import tucker_attention as ta
from tucker_attention.attention import build

PRESETS = {
    # d_model, n_heads, batch, seq_len, methods (label, method, sizes)
    "tiny": (32, 4, 2, 16, [
        ("MHA", "mha", {}), ("MQA", "mqa", {}), ("Tucker [2,8,8]", "tucker", {"ranks": (2, 8, 8)}),
    ]),
    "cpu": (256, 4, 4, 256, [
        ("MHA", "mha", {}), ("GQA n_kv=2", "gqa", {"n_kv_heads": 2}), ("MQA", "mqa", {}),
        ("MLA d_c=64", "mla", {"q_latent": 64, "kv_latent": 64}),
        ("Tucker [2,64,64]", "tucker", {"ranks": (2, 64, 64)}), ("Tucker [2,32,32]", "tucker", {"ranks": (2, 32, 32)}),
    ]),
    "gpt2": (768, 12, 8, 1024, [
        ("MHA", "mha", {}), ("GQA n_kv=4", "gqa", {"n_kv_heads": 4}), ("GQA n_kv=2", "gqa", {"n_kv_heads": 2}),
        ("MQA", "mqa", {}), ("MLA d_c=128", "mla", {"q_latent": 128, "kv_latent": 128}),
        ("Tucker [8,128,128]", "tucker", {"ranks": (8, 128, 128)}),
        ("Tucker [8,128,64]", "tucker", {"ranks": (8, 128, 64)}),
        ("Tucker [8,64,64]", "tucker", {"ranks": (8, 64, 64)}),
    ]),
}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        return "unknown"


def measure(fn, min_run_time: float) -> float:
    """Median seconds per call (torch.utils.benchmark handles CUDA synchronization and warm-up)."""
    return tbench.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def bench_layer(layer: torch.nn.Module, x: torch.Tensor, min_run_time: float) -> dict[str, float]:
    """Median seconds of a causal forward, a forward+backward, and one decoding step after len(x) tokens."""
    B, N, _ = x.shape
    with torch.no_grad():
        fwd = measure(lambda: layer(x, causal=True), min_run_time)
        cache = layer.make_cache(B, N + 1)
        layer(x, causal=True, cache=cache)
        step_x = x[:, :1]

        def decode_step():
            cache.length = N                           # overwrite the same slot: one step after N tokens
            return layer(step_x, causal=True, cache=cache)

        dec = measure(decode_step, min_run_time)
    xg = x.detach().clone().requires_grad_(True)
    fb = measure(lambda: layer(xg, causal=True).sum().backward(), min_run_time)
    return dict(forward_s=fwd, forward_backward_s=fb, decode_step_s=dec)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=list(ta.attention.BACKENDS))
    p.add_argument("--seq-len", type=int, default=None, help="override the preset's sequence length")
    p.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)

    d, h, B, N, methods = PRESETS[args.preset]
    B, N = args.batch or B, args.seq_len or N
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    x = torch.randn(B, N, d, device=args.device, dtype=dtype)
    rows = []
    for label, method, sizes in methods:
        layer = build(method, d, h, backend=args.backend, **sizes).to(args.device, dtype)
        rows.append(dict(label=label, method=method,
                         sizes={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
                         attention_params=sum(q.numel() for q in layer.parameters()),
                         kv_cache_per_token=layer.kv_cache_per_token(),
                         **bench_layer(layer, x, args.min_run_time)))
    base = rows[0]
    print(f"\n{args.preset}: d={d}, heads={h}, batch={B}, seq={N}, {args.dtype} on {args.device}, "
          f"backend={args.backend}")
    print(f"{'method':22s} {'params':>10s} {'cache/tok':>9s} {'fwd ms':>8s} {'x MHA':>6s} {'fwd+bwd ms':>10s} "
          f"{'x MHA':>6s} {'decode ms':>9s} {'x MHA':>6s}")
    for r in rows:
        print(f"{r['label']:22s} {r['attention_params']:10d} {r['kv_cache_per_token']:9d} "
              f"{1e3 * r['forward_s']:8.3f} {r['forward_s'] / base['forward_s']:6.2f} "
              f"{1e3 * r['forward_backward_s']:10.3f} {r['forward_backward_s'] / base['forward_backward_s']:6.2f} "
              f"{1e3 * r['decode_step_s']:9.3f} {r['decode_step_s'] / base['decode_step_s']:6.2f}")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or "cpu")
    common = dict(benchmark="attention_layers", preset=args.preset, d_model=d, n_heads=h, batch_size=B, seq_len=N,
                  dtype=args.dtype, backend=args.backend, device=device_name, torch=torch.__version__,
                  commit=git_commit(), command=" ".join([sys.executable, *sys.argv]),
                  time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # one flat record per layer (the book's plot_recorded_timings reads method, label, seq_len, ms)
    records = [dict(common, **r, ms=1e3 * r["forward_s"]) for r in rows]
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
        print(f"saved {args.out}")
    record = dict(common, rows=rows)
    return record


if __name__ == "__main__":
    main()
