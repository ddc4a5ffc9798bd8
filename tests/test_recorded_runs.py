"""The recorded experiments under book/results/ still match the code: re-run the first steps of one recorded run
per experiment and compare with its recorded loss curve (CPU runs are deterministic for a fixed thread count).

A record can therefore never drift silently from the package: a change to the models, the data or the training
loop that alters the numbers makes this test fail, and the experiment must be re-recorded.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from tucker_attention.train.sweep import load_records, replay

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"

# (experiment folder, run name, optimizer steps to replay: within the recorded warmup)
CASES = [
    ("lm_book", "lm-book-tucker-4-32-16-4-24-16-s0", 20),
    ("lm_book", "lm-book-mha-s0", 20),
    ("lm_ci_after", "lm-ci-tucker-2-32-16-s0", 25),
]


def _metric_lines(lines: list[dict], steps: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(m["step"], m["train_loss"]) for m in lines if "train_loss" in m and m["step"] <= steps]
    val = [(m["step"], m["val_loss"]) for m in lines if "val_loss" in m and m["step"] == 0]
    return train, val


@pytest.mark.parametrize(("folder", "run", "steps"), CASES, ids=[c[1] for c in CASES])
def test_recorded_run_replays(tmp_path, folder, run, steps):
    records_path = RESULTS / folder / "records.jsonl"
    assert records_path.is_file(), f"missing recorded experiment {records_path}"
    record = next((r for r in load_records(records_path) if r.get("run") == run), None)
    assert record is not None, f"{records_path} has no run {run!r}"
    if record["python_version"].rsplit(".", 1)[0] != platform.python_version().rsplit(".", 1)[0]:
        pytest.skip(f"recorded on Python {record['python_version']}: its standard-library corpus differs from "
                    f"this Python {platform.python_version()}'s")
    if record["device"] != "cpu":
        pytest.skip(f"recorded on {record['device']}; only CPU records replay bit-for-bit here")
    recorded_train, recorded_val = _metric_lines(load_records(RESULTS / folder / "runs" / run / "metrics.jsonl"),
                                                 steps)
    assert recorded_train, "the recorded curve has no training loss within the replayed steps"

    got_train, got_val = _metric_lines(replay(record, steps=steps, out_dir=tmp_path / "replay"), steps)

    assert [s for s, _ in got_train] == [s for s, _ in recorded_train]
    for (step, got), (_, want) in zip(got_train, recorded_train):
        assert got == pytest.approx(want, rel=2e-5), f"train loss at step {step}: {got} != recorded {want}"
    assert [s for s, _ in got_val] == [s for s, _ in recorded_val] == [0]
    assert got_val[0][1] == pytest.approx(recorded_val[0][1], rel=2e-5), "validation loss at initialization"


def test_replay_rejects_steps_past_warmup(tmp_path):
    record = {"train_config": {"warmup_steps": 10}}
    with pytest.raises(ValueError, match="warmup_steps=10"):
        replay(record, steps=11, out_dir=tmp_path)
