"""The audit report in a real browser (issue 15): headless Chromium renders the pages of a
verified, a tampered, an over-budget and a resumed run; the DOM it builds shows the
verdict and the numbers of ``fedrec audit --json``, and its screenshot is not blank
and carries the verdict's colour.

Needs Debian's ``chromium`` (``.ci/run`` installs it); set FEDREC_CHROMIUM to use
another binary. Skipped, saying why, when there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app

from .conftest import MakeRun, tamper

CHROMIUM = os.environ.get("FEDREC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: apt-get install chromium (Debian), or set FEDREC_CHROMIUM to a Chromium binary"
)
RED, GREEN = (0xB0, 0x00, 0x20), (0x0B, 0x6B, 0x2B)  # the verdict colours of fedrec.privacy.report_html


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, timeout=120, check=True)


class _DomText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if ident:
            self.by_id[ident] = ""
        if tag not in ("meta", "br", "path", "use", "rect", "line"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("meta", "br", "path", "use", "rect", "line"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.by_id[ident] += data


def render(run_dir: Path, tmp_path: Path) -> tuple[dict, dict[str, str], np.ndarray]:
    """Report, then let Chromium build the DOM and take a screenshot of it."""
    page = tmp_path / f"{run_dir.name}.html"
    result = CliRunner().invoke(app, ["audit", str(run_dir), "--json", "--html", str(page), "--prv-points", "2"])
    doc = json.loads(result.output)
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout.decode()
    parser = _DomText()
    parser.feed(dom)
    shot = tmp_path / f"{run_dir.name}.png"
    chromium(f"--screenshot={shot}", "--window-size=1100,900", page.as_uri(), profile=tmp_path / "profile")
    from matplotlib.image import imread

    pixels = np.asarray(imread(shot))[..., :3]  # (H, W, 3) floats in [0, 1]
    return doc, parser.by_id, pixels


def share_of(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    """Fraction of the pixels within a few levels of ``colour``."""
    target = np.asarray(colour) / 255.0
    return float(np.mean(np.all(np.abs(pixels - target) < 8 / 255, axis=-1)))


def check_numbers(doc: dict, text: dict[str, str]) -> None:
    eps = doc["epsilon"]
    for ident, value in (("eps-prv", eps["prv"]), ("eps-rdp", eps["rdp"]), ("eps-headline", eps["headline"])):
        assert text[ident] == ("-" if value is None else f"{value:.4f}"), ident
    assert text["rounds"] == str(doc["rounds"]) and text["resumes"] == str(doc["resumes"])


def test_verified_page_in_chromium(make_run: MakeRun, tmp_path: Path) -> None:
    doc, text, pixels = render(make_run(rounds=5), tmp_path)
    assert text["verdict"].startswith("VERIFIED: ")
    check_numbers(doc, text)
    assert pixels.std() > 0.05, "the screenshot is blank"
    assert share_of(pixels, GREEN) > 0.001 and share_of(pixels, RED) < share_of(pixels, GREEN)


def test_tampered_page_in_chromium(make_run: MakeRun, tmp_path: Path) -> None:
    run, other = make_run(rounds=4), make_run(rounds=4)
    tamper(run, "splice", other=other)
    doc, text, pixels = render(run, tmp_path)
    assert doc["status"] == "tampered" and text["verdict"].startswith("TAMPERED: ") and "hash chain broken" in text["verdict"]
    check_numbers(doc, text)
    assert text["eps-prv"] == "-"
    assert pixels.std() > 0.05, "the screenshot is blank"
    top = pixels[: pixels.shape[0] // 6]  # the verdict is the first thing on the page, in red
    assert share_of(top, RED) > 0.01 and share_of(pixels, GREEN) == 0.0


def test_over_budget_page_in_chromium(make_run: MakeRun, tmp_path: Path) -> None:
    doc, text, pixels = render(make_run(rounds=4, budget=0.5), tmp_path)
    assert text["verdict"].startswith("OVER BUDGET: epsilon ") and text["budget"] == "0.5"
    check_numbers(doc, text)
    assert pixels.std() > 0.05 and share_of(pixels[: pixels.shape[0] // 6], RED) > 0.01


def test_resumed_page_in_chromium(make_run: MakeRun, tmp_path: Path) -> None:
    doc, text, pixels = render(make_run(rounds=5, resume_at=3, rejected={2: 1}), tmp_path)
    assert text["verdict"].startswith("VERIFIED: ") and text["resumes"] == "1" and text["unused"] == "1"
    assert "ledger rounds 3 spent but unused" in text["resumes-list"]
    check_numbers(doc, text)
    assert pixels.std() > 0.05, "the screenshot is blank"
