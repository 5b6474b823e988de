"""A population audit (:mod:`fedrec.privacy.population`) on the terminal and as one HTML page.

Both show the content of :meth:`PopulationAudit.to_json`: the verdict first, the composed
epsilon per user, then every run with its own epsilon, what it adds to the composition
(its share) and the composition after it. The page is self-contained (inline CSS, no
scripts, nothing to fetch) and escapes every string that came from a run folder.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:64rem;
 padding:0 1rem;color:#1b1b1b;line-height:1.4}
.verdict{font-size:1.6rem;padding:.8rem 1rem;border-radius:.4rem;margin:0 0 1rem 0}
.verdict.verified{background:#e6f4ea;color:#0b6b2b;border:2px solid #0b6b2b}
.verdict.tampered,.verdict.malformed,.verdict.over-budget{background:#fde7e9;color:#b00020;border:2px solid #b00020}
table{border-collapse:collapse;margin:.5rem 0 1rem 0}
th,td{border:1px solid #c8c8c8;padding:.2rem .5rem;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f2f2}
td.l,th.l{text-align:left}
tr.skipped td{color:#777}
.note{color:#555;font-size:.9rem}
h2{margin-top:1.6rem;border-bottom:1px solid #ddd}
.bar{display:inline-block;height:.8rem;background:#1f5fa8;vertical-align:middle}
"""


def fmt(value: object, digits: int = 4) -> str:
    """A number as the terminal prints it ("-" for none)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _by(value: object, accountant: str) -> object:
    return value.get(accountant) if isinstance(value, dict) else None


def run_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per run: folder, status, rounds, releases, delta, epsilon (own delta),
    alone, share and after (at the population's delta, headline accountant)."""
    acc = doc["epsilon"]["accountant"]
    rows = []
    for run in doc["runs"]:
        share = run["share"]
        rows.append([
            str(run["run_dir"]), run["status"] + ("" if run["counted"] else " (duplicate, counted once)"),
            str(run["rounds"]), str(run["releases"]), f"{run['delta']:g}" if run["delta"] is not None else "-",
            fmt(run["epsilon_run"]), fmt(_by(run["epsilon_alone"], acc)), fmt(share), fmt(_by(run["epsilon_after"], acc)),
        ])
    return rows


HEADERS = ("run", "status", "rounds", "releases", "delta", "ε run (own δ)", "ε alone", "share (adds)", "ε composed after")


def print_terminal(console: Any, doc: dict[str, Any]) -> None:
    """The population audit as Rich tables on ``console``."""
    from rich.table import Table

    eps = doc["epsilon"]
    colour = "green" if doc["code"] == 0 else "red"
    summary = Table(title=f"population privacy audit of {doc['runs_audited']} run(s)", show_header=False)
    summary.add_column("check")
    summary.add_column("value")
    summary.add_row("status", f"[bold {colour}]{doc['status']}[/]")
    summary.add_row("runs counted", str(doc["runs_counted"]))
    summary.add_row("accountant (headline)", str(eps["accountant"]))
    summary.add_row("composed epsilon per user (headline)", fmt(eps["headline"]))
    summary.add_row("composed epsilon (PRV)", fmt(eps["prv"]))
    summary.add_row("composed epsilon (RDP)", fmt(eps["rdp"]))
    summary.add_row("delta", f"{eps['delta']:.1e}" if eps["delta"] is not None else "-")
    summary.add_row("population budget", fmt(eps["budget"], 4) if eps["budget"] is not None else "none")
    console.print(summary)
    table = Table(title=f"each run's share ({eps['accountant']}, at delta {eps['delta']}; composed by the accountant, not added)")
    for n, col in enumerate(HEADERS):
        table.add_column(col, justify="left" if n < 2 else "right")
    for row in run_rows(doc):
        table.add_row(*row)
    console.print(table)
    for problem in doc["problems"]:
        console.print(f"[red]problem:[/] {problem}")
    for warning in doc["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


def render_html(doc: dict[str, Any]) -> str:
    """The population audit as one self-contained HTML page, verdict first."""
    eps = doc["epsilon"]
    status = doc["status"]
    reason = doc["problems"][0] if doc["problems"] else (
        "every ledger verified; epsilon composed by the accountant over all their mechanism steps")
    headline = fmt(eps["headline"])
    parts = [
        (f'<div class="verdict {escape(status.replace(" ", "-"))}">{escape(status.upper())}: composed epsilon per user '
        f"{escape(headline)} ({escape(str(eps['accountant']))}, delta {escape(str(eps['delta']))})</div>"),
        f'<p>{escape(reason)}</p>',
        "<h2>Composed epsilon</h2>",
        _table(["", "value"], [
            ["runs audited / counted", f"{doc['runs_audited']} / {doc['runs_counted']}"],
            ["composed epsilon (PRV)", fmt(eps["prv"])], ["composed epsilon (RDP)", fmt(eps["rdp"])],
            ["delta", escape(str(eps["delta"]))],
            ["population budget", fmt(eps["budget"]) if eps["budget"] is not None else "none"],
            ["per user", escape(eps["per_user"])],
        ]),
        ('<p class="note">Epsilon is recomputed by the accountant over the concatenation of every run\'s verified '
        "mechanism steps; epsilons are never added. Each run's share is what it adds to the composition of the runs "
        "before it (in the order their ledgers started); the shares add up to the composed epsilon.</p>"),
        "<h2>Runs</h2>",
    ]
    total = eps["headline"] if isinstance(eps["headline"], (int, float)) and eps["headline"] else None
    rows = []
    for row, run in zip(run_rows(doc), doc["runs"]):
        share = run["share"]
        width = 0 if total is None or not isinstance(share, (int, float)) or math.isinf(total) else max(0.0, share / total)
        rows.append([escape(c) for c in row] + [f'<span class="bar" style="width:{12 * width:.2f}rem"></span>'])
    parts.append(_table([escape(h) for h in (*HEADERS, "share of the total")], rows, left=2,
                        row_class=["" if r["counted"] else "skipped" for r in doc["runs"]]))
    if doc["problems"] or doc["warnings"]:
        parts.append("<h2>Problems and warnings</h2><ul>")
        parts += [f"<li><b>problem:</b> {escape(p)}</li>" for p in doc["problems"]]
        parts += [f"<li>warning: {escape(w)}</li>" for w in doc["warnings"]]
        parts.append("</ul>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>population privacy audit</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _table(header: list[str], rows: list[list[str]], *, left: int = 1, row_class: list[str] | None = None) -> str:
    """Cells are already-escaped HTML; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{row_class[n]}"' if row_class and row_class[n] else ""
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
