"""SecAgg+ under fedrec's loop: the server learns only the sum of the clipped updates.

Flower 1.41's ``SecAggPlusWorkflow`` runs on the legacy strategy path (a
``LegacyContext`` with a ``Strategy``, ``FitIns``/``FitRes`` messages). This transport
drives it for one round at a time: the strategy hands the workflow exactly the
devices fedrec's Poisson sampler chose, and keeps the unmasked result. Every device
reports weight 1 (``num_examples = 1``, ``max_weight = 1``), so the workflow's
"weighted average" is the plain mean and ``mean x contributors`` is the sum that
DP-FedAvg noises. The quantization range is the DP clipping norm ``C``: an update
with L2 norm <= C has every coordinate in [-C, C], so nothing is cut off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedrec import protocol
from fedrec.config import RunConfig
from fedrec.dpease.run import PHASES, REQUEST_NAMES, STATISTIC_NAMES
from fedrec.errors import ConfigError
from fedrec.federation.rounds import TrainReply
from fedrec.models import Arrays
from fedrec.privacy.dp_fedavg import Part
from server.statistics import GridStatistics
from server.transport import GridTransport

logger = logging.getLogger(__name__)


class _MeteredGrid:
    """Forwards to a Grid and counts what each device sends back (all SecAgg+ stages)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.received: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                node = int(reply.metadata.src_node_id)
                self.received[node] = self.received.get(node, 0) + _payload_bytes(reply)
        return replies

    def usage(self, number: int, *, started: float, seconds: str) -> dict[str, float] | None:
        """One round's (or phase's) upload record: devices heard from, mean bytes per
        device, and the elapsed time since ``started`` under the key ``seconds``; None
        when no device replied."""
        if not self.received:
            return None
        sizes = list(self.received.values())
        return {
            "round": float(number), "devices": float(len(sizes)), "bytes_per_device": float(np.mean(sizes)),
            seconds: time.perf_counter() - started,
        }


def _payload_bytes(msg: Message) -> int:
    size = sum(len(a.data) for r in msg.content.array_records.values() for a in r.values())
    for record in msg.content.config_records.values():
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            size += sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return size


class _SampledFit(Strategy):
    """Gives the workflow the devices fedrec sampled; keeps the unmasked mean."""

    def __init__(self, proxies: list[ClientProxy], config: dict[str, Scalar]) -> None:
        self.proxies = proxies
        self.config = config
        self.mean: list[np.ndarray] | None = None
        self.contributors = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, FitIns(parameters, dict(self.config))) for proxy in self.proxies]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:  # every FitRes carries the same unmasked aggregate
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            self.contributors = len(results)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[Any]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


def secure_mean(
    grid: _MeteredGrid, context: Context, nodes: Sequence[int], parameters: list[np.ndarray], config: dict[str, Scalar], *,
    round_: int, clipping_range: float, timeout: float, share_fraction: float, threshold_fraction: float,
) -> _SampledFit:
    """One SecAgg+ round over ``nodes``: each gets ``parameters`` and ``config`` as its
    FitIns; the returned strategy holds the unmasked mean of their replies and how many
    devices it covers (weight 1 each, so mean x contributors is the sum)."""
    run_id = grid.run.run_id
    strategy = _SampledFit([GridClientProxy(node, grid.grid, run_id) for node in nodes], config)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=round_), strategy=strategy)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(ndarrays_to_parameters(parameters), True)
    workflow = SecAggPlusWorkflow(
        num_shares=share_fraction, reconstruction_threshold=threshold_fraction, max_weight=1.0,
        clipping_range=clipping_range, timeout=timeout,
    )
    workflow(grid, legacy)  # type: ignore[arg-type]
    return strategy


