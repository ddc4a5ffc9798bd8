"""The benchmark suite: every figure a ratio of two timings taken side by side, interleaved, in one run.

Sections (``--only`` picks some; all by default):

- ``layer``   a layer's causal forward and forward+backward at GPT-2-small layer shape (d=768, 12 heads),
              each method against MHA and GQA(n_kv = H/4);
- ``core``    Tucker's attention core — head queries ``Q_i = P G_i``, the MQA kernel call, the head outputs
              ``Σ_i O_i G̃_iᵀ`` — against the floor it can reach: one bare SDPA MQA call with head size r3;
- ``fused``   the fused Triton kernel (``TuckerAttention(kernel="fused")``) against the SDPA path, where it can
              run (CUDA + triton); otherwise a record that says "skipped: <why>";
- ``decode``  one cached decoding step at context lengths 512…8k and batch sizes 1 and 8: ms per step,
              tokens/s, and the cache's bytes, checked equal to the formula (PAPER.md §5);
- ``memory``  peak memory of a forward+backward (CUDA allocator statistics; skipped on CPU, which has none).

Interleaving: each round measures every method once per configuration (``torch.utils.benchmark``, which
synchronizes CUDA), and a ratio is the median over rounds of the per-round ratio, so a busy machine's drift
hits numerator and denominator alike. A benchmark, not a test: nothing asserts on time.

Records (one JSON list, ``--out``; default ``book/results/bench/<device>_<dtype>.json``): one flat record per
measurement with ``kind`` ("forward", "forward_backward", "core", "fused", "decode", "memory"), ``label``,
``method``, ``sizes``, ``batch_size``, ``seq_len`` (the context for "decode"), ``time_ms`` (median),
``ratio_to_MHA``/``ratio_to_GQA`` (and ``ratio_to`` + ``ratio`` for "core"/"fused"), and the provenance
(``device``, ``device_type``, ``dtype``, ``threads``, ``torch``, ``git_commit``, ``git_dirty``, ``seed``,
``command``, ``time``). "forward"
records also carry ``ms`` (= ``time_ms``), which ``tucker_attention.book.plot_recorded_timings`` plots.

    python bench/bench_attention.py                                  # CPU defaults (about 2-3 minutes)
    python bench/bench_attention.py --quick                           # seconds: tiny sizes (smoke test)
    python bench/bench_attention.py --device cuda --dtype bfloat16    # GPU sizes
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tbench

import tucker_attention as ta
from tucker_attention.counting import build_layer, kv_cache_per_token
from tucker_attention.provenance import device_name, git_commit

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("layer", "core", "fused", "decode", "memory")

# (label, method, sizes): the first two are the references every ratio is taken against
METHODS = [
    ("MHA", "mha", {}),
    ("GQA n_kv=3", "gqa", {"n_kv_heads": 3}),
    ("MQA", "mqa", {}),
    ("MLA d_c=128", "mla", {"q_latent": 128, "kv_latent": 128}),
    ("Tucker [6,128,64]", "tucker", {"ranks": (6, 128, 64)}),
    ("Tucker [8,128,64]", "tucker", {"ranks": (8, 128, 64)}),
]
TUCKER = "Tucker [6,128,64]"

# d_model, n_heads, batch and seq_len of the layer section; decode contexts and batches
SIZES = {
    "cpu": dict(d=768, h=12, batch=1, seq=256, contexts=(512, 2048, 8192), batches=(1, 8)),
    "cuda": dict(d=768, h=12, batch=8, seq=1024, contexts=(512, 2048, 8192), batches=(1, 8)),
    "quick": dict(d=48, h=4, batch=1, seq=16, contexts=(16, 32), batches=(1, 2)),
}
QUICK_METHODS = [("MHA", "mha", {}), ("GQA n_kv=1", "gqa", {"n_kv_heads": 1}),
                 ("Tucker [2,8,8]", "tucker", {"ranks": (2, 8, 8)})]


# -------------------------------------------------------------------------------------------- helpers
STATISTIC = {"statistic": "median"}
"""How one measurement summarizes its timed blocks: "median", or "min" (the fastest block: on a shared CPU,
the time least inflated by other processes). Set from ``--statistic``."""


def measure(fn: Callable[[], object], min_run_time: float, threads: int) -> float:
    """Seconds per call of ``fn`` (``torch.utils.benchmark``: warm-up, CUDA synchronization), summarized over
    its timed blocks by ``STATISTIC``."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return min(m.times) if STATISTIC["statistic"] == "min" else m.median


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float, threads: int
                ) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` times, measured round-robin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(measure(fn, min_run_time, threads))
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of the per-round ratio num/den."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def fill_cache(cache: ta.attention.KVCache, length: int) -> None:
    """Make ``cache`` hold ``length`` tokens of random entries at positions 0..length-1 (no prefill pass)."""
    for buf in cache.buffers.values():
        buf.normal_()                                                    # on the cache's device
    cache.positions.copy_(torch.arange(cache.max_len, device=cache.device))
    cache.length = length


def held_bytes(cache: ta.attention.KVCache) -> int:
    """Bytes the cache holds for its tokens: its element count times the element size."""
    return cache.numel() * next(iter(cache.buffers.values())).element_size()


def fused_skip_reason(device: torch.device) -> str | None:
    """Why the fused-kernel row cannot run here, or None."""
    if "kernel" not in inspect.signature(ta.TuckerAttention.__init__).parameters:
        return "TuckerAttention has no kernel= argument in this version"
    try:
        from tucker_attention.attention.fused import fused_unavailable
    except ImportError as err:
        return f"tucker_attention.attention.fused does not import ({err})"
    return fused_unavailable(device)


# ------------------------------------------------------------------------------------------- sections
def bench_layers(layers, x, *, rounds, min_run_time, threads):
    """Forward and forward+backward times of each layer (causal, batch x)."""
    with torch.no_grad():
        fwd = interleaved({n: (lambda layer=layer: layer(x, causal=True)) for n, layer in layers.items()},
                          rounds, min_run_time, threads)
    xg = x.detach().clone().requires_grad_(True)

    def fb(layer):
        layer.zero_grad(set_to_none=True)
        layer(xg, causal=True).sum().backward()

    fwb = interleaved({n: (lambda layer=layer: fb(layer)) for n, layer in layers.items()},
                      rounds, min_run_time, threads)
    return {"forward": fwd, "forward_backward": fwb}


def bench_core(layer: ta.TuckerAttention, x: torch.Tensor, *, rounds, min_run_time, threads):
    """Tucker's attention core (P -> per-head Q -> MQA kernel -> Σ O_i G̃_iᵀ) vs one bare SDPA MQA call."""
    B, N, _ = x.shape
    H, r3 = layer.n_heads, layer.ranks[2]
    with torch.no_grad():
        P = x @ layer.U2                                                   # (B, N, r2)
        k = (x @ layer.U3).unsqueeze(1)                                    # (B, 1, N, r3)
        v = (x @ layer.post_U3).unsqueeze(1)
        # the floor's queries in the (B, N, H, r3) memory layout the core's come in (SDPA's CPU kernel copies
        # other layouts into it): the same call, minus Tucker's own products
        q = torch.randn(B, N, H, r3, device=x.device, dtype=x.dtype).transpose(1, 2)
        G_all, Gt_all = layer.head_cores()

        def core():
            qh = (P @ G_all).view(B, N, H, r3).transpose(1, 2)             # Q_i = P G_i
            o = ta.attention.attend(qh, k, v, scale=layer.scale, causal=True, backend=layer.backend)
            return o.transpose(1, 2).reshape(B, N, -1) @ Gt_all            # Σ_i O_i G̃_iᵀ

        def floor():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.scale, enable_gqa=True)

        return interleaved({"core": core, "floor": floor}, rounds, min_run_time, threads)


def bench_decode(layers, *, d, batches, contexts, dtype, device, rounds, min_run_time, threads):
    """One decoding step (dynamic cache, eager) per layer, context and batch: seconds per step."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    for B in batches:
        for S in contexts:
            caches, fns, held = {}, {}, {}
            x1 = torch.randn(B, 1, d, generator=gen).to(device, dtype)
            for name, layer in layers.items():
                if layer.max_seq_len < S + 1:
                    layer.max_seq_len = S + 1
                cache = layer.make_cache(B, S + 1)
                fill_cache(cache, S)
                caches[name], held[name] = cache, held_bytes(cache)      # bytes the cache holds for S tokens

                def step(layer=layer, cache=cache, S=S, x1=x1):
                    cache.length = S                        # one step after S tokens, again and again
                    return layer(x1, causal=True, cache=cache)

                fns[name] = step
            with torch.no_grad():
                out[B, S] = (interleaved(fns, rounds, min_run_time, threads), held)
            del caches, fns
    return out


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--backend", default="auto", choices=list(ta.attention.BACKENDS))
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--quick", action="store_true", help="tiny sizes and short measurements (a smoke test)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement (default 0.2)")
    p.add_argument("--statistic", default=None, choices=["median", "min"],
                   help="per measurement: median of its timed blocks, or the fastest (default: min on CPU, "
                        "a shared machine; median on CUDA)")
    p.add_argument("--contexts", default=None, help="decode context lengths, e.g. 512,2048,8192")
    p.add_argument("--batches", default=None, help="decode batch sizes, e.g. 1,8")
    p.add_argument("--seq-len", type=int, default=None, help="the layer section's sequence length")
    p.add_argument("--batch", type=int, default=None, help="the layer section's batch size")
    p.add_argument("--out", default=None, help="records file (default book/results/bench/<device>_<dtype>.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(args.only) - set(SECTIONS))
    if bad:
        p.error(f"--only: unknown section(s) {bad}; choose from {SECTIONS}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    size = dict(SIZES["quick" if args.quick else device.type if device.type == "cuda" else "cpu"])
    methods = QUICK_METHODS if args.quick else METHODS
    tucker_label = methods[-1][0] if args.quick else TUCKER
    rounds = args.rounds or (2 if args.quick else 5)
    min_run_time = args.min_run_time or (0.01 if args.quick else 0.2)
    threads = args.threads or torch.get_num_threads()
    STATISTIC["statistic"] = args.statistic or ("median" if device.type == "cuda" else "min")
    torch.set_num_threads(threads)
    contexts = tuple(int(c) for c in args.contexts.split(",")) if args.contexts else size["contexts"]
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else size["batches"]
    d, h = size["d"], size["h"]
    B, N = args.batch or size["batch"], args.seq_len or size["seq"]
    max_len = max(max(contexts) + 1, N)
    ref_mha, ref_gqa = methods[0][0], methods[1][0]

    common = dict(benchmark="attention_suite", d_model=d, n_heads=h, dtype=str(dtype).replace("torch.", ""),
                  backend=args.backend, device=device_name(device), device_type=device.type, threads=threads,
                  torch=torch.__version__, **dict(zip(("git_commit", "git_dirty"), git_commit())), seed=0,
                  python=platform.python_version(),
                  command=" ".join([Path(sys.executable).name, *sys.argv]) if argv is None else
                  "bench_attention.main(" + " ".join(argv) + ")",
                  time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rounds=rounds,
                  min_run_time=min_run_time, statistic=STATISTIC["statistic"])
    torch.manual_seed(0)
    layers, info = {}, {}
    for label, method, sizes in methods:
        layer = build_layer(method, d, h, backend=args.backend, max_seq_len=max_len, **sizes).to(device, dtype)
        layers[label] = layer
        info[label] = dict(label=label, method=method,
                           sizes={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
                           attention_params=sum(p.numel() for p in layer.parameters()),
                           kv_cache_per_token=layer.kv_cache_per_token())
    records: list[dict] = []
    default = ROOT / "book" / "results" / "bench" / f"{device.type}_{common['dtype']}.json"
    out = None if args.no_save else Path(args.out) if args.out else default

    def save() -> None:
        """Write the records so far (after every section: a run cut short keeps what it finished)."""
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records, indent=1) + "\n")

    def add(kind: str, label: str, **fields) -> None:
        records.append(dict(common, kind=kind, **info.get(label, dict(label=label)), **fields))

    def with_ratios(times, label):
        out = dict(time_ms=1e3 * statistics.median(times[label]), times_ms=[1e3 * t for t in times[label]])
        out["ratio_to_MHA"] = ratio(times, label, ref_mha)
        out["ratio_to_GQA"] = ratio(times, label, ref_gqa)
        return out

    x = torch.randn(B, N, d, device=device, dtype=dtype)
    if "layer" in args.only:
        res = bench_layers(layers, x, rounds=rounds, min_run_time=min_run_time, threads=threads)
        for kind, times in res.items():
            for label in layers:
                r = with_ratios(times, label)
                add(kind, label, batch_size=B, seq_len=N, **r, **({"ms": r["time_ms"]} if kind == "forward" else {}))
        save()
    tucker = layers[tucker_label]
    if "core" in args.only:
        times = bench_core(tucker, x, rounds=rounds, min_run_time=min_run_time, threads=threads)
        add("core", tucker_label, batch_size=B, seq_len=N, time_ms=1e3 * statistics.median(times["core"]),
            floor_ms=1e3 * statistics.median(times["floor"]), ratio_to="bare SDPA MQA call, head size r3",
            ratio=ratio(times, "core", "floor"))
        save()
    if "fused" in args.only:
        why = fused_skip_reason(device)
        if why is None:
            fused = build_layer("tucker", d, h, ranks=tucker.ranks, kernel="fused", max_seq_len=max_len)
            fused = fused.to(device, dtype)
            fused.load_state_dict(tucker.state_dict())
            with torch.no_grad():
                times = interleaved({"fused": lambda: fused(x, causal=True), "sdpa": lambda: tucker(x, causal=True)},
                                    rounds, min_run_time, threads)
            add("fused", tucker_label, batch_size=B, seq_len=N, time_ms=1e3 * statistics.median(times["fused"]),
                sdpa_ms=1e3 * statistics.median(times["sdpa"]), ratio_to="SDPA path",
                ratio=ratio(times, "fused", "sdpa"))
        else:
            add("fused", tucker_label, batch_size=B, seq_len=N, skipped=f"skipped: {why}")
        save()
    if "decode" in args.only:
        res = bench_decode(layers, d=d, batches=batches, contexts=contexts, dtype=dtype, device=device,
                           rounds=rounds, min_run_time=min_run_time, threads=threads)
        bytes_per = torch.tensor([], dtype=dtype).element_size()
        for (Bd, S), (times, cache_bytes) in res.items():
            for label, (_, method, sizes) in zip(layers, methods):
                formula = Bd * S * bytes_per * kv_cache_per_token(method, d, h, **sizes)
                r = with_ratios(times, label)
                add("decode", label, batch_size=Bd, seq_len=S, **r, tokens_per_s=Bd / (r["time_ms"] / 1e3),
                    cache_bytes=cache_bytes[label], cache_bytes_formula=formula,
                    cache_bytes_equal=cache_bytes[label] == formula)
        save()
    if "memory" in args.only:
        if device.type != "cuda":
            for label in layers:
                add("memory", label, batch_size=B, seq_len=N, skipped="skipped: CPU tensors have no allocator "
                    "statistics (torch.cuda.max_memory_allocated is CUDA only)")
        else:
            xg = x.detach().clone().requires_grad_(True)
            for label, layer in layers.items():
                fwd = peak_bytes(lambda layer=layer: layer(x, causal=True).sum(), device)
                fb = peak_bytes(lambda layer=layer: layer(xg, causal=True).sum().backward(), device)
                add("memory", label, batch_size=B, seq_len=N, peak_forward_bytes=fwd, peak_forward_backward_bytes=fb)
    save()
    print_report(records, ref_mha, ref_gqa)
    if out is not None:
        print(f"saved {len(records)} records to {out}")
    return records


def print_report(records: list[dict], ref_mha: str, ref_gqa: str) -> None:
    if not records:
        return
    r0 = records[0]
    print(f"\n{r0['device']} ({r0['device_type']}), {r0['dtype']}, {r0['threads']} threads, torch {r0['torch']}, "
          f"d={r0['d_model']}, {r0['n_heads']} heads, {r0['rounds']} interleaved rounds, {r0['statistic']} of "
          f"each measurement's blocks; commit {r0['git_commit']}")
    for kind in ("forward", "forward_backward", "decode"):
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        print(f"\n{kind}: ms (median over rounds) and ratios (median of per-round ratios)")
        print(f"{'method':20s} {'batch':>5s} {'N':>6s} {'ms':>9s} {'x MHA':>6s} {'x GQA':>6s}"
              + (f" {'tok/s':>9s} {'cache MB':>9s} {'=formula':>8s}" if kind == "decode" else ""))
        for r in rows:
            line = (f"{r['label']:20s} {r['batch_size']:5d} {r['seq_len']:6d} {r['time_ms']:9.3f} "
                    f"{r['ratio_to_MHA']:6.2f} {r['ratio_to_GQA']:6.2f}")
            if kind == "decode":
                line += f" {r['tokens_per_s']:9.0f} {r['cache_bytes'] / 1e6:9.2f} {str(r['cache_bytes_equal']):>8s}"
            print(line)
    for r in records:
        if r["kind"] in ("core", "fused"):
            if "skipped" in r:
                print(f"\n{r['kind']}: {r['skipped']}")
            else:
                print(f"\n{r['kind']}: {r['label']} {r['time_ms']:.3f} ms = {r['ratio']:.2f} x the {r['ratio_to']}")
        if r["kind"] == "memory":
            if "skipped" in r:
                print(f"\nmemory: {r['skipped']}")
                break
            print(f"memory: {r['label']:20s} peak fwd {r['peak_forward_bytes'] / 2**20:8.1f} MiB, "
                  f"fwd+bwd {r['peak_forward_backward_bytes'] / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
