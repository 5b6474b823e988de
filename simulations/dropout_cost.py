"""Utility cost of client dropouts under user-level DP (issue 7, item 2).

Runs the in-process engine on MovieLens 100K with the settings of ``ml100k.toml``
(shortened to ``--rounds`` rounds) twice with the same seed: once with every sampled
client replying, once with ``--dropout`` of them failing at random each round
(:class:`fedrec.federation.faults.DropoutTransport`). DP noise is calibrated to the expected
number of clients in both, so dropouts cost signal, never privacy; each run's ledger
is verified with :func:`fedrec.privacy.audit.audit_run`. Prints NDCG@10 of both and
the loss. The data directory comes from ``$FEDREC_DATA_DIR`` or ``--data``.

    FEDREC_DATA_DIR=/work/shared/data python3 simulations/dropout_cost.py --out /tmp/dropout
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fedrec.config import load_config_file, parse_run_config
from fedrec.engine.vectorised import VectorisedTransport
from fedrec.experiments.run import run_and_report
from fedrec.federation.faults import DropoutTransport
from fedrec.federation.rounds import Transport
from fedrec.privacy.audit import audit_run

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the two runs' artefacts")
    parser.add_argument("--data", default="", help="data directory (default: $FEDREC_DATA_DIR)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--dropout", type=float, default=0.3, help="fraction of sampled clients failing each round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("fedrec").setLevel(logging.ERROR)  # each failed client logs a warning: too many to print

    flat = load_config_file(HERE / "ml100k.toml")
    flat.update({
        "num-rounds": args.rounds, "clients-per-round": args.clients_per_round, "epsilon": args.epsilon,
        "seed": args.seed, "eval-every": 0, "ledger-key": str(args.out / "ledger_key.pem"),
    })
    if args.data:
        flat["data-dir"] = args.data
    config = parse_run_config(flat)
    outcome: dict[str, dict[str, float]] = {}
    for label, rate in (("no-dropout", 0.0), (f"dropout-{args.dropout:g}", args.dropout)):
        started = time.perf_counter()
        transport: Transport = VectorisedTransport(config)
        if rate > 0:
            transport = DropoutTransport(transport, rate=rate, rng=np.random.default_rng([args.seed, 11]))
        results = run_and_report(config, transport, out_dir=args.out / label, engine="inprocess")
        audit = audit_run(args.out / label)
        log = results["round_log"]
        outcome[label] = {
            "ndcg@10": results["ndcg@10"], "hr@10": results["hr@10"], "epsilon": results["epsilon"],
            "rounds": results["rounds"], "audit_code": audit.code,
            "mean_sampled": float(np.mean([r["sampled"] for r in log])),
            "mean_aggregated": float(np.mean([r["aggregated"] for r in log])),
            "seconds": time.perf_counter() - started,
        }
        print(label, json.dumps(outcome[label]), flush=True)
    base, dropped = outcome["no-dropout"], outcome[f"dropout-{args.dropout:g}"]
    loss = base["ndcg@10"] - dropped["ndcg@10"]
    print(
        f"NDCG@10 without dropout {base['ndcg@10']:.4f}, with {args.dropout:.0%} dropout {dropped['ndcg@10']:.4f}: "
        f"loss {loss:.4f} ({loss / base['ndcg@10']:.1%}); epsilon {base['epsilon']:.3f} vs {dropped['epsilon']:.3f}; "
        f"audit codes {base['audit_code']:.0f}, {dropped['audit_code']:.0f}"
    )
    (args.out / "dropout_cost.json").write_text(json.dumps(outcome, indent=2) + "\n")


if __name__ == "__main__":
    main()
