"""Tuning DP-EASE settings on a population with every try in the ledger (``fedrec tune``).

Choosing settings by looking at a population's validation users is itself a release
about that population (Papernot and Steinke 2022, "Hyperparameter Tuning with Renyi
Differential Privacy"). Here each candidate (flat ``ease-*`` overrides of one config) is
a real DP-EASE release on the population, and what selection looks at is released too:

1. item counts, a Gaussian sum (``gaussian-sum/item-counts``, z_counts);
2. co-occurrence over the candidate's top items (``gaussian-sum/item-cooccurrence-upper``, z_gram);
3. the validation metrics: each user's NDCG@10 and full-ranking NDCG@10 on their
   validation item (test items hidden, :func:`fedrec.dpease.select.without_test_items`),
   each clipped to [0, 1], summed with Gaussian noise (``gaussian-sum/per-user-metrics``,
   sensitivity sqrt(2); :mod:`fedrec.privacy.eval_release`), z_val.

All 3 M releases of the M candidates go into one signed ledger, each recorded before it
is used, so the ledger's epsilon composes every try and ``fedrec audit`` recomputes it;
each try reports its own epsilon (its three releases alone) beside the population's
epsilon after it (every try so far, composed by the accountant, never added).
The budget is split evenly over candidates: candidate k's three releases get the shares
``(c_k (1 - e), (1 - c_k)(1 - e), e) / M`` of the budget in the ``1/z^2`` currency
(``c_k`` its ``ease-count-share``, ``e`` the evaluation share), and the common scale is
calibrated on the accountant's epsilon of the whole history
(:func:`fedrec.privacy.accountant.calibrate_releases`), so the tuning run spends at most
the target epsilon. The choice (the best noisy validation criterion) is post-processing of
recorded releases, and the chosen candidate's release, already recorded, is the model:
nothing is released again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import EaseSettings, RunConfig, parse_run_config
from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.central import noisy_release
from fedrec.dpease.fit import EaseRelease
from fedrec.dpease.run import MECHANISMS, PURPOSES, InProcessStatistics
from fedrec.dpease.select import criterion, without_test_items
from fedrec.errors import FedrecError
from fedrec.experiments.results import MODEL, RESULTS, write_arrays, write_json
from fedrec.privacy.accountant import calibrate_releases, compress, epsilon
from fedrec.privacy.eval_release import MECHANISM as METRICS_MECHANISM
from fedrec.privacy.eval_release import evaluation_generator, release_metrics
from fedrec.privacy.noise import noise_generator
from fedrec.privacy.readable import readable_run
from fedrec.privacy.session import PrivacySession, open_session

TUNE_METRICS = ("ndcg@10", "full_ndcg@10")  # what the criterion reads (fedrec.dpease.select.criterion)
EVALUATION = (
    f"validation metrics of every try: private releases ({METRICS_MECHANISM}); "
    "the chosen release's test metrics: not private (simulation)"
)


def tunable_keys() -> set[str]:
    """The keys a tuning grid may hold: DP-EASE's own settings (privacy stays fixed)."""
    return {f.metadata["key"] for f in fields(EaseSettings)}


@dataclass(frozen=True)
class Try:
    overrides: dict[str, Any]
    noise_multipliers: tuple[float, float, float]  # item counts, co-occurrence, validation metrics
    validation: dict[str, float]  # the released (noisy) validation means, or exact without DP
    criterion: float
    top_items: int
    releases: tuple[int, ...] = ()  # the ledger's release numbers of this try
    epsilon: float = float("inf")  # the try's own releases alone (the accountant at the run's delta)
    epsilon_composed: float = float("inf")  # the population's epsilon after this try: every try so far, composed

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides.items()) or "(base)"


@dataclass
class Tuning:
    tries: list[Try]
    chosen: int  # index into tries
    release: EaseRelease  # the chosen try's release, as recorded
    privacy: dict[str, Any] = field(default_factory=dict)


