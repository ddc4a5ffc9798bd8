"""Compress a trained model and fine-tune it: the paper's transfer protocol (paper §7), at any scale.

The paper's ViT result starts from a pretrained MHA model, replaces every attention layer by GQA or MLA
initialized from an SVD of the pretrained weights, or by Tucker initialized from the HOSVD of the pretrained
tensors 𝒲 and 𝒲̃, fine-tunes briefly, and compares accuracy against attention parameters over several
runs. Every method starts from the same weights, so the comparison is not drowned by the seed-to-seed spread
of training from scratch.

- :func:`compress_checkpoint`: load a ``train`` checkpoint (GPT or ViT), convert every layer
  (``convert.compress_model``) and report the tensor errors.
- :func:`evaluate_model`: validation metrics of a model, exactly as training evaluates.
- :func:`finetune`: continue training a given model with the ordinary loop. The converted model is written as
  the step-0 checkpoint of a run (weights, a fresh optimizer, the data sampler's and RNG's initial states)
  and the loop resumes from it, so fine-tuning runs have the loop's metrics.jsonl, checkpoints and
  bit-exact resume.
- :func:`run_compress_sweep`: the whole protocol: pretrain one MHA model (or take a checkpoint), then for each
  method/size the converted model's metrics (no fine-tuning) and one fine-tuning run per seed; one JSON
  record per run in ``<out>/records.jsonl`` (sweep records plus the source checkpoint's SHA-256, the
  conversion errors and the metrics before fine-tuning).

Fine-tuning uses one process (no DDP).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convert import compress_model
from ..models import GPTConfig, ViTConfig, build_model
from ..validation import check_int
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    capture_rng_state,
    checkpoint_task,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import is_main
from .loop import TrainResult, make_optimizer, train
from .sweep import make_record, runs_on_cpu, select_variants
from .tasks import derive_seed, load_data, make_task, model_config_for

__all__ = ["COMPRESS_PRESETS", "CompressPreset", "FINETUNE_DEFAULTS", "SOURCE_NAME", "Variant",
           "compress_and_finetune", "compress_checkpoint", "compress_record", "copy_records", "evaluate_model",
           "file_sha256", "finetune", "get_compress_preset", "pretrain_source", "protocol_rows", "protocol_table",
           "run_compress_sweep", "scan_conversions", "slim_checkpoint", "variant_label"]

SOURCE_NAME = "source.pt"
RECORDS_NAME = "records.jsonl"


# ------------------------------------------------------------------------------------------- pieces
def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_config_from(state: dict[str, Any]) -> GPTConfig | ViTConfig:
    cls = GPTConfig if checkpoint_task(state) == "lm" else ViTConfig
    return cls.from_dict(state["model_config"])


def slim_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy a ``train`` checkpoint without its optimizer, RNG and sampler states (weights, configs, metrics):
    what a converted model needs, a third of the size. ``load_model`` reads it like the full one."""
    state = load_checkpoint(src)
    keep = ("format", "task", "kind", "step", "model", "model_config", "train_config", "metrics")
    return save_checkpoint(dst, {k: state[k] for k in keep if k in state})


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate_model(model: nn.Module, model_config: GPTConfig | ViTConfig, data: Any,
                   config: TrainConfig) -> dict[str, float]:
    """Validation metrics of ``model`` as the training loop computes them (``config.eval_batches``, the task's
    evaluation): ``{"val_loss"[, "val_acc"]}``. Runs on the model's device, in float32 (no autocast)."""
    device = next(model.parameters()).device
    task = make_task(config, model_config, data, rank=0, world_size=1, device=device)
    was_training = model.training
    model.eval()
    try:
        return task.evaluate(model, contextlib.nullcontext)
    finally:
        model.train(was_training)


