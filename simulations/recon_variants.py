"""How DP-Recon's settings were chosen: variants of the factor model on VALIDATION users.

For each seed (a different split and noise draw) one DP-EASE run (both releases, the
ledger) at the given epsilon; every variant is post-processing of that seed's release,
scored on the devices' validation items (test items never looked at), against DP-EASE,
with the per-user paired difference and its standard error. The CSV and the printout give
each variant's difference averaged over the seeds, with the standard error of that mean
(the seeds are independent: the square root of the summed squared standard errors over
the number of seeds), and the difference at each seed. Variants:

- DP-Recon's hybrid over a grid of (dim, shrink, weight);
- the factor model alone (item factors from the noisy Gram, ridge reconstruction);
- a held-out score: each item scored by the user vector rebuilt without it,
  ``(q_j^T u - h_j x_j) / (1 - h_j)`` with ``h_j = q_j^T (Q^T Q + mu I)^-1 q_j``;
- a weighted reconstruction (implicit ALS style: history items weigh ``1 + alpha``);
- EASE refitted on the Gram denoised by spiked-Wigner eigenvalue shrinkage (eigenvalues
  below the noise edge ``2 noise_std sqrt(K)`` dropped, those above mapped to
  ``(l + sqrt(l^2 - edge^2)) / 2``), averaged with the DP-EASE weights.

The defaults in ``fedrec/config.py`` (ReconSettings) are the hybrid grid point with the
largest sum of the two mean differences (sampled and full-ranking NDCG@10) on ML-100K
among the points where neither mean difference is below zero by more than one standard
error; the script prints that point last.

    FEDREC_DATA_DIR=/path/to/data python simulations/recon_variants.py --out runs/recon-variants.csv
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, load_config_file, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.factors import ReconRelease, factor_operator, fit_recon, item_factors, reconstruct, ridge
from fedrec.dpease.fit import EaseRelease, content_target, ease_lambda, ease_weights_towards, public_item_content
from fedrec.dpease.run import run_dp_ease
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.experiments.results import write_csv
from fedrec.families import family_of
from fedrec.federation.device import simulated_population

GRID = [(d, s, w) for d in (4, 8, 16, 32) for s in (0.5, 1.0, 2.0) for w in (0.25, 0.5, 1.0)]
ALONE = (8, 16)  # dims of the factor model alone (at shrink 1)
HELD_OUT_DIM = 8  # the held-out score over (shrink, weight) at this dim
ALPHAS = (3.0, 30.0)
DENOISED = ((0.25, 0.25), (0.25, 0.5), (1.0, 0.25), (1.0, 0.5))  # (EASE lambda-noise factor, its share)
METRICS = ("ndcg@10", "full_ndcg@10")


@dataclass(frozen=True)
class Seed:
    """One seed's DP-EASE release, its noisy Gram and its devices' validation data."""

    config: RunConfig
    release: EaseRelease
    noisy: np.ndarray
    noise_std: float
    data: list[Any]
    history: np.ndarray  # (U, n_items)
    ease: dict[str, np.ndarray]  # DP-EASE's per-user validation metrics


def release_of(flat: dict[str, Any], run_dir: Path) -> Seed:
    """One DP-EASE run on ``flat``'s data and seed, kept with its noisy Gram."""
    config = parse_run_config(flat)
    split = simulated_population(config).split
    kept: dict[str, Any] = {}

    def keep(release: EaseRelease, noisy: np.ndarray | None, noise_std: float) -> dict[str, np.ndarray]:
        kept.update(release=release, noisy=noisy, noise_std=noise_std)
        return release.to_arrays()

    run_dp_ease(config, family_of(config).simulated_devices(split, config), run_dir=run_dir, catalog=run_catalog(config),
                derive=keep)
    if kept["noisy"] is None:
        raise SystemExit(f"seed {config.seed}: no co-occurrence release at this epsilon; raise --epsilon")
    release: EaseRelease = kept["release"]
    data = [split.client(u) for u in range(split.n_users)]
    history = np.stack([release.history(d.train_items) for d in data])
    ease = metrics_from_scores(release.score(history), data, "val")
    return Seed(config, release, kept["noisy"], float(kept["noise_std"]), data, history, ease)


def held_out_extra(model: ReconRelease, x: np.ndarray) -> np.ndarray:
    """(U, K) ``mix`` times the held-out factor score, the mix on the held-out operator's scale."""
    plain = factor_operator(model.factors, ridge_=model.ridge)
    h = np.diag(plain)
    operator = plain / (1.0 - h)[None, :]
    np.fill_diagonal(operator, 0.0)
    mix = model.mix * np.linalg.norm(plain) / np.linalg.norm(operator)
    return mix * (reconstruct(model.factors, x, ridge_=model.ridge) @ model.factors.T - h * x) / (1.0 - h)


def denoised_weights(seed: Seed, lambda_factor: float) -> np.ndarray:
    """EASE (towards the content target, as DP-EASE) on the spiked-Wigner-shrunk Gram."""
    e, k, std = seed.config.ease, seed.release.top_items.shape[0], seed.noise_std
    values, vectors = np.linalg.eigh(seed.noisy)
    edge = 2.0 * std * math.sqrt(k)
    values = np.where(values > edge, (values + np.sqrt(np.maximum(values**2 - edge**2, 0.0))) / 2.0, 0.0)
    gram = (vectors * np.maximum(values, e.eigen_floor * std * math.sqrt(k))) @ vectors.T
    content = public_item_content(seed.config)
    target = np.zeros((k, k)) if content is None else e.content_weight * content_target(content[seed.release.top_items])
    lam = ease_lambda(gram, noise_std=std, noise_scale=e.lambda_noise * lambda_factor, base_scale=e.lambda_base)
    return ease_weights_towards(gram, lam, target)


