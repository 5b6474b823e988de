"""Where fedrec finds its data: one setting, never a path hard-coded in the library."""

from __future__ import annotations

import os
from pathlib import Path

from fedrec.errors import DataError

DATA_DIR_ENV = "FEDREC_DATA_DIR"


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """Return the data directory: ``explicit`` if given, else ``$FEDREC_DATA_DIR``.

    Raises
    ------
    DataError
        If neither is set or the directory does not exist, with instructions.
    """
    value = str(explicit) if explicit not in (None, "") else os.environ.get(DATA_DIR_ENV, "")
    if not value:
        raise DataError(
            f"no data directory: set {DATA_DIR_ENV}=/path/to/data or pass --data /path/to/data "
            "(it should contain ml-100k/ for MovieLens 100K; `fedrec data fetch ml-100k` downloads it)"
        )
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist (set by --data or {DATA_DIR_ENV})")
    return path
