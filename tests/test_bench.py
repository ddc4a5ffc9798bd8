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
    assert saved["rows"] == json.loads(json.dumps(rec["rows"]))
    assert [r["label"] for r in saved["rows"]] == ["MHA", "MQA", "Tucker [2,8,8]"]
    assert saved["rows"][2]["attention_params"] == 2 * (2 * 8 * 8 + 4 * 2 + 32 * 8 + 32 * 8)
    assert saved["rows"][2]["kv_cache_per_token"] == 16
    assert all(r["forward_s"] > 0 and r["decode_step_s"] > 0 for r in saved["rows"])
    for key in ("device", "torch", "commit", "command"):
        assert saved[key]
    assert "x MHA" in capsys.readouterr().out
