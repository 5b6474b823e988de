"""Render the audit report's dict (:mod:`fedrec.privacy.report`) as one HTML page.

The page is self-contained: inline CSS, the plot as inline SVG drawn by matplotlib
with text as paths, no scripts, fonts or links to fetch. The verdict is the first
thing in the body. Every string from the run folder is escaped.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:60rem;
 padding:0 1rem;color:#1b1b1b;line-height:1.4}
.verdict{font-size:1.6rem;padding:.8rem 1rem;border-radius:.4rem;margin:0 0 1rem 0}
.verdict.verified{background:#e6f4ea;color:#0b6b2b;border:2px solid #0b6b2b}
.verdict.tampered,.verdict.malformed{background:#fde7e9;color:#b00020;border:2px solid #b00020}
.verdict.over-budget{background:#fdecea;color:#b00020;border:2px solid #b00020}
table{border-collapse:collapse;margin:.5rem 0 1rem 0}
th,td{border:1px solid #c8c8c8;padding:.2rem .5rem;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f2f2}
td.l,th.l{text-align:left}
tr.unused td{color:#8a5a00;background:#fff6e0}
.note{color:#555;font-size:.9rem}
.bad{color:#b00020;font-weight:bold}
.good{color:#0b6b2b;font-weight:bold}
h2{margin-top:1.6rem;border-bottom:1px solid #ddd}
svg{max-width:100%;height:auto}
"""