def compress_checkpoint(path: str | os.PathLike[str], method: str, *, decomposition: str = "hosvd",
                        **sizes: Any) -> tuple[nn.Module, GPTConfig | ViTConfig, list[dict[str, Any]], dict[str, Any]]:
    """Load a ``train`` checkpoint and convert every attention layer.

    Args:
        path: a checkpoint written by ``train`` (full or ``slim_checkpoint``).
        method: "mha" (an unchanged copy: the baseline that is fine-tuned like the others) | "gqa" | "mqa" |
            "mla" | "tucker"; ``sizes`` as ``convert.compress_model``.
    Returns:
        ``(model, model_config, report, source)``: the converted model (CPU, eval mode), its config, the per-layer
        report of ``compress_model`` (empty for "mha") and ``source`` = {"path", "sha256", "task", "step",
        "model_config", "train_config", "metrics"} of the checkpoint.
    """
    state = load_checkpoint(path)
    source_config = _model_config_from(state)
    model = build_model(source_config)
    model.load_state_dict(state["model"])
    model.eval()
    if method == "mha":
        if sizes:
            raise ValueError(f"method='mha' keeps the model as it is and takes no sizes, got {sorted(sizes)}")
        new, report = copy.deepcopy(model), []
    else:
        new, report = compress_model(model, method, decomposition=decomposition, **sizes)
    source = {"path": str(path), "sha256": file_sha256(path), "task": checkpoint_task(state), "step": state.get("step"),
              "model_config": state["model_config"], "train_config": state.get("train_config"),
              "metrics": state.get("metrics", {})}
    return new, new.config, report, source


