"""The audit report's content: one dict, the same for ``--json`` and ``--html``.

:func:`collect` reads a run folder (the ledger, the public key, results.json and
empirical_audit.json, the last two unsigned and marked as such); :func:`build_document`
turns what was read into the report's dict without touching the file system. The
schema is documented in ``docs/audit-report.md``; :mod:`fedrec.privacy.report_html`
renders it.

Nothing a hostile run folder holds may crash the report: every field read from it is
checked for its type, and epsilon is recomputed only from entries whose chain and
signatures verified (:func:`fedrec.privacy.audit.audit_run` decides).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import LedgerError
from fedrec.experiments.results import RESULTS
from fedrec.privacy.accountant import Accountant, compress, epsilon
from fedrec.privacy.audit import OK, OVER_BUDGET, AuditReport, audit_run
from fedrec.privacy.audit_curve import prv_at, prv_rounds, rdp_curve
from fedrec.privacy.ledger import LEDGER, PUBLIC_KEY, decode_epsilon, fingerprint, load_public_key, read_entries
from fedrec.privacy.readable import audit_metrics, metric_release

SCHEMA = "fedrec.audit-report/1"
EMPIRICAL_AUDIT = "empirical_audit.json"  # written by fedrec.privacy.canaries (a test keeps the names equal)
PRV_POINTS = 8  # PRV is a fresh FFT composition per round evaluated; RDP is computed for every round
VERIFIED_REASON = "hash chain, signatures and recorded epsilon verified; epsilon within the budget"


@dataclass(frozen=True)
class AuditInputs:
    """Everything the report is made from, as read from a run folder."""

    audit: AuditReport
    entries: list[dict[str, Any]]  # the ledger's entries as parsed ([] when unreadable)
    checked_fingerprint: str | None  # of the public key the signatures were checked with
    key_given: bool  # True: --public-key (an independent copy); False: the run folder's own
    results: dict[str, Any] | None  # results.json (not signed)
    empirical: dict[str, Any] | None  # empirical_audit.json (not signed)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def collect(run_dir: Path, *, public_key: Path | None = None) -> AuditInputs:
    """Audit ``run_dir`` and read what the report shows beside the verdict; never raises
    for bad content."""
    audit = audit_run(run_dir, public_key=public_key)
    try:
        entries = read_entries(run_dir / LEDGER).entries
    except LedgerError:
        entries = []
    try:
        checked: str | None = fingerprint(load_public_key(public_key or run_dir / PUBLIC_KEY))
    except LedgerError:
        checked = None
    return AuditInputs(
        audit=audit, entries=entries, checked_fingerprint=checked, key_given=public_key is not None,
        results=_read_json(run_dir / RESULTS), empirical=_read_json(run_dir / EMPIRICAL_AUDIT),
    )


def _num(value: object) -> float | None:
    """A finite number from untrusted JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _epsilon(value: float) -> float | None:
    """An epsilon the audit computed: infinite after a step without noise (z = 0), so
    only NaN (not computed) is None; JSON writes the infinite one as ``Infinity``."""
    return None if math.isnan(value) else value


def _recorded(value: object) -> float | None:
    """The epsilon a ledger entry records (a number or ``"inf"``), else None."""
    try:
        return decode_epsilon(value)
    except LedgerError:
        return None


