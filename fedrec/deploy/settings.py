"""Run-config keys that only a deployment's server needs (it holds no data set)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedrec.errors import ConfigError

MIN_DEVICES = "min-devices"  # wait for this many SuperNodes before round 1
NUM_ITEMS = "num-items"  # size of the catalogue shipped to devices
ROUND_TIMEOUT = "round-timeout"  # seconds to wait for the replies of one round
CONNECT_TIMEOUT = "connect-timeout"  # seconds to wait for min-devices to connect
SECURE_AGGREGATION = "secure-aggregation"  # SecAgg+: the server sees only the sum of updates
KEYS = (MIN_DEVICES, NUM_ITEMS, ROUND_TIMEOUT, CONNECT_TIMEOUT)


@dataclass(frozen=True)
class DeploySettings:
    min_devices: int
    n_items: int
    round_timeout: float = 300.0
    connect_timeout: float = 300.0
    secure_aggregation: bool = False


def split_deploy_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], DeploySettings]:
    """Take the deployment keys out of a flat run config; the rest is a RunConfig."""
    rest = dict(values)
    raw = {k: rest.pop(k) for k in KEYS if k in rest}
    secagg = str(rest.pop(SECURE_AGGREGATION, False)).lower()
    problems = [f"{k}: required for a deployment (set it with flwr run --run-config '{k}=...')" for k in (MIN_DEVICES, NUM_ITEMS) if k not in raw]
    parsed: dict[str, float] = {}
    for key, value in raw.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            problems.append(f"{key}: {value!r} is not a number")
            continue
        if number <= 0 or (key in (MIN_DEVICES, NUM_ITEMS) and not number.is_integer()):
            problems.append(f"{key}: {value!r} must be a positive {'integer' if key in (MIN_DEVICES, NUM_ITEMS) else 'number'}")
        parsed[key] = number
    if secagg not in ("true", "false", "1", "0"):
        problems.append(f"{SECURE_AGGREGATION}: {secagg!r} is not true/false")
    if problems:
        raise ConfigError(problems)
    return rest, DeploySettings(
        min_devices=int(parsed[MIN_DEVICES]), n_items=int(parsed[NUM_ITEMS]),
        round_timeout=parsed.get(ROUND_TIMEOUT, 300.0), connect_timeout=parsed.get(CONNECT_TIMEOUT, 300.0),
        secure_aggregation=secagg in ("true", "1"),
    )
