"""The training loop: schedule, decay groups, learning, bit-exact resume, atomic checkpoints, NaN guard,
sweeps and their tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from tucker_attention.models import GPT, AttentionConfig, GPTConfig
from tucker_attention.train import (
    NonFiniteLossError,
    TrainConfig,
    load_checkpoint,
    load_data,
    load_model,
    lr_at,
    model_config_for,
    param_groups,
    save_checkpoint,
    train,
)
from tucker_attention.train import checkpoint as checkpoint_module
from tucker_attention.train.sweep import (
    Preset,
    format_records,
    get_preset,
    git_commit,
    load_records,
    run_sweep,
    summarize,
)


@pytest.fixture(scope="module")
def text():
    return load_data("lm", "stdlib", max_bytes=300_000)


@pytest.fixture(scope="module")
def digits():
    return load_data("vit", "digits")


TUCKER = AttentionConfig(method="tucker", ranks=(2, 16, 8), rope=True, dropout=0.1)


def small_lm(text, attention=TUCKER, **kw):
    return model_config_for("lm", text, block_size=32, n_layer=2, d_model=32, n_heads=4, dropout=0.1,
                            attention=attention, **kw)


def small_run(**kw) -> TrainConfig:
    base = dict(task="lm", steps=8, batch_size=4, warmup_steps=2, eval_every=3, eval_batches=2, log_every=2,
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# -------------------------------------------------------------------------------------- schedule
def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=101, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1 / 11)
    assert lr_at(9, cfg) == pytest.approx(10 / 11)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)                  # half way: (1 + 0.1) / 2
    assert lr_at(100, cfg) == pytest.approx(0.1)
    values = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    const = TrainConfig(steps=50, lr=0.5, warmup_steps=0, schedule="constant")
    assert {lr_at(s, const) for s in range(50)} == {0.5}


def test_weight_decay_groups():
    cfg = GPTConfig(vocab_size=40, block_size=8, n_layer=1, d_model=16, n_heads=2,
                    attention=AttentionConfig(method="tucker", ranks=(2, 8, 4)))
    model = GPT(config=cfg)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    attn = model.blocks[0].attn
    for p in (attn.core, attn.U1, attn.U2, attn.U3, attn.post_core, attn.post_U1, attn.post_U2, attn.post_U3,
              model.blocks[0].mlp.c_fc.weight, model.blocks[0].mlp.c_proj.weight):
        assert id(p) in ids                                      # Tucker cores and factors decay
    for p in (model.wte.weight, model.wpe.weight, model.ln_f.weight, model.ln_f.bias,
              model.blocks[0].mlp.c_fc.bias, model.blocks[0].ln_1.weight):
        assert id(p) not in ids
    n_groups = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n_groups == model.num_params()                         # every parameter exactly once


# -------------------------------------------------------------------------------- learning (ci)
@pytest.mark.parametrize("task", ["lm", "vit"])
def test_loss_decreases_on_ci_preset(task, text, digits):
    preset = get_preset(task, "ci")
    data = text if task == "lm" else digits
    mcfg = model_config_for(task, data, attention=AttentionConfig(method="tucker", ranks=(2, 16, 16)),
                            **preset.model)
    run = {**preset.train, "steps": 60, "eval_every": 60, "progress": False}
    result = train(mcfg, TrainConfig(task=task, **run), data=data)
    first, last = result.evals[0], result.evals[-1]
    assert first["step"] == 0 and last["step"] == 60
    assert last["val_loss"] < first["val_loss"] - 0.5
    assert sum(result.history[-10:]) < sum(result.history[:10])
    if task == "vit":
        assert last["val_acc"] > 0.3                              # chance is 0.1
    assert result.final["throughput"] > 0 and result.final["unit"] == ("tokens/s" if task == "lm" else "images/s")


# ---------------------------------------------------------------------------- resume, bit-exact
class Crash(Exception):
    pass


def crash_at(step):
    def on_step(done, record, model):
        if done == step:
            raise Crash(f"simulated crash after step {done}")
    return on_step


def test_resume_is_bit_exact_lm(text, tmp_path):
    """2K steps straight == K steps, crash, resume from the step-K checkpoint, K more (dropout on)."""
    mcfg = small_lm(text)
    full = train(mcfg, small_run(checkpoint_every=4, out_dir=str(tmp_path / "a")), data=text)
    with pytest.raises(Crash):
        train(mcfg, small_run(checkpoint_every=4, out_dir=str(tmp_path / "b")), data=text, on_step=crash_at(6))
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["step"] == 4
    resumed = train(mcfg, small_run(checkpoint_every=4, out_dir=str(tmp_path / "b"), resume=True), data=text)
    assert resumed.start_step == 4
    assert resumed.history == full.history[4:]                   # bit-exact: ==, not approx
    assert resumed.final["val_loss"] == full.final["val_loss"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == reference                                    # the crashed run's lines after step 4 are gone


def test_runs_record_their_provenance(text, tmp_path):
    """config.json and the first metrics.jsonl line say which code, command, seed and device produced the run;
    a resumed run keeps that one header."""
    mcfg = small_lm(text)
    with pytest.raises(Crash):
        train(mcfg, small_run(checkpoint_every=4, out_dir=str(tmp_path)), data=text, on_step=crash_at(6))
    train(mcfg, small_run(checkpoint_every=4, out_dir=str(tmp_path), resume=True), data=text)
    config = json.loads((tmp_path / "config.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    headers = [m for m in lines if "git_commit" in m]
    assert len(headers) == 1 and lines[0] is headers[0] and lines[0]["step"] == 0
    for meta in (config, lines[0]):
        assert meta["seed"] == small_run().seed and meta["device"] == "cpu"
        assert meta["torch_version"] == torch.__version__ and meta["command"] and meta["git_commit"]
    assert not any(k in lines[0] for k in ("train_loss", "val_loss"))     # readers of curves skip it


def test_resume_is_bit_exact_vit_across_epochs(digits, tmp_path):
    """Two batches per epoch: the sampler's (epoch, position) state survives the restart."""
    mcfg = model_config_for("vit", digits, n_layer=1, d_model=16, n_heads=2, patch_size=4, dropout=0.1,
                            attention=AttentionConfig(method="gqa", n_kv_heads=1))
    run = dict(task="vit", steps=7, batch_size=600, warmup_steps=1, eval_every=0, eval_batches=1,
               checkpoint_every=3, progress=False, device="cpu")
    full = train(mcfg, TrainConfig(out_dir=str(tmp_path / "a"), **run), data=digits)
    with pytest.raises(Crash):
        train(mcfg, TrainConfig(out_dir=str(tmp_path / "b"), **run), data=digits, on_step=crash_at(5))
    state = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert state["step"] == 3 and state["data"][0] == {"epoch": 1, "position": 600}
    resumed = train(mcfg, TrainConfig(out_dir=str(tmp_path / "b"), resume=True, **run), data=digits)
    assert resumed.history == full.history[3:]
    assert resumed.final["val_acc"] == full.final["val_acc"]


