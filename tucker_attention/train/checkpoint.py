"""Atomic checkpoints that resume bit-exactly, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only (no pickled classes), so it loads with
``weights_only=True`` — safe to open from an untrusted source:

    {"format": 1, "task": "lm" | "vit", "step": int,
     "model": state_dict, "optimizer": state_dict, "scaler": state_dict | None,
     "model_config": dict, "train_config": dict,
     "rng": [per-rank {"torch": ByteTensor, "cuda": [ByteTensor, ...], "python": tuple}],
     "data": [per-rank data-sampler state], "metrics": dict}

Writing goes through :func:`tucker_attention.files.atomic_write`: a crash or Ctrl-C mid-save leaves the
previous checkpoint intact. A file that cannot be read (truncated, corrupted, not a checkpoint) raises
:class:`CheckpointError` with one line naming the file and what to do. Checkpoints written before the
``task`` key (``"kind": "gpt" | "vit"``) load too.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CheckpointError", "capture_rng_state", "checkpoint_task",
           "load_checkpoint", "load_model", "restore_rng_state", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "ckpt.pt"
_OLD_KINDS = {"gpt": "lm", "vit": "vit"}          # the "kind" key of checkpoints before "task"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, or not a tucker_attention checkpoint."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` if there is none and :class:`CheckpointError` (one line: the file, what is
    wrong, what to do) if it cannot be read — e.g. truncated by a full disk or a copy that stopped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:                        # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable (truncated or corrupted: {reason}); delete it or restore a "
            f"good copy, then run again (without --resume to start over)") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a tucker_attention checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(format={state.get('format') if isinstance(state, dict) else None!r})")
    return state


def checkpoint_task(state: dict[str, Any]) -> str:
    """The task of a loaded checkpoint, "lm" or "vit" (older files say ``"kind": "gpt" | "vit"``)."""
    task = state.get("task", _OLD_KINDS.get(state.get("kind")))
    if task not in ("lm", "vit"):
        raise CheckpointError(f"the checkpoint names no known task (task={state.get('task')!r}, "
                              f"kind={state.get('kind')!r}); expected 'lm' or 'vit'")
    return task


def load_model(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> torch.nn.Module:
    """The trained model stored in a checkpoint (``GPT`` for lm, ``ViT`` for vit, in eval mode)."""
    from ..models import GPT, GPTConfig, ViT, ViTConfig

    state = load_checkpoint(path, map_location=map_location)
    if checkpoint_task(state) == "lm":
        model = GPT(config=GPTConfig.from_dict(state["model_config"]))
    else:
        model = ViT(config=ViTConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states that training consumes (dropout): torch CPU, every CUDA device, Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def export_attention_weights(ckpt_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                             dtype: torch.dtype = torch.float32) -> Path:
    """Save only the attention layers of a trained checkpoint: a small file for analysis (e.g. the spectra of
    the trained tensors 𝒲, 𝒲̃ in the book's chapter 8).

    The file (``torch.load(path, weights_only=True)``) holds ``{"model_config": dict, "layers": [state_dict of
    block i's attention layer, ...], "source": str}`` with tensors in ``dtype``; rebuild a layer with
    ``tucker_attention.attention.build`` (or the model config) and ``load_state_dict``. Written atomically.
    """
    model = load_model(ckpt_path)
    state = load_checkpoint(ckpt_path)
    layers = [{k: v.detach().to(dtype).clone() for k, v in block.attn.state_dict().items()} for block in model.blocks]
    return save_checkpoint(out_path, {"model_config": state["model_config"], "layers": layers,
                                      "source": Path(ckpt_path).parent.name})
