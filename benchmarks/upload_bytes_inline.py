"""Upload bytes per device per round through the real device ClientApp, in one process.

The default NeuMF on N ML-100K devices, one training round through the server's
transports (plain: :class:`server.transport.GridTransport`; SecAgg+:
:class:`server.secagg.SecAggTransport` with Flower's real ``SecAggPlusWorkflow`` and
``secaggplus_mod``), the messages handed straight to ``clients.device.app`` instead of
over the network. Prints the bytes the server received per device (array payloads,
plus SecAgg+'s keys and shares, as ``results.json`` counts them) against the dense
float32 update, for ``upload-bits`` 0, 8 and 4 and for SecAgg+.

    PYTHONPATH=. FEDREC_DATA_DIR=/work/shared/data python3 benchmarks/upload_bytes_inline.py --devices 10
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from clients.device import app as device_app
from fedrec.config import parse_run_config
from fedrec.data import load_movielens_100k
from fedrec.data.location import resolve_data_dir
from fedrec.deploy.device import DeviceFiles, DeviceState, save_state
from fedrec.deploy.fleet import split_fleet
from fedrec.models import init_shared, shared_spec
from server.secagg import SecAggTransport
from server.transport import GridTransport


class _InlineGrid(Grid):
    """Delivers each message to the device ClientApp in this process (one Context per node)."""

    def __init__(self, node_configs: dict[int, dict[str, Any]]) -> None:
        self.contexts = {n: Context(run_id=1, node_id=n, node_config=c, state=RecordDict(), run_config={}) for n, c in node_configs.items()}
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> Iterable[Any]:
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            msg = copy.deepcopy(msg)
            try:
                reply = device_app(message=msg, context=self.contexts[msg.metadata.dst_node_id])
            except Exception as err:  # noqa: BLE001 -- what a SuperNode does with a raising ClientApp
                reply = Message(Error(code=2, reason=str(err)), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            replies.append(reply)
        return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # Flower stamps messages with the identity of the process's task (set by its runtime).
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1  # type: ignore[attr-defined]
    data = load_movielens_100k(resolve_data_dir())
    with tempfile.TemporaryDirectory() as tmp:
        fleet = split_fleet(data, Path(tmp) / "devices", devices=args.devices, rating_threshold=0.0, rng=np.random.default_rng(0))
        nodes = {}
        for k, device in enumerate(fleet):
            save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=100 + k))
            nodes[10 + k] = {"data-path": str(device.data_path)}
        base = {"model": "neumf", "seed": 0, "epsilon": 50.0, "ledger-key": str(Path(tmp) / "k.pem")}
        model = parse_run_config(base).model.build(len(data.item_ids))
        dense = 4 * sum(int(np.prod(s)) for s in shared_spec(model).values())
        shared = init_shared(model, seed=0)
        print(f"default NeuMF, {args.devices} devices, one round; dense float32 update {dense:,} bytes")
        print("| upload | bytes per device per round | vs dense float32 |")
        print("|---|---|---|")
        for label, values, secure in [
            ("plain, float32 (upload-bits 0)", {}, False), ("plain, upload-bits 8", {"upload-bits": 8}, False),
            ("plain, upload-bits 4", {"upload-bits": 4}, False), ("SecAgg+ (uint32 masked vector)", {}, True),
        ]:
            config = parse_run_config({**base, **values})
            grid = _InlineGrid(nodes)
            common: dict[str, Any] = {"expected_nodes": len(nodes), "timeout": 600.0, "patience": 1.0}
            transport = (
                SecAggTransport(grid, config, context=Context(1, 0, {}, RecordDict(), {}), **common)
                if secure else GridTransport(grid, config, client_order=False, **common)
            )
            transport.train(sorted(nodes), shared, round_=1)
            size = transport.uploads[0]["bytes_per_device"]
            print(f"| {label} | {size:,.0f} | {size / dense:.4f}x |", flush=True)


if __name__ == "__main__":
    main()
