"""Privacy-utility sweep of DP-Recon beside DP-EASE: epsilon in {1, 2, 4, 8, 16, inf}.

At each epsilon both families run as real federated runs on the same split (every
device's clipped uploads, the noise, the signed ledger, audited), with the settings in
``fedrec/config.py`` (chosen once on ML-100K validation users at epsilon 8; nothing is
re-tuned per point). The CSV holds both models' test metrics, popularity and EASE from
the same runs, and the per-user paired difference DP-Recon minus DP-EASE with its
standard error; the plot draws both models against epsilon with popularity and EASE.

    FEDREC_DATA_DIR=/path/to/data python simulations/recon_sweep.py --out runs/recon-sweep
    python simulations/recon_sweep.py --config lastfm.toml --out runs/recon-sweep-lastfm
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import load_config_file, parse_run_config
from fedrec.evaluation.scoring import paired_difference
from fedrec.experiments.results import MODEL, read_arrays, save_png, write_csv
from fedrec.experiments.run import FixedChannels, run_family
from fedrec.families import family_of
from fedrec.federation.device import simulated_population
from fedrec.privacy.audit import audit_run

EPSILONS = (1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
MODELS = ("dp-ease", "dp-recon")
METRICS = ("ndcg@10", "full_ndcg@10", "hr@10", "full_hr@10")
COLUMNS = (
    "epsilon_target", "epsilon", "audit", "top_items",
    *(f"{model}_{m}" for model in MODELS for m in METRICS),
    *(f"{ref}_{m}" for ref in ("popularity", "ease") for m in METRICS),
    *(f"diff_{m}" for m in ("ndcg@10", "full_ndcg@10")), *(f"diff_se_{m}" for m in ("ndcg@10", "full_ndcg@10")),
    "seconds",
)


def per_user_test(run_dir: Path, flat: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every device's test metrics with the run's release, scored as the devices score."""
    config = parse_run_config(flat)
    split = simulated_population(config).split
    rows = family_of(config).simulated_devices(split, config).evaluate(range(split.n_users), read_arrays(run_dir / MODEL), "test")
    return {m: np.array([r[m] for r in rows]) for m in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="base TOML (data set keys); default ML-100K")
    parser.add_argument("--out", type=Path, default=Path("runs/recon-sweep"))
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    parser.add_argument("--ledger-key", default="", help="Ed25519 key for the ledgers (default ~/.fedrec/ledger_key.pem)")
    args = parser.parse_args()
    base: dict[str, Any] = dict(load_config_file(args.config)) if args.config else {"dataset": "ml-100k", "seed": 0}
    base["ledger-key"] = args.ledger_key
    rows: list[dict[str, Any]] = []
    for target in (float(e) for e in args.epsilons.split(",")):
        point = {**base, **({"dp": "off"} if math.isinf(target) else {"dp": "user", "epsilon": target})}
        row: dict[str, Any] = {"epsilon_target": target, "seconds": 0.0}
        per_user = {}
        for model in MODELS:
            flat = {**point, "model": model}
            config = parse_run_config(flat)
            run_dir = args.out / f"{model}_eps-{target:g}"
            split = simulated_population(config).split
            results = run_family(config, FixedChannels(config, n_items=split.n_items, simulated=True), out_dir=run_dir,
                                 engine="inprocess")
            row.update({f"{model}_{m}": results[m] for m in METRICS})
            row["seconds"] += results["seconds"]
            if model == "dp-recon":
                row.update(epsilon=results["epsilon"], top_items=results["top_items"],
                           audit=audit_run(run_dir).status if math.isfinite(target) else "no DP")
                for ref in ("popularity", "ease"):
                    row.update({f"{ref}_{m}": results["references"][ref]["test"][m] for m in METRICS})
            per_user[model] = per_user_test(run_dir, flat)
        diff = paired_difference(per_user["dp-recon"], per_user["dp-ease"])
        for m in ("ndcg@10", "full_ndcg@10"):
            row[f"diff_{m}"], row[f"diff_se_{m}"] = diff[m]["difference"], diff[m]["standard_error"]
        rows.append(row)
        pop = row["popularity_ndcg@10"], row["popularity_full_ndcg@10"]
        print(
            f"eps {target:g} (spent {row['epsilon']:.3f}, audit {row['audit']}, K={row['top_items']}): "
            f"dp-recon {row['dp-recon_ndcg@10']:.4f} / {row['dp-recon_full_ndcg@10']:.4f} "
            f"({row['dp-recon_ndcg@10'] / pop[0]:.2f}x / {row['dp-recon_full_ndcg@10'] / pop[1]:.2f}x pop), "
            f"dp-ease {row['dp-ease_ndcg@10']:.4f} / {row['dp-ease_full_ndcg@10']:.4f}, recon - ease "
            f"{row['diff_ndcg@10']:+.4f} +- {row['diff_se_ndcg@10']:.4f} / {row['diff_full_ndcg@10']:+.4f} +- "
            f"{row['diff_se_full_ndcg@10']:.4f}",
            flush=True,
        )
        write_csv(args.out / "sweep.csv", rows, COLUMNS)
    plot(args.out / "sweep.png", rows, title=Path(str(base.get("dataset", ""))).name)
    print(f"wrote {args.out / 'sweep.csv'} and {args.out / 'sweep.png'}")


def plot(path: Path, rows: list[dict[str, Any]], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    private = [r for r in rows if math.isfinite(r["epsilon_target"])]
    for ax, metric, label in zip(axes, ("ndcg@10", "full_ndcg@10"), ("99 sampled negatives", "full ranking")):
        for k, (model, name) in enumerate((("dp-recon", "DP-Recon"), ("dp-ease", "DP-EASE"))):
            ax.plot([r["epsilon_target"] for r in private], [r[f"{model}_{metric}"] for r in private], marker="os"[k],
                    color=f"C{k}", label=f"{name} (user-level DP)")
            for r in rows:
                if not math.isfinite(r["epsilon_target"]):
                    ax.axhline(r[f"{model}_{metric}"], ls="--", lw=1, color=f"C{k}", label=f"{name} without noise")
        ref = rows[0]
        ax.axhline(ref[f"popularity_{metric}"], ls=":", color="gray", label="popularity (no DP)")
        if math.isfinite(ref[f"ease_{metric}"]):
            ax.axhline(ref[f"ease_{metric}"], ls="-.", color="black", lw=1, label="EASE (no DP)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("user-level epsilon (delta = 1e-5)")
        ax.set_ylabel(f"test {metric} ({label})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DP-Recon and DP-EASE on {title}: same releases, same budget")
    save_png(path, fig)


if __name__ == "__main__":
    main()
