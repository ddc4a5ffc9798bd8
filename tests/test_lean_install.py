"""``pip install tucker-attention`` is lean: the package works without the book's matplotlib and ipywidgets.

They are in the ``book`` extra (pyproject.toml). A fresh interpreter with an import blocker for them imports the
package and every core submodule, builds and runs a layer; only ``tucker_attention.book``'s drawing needs them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("matplotlib", "ipywidgets")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not installed)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                      "OMP_NUM_THREADS": "1"})


def test_core_package_imports_and_runs_without_book_dependencies():
    proc = _run("""
        import importlib, pkgutil, sys
        import torch
        import tucker_attention as ta

        core = ["tucker_attention.attention", "tucker_attention.models", "tucker_attention.train",
                "tucker_attention.data"]
        names = []
        for pkg in core:
            mod = importlib.import_module(pkg)
            names.append(pkg)
            for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        for name in ("analysis", "convert", "counting", "tensors", "cli", "book"):   # book draws lazily
            importlib.import_module(f"tucker_attention.{name}")
        layer = ta.TuckerAttention(32, 4, ranks=(2, 8, 8), rope=True)
        y = layer(torch.randn(1, 5, 32), causal=True)
        assert y.shape == (1, 5, 32)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("matplotlib", "ipywidgets"))
        assert not leaked, leaked
        print("imported", len(names), "modules")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported" in proc.stdout


def test_the_blocker_really_blocks():
    """Without this, the test above could pass because the blocker does nothing."""
    proc = _run("import matplotlib.pyplot")
    assert proc.returncode != 0 and "blocked: not installed" in proc.stderr


def test_book_dependencies_are_only_in_the_book_extra():
    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text("utf8"))["project"]
    core = {d.split(">")[0].split("=")[0].split(";")[0].strip() for d in meta["dependencies"]}
    book = {d.split(">")[0].split("=")[0].split(";")[0].strip() for d in meta["optional-dependencies"]["book"]}
    assert not core & set(BLOCKED), f"core dependencies must not include {set(BLOCKED)}: {sorted(core)}"
    assert set(BLOCKED) <= book
    assert "kernels" in meta["optional-dependencies"]
    requirements = (ROOT / "requirements.txt").read_text("utf8")
    extras_line = next(line for line in requirements.splitlines() if line.startswith("-e ."))
    for extra in ("book", "test", "kernels"):
        assert extra in extras_line, f"requirements.txt must install the {extra!r} extra: {extras_line}"
