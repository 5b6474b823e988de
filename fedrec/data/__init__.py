"""Interaction data: any interactions file (CSV, TSV, Parquet, MovieLens presets, text ids,
item files), validation, the leave-one-out split, per-user partitions, negatives, and
where the data lives (``location``). The bottom layer: imports only ``fedrec.errors`` and
the atomic file writer of ``fedrec.experiments.results``.
"""

from fedrec.data.interactions import Interactions, ItemMetadata, UserMetadata
from fedrec.data.loaders import load_csv, load_movielens_100k
from fedrec.data.spec import DataSpec
from fedrec.data.split import ClientData, LeaveOneOutSplit, SplitMode, leave_one_out, sample_negatives

__all__ = [
    "ClientData",
    "DataSpec",
    "Interactions",
    "ItemMetadata",
    "LeaveOneOutSplit",
    "SplitMode",
    "UserMetadata",
    "leave_one_out",
    "load_csv",
    "load_movielens_100k",
    "sample_negatives",
]
