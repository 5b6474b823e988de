"""Upload quantization: bytes per client and NDCG@10, dense float32 vs quantized.

Runs the in-process engine on the same config and seeds with each ``upload-bits``
value and prints, per setting, the bytes one client uploads per round and the test
NDCG@10 (mean over seeds), and the paired relative loss against ``upload-bits = 0``
(same seed: same sampling, training draws and DP noise; only the rounding differs).
Runs already finished under ``--out`` are reused, so the benchmark can be resumed.

    FEDREC_DATA_DIR=/work/shared/data python3 benchmarks/upload_quantization.py \\
        --config simulations/ml100k-dp.toml --seeds 0 1 2 --bits 0 8 4 --out runs/upload-quant
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fedrec.config import load_config_file, parse_overrides, parse_run_config
from fedrec.engine.vectorised import run


def _result(config_file: str, overrides: dict[str, str], seed: int, bits: int, out: Path) -> dict[str, float]:
    run_dir = out / f"bits{bits}-seed{seed}"
    path = run_dir / "results.json"
    if not path.is_file():
        values = {**load_config_file(config_file), **overrides, "seed": seed, "upload-bits": bits}
        run(parse_run_config(values), run_dir)
        print(f"  ran upload-bits {bits} seed {seed}: {run_dir}", flush=True)
    return dict(json.loads(path.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="simulations/ml100k-dp.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bits", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value, as for fedrec simulate")
    parser.add_argument("--out", type=Path, default=Path("runs/upload-quant"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one thread
    overrides = parse_overrides(args.overrides)
    bits = [0, *[b for b in args.bits if b != 0]]
    results: dict[int, list[dict[str, float]]] = {b: [] for b in bits}
    for s in args.seeds:  # seed by seed: a stopped benchmark still has complete pairs
        for b in bits:
            results[b].append(_result(args.config, overrides, s, b, args.out))
    base = np.array([r["ndcg@10"] for r in results[0]])
    dense = results[0][0]["upload_bytes_dense_float32"]
    print(f"config {args.config} {' '.join(args.overrides)}; seeds {args.seeds}")
    print(f"dense float32 update: {dense:,.0f} bytes per client per round")
    print("| upload-bits | bytes per client per round | vs dense | test NDCG@10 (mean ± sd over seeds) | "
          "paired relative change vs float32 (mean, per seed) | epsilon |")
    print("|---|---|---|---|---|---|")
    for b in bits:
        ndcg = np.array([r["ndcg@10"] for r in results[b]])
        size = float(np.mean([r["upload_bytes_per_client"] for r in results[b]]))
        change = (ndcg - base) / base
        per_seed = ", ".join(f"{c:+.2%}" for c in change)
        eps = results[b][0].get("epsilon", float("inf"))
        print(
            f"| {b or 'off (float32)'} | {size:,.0f} | {size / dense:.4f}x | {ndcg.mean():.4f} ± {ndcg.std(ddof=1) if len(ndcg) > 1 else 0:.4f} | "
            f"{change.mean():+.2%} ({per_seed}) | {eps:.3g} |"
        )


if __name__ == "__main__":
    main()