def _f(value: object, digits: int = 4) -> str:
    """A number as the CLI prints it ("-" for none)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if math.isinf(value):  # an epsilon is infinite after a step without noise
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _g(value: object) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1, row_class: Sequence[str] = ()) -> str:
    """Cells are already-escaped HTML; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{row_class[n]}"' if n < len(row_class) and row_class[n] else ""
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def epsilon_plot_svg(doc: dict[str, Any]) -> str:
    """Epsilon per ledger round by RDP (line) and PRV (points) against the budget."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    per_round = doc["per_round"]
    rounds = [r["round"] for r in per_round]
    rdp = [math.nan if r["epsilon_rdp"] is None else r["epsilon_rdp"] for r in per_round]
    prv = [(r["round"], r["epsilon_prv"]) for r in per_round if r["epsilon_prv"] is not None]
    fig = Figure(figsize=(8, 3.9), dpi=100)
    ax = fig.add_subplot()
    ax.plot(rounds, rdp, color="#1f5fa8", lw=1.6, label="epsilon (RDP), every round")
    if prv:
        ax.plot([p[0] for p in prv], [p[1] for p in prv], "o", color="#d95f02", ms=5, label="epsilon (PRV)")
    budget = doc["epsilon"]["budget"]
    if budget is not None:
        ax.axhline(budget, color="#b00020", ls="--", lw=1.2, label=f"budget {budget:.4g}")
    for event in doc["resume_events"]:
        ax.axvline(event["after_ledger_round"] + 0.5, color="#8a5a00", ls=":", lw=1)
    ax.set_xlabel("ledger round (applications of the mechanism)")
    ax.set_ylabel(f"epsilon at delta {_g(doc['epsilon']['delta'])}")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.96, bottom=0.27)  # fixed: tight_layout costs a second draw
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})  # text as paths (matplotlib's default): no fonts
    svg = out.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)  # RDF creator/date links: not needed
    return svg[svg.index("<svg"):]


def _verdict(doc: dict[str, Any]) -> str:
    verdict = doc["verdict"]
    status = verdict["status"]
    return (f'<h1 id="verdict" class="verdict {status.replace(" ", "-")}">{escape(status.upper())}: '
            f'<span id="verdict-reason">{escape(str(verdict["reason"]))}</span></h1>')


def _summary(doc: dict[str, Any]) -> str:
    eps = doc["epsilon"]
    run = doc["run"]
    rows = [
        ("epsilon (headline, " + escape(str(eps["accountant"] or "-")) + ")", f'<span id="eps-headline">{_f(eps["headline"])}</span>'),
        ("epsilon recomputed (PRV)", f'<span id="eps-prv">{_f(eps["prv"])}</span>'),
        ("epsilon recomputed (RDP)", f'<span id="eps-rdp">{_f(eps["rdp"])}</span>'),
        ("epsilon recorded by the server", _f(doc["recorded_epsilon"])),
        ("delta", f"{eps['delta']:.1e}" if eps["delta"] is not None else "-"),
        ("budget", f'<span id="budget">{_g(eps["budget"]) if eps["budget"] is not None else "none"}</span>'),
        ("rounds recorded", f'<span id="rounds">{doc["rounds"]}</span>'),
        ("run closed", "yes" if doc["closed"] else "no (crashed or still running)"),
        ("stopped by budget", "yes" if doc["stopped_by_budget"] else "no"),
        ("resumed after a crash", f'<span id="resumes">{doc["resumes"]}</span> time(s)'),
        ("rounds spent but unused", f'<span id="unused">{doc["unused_rounds"]}</span>'),
        ("run id", escape(str(run["run_id"] or "-"))),
        ("config hash", f"<code>{escape(str(run['config_hash'] or '-'))}</code>"),
    ]
    if doc["rejected"] is not None:
        rows.append(("rejected updates (" + escape(doc["rejected"]["source"]) + ")", _g(doc["rejected"]["total"])))
    note = "" if doc["verdict"]["entries_verified"] else (
        '<p class="bad">No epsilon is shown: the entries are not the ones the server signed. '
        "Parameters below are as written in the ledger, unverified.</p>")
    return note + _table(["", "value"], [(a, b) for a, b in rows])


def _key(doc: dict[str, Any]) -> str:
    key = doc["key"]
    if key["matches"] is True:
        match = '<span id="key-match" class="good">matches the key named in the ledger header</span>'
    elif key["matches"] is False:
        match = '<span id="key-match" class="bad">does NOT match the key named in the ledger header</span>'
    else:
        match = '<span id="key-match" class="bad">could not be compared (key or header unreadable)</span>'
    if key["source"] == "--public-key":
        source = "the public key given with --public-key"
    else:
        source = ("the run folder's own ledger_public_key.pem; not an independent check: give the operator's "
                  "public key with --public-key")
    return (f"<h2>Signing key</h2><p>Ledger header names key <code id=\"key-header\">{escape(str(key['header_fingerprint'] or '-'))}</code>.<br>"
            f"Signatures checked with {escape(source)}: <code>{escape(str(key['checked_fingerprint'] or '-'))}</code>, {match}.</p>")


def _phases(doc: dict[str, Any]) -> str:
    if not doc["phases"] and doc["other_releases"]:  # a family of releases (DP-EASE): its mechanisms are listed with them
        return ""
    rows = []
    for p in doc["phases"]:
        local = p["local_dp"]
        local_text = "no" if local is None else f"yes, device epsilon up to {_g(local['max_epsilon'])} (delta {_g(local['delta'])})"
        clients = f"{_g(p['clients_min'])} / {_g(p['clients_mean'])} / {_g(p['clients_max'])}"
        rows.append((f"{p['first_round']}-{p['last_round']}", escape(str(p["mechanism"] or "-")), _g(p["noise_multiplier"]),
                     _g(p["clipping_norm"]), _g(p["sample_rate"]), clients, escape(local_text)))
    return ("<h2>Mechanism per phase</h2>" + _table(
        ["ledger rounds", "mechanism", "noise z", "clip C", "sample rate q", "clients min / mean / max", "local DP"], rows, left=2)
        + '<p class="note">z: noise multiplier (noise standard deviation z·C on the sum of clipped updates); '
        "C: clipping norm; q: Poisson sampling rate. Local DP epsilon is the devices' own claim, not recomputed.</p>")


def _rounds(doc: dict[str, Any]) -> str:
    if not doc["per_round"]:
        if doc["other_releases"]:
            return ""  # no training rounds: every mechanism and its epsilon is a release, listed below
        return "<h2>Epsilon per round</h2><p>No rounds recorded.</p>"
    plot = epsilon_plot_svg(doc) if doc["verdict"]["entries_verified"] else ""
    rows, classes = [], []
    for r in doc["per_round"]:
        rows.append((str(r["round"]), str(r["model_round"]) if r["model_round"] is not None else "-", _g(r["clients"]),
                     _f(r["epsilon_rdp"]), _f(r["epsilon_prv"]), _f(r["epsilon_recorded"]),
                     "-" if r["rejected"] is None else str(r["rejected"]), "spent, unused" if r["unused"] else ""))
        classes.append("unused" if r["unused"] else "")
    resumes = "".join(
        f"<li>after ledger round {e['after_ledger_round']}: resumed from the checkpoint of model round "
        f"{e['checkpoint_round']}; ledger rounds {', '.join(map(str, e['unused_rounds'])) or 'none'} spent but unused (still counted)</li>"
        for e in doc["resume_events"]
    )
    return (
        f"<h2>Epsilon per round</h2>{plot}"
        + (f"<h3>Resumes</h3><ul id=\"resumes-list\">{resumes}</ul>" if resumes else "")
        + f'<p class="note">The budget applies to the headline accountant ({escape(str(doc["epsilon"]["accountant"] or "-"))}). '
        "PRV is a fresh numerical composition per round, so it is evaluated at a few rounds "
        "(always the last); RDP at every round. Rejected updates come from results.json (not signed).</p>"
        + "<details open><summary>per-round table</summary>"
        + _table(["ledger round", "model round", "clients", "epsilon (RDP)", "epsilon (PRV)", "epsilon recorded",
                  "rejected updates", ""], rows, left=0, row_class=classes)
        + "</details>"
    )


def _releases(doc: dict[str, Any]) -> str:
    releases, eps = doc["other_releases"], doc["epsilon"]
    if not releases:
        return "<h2>Other releases</h2><p id=\"releases\">None: the training rounds are the only mechanism in the ledger.</p>"
    rows = []
    for r in releases:
        alone = r["epsilon_alone"] or {"prv": None, "rdp": None}
        rows.append((str(r["release"]), escape(str(r["purpose"] or "-")), escape(str(r["mechanism"] or "-")),
                     _g(r["noise_multiplier"]), _g(r["clipping_norm"]), _g(r["sample_rate"]), _g(r["steps"]), _g(r["clients"]),
                     _metric_sigma(r), str(r["after_round"]), _f(alone["prv"]), _f(alone["rdp"]), _f(r["epsilon_rdp_after"])))
    table = _table(["#", "purpose", "mechanism", "noise z", "clip C", "q", "steps", "clients",
                    "noise σ per metric (devices asked)", "after round", "epsilon alone (PRV)", "epsilon alone (RDP)",
                    "total after (RDP)"], rows, left=3)
    if any(r.get("noise_std") is not None for r in releases):
        table += ('<p class="note">noise σ per metric: the standard deviation of the noise in each released mean metric, '
                  "z·C / n with n the devices asked (the mechanism's denominator), from the release's signed entry; "
                  "a release whose σ exceeds a quarter of the metric's range [0, 1] is not informative.</p>")
    only = eps["rounds_only"]
    share = ""
    if only is not None and eps["prv"] is not None:
        head = eps["accountant"] or "prv"
        added = (eps[head] or 0.0) - (only[head] or 0.0)
        share = _table(["", "PRV", "RDP"], [
            ("training rounds alone", f'<span id="eps-rounds-only">{_f(only["prv"])}</span>', _f(only["rdp"])),
            ("rounds and every release (the total)", f'<span id="eps-total">{_f(eps["prv"])}</span>', _f(eps["rdp"])),
        ]) + f'<p>The releases add <span id="eps-releases-share">{_f(added)}</span> to the {escape(head.upper())} total ' \
             "(epsilons compose, they do not add: the total is recomputed by the accountant over every step).</p>"
    title = "Other releases" if doc["per_round"] else "Releases (the run's mechanisms: no training rounds)"
    return f"<h2>{title}</h2>" + table + share


def _metric_sigma(release: dict[str, Any]) -> str:
    """The noise sigma cell of a release row ("-" for a release that is not a metric)."""
    sigma = release.get("noise_std")
    if sigma is None:
        return "-"
    bound = "at most " if release.get("noise_std_is_bound") else ""
    label = "" if release.get("informative") else ' <span class="bad">not informative</span>'
    return (f'<span class="metric-sigma">{bound}{sigma:.3g}</span> ({_g(release.get("devices_asked"))} devices)'
            + label)


def _evaluation(doc: dict[str, Any]) -> str:
    ev = doc["evaluation"]
    cls = {True: "good", False: "bad", None: ""}[ev["private"]]
    text = ev["statement"] if ev["private"] is None else f"evaluation {ev['statement']}"
    out = f'<h2>Evaluation metrics</h2><p id="evaluation" class="{cls}">{escape(text)}</p>'
    metrics = ev.get("metrics") or []
    if not metrics:
        return out
    rows = []
    for m in metrics:
        note = "; ".join((["clamped"] if m["clamped"] else []) + ([] if m["informative"] else ["not informative"]))
        sigma = "-" if m["noise_std"] is None else f'{m["noise_std"]:.3g}'
        rows.append((escape(str(m["label"])), f'<span class="metric-value">{_f(m["value"], 3)}</span>', sigma,
                     _g(m["devices_asked"]), f'<span class="bad">{escape(note)}</span>' if note else ""))
    return (out + "<h3>Test metrics as released (results.json, not signed; noise from the signed release entry)</h3>"
            + _table(["metric", "value, clamped to [0, 1]", "noise σ", "devices asked", ""], rows)
            + '<p id="metric-texts" class="note">' + "<br>".join(escape(str(m["text"])) for m in metrics) + "</p>")


def _empirical(doc: dict[str, Any]) -> str:
    emp = doc["empirical"]
    if emp is None:
        return ""
    verdict = {None: "", True: '<p class="good">The lower bound is below the accounted epsilon, as it must be.</p>',
               False: '<p class="bad">The empirical lower bound EXCEEDS the accounted epsilon: the run leaks more than accounted.</p>'}
    rows = [("one-run lower bound (Steinke et al. 2023)", f'<span id="emp-one-run">{_f(emp["one_run_epsilon_lower_bound"], 3)}</span>'),
            ("Clopper-Pearson lower bound (Jagielski et al. 2020)", _f(emp["cp_epsilon_lower_bound"], 3)),
            ("accountant epsilon when audited", _f(emp["accountant_epsilon"], 3)),
            ("canaries (members)", f"{_g(emp['canaries'])} ({_g(emp['members'])})"),
            ("guesses / correct", f"{_g(emp['guesses'])} / {_g(emp['correct'])}"),
            ("attack AUC", _f(emp["auc"], 3)), ("confidence level beta", _g(emp["beta"]))]
    control = emp.get("control")
    if control:  # the same attack on the same run without DP: it must find the canaries
        rows += [("control without DP: one-run lower bound", f'<span id="emp-control">{_f(control["one_run_epsilon_lower_bound"], 3)}</span>'),
                 ("control without DP: Clopper-Pearson lower bound", _f(control["cp_epsilon_lower_bound"], 3)),
                 ("control without DP: guesses / correct", f"{_g(control['guesses'])} / {_g(control['correct'])}"),
                 ("control without DP: attack AUC", _f(control["auc"], 3))]
    return ("<h2>Empirical audit (empirical_audit.json, not signed)</h2>" + _table(["", "value"], rows)
            + verdict[emp["consistent"]])


def _messages(doc: dict[str, Any]) -> str:
    problems = "".join(f'<li class="bad">{escape(p)}</li>' for p in doc["problems"])
    warnings = "".join(f"<li>{escape(w)}</li>" for w in doc["warnings"])
    out = f'<h2>Problems</h2><ul id="problems">{problems}</ul>' if problems else ""
    return out + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "")


def render_html(doc: dict[str, Any]) -> str:
    """The whole page; ``doc`` is :func:`fedrec.privacy.report.build_document`'s dict."""
    status = doc["verdict"]["status"]
    parts = [
        _verdict(doc), _messages(doc) if doc["problems"] else "", _summary(doc), _key(doc), _phases(doc), _rounds(doc),
        _releases(doc), _evaluation(doc), _empirical(doc), "" if doc["problems"] else _messages(doc),
        f'<p class="note">fedrec audit report, schema {escape(doc["schema"])}, run folder {escape(doc["run_dir"])}.</p>',
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>privacy audit: {escape(status)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
