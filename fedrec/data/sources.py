"""Turn the data settings of a run into its split: the one entry point used by the
central baselines, the Flower client and the server alike (so all see the same split).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.data.loaders import ML100K, load_csv, load_movielens_100k
from fedrec.data.split import LeaveOneOutSplit, leave_one_out
from fedrec.data.synthetic import SYNTHETIC, SyntheticSpec, generate
from fedrec.errors import DataError
from fedrec.settings import resolve_data_dir

if TYPE_CHECKING:
    from fedrec.config import DataSettings


@dataclass(frozen=True)
class PreparedData:
    interactions: Interactions  # positives only, users restricted to the population
    split: LeaveOneOutSplit


def load_interactions(dataset: str, data_dir: str = "") -> Interactions:
    """``dataset`` is ``ml-100k`` or a path to an interactions CSV/TSV file."""
    if dataset == ML100K:
        return load_movielens_100k(resolve_data_dir(data_dir or None))
    path = Path(dataset)
    if not path.is_absolute() and data_dir:
        path = Path(data_dir) / path
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: not '{ML100K}' and no such interactions file ({path})")
    return load_csv(path)


@functools.lru_cache(maxsize=4)
def prepare(settings: DataSettings, *, seed: int) -> PreparedData:
    """Load, convert to implicit feedback, pick the population, split. Cached per process.

    The population (``max-users`` > 0) is a seeded random subset of users; the split
    uses its own seeded generator, so the same settings give the same split anywhere.
    """
    if settings.dataset == SYNTHETIC:
        spec = SyntheticSpec(
            n_users=settings.synthetic_users, n_items=settings.synthetic_items,
            mean_interactions=settings.synthetic_interactions,
        )
        data = generate(spec, rng=np.random.default_rng([seed, 4]))
    else:
        data = load_interactions(settings.dataset, settings.data_dir)
    data = data.positives(settings.rating_threshold)
    if settings.max_users and settings.max_users < data.n_users:
        chosen = np.sort(np.random.default_rng([seed, 1]).choice(data.n_users, size=settings.max_users, replace=False))
        data = data.subset_users(chosen)
    split = leave_one_out(data, rng=np.random.default_rng([seed, 2]), num_eval_negatives=settings.num_eval_negatives)
    return PreparedData(interactions=data, split=split)
