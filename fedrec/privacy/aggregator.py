"""How the server turns what it received in a round into one update of the model.

The round loop (:mod:`fedrec.federation.rounds`) does not know whether a run is private: it asks
an :class:`Aggregator` whether another round may run, hands it the round's parts (single
updates, or secure-aggregation sums with their number of contributors) and applies what
comes back. :class:`MeanAggregator` is plain FedAvg. :class:`DPAggregator` wraps it with
user-level DP (Flower's server-side DP *wraps* a strategy in the same way): it owns every
number that decides epsilon (z, C and the sampler's q), the noise generator and the
:class:`PrivacySession` that checks the budget and writes the ledger before an aggregate
is released to the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedrec.config import RunConfig
from fedrec.federation.fedavg import sum_updates
from fedrec.models import Arrays
from fedrec.privacy.accountant import Accountant, calibrate_noise
from fedrec.privacy.dp_fedavg import ClippedSum, DPFedAvg, Part
from fedrec.privacy.eval_release import NOT_PRIVATE as EVAL_NOT_PRIVATE
from fedrec.privacy.eval_release import PRIVATE as EVAL_PRIVATE
from fedrec.privacy.eval_release import calibrate_with_evaluations, planned_evaluations
from fedrec.privacy.noise import noise_generator
from fedrec.privacy.sampling import PoissonSampler
from fedrec.privacy.session import open_session

logger = logging.getLogger(__name__)



class Aggregator(Protocol):
    """What the round loop needs from the server's aggregation."""

    @property
    def finished(self) -> bool:
        """The run's end is already recorded (a resumed run that had finished)."""
        ...

    @property
    def stopped_by_budget(self) -> bool: ...

    def allows_next_round(self) -> bool: ...

    def mark_resume(self, *, checkpoint_round: int) -> None:
        """The run continues after a crash from the checkpoint of ``checkpoint_round``."""
        ...

    def round_info(self) -> dict[str, float]:
        """What the round log reports about the aggregator after a round."""
        ...

    def aggregate(self, parts: list[Part], *, like: Arrays, round_: int, local_epsilon: float) -> Arrays | None:
        """The round's update of the shared parameters (None: leave the model as it is)."""
        ...

    def close(self, *, stopped_by_budget: bool) -> dict[str, Any]:
        """Record the run's end; return what results.json reports about privacy."""
        ...

    def rng_state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the aggregator's randomness (None: nothing)."""
        ...

    def restore_rng(self, state: dict[str, Any] | None) -> None: ...

    @property
    def ledger_rounds(self) -> int: ...


class MeanAggregator:
    """FedAvg: the mean of the clients' updates (a secure-aggregation part counts as its
    contributors); no update when nobody replied."""

    finished = False
    stopped_by_budget = False
    ledger_rounds = 0

    def allows_next_round(self) -> bool:
        return True

    def mark_resume(self, *, checkpoint_round: int) -> None:
        return None

    def round_info(self) -> dict[str, float]:
        return {}

    def aggregate(self, parts: list[Part], *, like: Arrays, round_: int, local_epsilon: float) -> Arrays | None:
        contributors = sum(p.contributors for p in parts)
        if not contributors:
            return None
        total = sum_updates((p.update for p in parts), like)
        return {name: (value / contributors).astype(np.float32) for name, value in total.items()}

    def close(self, *, stopped_by_budget: bool) -> dict[str, Any]:
        return {
            "epsilon": float("inf"), "delta": None, "accountant": None, "noise_multiplier": 0.0,
            "clipping_norm": None, "budget": None, "stopped_by_budget": False,
        }

    def rng_state(self) -> dict[str, Any] | None:
        return None

    def restore_rng(self, state: dict[str, Any] | None) -> None:
        return None


