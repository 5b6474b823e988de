"""A real device's own files: its interactions, its catalogue, its private state.

The SuperNode's node config names the data file (``data-path=...``); the catalogue
(``catalog.json``) and the state file (``state.npz``) live next to it. The state file
holds everything the device keeps between rounds and after the run: the private user
vectors, its record-level DP history, a device seed, and the latest shared parameters
it received (for on-device recommendations). It never leaves the device.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, parse_run_config
from fedrec.data.interactions import Interactions
from fedrec.data.loaders import load_csv
from fedrec.data.spec import DataSpec, IdType
from fedrec.data.split import ClientData, leave_one_out
from fedrec.deploy.catalog import CATALOG, Catalog, load_catalog
from fedrec.errors import DataError
from fedrec.experiments.results import write_atomic
from fedrec.federation.device import Device
from fedrec.models import Arrays
from fedrec.training.local import PrivateState

logger = logging.getLogger(__name__)

STATE = "state.npz"
_SHARED = "shared/"


@dataclass(frozen=True)
class DeviceFiles:
    data: Path
    catalog: Path
    state: Path

    @classmethod
    def beside(cls, data_path: str | Path) -> DeviceFiles:
        data = Path(data_path).expanduser()
        return cls(data=data, catalog=data.parent / CATALOG, state=data.parent / STATE)


@dataclass(frozen=True)
class DeviceState:
    """What a device keeps on disk between rounds (and after the run)."""

    device_seed: int  # the device's own randomness; never sent
    private: PrivateState | None = None
    shared: Arrays | None = None  # latest shared parameters received
    run_config: dict[str, Any] | None = None  # the flat run config they came with
    round_: int = 0


def load_user_interactions(files: DeviceFiles, catalog: Catalog) -> Interactions:
    """Read and validate the device's file with fedrec's CSV loader, in catalogue indices."""
    raw = load_csv(files.data, DataSpec(id_type=IdType.STRING))  # ids as written; matched to the catalogue by text
    if raw.n_users != 1:
        raise DataError(f"{files.data}: holds {raw.n_users} users; a device file holds exactly one user's interactions")
    items = catalog.index_of(raw.item_ids[raw.items], where=files.data)
    return Interactions(
        name="device", users=np.zeros(len(raw), dtype=np.int64), items=items, ratings=raw.ratings,
        timestamps=raw.timestamps, user_ids=np.zeros(1, dtype=np.int64), item_ids=catalog.item_ids, timed=raw.timed,
    )


def local_client_data(files: DeviceFiles, catalog: Catalog, *, config: RunConfig, device_seed: int) -> ClientData:
    """The device's leave-one-out split, evaluation negatives drawn on the device."""
    data = load_user_interactions(files, catalog).positives(config.data.rating_threshold)
    split = leave_one_out(data, rng=np.random.default_rng([device_seed, 2]), num_eval_negatives=config.data.num_eval_negatives,
                          mode=config.data.split)
    return split.client(0)


def load_state(files: DeviceFiles) -> DeviceState:
    """The saved state, or a fresh one with a new random device seed."""
    if not files.state.is_file():
        return DeviceState(device_seed=secrets.randbits(62))
    try:
        with np.load(files.state, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{files.state}: unreadable device state ({err}); move it away to start this device afresh") from None
    private = None
    if "user_gmf" in stored:
        private = PrivateState(
            user_gmf=stored["user_gmf"], user_mlp=stored["user_mlp"], rounds_trained=int(stored["rounds_trained"]),
            dp_history=tuple((float(z), float(q), int(n)) for z, q, n in stored["dp_history"]),
        )
    shared = {k[len(_SHARED) :]: v for k, v in stored.items() if k.startswith(_SHARED)} or None
    config = json.loads(str(stored["run_config"])) if "run_config" in stored else None
    return DeviceState(
        device_seed=int(stored["device_seed"]), private=private, shared=shared, run_config=config, round_=int(stored["round"]),
    )


def save_state(files: DeviceFiles, state: DeviceState) -> None:
    """Write the state atomically: a crash leaves the previous state, never half of one."""
    arrays: dict[str, np.ndarray] = {"device_seed": np.array(state.device_seed), "round": np.array(state.round_)}
    if state.private is not None:
        p = state.private
        arrays |= {
            "user_gmf": p.user_gmf, "user_mlp": p.user_mlp, "rounds_trained": np.array(p.rounds_trained),
            "dp_history": np.array(p.dp_history, dtype=np.float64).reshape(-1, 3),
        }
    if state.shared is not None:
        arrays |= {_SHARED + k: v for k, v in state.shared.items()}
    if state.run_config is not None:
        arrays["run_config"] = np.array(json.dumps(state.run_config, sort_keys=True))
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    write_atomic(files.state, out.getvalue())


@dataclass(frozen=True)
class LocalDevice:
    """A device built from its own files, ready for :class:`fedrec.federation.device.Device` calls."""

    files: DeviceFiles
    state: DeviceState
    device: Device

    @classmethod
    def open(cls, data_path: str | Path, config: RunConfig) -> LocalDevice:
        files = DeviceFiles.beside(data_path)
        catalog = load_catalog(files.catalog)
        state = load_state(files)
        data = local_client_data(files, catalog, config=config, device_seed=state.device_seed)
        model = config.model.build(catalog.n_items)
        # client_id only seeds the device's generators; it is the device's own secret seed.
        return cls(files=files, state=state, device=Device(client_id=state.device_seed, data=data, model=model))

    def remember(self, *, shared: Arrays, config: RunConfig, round_: int, private: PrivateState | None = None) -> None:
        """Persist the shared parameters just received (and new private state, after training)."""
        new = DeviceState(
            device_seed=self.state.device_seed, private=private if private is not None else self.state.private,
            shared=shared, run_config=config.to_flat(), round_=round_,
        )
        save_state(self.files, new)


def saved_config(state: DeviceState) -> RunConfig:
    if state.run_config is None:
        raise DataError("this device has not received a model yet; join a federated run first")
    return parse_run_config(state.run_config)
