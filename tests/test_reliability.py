"""What a user meets when things go wrong: Ctrl-C checkpoints and says how to resume (bit-exactly), a corrupted
checkpoint is one clear line, a bug inside training is not reported as a configuration error, the command
line speaks in flags and records the command as typed."""

from __future__ import annotations

import shlex

import pytest
import torch

from tucker_attention.cli import main
from tucker_attention.models import AttentionConfig
from tucker_attention.train import (
    CheckpointError,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    load_data,
    load_model,
    model_config_for,
    save_checkpoint,
    train,
)
from tucker_attention.train.sweep import load_records
from tucker_attention.train.tasks import LMTask


@pytest.fixture(scope="module")
def text():
    return load_data("lm", "stdlib", max_bytes=200_000)


def small(text):
    return model_config_for("lm", text, block_size=16, n_layer=1, d_model=16, n_heads=2, dropout=0.1,
                            attention=AttentionConfig(method="tucker", ranks=(2, 8, 4), rope=True))


def run(out, **kw):
    base = dict(task="lm", steps=8, batch_size=3, warmup_steps=2, eval_every=4, eval_batches=1, log_every=2,
                progress=False, device="cpu", out_dir=str(out))
    return TrainConfig(**{**base, **kw})


def interrupt_batch(monkeypatch, call: int) -> None:
    """Ctrl-C arrives while the ``call``-th training batch is fetched (mid-step)."""
    original, calls = LMTask.next_batch, [0]

    def next_batch(self):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(LMTask, "next_batch", next_batch)


@pytest.mark.parametrize("where", ["mid-step", "after-step"])
def test_ctrl_c_checkpoints_and_resumes_bit_exactly(text, tmp_path, monkeypatch, where):
    cfg = small(text)
    kw = {"grad_accum": 2} if where == "mid-step" else {}
    full = train(cfg, run(tmp_path / "a", **kw), data=text)
    if where == "mid-step":                                        # grad_accum=2: the 2nd batch of step 6
        interrupt_batch(monkeypatch, 2 * 5 + 2)
        on_step = None
    else:

        def on_step(done, record, model):
            if done == 5:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, run(tmp_path / "b", **kw), data=text, on_step=on_step)
    assert info.value.step == 5 and info.value.checkpoint == str(tmp_path / "b" / "ckpt.pt")
    assert isinstance(info.value, KeyboardInterrupt)               # code that catches Ctrl-C still does
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 5
    monkeypatch.undo()
    resumed = train(cfg, run(tmp_path / "b", resume=True, **kw), data=text)
    assert resumed.start_step == 5
    assert resumed.history == full.history[5:]                     # bit-exact
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_ctrl_c_without_out_dir_says_nothing_was_saved(text, monkeypatch):
    interrupt_batch(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted, match=r"interrupted after 2 steps; nothing was saved") as info:
        train(small(text), TrainConfig(task="lm", steps=8, batch_size=3, progress=False, device="cpu"), data=text)
    assert info.value.checkpoint is None


ARGS = ["train", "lm", "--steps", "6", "--batch-size", "2", "--block-size", "16", "--n-layer", "1", "--d-model",
        "16", "--n-heads", "2", "--data-arg", "max_bytes=50000", "--no-progress"]


def test_cli_ctrl_c_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    interrupt_batch(monkeypatch, 4)
    args = [*ARGS, "--out", str(tmp_path / "run")]
    assert main(args, prog="python -m tucker_attention") == 130
    err = capsys.readouterr().err
    assert "interrupted after 3 steps" in err and "Traceback" not in err
    command = err.strip().splitlines()[-1].strip()
    assert command == shlex.join(["python", "-m", "tucker_attention", *args, "--resume"])
    monkeypatch.undo()
    assert main(shlex.split(command)[3:]) == 0                     # the printed command resumes the run
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == 6


def test_corrupted_checkpoint_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--steps", "2", "--out", str(out)]) == 0
    path = out / "ckpt.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                       # truncated (a full disk, a stopped copy)
    with pytest.raises(CheckpointError, match=rf"checkpoint '{path}' is unreadable \(truncated or corrupted"):
        load_checkpoint(path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*ARGS, "--steps", "4", "--out", str(out), "--resume"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "delete it" in err
    assert "Traceback" not in err
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(path)


def test_old_checkpoints_with_kind_gpt_load(text, tmp_path):
    cfg = small(text)
    train(cfg, run(tmp_path, steps=1), data=text)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["task"] == "lm"
    state.pop("task")
    state["kind"] = "gpt"                                          # the key before "task"
    state["model_config"]["attention"]["kind"] = state["model_config"]["attention"].pop("method")
    save_checkpoint(tmp_path / "old.pt", state)
    model = load_model(tmp_path / "old.pt")
    assert model.config.attention.method == "tucker"
    resumed = train(cfg, run(tmp_path, steps=2, resume=True), data=text)  # and an old run resumes
    assert resumed.start_step == 1


def test_a_bug_inside_training_is_not_a_configuration_error(tmp_path, monkeypatch):
    def broken(self):
        raise TypeError("a bug in the loop")

    monkeypatch.setattr(LMTask, "next_batch", broken)
    with pytest.raises(TypeError, match="a bug in the loop"):     # a traceback, not exit status 2
        main([*ARGS, "--out", str(tmp_path)])


@pytest.mark.parametrize("args, message", [
    (["--ranks", "2,8,8"], "--ranks is for --attention tucker, not --attention mha: add --attention tucker"),
    (["--attention", "gqa"], "--attention gqa needs --n-kv-heads"),
    (["--attention", "mha", "--shared-kv"], "--shared-kv is for --attention tucker"),
    (["--attention", "tucker", "--ranks", "2,8,8", "--rope", "decoupled"],
     "--rope decoupled is not available for --attention tucker: use one of none, on, latent"),
])
def test_cli_errors_name_flags(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main([*ARGS, *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "attention.method" not in err


def test_help_names_how_it_was_run(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"], prog="python -m tucker_attention")
    assert capsys.readouterr().out.startswith("usage: python -m tucker_attention train")


def test_sweep_records_the_command_as_typed(tmp_path):
    args = ["sweep", "lm", "--preset", "ci", "--steps", "1", "--methods", "mha", "--out", str(tmp_path),
            "--data-arg", "max_bytes=50000", "--no-progress"]
    assert main(args, prog="python -m tucker_attention") == 0
    (record,) = load_records(tmp_path / "records.jsonl")
    assert record["command"] == ["python", "-m", "tucker_attention", *args]
    assert record["method"] == "mha"


def test_sweep_ctrl_c_resumes_with_the_same_command(tmp_path, monkeypatch, capsys):
    args = ["sweep", "lm", "--preset", "ci", "--steps", "3", "--methods", "mha,mqa", "--out", str(tmp_path),
            "--data-arg", "max_bytes=50000", "--no-progress"]
    interrupt_batch(monkeypatch, 3 + 2)                           # the second run, mid step 2
    assert main(args, prog="python -m tucker_attention") == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 step;" in err and err.strip().splitlines()[-1].strip() == shlex.join(
        ["python", "-m", "tucker_attention", *args])
    assert [r["method"] for r in load_records(tmp_path / "records.jsonl")] == ["mha"]
    monkeypatch.undo()
    assert main(args) == 0                                        # skips MHA, resumes MQA from its step 1
    assert [r["method"] for r in load_records(tmp_path / "records.jsonl")] == ["mha", "mqa"]
