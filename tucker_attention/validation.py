"""Argument checks shared by the whole package (layers, configs, training, data).

Every message names the argument, the value it had and the rule it broke, so a user can fix the call
without reading the source (torchtune's style). Integers may be any integer type — Python ``int``,
NumPy integers, 0-d integer tensors (anything with ``__index__``) — but not ``bool``; they come back
as ``int``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

__all__ = ["as_int_tuple", "check_bool", "check_choice", "check_divisible", "check_even", "check_float", "check_int",
           "check_ranks"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def check_int(name: str, value: Any, *, low: int = 1, high: int | None = None, high_name: str | None = None) -> int:
    """``int(value)`` if it is an integer in ``[low, high]``; ``TypeError`` / ``ValueError`` otherwise.
    ``high_name`` names where the upper limit comes from (e.g. "d_model")."""
    try:
        if _is_bool(value):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}") from None
    if out < low or (high is not None and out > high):
        top = high if high_name is None else f"{high_name}={high}"
        rule = f">= {low}" if high is None else f"in [{low}, {top}]"
        raise ValueError(f"{name} must be an int {rule}, got {name}={out}")
    return out


def check_float(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if it is a finite real number in the interval (closed unless ``*_open``)."""
    if _is_bool(value) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a float, got {value!r} of type {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    too_low = out < low or (low_open and out == low)
    too_high = out > high or (high_open and out == high)
    if too_low or too_high:
        if high == math.inf:
            rule = f"{'>' if low_open else '>='} {low}"
        elif low == -math.inf:
            rule = f"{'<' if high_open else '<='} {high}"
        else:
            rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {rule}, got {name}={value!r}")
    return out


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {name}={value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (a ``TypeError`` when all choices are str and it is not)."""
    if any(type(value) is type(c) and value == c for c in choices):    # 1 is not True, 0.0 is not 0
        return value
    if all(isinstance(c, str) for c in choices) and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(choices)}, got {name}={value!r}")
    raise ValueError(f"{name} must be one of {list(choices)}, got {name}={value!r}")


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def check_even(name: str, value: int, why: str) -> None:
    if value % 2 != 0:
        raise ValueError(f"{name}={value} must be even {why}")


def as_int_tuple(name: str, value: Any, n: int, *, low: int | None = None) -> tuple[int, ...]:
    """``n`` integers (each ``>= low`` if given) from any integer sequence (tuple, list, NumPy array, 1-D
    tensor), as a tuple of ints."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of {n} ints like (8, 64, 64), got {name}={value!r}")
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(values)}: {name}={value!r}")
    return tuple(check_int(f"{name}[{k}]", v, low=-math.inf if low is None else low) for k, v in enumerate(values))


def check_ranks(name: str, ranks: Any, limits: Sequence[int], limit_names: Sequence[str]) -> tuple[int, ...]:
    """Tucker ranks: ``len(limits)`` integers (any integer sequence) with ``1 <= r_k <= limits[k]``."""
    out = as_int_tuple(name, ranks, len(limits))
    for k, (r, lim, lim_name) in enumerate(zip(out, limits, limit_names)):
        if not 1 <= r <= lim:
            raise ValueError(f"{name}[{k}]={r} must be in [1, {lim_name}={lim}] (got {name}={out})")
    return out
