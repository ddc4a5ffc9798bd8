"""One training loop for GPT and ViT: AdamW, warmup + cosine, clipping, accumulation, autocast, DDP,
evaluation, JSON-lines metrics, atomic checkpoints that resume bit-exactly, and a NaN guard.

    result = train(model_config, TrainConfig(task="lm", steps=300, out_dir="runs/x"))
    result.history      # train loss of every step
    result.final        # {"val_loss": ..., "throughput": ..., ...}

Under ``torchrun`` the same call trains with DistributedDataParallel (see ``distributed.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageData, TextData
from ..models import GPTConfig, ViTConfig, build_model
from ..provenance import provenance
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import TrainConfig, lr_at
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    gather_objects,
    init_distributed,
    wrap_ddp,
)
from .tasks import derive_seed, load_data, make_task

__all__ = ["METRICS_NAME", "NonFiniteLossError", "TrainResult", "TrainingInterrupted", "make_optimizer",
           "param_groups", "resolve_device", "resolve_dtype", "train"]

METRICS_NAME = "metrics.jsonl"
_SHORT = {"tokens": "tok/s", "images": "img/s"}


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient norm) became NaN/inf; the run stopped before the optimizer step.

    Attributes: ``step`` (the 1-based step that failed), ``value``, ``checkpoint`` (path of the last good
    checkpoint, or None).
    """

    def __init__(self, message: str, *, step: int, value: float, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.value = value
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) stopped training; the run was checkpointed first where it could be.

    Attributes: ``step`` (optimizer steps done), ``checkpoint`` (path of the checkpoint holding them — resume
    from it with ``resume=True`` / ``--resume`` — or None: no ``out_dir``, or under DDP the last periodic one).
    """

    def __init__(self, message: str, *, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What ``train`` returns.

    Attributes:
        model: the trained model (unwrapped: no DDP, no compile).
        history: train loss of each step run in this call (steps ``start_step + 1 ..``).
        evals: ``{"step", "val_loss"[, "val_acc"]}`` of each evaluation in this call.
        final: final metrics: val_loss (+ val_acc), train_loss, throughput (items/s), unit, wall_time_s, steps.
        start_step: the step this call resumed from (0 for a fresh run). out_dir: where files went.
    """

    model: nn.Module
    history: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    start_step: int = 0
    out_dir: str | None = None


# ------------------------------------------------------------------------------------------ pieces
def resolve_device(device: str, info: DistInfo) -> torch.device:
    """"auto" → CUDA if available, else CPU; under DDP on CUDA, GPU ``local_rank``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: "auto" = bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay 2-D+ weights (linear/conv weights, Tucker cores and factors); no decay for biases,
    norms (1-D) and the model's ``no_weight_decay()`` names (embeddings, position embeddings, class token)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():                    # tied parameters appear once
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernels on CUDA)."""
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, **extra)


def _autocast_factory(device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class _Metrics:
    """metrics.jsonl writer (rank 0 only); on resume, keeps only the lines up to the resumed step.

    The first line is the run's provenance (``{"step": 0, "git_commit", "command", "seed", "device", ...}``,
    no metric keys), then one line per log or evaluation step."""

    def __init__(self, out_dir: Path | None, *, main: bool, resume_step: int | None) -> None:
        self.path = out_dir / METRICS_NAME if (out_dir is not None and main) else None
        if self.path is None:
            return
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))

    def has_header(self) -> bool:
        """Whether the file starts with the provenance line (kept on resume)."""
        if self.path is None or not self.path.is_file():
            return False
        first = self.path.read_text().split("\n", 1)[0]
        return bool(first.strip()) and "git_commit" in json.loads(first)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


