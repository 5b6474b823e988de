"""The server's privacy bookkeeping for one run: budget checks and the ledger.

One object decides, before each round, whether the round still fits the budget,
and records each round in the ledger before its aggregate is used. Epsilon is
always recomputed from the recorded mechanism parameters (plus the next round,
for the check), never accumulated by hand. Once the job's plan is announced
(:mod:`fedrec.privacy.job_plan`), nothing beyond it is spent either: the devices
accepted the plan, not more (a resumed job that lost a round to a crash stops a
round early rather than spend one its devices were never charged for).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.errors import LedgerError, PrivacyError
from fedrec.privacy.accountant import compress, epsilon
from fedrec.privacy.ledger import MECHANISM, LedgerWriter, encode_epsilon, fingerprint, load_or_create_key

if TYPE_CHECKING:
    from fedrec.config import RunConfig

logger = logging.getLogger(__name__)

DEFAULT_KEY = Path("~/.fedrec/ledger_key.pem")  # the server's ledger signing key, unless ledger-key names one


def open_session(
    config: RunConfig, run_dir: Path, *, population: int, sample_rate: float, noise_multiplier: float,
    evaluation: str, resume: bool = False, config_hash: str | None = None,
) -> PrivacySession:
    """The one way a run opens its ledger session, every family alike: the config's
    signing key, accountant, delta, budget and clipping norm; what the header announces
    (``population``, ``sample_rate``, ``noise_multiplier``, how ``evaluation`` leaves the
    devices); ``config_hash`` defaults to the config's digest."""
    p = config.privacy
    key = load_or_create_key(Path(p.ledger_key).expanduser() if p.ledger_key else DEFAULT_KEY.expanduser())
    return PrivacySession(
        run_dir=run_dir, key=key, accountant=p.accountant, delta=p.delta, budget=p.epsilon, population=population,
        sample_rate=sample_rate, noise_multiplier=noise_multiplier, clipping_norm=p.clipping_norm,
        config_hash=config.digest() if config_hash is None else config_hash, resume=resume, evaluation=evaluation,
    )


