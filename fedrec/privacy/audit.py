"""Audit a run from its artefacts alone: chain, signatures, epsilon, budget.

Exit codes of ``fedrec audit``: 0 verified and within budget; 3 tampered (a broken
chain or signature, or a recorded epsilon below what the mechanism spent); 4 over
budget; 5 malformed (unreadable, truncated or missing fields). A worse finding wins:
malformed > tampered > over budget.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from fedrec.errors import LedgerError, PrivacyError
from fedrec.experiments.results import RESULTS
from fedrec.privacy.accountant import ACCOUNTANTS, Accountant, compress, epsilon
from fedrec.privacy.ledger import (
    GENESIS,
    HEADER_FIELDS,
    LEDGER,
    PUBLIC_KEY,
    RELEASE_FIELDS,
    ROUND_FIELDS,
    ParsedLedger,
    canonical,
    decode_epsilon,
    fingerprint,
    load_public_key,
    read_entries,
)

OK, TAMPERED, OVER_BUDGET, MALFORMED = 0, 3, 4, 5
STATUS = {OK: "verified", TAMPERED: "tampered", OVER_BUDGET: "over budget", MALFORMED: "malformed"}
TOLERANCE = 1e-6  # relative; recomputation is deterministic, so only float noise is allowed


@dataclass
class AuditReport:
    run_dir: str
    code: int = OK
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rounds: int = 0
    releases: int = 0  # other releases (e.g. a DP popularity prior), composed with the rounds
    delta: float = math.nan
    budget: float = math.nan
    accountant: str = ""
    recorded_epsilon: float = math.nan
    epsilon_prv: float = math.nan
    epsilon_rdp: float = math.nan
    closed: bool = False
    resumes: int = 0  # times the run continued after a crash (rounds spent before it still count)
    stopped_by_budget: bool = False
    planned_steps: int | None = None  # mechanism steps the job's signed plan announced (None: no plan entry)
    # every verified mechanism step (z, q) in ledger order (empty unless chain and signatures
    # hold); not part of the JSON report: a population audit composes it with other runs'
    steps: list[tuple[float, float]] = field(default_factory=list, repr=False)

    @property
    def status(self) -> str:
        return STATUS[self.code]

    def fail(self, code: int, problem: str) -> None:
        self.problems.append(problem)
        if self.code == OK or code > self.code:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["steps"]
        out["status"] = self.status
        # NaN: not computed; an infinite budget (none) or epsilon (a step without noise) is Infinity
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _number(entry: dict[str, Any], key: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LedgerError(f"field {key!r} is missing or not a number")
    return float(value)


def _check_round(entry: dict[str, Any], header: dict[str, Any]) -> tuple[float, float]:
    missing = [k for k in ROUND_FIELDS if k not in entry]
    if missing:
        raise LedgerError(f"round entry lacks {', '.join(missing)}")
    z, q, c = _number(entry, "noise_multiplier"), _number(entry, "sample_rate"), _number(entry, "clipping_norm")
    if not (0 < q <= 1 and z >= 0 and c > 0):
        raise LedgerError(f"round {entry.get('round')}: parameters out of range (q={q}, z={z}, C={c})")
    if entry["delta"] != header["delta"] or entry["accountant"] != header["accountant"]:
        raise LedgerError(f"round {entry.get('round')}: delta or accountant differs from the header")
    return z, q


def _check_release(entry: dict[str, Any], header: dict[str, Any]) -> list[tuple[float, float]]:
    missing = [k for k in RELEASE_FIELDS if k not in entry]
    if missing:
        raise LedgerError(f"release entry lacks {', '.join(missing)}")
    z, q, c = _number(entry, "noise_multiplier"), _number(entry, "sample_rate"), _number(entry, "clipping_norm")
    steps = entry["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LedgerError(f"release {entry.get('release')}: steps must be a positive integer, got {steps!r}")
    if not (0 < q <= 1 and z >= 0 and c > 0):
        raise LedgerError(f"release {entry.get('release')}: parameters out of range (q={q}, z={z}, C={c})")
    if entry["delta"] != header["delta"] or entry["accountant"] != header["accountant"]:
        raise LedgerError(f"release {entry.get('release')}: delta or accountant differs from the header")
    return [(z, q)] * steps


def audit_run(run_dir: Path, *, public_key: Path | None = None) -> AuditReport:
    """Verify ``run_dir/privacy_ledger.jsonl``; never raises for bad content."""
    report = AuditReport(run_dir=str(run_dir))
    opened = _open_ledger(run_dir, public_key, report)
    if opened is None:
        return report
    parsed, key = opened
    entries = parsed.entries
    _check_chain(parsed, key, report)  # 1. chain and signatures
    spent = _mechanism_steps(entries, report)  # 2. the rounds and their mechanism parameters
    if spent is None:
        return report
    steps, spends = spent
    if not _check_epsilon(steps, spends, report):  # 3. epsilon
        return report
    _check_plan(entries, steps, key, report)  # 3b. what was spent against what was announced
    _check_end(entries, report)  # 4. the run's end
    _check_results(run_dir, parsed, report)
    return report


def _open_ledger(run_dir: Path, public_key: Path | None, report: AuditReport) -> tuple[ParsedLedger, Any] | None:
    """The parsed ledger and the public key, with the header's delta, budget and
    accountant filled into ``report``; None (``report`` says why) if unusable."""
    try:
        parsed = read_entries(run_dir / LEDGER)
        key = load_public_key(public_key or run_dir / PUBLIC_KEY)
    except LedgerError as err:
        report.fail(MALFORMED, str(err))
        return None
    entries = parsed.entries
    if not entries or entries[0].get("kind") != "header":
        report.fail(MALFORMED, "the ledger does not start with a header entry")
        return None
    header = entries[0]
    missing = [k for k in HEADER_FIELDS if k not in header]
    if missing:
        report.fail(MALFORMED, f"header lacks {', '.join(missing)}")
        return None
    try:  # a hostile ledger can put any JSON value in any field
        report.delta, report.accountant = _number(header, "delta"), str(header["accountant"])
        report.budget = _number(header, "budget") if header["budget"] is not None else math.inf
    except LedgerError as err:
        report.fail(MALFORMED, f"header: {err}")
        return None
    if report.accountant not in ACCOUNTANTS:
        report.fail(MALFORMED, f"unknown accountant {report.accountant!r}")
        return None
    if header["key_fingerprint"] != fingerprint(key):
        report.fail(TAMPERED, "the public key is not the one named in the ledger header")
    return parsed, key


def _check_chain(parsed: ParsedLedger, key: Any, report: AuditReport) -> None:
    """Every entry names its predecessor's hash and carries a valid signature."""
    previous = GENESIS
    for n, (entry, digest) in enumerate(zip(parsed.entries, parsed.hashes), start=1):
        if entry.get("prev_hash") != previous:
            report.fail(TAMPERED, f"line {n}: hash chain broken (an entry was edited, removed or reordered before it)")
        try:
            key.verify(base64.b64decode(str(entry.get("signature", ""))), canonical(entry))
        except (InvalidSignature, ValueError):
            report.fail(TAMPERED, f"line {n}: signature does not verify")
        previous = digest


