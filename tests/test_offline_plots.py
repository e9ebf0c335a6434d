"""`dvc plots show` with medvlm.offline_plots' template draws its charts in a real browser with no network.

The check is the one a person would make: a tiny DVC repo with a TSV line plot and a confusion-template plot,
`dvc plots show` run by the venv's dvc, and the page opened from file:// in headless Chromium whose every
network request goes to a dead proxy. The dumped DOM must hold Vega's drawn marks (an `svg.marks` with a
line, resp. rect, path) inside each plot's div, and the screenshot must not be blank. DVC's default page (CDN
scripts) is opened the same way and must draw nothing: that shows the browser really is offline and that
the check can tell a drawn page from a blank one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from medvlm.offline_plots import write_template

# DVC names each plot's div after its file (dvc_render: non-word characters become "_"); the mark each one draws.
EXPECTED_MARKS = {"loss_tsv": "mark-line", "confusion_json": "mark-rect"}

DVC_YAML = """\
plots:
  - loss.tsv:
      x: step
      y: loss
  - confusion.json:
      template: confusion
      x: actual
      y: predicted
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium browser on this machine: apt-get install chromium")
    return found


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else shutil.which("dvc") or "dvc"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _offline_browser(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Open `page` in headless Chromium with no network: every request goes through a proxy on a closed port
    (loopback included) and no host name resolves. The virtual time budget lets Vega's asynchronous
    rendering finish before the DOM is dumped or the screenshot taken."""
    args = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-extensions",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--window-size=1200,800",
        *extra, page.resolve().as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done


class _PlotMarks(HTMLParser):
    """For each plot div (by id): the Vega data-mark groups inside its `svg.marks` that hold a drawn path."""

    def __init__(self, plot_ids: set[str]) -> None:
        super().__init__()
        self.plot_ids = plot_ids
        self.drawn: dict[str, set[str]] = {pid: set() for pid in plot_ids}
        self._plot: str | None = None  # the plot div we are inside
        self._div_depth = 0  # open divs since it began
        self._in_marks_svg = False
        self._groups: list[str] = []  # classes of the open <g> elements inside svg.marks

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        classes = attr.get("class", "").split()
        if tag == "div":
            if self._plot is None and attr.get("id") in self.plot_ids:
                self._plot, self._div_depth = attr["id"], 0
            if self._plot is not None:
                self._div_depth += 1
        elif self._plot is None:
            return
        elif tag == "svg" and "marks" in classes:
            self._in_marks_svg = True
        elif tag == "g" and self._in_marks_svg:
            self._groups.append(attr.get("class", ""))
        elif tag == "path" and self._in_marks_svg and attr.get("d", "").strip() and self._groups:
            group = self._groups[-1].split()
            if "role-mark" in group:
                self.drawn[self._plot].update(c for c in group if c.startswith("mark-"))

    def handle_endtag(self, tag: str) -> None:
        if self._plot is None:
            return
        if tag == "div":
            self._div_depth -= 1
            if self._div_depth == 0:
                self._plot = None
        elif tag == "svg":
            self._in_marks_svg = False
        elif tag == "g" and self._in_marks_svg and self._groups:
            self._groups.pop()


def _drawn_marks(dom: str) -> dict[str, set[str]]:
    parser = _PlotMarks(set(EXPECTED_MARKS))
    parser.feed(dom)
    parser.close()
    return parser.drawn


def _non_background_share(png: Path) -> float:
    """The share of pixels that differ from the top-left (background) pixel."""
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, rgb.getpixel((0, 0))))
    red, green, blue = difference.split()
    largest = ImageChops.lighter(ImageChops.lighter(red, green), blue).histogram()
    return sum(largest[17:]) / (rgb.width * rgb.height)


def _script_sources(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]+)", html, flags=re.IGNORECASE)


def test_dvc_plots_render_offline(tmp_path: Path) -> None:
    chromium = _chromium()
    template = write_template(out=tmp_path / "template" / "offline-plots.html")

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    env.pop("XDG_CONFIG_HOME", None)  # a user's global dvc config (say, its own html_template) stays out
    _run(["git", "init", "-q"], repo, env)
    _run([_dvc(), "init", "-q"], repo, env)
    _run([_dvc(), "config", "core.analytics", "false"], repo, env)
    (repo / "loss.tsv").write_text("step\tloss\n0\t1.0\n1\t0.6\n2\t0.45\n3\t0.4\n")
    (repo / "confusion.json").write_text(
        '[{"actual": "cat", "predicted": "cat"}, {"actual": "cat", "predicted": "dog"},'
        ' {"actual": "dog", "predicted": "dog"}, {"actual": "dog", "predicted": "dog"}]\n'
    )
    (repo / "dvc.yaml").write_text(DVC_YAML)

    # DVC's own page first: its scripts come from a CDN, so in the offline browser nothing may be drawn.
    _run([_dvc(), "plots", "show", "-o", "default_page"], repo, env)
    # Then with the template, given as the project's .dvc/config gives it: relative to the .dvc folder.
    _run([_dvc(), "config", "plots.html_template", os.path.relpath(template, repo / ".dvc")], repo, env)
    _run([_dvc(), "plots", "show", "-o", "offline_page"], repo, env)

    default_html = (repo / "default_page" / "index.html").read_text(encoding="utf-8")
    offline_html = (repo / "offline_page" / "index.html").read_text(encoding="utf-8")
    assert any(src.startswith(("http://", "https://")) for src in _script_sources(default_html))
    assert _script_sources(offline_html) == [], "the offline page must load no script from anywhere"
    assert not re.search(r"<link\b[^>]*\bhref\s*=\s*[\"']?https?:", offline_html, flags=re.IGNORECASE)
    for plot_id in EXPECTED_MARKS:
        assert f'id = "{plot_id}"' in offline_html and f'id = "{plot_id}"' in default_html

    results = {}
    for name in ("default_page", "offline_page"):
        page = repo / name / "index.html"
        dom = _offline_browser(chromium, page, tmp_path / f"profile-dom-{name}", "--dump-dom").stdout
        shot = tmp_path / f"{name}.png"
        _offline_browser(chromium, page, tmp_path / f"profile-shot-{name}", f"--screenshot={shot}")
        results[name] = (_drawn_marks(dom), _non_background_share(shot))

    offline_marks, offline_ink = results["offline_page"]
    for plot_id, mark in EXPECTED_MARKS.items():
        assert mark in offline_marks[plot_id], f"{plot_id}: no drawn {mark} in the offline page ({offline_marks})"
    assert offline_ink > 0.01, f"the offline page's screenshot is nearly blank ({offline_ink:.2%} drawn)"

    default_marks, default_ink = results["default_page"]
    assert default_marks == {plot_id: set() for plot_id in EXPECTED_MARKS}, (
        f"DVC's CDN page drew charts in a browser that should be offline: {default_marks}"
    )
    assert default_ink < 0.001, f"DVC's CDN page is not blank offline ({default_ink:.2%} drawn)"
