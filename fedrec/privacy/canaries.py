"""Canary users, the membership attack on the released model, and the audit run.

The audit (Steinke, Nasr, Jagielski 2023, one training run): make ``m`` synthetic
users ("canaries"), each with a few rarely-rated items of its own; flip a fair,
seeded coin for each to decide whether it joins the federation; train once; then
guess from the *released* shared model alone which canaries took part.

The attack uses only what the server releases (``model.npz``: item embeddings and the
tower) and the public initialisation (the seed is in the run config). A member
canary's local training pushes all its items' embeddings along one direction (its
private user vector, which is never released), so the displacements of its items from
their initial values line up; a non-member's items only drift with everyone's
negatives and the DP noise. The score is the mean pairwise inner product of those
displacements, after removing the drift shared by all rarely-rated items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit, sample_negatives
from fedrec.errors import PrivacyError
from fedrec.models import Arrays, ModelConfig, init_shared
from fedrec.privacy.empirical import AuditBounds, audit_scores

logger = logging.getLogger(__name__)

ITEM_TABLES = ("item_gmf.weight", "item_mlp.weight")  # the released per-item rows the attack reads
EMPIRICAL_AUDIT = "empirical_audit.json"
SHARED_DIRECTIONS = 2  # picked from {0, 2, 5} on a 10-round pilot run without DP (benchmarks/README.md)


@dataclass(frozen=True)
class Canaries:
    """``m`` synthetic users: ``items[c]`` is canary c's training items, and who joined."""

    items: np.ndarray  # (m, k) item index
    held_out: np.ndarray  # (m, 2) validation and test item (the split needs them)
    members: np.ndarray  # (m,) bool: included in training
    pool: np.ndarray  # (P,) the rarely-rated items the canaries' items come from

    @property
    def count(self) -> int:
        return int(self.items.shape[0])


def make_canaries(split: LeaveOneOutSplit, *, count: int, items_per_canary: int, pool_size: int, rng: np.random.Generator) -> Canaries:
    """Draw ``count`` canaries over the ``pool_size`` least-rated items; each joins w.p. 1/2.

    Rare items because a canary's push on a popular item drowns in everyone else's.
    Items are distinct within a canary and may repeat across canaries: the score needs
    a canary's *own* items to move together, which a shared item alone does not fake.
    """
    k = items_per_canary
    if count < 2 or k < 2:
        raise PrivacyError(f"need at least 2 canaries with at least 2 items each (got {count} x {k})")
    pool_size = min(pool_size, split.n_items)
    if pool_size < k + 2:
        raise PrivacyError(f"canary pool of {pool_size} items is too small for {k} + 2 items per canary")
    popularity = np.bincount(split.train_items, minlength=split.n_items)
    pool = np.argsort(popularity, kind="stable")[:pool_size]
    drawn = np.stack([rng.choice(pool, size=k + 2, replace=False) for _ in range(count)])
    members = rng.random(count) < 0.5
    return Canaries(items=drawn[:, :k], held_out=drawn[:, k:], members=members, pool=np.sort(pool))


def with_canaries(split: LeaveOneOutSplit, canaries: Canaries, *, rng: np.random.Generator) -> LeaveOneOutSplit:
    """``split`` with the member canaries appended as extra users (non-members stay out)."""
    joined = np.flatnonzero(canaries.members)
    n_neg = split.val_negatives.shape[1]
    val_neg = np.empty((joined.shape[0], n_neg), dtype=np.int64)
    test_neg = np.empty_like(val_neg)
    for row, c in enumerate(joined):
        seen = np.sort(np.concatenate([canaries.items[c], canaries.held_out[c]]))
        val_neg[row] = sample_negatives(n_items=split.n_items, excluded=seen, count=n_neg, rng=rng)
        test_neg[row] = sample_negatives(n_items=split.n_items, excluded=seen, count=n_neg, rng=rng)
    k = canaries.items.shape[1]
    first_id = int(split.users.max()) + 1 if split.n_users else 0
    return LeaveOneOutSplit(
        n_items=split.n_items,
        users=np.concatenate([split.users, first_id + joined]).astype(np.int64),
        train_indptr=np.concatenate([split.train_indptr, split.train_indptr[-1] + k * np.arange(1, joined.shape[0] + 1)]),
        train_items=np.concatenate([split.train_items, canaries.items[joined].ravel()]).astype(np.int64),
        val_item=np.concatenate([split.val_item, canaries.held_out[joined, 0]]).astype(np.int64),
        test_item=np.concatenate([split.test_item, canaries.held_out[joined, 1]]).astype(np.int64),
        val_negatives=np.concatenate([split.val_negatives, val_neg]),
        test_negatives=np.concatenate([split.test_negatives, test_neg]),
    )


def membership_scores(*, released: Arrays, initial: Arrays, canaries: Canaries) -> np.ndarray:
    """Per canary: mean pairwise inner product of its items' displacements (higher = member).

    Displacement = released row - initial row, over every item table of the released
    model, minus the mean displacement of the pool and its top ``SHARED_DIRECTIONS``
    principal directions (the drift all rare items share).
    ``(sum_i d_i)^2 - sum_i d_i^2`` over the canary's k items, / k (k - 1).
    """
    tables = [name for name in ITEM_TABLES if name in released]
    if not tables:
        raise PrivacyError(f"the released model has none of the item tables {ITEM_TABLES}")
    moved = np.concatenate([released[t].astype(np.float64) - initial[t].astype(np.float64) for t in tables], axis=1)
    moved = moved - moved[canaries.pool].mean(axis=0)  # (n_items, d)
    # Everyone's negatives drag rare items along a few shared taste directions; those
    # line up a non-member's items too, so they are projected out.
    _, _, directions = np.linalg.svd(moved[canaries.pool], full_matrices=False)
    shared = directions[:SHARED_DIRECTIONS]  # (s, d)
    moved = moved - (moved @ shared.T) @ shared
    rows = moved[canaries.items]  # (m, k, d)
    k = rows.shape[1]
    total = np.einsum("mkd->md", rows)
    pairs = np.einsum("md,md->m", total, total) - np.einsum("mkd,mkd->m", rows, rows)
    return pairs / (k * (k - 1))


