"""Every reference of ``fedrec centralized`` in one run, with what each costs.

On the leave-one-out split of a run config (default: ML-100K, seed 0) it fits
popularity, item-kNN, EASE (l2 chosen on validation users) and the centralized dot-product
MF (epochs chosen on validation users), scores each once on the test users and prints
sampled (99 negatives) and full-ranking HR@10 / NDCG@10 with the seconds each took and
the total. ``--neumf`` adds the previous centralized path (NeuMF, 20 epochs of small
Adam steps); it takes minutes.

    FEDREC_DATA_DIR=../shared/data python benchmarks/references.py [--neumf] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from fedrec.config import parse_run_config
from fedrec.data.location import resolve_data_dir
from fedrec.experiments.references import CENTRAL_MODELS, cheap_references
from fedrec.federation.device import simulated_population

COLUMNS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neumf", action="store_true", help="also train the NeuMF path (central-epochs epochs)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the CLI uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = parse_run_config({"seed": args.seed, "data-dir": str(resolve_data_dir())})
    started = time.perf_counter()
    split = simulated_population(config).split
    split_seconds = time.perf_counter() - started
    rows: dict[str, tuple[dict[str, float], float, str]] = {}
    for name, ref in cheap_references(split).items():
        rows[name] = (ref.test, ref.seconds, f"l2 {ref.detail['l2']:g}" if "l2" in ref.detail else "")
    for model in ("mf", "neumf") if args.neumf else ("mf",):
        t = time.perf_counter()
        central = CENTRAL_MODELS[model](split, config, None)
        rows[central.name] = (central.test, time.perf_counter() - t, f"best epoch {central.best_epoch} of <= {central.max_epochs}")
    total = time.perf_counter() - started
    table = Table(title=f"references on {config.data.dataset}, seed {args.seed} (test users; chosen on validation users)")
    for col in ("model", *COLUMNS, "seconds", "chosen"):
        table.add_column(col, justify="left" if col in ("model", "chosen") else "right")
    for name, (test, seconds, chosen) in rows.items():
        table.add_row(name, *(f"{test[c]:.4f}" for c in COLUMNS), f"{seconds:.1f}", chosen)
    console = Console(width=140)
    console.print(table)
    console.print(f"split {split_seconds:.1f} s; total {total:.1f} s with {args.threads} torch thread(s)")


if __name__ == "__main__":
    main()
