"""The built book, checked in a real browser (headless Chromium, offline).

For every page in ``_toc.yml``: it loads with the right title; where it has math, MathJax typeset
all of it (``mjx-container``, no raw ``\\(`` or ``$$`` left, no TeX errors); every image decoded;
every widget view rendered; every same-site link answers 200 (and its ``#anchor`` exists); no
display equation is wider than the text column (none is cut off); the browser console shows no error
from our own origin; and nothing was fetched from another origin (the site must not depend on a CDN).
Screenshots go to ``_build/screenshots/``: the top of chapter 3 and every figure of chapter 4
(``SCREENSHOTS``).

Run after ``jupyter-book build . -W --keep-going``:  ``TA_REQUIRE_SITE=1 pytest tests/site -q``.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOC = ROOT / "_toc.yml"
CONFIG = ROOT / "_config.yml"
#: Pages whose screenshots are saved: "top" = the first screen, "figures" = each output figure of the page.
SCREENSHOTS = {"book/03_tucker_attention_layer": "top", "book/04_special_cases": "figures"}
CDN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com")


# ---------------------------------------------------------------------------------------------
# What the TOC and the sources say


def _toc_files(node) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                out.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                out.extend(_toc_files(child))
    elif isinstance(node, list):
        for child in node:
            out.extend(_toc_files(child))
    return out


def toc_pages() -> list[str]:
    """Docnames (``book/intro``, ...) of every page in _toc.yml, in order."""
    files = _toc_files(yaml.safe_load(TOC.read_text("utf8")))
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


def book_title() -> str:
    return yaml.safe_load(CONFIG.read_text("utf8"))["title"]


def colab_url(docname: str) -> str:
    """The launch link a notebook page must have: the repository of ``_config.yml`` (its one home)."""
    config = yaml.safe_load(CONFIG.read_text("utf8"))
    repo = config["repository"]["url"].removeprefix("https://github.com/")
    branch = config["repository"].get("branch", "main")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{docname}.ipynb"


def source_of(docname: str) -> Path | None:
    for ext in (".ipynb", ".md"):
        p = ROOT / (docname + ext)
        if p.is_file():
            return p
    return None


def source_heading(docname: str) -> str | None:
    """The first level-1 heading of the page's source (markdown cells only for notebooks)."""
    src = source_of(docname)
    if src is None:
        return None
    if src.suffix == ".ipynb":
        nb = json.loads(src.read_text("utf8"))
        texts = [
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"]
            if c["cell_type"] == "markdown"
        ]
    else:
        texts = [re.sub(r"\A---\n.*?\n---\n", "", src.read_text("utf8"), flags=re.S)]
    in_fence = False
    for text in texts:
        for line in text.splitlines():
            if line.lstrip().startswith(("```", ":::")):
                in_fence = not in_fence
            if not in_fence and re.match(r"#\s+\S", line):
                return line[1:].strip()
    return None


def is_notebook(docname: str) -> bool:
    src = source_of(docname)
    return src is not None and src.suffix == ".ipynb"


PAGES = toc_pages()
NOTEBOOK_PAGES = [p for p in PAGES if is_notebook(p)]


# ---------------------------------------------------------------------------------------------
# Link checking against the local server (cached across pages)


@functools.cache
def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
            ctype = r.headers.get("Content-Type", "")
            text = body.decode("utf8", "replace") if "html" in ctype else ""
            return r.status, text
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        return -1, str(exc)


def _has_anchor(page_html: str, fragment: str) -> bool:
    frag = urllib.parse.unquote(fragment)
    pattern = rf"""\b(?:id|name)\s*=\s*["']{re.escape(html.escape(frag, quote=True))}["']"""
    return re.search(pattern, page_html) is not None or re.search(
        rf"""\b(?:id|name)\s*=\s*["']{re.escape(frag)}["']""", page_html
    ) is not None


# ---------------------------------------------------------------------------------------------
# In-browser probes

JS_MATHJAX_DONE = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done('absent'); return; }
MathJax.startup.promise.then(() => done('ok'), (e) => done('error: ' + e));
"""

JS_WIDGETS = """
const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
let rendered = 0;
for (const v of views) {
  const prev = v.previousElementSibling;
  if (prev && prev.classList.contains('widget-subarea') && prev.querySelector('.jupyter-widgets')) {
    rendered += 1;
  }
}
// widget labels with TeX ($...$) are typeset by MathJax 3 (through widgets-setup.js)
const rawMathLabels = Array.from(document.querySelectorAll('.widget-label, .widget-label-basic'))
  .filter((e) => {
    const c = e.cloneNode(true);
    c.querySelectorAll('mjx-container').forEach((m) => m.remove());
    return /\\$[^$]+\\$/.test(c.textContent);
  }).map((e) => e.textContent.slice(0, 60));