class PrivacySession:
    def __init__(
        self,
        *,
        run_dir: Path,
        key: Ed25519PrivateKey,
        accountant: str,
        delta: float,
        budget: float,
        population: int,
        sample_rate: float,
        noise_multiplier: float,
        clipping_norm: float,
        config_hash: str,
        resume: bool = False,
        evaluation: str | None = None,
    ) -> None:
        """``evaluation``: how evaluation metrics leave the devices, stated in the signed
        header (e.g. ``fedrec.privacy.eval_release.NOT_PRIVATE`` in a simulation)."""
        self.accountant, self.delta, self.budget = accountant, delta, budget
        self.sample_rate, self.noise_multiplier, self.clipping_norm = sample_rate, noise_multiplier, clipping_norm
        self.config_hash = config_hash
        self.writer = LedgerWriter(run_dir, key)
        # every application of a mechanism, rounds and releases in ledger order: (z, q) per step
        self.steps: list[tuple[float, float]] = []
        self.rounds = 0  # training rounds recorded
        self.releases = 0  # other releases recorded (each may be several steps)
        self.closed = False  # the run's end is recorded: no more rounds
        self.stopped_by_budget = False
        self.planned: Counter[tuple[float, float]] | None = None  # (z, q) -> steps the job's plan announced
        if self.writer.entries:
            if not resume:
                raise LedgerError(
                    f"{self.writer.path} already exists: a new run never appends to another run's ledger; choose a new --out"
                )
            self._reopen(run_dir, key)
            return
        if resume:
            logger.info("resume: no ledger yet, the run starts its ledger now")
        self.writer.append(
            {
                "kind": "header", "run_id": uuid.uuid4().hex, "accountant": accountant, "delta": delta,
                "budget": budget if math.isfinite(budget) else None, "population": population,
                "config_hash": config_hash, "key_fingerprint": fingerprint(key.public_key()),
                "mechanism": MECHANISM, **({"evaluation": evaluation} if evaluation is not None else {}),
            }
        )

    def _reopen(self, run_dir: Path, key: Ed25519PrivateKey) -> None:
        """Continue a crashed run's ledger: verify it, then count every recorded round."""
        from fedrec.privacy.audit import MALFORMED, TAMPERED, audit_run

        report = audit_run(run_dir)
        if report.code in (TAMPERED, MALFORMED):
            raise LedgerError(f"cannot resume: {self.writer.path} does not verify ({'; '.join(report.problems)})")
        header = self.writer.entries[0]
        if header.get("key_fingerprint") != fingerprint(key.public_key()):
            raise LedgerError("cannot resume: the ledger was signed by another key (set ledger-key to the run's key)")
        if header.get("config_hash") != self.config_hash:
            raise LedgerError("cannot resume: the ledger belongs to a different configuration")
        from fedrec.privacy.job_plan import ledger_plan

        plan = ledger_plan(self.writer.entries)
        if plan is not None:
            self.adopt_plan(plan)
        closes = [e for e in self.writer.entries if e.get("kind") == "close"]
        if closes:  # the crash came after the last round, before the results were written
            self.closed, self.stopped_by_budget = True, bool(closes[-1].get("stopped_by_budget"))
        for entry in self.writer.entries:
            if entry.get("kind") == "release":
                self.releases += 1
                self.steps += [(float(entry["noise_multiplier"]), float(entry["sample_rate"]))] * int(entry["steps"])
                continue
            if entry.get("kind") != "round":
                continue
            self.rounds += 1
            if (entry["noise_multiplier"], entry["sample_rate"]) != (self.noise_multiplier, self.sample_rate):
                raise LedgerError(
                    f"cannot resume: ledger round {entry['round']} used z={entry['noise_multiplier']}, "
                    f"q={entry['sample_rate']}, this run would use z={self.noise_multiplier}, q={self.sample_rate}"
                )
            self.steps.append((float(entry["noise_multiplier"]), float(entry["sample_rate"])))

    def mark_resume(self, *, checkpoint_round: int) -> dict[str, Any]:
        """Record that the run continues from ``checkpoint_round``: the ledger rounds after
        it were spent but their aggregates were never used; they still count."""
        logger.info(
            "resume from round %d: %d ledger round(s) recorded, epsilon spent so far %.4f",
            checkpoint_round, self.rounds, self.spent,
        )
        return self.writer.append(
            {"kind": "resume", "checkpoint_round": checkpoint_round, "recorded_rounds": self.rounds, "epsilon": encode_epsilon(self.spent)}
        )

    def adopt_plan(self, plan: Any) -> None:
        """Spend nothing beyond ``plan`` (a :class:`fedrec.privacy.job_plan.JobPlan`) from now on."""
        from fedrec.privacy.job_plan import plan_counts

        self.planned = plan_counts(plan)

    def within_plan(self, extra: Sequence[tuple[float, float]]) -> bool:
        """Would the steps recorded plus ``extra`` stay within the announced plan (no plan: yes)?"""
        if self.planned is None:
            return True
        used = Counter((float(z), float(q)) for z, q in [*self.steps, *extra])
        return all(count <= self.planned[step] for step, count in used.items())

    @property
    def ledger_rounds(self) -> int:
        """Training rounds recorded in the ledger (each one application of the mechanism)."""
        return self.rounds

    def epsilon_after(self, extra_rounds: int = 0, extra: Sequence[tuple[float, float]] = ()) -> float:
        """Epsilon after what is recorded plus ``extra_rounds`` training rounds and the
        ``extra`` (z, q) steps of a planned release."""
        steps = self.steps + [(self.noise_multiplier, self.sample_rate)] * extra_rounds + list(extra)
        return epsilon(compress(steps), delta=self.delta, accountant=self.accountant)

    def epsilon_with(self, accountant: str) -> float:
        """Spent epsilon by another accountant (RDP is reported beside PRV)."""
        return epsilon(compress(self.steps), delta=self.delta, accountant=accountant)

    @property
    def spent(self) -> float:
        return self.epsilon_after(0)

    def allows_next_round(self) -> bool:
        """Would one more round stay within the budget and the announced plan?"""
        if not self.within_plan([(self.noise_multiplier, self.sample_rate)]):
            logger.info("the job's announced plan holds no further round; stopping")
            return False
        after = self.epsilon_after(1)
        if after > self.budget:
            logger.info("privacy budget: next round would reach epsilon %.4f > budget %.4f; stopping", after, self.budget)
            return False
        return True

    def allows_release(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> bool:
        """Would a release of ``steps`` Gaussian-sum steps (z, q) still fit the budget?"""
        _check_release(noise_multiplier, sample_rate, steps)
        if not self.within_plan([(noise_multiplier, sample_rate)] * steps):
            logger.info("the job's announced plan holds no such release; not released")
            return False
        after = self.epsilon_after(0, [(noise_multiplier, sample_rate)] * steps)
        if after > self.budget:
            logger.info("privacy budget: the release would reach epsilon %.4f > budget %.4f; not released", after, self.budget)
            return False
        return True

    def record_release(
        self, *, mechanism: str, purpose: str, noise_multiplier: float, sample_rate: float, clipping_norm: float,
        clients: int, steps: int = 1, devices_asked: int | None = None,
    ) -> dict[str, Any]:
        """Write (and fsync) a release other than a training round, before it is used.

        A release is ``steps`` applications of a Gaussian sum of per-user contributions,
        each clipped to L2 norm ``clipping_norm``, with noise std ``noise_multiplier *
        clipping_norm`` and Poisson sampling rate ``sample_rate`` (1: every user).
        ``mechanism`` names it (e.g. ``gaussian-sum/item-counts``), ``purpose`` says what
        the released value is for. Its steps compose with the rounds in every epsilon.
        ``devices_asked``: for a mean over devices, the mechanism's denominator (the
        devices asked, fixed before any reply), so that the noise in the released mean,
        ``noise_multiplier * clipping_norm / devices_asked``, can be read from the entry.
        Raises :class:`PrivacyError` if it would exceed the budget: check
        :meth:`allows_release` first to stop cleanly.
        """
        _check_release(noise_multiplier, sample_rate, steps)
        if not clipping_norm > 0:
            raise PrivacyError(f"a release needs a clipping norm > 0, got {clipping_norm}")
        if not self.within_plan([(noise_multiplier, sample_rate)] * steps):
            raise PrivacyError(f"releasing {purpose} would spend beyond the job's announced plan")
        after = self.epsilon_after(0, [(noise_multiplier, sample_rate)] * steps)
        if after > self.budget:
            raise PrivacyError(f"releasing {purpose} would reach epsilon {after:.4g} > budget {self.budget:.4g}")
        self.steps += [(float(noise_multiplier), float(sample_rate))] * steps
        self.releases += 1
        logger.info(
            "release %s (%s): clip %.3g, noise z=%.4g, q=%.4g, %d step(s), %d clients, epsilon spent %.4f of %.4g",
            mechanism, purpose, clipping_norm, noise_multiplier, sample_rate, steps, clients, after, self.budget,
        )
        return self.writer.append(
            {
                "kind": "release", "release": self.releases, "mechanism": mechanism, "purpose": purpose,
                "sample_rate": float(sample_rate), "noise_multiplier": float(noise_multiplier),
                "clipping_norm": float(clipping_norm), "steps": int(steps), "clients": int(clients),
                **({"devices_asked": int(devices_asked)} if devices_asked is not None else {}),
                "delta": self.delta, "epsilon": encode_epsilon(after), "accountant": self.accountant,
                "config_hash": self.config_hash,
            }
        )

    def record_round(self, round_: int, *, clients: int, local_dp: dict[str, float] | None = None) -> dict[str, Any]:
        """Write (and fsync) the round's entry; call before the aggregate is applied.

        ``round_`` is the model's round; the entry's ``round`` counts applications of the
        mechanism, which run ahead of the model's round after a resume (rounds spent
        but never used are never recorded twice, and never dropped).

        ``local_dp``: the devices' own record-level epsilon (largest reported), kept as
        reported; it is the devices' claim, not recomputed by the server.
        Raises :class:`PrivacyError` beyond the announced plan (check :meth:`allows_next_round`).
        """
        if not self.within_plan([(self.noise_multiplier, self.sample_rate)]):
            raise PrivacyError(f"round {round_} would spend beyond the job's announced plan")
        self.steps.append((self.noise_multiplier, self.sample_rate))
        self.rounds += 1
        spent = self.spent
        logger.info(
            "round %d: clip %.3g, noise z=%.4g, %d clients, epsilon spent %.4f of %.4g (delta %.1e)",
            round_, self.clipping_norm, self.noise_multiplier, clients, spent, self.budget, self.delta,
        )
        return self.writer.append(
            {
                "kind": "round", "round": self.rounds, "model_round": round_, "mechanism": MECHANISM, "sample_rate": self.sample_rate,
                "noise_multiplier": self.noise_multiplier, "clipping_norm": self.clipping_norm, "clients": clients,
                "delta": self.delta, "epsilon": encode_epsilon(spent), "accountant": self.accountant,
                "config_hash": self.config_hash, **({"local_dp": local_dp} if local_dp is not None else {}),
            }
        )

    def close(self, *, stopped_by_budget: bool) -> dict[str, Any]:
        self.closed, self.stopped_by_budget = True, stopped_by_budget
        return self.writer.append(
            {
                "kind": "close", "rounds": self.rounds, "releases": self.releases, "epsilon": encode_epsilon(self.spent),
                "stopped_by_budget": stopped_by_budget,
            }
        )

    @property
    def head(self) -> str:
        return self.writer.head


def _check_release(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    # z = 0 is no DP mechanism (epsilon would be infinite): a value released exactly is not
    # recorded as a release; the run says it is not private instead
    if not (0 < sample_rate <= 1 and noise_multiplier > 0 and steps >= 1):
        raise PrivacyError(
            f"a release needs 0 < q <= 1, z > 0 and steps >= 1 (got q={sample_rate}, z={noise_multiplier}, steps={steps})"
        )
