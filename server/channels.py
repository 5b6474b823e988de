"""Flower's channels to the devices for every model family (:class:`fedrec.families.contract.Channels`).

A family opens the exchange it needs: training rounds (:class:`server.transport.GridTransport`)
or releases of statistics (:class:`server.statistics.GridStatistics`), through SecAgg+
where the deployment asks for it. The server app never asks which family it runs.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

from fedrec.config import RunConfig
from fedrec.deploy.catalog import Catalog
from server.statistics import GridStatistics
from server.transport import GridTransport


class GridChannels:
    """Opens a Grid transport of the kind a family asks for.

    ``simulated``: the population is simulated from the data set (Flower's simulation
    runtime); a deployment's server knows ``n_items`` and the public ``catalog`` (item
    ids, titles, content) and nothing else of the data.
    ``secure_context``: run the uploads through SecAgg+ (a deployment's ``Context``).
    """

    def __init__(
        self, grid: Grid, config: RunConfig, *, n_items: int, expected_nodes: int, simulated: bool,
        catalog: Catalog | None = None, secure_context: Context | None = None, **options: Any,
    ) -> None:
        self.grid, self.config, self.n_items, self.simulated, self.catalog = grid, config, n_items, simulated, catalog
        self.expected_nodes, self.secure_context, self.options = expected_nodes, secure_context, options
        self.opened: GridTransport | GridStatistics | None = None  # what the family opened: its uploads are reported

    def rounds(self) -> GridTransport:
        if self.secure_context is not None:
            from server.secagg import SecAggTransport

            self.opened = SecAggTransport(
                self.grid, self.config, context=self.secure_context, expected_nodes=self.expected_nodes, **self.options
            )
        else:
            self.opened = GridTransport(
                self.grid, self.config, expected_nodes=self.expected_nodes, client_order=self.simulated, **self.options
            )
        return self.opened

    def statistics(self) -> GridStatistics:
        if self.secure_context is not None:
            from server.secagg import SecAggStatistics

            self.opened = SecAggStatistics(
                self.grid, self.config, context=self.secure_context, n_items=self.n_items,
                expected_nodes=self.expected_nodes, **self.options,
            )
        else:
            self.opened = GridStatistics(
                self.grid, self.config, n_items=self.n_items, expected_nodes=self.expected_nodes,
                client_order=self.simulated, **self.options,
            )
        return self.opened
