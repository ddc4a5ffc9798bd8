"""The attention layers' call checks (input ``x``, ``positions``); argument checks live in
:mod:`tucker_attention.validation` and are re-exported here for the layers."""

from __future__ import annotations

import torch

from ..validation import check_bool, check_choice, check_divisible, check_even, check_float, check_int, check_ranks

__all__ = ["check_bool", "check_choice", "check_divisible", "check_even", "check_float", "check_input", "check_int",
           "check_positions", "check_ranks"]


def check_input(x: object, d_model: int, *, param: torch.Tensor | None = None) -> torch.Tensor:
    """Check a layer input ``x`` of shape (batch, seq, d_model) with a dtype/device matching the weights."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, seq, d_model), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (batch, seq, d_model={d_model}), got x.shape={tuple(x.shape)}")
    if x.shape[1] == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch and sequence, got x.shape={tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got x.dtype={x.dtype}")
    if param is not None:
        if x.device != param.device:
            raise ValueError(f"x is on device {x.device} but the layer's weights are on {param.device}; "
                             "move one of them (layer.to(x.device))")
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x.dtype={x.dtype} differs from the layer's weight dtype {param.dtype}; "
                            "cast one of them or run under torch.autocast")
    return x


def check_positions(positions: object, seq_len: int, max_seq_len: int, *, values: bool = True) -> torch.Tensor:
    """Check ``positions``: a 1-D integer tensor of length ``seq_len`` with values in [0, max_seq_len)."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a 1-D integer torch.Tensor, got {type(positions).__name__}")
    if positions.dim() != 1 or positions.shape[0] != seq_len:
        raise ValueError(f"positions must be 1-D with length seq_len={seq_len}, "
                         f"got positions.shape={tuple(positions.shape)}")
    if positions.is_floating_point() or positions.dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor, got positions.dtype={positions.dtype}")
    if values and positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= max_seq_len):
        raise ValueError(f"positions must lie in [0, max_seq_len={max_seq_len}), got min={int(positions.min())}, "
                         f"max={int(positions.max())}")
    return positions
