"""The few exceptions fedrec raises; each message says what to do about it."""

from __future__ import annotations


class FedrecError(Exception):
    """Base class of every error fedrec raises on purpose."""


class DataError(FedrecError):
    """Input data is missing or malformed (the message names file and line)."""


class ConfigError(FedrecError):
    """A configuration value is unknown or out of range.

    ``problems`` lists every problem found, so that a user fixes them all at once.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class PrivacyError(FedrecError):
    """A privacy guarantee cannot be honoured (e.g. the budget would be exceeded)."""


class LedgerError(FedrecError):
    """The privacy ledger is malformed or fails verification."""


class ProfileError(FedrecError):
    """A sign-up profile names something the catalogue does not have, or is out of range.

    ``problems`` lists every problem found, so that a client fixes them all at once.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid profile:\n  - " + "\n  - ".join(self.problems))
