"""The README and docs/: every relative link and #anchor resolves, every table row has
its header's number of columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```.*?```", re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6} (.*)", line)
        if match:
            s = slug(match.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def problems(page: Path) -> list[str]:
    found = []
    text = FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, fragment = target.partition("#")
        dest = (page.parent / file).resolve() if file else page.resolve()
        if not dest.exists():
            found.append(f"missing file {target}")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            found.append(f"missing anchor {target}")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if i and re.match(r"^\|[-| :]+\|$", line.strip()):
            columns = len(re.split(r"(?<!\\)\|", lines[i - 1].strip())) - 2
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("|"):
                if len(re.split(r"(?<!\\)\|", lines[j].strip())) - 2 != columns:
                    found.append(f"table row with a different column count: {lines[j][:60]}")
                j += 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_and_tables(page: Path) -> None:
    assert problems(page) == []


def test_the_checker_catches_a_broken_link_an_anchor_and_a_short_row(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n[a](nope.md) [b](#title) [c](#missing)\n\n| x | y |\n|---|---|\n| 1 |\n")
    assert len(problems(page)) == 3


def test_the_readme_stays_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
