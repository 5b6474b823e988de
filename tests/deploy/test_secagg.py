"""SecAgg+ through fedrec's transport and device app, in one process.

The grid here delivers each message straight to the real device ClientApp (with
Flower's real ``secaggplus_mod`` and ``SecAggPlusWorkflow``); only the network is
left out. The deployment tests in ``test_fleet.py`` use real processes.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from clients.device import app as device_app
from clients.device import masked_dtype
from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.device import DeviceFiles, DeviceState, LocalDevice, save_state
from fedrec.deploy.fleet import split_fleet
from fedrec.errors import ConfigError
from fedrec.federation.compression import CODES, decode_update, payload_scales
from fedrec.federation.rounds import check_update
from fedrec.models import init_shared, shared_spec
from server.secagg import SecAggTransport
from server.transport import GridTransport


class InlineGrid(Grid):
    """Delivers messages to a ClientApp in this process (the device app unless told
    otherwise), one Context per node."""

    def __init__(self, node_configs: dict[int, dict[str, Any]], app: ClientApp = device_app) -> None:
        self.app = app
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={})
            for node, cfg in node_configs.items()
        }
        self.sent: list[Message] = []  # replies, as the server received them
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
            msg = copy.deepcopy(msg)  # on the wire every device gets its own copy (the mod pops keys)
            try:
                reply = self.app(message=msg, context=self.contexts[msg.metadata.dst_node_id])
            except Exception as err:  # noqa: BLE001 -- what the SuperNode does with a raising ClientApp
                reply = Message(Error(code=2, reason=str(err)), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id  # as the SuperNode stamps it
            self.sent.append(reply)
            replies.append(reply)
        return replies


@pytest.fixture()
def setup(ml100k: Interactions, tmp_path: Path, flower_task_identity: None) -> tuple[RunConfig, dict[int, dict[str, Any]]]:
    config = parse_run_config({"model": "neumf", "gmf-dim": 4, "mlp-layers": "8,4", "seed": 2, "clipping-norm": 0.5, "ledger-key": str(tmp_path / "k.pem")})
    fleet = split_fleet(ml100k, tmp_path / "devices", devices=4, rating_threshold=0.0, rng=np.random.default_rng(3))
    for k, device in enumerate(fleet):
        save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=100 + k))
    return config, {10 + k: {"data-path": str(d.data_path)} for k, d in enumerate(fleet)}


def _plain_sum(config: RunConfig, nodes: dict[int, dict[str, Any]], shared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = {k: np.zeros_like(v, dtype=np.float64) for k, v in shared.items()}
    for cfg in nodes.values():
        local = LocalDevice.open(cfg["data-path"], config)
        update = local.device.train(shared=shared, private=None, config=config, round_=1).update
        for k in total:
            total[k] += update[k]
    return total


def test_secure_aggregation_returns_the_sum_of_the_clipped_updates(setup: tuple[RunConfig, dict[int, dict[str, Any]]]) -> None:
    config, nodes = setup
    grid = InlineGrid(nodes)
    transport = SecAggTransport(grid, config, context=Context(1, 0, {}, RecordDict(), {}), expected_nodes=4, timeout=60, patience=1)
    shared = init_shared(config.model.build(1682), seed=0)
    expected = _plain_sum(config, nodes, shared)  # same device seeds, same round: the same updates
    [reply] = transport.train(sorted(nodes), shared, round_=1)
    assert reply.contributors == 4 and reply.update is not None
    step = 2 * config.privacy.clipping_norm / 4194304  # SecAgg+'s quantization step
    for name, value in expected.items():
        np.testing.assert_allclose(reply.update[name], value, atol=4 * step * 4 + 1e-6)
    # what left the devices in the masked stage: masked integers, never the float update
    masked = [
        m for m in grid.sent
        if Key.MASKED_PARAMETERS in m.content.config_records.get(RECORD_KEY_CONFIGS, {})
    ]
    assert len(masked) == 4
    for m in masked:
        assert not any(len(r) for r in m.content.array_records.values())  # the float update was removed
        payload = cast(list[bytes], m.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
        vectors = [bytes_to_ndarray(b) for b in payload]
        # residues modulo 2^32 travel as uint32 (clients.device.compact_masked_vector), not Flower's int64
        assert [v.dtype for v in vectors] == [np.dtype(np.uint32)] * len(vectors)
        assert [v.shape for v in vectors] == [(1,)] + [expected[n].shape for n in sorted(expected)]  # weight + tensors
    assert transport.uploads[0]["devices"] == 4
    values = sum(v.size for v in expected.values())
    # all four stages: the masked vector at 4 bytes per coordinate (+ the weight) plus keys and shares
    assert 4 * values < transport.uploads[0]["bytes_per_device"] < 4 * values + 8_000


def test_masked_dtype_holds_every_residue() -> None:
    assert masked_dtype(2**32) == np.uint32 and masked_dtype(2**16) == np.uint16 and masked_dtype(2**17) == np.uint32
    # wrapping uint32 addition is addition modulo any power-of-two modulus <= 2^32
    rng = np.random.default_rng(0)
    for modulus in (2**16, 2**20, 2**32):
        a, b = (rng.integers(0, modulus, 1000, dtype=np.int64) for _ in range(2))
        wrapped = (a.astype(masked_dtype(modulus)) + b.astype(masked_dtype(modulus))) & (modulus - 1)
        np.testing.assert_array_equal(wrapped, (a + b) % modulus)


def test_a_device_that_fails_is_a_dropout_and_the_rest_are_aggregated(setup: tuple[RunConfig, dict[int, dict[str, Any]]]) -> None:
    config, nodes = setup
    Path(nodes[12]["data-path"]).write_text("user,item,rating,timestamp\n1,2,3\n")
    transport = SecAggTransport(InlineGrid(nodes), config, context=Context(1, 0, {}, RecordDict(), {}), expected_nodes=4, timeout=60, patience=1)
    replies = transport.train(sorted(nodes), init_shared(config.model.build(1682), seed=0), round_=1)
    assert sum(r.update is None for r in replies) == 1
    assert [r.contributors for r in replies if r.update is not None] == [3]


def test_plain_transport_decodes_quantized_uploads(setup: tuple[RunConfig, dict[int, dict[str, Any]]], tmp_path: Path) -> None:
    config, nodes = setup
    config = parse_run_config({**config.to_flat(), "upload-bits": 8})
    model = config.model.build(1682)
    shared = init_shared(model, seed=0)
    dense = _plain_sum(config, {10: nodes[10]}, shared)  # device 10's clipped float32 update
    transport = GridTransport(InlineGrid(nodes), config, expected_nodes=4, patience=1)
    replies = transport.train(sorted(nodes), shared, round_=1)
    assert transport.upload_contents == {"arrays:arrays": [CODES]}
    assert all(r.encoded for r in replies)
    spec = shared_spec(model)
    decoded, problem = decode_update(replies[0].update, spec, bits=8)
    assert problem == "" and decoded is not None and check_update(decoded, spec) == ""
    for i, name in enumerate(sorted(spec)):
        step = float(payload_scales(cast(dict, replies[0].update), len(spec))[i, 1])
        assert np.all(np.abs(decoded[name] - dense[name]) <= step * (1 + 1e-5) + 1e-7), name
    # bytes the server received per device: at most 1/4 of what the dense float32 update takes
    dense_transport = GridTransport(InlineGrid(nodes), parse_run_config({**config.to_flat(), "upload-bits": 0}), expected_nodes=4, patience=1)
    dense_transport.train(sorted(nodes), shared, round_=1)
    assert transport.uploads[0]["bytes_per_device"] <= dense_transport.uploads[0]["bytes_per_device"] / 4


def test_plain_transport_receives_only_the_update(setup: tuple[RunConfig, dict[int, dict[str, Any]]]) -> None:
    config, nodes = setup
    transport = GridTransport(InlineGrid(nodes), config, expected_nodes=4, patience=1)
    replies = transport.train(sorted(nodes), init_shared(config.model.build(1682), seed=0), round_=1)
    assert all(r.update is not None for r in replies)
    assert transport.upload_contents == {"arrays:arrays": sorted(replies[0].update or {})}


def test_secure_aggregation_requires_user_level_dp(setup: tuple[RunConfig, dict[int, dict[str, Any]]]) -> None:
    config, nodes = setup
    off = parse_run_config({**config.to_flat(), "dp": "off"})
    with pytest.raises(ConfigError, match="needs dp = user"):
        SecAggTransport(InlineGrid(nodes), off, context=Context(1, 0, {}, RecordDict(), {}), expected_nodes=4, timeout=60, patience=1)
