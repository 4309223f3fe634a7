"""The HTML report in a real headless browser (Debian's `chromium`, installed by .ci/browser-deps.sh).

Checks: the page loads with no console message at all (the report has no scripts, so any console
line -- a CSP violation, a blocked fetch, a broken image -- is an error), the DOM holds the
summary table and one decoded <img> per plot, and the screenshot shows the plots (pixels of the
plots' marker colour). A control page with a console error proves the console check can fail.
Skipped, saying why, when chromium is not on the PATH.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not on the PATH: run `bash .ci/browser-deps.sh` "
           "(apt-get install -y chromium) to enable the headless-browser check of the HTML report")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]
PLOT_BLUE = (0x1F, 0x4E, 0x9C)  # reports.plots draws data points in this colour


def chromium(url: str, *extra: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *extra, url],
                          capture_output=True, text=True, timeout=120, check=False)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_check_catches_an_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); nosuch();</script></body></html>")
    r = chromium(page.as_uri(), "--dump-dom", tmp=tmp_path)
    lines = console_lines(r.stderr)
    assert any("boom" in line for line in lines) and any("nosuch" in line for line in lines), r.stderr[-2000:]


def test_report_loads_cleanly_and_shows_summary_and_plots(tmp_path):
    from PIL import Image

    from dcr.analysis.engine import compute_verdict
    from dcr.reports.render import render_report
    from test_reports_render import DELTAS, make_lock, write_data

    lock, sha = make_lock(tmp_path / "plan")
    data = write_data(tmp_path / "data", sha, DELTAS)
    html = render_report(compute_verdict(lock, data), tmp_path / "rep", data_dir=data, lock_path=lock)

    dom = chromium(html.as_uri(), "--dump-dom", tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_lines(dom.stderr) == [], console_lines(dom.stderr)
    assert 'id="summary-table"' in dom.stdout and "H_quality" in dom.stdout
    n_plots = dom.stdout.count('src="data:image/png;base64,')
    assert n_plots == 2
    assert "<script" not in dom.stdout.lower()  # the plan's <script> stayed text

    shot = tmp_path / "shot.png"
    r = chromium(html.as_uri(), f"--screenshot={shot}", "--window-size=1100,2200", tmp=tmp_path)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert console_lines(r.stderr) == []
    img = Image.open(shot).convert("RGB")
    assert img.size == (1100, 2200)
    px = img.load()
    w, h = img.size
    blue_rows = [y for y in range(0, h, 2) if any(
        all(abs(a - b) <= 6 for a, b in zip(px[x, y], PLOT_BLUE)) for x in range(0, w, 2))]
    # The plots (and their points) lie below the summary table and above 2200 px.
    assert len(blue_rows) > 20, "no plot pixels in the screenshot"
    header_dark = sum(1 for x in range(0, w, 2) for y in range(0, 200, 2) if sum(px[x, y]) < 150)
    assert header_dark > 100, "the title and summary do not appear at the top of the screenshot"
    shutil.copy(shot, tmp_path / "report-screenshot.png")
