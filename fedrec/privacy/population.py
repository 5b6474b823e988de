"""Population audits: the privacy loss of one population over every run it took part in.

Each run has its own ledger and its own epsilon, but a user's privacy loss is the
composition of every release their data went into: a ``fedrec tune``, the main job, a
re-run after a crash (which pays its first release again), next month's refresh. A
population audit verifies every ledger (:func:`fedrec.privacy.audit.audit_run`) and
recomputes epsilon with the vetted accountants (Opacus PRV and RDP) over the
concatenation of the runs' verified mechanism histories. Epsilons are never added.

The composed epsilon bounds the loss of any user who is in the population of every run
audited (the worst case; a user outside some run spent less). Each run's share is what
it adds to the composition, taking the runs in the order their ledgers started; the
shares add up to the composed epsilon. A tampered or malformed ledger makes the whole
audit fail and no composed epsilon is reported: its entries are not the ones the server
signed, so leaving them out would under-report.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.errors import LedgerError, PrivacyError
from fedrec.privacy.accountant import ACCOUNTANTS, Accountant, History, compress, epsilon
from fedrec.privacy.audit import MALFORMED, OK, OVER_BUDGET, STATUS, TOLERANCE, AuditReport, audit_run
from fedrec.privacy.ledger import LEDGER, fingerprint, load_public_key, read_entries

SCHEMA = "fedrec.population-audit/1"


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """The run folders ``paths`` name: a folder holding ``privacy_ledger.jsonl`` is a run;
    a folder without one stands for every folder under it that holds one (e.g. a
    ``fedrec sweep`` output), in name order. A path that is neither is kept as it is, so
    its audit reports it as malformed rather than dropping it silently."""
    runs: list[Path] = []
    for path in paths:
        if (path / LEDGER).is_file() or not path.is_dir():
            runs.append(path)
            continue
        nested = sorted(p.parent for p in path.rglob(LEDGER) if p.is_file())
        runs += nested or [path]
    return runs


def is_population(paths: Sequence[Path]) -> bool:
    """True unless ``paths`` is the one run folder of a single-run audit."""
    return len(paths) != 1 or find_runs(paths) != [paths[0]]


@dataclass
class RunShare:
    """One run of the population: its own audit and its part of the composition."""

    run_dir: str
    audit: AuditReport
    run_id: str | None = None
    started: float | None = None  # the header's time (the order of the shares)
    population: int | None = None
    history: History = ()
    counted: bool = True  # False: the same ledger as an earlier run, counted once
    epsilon_alone: dict[str, float] = field(default_factory=dict)  # by accountant
    epsilon_after: dict[str, float] = field(default_factory=dict)  # composition of this run and the ones before it
    added: dict[str, float] = field(default_factory=dict)  # epsilon_after minus the one before

    def to_json(self, headline: str) -> dict[str, Any]:
        total = self.audit
        return {
            "run_dir": self.run_dir, "run_id": self.run_id, "started": self.started, "population": self.population,
            "status": total.status, "code": total.code, "problems": list(total.problems), "warnings": list(total.warnings),
            "accountant": total.accountant or None, "delta": _nan_none(total.delta), "budget": _nan_none(total.budget),
            "rounds": total.rounds, "releases": total.releases, "steps": sum(n for _, _, n in self.history),
            "counted": self.counted, "epsilon_run": _epsilon_at_own_delta(total),
            "epsilon_alone": self.epsilon_alone or None, "epsilon_after": self.epsilon_after or None,
            "share": self.added.get(headline) if self.added else None,
        }


@dataclass
class PopulationAudit:
    runs: list[RunShare]
    code: int = OK
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    delta: float = math.nan
    accountant: str = Accountant.PRV
    budget: float = math.inf
    epsilon: dict[str, float] = field(default_factory=dict)  # composed, by accountant; empty if not computed

    @property
    def status(self) -> str:
        return STATUS[self.code]

    @property
    def headline(self) -> float | None:
        return self.epsilon.get(self.accountant)

    def fail(self, code: int, problem: str) -> None:
        self.problems.append(problem)
        if self.code == OK or code > self.code:
            self.code = code

    def history(self) -> History:
        """The concatenated mechanism history of the runs counted, in order."""
        return tuple(step for run in self.runs if run.counted for step in run.history)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "status": self.status, "code": self.code, "problems": list(self.problems),
            "warnings": list(self.warnings), "runs_audited": len(self.runs),
            "runs_counted": sum(r.counted for r in self.runs),
            "epsilon": {
                "accountant": self.accountant, "headline": self.headline,
                "prv": self.epsilon.get(Accountant.PRV), "rdp": self.epsilon.get(Accountant.RDP),
                "delta": _nan_none(self.delta), "budget": None if math.isinf(self.budget) else self.budget,
                "per_user": "any user in the population of every run counted",
            },
            "runs": [r.to_json(self.accountant) for r in self.runs],
        }


def _nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _epsilon_at_own_delta(audit: AuditReport) -> float | None:
    """The run's own headline epsilon at its own delta, as its single audit recomputed it."""
    if audit.code not in (OK, OVER_BUDGET):
        return None
    value = audit.epsilon_prv if audit.accountant == Accountant.PRV else audit.epsilon_rdp
    return None if math.isnan(value) else value


def trusted_key(run_dir: Path, keys: Sequence[Path]) -> Path | None:
    """The given public key whose fingerprint the run's header names; the first one when
    none does (its audit then reports the mismatch as tampering); None without keys."""
    if not keys:
        return None
    try:
        header = read_entries(run_dir / LEDGER).entries[0]
    except (LedgerError, IndexError):
        return keys[0]
    for key in keys:
        try:
            if fingerprint(load_public_key(key)) == header.get("key_fingerprint"):
                return key
        except LedgerError:
            continue
    return keys[0]