# -------------------------------------------------------------------------------------------- train
def train(model_config: GPTConfig | ViTConfig, config: TrainConfig, *, data: TextData | ImageData | None = None,
          on_step: Callable[[int, dict[str, Any], nn.Module], None] | None = None) -> TrainResult:
    """Train a GPT (``config.task="lm"``) or a ViT (``"vit"``).

    Args:
        model_config: the model (``GPTConfig`` for lm, ``ViTConfig`` for vit); see ``tasks.model_config_for``.
        config: the run.
        data: preloaded data (else ``config.data`` is loaded with ``config.data_kwargs``).
        on_step: called as ``on_step(step, record, model)`` after every optimizer step and checkpoint
            (``step`` is 1-based; ``record`` has train_loss, lr, grad_norm and, on eval steps, the validation
            metrics; ``model`` is the unwrapped model) — e.g. to track the ranks of the attention tensors.

    Raises:
        NonFiniteLossError: the loss or gradient norm became NaN/inf (nothing is saved for that step; the
            last good checkpoint stays).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    expected = GPTConfig if config.task == "lm" else ViTConfig
    if not isinstance(model_config, expected):
        raise TypeError(f"task {config.task!r} needs a {expected.__name__}, got {type(model_config).__name__}")
    requested = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                             ("cpu" if config.device == "auto" else config.device))
    own_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(device_type=requested.type)
    try:
        return _train(model_config, config, data, on_step, info)
    finally:
        if own_group and info.enabled:
            destroy_distributed()


def _train(model_config, cfg: TrainConfig, data, on_step, info: DistInfo) -> TrainResult:
    t_start = time.perf_counter()
    device = resolve_device(cfg.device, info)
    dtype = resolve_dtype(cfg.dtype, device)
    autocast = _autocast_factory(device, dtype)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if data is None:
        data = load_data(cfg.task, cfg.data, **cfg.data_kwargs)

    torch.manual_seed(cfg.seed)                                  # identical initial weights on every rank
    model = build_model(model_config).to(device)
    task = make_task(cfg, model_config, data, rank=info.rank, world_size=info.world_size, device=device)
    optimizer = make_optimizer(model, cfg, device)
    torch.manual_seed(derive_seed(cfg.seed, "train", info.rank))  # dropout stream, per rank

    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir is not None else None
    start_step, last_good, resumed = 0, None, False
    if cfg.resume and ckpt_path is not None and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(state, model_config, cfg, info)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        task.load_state_dict(state["data"][info.rank])
        restore_rng_state(state["rng"][info.rank])
        start_step, last_good, resumed = int(state["step"]), str(ckpt_path), True
    if out_dir is not None and info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_provenance = provenance(device=device, seed=cfg.seed)
        (out_dir / "config.json").write_text(json.dumps(
            {"model": model_config.to_dict(), "train": cfg.to_dict(), "world_size": info.world_size,
             **run_provenance}, indent=2))
    metrics = _Metrics(out_dir, main=info.is_main, resume_step=start_step if resumed else None)
    if out_dir is not None and info.is_main and not metrics.has_header():
        metrics.write({"step": 0, **run_provenance})           # the curve says which code produced it

    ddp_model = wrap_ddp(model, info, device)
    train_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    items_per_step = task.items_per_batch() * cfg.grad_accum * info.world_size

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        out = task.evaluate(model, autocast)
        model.train()
        return {"step": step, **out}

    def checkpoint(step: int, states: tuple[list, list] | None = None) -> str | None:
        """Save everything a bit-exact resume at ``step`` needs; ``states``: (rng, data) captured earlier."""
        rng, data_state = states if states is not None else (gather_objects(capture_rng_state()),
                                                             gather_objects(task.state_dict()))
        if info.is_main:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "task": cfg.task, "step": step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "model_config": model_config.to_dict(), "train_config": cfg.to_dict(),
                "world_size": info.world_size, "rng": rng, "data": data_state,
                "metrics": {"train_loss": history[-1] if history else None, **(evals[-1] if evals else {})},
            })
        barrier()
        return str(ckpt_path)

    def optimizer_step(step: int, lr: float) -> tuple[float, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss over ranks, grad norm).
        Raises NonFiniteLossError before touching the weights if the loss or gradient norm is NaN/inf."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = task.next_batch()
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not info.enabled) else ddp_model.no_sync()
            with sync:                                           # DDP all-reduces on the last micro-step only
                with autocast():
                    _, loss = train_model(x, y)
                loss = loss / cfg.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.detach().float()
        loss_value = float(all_reduce_sum(loss_sum)) / info.world_size   # the same on every rank
        if not math.isfinite(loss_value):
            raise _non_finite("loss", loss_value, step + 1, last_good, cfg)
        if scaler is not None:
            scaler.unscale_(optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if scaler is None and not math.isfinite(grad_norm):    # fp16: the scaler skips such steps itself
            raise _non_finite("gradient norm", grad_norm, step + 1, last_good, cfg)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    history: list[float] = []
    evals: list[dict[str, float]] = []
    if start_step == 0 and cfg.eval_every > 0:
        evals.append(evaluate(0))
        metrics.write(evals[-1])

    model.train()
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and info.is_main),
               dynamic_ncols=True, desc=f"{cfg.task} {model_config.attention.label()}")
    train_time, timed_items, window_loss, window_items, window_time = 0.0, 0, [], 0, 0.0
    completed, saved_step = start_step, start_step if resumed else None
    snapshot = (start_step, [capture_rng_state()], [task.state_dict()]) if ckpt_path is not None else None
    try:
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            loss_value, grad_norm = optimizer_step(step, lr)
            done = completed = step + 1
            dt = time.perf_counter() - t0
            if step > start_step or cfg.steps - start_step == 1:     # the first step of a call warms up
                train_time += dt
                timed_items += items_per_step
            history.append(loss_value)
            window_loss.append(loss_value)
            window_items += items_per_step
            window_time += dt

            record: dict[str, Any] = {"step": done, "train_loss": loss_value, "lr": lr, "grad_norm": grad_norm}
            if done % cfg.log_every == 0 or done == cfg.steps:
                line = {"step": done, "train_loss": sum(window_loss) / len(window_loss), "lr": lr,
                        "grad_norm": grad_norm, "throughput": window_items / max(window_time, 1e-9),
                        "unit": f"{task.unit}/s", "elapsed_s": time.perf_counter() - t_start}
                metrics.write(line)
                bar.set_postfix({"loss": f"{line['train_loss']:.4f}", _SHORT[task.unit]: f"{line['throughput']:,.0f}"})
                window_loss, window_items, window_time = [], 0, 0.0
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                evals.append(evaluate(done))
                metrics.write(evals[-1])
                record.update({k: v for k, v in evals[-1].items() if k != "step"})
            if ckpt_path is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                          or done == cfg.steps):
                last_good, saved_step = checkpoint(done), done
            bar.update(1)
            if on_step is not None:
                on_step(done, record, model)
            if ckpt_path is not None and not info.enabled:      # the state a Ctrl-C in the next step resumes
                snapshot = (done, [capture_rng_state()], [task.state_dict()])
    except KeyboardInterrupt as e:
        raise _interrupted(completed, saved_step, last_good, snapshot, checkpoint, info) from e
    finally:
        bar.close()
    if not evals:                                               # resumed a finished run: evaluate once
        evals.append(evaluate(cfg.steps))

    final: dict[str, Any] = {"steps": cfg.steps, "unit": f"{task.unit}/s",
                             "throughput": timed_items / train_time if train_time > 0 else None,
                             "train_loss": history[-1] if history else None,
                             "wall_time_s": time.perf_counter() - t_start}
    if evals:
        final.update({k: v for k, v in evals[-1].items() if k != "step"})
    return TrainResult(model=model, history=history, evals=evals, final=final, start_step=start_step,
                       out_dir=None if out_dir is None else str(out_dir))


def _non_finite(what: str, value: float, step: int, last_good: str | None, cfg: TrainConfig) -> NonFiniteLossError:
    where = (f"the last good checkpoint is {last_good!r}: resume from it (resume=True / --resume)"
             if last_good else "no checkpoint was written before it")
    return NonFiniteLossError(
        f"non-finite training {what} ({value}) at step {step}; stopped before the optimizer step, {where}. "
        f"Try a lower learning rate (lr={cfg.lr}), more warmup (warmup_steps={cfg.warmup_steps}), "
        f"gradient clipping (grad_clip={cfg.grad_clip}) or dtype='bfloat16'/'float32' instead of float16.",
        step=step, value=value, checkpoint=last_good)


def _interrupted(completed: int, saved_step: int | None, last_good: str | None, snapshot, checkpoint,
                 info: DistInfo) -> TrainingInterrupted:
    """Checkpoint the ``completed`` steps after Ctrl-C (single process, with ``out_dir``) and say where.

    ``snapshot`` holds the RNG and data-sampler states right after the last full step, so the checkpoint
    resumes bit-exactly even when the interrupt came in the middle of the next step's batches. Under DDP the
    processes cannot agree on a step after a signal: the last periodic checkpoint stays the one to resume.
    """
    if snapshot is not None and not info.enabled and completed != saved_step:
        step, rng, data = snapshot
        states = (rng, data) if step == completed else None      # interrupted after the step, before the snapshot
        last_good, saved_step = checkpoint(completed, states), completed
    if last_good is None:
        where = "nothing was saved (no out_dir)" if snapshot is None else "no checkpoint was written"
    else:
        where = f"checkpoint {last_good!r} holds step {saved_step}"
    steps = f"{completed} step{'' if completed == 1 else 's'}"
    return TrainingInterrupted(f"interrupted after {steps}; {where}", step=saved_step or 0,
                               checkpoint=last_good)


def _check_resumable(state: dict[str, Any], model_config, cfg: TrainConfig, info: DistInfo) -> None:
    saved_model = type(model_config).from_dict(state["model_config"]).to_dict()   # older files say "kind"
    if saved_model != model_config.to_dict():
        raise CheckpointError("cannot resume: the checkpoint's model config differs from this run's "
                              f"(checkpoint {saved_model} vs {model_config.to_dict()})")
    if state.get("world_size", 1) != info.world_size:
        raise CheckpointError(f"cannot resume bit-exactly: the checkpoint was written by {state.get('world_size')} "
                         f"processes, this run has {info.world_size}")
    saved = state["train_config"]
    for key in ("task", "batch_size", "grad_accum", "seed"):
        if saved[key] != getattr(cfg, key):
            raise CheckpointError(f"cannot resume: {key} changed from {saved[key]!r} (checkpoint) to "
                                  f"{getattr(cfg, key)!r}")
    if int(state["step"]) > cfg.steps:
        raise CheckpointError(f"the checkpoint is at step {state['step']}, beyond steps={cfg.steps}")
