"""Open a report in headless Chromium (Debian's ``chromium``): a screenshot, and where
each section and figure lands, read from the DOM after layout (stdlib only).

The probe is a copy of the report with a small script added: it records load errors
and ``console.error`` calls and, once the page has loaded, writes the positions as JSON
into the DOM, which ``--dump-dom`` prints. The report itself carries no script.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = "install headless Chromium with `apt-get install -y chromium` (Debian/Ubuntu)"
WIDTH, HEIGHT = 1280, 1000
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")

_CATCH = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href))));
}, true);
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
</script>"""

_MEASURE = """<script>
window.addEventListener("load", function () {
  function box(el) {
    var r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, height: r.height};
  }
  var out = {sections: {}, figures: [], errors: window.__errors,
             height: document.documentElement.scrollHeight};
  document.querySelectorAll("section[id], h3[id], #headline-figure, .answer-text")
    .forEach(function (el) { out.sections[el.id || el.className] = box(el); });
  document.querySelectorAll("img").forEach(function (img) {
    var fig = img.closest("figure");
    out.figures.push(Object.assign(box(img), {
      key: fig ? (fig.dataset.figure || fig.id || fig.className) : "",
      loaded: img.complete && img.naturalWidth > 0}));
  });
  var pre = document.createElement("pre");
  pre.id = "__probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The Chromium executable; without one the browser test fails, saying how to install
    it (``.ci/run`` installs it, so CI always runs the test)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    where = "in CI" if os.environ.get("CI", "").lower() == "true" else "on this machine"
    pytest.fail(f"headless Chromium is missing {where}: {INSTALL_HINT}")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    home = cwd / "chromium-home"  # a profile of its own: no state from or to the user's
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [chromium(), *_FLAGS, f"--user-data-dir={home}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )


def screenshot(report: Path, out: Path) -> Path:
    """A ``WIDTH`` × ``HEIGHT`` screenshot of the report's first screen."""
    _run([f"--screenshot={out}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri()], out.parent)
    assert out.is_file(), f"chromium wrote no screenshot {out}"
    return out


def probe(report: Path, workdir: Path) -> dict:
    """Positions (page pixels) of the sections, subsections and images, whether each image
    loaded, the errors the page raised and its height."""
    text = report.read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>\n" + _CATCH, 1).replace("</body>", _MEASURE + "</body>")
    page = workdir / "probe.html"
    page.write_text(text, encoding="utf-8")
    done = _run(
        [
            "--dump-dom",
            "--virtual-time-budget=10000",
            f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        workdir,
    )
    match = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"chromium did not run the probe: {done.stderr[-2000:]}"
    result = json.loads(html.unescape(match.group(1)))
    result["console"] = [
        line for line in done.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line
    ]
    return result


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
