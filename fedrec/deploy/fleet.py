"""Split a data set into one folder per device, for a demo fleet.

Each ``device-NNN/`` holds what a real phone would hold: ``interactions.csv`` (its
user's own rows, original ids) and ``catalog.json`` (the catalogue shipped with the
app). Its private state file appears there once it has trained.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.data.split import MIN_INTERACTIONS
from fedrec.deploy.catalog import CATALOG, catalog_from
from fedrec.errors import DataError
from fedrec.experiments.results import write_atomic

DATA_FILE = "interactions.csv"


@dataclass(frozen=True)
class FleetDevice:
    name: str
    folder: Path

    @property
    def data_path(self) -> Path:
        return self.folder / DATA_FILE


def device_name(k: int) -> str:
    return f"device-{k:03d}"


def _rows_csv(data: Interactions, mask: np.ndarray) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # data without a time column gives device files without one (row order is no time)
    writer.writerow(["user", "item", "rating"] + (["timestamp"] if data.timed else []))
    for u, i, r, t in zip(data.users[mask], data.items[mask], data.ratings[mask], data.timestamps[mask]):
        writer.writerow([data.user_ids[u], data.item_ids[i], f"{float(r):g}"] + ([int(t)] if data.timed else []))
    return out.getvalue().encode()


def split_fleet(
    data: Interactions, out_dir: Path, *, devices: int, rating_threshold: float, rng: np.random.Generator
) -> list[FleetDevice]:
    """Write ``devices`` device folders, each one randomly chosen user with enough history.

    A user qualifies with at least 3 positive interactions (one to train on, one for
    validation, one for test). Returns the devices in name order.
    """
    if devices <= 0:
        raise DataError("--devices must be > 0")
    counts = np.bincount(data.positives(rating_threshold).users, minlength=data.n_users)
    eligible = np.flatnonzero(counts >= MIN_INTERACTIONS)
    if eligible.shape[0] < devices:
        raise DataError(f"only {eligible.shape[0]} users have {MIN_INTERACTIONS}+ interactions; ask for fewer devices")
    chosen = np.sort(rng.choice(eligible, size=devices, replace=False))
    catalog = catalog_from(data, rating_threshold=rating_threshold)
    fleet = []
    for k, user in enumerate(chosen):
        device = FleetDevice(name=device_name(k), folder=out_dir / device_name(k))
        write_atomic(device.data_path, _rows_csv(data, data.users == user))
        catalog.save(device.folder / CATALOG)
        fleet.append(device)
    logging.getLogger(__name__).info("wrote %d device folders under %s", devices, out_dir)
    return fleet
