"""A :class:`fedrec.runner.Transport` over Flower's Grid (simulation or deployment)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clients.records import to_arrays, to_record
from fedrec import protocol
from fedrec.config import RunConfig
from fedrec.errors import FedrecError
from fedrec.models import Arrays
from fedrec.runner import TrainReply

logger = logging.getLogger(__name__)


class GridTransport:
    """Sends train/evaluate messages to SuperNodes and collects the replies."""

    def __init__(self, grid: Grid, config: RunConfig, *, expected_nodes: int, timeout: float = 600.0) -> None:
        self.grid = grid
        self.run_config = protocol.encode_run_config(config.to_flat())
        self.timeout = timeout
        self._nodes = self._in_client_order(self._wait_for_nodes(expected_nodes))

    def _wait_for_nodes(self, expected: int, patience: float = 120.0) -> list[int]:
        # Virtual nodes register while the ServerApp starts; wait for all of them.
        deadline = time.monotonic() + patience
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= expected:
                return nodes
            if time.monotonic() > deadline:
                raise FedrecError(f"only {len(nodes)} of {expected} devices connected within {patience:.0f} s")
            time.sleep(0.2)

    def _in_client_order(self, nodes: list[int]) -> list[int]:
        """Order the nodes by the client index each reports (a simulated device's
        partition id), so that the runner's sampler, which draws over positions in this
        list, picks the same clients as the in-process engine. Nodes that report none
        (real devices) keep their node-id order, after the others."""
        config = ConfigRecord({protocol.RUN_CONFIG: self.run_config})
        messages = [Message(RecordDict({protocol.CONFIG: config}), dst_node_id=n, message_type="query") for n in nodes]
        index: dict[int, int] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            if not reply.has_error():
                index[int(reply.metadata.src_node_id)] = int(str(reply.content.metric_records[protocol.METRICS][protocol.CLIENT_ID]))
        missing = len(nodes) - len(index)
        if missing:
            logger.warning("%d of %d devices did not say which client they are", missing, len(nodes))
        return sorted(nodes, key=lambda n: (index.get(n, -1) < 0, index.get(n, -1), n))

    def clients(self) -> list[int]:
        return list(self._nodes)

    def _send(self, nodes: Sequence[int], shared: Arrays, kind: str, round_: int, **extra: str) -> list[Message]:
        config = ConfigRecord({protocol.RUN_CONFIG: self.run_config, protocol.SERVER_ROUND: round_, **extra})
        content = RecordDict({protocol.ARRAYS: to_record(shared), protocol.CONFIG: config})
        messages = [Message(content, dst_node_id=node, message_type=kind, group_id=str(round_)) for node in nodes]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        if len(replies) < len(messages):
            logger.warning("round %d: %d of %d devices did not reply in time", round_, len(messages) - len(replies), len(messages))
        return replies

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        out = []
        for reply in self._send(clients, shared, "train", round_):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                out.append(TrainReply(client=node, update=None, error=f"device error {reply.error.code}"))
                continue
            metrics = reply.content.metric_records[protocol.METRICS]
            out.append(
                TrainReply(
                    client=node,
                    update=to_arrays(reply.content.array_records[protocol.ARRAYS]),
                    num_examples=int(str(metrics[protocol.NUM_EXAMPLES])),
                    loss=float(str(metrics[protocol.TRAIN_LOSS])),
                    local_epsilon=float(str(metrics[protocol.LOCAL_EPSILON])),
                )
            )
        return out

    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]:
        replies = self._send(clients, shared, "evaluate", round_, **{protocol.HELD_OUT: which})
        return [
            {k: float(str(v)) for k, v in r.content.metric_records[protocol.METRICS].items()}
            for r in replies
            if not r.has_error()
        ]
