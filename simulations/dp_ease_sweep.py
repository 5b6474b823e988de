"""Privacy-utility sweep of DP-EASE on one data set: epsilon in {1, 2, 4, 8, 16, inf}.

For each epsilon, the settings are chosen from a small fixed grid by looking at
validation users only (test items hidden, :mod:`fedrec.dpease.select`), each candidate
scored by its mean over several noise draws (its expected quality, not the luck of one
draw); the chosen
configuration is then run as a real federated DP-EASE run (every device's clipped
upload, the noise, the signed ledger) and audited, and its test metrics are reported
beside popularity and non-private EASE on the same split.

Choosing settings by looking at a population's validation users is itself a release
about it (Papernot and Steinke 2022): the CSV records how many candidates were tried
at each point, and none of those tries is in the run's ledger. The default settings
(``fedrec/config.py``) were fixed once and are what ``fedrec simulate`` uses.

    FEDREC_DATA_DIR=/path/to/data python simulations/dp_ease_sweep.py --out runs/dp-ease-sweep
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedrec.config import parse_run_config
from fedrec.data.location import resolve_data_dir
from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.report import run_ease_and_report
from fedrec.dpease.select import choose, criterion, without_test_items
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.experiments.baselines import Popularity
from fedrec.experiments.results import save_png, write_csv
from fedrec.federation.device import simulated_population
from fedrec.models.ease import ease_weights
from fedrec.privacy.audit import audit_run

EPSILONS = (1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
PRIVATE_GRID = [
    {"ease-item-threshold": t, "ease-lambda-noise": a} for t in (1.0, 2.0, 4.0) for a in (2.0, 4.0)
]
NON_PRIVATE_GRID = [{"ease-lambda-base": b} for b in (2.0, 5.0, 10.0)]
NOISE_DRAWS = 4  # releases simulated per private candidate, their validation metrics averaged
EASE_LAMBDAS = (100.0, 200.0, 500.0, 1000.0)  # non-private EASE on raw counts (Steck 2019 used 500 on ML-20M)
METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")
COLUMNS = (
    "epsilon_target", "epsilon", "audit", "candidates_tried", "noise_draws", "chosen", "top_items", *METRICS,
    *(f"val_{m}" for m in METRICS), "seconds", "run_dir",
)


def _history(split: LeaveOneOutSplit) -> sp.csr_matrix:
    users, items = split.train_pairs()
    x = sp.csr_matrix((np.ones(users.shape[0]), (users, items)), shape=(split.n_users, split.n_items))
    x.data[:] = 1.0
    return x


def references(split: LeaveOneOutSplit) -> dict[str, dict[str, float]]:
    """Popularity and non-private EASE (lambda chosen on validation users)."""
    pop = Popularity(split)
    x = _history(split)
    gram = (x.T @ x).toarray()
    hidden = without_test_items(split)

    def validation(lam: float) -> float:
        b = ease_weights(gram, lam)
        return criterion(evaluate_scorer(lambda u: x[u] @ b, hidden, which="val"))

    best = max(EASE_LAMBDAS, key=validation)
    weights = ease_weights(gram, best)
    return {
        "popularity": evaluate_scorer(pop.score, split, which="test"),
        "popularity (val)": evaluate_scorer(pop.score, split, which="val"),
        f"EASE lambda {best:g}": evaluate_scorer(lambda u: x[u] @ weights, split, which="test"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", type=Path, default=Path("runs/dp-ease-sweep"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ledger-key", default="", help="Ed25519 key for the ledgers (default ~/.fedrec/ledger_key.pem)")
    args = parser.parse_args()
    base: dict[str, Any] = {"model": "dp-ease", "dataset": args.dataset, "seed": args.seed, "ledger-key": args.ledger_key}
    if args.dataset == "ml-100k":
        base["data-dir"] = str(resolve_data_dir(None))
    split = simulated_population(parse_run_config(base)).split
    refs = references(split)
    for name, metrics in refs.items():
        print(f"{name:>22}: " + "  ".join(f"{m} {metrics[m]:.4f}" for m in METRICS))
    rows: list[dict[str, Any]] = []
    for target in EPSILONS:
        point = {**base, **({"dp": "off"} if math.isinf(target) else {"epsilon": target})}
        grid = NON_PRIVATE_GRID if math.isinf(target) else PRIVATE_GRID
        draws = 1 if math.isinf(target) else NOISE_DRAWS
        choice = choose(point, split, grid, draws=draws)
        run_dir = args.out / f"eps-{target:g}"
        started = time.perf_counter()
        results = run_ease_and_report(parse_run_config({**point, **choice.overrides}), run_dir, engine="inprocess")
        audit = audit_run(run_dir).status if not math.isinf(target) else "no DP"
        row = {
            "epsilon_target": target, "epsilon": results["epsilon"], "audit": audit, "candidates_tried": len(grid), "noise_draws": draws,
            "chosen": " ".join(f"{k}={v:g}" for k, v in choice.overrides.items()), "top_items": results["top_items"],
            **{m: results[m] for m in METRICS}, **{f"val_{m}": choice.validation[m] for m in METRICS},
            "seconds": time.perf_counter() - started, "run_dir": str(run_dir),
        }
        rows.append(row)
        pop = refs["popularity"]
        print(
            f"eps {target:g} (spent {results['epsilon']:.3f}, audit {audit}, {row['chosen']}, K={row['top_items']}): "
            f"test ndcg@10 {results['ndcg@10']:.4f} ({results['ndcg@10'] / pop['ndcg@10']:.2f}x pop), "
            f"full ndcg@10 {results['full_ndcg@10']:.4f} ({results['full_ndcg@10'] / pop['full_ndcg@10']:.2f}x pop), "
            f"hr@10 {results['hr@10']:.4f}, full hr@10 {results['full_hr@10']:.4f}",
            flush=True,
        )
        write_csv(args.out / "sweep.csv", rows, COLUMNS)
    plot(args.out / "sweep.png", rows, refs)
    print(f"wrote {args.out / 'sweep.csv'} and {args.out / 'sweep.png'}")


def plot(path: Path, rows: list[dict[str, Any]], refs: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    private = [r for r in rows if math.isfinite(r["epsilon_target"])]
    for ax, metric, label in zip(axes, ("ndcg@10", "full_ndcg@10"), ("99 sampled negatives", "full ranking")):
        ax.plot([r["epsilon_target"] for r in private], [r[metric] for r in private], marker="o", label="DP-EASE (user-level DP)")
        for r in rows:
            if not math.isfinite(r["epsilon_target"]):
                ax.axhline(r[metric], ls="--", lw=1, color="C0", label="DP-EASE mechanism without noise")
        for name, style in (("popularity", ":"),):
            ax.axhline(refs[name][metric], ls=style, color="gray", label="popularity (no DP)")
        ease = next(k for k in refs if k.startswith("EASE"))
        ax.axhline(refs[ease][metric], ls="-.", color="black", lw=1, label=f"{ease} (no DP)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("user-level epsilon (delta = 1e-5)")
        ax.set_ylabel(f"test {metric} ({label})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("DP-EASE: settings per epsilon chosen on validation users")
    save_png(path, fig)


if __name__ == "__main__":
    main()
