"""Names used in messages between the server and the devices: one place for all.

The Flower apps in ``clients/`` and ``server/`` build and parse their messages with
these keys; nothing else in a message is read.
"""

from __future__ import annotations

import json
from typing import Any

# Record names inside a message.
ARRAYS = "arrays"  # shared parameters down, their update up
CONFIG = "config"
METRICS = "metrics"

# Keys of the config record sent to devices.
RUN_CONFIG = "run-config"  # the flat run config as JSON
SERVER_ROUND = "server-round"
HELD_OUT = "held-out"  # "val" or "test" for evaluation
PHASE = "phase"  # DP-EASE: which statistic to send ("counts" or "gram"); its request is in ARRAYS

# Message types beyond Flower's train / evaluate / query (Flower routes "kind.action"
# to the ClientApp function registered for that action).
STATISTICS_ACTION = "statistics"  # DP-EASE: one device statistic for a phase
STATISTICS = f"query.{STATISTICS_ACTION}"
EASE_EVALUATE_ACTION = "ease"  # DP-EASE: score the released weights on the device
EASE_EVALUATE = f"evaluate.{EASE_EVALUATE_ACTION}"
PLAN_ACTION = "plan"  # a job's signed privacy plan, before its first request; the device accepts or refuses
PLAN = f"query.{PLAN_ACTION}"
JOB_PLAN = "job-plan"  # config key: the plan as one line of JSON
ACCEPTED = "accepted"  # metrics key of the plan reply: 1 accepted, 0 refused

# Keys of the metrics record sent back.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
LOCAL_EPSILON = "local-epsilon"  # record-level epsilon the device has spent (local DP-SGD)
CLIENT_ID = "client-id"  # the simulated user index (simulation only; never a real user id)


def encode_run_config(flat: dict[str, Any]) -> str:
    return json.dumps(flat, sort_keys=True)


def decode_run_config(text: str) -> dict[str, Any]:
    return dict(json.loads(text))
