"""Provenance of a recorded result: which code (git commit), which command, seed and device produced it.

One place for it: sweep records, every training run's ``config.json`` and ``metrics.jsonl`` header, and the
benchmark suite's records all carry :func:`provenance`'s fields, so any recorded file says where it came from.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["device_name", "git_commit", "provenance"]


def git_commit(path: str | os.PathLike[str] | None = None) -> tuple[str, bool | None]:
    """``(git rev-parse HEAD, dirty?)`` of the repository holding ``path`` (default: this package), or
    ``("unknown", None)`` outside a git checkout. Dirty: modified or untracked (not ignored) files."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown", None
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True,
                                timeout=10)
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def device_name(device: str | torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU model (Linux) or the platform's processor."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def provenance(*, device: str | torch.device, seed: int | None = None,
               command: Sequence[str] | str | None = None) -> dict[str, Any]:
    """``git_commit, git_dirty, command, seed, device, device_name, torch_version, python_version, threads,
    time`` of a result produced now (``command`` defaults to ``sys.argv``)."""
    commit, dirty = git_commit()
    return {"git_commit": commit, "git_dirty": dirty,
            "command": list(sys.argv if command is None else [command] if isinstance(command, str) else command),
            "seed": seed, "device": str(device), "device_name": device_name(device),
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
