"""How many users make privacy cheap: DP-EASE's quality against the population size.

For every population N and every epsilon (``inf``: the same mechanism without noise,
``dp = off``), one real DP-EASE run (``fedrec.dpease.report.run_ease_and_report``: every
device's clipped upload summed, the noise, the signed ledger, the fit, the devices'
evaluation of ``eval-users`` sampled users) in its own run folder, audited with
``fedrec audit``'s own check; popularity and EASE (where the catalogue allows) on the
same split and the same evaluation users. The population is synthetic
(``synthetic-users = N``) or a seeded user subset of a real data set (``max-users = N``;
all users where N is larger). Each row also carries the planner's predicted ratio to
the noiseless model (:func:`fedrec.experiments.plan.predicted_ratio`, read from the
noiseless run's own sums) beside the measured one.

Writes ``curve.csv`` and ``curve.png`` (full-ranking and sampled NDCG@10 against N, and
the ratio to the noiseless model with the prediction beside it).

    python simulations/population_curve.py --users 1000,10000,100000 --epsilons 1,4,8,inf --out runs/population
    python simulations/population_curve.py --users 1000000 --add-to runs/population/curve.csv --out runs/population-1m

``--add-to`` keeps the rows of an earlier ``curve.csv`` (made with the same settings) for
the populations not run now, so that a larger N joins a curve without running it again;
the new rows replace any of the same N.
    FEDREC_DATA_DIR=/path/to/data python simulations/population_curve.py --dataset ml-100k --users 100,300,943 --out runs/pop-ml100k
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, parse_run_config
from fedrec.dpease.fit import EaseRelease
from fedrec.dpease.population import PopulationStatistics
from fedrec.dpease.report import run_ease_and_report
from fedrec.dpease.run import GRAM, PAIR_DECAY_REQUEST, TOP_ITEMS_REQUEST
from fedrec.dpease.statistics import unpack_symmetric
from fedrec.experiments.plan import predicted_ratio
from fedrec.experiments.results import MODEL, read_arrays, save_png, write_csv
from fedrec.federation.device import simulated_population
from fedrec.privacy.audit import OK, audit_run

METRICS = ("ndcg@10", "full_ndcg@10")
COLUMNS = (
    "dataset", "users", "epsilon_target", "epsilon", "audit", "top_items", *METRICS,
    *(f"popularity_{m}" for m in METRICS), *(f"ease_{m}" for m in METRICS), *(f"noiseless_{m}" for m in METRICS),
    *(f"ratio_{m}" for m in METRICS), "predicted_ratio", "seconds", "run_dir",
)


def point_config(args: argparse.Namespace, users: int, epsilon: float, out: Path) -> dict[str, Any]:
    """The run settings of one curve point."""
    base: dict[str, Any] = {
        "model": "dp-ease", "seed": args.seed, "eval-users": args.eval_users, "ledger-key": str(out / "ledger.pem"),
        **dict(item.split("=", 1) for item in args.set),
    }
    if args.dataset == "synthetic":
        base.update({"dataset": "synthetic", "synthetic-users": users, "synthetic-items": args.items,
                     "synthetic-interactions": args.interactions})
    else:
        base.update({"dataset": args.dataset, "max-users": users})
    if math.isinf(epsilon):
        base["dp"] = "off"
    else:
        base["epsilon"] = epsilon
    return base


def gram_eigenvalues(config: RunConfig, top_items: np.ndarray) -> np.ndarray:
    """Eigenvalues of the noiseless co-occurrence sum over ``top_items`` (every device's
    clipped upload, summed as the run sums them, without the noise)."""
    if top_items.shape[0] == 0:
        return np.zeros(0)
    devices = PopulationStatistics(simulated_population(config).split, clipping_norm=config.privacy.clipping_norm)
    request = {TOP_ITEMS_REQUEST: top_items, PAIR_DECAY_REQUEST: np.array([config.ease.pair_decay])}
    gram = sum(part.update[GRAM] for part in devices.statistics(devices.clients(), "gram", request))
    return np.linalg.eigvalsh(unpack_symmetric(np.asarray(gram), int(top_items.shape[0])))


def cache_references() -> None:
    """Popularity and EASE depend on the split and the evaluation users only, not on
    epsilon: fit and score them once per population (the same numbers in every row)."""
    from fedrec.experiments import run as pipeline  # the one pipeline fits the references

    computed: dict[tuple[int, int, bytes], Any] = {}
    fit = pipeline.cheap_references

    def cached(split: Any, *, knn: bool = True, users: np.ndarray | None = None, **kwargs: Any) -> Any:
        key = (split.n_users, split.n_items, b"" if users is None else np.asarray(users).tobytes())
        if key not in computed:
            computed.clear()
            computed[key] = fit(split, knn=knn, users=users, **kwargs)
        return computed[key]

    pipeline.cheap_references = cached


def run_point(args: argparse.Namespace, users: int, epsilon: float) -> dict[str, Any]:
    run_dir = args.out / f"n{users}-eps{epsilon:g}"
    started = time.perf_counter()
    config = parse_run_config(point_config(args, users, epsilon, args.out))
    results = run_ease_and_report(config, run_dir, engine="inprocess")
    audit = "no DP" if math.isinf(epsilon) else ("verified" if audit_run(run_dir).code == OK else "FAILED")
    refs = results.get("references", {})
    row: dict[str, Any] = {
        "dataset": args.dataset, "users": results["clients"], "epsilon_target": epsilon, "epsilon": results["epsilon"],
        "audit": audit, "top_items": results["top_items"], "seconds": round(time.perf_counter() - started, 1),
        "run_dir": str(run_dir),
    }
    if not math.isinf(epsilon):  # the planner's inputs: the released K, the noise, the noiseless Gram's spectrum
        top = EaseRelease.from_arrays(read_arrays(run_dir / MODEL)).top_items
        row["_theta"], row["_k"] = gram_eigenvalues(config, top), int(top.shape[0])
        row["_noise_std"] = results["noise_multipliers"][1] * config.privacy.clipping_norm
    for m in METRICS:
        row[m] = results[m]
        row[f"popularity_{m}"] = refs.get("popularity", {}).get("test", {}).get(m, math.nan)
        row[f"ease_{m}"] = refs.get("ease", {}).get("test", {}).get(m, math.nan)
    return row


def curve(args: argparse.Namespace, kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    epsilons = sorted(args.epsilons, key=lambda e: (not math.isinf(e), e))  # the noiseless run first: the ratios need it
    for users in args.users:
        noiseless: dict[str, Any] | None = None
        for epsilon in epsilons:
            row = run_point(args, users, epsilon)
            if math.isinf(epsilon):
                noiseless = row
            for m in METRICS:
                row[f"noiseless_{m}"] = noiseless[m] if noiseless else math.nan
                row[f"ratio_{m}"] = row[m] / noiseless[m] if noiseless and noiseless[m] > 0 else math.nan
            if "_theta" in row and noiseless and noiseless["full_ndcg@10"] > 0:
                floor = row["popularity_full_ndcg@10"] / noiseless["full_ndcg@10"]
                row["predicted_ratio"] = predicted_ratio(row.pop("_theta"), noise_std=row.pop("_noise_std"), k=row.pop("_k"), floor=floor)
            else:
                row["predicted_ratio"] = 1.0 if math.isinf(epsilon) else math.nan
            rows.append(row)
            print(
                f"N {row['users']:>8}  eps {epsilon:>4g}  K {row['top_items']:>5}  NDCG@10 {row['ndcg@10']:.4f} / full "
                f"{row['full_ndcg@10']:.4f}  ratio {row['ratio_full_ndcg@10']:.2f} (full)  popularity "
                f"{row['popularity_full_ndcg@10']:.4f}  {row['audit']}  {row['seconds']} s", flush=True,
            )
            write_csv(args.out / "curve.csv", merged(kept, rows, dataset=args.dataset), COLUMNS)
    return merged(kept, rows, dataset=args.dataset)


def read_table(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``curve.csv`` written by :func:`curve`, numbers as numbers."""
    with path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    if not table or set(COLUMNS) - set(table[0]):
        raise SystemExit(f"--add-to {path}: not a population curve table (columns {', '.join(COLUMNS)})")
    rows = []
    for raw in table:
        row: dict[str, Any] = {}
        for name, value in raw.items():
            if name in ("dataset", "audit", "run_dir"):
                row[name] = value
            elif name in ("users", "top_items"):
                row[name] = int(value)
            else:
                row[name] = float(value) if value not in ("", None) else math.nan
        rows.append(row)
    return rows