class SecAggTransport(GridTransport):
    """Training rounds through SecAgg+; evaluation as in :class:`GridTransport`."""

    def __init__(
        self, grid: Grid, config: RunConfig, *, context: Context, expected_nodes: int, timeout: float, patience: float,
        share_fraction: float = 1.0, threshold_fraction: float = 0.6, private_evaluation: bool = False,
    ) -> None:
        if not config.privacy.enabled:
            raise ConfigError(["secure-aggregation needs dp = user: the clipping norm sets SecAgg+'s quantization range"])
        super().__init__(grid, config, expected_nodes=expected_nodes, timeout=timeout, patience=patience, client_order=False,
                         private_evaluation=private_evaluation)
        self.context = context
        self.clipping_range = config.privacy.clipping_norm
        self.share_fraction = share_fraction
        self.threshold_fraction = threshold_fraction

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        started = time.perf_counter()
        names = sorted(shared)
        metered = _MeteredGrid(self.grid)
        strategy = secure_mean(
            metered, self.context, clients, [shared[n] for n in names],
            {protocol.RUN_CONFIG: self.run_config, protocol.SERVER_ROUND: round_}, round_=round_,
            clipping_range=self.clipping_range, timeout=self.timeout, share_fraction=self.share_fraction,
            threshold_fraction=self.threshold_fraction,
        )
        replies = [
            TrainReply(client=node, update=None, error="dropped out of secure aggregation")
            for node in clients[: max(0, len(clients) - strategy.contributors)]
        ]
        if strategy.mean is not None:
            total = {n: (m * strategy.contributors).astype(np.float32) for n, m in zip(names, strategy.mean)}
            replies.append(TrainReply(client=-1, update=total, contributors=strategy.contributors))
        usage = metered.usage(round_, started=started, seconds="train_seconds")
        if usage is not None:
            self.uploads.append(usage)
        logger.info("round %d: secure aggregation of %d of %d devices", round_, strategy.contributors, len(clients))
        return replies


class SecAggStatistics(GridStatistics):
    """DP-EASE's two statistics through SecAgg+ (the server learns only their sum);
    evaluation as in :class:`GridStatistics`. Every statistic has L2 norm <= C, so every
    coordinate lies in SecAgg+'s quantization range [-C, C]."""

    def __init__(
        self, grid: Grid, config: RunConfig, *, context: Context, n_items: int, expected_nodes: int, timeout: float,
        patience: float, share_fraction: float = 1.0, threshold_fraction: float = 0.6, private_evaluation: bool = False,
    ) -> None:
        if not config.privacy.enabled:
            raise ConfigError(["secure-aggregation needs dp = user: the clipping norm sets SecAgg+'s quantization range"])
        super().__init__(
            grid, config, n_items=n_items, expected_nodes=expected_nodes, timeout=timeout, patience=patience,
            client_order=False, private_evaluation=private_evaluation,
        )
        self.context = context
        self.clipping_range = config.privacy.clipping_norm
        self.share_fraction = share_fraction
        self.threshold_fraction = threshold_fraction

    def statistics(self, clients: Sequence[int], phase: str, request: Arrays) -> Iterator[Arrays | Part | None]:
        started = time.perf_counter()
        number = PHASES.index(phase) + 1
        metered = _MeteredGrid(self.links.grid)
        strategy = secure_mean(
            metered, self.context, clients, [request[n] for n in REQUEST_NAMES[phase]],
            {protocol.RUN_CONFIG: self.links.run_config, protocol.SERVER_ROUND: number, protocol.PHASE: phase},
            round_=number, clipping_range=self.clipping_range, timeout=self.links.timeout,
            share_fraction=self.share_fraction, threshold_fraction=self.threshold_fraction,
        )
        usage = metered.usage(number, started=started, seconds="seconds")
        if usage is not None:
            self.uploads.append(usage)
        logger.info("phase %s: secure aggregation of %d of %d devices", phase, strategy.contributors, len(clients))
        for _ in range(len(clients) - strategy.contributors):
            yield None  # dropped out of secure aggregation
        if strategy.mean is not None:
            total = strategy.mean[0].astype(np.float64) * strategy.contributors
            yield Part({STATISTIC_NAMES[phase]: total}, strategy.contributors)