def test_resume_rejects_a_different_run(text, tmp_path):
    mcfg = small_lm(text)
    train(mcfg, small_run(steps=2, out_dir=str(tmp_path)), data=text)
    with pytest.raises(ValueError, match="batch_size changed from 4"):
        train(mcfg, small_run(steps=4, batch_size=5, out_dir=str(tmp_path), resume=True), data=text)
    other = small_lm(text, attention=AttentionConfig(method="mha"))
    with pytest.raises(ValueError, match="model config differs"):
        train(other, small_run(steps=4, out_dir=str(tmp_path), resume=True), data=text)


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_holds_only_plain_data_and_reloads_the_model(text, tmp_path):
    result = train(small_lm(text), small_run(steps=3, out_dir=str(tmp_path)), data=text)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # no pickled classes
    assert state["step"] == 3 and state["task"] == "lm" and len(state["rng"]) == 1
    assert set(state) >= {"model", "optimizer", "rng", "data", "model_config", "train_config"}
    model = load_model(tmp_path / "ckpt.pt")
    idx = torch.randint(0, 256, (2, 16))
    result.model.eval()
    torch.testing.assert_close(model(idx)[0], result.model(idx)[0], rtol=0, atol=0)
    assert json.loads((tmp_path / "config.json").read_text())["model"] == result.model.config.to_dict()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while the new checkpoint is being written leaves the previous one intact and no temp file."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"format": 1, "step": 1, "w": torch.arange(1000.0)})
    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)                                          # a half-written file ...
        raise OSError("disk full")                               # ... and the process dies

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": 1, "step": 2, "w": torch.zeros(1000)})
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(1000.0))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"step": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tucker_attention checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# -------------------------------------------------------------------------------------- NaN guard
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(text, tmp_path):
    def poison(step, record, model):
        if step == 3:                                            # after the step-2 checkpoint
            with torch.no_grad():
                model.ln_f.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at step 4") as info:
        train(small_lm(text), small_run(checkpoint_every=2, out_dir=str(tmp_path)), data=text, on_step=poison)
    assert info.value.step == 4 and math.isnan(info.value.value)
    assert info.value.checkpoint == str(tmp_path / "ckpt.pt")
    assert "resume" in str(info.value)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("kwargs, exc, match", [
    ({"task": "seq2seq"}, ValueError, "task must be one of"),
    ({"steps": 0}, ValueError, "steps must be an int >= 1"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int"),
    ({"lr": 0.0}, ValueError, "lr must be > 0"),
    ({"lr": 1e-3, "min_lr": 1e-2}, ValueError, "min_lr must be <= lr"),
    ({"schedule": "linear"}, ValueError, "schedule must be one of"),
    ({"dtype": "fp8"}, ValueError, "dtype must be one of"),
    ({"betas": (0.9, 1.5)}, ValueError, "betas"),
    ({"resume": True}, ValueError, "resume=True needs out_dir"),
    ({"grad_clip": float("nan")}, ValueError, "grad_clip must be finite, got grad_clip=nan"),
    ({"device": "gpu"}, ValueError, "device must be 'auto' or a torch device"),
])
def test_train_config_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(**kwargs)


def test_train_rejects_mismatched_model_and_data(text, digits):
    with pytest.raises(TypeError, match="needs a ViTConfig"):
        train(small_lm(text), TrainConfig(task="vit", steps=1), data=digits)
    small = GPTConfig(vocab_size=100, block_size=8, n_layer=1, d_model=16, n_heads=2)
    with pytest.raises(ValueError, match="vocab_size=100 is smaller than the data's vocab_size=256"):
        train(small, TrainConfig(task="lm", steps=1, progress=False), data=text)
    vit_cfg = model_config_for("vit", digits, n_layer=1, d_model=16, n_heads=2, patch_size=2)
    with pytest.raises(ValueError, match="batch_size=5000 exceeds"):
        train(vit_cfg, TrainConfig(task="vit", steps=1, batch_size=5000, progress=False), data=digits)


# ------------------------------------------------------------------------------------------ sweeps
def tiny_preset() -> Preset:
    return Preset(name="tiny", task="lm", description="test", data="stdlib", data_kwargs={"max_bytes": 100_000},
                  model={"block_size": 16, "n_layer": 1, "d_model": 16, "n_heads": 2},
                  train={"steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "eval_batches": 2,
                         "device": "cpu", "dtype": "float32"},
                  variants=(AttentionConfig(method="mha"), AttentionConfig(method="tucker", ranks=(1, 8, 4))))


def test_sweep_writes_one_record_per_run_and_skips_done_runs(tmp_path):
    records = run_sweep("lm", tiny_preset(), out_dir=tmp_path, seeds=2, progress=False, command=["test"])
    assert len(records) == 4
    stored = load_records(tmp_path / "records.jsonl")
    assert [r["run"] for r in stored] == [r["run"] for r in records]
    r = stored[1]
    assert r["method"] == "tucker" and r["label"] == "Tucker [1,8,4]" and r["sizes"] == {"ranks": [1, 8, 4]}
    assert r["attention_params"] == (1 * 8 * 4 + 2 * 1 + 16 * 8 + 16 * 4) * 2
    assert r["kv_cache_per_token"] == 8 and r["seed"] == 0 and r["steps"] == 3
    for key in ("val_loss", "total_params", "throughput", "wall_time_s", "device", "torch_version",
                "git_commit", "command", "model_config", "train_config"):
        assert r[key] is not None, key
    assert r["command"] == ["test"] and r["torch_version"] == torch.__version__
    assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
    again = run_sweep("lm", tiny_preset(), out_dir=tmp_path, seeds=2, progress=False)
    assert again == records                                        # nothing rerun
    assert len(load_records(tmp_path / "records.jsonl")) == 4
    only = run_sweep("lm", tiny_preset(), out_dir=tmp_path / "m", methods=["tucker"], progress=False)
    assert [x["method"] for x in only] == ["tucker"]


def test_sweep_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="no preset 'huge'"):
        get_preset("lm", "huge")
    with pytest.raises(ValueError, match="not in preset"):
        run_sweep("lm", tiny_preset(), out_dir=tmp_path, methods=["mla"])
    with pytest.raises(ValueError, match="seeds must be an int >= 1"):
        run_sweep("lm", tiny_preset(), out_dir=tmp_path, seeds=0)


