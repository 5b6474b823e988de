"""Building a synthetic population: the generator and the leave-one-out split, profiled.

Times ``fedrec.data.synthetic.generate`` and ``fedrec.data.split.leave_one_out`` (the two
steps every simulated run starts with) on ``--users`` synthetic users, with the seeds a
run uses, and prints for each: wall seconds, CPU seconds of this process (all threads;
on a shared machine the wall time grows with the load, the CPU time much less), the peak
resident memory during the step (``VmHWM``, reset when the step starts) and, with
``--profile``, the functions with the most own time (cProfile).

    python benchmarks/population_build.py --users 1000000 --items 5000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import SyntheticSpec, generate


def _peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(name: str, step: Callable[[], Any], *, profile: bool) -> Any:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    except OSError:
        pass
    profiler = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    result = step()
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"| {name} | {wall:.1f} | {cpu:.1f} | {_peak_gib():.2f} |", flush=True)
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-1500:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--interactions", type=float, default=20.0, help="mean history length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print each step's cProfile (adds some overhead)")
    args = parser.parse_args()
    spec = SyntheticSpec(n_users=args.users, n_items=args.items, mean_interactions=args.interactions)
    print(f"{args.users} users, {args.items} items; load average at start {os.getloadavg()[0]:.1f}")
    print("\n| step | wall s | CPU s | peak RSS (GiB) |\n|---|---|---|---|")
    data = measure("generate", lambda: generate(spec, rng=np.random.default_rng([args.seed, 4])), profile=args.profile)
    measure("leave-one-out split", lambda: leave_one_out(data, rng=np.random.default_rng([args.seed, 2])), profile=args.profile)
    print(f"{data.users.shape[0]} interactions; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
