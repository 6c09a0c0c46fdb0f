"""A report rendered by headless Chromium: every picture decodes and no script error occurs (``--dump-dom`` shows
the ``data-images``/``data-errors`` the report's own script records on load). Skipped without ``chromium``."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from jaxcam.report import Report
from jaxcam.table import Table
from jaxcam.viz import overlay, png_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="needs chromium on PATH (apt install chromium)")]


def _dump_dom(path, tmp_path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
           path.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _body(dom: str) -> dict:
    tag = re.search(r"<body\b[^>]*>", dom)
    assert tag is not None, dom[:500]
    return dict(re.findall(r'data-(images|errors)="([^"]*)"', tag.group(0)))


def _report() -> Report:
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3))
    cam = rng.random((7, 7))
    r = Report("Browser check <&>")
    r.section("Table").table(Table({"method": ["gradcam"], "rm": [0.25]}))
    r.section("Pictures")
    r.image(png_bytes(overlay(image, cam)), "an overlay")
    r.image(png_bytes((image * 255).astype(np.uint8)), "the image")
    return r


def test_every_picture_loads_without_script_errors(tmp_path):
    path = tmp_path / "report.html"
    _report().write(path)
    body = _body(_dump_dom(path, tmp_path))
    loaded, total = body["images"].split("/")
    assert loaded == total and int(total) >= 1 and body["images"] == "2/2"
    assert body["errors"] == "0"


def test_the_check_sees_a_broken_picture_and_a_script_error(tmp_path):
    """The counters are not constant: a PNG that does not decode and a throwing script are both reported."""
    html = _report().html()
    broken = '<img src="data:image/png;base64,iVBORw0KGgoAAAAAAAAAAAAA" alt="broken">'
    html = html.replace("</body>", f"{broken}<script>throw new Error('boom');</script></body>")
    path = tmp_path / "broken.html"
    path.write_text(html, encoding="utf-8")
    body = _body(_dump_dom(path, tmp_path))
    assert body == {"images": "2/3", "errors": "1"}
