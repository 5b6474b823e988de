"""Model families behind one contract (:mod:`fedrec.families.contract`) and one
registry (:mod:`fedrec.families.registry`): DP-EASE (:mod:`fedrec.families.ease`) and
DP-FedAvg over NeuMF or GMF (:mod:`fedrec.families.neural`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedrec.families.registry import family_names, get_family, register, unregister

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.families.contract import ModelFamily


def family_of(config: RunConfig) -> ModelFamily:
    """The family a run config's ``model`` names."""
    return get_family(str(config.model.model))


__all__ = ["family_names", "family_of", "get_family", "register", "unregister"]