return {
  raw_math_labels: rawMathLabels,
  views: views.length,
  rendered: rendered,
  sliders: document.querySelectorAll('.widget-slider, .jupyter-widgets .slider').length,
  widgets: document.querySelectorAll('.jupyter-widgets').length,
  output_imgs: document.querySelectorAll(
    '.widget-output img, .jupyter-widgets-output-area img').length,
};
"""

JS_IMAGES_SETTLED = """
const imgs = Array.from(document.images);
for (const img of imgs) { if (img.loading === 'lazy') img.loading = 'eager'; }
return imgs.every((img) => img.complete);
"""

JS_IMAGES = """
return Array.from(document.images).map((img) => ({
  src: img.currentSrc || img.src, w: img.naturalWidth, h: img.naturalHeight, complete: img.complete,
}));
"""

JS_MATH = """
const math = Array.from(document.querySelectorAll('.math'));
const unrendered = math.filter((e) => !e.querySelector('mjx-container'))
                       .map((e) => e.textContent.trim().slice(0, 80));
const main = document.querySelector('main') || document.body;
const clone = main.cloneNode(true);
clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight, ' +
                       '.cell_input, .output, .widget-subarea').forEach((e) => e.remove());
const text = clone.textContent;
const raw = [];
for (const token of ['\\\\(', '\\\\[', '$$']) {
  const i = text.indexOf(token);
  if (i >= 0) raw.push(JSON.stringify(text.slice(Math.max(0, i - 40), i + 60)));
}
const undefinedMacros = Array.from(document.querySelectorAll('mjx-assistive-mml mtext'))
  .map((e) => e.textContent).filter((t) => /^\\\\[A-Za-z]+$/.test(t));
return {
  n_math: math.length,
  n_mjx: document.querySelectorAll('mjx-container').length,
  unrendered: unrendered,
  raw: raw,
  merror: document.querySelectorAll('mjx-merror').length,
  undefined_macros: undefinedMacros,
};
"""

JS_WIDE_MATH = """
// display equations wider than the column they sit in: the reader would see them cut off
const wide = [];
for (const c of document.querySelectorAll('mjx-container[display="true"]')) {
  const block = c.closest('div.math') || c.parentElement;
  const inner = c.querySelector('mjx-math');
  if (!block || !inner) continue;
  const need = inner.getBoundingClientRect().width;
  const have = block.clientWidth;
  if (need > have + 1 || c.scrollWidth > c.clientWidth + 1) {
    const label = block.querySelector('.eqno');
    wide.push({eq: label ? label.textContent.replace(/\\s+/g, ' ').trim() : '(unnumbered)',
               need: Math.round(need), have: Math.round(have),
               tex: (block.getAttribute('data-tex') || c.textContent || '').slice(0, 60)});
  }
}
const main = document.querySelector('main') || document.body;
return {wide: wide, n_display: document.querySelectorAll('mjx-container[display="true"]').length,
        column: Math.round((document.querySelector('article') || main).getBoundingClientRect().width)};
"""

JS_PAGE = """
const h1 = document.querySelector('main h1') || document.querySelector('h1');
let h1text = null;
if (h1) {
  const c = h1.cloneNode(true);
  c.querySelectorAll('.headerlink, .section-number').forEach((e) => e.remove());
  h1text = c.textContent.replace(/\\s+/g, ' ').trim();
}
const links = Array.from(document.querySelectorAll('a[href]')).map((a) => a.href);
const resources = performance.getEntriesByType('resource').map((r) => r.name);
return {title: document.title, h1: h1text, links: links, resources: resources,
        colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]'))
                    .map((a) => a.href)};
"""


def _wait_for(driver, js: str, done=bool, timeout: float = 60.0, poll: float = 0.25):
    """Run ``js`` until ``done(value)`` or ``timeout`` seconds; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(js)
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(poll)


