"""Interaction data: loading, validation, splitting, per-user partitions, sampling."""

from fedrec.data.interactions import Interactions, ItemMetadata, UserMetadata
from fedrec.data.loaders import CsvColumns, load_csv, load_movielens_100k
from fedrec.data.split import ClientData, LeaveOneOutSplit, leave_one_out, sample_negatives

__all__ = [
    "ClientData",
    "CsvColumns",
    "Interactions",
    "ItemMetadata",
    "LeaveOneOutSplit",
    "UserMetadata",
    "leave_one_out",
    "load_csv",
    "load_movielens_100k",
    "sample_negatives",
]
