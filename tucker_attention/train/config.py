"""``TrainConfig``: everything about a training run that is not the model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..validation import check_bool, check_choice, check_float, check_int

__all__ = ["DEFAULT_DATA", "DTYPES", "SCHEDULES", "TASKS", "TrainConfig", "lr_at"]

TASKS = ("lm", "vit")
DEFAULT_DATA = {"lm": "stdlib", "vit": "digits"}
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "constant")


@dataclass(kw_only=True)
class TrainConfig:
    """A training run (one loop serves GPT and ViT).

    Attributes:
        task: "lm" (next-token prediction, GPT) or "vit" (image classification, ViT).
        data: data set name (``load_text`` names for lm, ``load_images`` names for vit); None = the offline
            default ("stdlib" / "digits"). data_kwargs: passed to the loader.
        steps: optimizer steps. batch_size: sequences/images per process per micro-step. grad_accum:
            micro-steps per optimizer step. The global batch is ``batch_size * grad_accum * world_size``.
        lr, min_lr (None: lr / 10), warmup_steps, schedule: linear warmup from ~0 to ``lr``, then cosine
            decay to ``min_lr`` at ``steps`` ("cosine") or constant ``lr`` ("constant").
        weight_decay, betas: AdamW. Decayed: 2-D+ weights (linear/conv weights, Tucker cores and factors);
            not decayed: biases, norms, embeddings, position embeddings, the class token.
        grad_clip: max global gradient norm (0 = no clipping).
        eval_every: evaluate every k steps (and at step 0 and at the end; 0 = only at the end).
        eval_batches: batches per evaluation (lm: fixed random validation windows; vit: the first batches
            of the validation set); 0 = the whole validation set (lm: every non-overlapping window).
        log_every: write a train-metrics line every k steps.
        seed: model init, data order and dropout. device: "auto" (cuda if available) | "cpu" | "cuda" | ...
        dtype: "auto" (bf16 autocast on CUDA, fp16 + GradScaler on GPUs without bf16, fp32 on CPU) | "float32"
            | "bfloat16" | "float16" (autocast; the weights stay fp32).
        compile: wrap the model in ``torch.compile``.
        out_dir: metrics.jsonl, config.json and ckpt.pt go here (rank 0 only); None = write nothing.
        checkpoint_every: also checkpoint every k steps (0 = only at the end). resume: continue from
            ``out_dir/ckpt.pt`` if it exists (bit-exactly: same losses as an uninterrupted run).
        progress: tqdm progress bar. num_workers: image DataLoader workers.
    """

    task: str = "lm"
    data: str | None = None
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    out_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        if self.data is None:
            self.data = DEFAULT_DATA[self.task]
        if not isinstance(self.data, str):
            raise TypeError(f"data must be a data set name (str), got data={self.data!r}")
        if not isinstance(self.data_kwargs, Mapping):
            raise TypeError(f"data_kwargs must be a dict, got {type(self.data_kwargs).__name__}")
        self.data_kwargs = dict(self.data_kwargs)
        self.steps = check_int("steps", self.steps, low=1)
        self.batch_size = check_int("batch_size", self.batch_size, low=1)
        self.grad_accum = check_int("grad_accum", self.grad_accum, low=1)
        self.lr = check_float("lr", self.lr, low=0.0, low_open=True)
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        self.min_lr = check_float("min_lr", self.min_lr, low=0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be <= lr, got min_lr={self.min_lr} and lr={self.lr}")
        self.warmup_steps = check_int("warmup_steps", self.warmup_steps, low=0)
        check_choice("schedule", self.schedule, SCHEDULES)
        self.weight_decay = check_float("weight_decay", self.weight_decay, low=0.0)
        if len(tuple(self.betas)) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got betas={self.betas!r}")
        self.betas = tuple(float(b) for b in self.betas)
        self.grad_clip = check_float("grad_clip", self.grad_clip, low=0.0)
        for name in ("eval_every", "eval_batches", "checkpoint_every", "num_workers"):
            setattr(self, name, check_int(name, getattr(self, name), low=0))
        self.log_every = check_int("log_every", self.log_every, low=1)
        self.seed = check_int("seed", self.seed, low=0)
        if not isinstance(self.device, str) or not self.device:
            raise TypeError(f"device must be a str like 'auto', 'cpu', 'cuda', got device={self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must be 'auto' or a torch device like 'cpu', 'cuda', 'cuda:1', "
                                 f"got device={self.device!r}") from None
        check_choice("dtype", self.dtype, DTYPES)
        for name in ("compile", "resume", "progress"):
            check_bool(name, getattr(self, name))
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the checkpoint is out_dir/ckpt.pt)")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain types (lists for tuples) for JSON and ``weights_only`` checkpoints."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based), nanoGPT's schedule.

    warmup: ``lr * (step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``; then cosine from ``lr``
    at ``warmup_steps`` to ``min_lr`` at ``steps - 1`` (constant ``lr`` with schedule="constant").
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
