"""A :class:`fedrec.federation.rounds.Transport` over Flower's Grid (simulation or deployment)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clients.records import to_arrays, to_record
from fedrec import protocol
from fedrec.config import RunConfig
from fedrec.errors import FedrecError
from fedrec.federation.rounds import TrainReply
from fedrec.models import Arrays
from fedrec.privacy.job_plan import JobPlan

logger = logging.getLogger(__name__)


class GridTransport:
    """Sends train/evaluate messages to SuperNodes and collects the replies."""

    def __init__(
        self, grid: Grid, config: RunConfig, *, expected_nodes: int, timeout: float = 600.0, patience: float = 120.0,
        client_order: bool = True, private_evaluation: bool = False,
    ) -> None:
        """``client_order``: ask each node which simulated client it is (simulation);
        real devices have no client index and keep their node-id order.
        ``private_evaluation``: the devices' metrics are released only through
        fedrec's Gaussian sum mechanism, recorded in the ledger (real devices)."""
        self.grid = grid
        self.private_evaluation = private_evaluation  # read by fedrec.federation.rounds
        self.run_config = protocol.encode_run_config(config.to_flat())
        self.timeout = timeout
        self.upload_bits = config.federation.upload_bits  # every device must send its update quantized
        self.uploads: list[dict[str, float]] = []  # per train round: bytes received per device
        self.upload_contents: dict[str, list[str]] = {}  # what one train reply carried, by record
        nodes = self._wait_for_nodes(expected_nodes, patience)
        self._nodes = self._in_client_order(nodes) if client_order else nodes

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

    def send(self, nodes: Sequence[int], shared: Arrays, kind: str, round_: int, **extra: str) -> list[Message]:
        """One message of type ``kind`` to each node (``shared`` as its arrays, the run
        config and ``extra`` as its config); the replies that came back in time, in the
        order of ``nodes`` whatever order they arrived in (sums and means over them are
        then the same floats on every run)."""
        config = ConfigRecord({protocol.RUN_CONFIG: self.run_config, protocol.SERVER_ROUND: round_, **extra})
        content = RecordDict({protocol.ARRAYS: to_record(shared), protocol.CONFIG: config})
        messages = [Message(content, dst_node_id=node, message_type=kind, group_id=str(round_)) for node in nodes]
        position = {node: i for i, node in enumerate(nodes)}
        replies = sorted(self.grid.send_and_receive(messages, timeout=self.timeout),
                         key=lambda reply: position.get(int(reply.metadata.src_node_id), len(position)))
        if len(replies) < len(messages):
            logger.warning("round %d: %d of %d devices did not reply in time", round_, len(messages) - len(replies), len(messages))
        return replies

    def announce(self, plan: JobPlan, clients: Sequence[int], *, batch: int = 128) -> list[int]:
        """Send the job's signed plan to every device before its first request, ``batch``
        at a time; the devices that accept it, in ``clients`` order (a refusal, an error
        or no reply is a dropout: that device is asked nothing more)."""
        accepted: set[int] = set()
        for start in range(0, len(clients), batch):
            replies = self.send(clients[start : start + batch], {}, protocol.PLAN, 0, **{protocol.JOB_PLAN: plan.encode()})
            for reply in replies:
                if reply.has_error():
                    logger.warning("plan: a device failed: %s", reply.error.reason)
                    continue
                metrics = reply.content.metric_records.get(protocol.METRICS)
                if metrics is not None and float(str(metrics.get(protocol.ACCEPTED, 0))) == 1.0:
                    accepted.add(int(reply.metadata.src_node_id))
        refused = len(clients) - len(accepted)
        if refused:
            logger.warning("plan of job %s: %d of %d devices refused it (their privacy budgets)", plan.run_id, refused,
                           len(clients))
        return [c for c in clients if c in accepted]

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        started = time.perf_counter()
        out = []
        sizes = []
        for reply in self.send(clients, shared, "train", round_):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                logger.warning("round %d: a device failed: %s", round_, reply.error.reason)
                out.append(TrainReply(client=node, update=None, error=f"device error {reply.error.code}"))
                continue
            if protocol.ARRAYS not in reply.content.array_records:
                out.append(TrainReply(client=node, update=None, error="reply without an update"))
                continue
            record = reply.content.array_records[protocol.ARRAYS]
            sizes.append(sum(len(array.data) for array in record.values()))
            self._note_contents(reply)
            # A real device may send nothing but its update (and its record-level epsilon).
            metrics: Mapping[str, object] = reply.content.metric_records.get(protocol.METRICS, {})
            out.append(
                TrainReply(
                    client=node,
                    update=to_arrays(record),
                    num_examples=int(str(metrics.get(protocol.NUM_EXAMPLES, 0))),
                    loss=float(str(metrics.get(protocol.TRAIN_LOSS, "nan"))),
                    local_epsilon=float(str(metrics.get(protocol.LOCAL_EPSILON, 0.0))),
                    encoded=self.upload_bits > 0,  # the server decodes (fedrec.federation.rounds) before its checks
                )
            )
        if sizes:
            self.uploads.append(
                {
                    "round": float(round_), "devices": float(len(sizes)), "bytes_per_device": float(sum(sizes) / len(sizes)),
                    "train_seconds": time.perf_counter() - started,
                }
            )
        return out

    def _note_contents(self, reply: Message) -> None:
        c = reply.content
        self.upload_contents = {
            **{f"arrays:{name}": sorted(record) for name, record in c.array_records.items()},
            **{f"metrics:{name}": sorted(record) for name, record in c.metric_records.items()},
            **{f"config:{name}": sorted(record) for name, record in c.config_records.items()},
        }

    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]:
        replies = self.send(clients, shared, "evaluate", round_, **{protocol.HELD_OUT: which})
        return [
            {k: float(str(v)) for k, v in r.content.metric_records[protocol.METRICS].items()}
            for r in replies
            if not r.has_error()
        ]
