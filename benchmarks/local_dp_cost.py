"""Cost of record-level local DP-SGD (Opacus ghost clipping) vs plain local training.

Times one client-epoch for a sample of MovieLens 100K users, plain and with DP-SGD,
same model, batch size and data, one thread, in one process. Prints ms per
client-epoch and the ratio (target: <= 2x).

    FEDREC_DATA_DIR=../shared/data python benchmarks/local_dp_cost.py [--clients 60]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from fedrec.client import Device
from fedrec.config import parse_run_config
from fedrec.models import init_shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    plain = parse_run_config({"local-epochs": 1, "dp": "off"})
    private = parse_run_config({"local-epochs": 1, "dp": "off", "local-dp": True})
    users = np.linspace(0, 942, args.clients).astype(int)
    devices = [Device.simulated(plain, int(u)) for u in users]
    shared = init_shared(devices[0].model, seed=0)
    timings: dict[str, list[float]] = {"plain": [], "local DP-SGD (ghost)": []}
    for _ in range(args.repeats):
        for name, config in (("plain", plain), ("local DP-SGD (ghost)", private)):
            started = time.perf_counter()
            for device in devices:
                device.train(shared=shared, private=None, config=config, round_=1)
            timings[name].append((time.perf_counter() - started) / len(devices))
    rows = {name: min(values) * 1000 for name, values in timings.items()}
    examples = np.mean([d.data.train_items.shape[0] * 5 for d in devices])
    print(f"{args.clients} MovieLens 100K clients, ~{examples:.0f} examples per client-epoch, batch 64, 1 thread")
    for name, ms in rows.items():
        print(f"  {name:<24} {ms:8.1f} ms per client-epoch")
    print(f"  ratio DP / plain: {rows['local DP-SGD (ghost)'] / rows['plain']:.2f}x")


if __name__ == "__main__":
    main()
