"""The privacy ledger: append-only, hash-chained, signed JSON lines.

One entry per round (and one per other release, e.g. a DP popularity prior), written and fsync'ed by the server *before* the round's
aggregate is applied to the model, so that a crash can leave a round spent but
unused, never used but unrecorded. Each entry names the mechanism's parameters,
carries the SHA-256 of the previous line and an Ed25519 signature of its own
canonical form. The first line is a header (run, budget, accountant, public key
fingerprint); a finished run appends a signed ``close`` line.

Epsilon in an entry is informative: auditors recompute it from the mechanism
parameters with a vetted accountant (:mod:`fedrec.privacy.audit`). JSON has no
infinity: an infinite epsilon (a round without noise, ``noise-multiplier = 0``) is
written as the string ``"inf"`` (:func:`encode_epsilon`, :func:`decode_epsilon`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrec.errors import LedgerError

LEDGER = "privacy_ledger.jsonl"
PUBLIC_KEY = "ledger_public_key.pem"
GENESIS = "0" * 64
MECHANISM = "dp-fedavg/user-level/poisson-subsampled-gaussian"

HEADER_FIELDS = ("kind", "run_id", "accountant", "delta", "budget", "population", "config_hash", "key_fingerprint")
ROUND_FIELDS = (
    "kind", "round", "mechanism", "sample_rate", "noise_multiplier", "clipping_norm", "clients", "delta",
    "epsilon", "accountant", "config_hash",
)
# Any other aggregate the server releases (a DP popularity prior, sufficient statistics,
# evaluation metrics): a Gaussian sum of per-user contributions clipped to C, applied
# ``steps`` times with sampling rate q. The accountant composes it with the rounds.
RELEASE_FIELDS = (
    "kind", "release", "mechanism", "purpose", "sample_rate", "noise_multiplier", "clipping_norm", "steps",
    "clients", "delta", "epsilon", "accountant", "config_hash",
)


INFINITE = "inf"  # an infinite epsilon as the ledger writes it


def encode_epsilon(value: float) -> float | str:
    """An epsilon as a JSON value: the number, or ``"inf"`` when it is infinite."""
    value = float(value)
    if math.isnan(value) or value < 0:
        raise LedgerError(f"epsilon must be a number >= 0 or infinite, got {value}")
    return INFINITE if value == math.inf else value


def decode_epsilon(value: Any) -> float:
    """The epsilon a ledger entry records: a number >= 0, or ``"inf"``."""
    if value == INFINITE and isinstance(value, str):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise LedgerError(f"field 'epsilon' must be a number >= 0 or {INFINITE!r}, got {value!r}")
    return float(value)


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes that are signed and hashed: sorted keys, no spaces, no signature."""
    body = {k: v for k, v in entry.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def append_durably(path: Path, line: bytes, *, mode: int) -> None:
    """Append one line to ``path`` (created with ``mode``) and fsync it before returning:
    an entry is on disk before anything that depends on it happens."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The server's signing key (PEM, mode 0600), created on first use.

    Keep it outside the run directory: whoever holds it can sign ledgers.
    """
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise LedgerError(f"cannot read the public key {path}: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerError(f"{path} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class ParsedLedger:
    entries: list[dict[str, Any]]
    hashes: list[str]  # hash of each line as stored


def read_entries(path: Path) -> ParsedLedger:
    """Parse the ledger; a malformed or truncated line is a :class:`LedgerError`."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise LedgerError(f"cannot read {path}: {err.strerror}") from None
    if raw and not raw.endswith(b"\n"):
        raise LedgerError(f"{path}: the last line is truncated (no newline): a write was cut off")
    entries, hashes = [], []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, > 4300-digit integers, deep nesting
            raise LedgerError(f"{path}:{lineno}: not valid JSON ({str(err)[:200]})") from None
        if not isinstance(entry, dict):
            raise LedgerError(f"{path}:{lineno}: an entry must be a JSON object")
        entries.append(entry)
        hashes.append(line_hash(line))
    return ParsedLedger(entries=entries, hashes=hashes)


class LedgerWriter:
    """Appends signed entries; resumes the chain of an existing ledger."""

    def __init__(self, run_dir: Path, key: Ed25519PrivateKey) -> None:
        self.path = run_dir / LEDGER
        self.key = key
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / PUBLIC_KEY).write_bytes(public_pem(key))
        self.entries: list[dict[str, Any]] = []
        self.head = GENESIS
        if self.path.exists():
            parsed = read_entries(self.path)
            self.entries, self.head = parsed.entries, (parsed.hashes[-1] if parsed.hashes else GENESIS)

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Sign, chain, write and fsync one entry; return it as written."""
        full = {**entry, "time": round(time.time(), 3), "prev_hash": self.head}
        full["signature"] = base64.b64encode(self.key.sign(canonical(full))).decode()
        line = json.dumps(full, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        append_durably(self.path, line, mode=0o644)
        self.head = line_hash(line)
        self.entries.append(full)
        return full