class DPAggregator:
    """User-level DP-FedAvg around the mean: clip, sum, noise, record, then release."""

    def __init__(
        self, config: RunConfig, *, run_dir: Path, sampler: PoissonSampler, resume: bool = False,
        private_evaluation: bool = False,
    ) -> None:
        p = config.privacy
        fed = config.federation
        fixed = p.fixed_noise
        if fixed is not None:  # 0: clipping without noise, epsilon infinite (the config asks for epsilon = inf)
            z = fixed
        elif private_evaluation:  # leave room in the budget for the evaluation releases
            z = calibrate_with_evaluations(
                target_epsilon=p.epsilon, delta=p.delta, sample_rate=sampler.rate, rounds=fed.num_rounds,
                accountant=p.accountant, eval_noise_multiplier=p.eval_noise_multiplier,
                evaluations=planned_evaluations(rounds=fed.num_rounds, eval_every=fed.eval_every),
            )
        else:
            z = calibrate_noise(
                target_epsilon=p.epsilon, delta=p.delta, sample_rate=sampler.rate, rounds=fed.num_rounds,
                accountant=p.accountant,
            )
        self.session = open_session(
            config, run_dir, population=sampler.population, sample_rate=sampler.rate, noise_multiplier=z,
            resume=resume, evaluation=EVAL_PRIVATE if private_evaluation else EVAL_NOT_PRIVATE,
        )
        self.mechanism = DPFedAvg(noise_multiplier=z, clipping_norm=p.clipping_norm, expected_clients=sampler.expected_clients)
        self.secure_noise = p.secure_noise
        self.noise_rng = noise_generator(seed=config.seed, secure=p.secure_noise)
        self.local_delta = p.local_delta if p.local_dp else None
        self.settings = p
        self._last: dict[str, float] = {}  # the last round's diagnostics

    @property
    def finished(self) -> bool:
        return self.session.closed

    @property
    def stopped_by_budget(self) -> bool:
        return self.session.stopped_by_budget

    @property
    def ledger_rounds(self) -> int:
        return self.session.ledger_rounds

    def mark_resume(self, *, checkpoint_round: int) -> None:
        if not self.session.closed:
            self.session.mark_resume(checkpoint_round=checkpoint_round)

    def allows_next_round(self) -> bool:
        return self.session.allows_next_round()

    def round_info(self) -> dict[str, float]:
        return {"epsilon": self.session.spent, **self._last}

    def aggregate(self, parts: Iterable[Part], *, like: Arrays, round_: int, local_epsilon: float) -> Arrays | None:
        # A DP round always runs the mechanism (noise even with no replies) and is on
        # disk before its aggregate reaches the model.
        delta, summed = self.mechanism.aggregate_parts(parts, like=like, rng=self.noise_rng)
        local = {"max_epsilon": local_epsilon, "delta": self.local_delta} if self.local_delta is not None else None
        self.session.record_round(round_, clients=summed.contributors, local_dp=local)
        self._last = round_diagnostics(summed, snr=self.mechanism.signal_to_noise(summed))
        logger.info(
            "round %d: %d of %d single updates clipped, median norm %.3g, signal/noise %.3g",
            round_, summed.clipped, len(summed.norms), self._last["update_norm_median"], self._last["signal_to_noise"],
        )
        return delta

    def close(self, *, stopped_by_budget: bool) -> dict[str, Any]:
        if not self.session.closed:
            self.session.close(stopped_by_budget=stopped_by_budget)
        p = self.settings
        return {
            "epsilon": self.session.spent, "epsilon_rdp": self.session.epsilon_with(Accountant.RDP), "delta": p.delta,
            "accountant": p.accountant, "noise_multiplier": self.mechanism.noise_multiplier,
            "clipping_norm": self.mechanism.clipping_norm, "budget": p.epsilon,
            "stopped_by_budget": stopped_by_budget, "ledger_head": self.session.head,
        }

    def rng_state(self) -> dict[str, Any] | None:
        # a secure generator is reseeded from the OS on resume: its state never touches disk
        return None if self.secure_noise else dict(self.noise_rng.bit_generator.state)

    def restore_rng(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.noise_rng.bit_generator.state = state


def round_diagnostics(summed: ClippedSum, *, snr: float) -> dict[str, float]:
    """What practitioners ask for when DP hurts: the share of updates that were clipped,
    the update-norm distribution, and the aggregate's signal-to-noise ratio."""
    norms = np.asarray(summed.norms, dtype=np.float64)
    nan = float("nan")
    return {
        "clipped_share": summed.clipped / len(norms) if len(norms) else nan,
        "update_norm_p10": float(np.quantile(norms, 0.1)) if len(norms) else nan,
        "update_norm_median": float(np.median(norms)) if len(norms) else nan,
        "update_norm_p90": float(np.quantile(norms, 0.9)) if len(norms) else nan,
        "signal_to_noise": snr,
    }


def make_aggregator(
    config: RunConfig, *, run_dir: Path, sampler: PoissonSampler, resume: bool = False, private_evaluation: bool = False
) -> Aggregator:
    """The run's aggregator: DP-FedAvg when user-level DP is on, else the plain mean.

    ``private_evaluation``: the devices' metrics will be released through
    :mod:`fedrec.privacy.eval_release` (real devices), so z leaves room for them."""
    if config.privacy.enabled:
        return DPAggregator(config, run_dir=run_dir, sampler=sampler, resume=resume, private_evaluation=private_evaluation)
    return MeanAggregator()
