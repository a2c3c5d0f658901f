"""Open built HTML pages from disk in headless Chromium with the network blocked (helpers of test_slides.py and
test_site.py; the browser itself is labdriver's `chromium()`).

Every request that is not file://, data:, blob: or loopback is aborted and recorded: a page that asks for one
fails its test. Also records page errors (uncaught exceptions) and console errors.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))
import labdriver as lab  # noqa: E402

LOCAL_SCHEMES = ("file", "data", "blob", "about")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


@dataclass
class Visit:
    """What one page did while it loaded."""

    url: str
    outside: list[str] = field(default_factory=list)  # requests that would have left the machine (aborted)
    failed: list[str] = field(default_factory=list)  # local requests that failed (a missing file)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def is_local(url: str) -> bool:
    u = urlparse(url)
    return u.scheme in LOCAL_SCHEMES or (u.hostname or "") in LOOPBACK


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None when they can); under CI=true they fail instead of skipping."""
    if not lab.CHROMIUM.exists():
        why = f"needs Chromium at {lab.CHROMIUM}: {lab.INSTALL_HINT}"
    else:
        try:
            import playwright.sync_api  # noqa: F401
            return None
        except ImportError:
            why = "needs Playwright for Python: pip install -e '.[all]'"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{why} (CI=true)")
    pytest.skip(why)


def build(what: str, out: Path) -> str:
    """Run scripts/build_site.py `what` into `out`; returns its output (fails the test with it on error). Without
    site/node_modules and without npm to install it, skips (fails under CI=true)."""
    marker = REPO / "site" / "node_modules" / "reveal.js" / "dist" / "reveal.js"
    if not marker.exists() and shutil.which("npm") is None:
        why = "building slides or the site needs npm to install site/node_modules: sudo apt-get install npm"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{why} (CI=true)")
        pytest.skip(why)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_site.py"), what, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"build_site.py {what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


@contextmanager
def offline_page(browser, url: str, visit: Visit, *, viewport=(1280, 900)):
    """A page on `url` with every non-local request aborted and recorded in `visit`."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, service_workers="block")

    def route(r):
        if is_local(r.request.url):
            r.continue_()
        else:
            visit.outside.append(r.request.url)
            r.abort("blockedbyclient")

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda req: None if is_local(req.url) else visit.outside.append(req.url))
    page.on("requestfailed", lambda req: visit.failed.append(f"{req.url} ({req.failure})") if is_local(req.url)
            else None)
    page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
    page.on("console", lambda m: visit.console_errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url, wait_until="load", timeout=60000)
        yield page
    finally:
        context.close()


def problems(visit: Visit) -> list[str]:
    out = [f"request left the machine: {u}" for u in sorted(set(visit.outside))]
    out += [f"local file failed to load: {u}" for u in visit.failed]
    out += [f"page error: {e[:300]}" for e in visit.page_errors]
    return out
