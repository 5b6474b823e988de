"""A :class:`fedrec.dpease.run.StatisticsTransport` over Flower's Grid.

Each DP-EASE phase is one ``query.statistics`` message per device, the request (the
released top items, for the co-occurrence) in its arrays; each device replies with its
clipped statistic and nothing else. Evaluation sends the released weights in an
``evaluate.ease`` message and reads back the device's metrics. Clipping, noise and the
ledger stay in :func:`fedrec.dpease.run.run_dp_ease`: this class only moves messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from flwr.serverapp import Grid

from clients.records import to_arrays
from fedrec import protocol
from fedrec.config import RunConfig
from fedrec.models import Arrays
from fedrec.privacy.dp_fedavg import Part
from fedrec.privacy.job_plan import JobPlan
from server.transport import GridTransport

logger = logging.getLogger(__name__)



class GridStatistics:
    """Sends DP-EASE's statistics and evaluation messages to SuperNodes.

    Devices are asked ``batch`` at a time, and their statistics are handed on in the
    order of ``clients``, whatever order they arrive in: the server holds at most one
    batch of uploads, and the sum is the same float sum as the in-process engine's.
    """

    def __init__(
        self, grid: Grid, config: RunConfig, *, n_items: int, expected_nodes: int, timeout: float = 600.0,
        patience: float = 120.0, client_order: bool = True, batch: int = 128, private_evaluation: bool = False,
    ) -> None:
        """``private_evaluation`` (real devices with DP on): the devices' metrics leave only
        through a DP release; :func:`fedrec.dpease.run.run_dp_ease` reads this flag and
        releases each evaluation through :mod:`fedrec.privacy.eval_release`, checked
        against the budget before the devices are asked."""
        self.links = GridTransport(
            grid, config, expected_nodes=expected_nodes, timeout=timeout, patience=patience, client_order=client_order
        )
        self.private_evaluation = private_evaluation
        self.n_items = n_items
        self.batch = batch
        self.uploads: list[dict[str, float]] = []  # per phase: devices heard, bytes per device, seconds
        self.upload_contents: dict[str, list[str]] = {}  # what one statistics reply carried, by record
        self.numbers: dict[str, int] = {}  # the round number each phase's messages carry, in the order asked

    def clients(self) -> list[int]:
        return self.links.clients()

    def announce(self, plan: JobPlan, clients: Sequence[int]) -> list[int]:
        """The job's signed plan to every device before its first request
        (:meth:`server.transport.GridTransport.announce`); the devices that accept it."""
        return self.links.announce(plan, clients, batch=self.batch)

    def statistics(self, clients: Sequence[int], phase: str, request: Arrays) -> Iterator[Arrays | Part | None]:
        started = time.perf_counter()
        number = self.numbers.setdefault(phase, len(self.numbers) + 1)
        sizes: list[int] = []
        for start in range(0, len(clients), self.batch):
            chunk = clients[start : start + self.batch]
            replies = self.links.send(chunk, request, protocol.STATISTICS, number, **{protocol.PHASE: phase})
            by_node = {int(r.metadata.src_node_id): r for r in replies}
            for node in chunk:
                reply = by_node.get(node)
                if reply is None or reply.has_error():
                    if reply is not None:
                        logger.warning("phase %s: a device failed: %s", phase, reply.error.reason)
                    yield None
                    continue
                if protocol.ARRAYS not in reply.content.array_records:
                    yield None
                    continue
                record = reply.content.array_records[protocol.ARRAYS]
                sizes.append(sum(len(array.data) for array in record.values()))
                self.upload_contents = {f"arrays:{name}": sorted(r) for name, r in reply.content.array_records.items()}
                yield to_arrays(record)
        if sizes:
            self.uploads.append(
                {
                    "round": float(number), "devices": float(len(sizes)), "bytes_per_device": sum(sizes) / len(sizes),
                    "seconds": time.perf_counter() - started,
                }
            )

    def evaluate(self, clients: Sequence[int], release: Arrays, which: str) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for start in range(0, len(clients), self.batch):
            replies = self.links.send(
                clients[start : start + self.batch], release, protocol.EASE_EVALUATE, len(self.numbers) + 1,
                **{protocol.HELD_OUT: which},
            )
            for reply in replies:
                if reply.has_error():
                    logger.warning("evaluation: a device failed: %s", reply.error.reason)
                    continue
                out.append({k: float(str(v)) for k, v in reply.content.metric_records[protocol.METRICS].items()})
        return out
