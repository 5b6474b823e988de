"""Local training settings (no torch): the optimiser and the hyper-parameters every
device's update and the centralized references share (:mod:`fedrec.training.steps`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Optimizer(StrEnum):
    """The local optimiser (config key ``optimizer``); its state is fresh every round."""

    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters (same meaning in federated and central runs)."""

    local_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    num_negatives: int = 4
    optimizer: Optimizer = Optimizer.ADAM
    user_lr_scale: float = 1.0  # private user vectors may learn faster than shared weights