def variants(seed: Seed) -> list[tuple[str, bool, Callable[[], np.ndarray]]]:
    """(name, whether it is a hybrid grid point, scores) for every variant of one seed."""
    rel, noisy, std, floor = seed.release, seed.noisy, seed.noise_std, seed.config.ease.eigen_floor
    top, k, history = rel.top_items, rel.top_items.shape[0], seed.history
    x = history[:, top]

    def hybrid(d: int, s: float, w: float) -> ReconRelease:
        return fit_recon(rel, noisy, noise_std=std, eigen_floor=floor, dim=d, shrink=s, weight=w)

    out: list[tuple[str, bool, Callable[[], np.ndarray]]] = []
    for d, s, w in GRID:
        out.append((f"dp-recon d={d} shrink={s:g} weight={w:g}", True,
                    lambda d=d, s=s, w=w: hybrid(d, s, w).score(history)))
    for d in ALONE:
        def alone(d: int = d) -> np.ndarray:
            model = hybrid(d, 1.0, 1.0)
            zero = replace(rel, weights=np.zeros((k, k)))
            return ReconRelease(ease=zero, factors=model.factors, ridge=model.ridge, mix=1.0).score(history)
        out.append((f"factors alone d={d} shrink=1", False, alone))
    for s, w in ((s, w) for s in (0.5, 1.0, 2.0) for w in (0.25, 0.5, 1.0)):
        out.append((f"held-out score d={HELD_OUT_DIM} shrink={s:g} weight={w:g}", False,
                    lambda s=s, w=w: rel.score(history, extra=held_out_extra(hybrid(HELD_OUT_DIM, s, w), x))))
    r = seed.config.recon
    for alpha in ALPHAS:  # history items weigh 1 + alpha in the device's least squares
        def weighted(alpha: float = alpha) -> np.ndarray:
            factors = item_factors(noisy, noise_std=std, eigen_floor=floor, dim=r.dim)
            mu = ridge(noisy, noise_std=std, shrink=r.shrink)
            users = np.zeros((x.shape[0], factors.shape[1]))
            for user in range(x.shape[0]):
                seen = np.flatnonzero(x[user])
                system = (factors.T @ factors + alpha * (factors[seen].T * x[user, seen]) @ factors[seen]
                          + mu * np.eye(factors.shape[1]))
                users[user] = np.linalg.solve(system, (1 + alpha) * factors[seen].T @ x[user, seen])
            mix = hybrid(r.dim, r.shrink, r.weight).mix
            return rel.score(history, extra=mix / (1 + alpha) * users @ factors.T)
        out.append((f"weighted reconstruction alpha={alpha:g} (defaults)", False, weighted))
    for lam_factor, share in DENOISED:
        def denoised(lam_factor: float = lam_factor, share: float = share) -> np.ndarray:
            weights = (1 - share) * np.asarray(rel.weights, dtype=np.float64) + share * denoised_weights(seed, lam_factor)
            return replace(rel, weights=weights).score(history)
        out.append((f"denoised-Gram EASE lambda-noise x{lam_factor:g} share {share:g}", False, denoised))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="base TOML (data set keys); default ML-100K")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds (split and noise draw)")
    parser.add_argument("--out", type=Path, default=Path("runs/recon-variants.csv"))
    parser.add_argument("--ledger-key", default="")
    args = parser.parse_args()
    base: dict[str, Any] = dict(load_config_file(args.config)) if args.config else {"dataset": "ml-100k"}
    seeds = [int(s) for s in args.seeds.split(",")]
    diffs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    hybrid: dict[str, bool] = {}
    for seed_value in seeds:
        flat = {**base, "seed": seed_value, "model": "dp-ease", "epsilon": args.epsilon, "ledger-key": args.ledger_key}
        seed = release_of(flat, args.out.parent / f"recon-variants-run-seed{seed_value}")
        for name, is_hybrid, scores in variants(seed):
            per_user = metrics_from_scores(scores(), seed.data, "val")
            hybrid[name] = is_hybrid
            for m in METRICS:
                diff = per_user[m] - seed.ease[m]
                diffs.setdefault(name, {}).setdefault(m, []).append(
                    (float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.shape[0]))))
        print(f"seed {seed_value}: K={seed.release.top_items.shape[0]}, DP-EASE validation "
              + ", ".join(f"{m} {seed.ease[m].mean():.4f}" for m in METRICS), flush=True)
    rows: list[dict[str, Any]] = []
    for name, per_metric in diffs.items():
        row: dict[str, Any] = {"variant": name}
        for m in METRICS:
            values = per_metric[m]
            row[f"vs_dp_ease_{m}"] = float(np.mean([v for v, _ in values]))
            row[f"se_{m}"] = math.sqrt(sum(se * se for _, se in values)) / len(values)
            row.update({f"seed{s}_{m}": v for s, (v, _) in zip(seeds, values)})
        rows.append(row)
        print(f"{name:52s} " + " | ".join(
            f"{m} {row[f'vs_dp_ease_{m}']:+.4f} +- {row[f'se_{m}']:.4f} ["
            + " ".join(f"{v:+.4f}" for v, _ in per_metric[m]) + "]" for m in METRICS), flush=True)
    allowed = [row for row in rows if hybrid[row["variant"]]
               and all(row[f"vs_dp_ease_{m}"] >= -row[f"se_{m}"] for m in METRICS)]
    if allowed:
        best = max(allowed, key=lambda row: sum(row[f"vs_dp_ease_{m}"] for m in METRICS))
        print(f"chosen (hybrid, neither mean difference below -1 SE, largest sum): {best['variant']}")
    write_csv(args.out, rows, list(rows[0]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