def _save_full_page(driver, path: Path, max_height: int = 16000) -> None:
    """Screenshot of the whole page (up to max_height CSS pixels), via the DevTools protocol."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": int(size["width"]),
            "height": int(min(size["height"], max_height)), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def _save_screenshots(driver, page: str, kind: str, directory: Path) -> list[Path]:
    """``kind`` "top": the first screen of ``page``; "figures": each output figure, one file per figure."""
    from selenium.webdriver.common.by import By

    stem = page.replace("/", "_")
    if kind == "top":
        driver.execute_script("window.scrollTo(0, 0);")
        path = directory / f"{stem}_top.png"
        driver.save_screenshot(str(path))
        return [path]
    paths = []
    size = driver.get_window_size()
    try:
        for k, img in enumerate(driver.find_elements(By.CSS_SELECTOR, ".cell_output img, .widget-subarea img")):
            height = driver.execute_script("return arguments[0].getBoundingClientRect().height;", img)
            # a window taller than the figure, so that the element screenshot holds all of it
            driver.set_window_size(size["width"], max(size["height"], int(height) + 300))
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
            path = directory / f"{stem}_figure{k + 1}.png"
            img.screenshot(str(path))
            paths.append(path)
    finally:
        driver.set_window_size(size["width"], size["height"])
    return paths


def _own_origin_errors(logs: list[dict], origin: str) -> list[str]:
    errors = []
    for entry in logs:
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        if origin not in msg:
            continue
        # Chromium asks every site for /favicon.ico; the book has no favicon configured.
        if f"{origin}/favicon.ico" in msg:
            continue
        errors.append(msg)
    return errors


# ---------------------------------------------------------------------------------------------
# Tests


def test_toc_pages_are_built(site_dir):
    missing = [p for p in PAGES if not (site_dir / f"{p}.html").is_file()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"
    assert (site_dir / "index.html").is_file()
    assert set(SCREENSHOTS) <= set(PAGES), f"screenshot pages missing from the TOC: {set(SCREENSHOTS) - set(PAGES)}"


def test_no_cdn_scripts_in_html(site_dir):
    """MathJax, require.js and the widget manager come from _static/, never from a CDN."""
    bad, missing = [], []
    src_re = re.compile(r"""<script[^>]*\bsrc\s*=\s*["']([^"']+)["']""", re.I)
    n_math = n_widgets = 0
    for page in sorted(site_dir.rglob("*.html")):
        text = page.read_text("utf8", "replace")
        srcs = src_re.findall(text)
        bad += [f"{page.relative_to(site_dir)}: {src}" for src in srcs
                if "://" in src or src.startswith("//")]
        needles = []
        if 'class="math' in text:
            n_math += 1
            needles.append("_static/mathjax-")
        if 'type="application/vnd.jupyter.widget-view+json"' in text:
            n_widgets += 1
            needles += ["_static/requirejs-", "_static/widgets-setup.js", "_static/html-manager-"]
        missing += [f"{page.relative_to(site_dir)}: no {needle}" for needle in needles
                    if not any(needle in src for src in srcs)]
    assert not bad, "script tags loading from another origin:\n" + "\n".join(bad)
    assert not missing, "pages without their vendored scripts:\n" + "\n".join(missing)
    assert n_math > 0, "no page of the site has math: is dollarmath enabled?"


@pytest.mark.parametrize("page", PAGES)
def test_page(page, site_dir, browser, site_url, screenshot_dir):
    url = urllib.parse.urljoin(site_url, f"{page}.html")
    origin = site_url.rstrip("/")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(url)
    _wait_for(browser, "return document.readyState === 'complete';", timeout=60)

    problems: list[str] = []
    mathjax = browser.execute_async_script(JS_MATHJAX_DONE)
    if mathjax.startswith("error"):
        problems.append(f"MathJax failed: {mathjax}")

    html_src = _fetch(url)[1]
    n_views = html_src.count('type="application/vnd.jupyter.widget-view+json"')
    widgets = _wait_for(
        browser, JS_WIDGETS, lambda w: w["rendered"] >= n_views, timeout=90 if n_views else 0
    )
    _wait_for(browser, JS_IMAGES_SETTLED, timeout=60)
    images = browser.execute_script(JS_IMAGES)
    math = browser.execute_script(JS_MATH)
    wide_math = browser.execute_script(JS_WIDE_MATH)
    info = browser.execute_script(JS_PAGE)
    logs = browser.get_log("browser")

    stem = page.replace("/", "_")
    if page in SCREENSHOTS:
        shots = _save_screenshots(browser, page, SCREENSHOTS[page], screenshot_dir)
        if not shots:
            problems.append(f"no screenshot taken of {page} ({SCREENSHOTS[page]})")
        for shot in shots:
            if not (shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"):
                problems.append(f"screenshot {shot} was not written")

    # -- title: "<n. >Heading — Book title"
    title_suffix = f" \u2014 {book_title()}"
    if not info["title"].endswith(title_suffix):
        problems.append(f"title {info['title']!r} does not end with {title_suffix!r}")
    if not info["h1"]:
        problems.append("page has no <h1>")
    else:
        if not info["title"].startswith(info["h1"]) and not re.match(
            r"^\d+(\.\d+)*\.?\s" + re.escape(info["h1"]), info["title"]
        ):
            problems.append(f"title {info['title']!r} does not match the h1 {info['h1']!r}")
        heading = source_heading(page)
        if heading and not re.search(r"[$`{}*_\[\]\\<]", heading) and info["h1"] != heading:
            problems.append(f"h1 {info['h1']!r} differs from the source heading {heading!r}")

    # -- math
    if math["n_math"]:
        if mathjax != "ok":
            problems.append(f"page has {math['n_math']} math elements but MathJax is {mathjax}")
        if math["n_mjx"] == 0:
            problems.append("MathJax produced no mjx-container")
        if math["unrendered"]:
            problems.append(f"math not typeset: {math['unrendered'][:5]}")
        if math["merror"]:
            problems.append(f"{math['merror']} MathJax errors (mjx-merror)")
        if math["undefined_macros"]:
            problems.append(f"undefined TeX macros: {sorted(set(math['undefined_macros']))}")
    if math["raw"]:
        problems.append(f"raw TeX delimiters left in the text: {math['raw']}")
    for eq in wide_math["wide"]:
        problems.append(f"display equation {eq['eq']} is cut off: {eq['need']} px wide in a {eq['have']} px "
                        f"column (break it with aligned/split): {eq['tex']!r}")

    # -- images
    for img in images:
        if not img["complete"] or img["w"] <= 0:
            problems.append(f"image not decoded: {img['src'][:120]} ({img})")

    # -- widgets
    if n_views:
        if widgets["rendered"] < n_views:
            problems.append(f"widgets: {widgets['rendered']}/{n_views} views rendered ({widgets})")
        if widgets["raw_math_labels"]:
            problems.append(f"widget labels with untypeset TeX: {widgets['raw_math_labels']}")
        if widgets["widgets"] == 0:
            problems.append("no .jupyter-widgets element on a page with widget views")
        state = re.search(
            r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>',
            html_src,
            re.S,
        )
        if state and '"image/png"' in state.group(1) and widgets["output_imgs"] == 0:
            problems.append("widget state holds a plot, but no image shows in a widget output")

    # -- notebook pages: a Colab launch link to this notebook in _config.yml's repository
    if is_notebook(page):
        want = colab_url(page)
        if not any(link == want for link in info["colab"]):
            problems.append(f"no Colab link {want!r} (got {info['colab']})")

    # -- same-site links resolve (and their #anchors exist)
    for link in sorted(set(info["links"])):
        parsed = urllib.parse.urlsplit(link)
        if f"{parsed.scheme}://{parsed.netloc}" != origin:
            continue
        target = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path, "", ""))
        status, body = _fetch(target)
        if status != 200:
            problems.append(f"link {link} -> HTTP {status}")
        elif parsed.fragment and body and not _has_anchor(body, parsed.fragment):
            problems.append(f"link {link}: no element with id {parsed.fragment!r}")

    # -- offline: nothing requested from another origin; no console errors of our own
    foreign = [r for r in info["resources"] if not r.startswith((origin, "data:", "blob:"))]
    if foreign:
        problems.append(f"resources from other origins (a CDN?): {foreign}")
    cdn_errors = [e["message"] for e in logs if any(h in e.get("message", "") for h in CDN_HOSTS)]
    if cdn_errors:
        problems.append(f"console mentions a CDN: {cdn_errors}")
    own = _own_origin_errors(logs, origin)
    if own:
        problems.append("console SEVERE errors from our origin:\n  " + "\n  ".join(own))

    if problems:
        _save_full_page(browser, screenshot_dir / f"FAILED-{stem}.png")
    assert not problems, f"{page}: " + "\n".join(problems)

