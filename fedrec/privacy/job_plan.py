"""A job's privacy plan: what the server will release, announced before it asks anything.

Before a job's first request the server announces its plan: every release or round as
a mechanism (noise multiplier z, Poisson sampling rate q, clipping norm C, steps), the
delta and accountant, and the run's ledger public key, signed with that key. A device
checks the signature and composes the plan with what it already spent
(:mod:`fedrec.privacy.odometer`) before it takes part; the ledger records the plan as
an entry before any release, and ``fedrec audit`` checks that what was spent never
exceeds what was announced (:func:`check_spent_within_plan`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrec.errors import LedgerError
from fedrec.privacy.accountant import ACCOUNTANTS, History
from fedrec.privacy.ledger import canonical, fingerprint, public_pem

PLAN_KIND = "plan"
PLAN_FIELDS = ("run_id", "accountant", "delta", "releases", "ledger_key")
RELEASE_KEYS = ("purpose", "noise_multiplier", "sample_rate", "clipping_norm", "steps")


class PlanError(LedgerError):
    """A plan that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class PlannedRelease:
    """One mechanism of the plan: ``steps`` applications of a Poisson-subsampled Gaussian
    sum (rate ``sample_rate``, noise ``noise_multiplier`` times ``clipping_norm``)."""

    purpose: str
    noise_multiplier: float
    sample_rate: float
    clipping_norm: float
    steps: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "noise_multiplier": float(self.noise_multiplier),
                "sample_rate": float(self.sample_rate), "clipping_norm": float(self.clipping_norm), "steps": int(self.steps)}

    @classmethod
    def from_json(cls, raw: object) -> PlannedRelease:
        if not isinstance(raw, dict) or set(raw) != set(RELEASE_KEYS):
            raise PlanError(f"a planned release has exactly the keys {', '.join(RELEASE_KEYS)}")
        z, q, c, steps = (raw[k] for k in ("noise_multiplier", "sample_rate", "clipping_norm", "steps"))
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (z, q, c)):
            raise PlanError("a planned release's z, q and C are numbers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise PlanError(f"a planned release's steps are a positive integer, got {steps!r}")
        if not (0 < q <= 1 and z >= 0 and c > 0 and math.isfinite(z)):
            raise PlanError(f"planned release parameters out of range (q={q}, z={z}, C={c})")
        return cls(purpose=str(raw["purpose"]), noise_multiplier=float(z), sample_rate=float(q),
                   clipping_norm=float(c), steps=steps)


@dataclass(frozen=True)
class JobPlan:
    """A job's announced privacy plan; ``signature`` is the ledger key's over :meth:`body`."""

    run_id: str
    accountant: str
    delta: float
    releases: tuple[PlannedRelease, ...]
    ledger_key: str  # the ledger's Ed25519 public key, PEM
    signature: str = ""

    def body(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "accountant": self.accountant, "delta": float(self.delta),
                "releases": [r.to_json() for r in self.releases], "ledger_key": self.ledger_key}

    def history(self) -> History:
        """The plan as an accountant history ``((z, q, steps), ...)``, in order."""
        return tuple((r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases)

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical plan body (what is signed)."""
        return hashlib.sha256(canonical(self.body())).hexdigest()

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.public_key())

    def public_key(self) -> Ed25519PublicKey:
        try:
            key = serialization.load_pem_public_key(self.ledger_key.encode())
        except ValueError as err:
            raise PlanError(f"the plan's ledger key is not a PEM public key ({err})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise PlanError("the plan's ledger key is not an Ed25519 public key")
        return key

    def verify(self) -> None:
        """Raise :class:`PlanError` unless the signature is the plan's ledger key's."""
        try:
            self.public_key().verify(base64.b64decode(self.signature, validate=True), canonical(self.body()))
        except (InvalidSignature, ValueError):
            raise PlanError(f"the plan of job {self.run_id} is not signed by its ledger key") from None

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    def encode(self) -> str:
        """One line of JSON, as sent to devices."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, raw: object) -> JobPlan:
        """Parse (not verify) a plan; a malformed one is a :class:`PlanError`."""
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except (ValueError, RecursionError) as err:
                raise PlanError(f"a plan is one JSON object ({str(err)[:120]})") from None
        if not isinstance(raw, dict):
            raise PlanError("a plan is a JSON object")
        missing = [k for k in (*PLAN_FIELDS, "signature") if k not in raw]
        if missing:
            raise PlanError(f"the plan lacks {', '.join(missing)}")
        delta, releases = raw["delta"], raw["releases"]
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise PlanError(f"the plan's delta must be in (0, 1), got {delta!r}")
        if raw["accountant"] not in ACCOUNTANTS:
            raise PlanError(f"the plan names an unknown accountant {raw['accountant']!r}")
        if not isinstance(releases, list) or not releases:
            raise PlanError("the plan lists at least one release")
        return cls(run_id=str(raw["run_id"]), accountant=str(raw["accountant"]), delta=float(delta),
                   releases=tuple(PlannedRelease.from_json(r) for r in releases), ledger_key=str(raw["ledger_key"]),
                   signature=str(raw["signature"]))


def sign_plan(
    *, run_id: str, accountant: str, delta: float, releases: Sequence[PlannedRelease], key: Ed25519PrivateKey,
) -> JobPlan:
    """The plan signed with the run's ledger key."""
    unsigned = JobPlan(run_id=run_id, accountant=accountant, delta=float(delta), releases=tuple(releases),
                       ledger_key=public_pem(key).decode())
    JobPlan.from_json(unsigned.to_json())  # the same checks a device makes
    signature = base64.b64encode(key.sign(canonical(unsigned.body()))).decode()
    return JobPlan(**{**unsigned.__dict__, "signature": signature})


def plan_counts(plan: JobPlan) -> Counter[tuple[float, float]]:
    """How many mechanism steps the plan announced for each (z, q)."""
    planned: Counter[tuple[float, float]] = Counter()
    for r in plan.releases:
        planned[(r.noise_multiplier, r.sample_rate)] += r.steps
    return planned


def spent_within_plan(plan: JobPlan, spent: Sequence[tuple[float, float]]) -> str | None:
    """None if every mechanism step spent ``(z, q)`` was announced: for each (z, q), the
    ledger spent at most as many steps as the plan announced (in any order, so that a
    job stopped early or evaluating between rounds still matches); then the spent
    history is part of the planned one and its epsilon is at most the plan's. Else what
    was spent beyond the plan."""
    planned = plan_counts(plan)
    used = Counter((float(z), float(q)) for z, q in spent)
    for (z, q), count in used.items():
        if count > planned[(z, q)]:
            return (f"the ledger spent {count} step(s) with z={z:.6g}, q={q:.6g}; "
                    f"the plan announced {planned[(z, q)]}")
    return None


def announce_plan(session: Any, releases: Sequence[PlannedRelease]) -> JobPlan:
    """Sign the job's plan with ``session``'s ledger key and record it as the ledger's
    first entry after the header, before any release (a
    :class:`fedrec.privacy.session.PrivacySession`, which from then on spends nothing
    beyond it); returns the plan to send to devices."""
    writer = session.writer
    if any(e.get("kind") in ("round", "release", PLAN_KIND) for e in writer.entries):
        raise LedgerError("a job's plan is announced once, before its first release")
    plan = sign_plan(run_id=str(writer.entries[0]["run_id"]), accountant=session.accountant, delta=session.delta,
                     releases=releases, key=writer.key)
    writer.append({"kind": PLAN_KIND, "plan": plan.to_json()})
    session.adopt_plan(plan)
    return plan


def ledger_plan(entries: Sequence[dict[str, Any]]) -> JobPlan | None:
    """The plan a ledger announced (None for a ledger without one); a plan entry that
    is misplaced or malformed is a :class:`PlanError`."""
    plans = [n for n, e in enumerate(entries) if e.get("kind") == PLAN_KIND]
    if not plans:
        return None
    if plans != [1]:
        raise PlanError("a ledger holds one plan entry, right after its header")
    return JobPlan.from_json(entries[1].get("plan"))
