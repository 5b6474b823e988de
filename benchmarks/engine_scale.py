"""The in-process engine at scale: 100,000 synthetic users, 1,000 clients per round.

Generates the synthetic data set (fedrec.data.synthetic), runs a few DP-FedAvg rounds
with the vectorised engine and prints seconds per round (median), client-rounds per
second, the time to build the data, and peak resident memory (``ru_maxrss``): this
process's (data, split, model, engine, accountant) plus the largest lane worker's (the
engine forks one per extra core). The sum counts the pages they share twice: an upper
bound on what the run held.

    python benchmarks/engine_scale.py [--users 100000] [--items 5000] [--clients-per-round 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from fedrec.config import parse_run_config
from fedrec.engine.vectorised import run
from fedrec.federation.device import simulated_population


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--interactions", type=float, default=20.0, help="mean history length")
    parser.add_argument("--clients-per-round", type=float, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-users", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_run_config(
            {
                "model": "neumf", "dataset": "synthetic", "synthetic-users": args.users, "synthetic-items": args.items,
                "synthetic-interactions": args.interactions, "clients-per-round": args.clients_per_round,
                "num-rounds": args.rounds, "eval-every": 0, "eval-users": args.eval_users,
                "ledger-key": str(Path(tmp) / "ledger.pem"),
            }
        )
        started = time.perf_counter()
        prepared = simulated_population(config)
        data_seconds = time.perf_counter() - started
        results = json.loads(run(config, Path(tmp) / "run").read_text())
    per_round = [r["seconds"] for r in results["round_log"]]
    median = statistics.median(per_round)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    worker_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the lanes, stopped by now
    print(
        f"synthetic: {prepared.split.n_users} users, {prepared.split.n_items} items, "
        f"{len(prepared.interactions)} interactions (built in {data_seconds:.1f} s)"
    )
    print(f"DP-FedAvg, {args.clients_per_round:.0f} expected clients/round, {args.rounds} rounds, epsilon {results['epsilon']:.2f}")
    print(f"seconds per round (median): {median:.2f}  [{', '.join(f'{s:.2f}' for s in per_round)}]")
    print(f"client-rounds per second: {args.clients_per_round / median:.0f}")
    print(
        f"peak resident memory: {peak_gib + worker_gib:.2f} GiB at most "
        f"(this process {peak_gib:.2f} GiB, largest lane worker {worker_gib:.2f} GiB, shared pages counted twice)"
    )
    print(f"test HR@10 {results['hr@10']:.4f}, NDCG@10 {results['ndcg@10']:.4f} on {args.eval_users} users")


if __name__ == "__main__":
    main()
