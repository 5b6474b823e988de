"""Run-config keys that only a deployment's server needs (it holds no interactions, only the public catalogue)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.deploy.catalog import Catalog, load_catalog
from fedrec.errors import ConfigError

MIN_DEVICES = "min-devices"  # wait for this many SuperNodes before round 1
NUM_ITEMS = "num-items"  # size of the catalogue shipped to devices
ROUND_TIMEOUT = "round-timeout"  # seconds to wait for the replies of one round
CONNECT_TIMEOUT = "connect-timeout"  # seconds to wait for min-devices to connect
SECURE_AGGREGATION = "secure-aggregation"  # SecAgg+: the server sees only the sum of updates
CATALOG = "catalog"  # path of the public catalog.json on the server machine ("" : none)
KEYS = (MIN_DEVICES, NUM_ITEMS, ROUND_TIMEOUT, CONNECT_TIMEOUT)


@dataclass(frozen=True)
class DeploySettings:
    min_devices: int
    n_items: int
    round_timeout: float = 300.0
    connect_timeout: float = 300.0
    secure_aggregation: bool = False
    catalog: Path | None = None  # the public catalogue (catalog.json): item content for the server side


def split_deploy_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], DeploySettings]:
    """Take the deployment keys out of a flat run config; the rest is a RunConfig."""
    rest = dict(values)
    raw = {k: rest.pop(k) for k in KEYS if k in rest}
    secagg = str(rest.pop(SECURE_AGGREGATION, False)).lower()
    catalog = str(rest.pop(CATALOG, "") or "")
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
        secure_aggregation=secagg in ("true", "1"), catalog=Path(catalog) if catalog else None,
    )


def deploy_catalog(deploy: DeploySettings) -> Catalog | None:
    """The public catalogue the server reads (None where the run config names none),
    checked against ``num-items``."""
    if deploy.catalog is None:
        return None
    catalog = load_catalog(deploy.catalog)
    if catalog.n_items != deploy.n_items:
        problem = (f"{CATALOG}: {deploy.catalog} lists {catalog.n_items} items but {NUM_ITEMS} is {deploy.n_items}; "
                   "both must come from the same `fedrec deploy split`")
        raise ConfigError([problem])
    return catalog
