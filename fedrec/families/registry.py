"""The one registry of model families: a config's ``model`` names one entry.

Built-in families are named here by their import path and loaded on first use, so that
reading a config (:mod:`fedrec.config`) loads neither torch nor a family's code. A new
family is one package implementing :class:`fedrec.families.contract.ModelFamily` plus
one entry: :func:`register` in the process, an entry point in the ``fedrec.families``
group (``name = "package.module:FAMILY"``) or ``$FEDREC_FAMILIES``
(``name=package.module:FAMILY,...``); the last two are found by every process of a run,
Flower's simulated devices included.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from fedrec.errors import FedrecError

if TYPE_CHECKING:
    from fedrec.families.contract import ModelFamily

ENTRY_POINTS = "fedrec.families"  # entry-point group of families installed by other packages
FAMILIES_ENV = "FEDREC_FAMILIES"  # name=module:attribute,... : families of this environment

# name -> "module:attribute" of the family object; the order is the order choices are listed in
BUILT_IN: dict[str, str] = {
    "neumf": "fedrec.families.neural:NEUMF",
    "gmf": "fedrec.families.neural:GMF",
    "dp-ease": "fedrec.families.ease:DP_EASE",
    "dp-recon": "fedrec.families.recon:DP_RECON",
}
_registered: dict[str, Any] = {}  # name -> a family object, or "module:attribute" still to load


def _installed() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}
    for entry in filter(None, (part.strip() for part in os.environ.get(FAMILIES_ENV, "").split(","))):
        name, eq, target = entry.partition("=")
        if not eq or ":" not in target:
            raise FedrecError(f"{FAMILIES_ENV}: {entry!r} is not name=module:attribute")
        found[name.strip()] = target.strip()
    return found


def family_names() -> tuple[str, ...]:
    """Every name a config's ``model`` may take, built-in first."""
    names = dict.fromkeys(BUILT_IN)
    names.update(dict.fromkeys(_installed()))
    names.update(dict.fromkeys(_registered))
    return tuple(names)


def register(family: ModelFamily) -> ModelFamily:
    """Make ``family`` selectable as ``model = family.name`` in this process."""
    if family.name in BUILT_IN:
        raise FedrecError(f"{family.name!r} is a built-in model family; register a new family under another name")
    _registered[family.name] = family
    return family


def unregister(name: str) -> None:
    _registered.pop(name, None)


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``."""
    target: Any = _registered.get(name) or BUILT_IN.get(name) or _installed().get(name)
    if target is None:
        raise FedrecError(f"unknown model {name!r}; choose one of {', '.join(family_names())}")
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        target = getattr(importlib.import_module(module), attribute)
    return target  # type: ignore[no-any-return]