def _phases(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive rounds with the same mechanism and (z, q, C), as written in the ledger."""
    phases: list[dict[str, Any]] = []
    for n, entry in enumerate(rounds, start=1):
        key = (_text(entry.get("mechanism")), _num(entry.get("noise_multiplier")),
               _num(entry.get("sample_rate")), _num(entry.get("clipping_norm")))
        clients = _num(entry.get("clients"))
        local = entry.get("local_dp") if isinstance(entry.get("local_dp"), dict) else None
        local_eps = _num(local.get("max_epsilon")) if local else None
        if phases and phases[-1]["_key"] == key:
            phase = phases[-1]
            phase["last_round"], phase["rounds"] = n, phase["rounds"] + 1
        else:
            phase = {
                "_key": key, "first_round": n, "last_round": n, "rounds": 1, "mechanism": key[0],
                "noise_multiplier": key[1], "sample_rate": key[2], "clipping_norm": key[3],
                "_clients": [], "local_dp": None,
            }
            phases.append(phase)
        if clients is not None:
            phase["_clients"].append(clients)
        if local is not None:
            best = phase["local_dp"] or {"max_epsilon": None, "delta": _num(local.get("delta"))}
            if local_eps is not None and (best["max_epsilon"] is None or local_eps > best["max_epsilon"]):
                best["max_epsilon"] = local_eps
            phase["local_dp"] = best
    for phase in phases:
        clients = phase.pop("_clients")
        phase.pop("_key")
        phase["clients_min"] = min(clients) if clients else None
        phase["clients_max"] = max(clients) if clients else None
        phase["clients_mean"] = sum(clients) / len(clients) if clients else None
    return phases


def _resumes(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[int]]:
    """Each resume and the ledger rounds it left spent but unused (their aggregate was
    computed after the checkpoint the run went back to)."""
    events: list[dict[str, Any]] = []
    unused: set[int] = set()
    model_rounds: list[int | None] = []
    for entry in entries[1:]:
        kind = entry.get("kind")
        if kind == "round":
            model_rounds.append(_int(entry.get("model_round")))
        elif kind == "resume":
            checkpoint = _int(entry.get("checkpoint_round"))
            lost = [n for n, m in enumerate(model_rounds, start=1)
                    if checkpoint is not None and m is not None and m > checkpoint and n not in unused]
            unused.update(lost)
            events.append({"after_ledger_round": len(model_rounds), "checkpoint_round": checkpoint, "unused_rounds": lost})
    return events, unused


def _rejected(results: dict[str, Any] | None) -> tuple[dict[int, int], int | None]:
    """Rejected updates per model round and in total, from results.json's round log."""
    if results is None:
        return {}, None
    per: dict[int, int] = {}
    log = results.get("round_log")
    if isinstance(log, list):
        for row in log:
            if isinstance(row, dict):
                round_, rejected = _num(row.get("round")), _num(row.get("rejected"))
                if round_ is not None and rejected is not None:
                    per[int(round_)] = int(rejected)
    total = _num(results.get("rejected_updates"))
    return per, (int(total) if total is not None else (sum(per.values()) if per else None))


def _empirical(raw: dict[str, Any] | None, accounted: float | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    keys = ("accountant_epsilon", "delta", "one_run_epsilon_lower_bound", "cp_epsilon_lower_bound", "canaries",
            "members", "guesses", "correct", "auc", "beta", "rounds", "tpr", "fpr")
    out: dict[str, Any] = {k: _num(raw.get(k)) for k in keys}
    out["dp"] = raw.get("dp") if isinstance(raw.get("dp"), bool) else None
    control = raw.get("control")  # the same audit without DP (audit-empirical --control)
    out["control"] = (
        {k: _num(control.get(k)) for k in ("one_run_epsilon_lower_bound", "cp_epsilon_lower_bound", "guesses", "correct", "auc")}
        if isinstance(control, dict) else None
    )
    lower = max((v for v in (out["one_run_epsilon_lower_bound"], out["cp_epsilon_lower_bound"]) if v is not None), default=None)
    out["lower_bound"] = lower
    # A lower bound above the accountant's upper bound means the run leaks more than accounted.
    out["consistent"] = None if lower is None or accounted is None else lower <= accounted
    return out


def _releases(
    spends: list[dict[str, Any]], after: list[int], curve: list[float | None], *, verified: bool, delta: float
) -> list[dict[str, Any]]:
    """Every release other than a training round, with its own epsilon (alone) and the
    total after it. Alone it costs at most what it adds to the composition."""
    out = []
    rounds_before = 0
    for entry, steps_after in zip(spends, after):
        if entry.get("kind") == "round":
            rounds_before += 1
            continue
        z, q, steps = _num(entry.get("noise_multiplier")), _num(entry.get("sample_rate")), _int(entry.get("steps"))
        alone = None
        if verified and z is not None and q is not None and steps is not None:
            history = ((z, q, steps),)
            alone = {"prv": _finite(epsilon(history, delta=delta, accountant=Accountant.PRV)),
                     "rdp": _finite(epsilon(history, delta=delta, accountant=Accountant.RDP))}
        out.append({
            "release": _int(entry.get("release")), "purpose": _text(entry.get("purpose")),
            "mechanism": _text(entry.get("mechanism")), "noise_multiplier": z, "sample_rate": q,
            "clipping_norm": _num(entry.get("clipping_norm")), "steps": steps, "clients": _num(entry.get("clients")),
            "after_round": rounds_before, "epsilon_alone": alone,
            "epsilon_rdp_after": curve[steps_after - 1] if verified else None, "epsilon_recorded": _recorded(entry.get("epsilon")),
            **_metric_noise(entry),
        })
    return out


def _metric_noise(entry: dict[str, Any]) -> dict[str, Any]:
    """For an evaluation-metric release: the devices asked and the noise sigma in each
    released mean (z C / n, from the entry); nulls for any other release."""
    release = metric_release(entry)
    if release is None:
        return {"devices_asked": None, "noise_std": None, "noise_std_is_bound": None, "informative": None}
    return {"devices_asked": release.devices_asked, "noise_std": release.noise_std,
            "noise_std_is_bound": not release.devices_recorded, "informative": release.informative}


def _evaluation(header: dict[str, Any], releases: list[dict[str, Any]], entries: list[dict[str, Any]],
                results: dict[str, Any] | None) -> dict[str, Any]:
    """How the run's evaluation metrics left the devices, as the ledger says, and the
    test metrics results.json reports, clamped to [0, 1] with the noise of their release."""
    statement = _text(header.get("evaluation"))
    metric_releases = [r["release"] for r in releases if (r["purpose"] or "").startswith("evaluation")]
    if metric_releases:
        return {"private": True, "statement": statement or "evaluation metrics released through a DP mechanism",
                "releases": metric_releases, "metrics": audit_metrics(entries, results)}
    if statement is not None:
        return {"private": False, "statement": statement, "releases": [], "metrics": []}
    return {"private": None, "statement": "the ledger says nothing about evaluation", "releases": [], "metrics": []}


def build_document(inputs: AuditInputs, *, prv_points: int = PRV_POINTS) -> dict[str, Any]:
    """The report as a JSON-ready dict (no NaN; infinity only in the legacy ``budget``)."""
    audit = inputs.audit
    entries = inputs.entries
    header = entries[0] if entries and entries[0].get("kind") == "header" else {}
    rounds = [e for e in entries[1:] if e.get("kind") == "round"]
    verified = audit.code in (OK, OVER_BUDGET)  # chain and signatures hold: the parameters are the server's
    doc: dict[str, Any] = {"schema": SCHEMA, **audit.to_json()}
    doc["verdict"] = {
        "status": audit.status, "code": audit.code,
        "reason": VERIFIED_REASON if audit.code == OK else (audit.problems[0] if audit.problems else audit.status),
        "entries_verified": verified,
    }
    header_fp = _text(header.get("key_fingerprint"))
    doc["key"] = {
        "header_fingerprint": header_fp,
        "checked_fingerprint": inputs.checked_fingerprint,
        "source": "--public-key" if inputs.key_given else "run folder",
        "matches": None if header_fp is None or inputs.checked_fingerprint is None else header_fp == inputs.checked_fingerprint,
    }
    doc["run"] = {
        "run_id": _text(header.get("run_id")), "population": _int(header.get("population")),
        "config_hash": _text(header.get("config_hash")), "mechanism": _text(header.get("mechanism")),
        "entries": len(entries),
    }
    doc["phases"] = _phases(rounds)
    resumes, unused = _resumes(entries)
    doc["resume_events"] = resumes
    doc["unused_rounds"] = len(unused)
    per_rejected, total_rejected = _rejected(inputs.results)
    doc["rejected"] = {"source": "results.json (not signed)", "total": total_rejected} if inputs.results is not None else None
    # epsilon after every spend (rounds and releases, in ledger order, as the audit composes
    # them) -- only for the server's own entries (forged ones can hang an accountant)
    spends = [e for e in entries[1:] if e.get("kind") in ("round", "release")]
    steps: list[tuple[float, float]] = []
    after: list[int] = []  # steps composed once each spend entry is included
    for entry in spends:
        step = (_num(entry.get("noise_multiplier")) or 0.0, _num(entry.get("sample_rate")) or 0.0)
        repeats = _int(entry.get("steps")) if entry.get("kind") == "release" else 1
        steps += [step] * max(1, min(repeats or 1, 1_000_000))
        after.append(len(steps))
    at_round = [after[i] for i, e in enumerate(spends) if e.get("kind") == "round"]
    curve: list[float | None] = [None] * len(steps)
    prv: dict[int, float] = {}
    if verified and steps:
        curve = [_finite(v) for v in rdp_curve(steps, delta=audit.delta)]
        before_resume = [at_round[e["after_ledger_round"] - 1] for e in resumes if e["after_ledger_round"] >= 1]
        chosen = [at_round[n - 1] for n in prv_rounds(len(rounds), points=prv_points)]
        prv = prv_at(steps, sorted({*chosen, *before_resume, len(steps)}), delta=audit.delta)
    doc["per_round"] = [
        {
            "round": n, "model_round": _int(e.get("model_round")), "clients": _num(e.get("clients")),
            "epsilon_rdp": curve[at_round[n - 1] - 1], "epsilon_prv": _finite(prv[k]) if (k := at_round[n - 1]) in prv else None,
            "epsilon_recorded": _recorded(e.get("epsilon")), "unused": n in unused,
            "rejected": per_rejected.get(m) if (m := _int(e.get("model_round"))) is not None and n not in unused else None,
        }
        for n, e in enumerate(rounds, start=1)
    ]
    headline = audit.epsilon_prv if audit.accountant == Accountant.PRV else audit.epsilon_rdp
    doc["epsilon"] = {
        "accountant": audit.accountant or None, "headline": _epsilon(headline) if verified else None,
        "prv": _epsilon(audit.epsilon_prv) if verified else None, "rdp": _epsilon(audit.epsilon_rdp) if verified else None,
        "delta": _finite(audit.delta), "budget": _finite(audit.budget), "rounds_only": None,
    }
    doc["other_releases"] = _releases(spends, after, curve, verified=verified, delta=audit.delta)
    if doc["other_releases"] and verified:
        round_steps = [steps[i - 1] for i in at_round]
        doc["epsilon"]["rounds_only"] = {
            "prv": _finite(epsilon(compress(round_steps), delta=audit.delta, accountant=Accountant.PRV)),
            "rdp": _finite(epsilon(compress(round_steps), delta=audit.delta, accountant=Accountant.RDP)),
        }
    doc["evaluation"] = _evaluation(header, doc["other_releases"], entries, inputs.results)
    accounted = doc["epsilon"]["headline"]
    doc["empirical"] = _empirical(inputs.empirical, accounted)
    return doc


def audit_document(run_dir: Path, *, public_key: Path | None = None, prv_points: int = PRV_POINTS) -> dict[str, Any]:
    """:func:`collect` then :func:`build_document`."""
    return build_document(collect(run_dir, public_key=public_key), prv_points=prv_points)

