"""The README's example runs as written, and every number it states (``# -> value``) is computed, not typed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STATED = re.compile(r"#\s*->\s*(\S+)")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def stated_values(block: str) -> list[tuple[int, str, str]]:
    """``(line, expression source, stated value)`` of each top-level expression with a ``# -> value`` comment."""
    lines = block.splitlines()
    out = []
    for node in ast.parse(block).body:
        if isinstance(node, ast.Expr):
            match = STATED.search(lines[node.end_lineno - 1])
            if match:
                out.append((node.lineno, ast.get_source_segment(block, node), match.group(1)))
    return out


def test_stated_values_are_found():
    block = "x = 2\nx + 1   # -> 3  (three)\nx * 1\nprint(x)  # -> 2\n"
    assert stated_values(block) == [(2, "x + 1", "3"), (4, "print(x)", "2")]


def test_readme_example_runs_and_its_numbers_are_computed():
    torch.manual_seed(0)
    blocks = python_blocks((ROOT / "README.md").read_text("utf8"))
    assert blocks, "README.md has no ```python block"
    checked = 0
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)           # the block runs as written
        for line, expr, want in stated_values(block):
            got = eval(expr, namespace)
            assert str(got) == want, f"README line {line} of its block: {expr} is {got}, the README says {want}"
            checked += 1
    assert checked >= 4, f"expected the README to state at least 4 computed numbers, found {checked}"


@pytest.mark.parametrize("name", ["Makefile", ".ci/run"])
def test_quick_start_targets_exist(name):
    """The quick start's two commands are make targets, and CI calls the same ones."""
    readme = (ROOT / "README.md").read_text("utf8")
    quick = readme[readme.index("## Quick start"):readme.index("## Use the package")]
    commands = re.findall(r"^make (\w+)", quick, flags=re.M)
    assert commands[:2] == ["book", "test"], commands
    text = (ROOT / name).read_text("utf8")
    for target in ("book", "test"):
        assert re.search(rf"^{target}:" if name == "Makefile" else rf"make\b.*\b{target}\b", text, flags=re.M), \
            f"{name} has no {target!r} target/call"
