"""The server's checkpoint: everything needed to continue a run after a crash.

Written after every round, once the round's aggregate has been recorded in the
privacy ledger and applied, and before anything derived from the new model leaves
the server (evaluation, results). One file, replaced atomically (temporary file,
fsync, rename), so a crash leaves either the previous checkpoint or the new one.

What it holds: the round, the shared parameters, the server optimizer's momentum,
the sampler's and the noise's random-generator states (the noise state only when
the noise is seeded for reproducibility: a secure generator is reseeded from the
operating system on resume and its state never touches the disk), the history so
far, the number of ledger rounds at that point, and, in simulation, the simulated
devices' private state (real devices keep theirs on the device).

Rounds recorded in the ledger after the last checkpoint were spent but never used;
they keep counting towards epsilon (:class:`fedrec.privacy.session.PrivacySession`
resumes from the whole ledger, not from the checkpoint).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedrec.errors import FedrecError
from fedrec.experiments.results import write_atomic
from fedrec.models import Arrays

CHECKPOINT = "checkpoint.npz"
RUN_CONFIG = "run_config.json"  # the run's flat config and engine, written when a run starts
_META = "meta"  # the JSON part, stored as a byte array inside the npz
_FORMAT = 1


@runtime_checkable
class StatefulTransport(Protocol):
    """A transport whose (simulated) clients' state lives in the server's process."""

    def client_state(self) -> Arrays:
        """The clients' private state as named arrays."""
        ...

    def restore_client_state(self, state: Arrays) -> None: ...


@dataclass
class Checkpoint:
    round: int  # rounds whose aggregate is in ``shared``
    shared: Arrays
    buffer: Arrays | None  # server momentum
    sampler_rng: dict[str, Any]  # numpy bit-generator state
    noise_rng: dict[str, Any] | None  # None: secure noise (reseeded on resume) or no DP
    history: dict[str, Any]  # fedrec.federation.rounds.RunHistory fields
    ledger_rounds: int  # round entries in the ledger when this was written
    config_hash: str
    clients: Arrays = field(default_factory=dict)  # StatefulTransport.client_state()


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    meta = {
        "format": _FORMAT, "round": checkpoint.round, "sampler_rng": checkpoint.sampler_rng,
        "noise_rng": checkpoint.noise_rng, "history": checkpoint.history, "ledger_rounds": checkpoint.ledger_rounds,
        "config_hash": checkpoint.config_hash, "has_buffer": checkpoint.buffer is not None,
    }
    arrays: dict[str, np.ndarray] = {_META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for prefix, part in (("shared", checkpoint.shared), ("buffer", checkpoint.buffer or {}), ("clients", checkpoint.clients)):
        arrays.update({f"{prefix}/{name}": np.asarray(value) for name, value in part.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    write_atomic(run_dir / CHECKPOINT, buffer.getvalue())


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint, or None if it never completed a round."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays.pop(_META).tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise FedrecError(f"{path} is unreadable ({err}); it is written atomically, so the file was damaged after the run") from None
    if meta.get("format") != _FORMAT:
        raise FedrecError(f"{path} has checkpoint format {meta.get('format')!r}, this fedrec reads {_FORMAT}")

    def part(prefix: str) -> Arrays:
        return {name.split("/", 1)[1]: value for name, value in arrays.items() if name.startswith(prefix + "/")}

    return Checkpoint(
        round=int(meta["round"]), shared=part("shared"), buffer=part("buffer") if meta["has_buffer"] else None,
        sampler_rng=meta["sampler_rng"], noise_rng=meta["noise_rng"], history=meta["history"],
        ledger_rounds=int(meta["ledger_rounds"]), config_hash=str(meta["config_hash"]), clients=part("clients"),
    )


def write_run_config(run_dir: Path, flat: dict[str, Any], *, engine: str, config_hash: str) -> None:
    """What ``--resume`` needs to rebuild the run: its config, engine and config hash."""
    payload = {"engine": engine, "config_hash": config_hash, "config": flat}
    write_atomic(run_dir / RUN_CONFIG, (json.dumps(payload, indent=2) + "\n").encode())


def read_run_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """The flat config and engine a run was started with."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise FedrecError(f"{run_dir} is not a fedrec run directory to resume (no {RUN_CONFIG})")
    try:
        payload = json.loads(path.read_bytes())
        return dict(payload["config"]), str(payload["engine"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FedrecError(f"{path} is unreadable ({err})") from None
