"""How DP-Recon's settings were chosen: variants of the factor model on VALIDATION users.

One DP-EASE run (both releases, the ledger) at the given epsilon; every variant is
post-processing of that one release, scored on the devices' validation items (test
items never looked at), against popularity and DP-EASE, with the per-user paired
difference to DP-EASE and its standard error:

- the factor model alone (item factors from the noisy Gram, ridge reconstruction);
- DP-Recon's hybrid over a small grid of (dim, shrink, weight);
- a weighted reconstruction (implicit ALS style: history items weigh ``1 + alpha``).

The defaults in ``fedrec/config.py`` (ReconSettings) are the grid point with the largest
sum of the two paired differences (sampled and full-ranking NDCG@10) on ML-100K among the
points where neither difference is below zero by more than one standard error. The
weighted reconstruction is tried at the defaults.

    FEDREC_DATA_DIR=/path/to/data python simulations/recon_variants.py --out runs/recon-variants.csv
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import load_config_file, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.factors import ReconRelease, fit_recon, item_factors, ridge
from fedrec.dpease.fit import EaseRelease
from fedrec.dpease.run import run_dp_ease
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.experiments.baselines import Popularity
from fedrec.experiments.results import write_csv
from fedrec.families import family_of
from fedrec.federation.device import simulated_population

GRID = [(d, s, w) for d in (16, 32, 64) for s in (1.0, 10.0) for w in (0.25, 0.5, 1.0, 2.0)]
ALPHAS = (3.0, 10.0, 30.0, 100.0)
METRICS = ("ndcg@10", "full_ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="base TOML (data set keys); default ML-100K")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("runs/recon-variants.csv"))
    parser.add_argument("--ledger-key", default="")
    args = parser.parse_args()
    flat: dict[str, Any] = dict(load_config_file(args.config)) if args.config else {"dataset": "ml-100k", "seed": 0}
    flat.update({"model": "dp-ease", "epsilon": args.epsilon, "ledger-key": args.ledger_key})
    config = parse_run_config(flat)
    split = simulated_population(config).split
    kept: dict[str, Any] = {}

    def keep(release: EaseRelease, noisy: np.ndarray | None, noise_std: float) -> dict[str, np.ndarray]:
        kept.update(release=release, noisy=noisy, noise_std=noise_std)
        return release.to_arrays()

    run_dp_ease(config, family_of(config).simulated_devices(split, config), run_dir=args.out.parent / "recon-variants-run",
                catalog=run_catalog(config), derive=keep)
    release, noisy, std = kept["release"], kept["noisy"], kept["noise_std"]
    data = [split.client(u) for u in range(split.n_users)]
    history = np.stack([release.history(d.train_items) for d in data])  # (U, n_items)

    def validation(scores: np.ndarray) -> dict[str, np.ndarray]:
        return metrics_from_scores(scores, data, "val")

    pop = validation(Popularity(split).score(np.arange(split.n_users)).astype(np.float64))
    ease = validation(release.score(history))
    rows: list[dict[str, Any]] = []

    def report(name: str, per_user: dict[str, np.ndarray]) -> None:
        row: dict[str, Any] = {"variant": name}
        for m in METRICS:
            diff = per_user[m] - ease[m]
            row.update({m: per_user[m].mean(), f"x_pop_{m}": per_user[m].mean() / pop[m].mean(),
                        f"vs_dp_ease_{m}": diff.mean(), f"se_{m}": diff.std(ddof=1) / math.sqrt(diff.shape[0])})
        rows.append(row)
        print(f"{name:34s} " + " | ".join(
            f"{m} {row[m]:.4f} ({row[f'x_pop_{m}']:.2f}x pop) vs DP-EASE {row[f'vs_dp_ease_{m}']:+.4f} +- {row[f'se_{m}']:.4f}"
            for m in METRICS), flush=True)

    report("popularity", pop)
    report("dp-ease", ease)
    top, k = release.top_items, release.top_items.shape[0]
    for d, s, w in GRID:
        model = fit_recon(release, noisy, noise_std=std, eigen_floor=config.ease.eigen_floor, dim=d, shrink=s, weight=w)
        if w == GRID[0][2]:  # the factor model alone, once per (dim, shrink)
            alone = ReconRelease(ease=EaseRelease(top_items=top, weights=np.zeros((k, k)), prior=release.prior,
                                                  score_decay=release.score_decay, top_first=release.top_first),
                                 factors=model.factors, ridge=model.ridge, mix=1.0)
            report(f"factors alone d={d} shrink={s:g}", validation(alone.score(history)))
        report(f"dp-recon d={d} shrink={s:g} weight={w:g}", validation(model.score(history)))
    r = config.recon
    factors = item_factors(noisy, noise_std=std, eigen_floor=config.ease.eigen_floor, dim=r.dim)
    mu = ridge(noisy, noise_std=std, shrink=r.shrink)
    base = fit_recon(release, noisy, noise_std=std, eigen_floor=config.ease.eigen_floor, dim=r.dim, shrink=r.shrink,
                     weight=r.weight)
    x = history[:, top]
    for alpha in ALPHAS:  # history items weigh 1 + alpha in the device's least squares
        users = np.zeros((x.shape[0], factors.shape[1]))
        for r in range(x.shape[0]):
            seen = np.flatnonzero(x[r])
            system = factors.T @ factors + alpha * (factors[seen].T * x[r, seen]) @ factors[seen] + mu * np.eye(factors.shape[1])
            users[r] = np.linalg.solve(system, (1 + alpha) * factors[seen].T @ x[r, seen])
        extra = base.mix / (1 + alpha) * users @ factors.T
        report(f"weighted reconstruction alpha={alpha:g}", validation(release.score(history, extra=extra)))
    write_csv(args.out, rows, list(rows[0]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