def test_presets_cover_the_methods():
    for task in ("lm", "vit"):
        for name in ("ci", "gpu", "paper"):
            p = get_preset(task, name)
            kinds = [v.method for v in p.variants]
            assert {"mha", "gqa", "mla", "tucker"} <= set(kinds) and kinds.count("tucker") >= 2
    paper = [v.label() for v in get_preset("lm", "paper").variants]
    assert paper == ["MHA", "GQA n_kv=4", "GQA n_kv=2", "MQA", "MLA d_c=128", "Tucker [8,128,128]",
                     "Tucker [8,128,64]", "Tucker [8,64,64]"]


def _record(label, method, params, loss, seed, acc=None):
    return {"task": "vit" if acc is not None else "lm", "label": label, "method": method, "attention_params": params,
            "kv_cache_per_token": 8, "val_loss": loss, "val_acc": acc, "seed": seed, "throughput": 100.0,
            "unit": "tokens/s", "wall_time_s": 2.0}


def test_summarize_and_format_table(tmp_path):
    records = [_record("MHA", "mha", 400, 2.0, 0), _record("Tucker [1,2,2]", "tucker", 100, 2.5, 0),
               _record("MHA", "mha", 400, 3.0, 1), _record("Tucker [1,2,2]", "tucker", 100, 2.5, 1)]
    rows = summarize(records)
    assert [r["label"] for r in rows] == ["MHA", "Tucker [1,2,2]"]
    assert rows[0]["val_loss"] == 2.5 and rows[0]["val_loss_std"] == pytest.approx(math.sqrt(0.5))
    assert rows[0]["n"] == 2
    table = format_records(records)
    lines = table.splitlines()
    assert lines[0].startswith("| method | attention params | % of MHA")
    assert "| MHA | 400 | 100.0% |" in lines[2] and "2.5000 ± 0.7071" in lines[2]
    assert "| Tucker [1,2,2] | 100 | 25.0% |" in lines[3]
    assert "val acc" not in lines[0]
    assert "val acc" in format_records([_record("MHA", "mha", 4, 1.0, 0, acc=0.5)])
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert load_records(path) == records
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_records(path)
    assert format_records([]) == "(no records)"


def test_git_commit(tmp_path):
    commit, dirty = git_commit()
    assert commit == "unknown" or (len(commit) == 40 and isinstance(dirty, bool))
    assert git_commit(tmp_path) == ("unknown", None)


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_bf16_autocast_training_step(text, tmp_path):
    """dtype auto on CUDA = bf16 autocast; the loss falls; a checkpoint resumes bit-exactly on the GPU."""
    mcfg = small_lm(text)
    run = dict(steps=30, device="cuda", dtype="auto", checkpoint_every=15, eval_every=0)
    full = train(mcfg, small_run(out_dir=str(tmp_path / "a"), **run), data=text)
    assert next(full.model.parameters()).device.type == "cuda"
    assert all(math.isfinite(v) for v in full.history)
    assert sum(full.history[-5:]) < sum(full.history[:5])
    with pytest.raises(Crash):
        train(mcfg, small_run(out_dir=str(tmp_path / "b"), **run), data=text, on_step=crash_at(20))
    resumed = train(mcfg, small_run(out_dir=str(tmp_path / "b"), resume=True, **run), data=text)
    assert resumed.history == full.history[15:]


def test_gpu_preset_with_offline_data_keeps_the_loader_arguments_it_accepts(tmp_path):
    """bench/gpu_check.sh runs `sweep vit --preset gpu --data digits`: the preset's image_size=32 must reach
    the digits loader (8x8 images would give a 4-patch ViT), and CIFAR-only arguments must not."""
    import dataclasses

    from tucker_attention.train.sweep import _accepted

    assert _accepted("vit", "digits", {"image_size": 32, "augment": True, "max_train": 5}) == {"image_size": 32}
    assert _accepted("lm", "stdlib", {"max_tokens": None}) == {}
    gpu = get_preset("vit", "gpu")
    tiny = dataclasses.replace(
        gpu, model={**gpu.model, "n_layer": 1, "d_model": 16, "n_heads": 2, "patch_size": 8},
        train={**gpu.train, "steps": 1, "batch_size": 8, "eval_batches": 1, "num_workers": 0, "device": "cpu"},
        variants=gpu.variants[:1])
    (record,) = run_sweep("vit", tiny, out_dir=tmp_path, data="digits", progress=False)
    assert record["model_config"]["image_size"] == 32 and record["data"] == "digits"
    assert record["train_config"]["data_kwargs"] == {"image_size": 32}


def test_lm_full_validation_pass_is_the_mean_over_all_windows(text):
    """eval_batches=0: every non-overlapping window of the validation stream, weighted per window."""
    from tucker_attention.train.tasks import LMTask

    mcfg = small_lm(text, attention=AttentionConfig(method="mha"))
    model = GPT(config=mcfg).eval()
    short = type(text)(train=text.train, val=text.val[:32 * 7 + 5], vocab_size=256, name="cut", tokenizer="bytes")
    task = LMTask(short, block_size=32, batch_size=3, eval_batches=0, seed=0, rank=0, device=torch.device("cpu"))
    got = task.evaluate(model, contextlib.nullcontext)
    windows = short.val[: 32 * 7 + 1].long()
    x = torch.stack([windows[i * 32:(i + 1) * 32] for i in range(7)])
    y = torch.stack([windows[i * 32 + 1:(i + 1) * 32 + 1] for i in range(7)])
    with torch.no_grad():
        expected = model(x, y)[1].item()
    assert got["val_loss"] == pytest.approx(expected, rel=1e-6)
