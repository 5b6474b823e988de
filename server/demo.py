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
import shutil
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
from fedrec.errors import FedrecError
from fedrec.experiments.results import RESULTS, write_json
from fedrec.privacy.device_odometers import NO_CONTRIBUTOR
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
    catalog = server_catalog(out, fleet)
    n_items = load_catalog(catalog).n_items
    run_config = app_config(config, out_dir=out / "run", min_devices=devices, n_items=n_items,
                            secure_aggregation=secure_aggregation, catalog=catalog)
    app = write_app(out / "app", run_config)
    return {"fleet": fleet, "tls": tls, "keys": keys, "app": app, "catalog": catalog}


def server_catalog(out: Path, fleet: list[Any]) -> Path:
    """The server's copy of the public catalogue (the same catalog.json every device has):
    all the server reads of the data set."""
    catalog = out / "server" / CATALOG
    catalog.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fleet[0].folder / CATALOG, catalog)
    return catalog


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


def run_jobs(out: Path, *, devices: int, jobs: int, job_epsilon: float, device_epsilon: float, data_dir: str,
             seed: int = 0, overrides: dict[str, Any] | None = None, timeout: float = 1200.0) -> dict[str, Any]:
    """Several successive jobs of the default model (DP-EASE; ``overrides`` may name another)
    against the same fleet, each device with its own budget (``device-epsilon``) kept in its
    odometer beside its key and data; then the population audit of every job's ledger. A job that every device refuses writes
    ``no_contributor.json`` instead of results.json."""
    out = out.resolve()
    values: dict[str, Any] = {"seed": seed, "data-dir": data_dir, "epsilon": job_epsilon,
                              "ledger-key": str(out / "server-keys" / "ledger.pem"), **(overrides or {})}
    config = parse_run_config(values)
    parts = prepare_fleet(out, devices=devices, config=config, seed=seed)
    n_items = load_catalog(parts["catalog"]).n_items
    job_dirs = [out / f"job-{k}" for k in range(1, jobs + 1)]
    apps = [write_app(out / f"app-{k}", app_config(config, out_dir=job_dir, min_devices=devices, n_items=n_items,
                                                   catalog=parts["catalog"]))
            for k, job_dir in enumerate(job_dirs, start=1)]
    summary: dict[str, Any] = {"devices": devices, "device_epsilon": device_epsilon, "job_epsilon": job_epsilon, "jobs": []}
    with LocalFleet(out / "fleet", tls=parts["tls"], auth=True) as fleet:
        fleet.start_superlink()
        for key in parts["keys"]:
            fleet.register(key.public)
        for device, key in zip(parts["fleet"], parts["keys"]):
            budget: dict[str, float | str] = {"device-epsilon": float(device_epsilon), "device-delta": 1e-5,
                                              "device-key": str(key.private)}
            fleet.start_supernode(device.name, data_path=device.data_path, private_key=key.private, node_config=budget)
        fleet.wait_online(devices)
        for job_dir, app in zip(job_dirs, apps):
            started = time.perf_counter()
            fleet.submit(app)
            outcome = _wait_for_outcome(fleet, job_dir, timeout=timeout)
            row: dict[str, Any] = {"out": str(job_dir), "seconds": time.perf_counter() - started}
            if outcome.name == RESULTS:
                results = json.loads(outcome.read_text())
                row |= {"status": "ran", "epsilon": results["epsilon"], "devices_refused": results.get("devices_refused")}
            else:
                row |= {"status": "no contributor", **json.loads(outcome.read_text())}
            summary["jobs"].append(row)
    audit = subprocess.run([sys.executable, "-m", "fedrec", "audit", *map(str, job_dirs), "--json"],
                           check=False, capture_output=True, text=True)
    population = json.loads(audit.stdout) if audit.stdout.strip().startswith("{") else {}
    summary["population_audit_exit_code"] = audit.returncode
    summary["population_epsilon"] = population.get("epsilon")
    write_json(out / "jobs.json", summary)
    return summary


def _wait_for_outcome(fleet: LocalFleet, job_dir: Path, *, timeout: float) -> Path:
    """results.json, or no_contributor.json when every device refused the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in (RESULTS, NO_CONTRIBUTOR):
            if (job_dir / name).is_file():
                return job_dir / name
        if fleet.procs and not fleet.procs[0].alive():
            raise FedrecError(f"the SuperLink exited:\n{fleet.procs[0].tail()}")
        time.sleep(1.0)
    raise FedrecError(f"{job_dir}: no outcome within {timeout:.0f} s; SuperLink log:\n{fleet.procs[0].tail()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/deploy-demo"))
    parser.add_argument("--data", default="", help="data directory (default: $FEDREC_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--secure-aggregation", action="store_true", help="aggregate with SecAgg+")
    parser.add_argument("--set", action="append", default=[], help="run setting key=value (repeatable)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="run this many successive jobs (DP-EASE, or --set model=...) against the same fleet instead "
                             "(with --device-epsilon)")
    parser.add_argument("--device-epsilon", type=float, default=10.0, help="each device's own budget across the jobs")
    parser.add_argument("--job-epsilon", type=float, default=5.5, help="each job's epsilon (with --jobs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = dict(pair.split("=", 1) for pair in args.set)
    if args.jobs:
        jobs = run_jobs(args.out, devices=args.devices, jobs=args.jobs, job_epsilon=args.job_epsilon,
                        device_epsilon=args.device_epsilon, data_dir=args.data, seed=args.seed, overrides=overrides)
        print(json.dumps(jobs, indent=2))
        return 0 if jobs["population_audit_exit_code"] == 0 else 1
    summary = run_demo(
        args.out, devices=args.devices, rounds=args.rounds, data_dir=args.data, seed=args.seed, overrides=overrides,
        secure_aggregation=args.secure_aggregation,
    )
    print(json.dumps(summary, indent=2))
    return 0 if summary["audit_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
