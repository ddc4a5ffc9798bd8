"""Atomic checkpoints that resume bit-exactly, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only (no pickled classes), so it loads with
``weights_only=True`` — safe to open from an untrusted source:

    {"format": 1, "kind": "gpt" | "vit", "step": int,
     "model": state_dict, "optimizer": state_dict, "scaler": state_dict | None,
     "model_config": dict, "train_config": dict,
     "rng": [per-rank {"torch": ByteTensor, "cuda": [ByteTensor, ...], "python": tuple}],
     "data": [per-rank data-sampler state], "metrics": dict}

Writing goes to a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``-d over
the old file: a crash mid-save leaves the previous checkpoint intact (``os.replace`` is atomic on POSIX
and Windows when both paths are on one file system, which the same folder guarantees).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "capture_rng_state", "export_attention_weights", "load_checkpoint",
           "load_model",
           "restore_rng_state", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "ckpt.pt"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a tucker_attention checkpoint of format {CHECKPOINT_FORMAT} "
                         f"(format={state.get('format') if isinstance(state, dict) else None!r})")
    return state


def load_model(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> torch.nn.Module:
    """The trained model stored in a checkpoint (``GPT`` or ``ViT``, in eval mode)."""
    from ..models import GPT, GPTConfig, ViT, ViTConfig

    state = load_checkpoint(path, map_location=map_location)
    if state["kind"] == "gpt":
        model = GPT(config=GPTConfig.from_dict(state["model_config"]))
    elif state["kind"] == "vit":
        model = ViT(config=ViTConfig.from_dict(state["model_config"]))
    else:
        raise ValueError(f"unknown model kind {state['kind']!r} in {str(path)!r}")
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
