"""The benchmark suite runs every section and records what it measured with provenance (no assertion on time);
the GPU check script is sized and shaped for the lent machine's budget."""

import importlib.util
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "bench" / "bench_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "suite.json"
    records = load_bench().main(["--quick", "--threads", "1", "--out", str(out)])
    return out, records


def test_suite_records_every_section_with_provenance(quick_run, capsys):
    out, records = quick_run
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(records))
    kinds = [r["kind"] for r in saved]
    for kind in ("forward", "forward_backward", "core", "fused", "decode", "memory"):
        assert kind in kinds
    labels = ["MHA", "GQA n_kv=1", "Tucker [2,8,8]"]
    assert [r["label"] for r in saved if r["kind"] == "forward"] == labels
    tucker = next(r for r in saved if r["kind"] == "forward" and r["label"] == "Tucker [2,8,8]")
    assert tucker["attention_params"] == 2 * (2 * 8 * 8 + 4 * 2 + 48 * 8 + 48 * 8)
    assert tucker["kv_cache_per_token"] == 16 and tucker["ms"] == tucker["time_ms"] > 0
    for key in ("device", "device_type", "torch", "git_commit", "command", "threads", "dtype", "time"):
        assert all(r[key] for r in saved)
    assert all(r["seed"] == 0 for r in saved)                             # the suite's torch.manual_seed
    mha = [r for r in saved if r["label"] == "MHA" and "ratio_to_MHA" in r]
    assert mha and all(r["ratio_to_MHA"] == 1.0 for r in mha)            # a ratio to itself, round by round
    assert all(len(r["times_ms"]) == r["rounds"] == 2 for r in saved if "times_ms" in r)


def test_decode_records_cache_bytes_equal_to_the_formula(quick_run):
    _, records = quick_run
    decode = [r for r in records if r["kind"] == "decode"]
    assert {(r["batch_size"], r["seq_len"]) for r in decode} == {(1, 16), (1, 32), (2, 16), (2, 32)}
    for r in decode:
        assert r["cache_bytes"] == r["cache_bytes_formula"] == r["batch_size"] * r["seq_len"] * 4 * r[
            "kv_cache_per_token"]
        assert r["cache_bytes_equal"] is True
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] / (r["time_ms"] / 1e3))


def test_rows_that_cannot_run_here_say_why(quick_run):
    _, records = quick_run
    memory = [r for r in records if r["kind"] == "memory"]
    assert memory and all(r["skipped"].startswith("skipped: CPU tensors have no allocator") for r in memory)
    (fused,) = [r for r in records if r["kind"] == "fused"]
    assert ("skipped" in fused and fused["skipped"].startswith("skipped: ")) or fused["ratio"] > 0
    (core,) = [r for r in records if r["kind"] == "core"]
    assert core["ratio"] > 0 and core["floor_ms"] > 0


def test_bench_records_are_what_the_book_plots(quick_run):
    """Chapter 06 plots recorded timings with book.plot_recorded_timings: forward records carry its fields."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from tucker_attention import book

    out, _ = quick_run
    records = book.load_results("*.json", out.parent)
    fig, ax = plt.subplots()
    assert book.plot_recorded_timings(ax, [r for r in records if r["kind"] == "forward"]) == 3
    plt.close(fig)


def test_unknown_section_is_an_error(capsys):
    with pytest.raises(SystemExit):
        load_bench().main(["--only", "layer,warp"])
    assert "unknown section(s) ['warp']" in capsys.readouterr().err


def test_gpu_check_plans_within_the_budget_and_writes_as_it_goes():
    script = ROOT / "bench" / "gpu_check.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK) and subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert 'BUDGET="${GPU_CHECK_BUDGET:-420}"' in text                     # 7 minutes by default
    caps = [int(line.rsplit(" ", 2)[-2]) for line in text.splitlines()
            if line.strip().startswith("run_capped \"") and line.rstrip().endswith("\\")]
    n_tasks = 2                                                             # lm and vit sweeps
    assert sum(caps[:2]) + n_tasks * caps[-1] + 30 <= 420                   # caps + provenance/tables fit
    assert 'RESULTS="$OUT"' in text and "-o addopts=" in text and "--cpu-dry-run" in text


def test_recorded_cpu_suite_is_complete_and_plottable():
    """book/results/bench/cpu_float32.json (the recorded CPU run, read by chapter 06) holds every section, its
    provenance, and cache bytes equal to the formula at every context and batch."""
    from tucker_attention import book

    folder = ROOT / "book" / "results" / "bench"
    records = book.load_results("cpu_float32.json", folder)
    assert {r["kind"] for r in records} == {"forward", "forward_backward", "core", "fused", "decode", "memory"}
    decode = [r for r in records if r["kind"] == "decode"]
    assert {(r["batch_size"], r["seq_len"]) for r in decode} == {(b, s) for b in (1, 8) for s in (512, 2048, 8192)}
    assert all(r["cache_bytes_equal"] and r["cache_bytes"] == r["cache_bytes_formula"] for r in decode)
    assert all(len(r["git_commit"]) >= 40 and r["device_type"] == "cpu" and r["threads"] >= 1 for r in records)
