"""A device's privacy odometer: its own budget across every job it ever took part in.

Each run has its own ledger, but the privacy promise is made to the device's owner, so
the device keeps its own account. The odometer is an append-only, hash-chained file of
JSON lines (``privacy_odometer.jsonl`` beside the device's data and key), signed with
the device's key when it has one, with a small head record (``privacy_odometer.head``:
the number of entries and the last entry's hash, signed too) so that removing the last
entry shows. Entries:

- ``open``: the first line (the signing key's fingerprint, or none);
- ``job``: a job's signed plan (:class:`fedrec.privacy.job_plan.JobPlan`), written and
  fsync'ed *before* the device contributes anything to it, with the epsilon after it;
- ``took_part``: a release or round of a job the device actually replied to;
- ``refused``: a job whose plan would take the device above its budget;
- ``reset``: the owner started the record again (or repaired it) after damage, with the
  owner's note, the damaged file's name and SHA-256; it stays visible in the record.

The device's epsilon is recomputed at every job with the same vetted accountant the
server uses (:func:`fedrec.privacy.accountant.epsilon`) over the concatenation of every
accepted job's full plan, at the device's own delta. A job is charged its whole plan
when it is accepted, whether or not the device is sampled in its rounds: under Poisson
sampling the accounting covers not being sampled too, and a job that stops early is
never charged less than it announced. A job is refused exactly when its plan would take
that epsilon above the device's budget (``device-epsilon`` at ``device-delta``); a
refusal is a dropout to the server, so it costs signal, never privacy.

A damaged record (an entry edited, removed or reordered, a bad signature, a missing or
wrong head) makes the device refuse every job until its owner repairs it
(:meth:`Odometer.repair`: keeps every job whose plan still carries the server's valid
signature) or resets it (:meth:`Odometer.reset`), each with a note that stays in the
record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrec.errors import PrivacyError
from fedrec.privacy.accountant import ACCOUNTANTS, History, epsilon
from fedrec.privacy.job_plan import JobPlan, PlanError
from fedrec.privacy.ledger import GENESIS, append_durably, canonical, line_hash

logger = logging.getLogger(__name__)

ODOMETER = "privacy_odometer.jsonl"
HEAD = "privacy_odometer.head"
DEVICE_EPSILON, DEVICE_DELTA, DEVICE_ACCOUNTANT = "device-epsilon", "device-delta", "device-accountant"


@dataclass(frozen=True)
class OdometerSettings:
    """The device owner's budget: ``device-epsilon`` at ``device-delta`` (not the server's)."""

    epsilon: float
    delta: float = 1e-5
    accountant: str = "prv"

    def __post_init__(self) -> None:
        if not self.epsilon >= 0:
            raise PrivacyError(f"{DEVICE_EPSILON} must be a number >= 0 (inf: no limit), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise PrivacyError(f"{DEVICE_DELTA} must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyError(f"{DEVICE_ACCOUNTANT} must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> OdometerSettings | None:
        """From a device's settings (``device-epsilon``, ``device-delta``,
        ``device-accountant``); None when ``device-epsilon`` is not set."""
        if values.get(DEVICE_EPSILON) is None:
            return None
        try:
            return cls(epsilon=float(values[DEVICE_EPSILON]), delta=float(values.get(DEVICE_DELTA, 1e-5)),
                       accountant=str(values.get(DEVICE_ACCOUNTANT, "prv")))
        except (TypeError, ValueError):
            raise PrivacyError(f"{DEVICE_EPSILON} and {DEVICE_DELTA} are numbers, got {values.get(DEVICE_EPSILON)!r}, "
                               f"{values.get(DEVICE_DELTA)!r}") from None


class DeviceSigner:
    """The device's own key (EC, as ``fedrec deploy keys`` writes it in OpenSSH format, or
    Ed25519): signs odometer entries, so that only the device can write a valid record."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> None:
        self.key = key
        raw = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fingerprint = hashlib.sha256(raw).hexdigest()

    @classmethod
    def load(cls, path: Path) -> DeviceSigner:
        data = Path(path).read_bytes()
        try:
            key: Any = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except ValueError as err:
                raise PrivacyError(f"{path}: not a device private key ({err})") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, Ed25519PrivateKey)):
            raise PrivacyError(f"{path}: the device key must be an EC or Ed25519 key")
        return cls(key)

    def sign(self, data: bytes) -> str:
        if isinstance(self.key, Ed25519PrivateKey):
            return base64.b64encode(self.key.sign(data)).decode()
        return base64.b64encode(self.key.sign(data, ec.ECDSA(hashes.SHA384()))).decode()

    def verify(self, signature: object, data: bytes) -> bool:
        public = self.key.public_key()
        try:
            raw = base64.b64decode(str(signature), validate=True)
            if isinstance(public, Ed25519PublicKey):
                public.verify(raw, data)
            else:
                public.verify(raw, data, ec.ECDSA(hashes.SHA384()))
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Decision:
    """The device's answer to a job: take part or refuse, and why."""

    accepted: bool
    reason: str
    epsilon_before: float | None  # the device's epsilon before the job (None: the record is damaged)
    epsilon_after: float | None  # with the job's plan (None: not computed)


