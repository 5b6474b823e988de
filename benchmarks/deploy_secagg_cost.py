"""Cost and quality of SecAgg+ on a localhost deployment: the same fleet with and without it.

Runs ``server.demo`` twice (TLS + device authentication, N SuperNode processes, same
device seeds, same DP noise seed), once with plain aggregation and once with SecAgg+,
and prints the training seconds per round, upload bytes per device per round (vs the
float32 dense update), the peak memory of one device's processes, the audit's exit
code, and the NDCG@10 of each fleet's final model.

Quality: on real devices with DP on, metrics leave a device only through the DP
evaluation release, whose noise swamps a 10-device mean. This script built every
device's folder itself, so after a fleet finishes it evaluates offline, as the
benchmark's own measurement (not a release): the released ``model.npz`` with each
device's private vectors from its state file, on the device's test item, with the
device's own evaluation (sampled 99 negatives and full ranking). Popularity is scored
on the same devices and items for scale. The fleets run with a small fixed noise
multiplier (a large epsilon) so that a few rounds of 10 devices visibly learn: a sum
of updates re-clipped to C would leave SecAgg+ near the initial model, while a correct
SecAgg+ fleet must match the plain one up to SecAgg+'s quantization.

    FEDREC_DATA_DIR=../shared/data python benchmarks/deploy_secagg_cost.py --devices 10 --rounds 5

Or compare two existing demo folders (each with demo.json, run/ and devices/):

    FEDREC_DATA_DIR=../shared/data python benchmarks/deploy_secagg_cost.py --compare runs/bench-secagg/plain runs/bench-secagg/secagg
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, parse_overrides, parse_run_config
from fedrec.data.loaders import load_csv
from fedrec.data.sources import load_dataset
from fedrec.data.spec import DataSpec, IdType
from fedrec.deploy.catalog import load_catalog
from fedrec.deploy.device import LocalDevice
from fedrec.deploy.fleet import DATA_FILE
from fedrec.evaluation.metrics import mean_metrics
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.experiments.results import MODEL, RESULTS, read_arrays
from fedrec.models import Arrays, init_shared, shared_spec

# DP-FedAvg with a small fixed z: noise std z C / N per coordinate of the mean stays well
# below the mean clipped update, so the model learns in a few rounds of 10 devices (the
# epsilon spent is very large; this setting checks aggregation, it is no privacy claim).
FLEET_SETTINGS: dict[str, Any] = {"noise-multiplier": 0.01, "epsilon": 1e5}
QUALITY = ("ndcg@10", "full_ndcg@10", "hr@10", "full_hr@10")
HELD_OUT = ("test", "val")  # both are held out from training; 10 devices give 10 items each


def _devices(folder: Path) -> Iterator[Path]:
    yield from sorted(p / DATA_FILE for p in (folder / "devices").iterdir() if (p / DATA_FILE).is_file())


def offline_quality(folder: Path, config: RunConfig, released: Arrays) -> dict[str, Any]:
    """Each device's test metrics under the fleet's released model, and popularity's.

    The benchmark's own evaluation: it reads every device's private state, which no
    deployment does. Popularity is counted (a) over the fleet devices' training items
    and (b) over every positive interaction of the data set's other users.
    """
    locals_ = [LocalDevice.open(path, config) for path in _devices(folder)]
    model = {which: [local.device.evaluate(shared=released, private=local.state.private, config=config, which=which)
                     for local in locals_] for which in HELD_OUT}
    data = [local.device.data for local in locals_]
    n_items = locals_[0].device.model.n_items
    fleet_counts = np.bincount(np.concatenate([d.train_items for d in data]), minlength=n_items).astype(np.float64)
    catalog = load_catalog(locals_[0].files.catalog)
    population = load_dataset(config.data).positives(config.data.rating_threshold)
    fleet_users = {str(load_csv(local.files.data, DataSpec(id_type=IdType.STRING)).user_ids[0]) for local in locals_}
    others = ~np.isin(np.asarray(population.user_ids).astype(str)[population.users], list(fleet_users))
    other_items = catalog.index_of(np.asarray(population.item_ids)[population.items[others]], where=folder)
    population_counts = np.bincount(other_items, minlength=n_items).astype(np.float64)

    def popularity(counts: np.ndarray) -> dict[str, dict[str, float]]:
        scores = np.broadcast_to(counts, (len(data), n_items))
        return {which: mean_metrics(metrics_from_scores(scores, data, which)) for which in HELD_OUT}

    return {
        "model": {which: {name: float(np.mean([m[name] for m in model[which]])) for name in QUALITY} for which in HELD_OUT},
        "popularity (fleet train items)": popularity(fleet_counts),
        "popularity (other users)": popularity(population_counts),
        "devices hold model.npz": all(
            local.state.shared is not None and all(np.array_equal(local.state.shared[k], v) for k, v in released.items())
            for local in locals_
        ),
        "devices evaluated": len(locals_),
    }


def _row(folder: Path) -> dict[str, Any]:
    demo = json.loads((folder / "demo.json").read_text())
    results = json.loads((folder / "run" / RESULTS).read_text())
    config = parse_run_config(results["config"])
    n_items = load_catalog(folder / "devices" / "device-000" / "catalog.json").n_items
    spec = shared_spec(config.model.build(n_items))
    dense = sum(4 * int(np.prod(s)) for s in spec.values())
    quality = offline_quality(folder, config, read_arrays(folder / "run" / MODEL))
    row = {
        "secure_aggregation": demo["secure_aggregation"],
        "rounds": results["rounds"],
        "noise multiplier z": results["noise_multiplier"],
        "epsilon spent": results["epsilon"],
        "train s/round": float(np.mean(demo["train_seconds_per_round"])),
        "upload B/device/round": demo["upload_bytes_per_device"],
        "upload / float32 dense": demo["upload_bytes_per_device"] / dense,
        "peak RSS clientapp MiB": demo["peak_rss_clientapp_bytes"] / 2**20,
        "peak RSS supernode MiB": demo["peak_rss_supernode_bytes"] / 2**20,
        "wall s (submit to results)": demo["seconds_run"],
        "audit exit code": demo["audit_exit_code"],
        "released (DP) ndcg@10, clamped to [0, 1]": demo["ndcg@10"],
        "released (DP) noise sigma per metric": demo.get("metric_noise_std", float("nan")),  # absent: an older demo
        "offline: devices evaluated": quality["devices evaluated"],
        "offline: devices hold model.npz": quality["devices hold model.npz"],
    }
    for which in HELD_OUT:
        for source in ("model", "popularity (fleet train items)", "popularity (other users)"):
            for name in QUALITY:
                row[f"offline {which}: {source} {name}"] = quality[source][which][name]
    return row


def _distance(a: Arrays, b: Arrays) -> float:
    """L2 distance between two sets of shared parameters, over all tensors."""
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-secagg"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds each fleet may take from submission to results")
    parser.add_argument("--set", action="append", default=[], help="run setting key=value over FLEET_SETTINGS (repeatable)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("PLAIN", "SECAGG"))
    args = parser.parse_args()
    if args.compare:
        folders = list(args.compare)
    else:
        from server.demo import run_demo

        overrides = {**FLEET_SETTINGS, **parse_overrides(args.set)}
        folders = [args.out / "plain", args.out / "secagg"]
        for folder, secure in zip(folders, (False, True)):
            run_demo(folder, devices=args.devices, rounds=args.rounds, data_dir="", overrides=overrides, secure_aggregation=secure,
                     timeout=args.timeout)
    rows = [_row(f) for f in folders]
    # How far each fleet's model moved from the initial one the server started from
    # (init_shared with the run's seed), and how far apart the two fleets ended: exact,
    # where 10 devices' ranking metrics are coarse. A re-clipped SecAgg+ sum would
    # move the SecAgg+ model much less than the plain one.
    released = [read_arrays(f / "run" / MODEL) for f in folders]
    configs = [parse_run_config(json.loads((f / "run" / RESULTS).read_text())["config"]) for f in folders]
    for row, final, config, folder in zip(rows, released, configs, folders):
        n_items = load_catalog(folder / "devices" / "device-000" / "catalog.json").n_items
        row["||model - initial model||"] = _distance(final, init_shared(config.model.build(n_items), seed=config.seed))
    width = max(len(key) for key in rows[0]) + 2
    print("offline = the benchmark's own evaluation of each fleet's released model.npz on its devices' test items (not a DP release)")
    for key in rows[0]:
        print(f"{key:>{width}}: " + "  ".join(f"{r[key]:>14.6g}" if isinstance(r[key], float) else f"{r[key]!s:>14}" for r in rows))
    metrics = [np.array([r[f"offline {which}: model {name}"] for which in HELD_OUT for name in QUALITY]) for r in rows]
    step = _distance(released[0], released[1]) / rows[0]["||model - initial model||"]
    print(f"{'||plain - secagg|| / plain step':>{width}}: {step:>14.6g}")
    print(f"{'max |plain - secagg| offline metric':>{width}}: {float(np.max(np.abs(metrics[0] - metrics[1]))):>14.6g}")


if __name__ == "__main__":
    main()
