"""The two tasks one loop trains: next-token prediction (GPT) and image classification (ViT).

A task owns its data stream and knows how to evaluate. Its sampler state is part of every checkpoint, so
a resumed run sees exactly the batches an uninterrupted one would:

- ``LMTask``: random windows (``data.get_batch``) drawn with a per-rank ``torch.Generator``; the state is
  the generator's state. Evaluation uses a fresh generator with a fixed seed each time: the same
  ``eval_batches`` validation windows at every evaluation (``eval_batches=0``: every non-overlapping
  window of the validation stream), and the training stream is untouched.
- ``ImageTask``: a ``SeededSampler`` DataLoader (order a function of ``(seed, epoch)``); the state is
  ``(epoch, samples consumed in it)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from ..data import ImageData, TextData, get_batch, load_images, load_text, make_loader
from ..models import GPTConfig, ViTConfig
from .config import TrainConfig
from .distributed import all_reduce_sum

__all__ = ["ImageTask", "LMTask", "derive_seed", "load_data", "make_task", "model_config_for"]


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed from ``seed`` and tags (e.g. a purpose and a rank); independent streams per tag."""
    digest = hashlib.sha256(":".join(map(str, (seed, *tags))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_data(task: str, name: str, **kwargs: Any) -> TextData | ImageData:
    """``load_text(name, **kwargs)`` for "lm", ``load_images(name, **kwargs)`` for "vit"."""
    if task == "lm":
        return load_text(name, **kwargs)
    if task == "vit":
        return load_images(name, **kwargs)
    raise ValueError(f"task must be 'lm' or 'vit', got task={task!r}")


def model_config_for(task: str, data: TextData | ImageData, **kwargs: Any) -> GPTConfig | ViTConfig:
    """A model config whose data-given sizes come from ``data``: vocab_size (lm); image_size, channels and
    num_classes (vit). ``kwargs``: the other fields (n_layer, d_model, n_heads, attention, ...)."""
    if task == "lm":
        if not isinstance(data, TextData):
            raise TypeError(f"task 'lm' needs TextData, got {type(data).__name__}")
        return GPTConfig(vocab_size=data.vocab_size, **kwargs)
    if task == "vit":
        if not isinstance(data, ImageData):
            raise TypeError(f"task 'vit' needs ImageData, got {type(data).__name__}")
        return ViTConfig(image_size=data.image_size, channels=data.channels, num_classes=data.num_classes, **kwargs)
    raise ValueError(f"task must be 'lm' or 'vit', got task={task!r}")


class LMTask:
    """Language modelling on a :class:`TextData` stream. Items are tokens."""

    unit = "tokens"

    def __init__(self, data: TextData, *, block_size: int, batch_size: int, eval_batches: int, seed: int,
                 rank: int, device: torch.device, world_size: int = 1) -> None:
        for split in ("train", "val"):
            n = len(getattr(data, split))
            if n <= block_size:
                raise ValueError(f"the {split} split has {n} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batches = eval_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "lm-train", rank))

    def items_per_batch(self) -> int:
        return self.batch_size * self.block_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch_size, block_size) int64 on the device; y is x shifted by one token."""
        return get_batch(self.data.train, batch_size=self.batch_size, block_size=self.block_size,
                         generator=self.generator, device=self.device)

    def _val_batches(self):
        """Validation (x, y) batches: ``eval_batches`` batches of fixed random windows, or (0) every
        non-overlapping window of the validation stream, split across ranks."""
        val, T, B = self.data.val, self.block_size, self.batch_size
        if self.eval_batches:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "lm-val", self.rank))
            for _ in range(self.eval_batches):
                yield get_batch(val, batch_size=B, block_size=T, generator=g, device=self.device)
            return
        starts = torch.arange(0, len(val) - T, T)[self.rank::self.world_size]     # (n_windows,)
        for i in range(0, len(starts), B):
            offsets = starts[i:i + B, None] + torch.arange(T + 1)                   # (b, T + 1)
            windows = val[offsets].to(torch.int64)
            yield windows[:, :-1].to(self.device), windows[:, 1:].to(self.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, autocast: Any) -> dict[str, float]:
        """Mean validation loss per token (averaged over all ranks' windows)."""
        total = torch.zeros(2, dtype=torch.float64, device=self.device)   # loss sum over rows, rows
        for x, y in self._val_batches():
            with autocast():
                _, loss = model(x, y)
            rows = torch.tensor(float(len(x)), dtype=torch.float64, device=self.device)
            total += torch.stack((loss.detach().double() * rows, rows))
        all_reduce_sum(total)
        return {"val_loss": float(total[0] / total[1])}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class ImageTask:
    """Image classification on :class:`ImageData`. Items are images."""

    unit = "images"

    def __init__(self, data: ImageData, *, batch_size: int, eval_batches: int, seed: int, rank: int,
                 world_size: int, device: torch.device, num_workers: int = 0) -> None:
        per_rank = len(data.train) // world_size
        if per_rank < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {per_rank} training images per process "
                             f"({len(data.train)} images over {world_size} processes)")
        self.data = data
        self.batch_size = batch_size
        self.eval_batches = eval_batches
        self.device = device
        self.loader = make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed,
                                  num_workers=num_workers, drop_last=True, num_replicas=world_size, rank=rank)
        self.val_loader = make_loader(data.val, batch_size=batch_size, shuffle=False, seed=seed,
                                      num_workers=num_workers, num_replicas=world_size, rank=rank)
        self.epoch = 0
        self.position = 0                                    # samples of this rank consumed in this epoch
        self._iter = None

    def items_per_batch(self) -> int:
        return self.batch_size

    def _restart(self) -> None:
        self.loader.sampler.set_epoch(self.epoch, self.position)
        self._iter = iter(self.loader)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) float, labels (B,) int64, on the device."""
        if self._iter is None:
            self._restart()
        try:
            x, y = next(self._iter)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._restart()
            x, y = next(self._iter)
        self.position += len(y)
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, autocast: Any) -> dict[str, float]:
        """Validation loss and accuracy (over all ranks' shares; the first ``eval_batches`` batches, 0 = all)."""
        total = torch.zeros(3, dtype=torch.float64, device=self.device)   # loss sum, correct, count
        self.val_loader.sampler.set_epoch(0)
        for i, (x, y) in enumerate(self.val_loader):
            if self.eval_batches and i >= self.eval_batches:
                break
            x, y = x.to(self.device), y.to(self.device)
            with autocast():
                logits, loss = model(x, y)
            n = float(len(y))
            total += torch.stack((loss.detach().double() * n, (logits.argmax(-1) == y).sum().double(),
                                  torch.tensor(n, dtype=torch.float64, device=self.device)))
        all_reduce_sum(total)
        return {"val_loss": float(total[0] / total[2]), "val_acc": float(total[1] / total[2])}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iter = None


def make_task(cfg: TrainConfig, model_config: GPTConfig | ViTConfig, data: TextData | ImageData, *, rank: int,
              world_size: int, device: torch.device) -> LMTask | ImageTask:
    """The task of ``cfg.task`` over ``data``, after checking that the model fits the data."""
    if cfg.task == "lm":
        if not isinstance(model_config, GPTConfig) or not isinstance(data, TextData):
            raise TypeError(f"task 'lm' needs a GPTConfig and TextData, got {type(model_config).__name__} and "
                            f"{type(data).__name__}")
        if model_config.vocab_size < data.vocab_size:
            raise ValueError(f"model vocab_size={model_config.vocab_size} is smaller than the data's "
                             f"vocab_size={data.vocab_size}")
        return LMTask(data, block_size=model_config.block_size, batch_size=cfg.batch_size,
                      eval_batches=cfg.eval_batches, seed=cfg.seed, rank=rank, device=device, world_size=world_size)
    if not isinstance(model_config, ViTConfig) or not isinstance(data, ImageData):
        raise TypeError(f"task 'vit' needs a ViTConfig and ImageData, got {type(model_config).__name__} and "
                        f"{type(data).__name__}")
    for name in ("image_size", "channels", "num_classes"):
        if getattr(model_config, name) != getattr(data, name):
            raise ValueError(f"model {name}={getattr(model_config, name)} does not match the data's "
                             f"{name}={getattr(data, name)} (build the config with model_config_for)")
    return ImageTask(data, batch_size=cfg.batch_size, eval_batches=cfg.eval_batches, seed=cfg.seed, rank=rank,
                     world_size=world_size, device=device, num_workers=cfg.num_workers)
