"""Conversion between fedrec's named numpy arrays and Flower's ArrayRecord."""

from __future__ import annotations

import collections

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrec.models import Arrays


def to_arrays(record: ArrayRecord) -> Arrays:
    return {name: array.numpy() for name, array in record.items()}


def to_record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord(array_dict=collections.OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))
