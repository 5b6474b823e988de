"""DP-EASE settings on VALIDATION users of one data set, against popularity.

Every variant is a set of overrides of the run settings; its release is simulated
(:func:`fedrec.dpease.central.simulate_release`, the run's own noise and ``--draws - 1``
other draws) and scored on each user's validation item with the test items hidden
(:func:`fedrec.dpease.select.without_test_items`). Printed per variant: K, sampled and
full-ranking NDCG@10 (mean over the draws), their ratio to popularity's and the per-user
paired difference to popularity with its standard error (of the draws' mean scores).

A variant is a JSON object of overrides; a data set without a time column is simulated
as ``fedrec simulate`` runs it (decays 1, :func:`fedrec.dpease.run.time_order_settings`).

    python simulations/dpease_variants.py --set dataset=FILE '{}' '{"ease-signal-ratio": 0}'
    FEDREC_DATA_DIR=/path/to/data python simulations/dpease_variants.py \\
        --set dataset=/path/to/lastfm-hetrec/user_artists.dat --set item-col=artistID --draws 2 '{}'
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from fedrec.config import parse_run_config
from fedrec.dpease.central import device_scorer, simulate_release
from fedrec.dpease.run import time_order_settings
from fedrec.dpease.select import without_test_items
from fedrec.evaluation.scoring import per_user_scores
from fedrec.experiments.baselines import Popularity
from fedrec.families.ease import time_ordered
from fedrec.federation.device import simulated_population

METRICS = ("ndcg@10", "full_ndcg@10")


def variant_row(base: dict[str, Any], overrides: dict[str, Any], *, draws: int) -> dict[str, Any]:
    """K per draw and, per metric, (mean, popularity's mean, paired difference, its standard error)."""
    config = parse_run_config({**base, **overrides})
    config = time_order_settings(config, time_ordered=time_ordered(config))
    split = without_test_items(simulated_population(config).split)
    popularity = per_user_scores(Popularity(split).score, split, which="val")
    per_draw, ks = [], []
    for draw in range(draws if config.privacy.enabled else 1):
        release = simulate_release(config, split, draw=draw)
        ks.append(int(release.top_items.shape[0]))
        per_draw.append(per_user_scores(device_scorer(release, split), split, which="val"))
    row: dict[str, Any] = {"overrides": overrides, "k": ks}
    for name in METRICS:
        scores = np.mean([m[name] for m in per_draw], axis=0)
        difference = scores - popularity[name]
        row[name] = (float(scores.mean()), float(popularity[name].mean()), float(difference.mean()),
                     float(difference.std(ddof=1) / math.sqrt(difference.shape[0])))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], help="a run setting for every variant: key=value")
    parser.add_argument("--draws", type=int, default=2, help="noise draws per variant")
    parser.add_argument("variants", nargs="+", help="JSON objects of overrides, one per variant")
    args = parser.parse_args()
    base = {"model": "dp-ease", **dict(item.split("=", 1) for item in args.set)}
    for text in args.variants:
        row = variant_row(base, json.loads(text), draws=args.draws)
        parts = [f"{text:<40} K {row['k']}"]
        for name in METRICS:
            mean, pop, diff, se = row[name]
            parts.append(f"{name} {mean:.4f} ({mean / pop:.2f}x popularity {pop:.4f}; {diff:+.4f} +- {se:.4f})")
        print("  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
