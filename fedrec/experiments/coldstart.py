"""`fedrec coldstart-eval`: every cold-start recommender on the same held-out users.

Writes ``coldstart.csv`` (one row per method and number of revealed items),
``coldstart.png`` and ``results.json`` (tuned weights, federated reference, targets).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.config import ModelFamily, RunConfig
from fedrec.data.interactions import Interactions
from fedrec.data.split import ClientData, leave_one_out
from fedrec.errors import ConfigError
from fedrec.experiments.results import MODEL, RESULTS, read_arrays, save_png, write_csv, write_json
from fedrec.fallback.catalog import build_catalog
from fedrec.fallback.collaborative import CollaborativeBlend, ReleasedEase, ReleaseSettings
from fedrec.fallback.content import BlendConfig, ContentRecommender
from fedrec.fallback.dp_coldstart import (
    RELEASE_DIR,
    blend_scorer,
    release_config,
    release_settings,
    run_training_release,
    tune_collaborative,
)
from fedrec.fallback.evaluation import (
    METRICS,
    ColdStartUser,
    Scorer,
    cold_users,
    evaluate,
    split_users,
    tune_blend,
    user_scores,
)
from fedrec.fallback.features import FeatureConfig
from fedrec.fallback.ondevice import fold_in, load_tower, profile_init
from fedrec.fallback.signup import run_signup, signup_targets
from fedrec.families import family_of
from fedrec.federation.device import Device
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.models import Arrays, ModelConfig
from fedrec.training.local import PrivateState, TrainConfig, init_private

logger = logging.getLogger(__name__)

CSV_NAME = "coldstart.csv"
RESULT_FIELDS = ["method", "reveal", "users", *METRICS, "popularity_weight", "smoothing", "epsilon", "seed"]
PLOT_NAME = "coldstart.png"
FIRST_ROUNDS_CSV = "first_rounds.csv"
SIGNUP_CSV = "signup.csv"  # held-out users with simulated sign-up answers (fedrec.fallback.signup)
SIGNUP_FIELDS = ["method", "answers", "reveal", "users", *METRICS, "popularity_full_ndcg@10", "diff_vs_popularity", "diff_se",
                 "calibration_weight", "liked_share", "liked_weight", "genres_together", "shared_credit", "release_weight",
                 "release_ridge", "ease_weight"]
POPULARITY = "popularity"
DP_POPULARITY = "DP popularity"
DP_GRAM_POPULARITY = "DP popularity (Gram counts)"
DP_FOLD_IN = "DP-EASE fold-in"


class Collaborative(StrEnum):
    """``--collaborative``: the cold-start scorers alone, or with the DP-EASE release."""

    NONE = "none"
    DP_EASE = ModelFamily.DP_EASE.value  # the DP-EASE release of the training users


COLLABORATIVE = tuple(Collaborative)


@dataclass(frozen=True)
class ColdStartConfig:
    reveal: tuple[int, ...] = (0, 1, 3, 5)
    holdout_fraction: float = 0.1
    num_negatives: int = 99
    text_encoders: tuple[str, ...] = ("tfidf", "minilm")
    federated: bool = True  # train a federated reference on the training users
    fold_in_epochs: int = 20  # full-batch steps a new device takes on its revealed items
    fold_in_lr: float = 0.05
    first_rounds: int = 3  # local rounds a joining cold user runs, random vs profile init
    seed: int = 0
    collaborative: Collaborative = Collaborative.NONE  # DP_EASE: add the DP-EASE release of the training users (fedrec.fallback.dp_coldstart)
    release_epsilon: float = 8.0  # its budget (user-level, over the training users)
    release_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.collaborative not in COLLABORATIVE:
            raise ConfigError([f"collaborative {self.collaborative!r} must be one of {', '.join(COLLABORATIVE)}"])
        object.__setattr__(self, "collaborative", Collaborative(self.collaborative))


@dataclass(frozen=True)
class FederatedReference:
    shared: Arrays
    model: ModelConfig
    summary: dict[str, Any]
    user_norms: tuple[float, float] | None = None  # median (GMF, MLP) norms of the trained users' vectors


def train_federated_reference(config: RunConfig, data: Interactions, train_users: np.ndarray, run_dir: Path) -> FederatedReference:
    """A federated run over the training users only (held-out users never take part)."""
    if not family_of(config).neural:  # its device model would be a GMF nobody asked for
        problem = ("the federated reference is a neural model: set model = neumf or gmf "
                   f"(model = {config.model.model} is evaluated through its release, collaborative = dp-ease)")
        raise ConfigError([problem])
    torch.set_num_threads(1)
    population = data.subset_users(train_users)
    split = leave_one_out(population, rng=np.random.default_rng([config.seed, 2]), num_eval_negatives=config.data.num_eval_negatives,
                          mode=config.data.split)
    model = config.model.build(split.n_items)
    devices = [Device(client_id=c, data=split.client(c), model=model) for c in range(split.n_users)]
    transport = InProcessTransport(config, split.n_users, devices=devices)
    started = time.perf_counter()
    shared, history, test = run_federated(config, transport, model=model, run_dir=run_dir)
    summary = {
        "clients": split.n_users, "rounds": history.rounds_run, "clients_per_round": history.expected_clients,
        "epsilon": history.privacy.get("epsilon"), "delta": history.privacy.get("delta"),
        "seconds": time.perf_counter() - started, "train_users_test": test,
    }
    trained = list(transport.private.values())
    norms = None
    if trained:
        norms = (
            float(np.median([np.linalg.norm(p.user_gmf) for p in trained])),
            float(np.median([np.linalg.norm(p.user_mlp) for p in trained])),
        )
        summary["median_user_norms"] = list(norms)
    return FederatedReference(shared=shared, model=model, summary=summary, user_norms=norms)


def profile_scorer(recommender: ContentRecommender) -> Scorer:
    return lambda user, n: recommender.scores(user.query(n))


def federated_scorer(
    ref: FederatedReference, *, init: str, epochs: int, lr: float, seed: int, content: ContentRecommender
) -> Scorer:
    """Scores of a new device that fits its private vectors on its n revealed items."""
    tower = load_tower(ref.shared, ref.model)
    train = TrainConfig(lr=lr)

    def score(user: ColdStartUser, n: int) -> np.ndarray:
        query = user.query(n)
        start: PrivateState
        if init == "profile":
            start = profile_init(
                shared=ref.shared, model=ref.model, content_scores=content.content_scores(query), given=query.given,
                norms=ref.user_norms,
            )
        else:
            start = init_private(ref.model, rng=np.random.default_rng([seed, user.index, 11]))
        private = fold_in(
            shared=ref.shared, model=ref.model, private=start, items=query.given, train=train, epochs=epochs,
            rng=np.random.default_rng([seed, user.index, n, 13]),
        )
        with torch.no_grad():
            logits = tower.score_all(torch.from_numpy(private.user_gmf), torch.from_numpy(private.user_mlp))
        return logits.numpy().astype(np.float64)

    return score


def first_rounds_study(
    ref: FederatedReference,
    users: Sequence[ColdStartUser],
    *,
    federated_config: RunConfig,
    content: ContentRecommender,
    reveal: Sequence[int],
    rounds: int,
) -> list[dict[str, Any]]:
    """Does a profile-initialised private embedding help a cold user in their first rounds?

    Each held-out user joins with their n revealed items and runs the real device code
    (:meth:`Device.train`, the run's local epochs and learning rate) for ``rounds``
    rounds against the reference's shared parameters, starting from a random or a
    profile-based embedding; after each round their targets are ranked as above.
    """
    tower = load_tower(ref.shared, ref.model)
    rows: list[dict[str, Any]] = []
    for n in [n for n in reveal if n > 0]:
        for init in ("random", "profile"):
            per_round: list[list[dict[str, float]]] = [[] for _ in range(rounds + 1)]
            for user in users:
                query = user.query(n)
                initial = (
                    profile_init(
                        shared=ref.shared, model=ref.model, content_scores=content.content_scores(query),
                        given=query.given, norms=ref.user_norms,
                    )
                    if init == "profile" else None
                )
                # a joining device holds only its n items: nothing is held out on it yet
                data = ClientData(
                    n_items=ref.model.n_items, train_items=query.given, val_item=int(query.given[-1]),
                    test_item=int(query.given[-1]), val_negatives=np.empty(0, np.int64), test_negatives=np.empty(0, np.int64),
                )
                device = Device(client_id=user.index, data=data, model=ref.model, initial_private=initial)
                private = device.fresh_private(federated_config.seed)
                for round_ in range(rounds + 1):
                    if round_:
                        private = device.train(shared=ref.shared, private=private, config=federated_config, round_=round_).private
                    with torch.no_grad():
                        scores = tower.score_all(torch.from_numpy(private.user_gmf), torch.from_numpy(private.user_mlp))
                    per_round[round_].append(user_scores(scores.numpy().astype(np.float64), user))
            for round_, metrics in enumerate(per_round):
                rows.append({"init": init, "reveal": n, "round": round_, "users": len(users),
                             **{m: float(np.mean([r[m] for r in metrics])) for m in METRICS}})
    return rows


def run_coldstart_eval(
    data: Interactions,
    *,
    out_dir: Path,
    config: ColdStartConfig,
    federated_config: RunConfig | None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Hold out users, tune on validation users, evaluate every method on test users."""
    started = time.perf_counter()
    step = on_step or (lambda _: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_reveal = max(config.reveal)
    rng = np.random.default_rng([config.seed, 41])
    users = split_users(data, holdout_fraction=config.holdout_fraction, min_interactions=max_reveal + 1, rng=rng)
    val = cold_users(data, users.validation, max_reveal=max_reveal, num_negatives=config.num_negatives, rng=rng)
    test = cold_users(data, users.test, max_reveal=max_reveal, num_negatives=config.num_negatives, rng=rng)
    scorers: dict[str, tuple[Scorer, dict[str, float]]] = {}
    tuned: dict[str, Any] = {}
    content_for_init: ContentRecommender | None = None
    contents: dict[str, ContentRecommender] = {}
    signup_rows: list[dict[str, Any]] = []
    trained: TrainingRelease | None = None
    if config.collaborative is Collaborative.DP_EASE:
        step("DP-EASE release of the training users (own ledger)")
        trained = training_release(data, users.train, config=config, federated_config=federated_config,
                                   run_dir=out_dir / RELEASE_DIR)
    for text in config.text_encoders:
        step(f"item vectors ({text})")
        catalog = build_catalog(data, features=FeatureConfig(text=text), run_dir=out_dir, train_users=users.train)
        if POPULARITY not in scorers:
            pop = ContentRecommender(catalog, BlendConfig(popularity_weight=1.0, smoothing=math.inf))
            scorers[POPULARITY] = (profile_scorer(pop), {"popularity_weight": 1.0, "smoothing": math.inf})
        step(f"tuning the blend ({text}) on validation users")
        best = tune_blend(catalog, val, reveal=config.reveal)
        tuned[text] = {**asdict(best.blend), "grid": best.grid}
        content = ContentRecommender(catalog, BlendConfig(popularity_weight=0.0))
        blend = ContentRecommender(catalog, best.blend)
        scorers[f"content ({text})"] = (profile_scorer(content), {"popularity_weight": 0.0, "smoothing": math.nan})
        scorers[f"blend ({text})"] = (profile_scorer(blend), asdict(best.blend))
        content_for_init = content
        contents[text] = content
        step(f"sign-up answers ({text}): tuning on validation users")
        # liked items count through the release's item-item weights too, as serve-fallback --release does
        signup = run_signup(catalog, val, test, reveal=config.reveal, smoothing=best.blend.smoothing,
                            name=f"preferences ({text}{', DP-EASE similarity' if trained else ''})", seed=config.seed,
                            release=trained.similarity() if trained else None,
                            release_target=trained.settings.target if trained else None)
        tuned[text]["preferences"] = {**signup["config"], "checks": signup["checks"], "grid": signup["grid"]}
        signup_rows.extend(signup["rows"])
    release: dict[str, Any] = {}
    if trained is not None:
        step("DP-EASE release: tuning its scorers on validation users")
        release, dp_scorers = dp_ease_scorers(trained, val, config=config, contents=contents)
        scorers.update(dp_scorers)
    federated: dict[str, Any] = {}
    first_rounds: list[dict[str, Any]] = []
    if config.federated and federated_config is not None and content_for_init is not None:
        step("federated reference (training users only)")
        ref = train_federated_reference(federated_config, data, users.train, out_dir / "federated")
        federated = ref.summary
        for init in ("random", "profile"):
            for epochs in sorted({0, config.fold_in_epochs}):
                name = f"federated ({init} init, {epochs} fold-in steps)"
                scorer = federated_scorer(ref, init=init, epochs=epochs, lr=config.fold_in_lr, seed=config.seed, content=content_for_init)
                scorers[name] = (scorer, {"popularity_weight": math.nan, "smoothing": math.nan})
        if config.first_rounds:
            step("first rounds of joining cold users: random vs profile init")
            first_rounds = first_rounds_study(
                ref, test, federated_config=federated_config, content=content_for_init, reveal=config.reveal,
                rounds=config.first_rounds,
            )
            write_csv(out_dir / FIRST_ROUNDS_CSV, first_rounds, ["init", "reveal", "round", "users", *METRICS], float_format=".6g")
    rows: list[dict[str, Any]] = []
    dp_names = set(release.get("methods", ()))
    for name, (scorer, params) in scorers.items():
        step(f"evaluating {name}")
        for n in config.reveal:
            metrics = evaluate(scorer, test, n)
            epsilon = federated.get("epsilon", math.inf) if name.startswith("federated") else math.inf
            if name in dp_names:
                epsilon = release["epsilon"]
            rows.append({"method": name, "reveal": n, "users": len(test), **metrics, **params, "epsilon": epsilon, "seed": config.seed})
    write_csv(out_dir / CSV_NAME, rows, RESULT_FIELDS, float_format=".6g")
    write_csv(out_dir / SIGNUP_CSV, signup_rows, SIGNUP_FIELDS, float_format=".6g")
    plot(out_dir / PLOT_NAME, rows, reveal=config.reveal, users=len(test))
    results = {
        "dataset": data.name, "seed": config.seed, "config": asdict(config),
        "users": {"train": int(users.train.shape[0]), "validation": len(val), "test": len(test)},
        "tuned": tuned, "federated": federated, "release": release, "rows": rows, "first_rounds": first_rounds, "targets": targets(rows, config.text_encoders, sorted(dp_names)),
        "signup": signup_rows, "signup_targets": signup_targets(signup_rows),
        "seconds": time.perf_counter() - started,
    }
    write_json(out_dir / RESULTS, results)
    return results


@dataclass(frozen=True)
class TrainingRelease:
    """The DP-EASE run over the training users: its results and its released arrays (model.npz)."""

    summary: dict[str, Any]
    arrays: Arrays
    settings: ReleaseSettings
    run_dir: Path

    def similarity(self) -> ReleasedEase:
        """The release as the service reads it (``serve-fallback --release``): its item-item weights."""
        return ReleasedEase.from_arrays(self.arrays)


def training_release(
    data: Interactions, train_users: np.ndarray, *, config: ColdStartConfig, federated_config: RunConfig | None,
    run_dir: Path,
) -> TrainingRelease:
    """DP-EASE over the training users only (the held-out users never take part), with its own ledger in ``run_dir``."""
    run_config = release_config(federated_config, epsilon=config.release_epsilon, delta=config.release_delta, seed=config.seed)
    summary = run_training_release(data, train_users, config=run_config, run_dir=run_dir)
    arrays = read_arrays(run_dir / MODEL)
    settings = release_settings(run_config, np.asarray(arrays["top_items"], dtype=np.int64))
    return TrainingRelease(summary=summary, arrays=arrays, settings=settings, run_dir=run_dir)


def dp_ease_scorers(
    trained: TrainingRelease, val: Sequence[ColdStartUser], *, config: ColdStartConfig, contents: dict[str, ContentRecommender],
) -> tuple[dict[str, Any], dict[str, tuple[Scorer, dict[str, float]]]]:
    """Scorers that read only the release of the training users' DP-EASE run, their
    weights chosen on the validation users ``val``."""
    summary, arrays, settings, run_dir = trained.summary, trained.arrays, trained.settings, trained.run_dir
    scorers: dict[str, tuple[Scorer, dict[str, float]]] = {}
    tuned: dict[str, Any] = {}
    nan = {"popularity_weight": math.nan, "smoothing": math.nan}
    for text, content in contents.items() or [("", None)]:
        choice = tune_collaborative(arrays, val, content=content, reveal=config.reveal, settings=settings)
        ease = ReleasedEase.from_arrays(arrays, extra_ridge=choice.extra_ridge, settings=settings, gram_prior=choice.gram_prior)
        if not scorers:
            prior_only = CollaborativeBlend(ease_weight=0.0, prior_weight=1.0)
            for name, gram in ((DP_POPULARITY, False), (DP_GRAM_POPULARITY, True)):
                scorers[name] = (
                    blend_scorer(ReleasedEase.from_arrays(arrays, settings=settings, gram_prior=gram), prior_only, None),
                    {**nan, "popularity_weight": 1.0},
                )
            scorers[DP_FOLD_IN] = (blend_scorer(ease, choice.fold_in, None), {**nan, "popularity_weight": choice.fold_in.prior_weight})
        if content is not None:
            scorers[f"blend ({text}, DP prior)"] = (
                blend_scorer(ease, choice.content_prior, content), {**nan, "popularity_weight": choice.content_prior.prior_weight}
            )
            scorers[f"DP-EASE + content ({text})"] = (
                blend_scorer(ease, choice.with_content, content), {**nan, "popularity_weight": choice.with_content.prior_weight}
            )
        tuned[text or "none"] = {
            "gram_prior": choice.gram_prior, "extra_ridge": choice.extra_ridge, "fold_in": asdict(choice.fold_in), "with_content": asdict(choice.with_content),
            "content_prior": asdict(choice.content_prior), "grid": choice.grid,
        }
    release = {
        "run_dir": str(run_dir), "epsilon": summary["epsilon"], "epsilon_rdp": summary.get("epsilon_rdp"),
        "delta": summary["delta"], "top_items": summary["top_items"], "clients": summary["clients"],
        "noise_multipliers": summary["noise_multipliers"], "tuned": tuned, "methods": list(scorers),
    }
    return release, scorers


def metric_of(rows: Sequence[dict[str, Any]], method: str, n: int, metric: str = "full_ndcg@10") -> float:
    return next((float(r[metric]) for r in rows if r["method"] == method and r["reveal"] == n), math.nan)


def targets(rows: Sequence[dict[str, Any]], encoders: Sequence[str], private: Sequence[str] = ()) -> dict[str, Any]:
    """The issue's targets: blend vs popularity on full-ranking NDCG@10 at n = 3 and n = 0;
    for each DP-EASE method, its full NDCG@10 over popularity's at every n (target 1.15 at n = 3)."""
    out: dict[str, Any] = {}
    for method in private:
        ratios = {n: metric_of(rows, method, n) / metric_of(rows, POPULARITY, n) for n in sorted({int(r["reveal"]) for r in rows})}
        out[method] = {"ratio_to_popularity": ratios, "n3_target_met": bool(ratios.get(3, math.nan) >= 1.15)}
    for text in encoders:
        pop3, blend3 = metric_of(rows, POPULARITY, 3), metric_of(rows, f"blend ({text})", 3)
        pop0, blend0 = metric_of(rows, POPULARITY, 0), metric_of(rows, f"blend ({text})", 0)
        gain = blend3 / pop3 - 1.0 if pop3 > 0 else math.nan
        out[text] = {
            "n3_relative_gain": gain, "n3_target_met": bool(gain >= 0.2),
            "n0_blend": blend0, "n0_popularity": pop0, "n0_target_met": bool(blend0 >= pop0),
        }
    return out




def plot(path: Path, rows: Sequence[dict[str, Any]], *, reveal: Sequence[int], users: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), layout="constrained")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, metric, label in zip(axes, ("full_ndcg@10", "ndcg@10"), ("full ranking", "99 sampled negatives")):
        for method in methods:
            ax.plot(list(reveal), [metric_of(rows, method, n, metric) for n in reveal], marker="o", ms=3, label=method,
                    ls="--" if method.startswith("federated") else ":" if "DP" in method else "-")
        ax.set_xlabel("revealed items n (chronologically first)")
        ax.set_ylabel(f"NDCG@10 ({label})")
        ax.set_xticks(list(reveal))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncols=3)
    fig.suptitle(f"cold start on {users} held-out users (never trained)")
    save_png(path, fig)