def grid(spec: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values, in the order given (the first key varies slowest)."""
    unknown = sorted(set(spec) - tunable_keys())
    if unknown:
        raise FedrecError(f"tune searches DP-EASE settings only; {', '.join(unknown)} is not one of {', '.join(sorted(tunable_keys()))}")
    out: list[dict[str, Any]] = [{}]
    for key, values in spec.items():
        if not values:
            raise FedrecError(f"--grid {key}= needs at least one value")
        out = [{**row, key: value} for row in out for value in values]
    return out


def tuning_noise(configs: Sequence[RunConfig], *, eval_share: float) -> list[tuple[float, float, float]]:
    """Per candidate (z_counts, z_gram, z_val) such that all 3 M releases compose to at
    most the (common) target epsilon."""
    if not 0 < eval_share < 1:
        raise FedrecError(f"--eval-share must be in (0, 1), got {eval_share}")
    p, m = configs[0].privacy, len(configs)
    shares: list[float] = []
    for config in configs:
        c = config.ease.count_share
        shares += [c * (1 - eval_share) / m, (1 - c) * (1 - eval_share) / m, eval_share / m]
    z = calibrate_releases(target_epsilon=p.epsilon, delta=p.delta, shares=shares, accountant=p.accountant)
    return [(z[3 * k], z[3 * k + 1], z[3 * k + 2]) for k in range(m)]


def tuning_hash(base: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]], eval_share: float) -> str:
    """Names the tuning run in its ledger: the base config, the candidates and the split of the budget."""
    payload = {"config": parse_run_config(base).to_flat(), "candidates": [dict(c) for c in candidates], "eval_share": eval_share}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def tune(
    base: Mapping[str, Any], split: LeaveOneOutSplit, candidates: Sequence[Mapping[str, Any]], *, run_dir: Path,
    eval_share: float = 0.1,
) -> Tuning:
    """Release every candidate on ``split`` (test items hidden), record each release in
    ``run_dir``'s ledger, and choose on the released validation metrics."""
    if not candidates:
        raise FedrecError("tune needs at least one candidate")
    grid({k: [v] for c in candidates for k, v in c.items()})  # only ease-* keys
    configs = [parse_run_config({**base, **c}) for c in candidates]
    p = configs[0].privacy
    if p.enabled and p.fixed_noise is not None:
        raise FedrecError("tune calibrates the noise so that all tries spend the budget: drop noise-multiplier")
    hidden = without_test_items(split)
    devices = InProcessStatistics(hidden, clipping_norm=p.clipping_norm)
    clients = devices.clients()
    noise = tuning_noise(configs, eval_share=eval_share) if p.enabled else [(0.0, 0.0, 0.0)] * len(configs)
    session: PrivacySession | None = None
    rng = eval_rng = None
    if p.enabled:
        session = open_session(
            configs[0], run_dir, population=split.n_users, sample_rate=1.0, noise_multiplier=noise[0][1],
            config_hash=tuning_hash(base, candidates, eval_share), evaluation=EVALUATION,
        )
        rng = noise_generator(seed=configs[0].seed, secure=p.secure_noise)
        eval_rng = evaluation_generator(seed=configs[0].seed, secure=p.secure_noise, resumes=0)
    tries: list[Try] = []
    releases: list[EaseRelease] = []
    for number, (config, overrides, (z_counts, z_gram, z_val)) in enumerate(zip(configs, candidates, noise), start=1):
        label = " ".join(f"{k}={v}" for k, v in overrides.items()) or "(base)"
        recorded: list[int] = []
        steps_before = len(session.steps) if session is not None else 0

        def record(phase: str, z: float, *, label: str = label, number: int = number, recorded: list[int] = recorded) -> None:
            if session is not None:  # on disk before the noisy sum is read
                entry = session.record_release(
                    mechanism=MECHANISMS[phase], purpose=f"tuning try {number} ({label}): {PURPOSES[phase]}",
                    noise_multiplier=z, sample_rate=1.0, clipping_norm=p.clipping_norm, clients=len(clients),
                )
                recorded.append(int(entry["release"]))

        release = noisy_release(config, hidden, noise_multipliers=(z_counts, z_gram), rng=rng, before_use=record)
        arrays = release.to_arrays()

        def ask(arrays: dict[str, np.ndarray] = arrays) -> list[dict[str, float]]:
            return devices.evaluate(clients, arrays, "val")  # each device scores its own validation item

        if session is not None and eval_rng is not None:
            metrics = release_metrics(
                session, ask, names=TUNE_METRICS,
                purpose=f"evaluation: validation metrics of tuning try {number} ({label})", noise_multiplier=z_val,
                expected_users=len(clients), rng=eval_rng,
            )
            if metrics is None:  # never: the calibration leaves room for every release
                raise FedrecError("the tuning budget ran out before the last try: report this as a bug")
            recorded.append(session.releases)
        else:
            exact = _mean(ask())
            metrics = {name: exact[name] for name in TUNE_METRICS}
        own = composed = float("inf")
        if session is not None:  # what the ledger holds: this try's steps alone, and all of them so far
            own = epsilon(compress(session.steps[steps_before:]), delta=p.delta, accountant=p.accountant)
            composed = session.spent
        tries.append(Try(
            overrides=dict(overrides), noise_multipliers=(z_counts, z_gram, z_val), validation=metrics,
            criterion=criterion(metrics), top_items=int(release.top_items.shape[0]), releases=tuple(recorded),
            epsilon=own, epsilon_composed=composed,
        ))
        releases.append(release)
    chosen = max(range(len(tries)), key=lambda k: (tries[k].criterion, -k))  # the first one wins ties
    privacy: dict[str, Any] = {"epsilon": float("inf"), "delta": None, "accountant": None}
    if session is not None:
        session.close(stopped_by_budget=False)
        privacy = {
            "epsilon": session.spent, "epsilon_rdp": session.epsilon_with("rdp"), "delta": p.delta,
            "accountant": p.accountant, "budget": p.epsilon, "releases": session.releases, "ledger_head": session.head,
            "eval_share": eval_share,
        }
    return Tuning(tries=tries, chosen=chosen, release=releases[chosen], privacy=privacy)


def tune_and_report(
    base: Mapping[str, Any], split: LeaveOneOutSplit, candidates: Sequence[Mapping[str, Any]], *, out_dir: Path,
    eval_share: float = 0.1,
) -> dict[str, Any]:
    """:func:`tune`, then the chosen release as ``model.npz`` and ``results.json`` (every
    try, the choice, the chosen release's test metrics beside popularity on the same split)."""
    from fedrec.experiments.references import cheap_references

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / RESULTS).exists():
        raise FedrecError(f"{out_dir} holds a finished run ({RESULTS} exists): choose a new --out")
    tuning = tune(base, split, candidates, run_dir=out_dir, eval_share=eval_share)
    arrays = tuning.release.to_arrays()
    write_arrays(out_dir / MODEL, arrays)
    clients = list(range(split.n_users))
    test = _mean(InProcessStatistics(split, clipping_norm=1.0).evaluate(clients, arrays, "test"))
    refs = cheap_references(split, knn=False)
    chosen = tuning.tries[tuning.chosen]
    results: dict[str, Any] = {
        "model": "dp-ease", "tuning": True, **test, "chosen": chosen.overrides, "chosen_try": tuning.chosen + 1,
        "top_items": chosen.top_items, "clients": split.n_users,
        "tries": [
            {"try": k + 1, "overrides": t.overrides, "noise_multipliers": list(t.noise_multipliers),
             "validation": t.validation, "criterion": t.criterion, "top_items": t.top_items, "releases": list(t.releases),
             "epsilon": t.epsilon, "epsilon_composed": t.epsilon_composed}
            for k, t in enumerate(tuning.tries)
        ],
        **tuning.privacy,
        "config": parse_run_config(base).to_flat(),
        "references": {name: ref.to_json() for name, ref in refs.items()},
        "seconds": time.perf_counter() - started,
    }
    results = readable_run(results, out_dir)  # the tries' released metrics: clamped to [0, 1], with their noise
    write_json(out_dir / RESULTS, results)
    return results


def parse_grid(options: Sequence[str]) -> dict[str, list[str]]:
    """``["ease-item-threshold=1,2", ...]`` -> ``{"ease-item-threshold": ["1", "2"], ...}``."""
    out: dict[str, list[str]] = {}
    for option in options:
        key, eq, values = option.partition("=")
        if not eq or not key.strip():
            raise FedrecError(f"--grid takes KEY=V1,V2,..., got {option!r}")
        out[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return out



def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]} if rows else {}
