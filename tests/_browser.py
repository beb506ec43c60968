"""Headless Chromium for the page tests (run report, leaderboard): screenshot, DOM and console errors.

CI installs the browser from the system packages (``apt-get install -y --no-install-recommends chromium``);
where no Chromium binary is installed, the browser tests skip with that install line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1000"]
CONSOLE = re.compile(r':CONSOLE[:(]\d+\)?\]\s*"(.*)", source: (.*)')


def chromium() -> str:
    """The browser binary, or a skip naming the install line."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium installed (apt-get install -y --no-install-recommends chromium)")


def render(page: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The DOM after the load event, and the page's console messages; a screenshot at 1400x1000."""
    url = page.resolve().as_uri()
    args = [chromium(), *FLAGS, "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [f"{m.group(1)} ({m.group(2)})" for m in CONSOLE.finditer(dom.stderr)]
    if screenshot is not None:
        shot = subprocess.run(
            [*args, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120
        )
        assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    return dom.stdout, console


def body_data(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes of <body> (the pages' own checks write their findings there)."""
    tag = re.search(r"<body([^>]*)>", dom)
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag.group(1) if tag else ""))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