def _start_state(model: nn.Module, model_config: GPTConfig | ViTConfig, config: TrainConfig, data: Any
                 ) -> dict[str, Any]:
    """The checkpoint a run of ``config`` would hold at step 0 if its model had started as ``model``."""
    device = _device(config.device)
    work = copy.deepcopy(model).to(device)
    optimizer = make_optimizer(work, config, device)
    task = make_task(config, model_config, data, rank=0, world_size=1, device=device)
    torch.manual_seed(derive_seed(config.seed, "train", 0))         # the loop's dropout stream, rank 0
    return {"format": CHECKPOINT_FORMAT, "task": config.task, "step": 0,
            "model": {k: v.detach().cpu() for k, v in work.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": None, "model_config": model_config.to_dict(),
            "train_config": config.to_dict(), "world_size": 1, "rng": [capture_rng_state()],
            "data": [task.state_dict()], "metrics": {}}


def finetune(model: nn.Module, model_config: GPTConfig | ViTConfig, config: TrainConfig, *, data: Any,
             on_step: Any = None) -> TrainResult:
    """Train ``model`` (e.g. a converted one) for ``config.steps`` steps with the ordinary loop.

    ``model`` becomes the step-0 checkpoint ``config.out_dir/ckpt.pt`` of the run (with a fresh optimizer and
    the sampler/RNG states a fresh run starts with) and ``train(..., resume=True)`` continues from it: same
    schedule, evaluation, metrics.jsonl and checkpoints as any run. ``config.out_dir`` is required; one process.
    ``on_step``: passed to ``train`` (called after every optimizer step).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.out_dir is None:
        raise ValueError("finetune needs config.out_dir: the converted model is written there as the run's "
                         "step-0 checkpoint")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    save_checkpoint(out / CHECKPOINT_NAME, _start_state(model, model_config, config, data))
    return train(model_config, replace(config, resume=True), data=data, on_step=on_step)


# ------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Variant:
    """One converted method: ``method`` ("mha" | "gqa" | "mqa" | "mla" | "tucker") and its ``sizes``."""

    method: str
    sizes: dict[str, Any] = field(default_factory=dict)


def variant_label(v: Variant) -> str:
    """``MHA``, ``GQA n_kv=2``, ``MQA``, ``MLA 32/16``, ``Tucker [8,16,8]``."""
    s = v.sizes
    if v.method == "gqa":
        return f"GQA n_kv={s['n_kv_heads']}"
    if v.method == "mla":
        return f"MLA {s['q_latent']}/{s['kv_latent']}" + (" sep" if s.get("separate_kv") else "")
    if v.method == "tucker":
        text = "Tucker [" + ",".join(map(str, s["ranks"])) + "]"
        if s.get("post_ranks") is not None and tuple(s["post_ranks"]) != tuple(s["ranks"]):
            text += "/[" + ",".join(map(str, s["post_ranks"])) + "]"
        return text + (" shared" if s.get("shared_kv") else "")
    return v.method.upper()


@dataclass(frozen=True)
class CompressPreset:
    """The transfer protocol at one scale.

    ``model``: model-config fields besides the data-given ones (the pretrained model is MHA);
    ``pretrain`` / ``finetune``: TrainConfig fields besides task, seed and out_dir; ``variants``: what to convert
    to; ``seeds``: fine-tuning seeds per variant; ``threads``: torch CPU threads (None = PyTorch's default).
    """

    name: str
    task: str
    description: str
    data: str
    data_kwargs: dict[str, Any]
    model: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    variants: tuple[Variant, ...]
    seeds: int = 5
    threads: int | None = None


def _vit_variants(H: int) -> tuple[Variant, ...]:
    return (Variant("mha"), Variant("gqa", {"n_kv_heads": 2}), Variant("mqa"),
            Variant("mla", {"q_latent": 16, "kv_latent": 8}), Variant("mla", {"q_latent": 32, "kv_latent": 16}),
            Variant("tucker", {"ranks": (H, 16, 16)}), Variant("tucker", {"ranks": (H, 16, 8)}),
            Variant("tucker", {"ranks": (H, 8, 8)}), Variant("tucker", {"ranks": (H, 8, 4)}),
            Variant("tucker", {"ranks": (H, 4, 4)}), Variant("tucker", {"ranks": (H // 2, 16, 16)}))


# Fine-tuning on CPU: a low rate and no weight decay, the same for every method, fixed before any comparison from
# a one-seed look at the unconverted MHA model (at 3e-4 its validation loss rose, at 1e-4 barely): the pretrained
# model has memorized its ~1,400 training images, and factors that start orthonormal (the SVD/HOSVD
# initializers) are moved far by a rate that suits N(0, 0.02²) weights. Chapter 9 records 3e-4 and 1e-3 beside it.
_CPU_FINETUNE = {"batch_size": 32, "lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 20, "schedule": "cosine",
                 "weight_decay": 0.0, "grad_clip": 1.0, "eval_every": 0, "log_every": 5, "eval_batches": 0}

COMPRESS_PRESETS: dict[tuple[str, str], CompressPreset] = {
    ("vit", "ci"): CompressPreset(
        name="ci", task="vit", description="2 CPU cores, one thread: a 4-layer, d=64, 8-head MHA ViT pretrained "
        "on 8x8 digits (2x2 patches), converted to 10 methods/ranks, 150 fine-tuning steps x 5 seeds",
        data="digits", data_kwargs={"image_size": 8},
        model={"n_layer": 4, "d_model": 64, "n_heads": 8, "patch_size": 2, "pool": "mean", "dropout": 0.0},
        pretrain={"steps": 1500, "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50,
                  "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 250, "log_every": 25, "eval_batches": 0},
        finetune={**_CPU_FINETUNE, "steps": 150},
        variants=_vit_variants(8), seeds=5, threads=1),
    ("vit", "ci16"): CompressPreset(
        name="ci16", task="vit", description="the ci protocol with 16 heads of size 4 (d=64): does a model with "
        "more, smaller heads concentrate its head mode? 6 conversions, 150 fine-tuning steps x 3 seeds",
        data="digits", data_kwargs={"image_size": 8},
        model={"n_layer": 4, "d_model": 64, "n_heads": 16, "patch_size": 2, "pool": "mean", "dropout": 0.0},
        pretrain={"steps": 1500, "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50,
                  "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 250, "log_every": 25, "eval_batches": 0},
        finetune={**_CPU_FINETUNE, "steps": 150},
        variants=(Variant("mha"), Variant("gqa", {"n_kv_heads": 4}), Variant("tucker", {"ranks": (16, 16, 16)}),
                  Variant("tucker", {"ranks": (8, 16, 16)}), Variant("tucker", {"ranks": (4, 16, 16)}),
                  Variant("tucker", {"ranks": (8, 8, 8)})),
        seeds=3, threads=1),
    ("lm", "ci"): CompressPreset(
        name="ci", task="lm", description="2 CPU cores, one thread: a 2-layer, d=64, 4-head MHA GPT pretrained on "
        "the stdlib byte corpus (context 64), converted, 300 fine-tuning steps x 3 seeds",
        data="stdlib", data_kwargs={"max_bytes": 2_000_000},
        model={"n_layer": 2, "d_model": 64, "n_heads": 4, "block_size": 64, "dropout": 0.0},
        pretrain={"steps": 1200, "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 30,
                  "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 300, "log_every": 25, "eval_batches": 16},
        # 2 MB of text is not memorized in 300 steps: a higher rate than the ViT's, the same for every method
        finetune={**_CPU_FINETUNE, "steps": 300, "lr": 3e-4, "min_lr": 3e-5, "log_every": 10, "eval_batches": 16},
        variants=(Variant("mha"), Variant("gqa", {"n_kv_heads": 2}), Variant("mqa"),
                  Variant("mla", {"q_latent": 16, "kv_latent": 16}),
                  Variant("tucker", {"ranks": (4, 32, 16)}), Variant("tucker", {"ranks": (4, 16, 16)}),
                  Variant("tucker", {"ranks": (4, 16, 8)}), Variant("tucker", {"ranks": (2, 16, 16)})),
        seeds=3, threads=1),
    ("vit", "gpu"): CompressPreset(
        name="gpu", task="vit", description="one GPU: a 6-layer, d=384, 6-head MHA ViT pretrained on CIFAR-10 "
        "(32x32, 4x4 patches), converted, 500 fine-tuning steps x 5 seeds", data="cifar10",
        data_kwargs={"image_size": 32},
        model={"n_layer": 6, "d_model": 384, "n_heads": 6, "patch_size": 4, "pool": "cls", "dropout": 0.1},
        pretrain={"steps": 3000, "batch_size": 256, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
                  "weight_decay": 0.05, "grad_clip": 1.0, "eval_every": 500, "log_every": 50, "eval_batches": 0,
                  "num_workers": 4},
        finetune={"steps": 500, "batch_size": 256, "lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 50,
                  "weight_decay": 0.0, "grad_clip": 1.0, "eval_every": 0, "log_every": 10, "eval_batches": 0,
                  "num_workers": 4},
        variants=(Variant("mha"), Variant("gqa", {"n_kv_heads": 2}), Variant("mqa"),
                  Variant("mla", {"q_latent": 64, "kv_latent": 64}),
                  Variant("tucker", {"ranks": (6, 64, 64)}), Variant("tucker", {"ranks": (6, 64, 32)}),
                  Variant("tucker", {"ranks": (4, 64, 64)}), Variant("tucker", {"ranks": (4, 32, 32)})),
        seeds=5),
}


def get_compress_preset(task: str, name: str) -> CompressPreset:
    """The compression protocol ``name`` ("ci" | "gpu") of ``task`` ("lm" | "vit")."""
    if (task, name) not in COMPRESS_PRESETS:
        raise ValueError(f"no compression preset {name!r} for task {task!r}; presets: "
                         f"{sorted(f'{t} {n}' for t, n in COMPRESS_PRESETS)}")
    return COMPRESS_PRESETS[(task, name)]


# ------------------------------------------------------------------------------------------- records
def compress_record(*, preset: str, variant: Variant, seed: int, model: nn.Module, model_config: Any,
                    train_config: TrainConfig, result: TrainResult | None, converted: dict[str, float],
                    report: list[dict[str, Any]], source: dict[str, Any], decomposition: str,
                    command: Sequence[str] | None, run_dir: str | None) -> dict[str, Any]:
    """A sweep record (``sweep.make_record``) plus what the protocol adds: the source checkpoint (path, SHA-256,
    its validation metrics), the conversion errors, the metrics right after conversion (``converted_*``) and
    the fine-tuning steps (0: not fine-tuned; then the validation metrics are the converted ones)."""
    if result is None:
        result = TrainResult(model=model, final={**converted, "train_loss": None, "throughput": None,
                                                 "unit": None, "wall_time_s": 0.0})
    record = make_record(preset=preset, attention=model_config.attention, seed=seed, result=result, model=model,
                         train_config=train_config, model_config=model_config, command=command, run_dir=run_dir)
    errors = [r["rel_error_W"] for r in report], [r["rel_error_W_tilde"] for r in report]
    record.update({
        "protocol": "compress", "label": variant_label(variant), "method": variant.method,
        "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in variant.sizes.items()},
        "finetune_steps": train_config.steps if result.history else 0,
        "converted_val_loss": converted.get("val_loss"), "converted_val_acc": converted.get("val_acc"),
        "source_checkpoint": source["path"], "source_sha256": source["sha256"],
        "source_val_loss": source["metrics"].get("val_loss"), "source_val_acc": source["metrics"].get("val_acc"),
        "decomposition": decomposition if variant.method == "tucker" else None,
        "rel_error_W_mean": sum(errors[0]) / len(errors[0]) if report else 0.0,
        "rel_error_W_tilde_mean": sum(errors[1]) / len(errors[1]) if report else 0.0,
        "conversion": report, "threads": torch.get_num_threads(),
        "steps": train_config.steps if result.history else 0,
    })
    return record


def _append(path: Path, record: dict[str, Any]) -> None:
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------ protocol
def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def pretrain_source(preset: CompressPreset, out_dir: Path, *, data: Any, device: str | None = None,
                    progress: bool = True, seed: int = 0) -> Path:
    """Pretrain the preset's MHA model once (``out_dir/pretrain``) and write its weights as
    ``out_dir/source.pt`` (``slim_checkpoint``); an existing source.pt is reused."""
    source = out_dir / SOURCE_NAME
    if source.is_file():
        return source
    tkw = dict(preset.pretrain)
    if device is not None:
        tkw["device"] = device
    run_dir = out_dir / "pretrain"
    cfg = TrainConfig(task=preset.task, data=preset.data, data_kwargs=preset.data_kwargs, seed=seed,
                      out_dir=str(run_dir), progress=progress, **tkw)
    mcfg = model_config_for(preset.task, data, **preset.model)     # the default attention: MHA
    train(mcfg, cfg, data=data)
    slim_checkpoint(run_dir / CHECKPOINT_NAME, source)
    (run_dir / CHECKPOINT_NAME).unlink()
    return source


def run_compress_sweep(task: str, preset: str | CompressPreset, *, out_dir: str | os.PathLike[str],
                       source: str | os.PathLike[str] | None = None, seeds: int | None = None,
                       steps: int | None = None, device: str | None = None, methods: Iterable[str] | None = None,
                       decomposition: str = "hosvd", rerun: bool = False, progress: bool = True,
                       keep_checkpoints: bool = False, command: Sequence[str] | None = None,
                       overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The transfer protocol: one pretrained MHA model, every variant converted from it, evaluated right after
    conversion and after fine-tuning with each seed; one record per run appended to ``out_dir/records.jsonl``.

    Args:
        task, preset: a compression preset (``COMPRESS_PRESETS``) or a :class:`CompressPreset`.
        out_dir: ``pretrain/`` (the MHA run), ``source.pt``, ``runs/<run>/metrics.jsonl`` and ``records.jsonl``.
        source: start from this checkpoint instead of pretraining (its model must be the preset's task).
        seeds: fine-tuning seeds 0 .. seeds-1 (default the preset's); ``steps``: fine-tuning steps (0: only the
            converted evaluation, one record per variant with ``finetune_steps`` 0).
        methods: keep only these methods. decomposition: Tucker's "hosvd" (the paper's) or "hooi".
        rerun: redo runs already recorded (default: skip them, so an interrupted protocol continues).
        keep_checkpoints: keep each fine-tuned ``ckpt.pt`` (default: delete it after its record is written).
        overrides: fine-tuning TrainConfig fields replacing the preset's (e.g. ``{"lr": 3e-4, "min_lr": 3e-5}``).
    Returns:
        the records (skipped runs' included), in run order.
    """
    p = preset if isinstance(preset, CompressPreset) else get_compress_preset(task, preset)
    if p.task != task:
        raise ValueError(f"compression preset {p.name!r} is for task {p.task!r}, not {task!r}")
    seeds = p.seeds if seeds is None else seeds
    seeds = check_int("seeds", seeds)
    variants = select_variants(p.variants, methods, where=f"compression preset {p.name!r}")
    if p.threads is not None and runs_on_cpu(device or p.finetune.get("device", "auto")):
        torch.set_num_threads(p.threads)
    out = Path(out_dir)
    data = load_data(task, p.data, **p.data_kwargs)
    src = Path(source) if source is not None else pretrain_source(p, out, data=data, device=device,
                                                                    progress=progress)
    records_path = out / RECORDS_NAME
    done = {}
    if records_path.is_file() and not rerun:
        done = {r.get("run"): r for r in _load(records_path)}
    ft_steps = p.finetune["steps"] if steps is None else steps
    tkw = {**p.finetune, **(overrides or {}), "steps": max(ft_steps, 1)}
    if device is not None:
        tkw["device"] = device
    records = []
    for variant in variants:
        label = variant_label(variant)
        runs = ([f"{task}-{p.name}-{_slug(label)}-converted"] if ft_steps == 0 else
                [f"{task}-{p.name}-{_slug(label)}-s{seed}" for seed in range(seeds)])
        if all(r in done for r in runs):
            records += [done[r] for r in runs]
            continue
        model, mcfg, report, src_info = compress_checkpoint(src, variant.method, decomposition=decomposition,
                                                            **variant.sizes)
        base = TrainConfig(task=task, data=p.data, data_kwargs=p.data_kwargs, seed=0, progress=progress, **tkw)
        model = model.to(_device(base.device))
        converted = evaluate_model(model, mcfg, data, base)
        for seed, run in enumerate(runs):
            if run in done:
                records.append(done[run])
                continue
            run_dir = out / "runs" / run
            if ft_steps == 0:
                result, cfg = None, replace(base, steps=1)
            else:
                cfg = replace(base, seed=seed, out_dir=str(run_dir))
                result = finetune(model, mcfg, cfg, data=data)
            t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            record = compress_record(preset=p.name, variant=variant, seed=seed,
                                     model=result.model if result else model, model_config=mcfg, train_config=cfg,
                                     result=result, converted=converted, report=report, source=src_info,
                                     decomposition=decomposition, command=command,
                                     run_dir=str(run_dir) if result else None)
            record.update({"run": run, "time": t0})
            _append(records_path, record)
            records.append(record)
            if result is not None and not keep_checkpoints:
                (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return records


def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def copy_records(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a protocol's records, source checkpoint and metrics (no checkpoints) to ``dst`` (e.g. book/results)."""
    src, dst = Path(src), Path(dst)
    for path in src.rglob("*"):
        if path.is_file() and path.name != CHECKPOINT_NAME:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# ------------------------------------------------------------------------------------- one checkpoint
FINETUNE_DEFAULTS = {"batch_size": 32, "lr": 1e-4, "warmup_steps": 20, "schedule": "cosine", "weight_decay": 0.0,
                     "grad_clip": 1.0, "eval_every": 0, "log_every": 5}


def compress_and_finetune(path: str | os.PathLike[str], method: str, *, out_dir: str | os.PathLike[str],
                          finetune_steps: int = 0, seed: int = 0, decomposition: str = "hosvd",
                          train_overrides: dict[str, Any] | None = None, progress: bool = True,
                          command: Sequence[str] | None = None, **sizes: Any) -> dict[str, Any]:
    """``python -m tucker_attention compress``: convert a checkpoint, evaluate, optionally fine-tune, save.

    The data set is the one the checkpoint was trained on (its train config). Fine-tuning uses the source's
    train config with ``FINETUNE_DEFAULTS`` and ``train_overrides`` on top (``min_lr`` = lr/10 unless given).
    Writes ``out_dir/ckpt.pt`` (the converted model, fine-tuned if ``finetune_steps`` > 0; loadable by
    ``load_model``), ``out_dir/metrics.jsonl`` when fine-tuned, ``out_dir/record.json`` and appends the record
    to ``out_dir/records.jsonl``. Returns the record (``compress_record``; ``source_val_*`` re-evaluated here).
    """
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise ValueError(f"finetune_steps must be an int >= 0, got finetune_steps={finetune_steps!r}")
    out = Path(out_dir)
    model, mcfg, report, source = compress_checkpoint(path, method, decomposition=decomposition, **sizes)
    saved = dict(source["train_config"] or {})
    task = source["task"]
    tkw = {k: v for k, v in saved.items() if k not in ("task", "seed", "out_dir", "resume", "progress",
                                                        "steps", "min_lr")}
    tkw.update(FINETUNE_DEFAULTS)
    tkw.update(train_overrides or {})
    cfg = TrainConfig(task=task, seed=seed, steps=max(finetune_steps, 1), progress=progress,
                      out_dir=str(out), **tkw)
    data = load_data(task, cfg.data, **cfg.data_kwargs)
    device = _device(cfg.device)
    source_model = build_model(_model_config_from({"task": task, "model_config": source["model_config"]}))
    source_model.load_state_dict(load_checkpoint(path)["model"])
    source["metrics"] = evaluate_model(source_model.to(device), source_model.config, data, cfg)
    model = model.to(device)
    converted = evaluate_model(model, mcfg, data, cfg)
    result = None
    if finetune_steps > 0:
        result = finetune(model, mcfg, cfg, data=data)
        model = result.model
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / CHECKPOINT_NAME, {
            "format": CHECKPOINT_FORMAT, "task": task, "step": 0,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_config": mcfg.to_dict(), "train_config": cfg.to_dict(), "metrics": converted})
    variant = Variant(method, {k: v for k, v in sizes.items() if v is not None})
    record = compress_record(preset="compress", variant=variant, seed=seed, model=model, model_config=mcfg,
                             train_config=cfg, result=result, converted=converted, report=report, source=source,
                             decomposition=decomposition, command=command, run_dir=str(out))
    record["run"] = f"{task}-compress-{_slug(variant_label(variant))}-s{seed}"
    if is_main():
        (out / "record.json").write_text(json.dumps(record, indent=2))
    _append(out / RECORDS_NAME, record)
    return record


def protocol_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: ``sweep.summarize``'s (mean ± sample std over seeds of the fine-tuned
    metrics) plus the metrics right after conversion (``converted_val_loss``, ``converted_val_acc``) and the
    mean relative conversion errors."""
    from .sweep import summarize

    rows = summarize(records)
    for row in rows:
        first = next(r for r in records if r["label"] == row["label"] and r.get("task", "") == row["task"])
        for key in ("converted_val_loss", "converted_val_acc", "rel_error_W_mean", "rel_error_W_tilde_mean",
                    "finetune_steps", "source_val_loss", "source_val_acc"):
            row[key] = first.get(key)
    return rows


def protocol_table(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`protocol_rows`: parameters, conversion error, metric after conversion and
    after fine-tuning (mean ± std over seeds)."""
    rows = protocol_rows(records)
    if not rows:
        return "(no records)"
    acc = rows[0].get("val_acc") is not None
    key = "val_acc" if acc else "val_loss"
    name = "val acc" if acc else "val loss"
    lines = [f"| method | attention params | KV cache / token | rel. error 𝒲 / 𝒲̃ | {name} converted | "
             f"{name} fine-tuned | seeds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ft = (f"{r[key]:.4f} ± {r[key + '_std']:.4f}" if r["n"] > 1 else f"{r[key]:.4f}") \
            if r.get("finetune_steps") else "-"
        lines.append(f"| {r['label']} | {r['attention_params']:,} | {r['kv_cache_per_token']:,} | "
                     f"{r['rel_error_W_mean']:.3f} / {r['rel_error_W_tilde_mean']:.3f} | "
                     f"{r['converted_' + key]:.4f} | {ft} | {r['n']} |")
    return "\n".join(lines)


@torch.no_grad()
def scan_conversions(model: nn.Module, variants: Sequence[Variant], *, data: Any, config: TrainConfig,
                     decomposition: str = "hosvd") -> list[dict[str, Any]]:
    """Convert ``model`` to each variant and evaluate it right away (no fine-tuning): one row per variant with
    ``label, method, sizes, attention_params, kv_cache_per_token, rel_error_W, rel_error_W_tilde`` (means over
    layers) and the validation metrics ``val_loss`` (``val_acc``) of ``evaluate_model`` under ``config``."""
    rows = []
    for v in variants:
        if v.method == "mha":
            new, report = model, []
        else:
            new, report = compress_model(model, v.method, decomposition=decomposition, **v.sizes)
        n = max(len(report), 1)
        rows.append({"label": variant_label(v), "method": v.method, "sizes": dict(v.sizes),
                     "attention_params": new.attention_params(), "kv_cache_per_token": new.kv_cache_per_token(),
                     "rel_error_W": sum(r["rel_error_W"] for r in report) / n,
                     "rel_error_W_tilde": sum(r["rel_error_W_tilde"] for r in report) / n,
                     **evaluate_model(new, new.config, data, config)})
    return rows