@dataclass(frozen=True)
class AuditSettings:
    canaries: int = 200
    items_per_canary: int = 64  # many items: the score averages over k (k - 1) pairs
    pool_size: int = 800  # the least-rated items the canaries draw from
    beta: float = 0.05  # error level of each bound


def check_auditable(config: RunConfig) -> None:
    """Refuse, before anything trains, a run this audit cannot attack."""
    if config.privacy.local_dp:
        raise PrivacyError("the empirical audit runs the vectorised engine: turn local-dp off")


def run_empirical_audit(
    config: RunConfig,
    *,
    out_dir: Path,
    settings: AuditSettings = AuditSettings(),  # frozen: a shared default is safe
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train one federated run with canaries (in-process engine), attack it, bound epsilon.

    Writes the run's artefacts and ``empirical_audit.json`` into ``out_dir``.

    The canaries join at the run's sampling rate: ``clients-per-round`` is scaled with
    the population, so q (and so the accountant's epsilon) is the one the config asks for
    over its own users.
    """
    # Imported here: the engine pulls in the whole training stack, the bounds above do not.
    from fedrec.engine.vectorised import VectorisedTransport
    from fedrec.experiments.results import MODEL, read_arrays, write_json
    from fedrec.experiments.run import run_and_report
    from fedrec.federation.device import simulated_population

    check_auditable(config)
    base = simulated_population(config).split
    rng = np.random.default_rng([config.seed, 7])
    canaries = make_canaries(
        base, count=settings.canaries, items_per_canary=settings.items_per_canary, pool_size=settings.pool_size, rng=rng
    )
    split = with_canaries(base, canaries, rng=rng)
    q = min(1.0, config.federation.clients_per_round / base.n_users)
    run_config = replace(config, federation=replace(config.federation, clients_per_round=q * split.n_users))
    with VectorisedTransport(run_config, split=split) as transport:
        # references=False: the population here is the split plus canaries, not the configured one
        results = run_and_report(
            run_config, transport, out_dir=out_dir, engine="inprocess", on_round=on_round, references=False
        )
    model: ModelConfig = run_config.model.build(split.n_items)
    scores = membership_scores(released=read_arrays(out_dir / MODEL), initial=init_shared(model, seed=config.seed), canaries=canaries)
    delta = config.privacy.delta if config.privacy.enabled else 0.0
    bounds: AuditBounds = audit_scores(scores=scores, members=canaries.members, delta=delta, beta=settings.beta)
    report = audit_report(config, results, bounds, delta=delta, beta=settings.beta, items_per_canary=settings.items_per_canary,
                          pool_size=settings.pool_size, seconds=results["seconds"])
    write_json(out_dir / EMPIRICAL_AUDIT, report)
    return report


CONTROL_KEYS = ("one_run_epsilon_lower_bound", "cp_epsilon_lower_bound", "guesses", "correct", "auc", "canaries", "members")


def audit_report(
    config: RunConfig, results: dict[str, Any], bounds: AuditBounds, *, delta: float, beta: float, items_per_canary: int,
    pool_size: int, seconds: float, attack: str | None = None,
) -> dict[str, Any]:
    """``empirical_audit.json`` of any family: the run as accounted, the canaries, and the
    lower bounds the attack gives (logged)."""
    logger.info("empirical audit: one-run epsilon >= %.3f, Clopper-Pearson epsilon >= %.3f", bounds.one_run_epsilon, bounds.cp_epsilon)
    return {
        "dp": config.privacy.enabled,
        **({} if attack is None else {"attack": attack}),
        "accountant_epsilon": results["epsilon"],
        "delta": delta,
        "sample_rate": results["sample_rate"],
        "rounds": results["rounds"],
        "clients": results["clients"],
        "ndcg@10": results["ndcg@10"],
        "canaries": bounds.canaries,
        "members": bounds.members,
        "items_per_canary": items_per_canary,
        "pool_size": pool_size,
        "beta": beta,
        "one_run_epsilon_lower_bound": bounds.one_run_epsilon,
        "guesses": bounds.guesses,
        "correct": bounds.correct,
        "cp_epsilon_lower_bound": bounds.cp_epsilon,
        "tpr": bounds.tpr,
        "fpr": bounds.fpr,
        "auc": bounds.auc,
        "seconds": seconds,
    }


def attach_control(out_dir: Path, report: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    """``report`` with the no-DP control's bounds under ``"control"`` (the attack must
    find the canaries there, or a low bound under DP means nothing), rewritten in
    ``out_dir``'s empirical_audit.json so that the audit page shows both."""
    from fedrec.experiments.results import write_json

    joined = {**report, "control": {key: control[key] for key in CONTROL_KEYS} | {"dp": False}}
    write_json(out_dir / EMPIRICAL_AUDIT, joined)
    return joined

