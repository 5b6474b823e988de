"""A whole deployment on localhost: TLS, device authentication, N SuperNode processes.

    python -m server.demo --devices 10 --rounds 5 --out runs/deploy-demo

Steps (each is what the runbook in docs/deployment.md does by hand): split the data set into one
folder per device; make a CA, the SuperLink's certificate and one key pair per
device; start the SuperLink with TLS and ``--enable-supernode-auth``; register the
device keys; start the SuperNodes, each with its own data file and key; submit the
run with ``flwr run``; wait for results.json; audit the privacy ledger. All processes
are stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, parse_run_config
from fedrec.data.sources import load_dataset
from fedrec.deploy.bundle import app_config, write_app
from fedrec.deploy.catalog import load_catalog
from fedrec.deploy.device import DeviceFiles, DeviceState, save_state
from fedrec.deploy.fleet import CATALOG, split_fleet
from fedrec.deploy.pki import make_device_keys, make_tls
from fedrec.experiments.results import RESULTS, write_json
from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.readable import released_summary
from server.fleet import LocalFleet

logger = logging.getLogger(__name__)


def demo_config(*, rounds: int, devices: int, data_dir: str, out: Path, seed: int, overrides: dict[str, Any]) -> RunConfig:
    values: dict[str, Any] = {
        "model": "neumf", "seed": seed, "data-dir": data_dir, "num-rounds": rounds, "clients-per-round": devices, "eval-every": 0,
        "epsilon": 50.0, "accountant": "rdp", "ledger-key": str(out / "server-keys" / "ledger.pem"),
    }
    values.update(overrides)
    return parse_run_config(values)


def prepare_fleet(out: Path, *, devices: int, config: RunConfig, seed: int, secure_aggregation: bool = False) -> dict[str, Any]:
    """Data folders, TLS files, device keys and the app folder, all under ``out``."""
    data = load_dataset(config.data)
    fleet = split_fleet(data, out / "devices", devices=devices, rating_threshold=config.data.rating_threshold,
                        rng=np.random.default_rng([seed, 5]))
    # Provisioning fixes each device's seed, so that two demo runs differ only in what
    # they are meant to compare (e.g. with and without SecAgg+'s quantization).
    for k, device in enumerate(fleet):
        save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=1_000 * seed + k))
    tls = make_tls(out / "tls")
    keys = make_device_keys(out / "device-keys", [d.name for d in fleet])
    n_items = load_catalog(fleet[0].folder / CATALOG).n_items
    run_config = app_config(config, out_dir=out / "run", min_devices=devices, n_items=n_items, secure_aggregation=secure_aggregation)
    app = write_app(out / "app", run_config)
    return {"fleet": fleet, "tls": tls, "keys": keys, "app": app}


def run_demo(out: Path, *, devices: int, rounds: int, data_dir: str, seed: int = 0,
             overrides: dict[str, Any] | None = None, timeout: float = 1800.0, secure_aggregation: bool = False) -> dict[str, Any]:
    out = out.resolve()
    config = demo_config(rounds=rounds, devices=devices, data_dir=data_dir, out=out, seed=seed, overrides=overrides or {})
    parts = prepare_fleet(out, devices=devices, config=config, seed=seed, secure_aggregation=secure_aggregation)
    started = time.perf_counter()
    with LocalFleet(out / "fleet", tls=parts["tls"], auth=True) as fleet:
        fleet.start_superlink()
        for key in parts["keys"]:
            fleet.register(key.public)
        for device, key in zip(parts["fleet"], parts["keys"]):
            fleet.start_supernode(device.name, data_path=device.data_path, private_key=key.private)
        fleet.wait_online(devices)
        online = time.perf_counter()
        run_id = fleet.submit(parts["app"])
        fleet.wait_for(out / "run" / RESULTS, timeout=timeout)
        finished = time.perf_counter()
        supernode_rss = max(fleet.peak_rss(d.name) for d in parts["fleet"])
        superlink_rss = fleet.peak_rss("superlink")
    audit = subprocess.run(
        [sys.executable, "-m", "fedrec", "audit", str(out / "run"), "--json"], check=False, capture_output=True, text=True
    )
    results = json.loads((out / "run" / RESULTS).read_text())
    clientapp_rss = [json.loads((d.folder / "telemetry.json").read_text())["peak_rss_bytes"]
                     for d in parts["fleet"] if (d.folder / "telemetry.json").is_file()]
    summary = {
        "devices": devices, "rounds": results["rounds"], "run_id": run_id, "secure_aggregation": secure_aggregation,
        "seconds_start_to_online": online - started, "seconds_run": finished - online,
        "seconds_per_round": results["seconds_per_round"],
        "hr@10": results["hr@10"], "ndcg@10": results["ndcg@10"], **released_summary(results), "epsilon": results["epsilon"],
        "rejected_updates": results["rejected_updates"],
        "upload_bytes_per_device": results["upload"]["mean_bytes_per_device"],
        "train_seconds_per_round": [u.get("train_seconds") for u in results["upload"]["rounds"]],
        "peak_rss_supernode_bytes": supernode_rss, "peak_rss_clientapp_bytes": max(clientapp_rss, default=0),
        "peak_rss_superlink_bytes": superlink_rss,
        "audit_exit_code": audit.returncode, "ledger": str(out / "run" / LEDGER),
    }
    write_json(out / "demo.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/deploy-demo"))
    parser.add_argument("--data", default="", help="data directory (default: $FEDREC_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--secure-aggregation", action="store_true", help="aggregate with SecAgg+")
    parser.add_argument("--set", action="append", default=[], help="run setting key=value (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = dict(pair.split("=", 1) for pair in args.set)
    summary = run_demo(
        args.out, devices=args.devices, rounds=args.rounds, data_dir=args.data, seed=args.seed, overrides=overrides,
        secure_aggregation=args.secure_aggregation,
    )
    print(json.dumps(summary, indent=2))
    return 0 if summary["audit_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