def _mechanism_steps(
    entries: list[dict[str, Any]], report: AuditReport
) -> tuple[list[tuple[float, float]], list[dict[str, Any]]] | None:
    """Every mechanism step (z, q) in order, and the round and release entries that spent
    them; checks their numbering and the resume entries' counts. None if an entry is
    malformed."""
    header = entries[0]
    steps: list[tuple[float, float]] = []
    rounds = [e for e in entries[1:] if e.get("kind") == "round"]
    seen = 0  # a resume entry states how many rounds came before it: removing one shows
    for entry in entries[1:]:
        if entry.get("kind") == "round":
            seen += 1
        elif entry.get("kind") == "resume":
            report.resumes += 1
            if entry.get("recorded_rounds") != seen:
                report.fail(TAMPERED, f"a resume entry counts {entry.get('recorded_rounds')!r} earlier rounds, the ledger has {seen}")
    releases = [e for e in entries[1:] if e.get("kind") == "release"]
    for expected, entry in enumerate(rounds, start=1):
        if entry.get("round") != expected:
            report.fail(TAMPERED, f"round {entry.get('round')} found where round {expected} was expected")
    for expected, entry in enumerate(releases, start=1):
        if entry.get("release") != expected:
            report.fail(TAMPERED, f"release {entry.get('release')} found where release {expected} was expected")
    spends = [e for e in entries[1:] if e.get("kind") in ("round", "release")]  # every mechanism step, in order
    try:
        for entry in spends:
            steps += [_check_round(entry, header)] if entry["kind"] == "round" else _check_release(entry, header)
    except LedgerError as err:
        report.fail(MALFORMED, str(err))
        return None
    report.rounds, report.releases = len(rounds), len(releases)
    return steps, spends


