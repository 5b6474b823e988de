"""The in-process vectorised engine: a whole federation in one process.

``vectorised`` implements the round loop's transport by training many simulated
devices at once (stacked tensors, :mod:`fedrec.training.batched`); ``lanes`` holds the
forked worker processes that share a round's groups over the cores. Results equal the
per-device path. May import ``fedrec.federation``,
``fedrec.training``, ``fedrec.privacy``, ``fedrec.experiments.run``; never Flower.
"""

from fedrec.engine.vectorised import VectorisedTransport, run

__all__ = ["VectorisedTransport", "run"]
