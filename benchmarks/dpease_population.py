"""DP-EASE for a large synthetic population, end to end, and where its time and memory go.

Runs ``fedrec simulate`` (the CLI's own command, in this process) on a synthetic
population, then ``fedrec audit`` on the run, with a timer around each stage: data
generation, the leave-one-out split, the devices' distinct histories, the two releases
(the vectorised sums of every device's clipped upload), the fit, the devices' evaluation
of the ``eval-users`` sample, the references (popularity, EASE), the run's id maps and
the audit. Each stage's peak resident memory is read from ``VmHWM`` after resetting it
(``/proc/self/clear_refs``) when the stage starts; "whole run" is the process's peak.

    python benchmarks/dpease_population.py --users 1000000 --items 5000 --eval-users 5000 --out runs/dpease-1m
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STAGES: dict[str, dict[str, float]] = {}
PROGRESS: dict[str, Path | None] = {"path": None}  # where the stages so far are written
PEAK = {"gib": 0.0}  # the process's peak over every stage (resetting VmHWM resets ru_maxrss too)


def _reset_peak() -> None:
    PEAK["gib"] = max(PEAK["gib"], _peak_gib())  # what happened since the last reset counts for the whole run
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peaks are then the process's so far
        pass


def _peak_gib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _record(stage: str, seconds: float) -> None:
    entry = STAGES.setdefault(stage, {"seconds": 0.0, "peak_gib": 0.0, "calls": 0})
    entry["seconds"] += seconds
    entry["peak_gib"] = max(entry["peak_gib"], _peak_gib())
    entry["calls"] += 1
    PEAK["gib"] = max(PEAK["gib"], entry["peak_gib"])
    if PROGRESS["path"] is not None:  # so far, for a run stopped before its end
        PROGRESS["path"].write_text(json.dumps({"stages": STAGES, "peak_gib": PEAK["gib"], "load": os.getloadavg()}, indent=1))


def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _reset_peak()
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _record(stage, time.perf_counter() - started)

    return wrapper


def timed_generator(stage: str, function: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """The time spent inside a generator's own steps (not in its consumer)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        inner = function(*args, **kwargs)
        while True:
            _reset_peak()
            started = time.perf_counter()
            try:
                item = next(inner)
            except StopIteration:
                _record(stage, time.perf_counter() - started)
                return
            _record(stage, time.perf_counter() - started)
            yield item

    return wrapper


def instrument() -> None:
    from fedrec.data import sources
    from fedrec.dpease import population, run
    from fedrec.experiments import run as pipeline
    from fedrec.privacy import release

    sources.generate = timed("generate the synthetic data", sources.generate)
    sources.leave_one_out = timed("leave-one-out split (evaluation negatives)", sources.leave_one_out)
    population.Histories.of = classmethod(timed("devices' distinct histories", population.Histories.of.__func__))
    population.count_sums = timed_generator("release 1: every device's count upload, summed", population.count_sums)
    population.gram_sums = timed_generator("release 2: every device's co-occurrence upload, summed", population.gram_sums)
    release.add_gaussian_noise = timed("noise on both sums", release.add_gaussian_noise)
    run.phase_noise = timed("calibrate the two releases' noise (PRV bisection)", run.phase_noise)
    run.fit_release = timed("fit (top items, noisy Gram, EASE)", run.fit_release)
    population.PopulationStatistics.evaluate = timed("devices' evaluation (eval-users sample)", population.PopulationStatistics.evaluate)
    pipeline.cheap_references = timed("references (popularity, EASE; scored on the sample)", pipeline.cheap_references)
    pipeline.write_run_ids = timed("run id maps (user_ids.csv, item_ids.csv)", pipeline.write_run_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--eval-users", type=int, default=5_000)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--out", type=Path, required=True, help="the run folder (new)")
    args = parser.parse_args()
    started = time.perf_counter()
    PROGRESS["path"] = args.out.with_name(args.out.name + ".stages.json")
    instrument()
    from fedrec.cli import app
    from fedrec.privacy.audit import OK, audit_run

    command = [
        "simulate", "--set", "dataset=synthetic", "--set", f"synthetic-users={args.users}",
        "--set", f"synthetic-items={args.items}", "--set", f"eval-users={args.eval_users}",
        "--set", f"epsilon={args.epsilon}", "--out", str(args.out),
    ]
    app(command, standalone_mode=False)
    simulate_seconds = time.perf_counter() - started
    audit = timed("fedrec audit (verify ledger, recompute epsilon)", audit_run)(args.out)
    total = time.perf_counter() - started
    results = json.loads((args.out / "results.json").read_text())
    accounted = sum(s["seconds"] for s in STAGES.values())
    peak = max(PEAK["gib"], _peak_gib())
    load = os.getloadavg()
    print(f"\nfedrec {' '.join(command)}")
    print(
        f"{args.users} users, {args.items} items, epsilon {results['epsilon']:.3f}, K {results['top_items']}, "
        f"audit {'verified' if audit.code == OK else audit.problems}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print("\n| stage | seconds | share | peak RSS during it (GiB) |\n|---|---|---|---|")
    for stage, entry in STAGES.items():
        print(f"| {stage} | {entry['seconds']:.1f} | {entry['seconds'] / total:.0%} | {entry['peak_gib']:.2f} |")
    print(f"| everything else (start-up, config, ledger, tables, files) | {total - accounted:.1f} | {(total - accounted) / total:.0%} | |")
    print(f"| **whole run** (simulate {simulate_seconds:.1f} s + audit) | **{total:.1f}** | 100% | **{peak:.2f}** |")
    metrics = {
        name: {m: results.get("references", {}).get(name, {}).get("test", {}).get(m) for m in ("ndcg@10", "full_ndcg@10")}
        for name in ("popularity", "ease")
    }
    print(f"\nDP-EASE test NDCG@10 {results['ndcg@10']:.4f} sampled / {results['full_ndcg@10']:.4f} full; references {metrics}")
    (args.out / "profile.json").write_text(
        json.dumps({"stages": STAGES, "total_seconds": total, "peak_gib": peak, "load": load, "command": command}, indent=1)
    )


if __name__ == "__main__":
    main()
