"""Small input checks shared by the attention layers.

Every message names the argument, the value it had and the rule it broke, so a user can fix the call
without reading the source (torchtune's style).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_int(name: str, value: object, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``; raise ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < low or (high is not None and value > high):
        rule = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rule}, got {name}={value}")
    return value


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def check_even(name: str, value: int, why: str) -> None:
    if value % 2 != 0:
        raise ValueError(f"{name}={value} must be even {why}")


def check_float(name: str, value: object, *, low: float, high: float, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {value!r} of type {type(value).__name__}")
    bad = value < low or value > high or (high_open and value == high)
    if bad:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {name}={value}")
    return float(value)


def check_ranks(name: str, ranks: object, limits: Sequence[int], limit_names: Sequence[str]) -> tuple[int, ...]:
    """Check a Tucker rank triple: three ints, ``1 <= r_k <= limits[k]``."""
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise TypeError(f"{name} must be a sequence of {len(limits)} ints, got {ranks!r}")
    if len(ranks) != len(limits):
        raise ValueError(f"{name} must have {len(limits)} entries (head, query/output, key/value ranks), "
                         f"got {len(ranks)}: {tuple(ranks)!r}")
    out = []
    for k, (r, lim, lim_name) in enumerate(zip(ranks, limits, limit_names)):
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"{name}[{k}] must be an int, got {r!r} of type {type(r).__name__}")
        if not 1 <= r <= lim:
            raise ValueError(f"{name}[{k}]={r} must be in [1, {lim_name}={lim}] (got {name}={tuple(ranks)})")
        out.append(int(r))
    return tuple(out)


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
