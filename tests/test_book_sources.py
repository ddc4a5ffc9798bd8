"""The chapters' sources follow the book's rules (checked without executing anything).

- The repository URL has one home, ``_config.yml``'s ``repository.url``; each chapter's setup cell installs
  from that same URL on Colab (``book/_ext/set_repository.py`` changes both).
- Readers only have the book: no chapter or README points to ``PAPER.md`` or other repository files.
- Notebooks are committed without outputs; code lines are at most 90 characters (readable on the site).
- Every chapter opens with learning goals; its setup cell is folded away after the first chapter; exercises
  come with hints and with solutions that run (code cells folded with the ``hide-cell`` tag).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text("utf8"))
MAX_CODE_LINE = 90


def _toc_files(node) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        out += [node[k] for k in ("root", "file") if isinstance(node.get(k), str)]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                out += _toc_files(child)
    return out


TOC = _toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text("utf8")))
CHAPTERS = sorted(p for p in (ROOT / f"{f}.ipynb" for f in TOC) if p.is_file())
PAGES = CHAPTERS + sorted(p for p in (ROOT / f"{f}.md" for f in TOC) if p.is_file())


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text("utf8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def setup_cell(path: Path) -> tuple[int, dict]:
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] == "code":
            return i, cell
    raise AssertionError(f"{path.name} has no code cell")


def test_repository_url_lives_in_config():
    url = CONFIG["repository"]["url"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    assert CONFIG["html"]["use_repository_button"] and CONFIG["launch_buttons"]["colab_url"]
    readme = (ROOT / "README.md").read_text("utf8")
    assert "set_repository.py" in readme and "repository.url" in readme   # how a publisher sets it


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_setup_cell_installs_from_the_configured_repository(path):
    url = CONFIG["repository"]["url"]
    text = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "code")
    literal = re.findall(r'REPOSITORY = "([^"]*)"', text)
    hard_coded = re.findall(r"git\+(https?://[^\s\"']+)", text)
    assert literal or hard_coded, f"{path.name}: no Colab install of the package"
    for found in literal + hard_coded:
        assert found == url, f"{path.name} installs from {found}, but _config.yml's repository.url is {url}"


def test_set_repository_rewrites_config_and_chapters(tmp_path):
    spec = importlib.util.spec_from_file_location("set_repository", ROOT / "book" / "_ext" / "set_repository.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text("title: x\nrepository:\n  url: https://github.com/a/b\n  branch: main\n")
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": ['REPOSITORY = "https://github.com/a/b"\n',
                                                                       "print(REPOSITORY)"]}]}
    (tmp_path / "book" / "01_x.ipynb").write_text(json.dumps(nb))
    changed = mod.set_repository("https://github.com/me/fork", tmp_path)
    assert len(changed) == 2
    assert "url: https://github.com/me/fork\n  branch: main" in (tmp_path / "_config.yml").read_text()
    cell = json.loads((tmp_path / "book" / "01_x.ipynb").read_text())["cells"][0]
    assert cell["source"] == ['REPOSITORY = "https://github.com/me/fork"\n', "print(REPOSITORY)"]
    with pytest.raises(ValueError, match="OWNER/NAME"):
        mod.set_repository("https://github.com/me/fork.git/", tmp_path)


@pytest.mark.parametrize("path", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_no_pointers_to_files_readers_do_not_have(path):
    text = path.read_text("utf8")
    assert "PAPER.md" not in text, f"{path.name} points readers to PAPER.md: cite the paper's sections instead"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_short_code_lines(path):
    long_lines = []
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} cell {i} has outputs"
        long_lines += [f"cell {i}: {line}" for line in source(cell).splitlines() if len(line) > MAX_CODE_LINE]
    assert not long_lines, f"{path.name}: code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long_lines)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_with_learning_goals_and_folds_its_setup(path):
    i, cell = setup_cell(path)
    before = "\n".join(source(c) for c in cells(path)[:i] if c["cell_type"] == "markdown")
    assert re.search(r"learning goals", before, re.I), f"{path.name}: no learning goals before the first code cell"
    if path != CHAPTERS[0]:
        assert "hide-input" in tags(cell), f"{path.name}: the setup cell should carry the hide-input tag"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_exercises_have_hints_and_solutions_that_run(path):
    nb = cells(path)
    start = next((i for i, c in enumerate(nb) if c["cell_type"] == "markdown"
                  and re.search(r"^## Exercises", source(c), re.M)), None)
    if start is None:
        pytest.skip(f"{path.name} has no exercises")
    rest = nb[start:]
    exercises = re.findall(r"^\*\*Exercise \d+", "\n".join(source(c) for c in rest if c["cell_type"] == "markdown"),
                           re.M)
    hints = sum(source(c).count(":class: dropdown") for c in rest if c["cell_type"] == "markdown")
    solutions = [c for c in rest if c["cell_type"] == "code"]
    assert exercises, f"{path.name}: exercises should be headed **Exercise n ...**"
    assert hints >= len(exercises), f"{path.name}: {len(exercises)} exercises but {hints} hint dropdowns"
    assert len(solutions) >= len(exercises), f"{path.name}: {len(exercises)} exercises, {len(solutions)} solutions"
    assert all("hide-cell" in tags(c) for c in solutions), f"{path.name}: fold solutions with the hide-cell tag"