def _ledger_digest(run_dir: Path) -> str | None:
    try:
        return hashlib.sha256((run_dir / LEDGER).read_bytes()).hexdigest()
    except OSError:
        return None


def audit_population(
    paths: Sequence[Path], *, public_keys: Sequence[Path] = (), delta: float | None = None, budget: float | None = None,
    accountant: str | None = None,
) -> PopulationAudit:
    """Verify every run under ``paths`` and compose their mechanism histories.

    ``delta``: the delta at which the composition is evaluated (default: the smallest of
    the runs' deltas, the strictest they promised). ``budget``: the population's budget
    (exit code 4 when the composed epsilon exceeds it). ``accountant``: the headline
    (default: the runs' common accountant, PRV when they differ). Never raises for bad
    ledger content.
    """
    runs = [_audit_one(path, public_keys) for path in find_runs(paths)]
    out = PopulationAudit(runs=runs, budget=math.inf if budget is None else float(budget))
    if not runs:
        out.fail(MALFORMED, "no run folder given")
        return out
    for run in runs:
        if run.audit.code != OK:
            out.fail(run.audit.code, f"{run.run_dir}: {run.audit.problems[0] if run.audit.problems else run.audit.status}")
    _mark_duplicates(runs, out)
    accountants = {r.audit.accountant for r in runs if r.audit.accountant}
    out.accountant = accountant or (accountants.pop() if len(accountants) == 1 else Accountant.PRV)
    if out.accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {out.accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    if len(accountants) > 1 and accountant is None:
        out.warnings.append("the runs use different accountants; the headline is PRV (RDP is reported beside it)")
    deltas = [r.audit.delta for r in runs if not math.isnan(r.audit.delta)]
    out.delta = float(delta) if delta is not None else (min(deltas) if deltas else math.nan)
    if len(set(deltas)) > 1 and delta is None:
        out.warnings.append(f"the runs state different deltas; the composition is evaluated at the smallest, {out.delta:g}")
    populations = {r.population for r in runs if r.counted and r.population is not None}
    if len(populations) > 1:
        out.warnings.append(
            f"the runs' populations differ ({', '.join(map(str, sorted(populations)))} users): the composed epsilon is that "
            "of a user in every one of them"
        )
    if any(r.audit.code not in (OK, OVER_BUDGET) for r in runs):
        out.warnings.append("composed epsilon not computed: a ledger does not verify, and leaving it out would under-report")
        return out
    if not 0 < out.delta < 1:
        out.fail(MALFORMED, f"delta must be in (0, 1), got {out.delta}")
        return out
    _compose(out)
    headline = out.headline
    if headline is not None and headline > out.budget * (1 + TOLERANCE):
        out.fail(OVER_BUDGET, f"composed epsilon {headline:.4g} exceeds the population budget {out.budget:.4g}")
    return out


def _audit_one(path: Path, public_keys: Sequence[Path]) -> RunShare:
    audit = audit_run(path, public_key=trusted_key(path, public_keys))
    run = RunShare(run_dir=str(path), audit=audit)
    try:
        header = read_entries(path / LEDGER).entries[0]
    except (LedgerError, IndexError):
        return run
    run.run_id = header.get("run_id") if isinstance(header.get("run_id"), str) else None
    started = header.get("time")
    run.started = float(started) if isinstance(started, (int, float)) and not isinstance(started, bool) else None
    population = header.get("population")
    run.population = population if isinstance(population, int) and not isinstance(population, bool) else None
    if audit.code in (OK, OVER_BUDGET):
        run.history = compress(audit.steps)
    return run


def _mark_duplicates(runs: list[RunShare], out: PopulationAudit) -> None:
    """The same ledger given twice (the same folder, or a byte-identical copy) counts once;
    two different ledgers with the same run id both count (an over-estimate if one is an
    earlier copy of the other, never an under-estimate)."""
    seen: dict[str, RunShare] = {}
    ids: dict[str, RunShare] = {}
    for run in runs:
        digest = _ledger_digest(Path(run.run_dir))
        if digest is not None and digest in seen:
            run.counted = False
            out.warnings.append(f"{run.run_dir}: the same ledger as {seen[digest].run_dir}; counted once")
            continue
        if digest is not None:
            seen[digest] = run
        if run.run_id is not None and run.run_id in ids:
            out.warnings.append(
                f"{run.run_dir}: same run id as {ids[run.run_id].run_dir} but a different ledger; both are counted"
            )
        elif run.run_id is not None:
            ids[run.run_id] = run


def _compose(out: PopulationAudit) -> None:
    """Epsilon of each run alone, after each run (in start order) and of all of them."""
    counted = [r for r in out.runs if r.counted]
    counted.sort(key=lambda r: (r.started is None, r.started or 0.0))
    out.runs = counted + [r for r in out.runs if not r.counted]
    before: History = ()
    previous = {a: 0.0 for a in ACCOUNTANTS}
    try:
        for run in counted:
            before = before + run.history
            for acc in ACCOUNTANTS:
                run.epsilon_alone[acc] = epsilon(run.history, delta=out.delta, accountant=acc)
                run.epsilon_after[acc] = epsilon(before, delta=out.delta, accountant=acc)
                run.added[acc] = run.epsilon_after[acc] - previous[acc]
                previous[acc] = run.epsilon_after[acc]
        for acc in ACCOUNTANTS:
            out.epsilon[acc] = epsilon(before, delta=out.delta, accountant=acc)
    except (PrivacyError, ArithmeticError, MemoryError, RuntimeError, ValueError) as err:
        out.epsilon.clear()
        out.fail(MALFORMED, f"the accountant cannot evaluate the composed history ({err})")