def _check_epsilon(steps: list[tuple[float, float]], spends: list[dict[str, Any]], report: AuditReport) -> bool:
    """Epsilon recomputed independently with both accountants against the recorded one
    and the budget; False if the entries are malformed (stop auditing)."""
    # Only from entries whose signatures verify: forged parameters (z = 1e-300, 1e300, ...)
    # can make an accountant overflow, exhaust memory or run for hours, and the verdict is already in.
    if report.code != OK:
        report.warnings.append("epsilon not recomputed: the entries are not the ones the server signed")
        return True
    report.steps = list(steps)
    history = compress(steps)
    try:
        report.epsilon_prv = epsilon(history, delta=report.delta, accountant=Accountant.PRV)
        report.epsilon_rdp = epsilon(history, delta=report.delta, accountant=Accountant.RDP)
    except (PrivacyError, ArithmeticError, MemoryError, RuntimeError, ValueError) as err:
        report.fail(MALFORMED, f"the accountant cannot evaluate these mechanism parameters ({err})")
        return False
    headline = report.epsilon_prv if report.accountant == Accountant.PRV else report.epsilon_rdp
    if spends:
        try:
            report.recorded_epsilon = decode_epsilon(spends[-1].get("epsilon"))
        except LedgerError as err:
            report.fail(MALFORMED, f"{spends[-1]['kind']} entry {len(spends)}: {err}")
            return False
        if report.recorded_epsilon < headline * (1 - TOLERANCE):
            report.fail(TAMPERED, f"recorded epsilon {report.recorded_epsilon:.6g} is below the recomputed {headline:.6g}")
    if headline > report.budget * (1 + TOLERANCE):
        report.fail(OVER_BUDGET, f"epsilon {headline:.4g} exceeds the budget {report.budget:.4g}")
    return True


def _check_plan(entries: list[dict[str, Any]], steps: list[tuple[float, float]], key: Any, report: AuditReport) -> None:
    """A ledger that announced its plan (:mod:`fedrec.privacy.job_plan`) spent no
    mechanism step beyond it; the plan is signed by the run's own ledger key and names
    the run. Ledgers without a plan entry are audited as before."""
    from fedrec.privacy.job_plan import ledger_plan, spent_within_plan

    try:
        plan = ledger_plan(entries)
    except LedgerError as err:
        report.fail(MALFORMED, f"plan entry: {err}")
        return
    if plan is None:
        return
    report.planned_steps = sum(r.steps for r in plan.releases)
    try:
        plan.verify()
        if plan.key_fingerprint != fingerprint(key) or plan.run_id != entries[0].get("run_id"):
            report.fail(TAMPERED, "the plan names another run or another ledger key")
    except LedgerError as err:
        report.fail(TAMPERED, f"plan entry: {err}")
    beyond = spent_within_plan(plan, steps)
    if beyond is not None:
        report.fail(OVER_BUDGET, f"spent beyond the announced plan: {beyond}")


def _check_end(entries: list[dict[str, Any]], report: AuditReport) -> None:
    """The close entry, if any, is last and counts every round and release."""
    closes = [e for e in entries[1:] if e.get("kind") == "close"]
    if not closes:
        report.warnings.append("no close entry: the run crashed or is still running (every recorded round counts)")
        return
    close = closes[-1]
    report.closed = entries[-1] is close
    report.stopped_by_budget = bool(close.get("stopped_by_budget", False))
    if not report.closed or close.get("rounds") != report.rounds or close.get("releases", 0) != report.releases:
        report.fail(TAMPERED, "the close entry is not last or counts a different number of rounds or releases")


def _check_results(run_dir: Path, parsed: ParsedLedger, report: AuditReport) -> None:
    """results.json, when present, names the ledger's last entry."""
    results_path = run_dir / RESULTS
    if not results_path.is_file():
        return
    try:
        results = json.loads(results_path.read_bytes())
    except (OSError, ValueError, RecursionError):
        results = None
    if isinstance(results, dict):
        head = results.get("ledger_head")
    else:
        head = None
        report.warnings.append("results.json is unreadable; skipped the cross-check")
    if head is not None and head != parsed.hashes[-1]:
        report.fail(TAMPERED, "results.json names a different last ledger entry (entries were removed from the end?)")
