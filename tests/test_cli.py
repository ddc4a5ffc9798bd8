"""The command line: help, train/sweep/summarize runs, and clear errors for bad configurations."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from tucker_attention.cli import build_parser, main
from tucker_attention.train import load_checkpoint
from tucker_attention.train.sweep import load_records


def run_cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tucker_attention", *args], capture_output=True, text=True,
                           timeout=timeout, env=env)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_is_documented():
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"train", "sweep", "summarize", "compress", "sweep-compress"}
    for name, sub in subs.items():
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
            for flag in action.option_strings:
                assert flag in text, f"{name}: {flag} missing from --help"
    train_help = subs["train"].format_help()
    for flag in ("--attention", "--ranks", "--post-ranks", "--n-kv-heads", "--q-latent", "--kv-latent", "--rope",
                 "--steps", "--out", "--resume", "--grad-accum", "--compile", "--dtype"):
        assert flag in train_help
    assert "--preset" in subs["sweep"].format_help() and "--seeds" in subs["sweep"].format_help()


def test_help_subprocess():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0 and "--ranks R1,R2,R3" in proc.stdout


def test_train_lm_subprocess_smoke(tmp_path):
    out = tmp_path / "lm"
    proc = run_cli("train", "lm", "--attention", "tucker", "--ranks", "2,16,8", "--post-ranks", "2,8,8", "--rope",
                   "on", "--steps", "3", "--batch-size", "4", "--data-arg", "max_bytes=100000", "--out", str(out),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["attention"] == "Tucker [2,16,8]/[2,8,8] +RoPE"
    assert summary["steps"] == 3 and summary["val_loss"] > 0
    assert summary["kv_cache_per_token"] == 2 * (8 + 8)                   # 2 layers x (r3 + r~3)
    assert load_checkpoint(out / "ckpt.pt")["step"] == 3
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3


def test_train_vit_in_process(tmp_path, capsys):
    code = main(["train", "vit", "--attention", "gqa", "--n-kv-heads", "2", "--steps", "3", "--batch-size", "16",
                 "--n-layer", "1", "--pool", "cls", "--out", str(tmp_path), "--no-progress", "--eval-batches", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["attention"] == "GQA n_kv=2" and 0.0 <= summary["val_acc"] <= 1.0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["n_layer"] == 1 and config["model"]["pool"] == "cls"
    assert config["train"]["batch_size"] == 16 and config["train"]["task"] == "vit"


def test_train_resume_in_process(tmp_path, capsys):
    args = ["train", "lm", "--steps", "2", "--batch-size", "2", "--block-size", "16", "--n-layer", "1",
            "--data-arg", "max_bytes=50000", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    assert main([*args[:2], "--steps", "4", *args[4:], "--resume"]) == 0
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 4


@pytest.mark.parametrize("args, message", [
    (["--attention", "tucker"], "--attention tucker needs --ranks"),
    (["--attention", "gqa", "--n-kv-heads", "3"], "n_heads=4 must be divisible by n_kv_heads=3"),
    (["--ranks", "2,8,8"], "--ranks is for --attention tucker, not --attention mha: add --attention tucker"),
    (["--attention", "gqa", "--kv-latent", "8", "--n-kv-heads", "2"], "--kv-latent is for --attention mla"),
    (["--attention", "mla", "--q-latent", "8"], "--attention mla needs --kv-latent"),
    (["--attention", "mla", "--q-latent", "80", "--kv-latent", "8"], "q_latent must be an int in [1, d_model=64]"),
    (["--attention", "tucker", "--ranks", "9,8,8"], r"ranks[0]=9 must be in [1, n_heads=4]"),
    (["--attention", "mla", "--q-latent", "8", "--kv-latent", "8", "--rope", "on"],
     "use one of none, latent, decoupled"),
    (["--attention", "mha", "--rope", "latent"], "not available for --attention mha"),
    (["--lr", "-1"], "lr must be > 0.0"),
    (["--patch-size", "2"], "are for vit"),
    (["--data", "wikipedia"], "name must be one of"),
])
def test_bad_configs_exit_2_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "lm", "--steps", "1", "--no-progress", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["train", "lm", "--ranks", "1,2"], ["train", "gpt"], ["sweep", "lm"],
                                  ["sweep", "lm", "--preset", "huge"], ["train", "lm", "--steps", "0"]])
def test_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and "error" in capsys.readouterr().err


def test_sweep_and_summarize_in_process(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "lm", "--preset", "ci", "--steps", "2", "--methods", "mha,tucker", "--out", str(out),
                 "--data-arg", "max_bytes=100000", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    records = load_records(out / "records.jsonl")
    labels = [r["label"] for r in records]
    assert labels[0] == "MHA" and len(labels) == 4 and all(lb.startswith("Tucker") for lb in labels[1:])
    assert all(r["steps"] == 2 and r["preset"] == "ci" for r in records)
    assert records[0]["command"][:2] != [] and "| MHA |" in printed and "sweep wall time" in printed
    assert main(["summarize", str(out / "records.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "| Tucker [2,16,8] |" in table and "100.0%" in table


def test_gpu_check_script_is_executable_and_strict():
    """bench/gpu_check.sh cannot run without CUDA; check what can be checked here."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for piece in ("pytest -m gpu", "sweep \"$task\" --preset gpu", "summarize", "gpu_sweep_$task.jsonl"):
        assert piece in text
