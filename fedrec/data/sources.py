"""Turn the data settings of a run into its split: the one entry point used by the
central baselines, the Flower client and the server alike (so all see the same split).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedrec.data.ids import write_id_maps
from fedrec.data.interactions import Interactions
from fedrec.data.loaders import ML100K, load_csv, load_movielens_100k, sibling_item_file
from fedrec.data.location import resolve_data_dir
from fedrec.data.spec import NONE, DataPreset, DataSpec, resolve_layout
from fedrec.data.split import LeaveOneOutSplit, SplitMode, leave_one_out, resolve_split, split_note
from fedrec.data.synthetic import SYNTHETIC, SyntheticSpec, generate
from fedrec.errors import DataError

if TYPE_CHECKING:
    from fedrec.config import DataSettings


@dataclass(frozen=True)
class PreparedData:
    interactions: Interactions  # positives only, users restricted to the population
    split: LeaveOneOutSplit
    split_mode: SplitMode  # the split the run used (never auto)


def is_ml100k(dataset: str, spec: DataSpec, data_dir: str = "") -> bool:
    path = _within(dataset, data_dir)
    return dataset == ML100K or spec.preset is DataPreset.ML_100K or path.name == "u.data" or (path / "u.data").is_file()


def load_interactions(dataset: str, data_dir: str = "", spec: DataSpec | None = None) -> Interactions:
    """``dataset`` is ``ml-100k`` or a path (relative to ``data_dir`` if given) to an interactions file.

    ``spec`` describes the file (columns, delimiter, item file, ...); the note on which
    columns were taken is in ``result.extra["note"]``.
    """
    spec = spec or DataSpec()
    if is_ml100k(dataset, spec, data_dir):
        if dataset == ML100K:
            root = resolve_data_dir(data_dir or None)
        else:
            root = _within(dataset, data_dir)
            root = root.parent if root.is_file() else root
        data = load_movielens_100k(root)
        return replace(data, extra={**data.extra, "note": f"{ML100K}: u.data, u.item, u.user from {root} (preset ml-100k)"})
    path = _within(dataset, data_dir)
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: not '{ML100K}' and no such interactions file ({path}); check dataset and data-dir")
    if spec.item_file and spec.item_file.lower() != NONE and data_dir:
        inside = _within(spec.item_file, data_dir)
        if inside.is_file():
            spec = replace(spec, item_file=str(inside))
    return load_csv(path, spec)


def _within(name: str, data_dir: str) -> Path:
    path = Path(name).expanduser()
    return Path(data_dir) / path if not path.is_absolute() and data_dir else path


def load_dataset(settings: DataSettings) -> Interactions:
    """The interactions a run's data section describes (before the positive threshold)."""
    return load_interactions(settings.dataset, settings.data_dir, settings.spec())


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
        data = load_dataset(settings)
    data = data.positives(settings.rating_threshold)
    if settings.max_users and settings.max_users < data.n_users:
        chosen = np.sort(np.random.default_rng([seed, 1]).choice(data.n_users, size=settings.max_users, replace=False))
        data = data.subset_users(chosen)
    mode = resolve_split(settings.split, data)
    split = leave_one_out(data, rng=np.random.default_rng([seed, 2]), num_eval_negatives=settings.num_eval_negatives,
                          mode=mode)
    return PreparedData(interactions=data, split=split, split_mode=mode)


def write_run_ids(settings: DataSettings, *, seed: int, out_dir: Path) -> None:
    """Save the run's index -> own-id maps (``user_ids.csv``, ``item_ids.csv`` with titles) in ``out_dir``."""
    data = prepare(settings, seed=seed).interactions
    titles = data.item_meta.titles if data.item_meta is not None else None
    write_id_maps(out_dir, user_ids=data.user_ids, item_ids=data.item_ids, titles=titles)


def describe(settings: DataSettings) -> str:
    """The one-line note on the columns a run will take and how it splits, from the file's first line only."""
    if settings.dataset == SYNTHETIC or is_ml100k(settings.dataset, settings.spec(), settings.data_dir):
        return ""
    path = _within(settings.dataset, settings.data_dir)
    if not path.is_file():
        return ""
    layout = resolve_layout(path, settings.spec())
    note = layout.note
    item_file = settings.item_file
    if not item_file:
        sibling = sibling_item_file(path, layout, settings.spec())
        note += f"; items from {sibling.name} beside it" if sibling else "; no item file (item-file=PATH adds titles)"
    elif item_file.lower() != NONE:
        note += f"; items from {item_file}"
    return note + "; " + split_note(planned_split(settings.split, timed=layout.timestamp is not None))


def planned_split(mode: SplitMode | str, *, timed: bool) -> SplitMode:
    """The split ``mode`` gives on data with or without a time column (``auto`` resolved)."""
    mode = SplitMode(mode)
    if mode is SplitMode.AUTO:
        return SplitMode.TIME if timed else SplitMode.RANDOM
    return mode


def positives_note(data: Interactions, threshold: float, *, rated: bool) -> str:
    """What counts as a positive: every row, or the rows at or above ``threshold``, said with the ratings' range."""
    positives = int(np.count_nonzero(data.ratings >= threshold))
    if not rated:
        return f"positives: every row ({positives}; no rating column)"
    low, high = (float(data.ratings.min()), float(data.ratings.max())) if len(data) else (0.0, 0.0)
    counts = bool(len(data)) and bool(np.all(data.ratings == np.round(data.ratings))) and high > 5
    kind = "counts or weights " if counts else ""
    if positives == len(data):
        return f"positives: every row ({positives}; {kind}ratings {low:g}..{high:g}, all >= rating-threshold {threshold:g})"
    return (f"positives: {positives} of {len(data)} rows with rating >= {threshold:g} "
            f"({kind}ratings {low:g}..{high:g}; rating-threshold sets it)")
