"""The benchmark script runs and records what it measured (no assertion on time)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "bench" / "bench_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_attention_records_rows(tmp_path, capsys):
    out = tmp_path / "k.json"
    rec = load_bench().main(["--preset", "tiny", "--min-run-time", "0.01", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["label"] for r in saved] == ["MHA", "MQA", "Tucker [2,8,8]"]
    assert [r["forward_s"] for r in saved] == [r["forward_s"] for r in rec["rows"]]
    assert saved[2]["attention_params"] == 2 * (2 * 8 * 8 + 4 * 2 + 32 * 8 + 32 * 8)
    assert saved[2]["kv_cache_per_token"] == 16
    assert all(r["ms"] == 1e3 * r["forward_s"] > 0 and r["decode_step_s"] > 0 for r in saved)
    for key in ("device", "torch", "commit", "command", "seq_len", "method"):
        assert all(r[key] for r in saved)
    assert "x MHA" in capsys.readouterr().out


def test_bench_records_are_what_the_book_plots(tmp_path):
    """Chapter 06 plots recorded GPU timings with book.plot_recorded_timings: the formats must agree."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from tucker_attention import book

    load_bench().main(["--preset", "tiny", "--min-run-time", "0.01", "--out", str(tmp_path / "k.json")])
    records = book.load_results("*.json", tmp_path)
    fig, ax = plt.subplots()
    assert book.plot_recorded_timings(ax, records) == 3
    plt.close(fig)
