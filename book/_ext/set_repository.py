"""Set the book's repository URL in its one place, ``_config.yml``'s ``repository.url``, and in every chapter.

The site's launch buttons (Colab) read ``repository.url``; each chapter's first cell holds the same URL in
``REPOSITORY = "..."`` to install the package from it on Colab (a notebook opened in Colab cannot read the
book's configuration). ``tests/test_book_sources.py`` checks that they agree.

Usage (from the repository root):  python book/_ext/set_repository.py https://github.com/OWNER/NAME
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
URL = re.compile(r"^https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
CONFIG_URL = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)", re.M)
CELL_URL = re.compile(r'^(REPOSITORY = ")([^"]*)(")', re.M)


def set_repository(url: str, root: Path = ROOT) -> list[Path]:
    """Write ``url`` into ``root/_config.yml`` and every ``root/book/*.ipynb`` setup cell; return changed files."""
    if not URL.match(url):
        raise ValueError(f"url must look like https://github.com/OWNER/NAME (no trailing slash or .git), got {url!r}")
    changed = []
    config = root / "_config.yml"
    text = config.read_text("utf8")
    new, n = CONFIG_URL.subn(lambda m: m.group(1) + url, text)
    if n != 1:
        raise ValueError(f"{config} must have exactly one `repository: url:` entry, found {n}")
    if new != text:
        config.write_text(new, "utf8")
        changed.append(config)
    for path in sorted((root / "book").glob("*.ipynb")):
        nb = json.loads(path.read_text("utf8"))
        hit = False
        for cell in nb["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and CELL_URL.search(src):
                lines = CELL_URL.sub(lambda m: m.group(1) + url + m.group(3), src).split("\n")
                cell["source"] = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
                hit = True
        if hit:
            out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
            if out != path.read_text("utf8"):
                path.write_text(out, "utf8")
                changed.append(path)
    return changed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for p in set_repository(sys.argv[1]):
        print("updated", p.relative_to(ROOT))
