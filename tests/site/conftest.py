"""Fixtures for the real-browser checks of the built book (``_build/html``).

- ``site_dir``: the built site; skips when it is missing, unless ``TA_REQUIRE_SITE=1`` (CI): then
  it fails.
- ``site_url``: ``python -m http.server --bind 127.0.0.1`` on a free port, serving ``site_dir``;
  stopped at teardown.
- ``browser``: Debian's headless Chromium driven by selenium through ``/usr/bin/chromedriver``,
  fully offline (``SE_OFFLINE=true``; every host name except 127.0.0.1 fails to resolve).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE_DIR = ROOT / "_build" / "html"
SCREENSHOT_DIR = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _required() -> bool:
    return os.environ.get("TA_REQUIRE_SITE") == "1"


def _skip_or_fail(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} (TA_REQUIRE_SITE=1, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def site_dir() -> Path:
    if not (SITE_DIR / "index.html").is_file():
        _skip_or_fail(
            f"no built site at {SITE_DIR}: run `jupyter-book build . -W --keep-going` first"
        )
    return SITE_DIR


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def site_url(site_dir: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(site_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "index.html", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None:
                pytest.fail(f"http.server exited with code {proc.returncode} (port {port})")
            if time.monotonic() > deadline:
                pytest.fail(f"http.server did not answer on {base} within 30 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser(site_url: str):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # pragma: no cover - depends on the environment
        _skip_or_fail(f"selenium is not installed: {exc}")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            _skip_or_fail(
                f"{path} not found: `apt-get install -y chromium chromium-driver` to run the "
                "browser checks"
            )
    # Selenium Manager must not try the network to find a driver.
    os.environ["SE_OFFLINE"] = "true"

    profile = tempfile.mkdtemp(prefix="ta-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
        # Offline for real, even on a machine that has internet: only the local server resolves,
        # so anything the site tried to load from a CDN would fail (and fail the checks).
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})

    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR
