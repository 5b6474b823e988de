"""The in-process engine at scale: 100,000 synthetic users, 1,000 clients per round.

Generates the synthetic data set (fedrec.data.synthetic), runs a few DP-FedAvg rounds
with the vectorised engine and prints seconds per round (median), client-rounds per
second, the CPU seconds of each round (this process and its lane workers: on a shared
machine the wall time grows with the load, the CPU time much less), the time to build
the data, and peak memory of every process of the run: this
process (data, split, model, engine, accountant) and its lane workers (the engine forks
one per extra core). Two figures: each process's own peak resident memory
(``ru_maxrss``, the workers' largest) summed, which counts the pages a worker shares with
the engine (forked copy-on-write) twice, an upper bound; and the peak over the run of
the summed proportional set size (``Pss`` in ``/proc/PID/smaps_rollup``, sampled every
0.2 s: a shared page counted once, split between its processes).

    python benchmarks/engine_scale.py [--users 100000] [--items 5000] [--clients-per-round 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fedrec.config import parse_run_config
from fedrec.engine.vectorised import run
from fedrec.federation.device import simulated_population


class MemorySampler(threading.Thread):
    """The largest summed ``Rss`` and ``Pss`` of this process and its children, sampled."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.peak_rss, self.peak_pss, self.processes = every, 0.0, 0.0, 1
        self.stopped = threading.Event()

    @staticmethod
    def _pids() -> list[int]:
        pids = [os.getpid()]
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except OSError:
                continue
        return pids

    @staticmethod
    def _rollup(pid: int) -> tuple[float, float]:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            return 0.0, 0.0
        kib = {line.split(":")[0]: int(line.split()[1]) for line in lines[1:] if line.endswith("kB")}
        return kib.get("Rss", 0) / 2**20, kib.get("Pss", 0) / 2**20

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            pids = self._pids()
            rss, pss = map(sum, zip(*(self._rollup(pid) for pid in pids)))
            if pss > self.peak_pss:
                self.processes = len(pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def cpu_seconds() -> float:
    """CPU seconds (user + system) so far of this process and its live children (the lanes)."""
    total = time.process_time()
    for pid in MemorySampler._pids()[1:]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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
        print(f"load average at the start: {os.getloadavg()[0]:.1f}", flush=True)
        sampler = MemorySampler()
        sampler.start()
        started = time.perf_counter()
        prepared = simulated_population(config)
        data_seconds = time.perf_counter() - started
        marks = [cpu_seconds()]
        results = json.loads(run(config, Path(tmp) / "run", on_round=lambda *_: marks.append(cpu_seconds())).read_text())
        sampler.stop()
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
    cpu = [f"{b - a:.1f}" for a, b in itertools.pairwise(marks)]
    print(f"CPU seconds from round end to round end, all processes (the first from the start of the run): {', '.join(cpu)}")
    print(
        f"peak resident memory: {peak_gib + worker_gib:.2f} GiB at most "
        f"(this process {peak_gib:.2f} GiB, largest lane worker {worker_gib:.2f} GiB, shared pages counted twice)"
    )
    print(
        f"sampled every {sampler.every} s, all processes together: peak summed PSS {sampler.peak_pss:.2f} GiB "
        f"({sampler.processes} processes at that peak), peak summed RSS {sampler.peak_rss:.2f} GiB"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"test HR@10 {results['hr@10']:.4f}, NDCG@10 {results['ndcg@10']:.4f} on {args.eval_users} users")


if __name__ == "__main__":
    main()
