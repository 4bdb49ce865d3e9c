"""``refimpl compare --report``: one self-contained page, rendered in a real headless browser
(chromium; skipped where none is installed): it renders, holds the error-by-depth plot and
the culprit's row, and loads nothing from the network."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from _ports import lilt_case, port_dump, recipe, relu_lilt

from refimpl.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# what the page itself fetched (Resource Timing lists every image, script, style sheet, font
# and fetch of the document), and what it rendered, written where --dump-dom shows it
PROBE = """<script>
window.addEventListener('load', function () {
  var svg = document.querySelector('#depth-plot svg'), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  var culprit = document.querySelector('#tensors tr.culprit');
  var out = {resources: performance.getEntriesByType('resource').map(function (e) { return e.name; }),
             plot: [Math.round(box.width), Math.round(box.height)],
             culprit: culprit ? culprit.cells[1].textContent : null,
             heat: !!document.querySelector('#heat-map svg'),
             steps: document.querySelectorAll('#culprit-steps tbody tr').length};
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the float16 LiLT port with ReLU for GELU in layer 5."""
    d = tmp_path_factory.mktemp("report")
    oracle, inputs, case, ckpt = lilt_case(d)
    dump = port_dump(oracle, inputs, "float16", d / "dump.npz", relu_lilt, recipe())
    rc = main(["compare", case, dump, "--checkpoint", ckpt, "--report", str(d / "report.html")])
    assert rc == 1
    return d / "report.html"


def test_the_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") >= 2
    # nothing a browser would fetch: no src/href to anything, no CSS url() or @import, no <link>
    assert re.search(r"""\s(?:src|href)\s*=""", text) is None
    assert re.search(r"url\(\s*['\"]?(?!#)", text) is None  # only in-page #fragment references
    assert "@import" not in text and "<link" not in text
    assert '<div class="verdict fail" id="verdict">culprit: lilt.encoder.layer.5 (' in text
    assert '<tr class="culprit"><td data-v="' in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")
def test_the_report_renders_in_chromium_and_loads_nothing(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(
        report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1200,2000"]
    r = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    import html
    import json

    got = json.loads(html.unescape(m.group(1)))
    assert got["resources"] == []  # the page fetched nothing
    assert got["plot"][0] > 300 and got["plot"][1] > 150  # the error-by-depth plot is laid out
    assert got["culprit"] == "lilt.encoder.layer.5" and got["heat"] and got["steps"] >= 10
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 20_000  # a page with plots, not a blank one
