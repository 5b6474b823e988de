"""Settings are chosen on validation users: poisoning the test items changes nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.dpease.select import choose, validation_metrics
from fedrec.federation.device import simulated_population

BASE = {
    "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 200, "synthetic-items": 150,
    "synthetic-interactions": 15, "num-eval-negatives": 20, "seed": 2, "epsilon": 4.0,
}
CANDIDATES = [
    {"ease-item-threshold": 1.0, "ease-lambda-noise": 2.0},
    {"ease-item-threshold": 4.0, "ease-lambda-noise": 8.0},
    {"ease-item-threshold": 100.0},  # nothing clears the bar: the popularity prior alone
]


def test_the_choice_never_reads_test_items() -> None:
    split = simulated_population(parse_run_config(BASE)).split
    honest = choose(BASE, split, CANDIDATES)
    rng = np.random.default_rng(0)
    poisoned = replace(
        split,
        test_item=rng.integers(0, split.n_items, size=split.n_users),
        test_negatives=rng.integers(0, split.n_items, size=split.test_negatives.shape),
    )
    again = choose(BASE, poisoned, CANDIDATES)
    assert again.overrides == honest.overrides
    assert again.tried == honest.tried
    # while the validation items do decide it
    assert len({row["criterion"] for row in honest.tried}) == len(CANDIDATES)


def test_several_noise_draws_average_other_releases_of_the_same_run() -> None:
    split = simulated_population(parse_run_config(BASE)).split
    config = parse_run_config({**BASE, "ease-item-threshold": 1.0})
    one = validation_metrics(config, split)
    two = validation_metrics(config, split, draws=2)
    other = validation_metrics(replace(config, seed=config.seed + 1), split)  # the second draw's noise seed
    for name in one:
        assert two[name] == pytest.approx((one[name] + other[name]) / 2)
    assert one != other  # the draws differ, so the average is not the run's own draw
    # without noise every draw is the same release
    plain = parse_run_config({**BASE, "dp": "off"})
    assert validation_metrics(plain, split, draws=3) == validation_metrics(plain, split)
    with pytest.raises(ValueError, match="draws"):
        validation_metrics(config, split, draws=0)