def merged(kept: list[dict[str, Any]], new: list[dict[str, Any]], *, dataset: str) -> list[dict[str, Any]]:
    """``kept`` rows of the populations not in ``new``, then ``new``, by N (noiseless first)."""
    other = sorted({r["dataset"] for r in kept} - {dataset})
    if other:
        raise SystemExit(f"--add-to: its rows are of {', '.join(other)}, this curve is of {dataset} (--dataset)")
    ran = {r["users"] for r in new}
    rows = [r for r in kept if r["users"] not in ran] + new
    return sorted(rows, key=lambda r: (r["users"], not math.isinf(r["epsilon_target"]), r["epsilon_target"]))


def crossing(rows: list[dict[str, Any]], *, epsilon: float, level: float, metric: str = "full_ndcg@10") -> float | None:
    """The smallest N on the curve from which the ratio to the noiseless model stays at
    or above ``level`` at ``epsilon`` (every larger N too); None if the largest N is below."""
    points = sorted((r["users"], r[f"ratio_{metric}"]) for r in rows if r["epsilon_target"] == epsilon)
    found: float | None = None
    for users, ratio in reversed(points):
        if ratio < level:
            break
        found = float(users)
    return found


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    epsilons = sorted({r["epsilon_target"] for r in rows})
    for ax, metric in zip(axes[:2], ("full_ndcg@10", "ndcg@10")):
        for epsilon in epsilons:
            pts = [r for r in rows if r["epsilon_target"] == epsilon]
            label = "no noise" if math.isinf(epsilon) else f"epsilon {epsilon:g}"
            ax.plot([r["users"] for r in pts], [r[metric] for r in pts], marker="o", label=label)
        ref_pts = [r for r in rows if r["epsilon_target"] == epsilons[0]]
        for name, style in (("popularity", ":"), ("ease", "--")):
            ax.plot([r["users"] for r in ref_pts], [r[f"{name}_{metric}"] for r in ref_pts], "k" + style, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("users (N)")
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=8)
    ax = axes[2]
    for epsilon in [e for e in epsilons if not math.isinf(e)]:
        pts = [r for r in rows if r["epsilon_target"] == epsilon]
        line = ax.plot([r["users"] for r in pts], [r["ratio_full_ndcg@10"] for r in pts], marker="o", label=f"epsilon {epsilon:g}")
        ax.plot([r["users"] for r in pts], [r["predicted_ratio"] for r in pts], ls="--", marker="x", color=line[0].get_color(),
                label=f"epsilon {epsilon:g}, planned")
    ax.axhline(0.9, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("users (N)")
    ax.set_ylabel("full NDCG@10 / noiseless")
    ax.legend(fontsize=7)
    fig.suptitle(f"DP-EASE against the population ({rows[0]['dataset']})")
    save_png(path, fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", help="synthetic, ml-100k or a data file (with --set for its columns)")
    parser.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")], default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--epsilons", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 4.0, 8.0, math.inf])
    parser.add_argument("--items", type=int, default=5_000, help="synthetic catalogue size")
    parser.add_argument("--interactions", type=float, default=20.0, help="synthetic mean history length")
    parser.add_argument("--eval-users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other run setting")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--add-to", type=Path, metavar="CSV",
                        help="an earlier curve.csv (same settings) whose other populations' rows join this curve")
    args = parser.parse_args(argv)
    kept = read_table(args.add_to) if args.add_to else []
    args.out.mkdir(parents=True, exist_ok=True)
    cache_references()
    rows = curve(args, kept)
    plot(args.out / "curve.png", rows)
    for epsilon in sorted({r["epsilon_target"] for r in rows if not math.isinf(r["epsilon_target"])}):
        n = crossing(rows, epsilon=epsilon, level=0.9)
        reached = f"from N = {n:.0f} on (every larger N too)" if n else "not at the largest N of this curve"
        print(f"epsilon {epsilon:g}: 90% of the noiseless full NDCG@10 {reached}")
    return rows


if __name__ == "__main__":
    main()