class Odometer:
    """A device's odometer; ``path`` None keeps it in memory (a simulated device)."""

    def __init__(self, settings: OdometerSettings, *, path: Path | None = None, signer: DeviceSigner | None = None) -> None:
        self.settings, self.path, self.signer = settings, path, signer
        self.entries: list[dict[str, Any]] = []
        self.hashes: list[str] = []
        self.problems: list[str] = []
        if path is not None and (path.exists() or path.with_name(HEAD).exists()):
            self._load()  # a head without its record: the record was removed, which shows
        else:
            self._append({"kind": "open", "key_fingerprint": signer.fingerprint if signer else None})

    @classmethod
    def beside(cls, folder: Path, settings: OdometerSettings, *, key: Path | None = None) -> Odometer:
        """The odometer in ``folder`` (a device's data folder), signed with ``key`` if given."""
        return cls(settings, path=Path(folder) / ODOMETER, signer=DeviceSigner.load(key) if key is not None else None)

    # -- the record -------------------------------------------------------------------

    @property
    def head_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(HEAD)

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        full = {**entry, "time": round(time.time(), 3), "prev_hash": self.hashes[-1] if self.hashes else GENESIS}
        if self.signer is not None:
            full["signature"] = self.signer.sign(canonical(full))
        line = json.dumps(full, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_durably(self.path, line, mode=0o600)
        self.entries.append(full)
        self.hashes.append(line_hash(line))
        self._write_head()
        return full

    def _head_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"entries": len(self.entries), "head": self.hashes[-1] if self.hashes else GENESIS}
        if self.signer is not None:
            record["signature"] = self.signer.sign(canonical(record))
        return record

    def _write_head(self) -> None:
        if self.head_path is None:
            return
        tmp = self.head_path.with_name(HEAD + ".tmp")
        tmp.write_text(json.dumps(self._head_record(), sort_keys=True))
        os.replace(tmp, self.head_path)

    def _load(self) -> None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = b""
            self.problems.append(f"{self.path.name} is missing but its head record is not (the record was removed)")
        for lineno, line in enumerate(raw.splitlines(), start=1):
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                entry = None
            if not isinstance(entry, dict):
                self.problems.append(f"line {lineno}: not a JSON object")
                entry = {}
            self.entries.append(entry)
            self.hashes.append(line_hash(line))
        if raw and not raw.endswith(b"\n"):
            self.problems.append("the last line is cut off")
        self.problems += self._verify()

    def _verify(self) -> list[str]:
        """Everything wrong with the record as loaded (empty: intact)."""
        problems: list[str] = []
        if not self.entries or self.entries[0].get("kind") != "open":
            problems.append("the record does not start with its open entry")
        previous = GENESIS
        for n, (entry, digest) in enumerate(zip(self.entries, self.hashes), start=1):
            if entry.get("prev_hash") != previous:
                problems.append(f"entry {n}: the hash chain is broken (an entry was edited, removed or reordered)")
            if self.signer is not None and not self.signer.verify(entry.get("signature"), canonical(entry)):
                problems.append(f"entry {n}: not signed by this device's key")
            previous = digest
        problems += self._verify_head()
        for entry in self.entries:
            if entry.get("kind") == "job":
                try:
                    JobPlan.from_json(entry.get("plan"))
                except PlanError as err:
                    problems.append(f"job {entry.get('run_id')!r}: {err}")
        return problems

    def _verify_head(self) -> list[str]:
        assert self.head_path is not None
        try:
            head = json.loads(self.head_path.read_text())
        except (OSError, ValueError):
            return [f"{HEAD} is missing or unreadable (entries may have been removed from the end)"]
        if not isinstance(head, dict):
            return [f"{HEAD} is not a JSON object"]
        if self.signer is not None and not self.signer.verify(head.get("signature"), canonical(head)):
            return [f"{HEAD} is not signed by this device's key"]
        count = head.get("entries")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= len(self.entries):
            return [f"{HEAD} counts {count!r} entries, the record has {len(self.entries)} (entries were removed?)"]
        if self.hashes[count - 1] != head.get("head"):
            return [f"{HEAD} names another entry {count} than the record holds (an entry was edited or removed)"]
        # entries after the head: a crash between the entry's write and the head's; they only add spend
        return []

    @property
    def intact(self) -> bool:
        return not self.problems

    # -- the account ------------------------------------------------------------------

    def jobs(self) -> list[JobPlan]:
        """The plans of every job accepted, in order (one per run id and plan)."""
        out: list[JobPlan] = []
        for entry in self.entries:
            if entry.get("kind") == "job":
                out.append(JobPlan.from_json(entry["plan"]))
        return out

    def history(self, extra: Iterable[JobPlan] = ()) -> History:
        """The concatenated mechanism history of every accepted job (and ``extra``)."""
        return tuple(step for plan in [*self.jobs(), *extra] for step in plan.history())

    def epsilon(self, extra: Iterable[JobPlan] = ()) -> float:
        """The device's epsilon at its own delta (the accountant over :meth:`history`)."""
        return epsilon(self.history(extra), delta=self.settings.delta, accountant=self.settings.accountant)

    def _accepted(self, plan: JobPlan) -> bool:
        return any(e.get("kind") == "job" and e.get("plan_digest") == plan.digest for e in self.entries)

    def admit(self, plan: JobPlan) -> Decision:
        """Take part in ``plan``'s job, or refuse it; an acceptance is recorded (and
        fsync'ed) before it returns, so the device is charged before it sends anything.

        Refused: a damaged record, a plan whose signature does not verify, or one that
        would take the device's epsilon above its budget. The same plan again (a resumed
        job, its next round) is accepted without a second charge.
        """
        if not self.intact:
            return Decision(False, "the privacy odometer is damaged (" + "; ".join(self.problems[:3])
                            + "): repair or reset it", None, None)
        try:
            plan.verify()
        except PlanError as err:
            return Decision(False, str(err), None, None)
        before = self.epsilon()
        if self._accepted(plan):
            return Decision(True, "already accepted: charged once", before, before)
        after = self.epsilon([plan])
        if after > self.settings.epsilon:
            reason = (f"job {plan.run_id} would take this device's epsilon from {before:.4g} to {after:.4g}, "
                      f"above its budget {self.settings.epsilon:.4g} (delta {self.settings.delta:g})")
            self._append({"kind": "refused", "run_id": plan.run_id, "plan_digest": plan.digest,
                          "epsilon_before": _encode(before), "epsilon_would_be": _encode(after),
                          "device_epsilon": _encode(self.settings.epsilon), "device_delta": self.settings.delta})
            logger.info("privacy odometer: refused: %s", reason)
            return Decision(False, reason, before, after)
        self._append({"kind": "job", "run_id": plan.run_id, "plan": plan.to_json(), "plan_digest": plan.digest,
                      "epsilon_after": _encode(after), "device_epsilon": _encode(self.settings.epsilon),
                      "device_delta": self.settings.delta, "accountant": self.settings.accountant})
        logger.info("privacy odometer: job %s accepted, epsilon %.4g -> %.4g of %.4g", plan.run_id, before, after,
                    self.settings.epsilon)
        return Decision(True, "within the device's budget", before, after)

    def took_part(self, run_id: str, release: str, *, channel: str | None = None) -> None:
        """Record that the device replied to ``release`` of an accepted job (informative:
        the job's whole plan is already charged). ``channel``: how the job reaches the
        device (e.g. the transport's own run id), so that later requests on it can be
        matched to the accepted job (:meth:`accepted_on`)."""
        if not any(e.get("kind") == "job" and e.get("run_id") == run_id for e in self.entries):
            raise PrivacyError(f"job {run_id} was never accepted by this device's odometer")
        self._append({"kind": "took_part", "run_id": run_id, "release": release,
                      **({"channel": channel} if channel is not None else {})})

    def accepted_on(self, channel: str) -> str | None:
        """The run id of the accepted job bound to ``channel``, or None (never accepted)."""
        jobs = {e.get("run_id") for e in self.entries if e.get("kind") == "job"}
        for entry in reversed(self.entries):
            if entry.get("kind") == "took_part" and entry.get("channel") == channel and entry.get("run_id") in jobs:
                return str(entry["run_id"])
        return None

    def status(self) -> dict[str, Any]:
        """What the owner sees: intact or not, epsilon spent of the budget, jobs, resets."""
        spent = self.epsilon() if self.intact else None
        return {
            "intact": self.intact, "problems": list(self.problems), "epsilon": spent,
            "device_epsilon": self.settings.epsilon, "device_delta": self.settings.delta,
            "accountant": self.settings.accountant,
            "jobs": [e.get("run_id") for e in self.entries if e.get("kind") == "job"],
            "refused": [e.get("run_id") for e in self.entries if e.get("kind") == "refused"],
            "resets": [{"note": e.get("note"), "time": e.get("time"), "kept_jobs": e.get("kept_jobs"),
                        "dropped_jobs": e.get("dropped_jobs")} for e in self.entries if e.get("kind") == "reset"],
        }

    # -- the owner's repair -----------------------------------------------------------

    def reset(self, note: str) -> None:
        """Start the record again, keeping nothing: the owner's decision, with a note that
        stays in the new record (with the damaged file's name and SHA-256)."""
        self._restart(note, keep=[], dropped=len([e for e in self.entries if e.get("kind") == "job"]))

    def repair(self, note: str) -> tuple[int, int]:
        """Rebuild the record from every job entry whose plan still carries its server's
        valid signature (the signed copies), in the order found; returns (kept, dropped).
        An entry removed altogether cannot be recovered: the note says what was done."""
        keep: list[dict[str, Any]] = []
        dropped = 0
        seen: set[str] = set()
        for entry in self.entries:
            if entry.get("kind") != "job":
                continue
            try:
                plan = JobPlan.from_json(entry.get("plan"))
                plan.verify()
            except PlanError:
                dropped += 1
                continue
            if plan.digest not in seen:
                seen.add(plan.digest)
                keep.append(entry)
        self._restart(note, keep=keep, dropped=dropped)
        return len(keep), dropped

    def _restart(self, note: str, *, keep: list[dict[str, Any]], dropped: int) -> None:
        if not note.strip():
            raise PrivacyError("a reset or repair of the privacy odometer needs a note from the device's owner")
        archived: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            data = self.path.read_bytes()
            target = self.path.with_name(f"{ODOMETER}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.replace(self.path, target)
            archived = {"archived": target.name, "archived_sha256": hashlib.sha256(data).hexdigest()}
        self.entries, self.hashes, self.problems = [], [], []
        self._append({"kind": "open", "key_fingerprint": self.signer.fingerprint if self.signer else None})
        self._append({"kind": "reset", "note": note, "kept_jobs": len(keep), "dropped_jobs": dropped, **archived})
        for entry in keep:
            self._append({k: v for k, v in entry.items() if k not in ("time", "prev_hash", "signature")})
        logger.warning("privacy odometer reset by its owner: %s (%d job(s) kept, %d dropped)", note, len(keep), dropped)


def _encode(value: float) -> float | str:
    return "inf" if value == math.inf else float(value)
