"""Privacy settings that need no accountant loaded (no scipy, no torch): which of
Opacus' accountants gives the headline epsilon. :mod:`fedrec.privacy.accountant` runs it."""

from __future__ import annotations

from enum import StrEnum


class Accountant(StrEnum):
    """Opacus' accountant that gives the headline epsilon (config key ``accountant``)."""

    PRV = "prv"
    RDP = "rdp"


ACCOUNTANTS = tuple(Accountant)
