"""Cost of SecAgg+ on a localhost deployment: the same fleet with and without it.

Runs ``server.demo`` twice (TLS + device authentication, N SuperNode processes, same
device seeds), once with plain aggregation and once with SecAgg+, and prints the
training seconds per round, upload bytes per device per round (vs the float32 dense
update), test NDCG@10 and the peak memory of one device's processes.

    FEDREC_DATA_DIR=../shared/data python benchmarks/deploy_secagg_cost.py --devices 10 --rounds 5

Or compare two existing demo folders (each with demo.json and run/results.json):

    python benchmarks/deploy_secagg_cost.py --compare runs/deploy-plain-10 runs/deploy-secagg-10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _row(folder: Path) -> dict[str, Any]:
    demo = json.loads((folder / "demo.json").read_text())
    results = json.loads((folder / "run" / "results.json").read_text())
    from fedrec.config import parse_run_config
    from fedrec.deploy.catalog import load_catalog
    from fedrec.models import shared_spec

    n_items = load_catalog(folder / "devices" / "device-000" / "catalog.json").n_items
    spec = shared_spec(parse_run_config(results["config"]).model.build(n_items))
    dense = sum(4 * int(np.prod(s)) for s in spec.values())
    return {
        "secure_aggregation": demo["secure_aggregation"],
        "train s/round": float(np.mean(demo["train_seconds_per_round"])),
        "upload B/device/round": demo["upload_bytes_per_device"],
        "upload / float32 dense": demo["upload_bytes_per_device"] / dense,
        "ndcg@10": demo["ndcg@10"], "hr@10": demo["hr@10"],
        "peak RSS clientapp MiB": demo["peak_rss_clientapp_bytes"] / 2**20,
        "peak RSS supernode MiB": demo["peak_rss_supernode_bytes"] / 2**20,
        "wall s (submit to results)": demo["seconds_run"],
        "audit exit code": demo["audit_exit_code"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-secagg"))
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("PLAIN", "SECAGG"))
    args = parser.parse_args()
    if args.compare:
        folders = list(args.compare)
    else:
        from server.demo import run_demo

        folders = [args.out / "plain", args.out / "secagg"]
        for folder, secure in zip(folders, (False, True)):
            run_demo(folder, devices=args.devices, rounds=args.rounds, data_dir="", secure_aggregation=secure)
    rows = [_row(f) for f in folders]
    for key in rows[0]:
        print(f"{key:>28}: " + "  ".join(f"{r[key]:>14.6g}" if isinstance(r[key], float) else f"{r[key]!s:>14}" for r in rows))


if __name__ == "__main__":
    main()
