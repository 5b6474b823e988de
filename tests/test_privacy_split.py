"""What leaves the device: only the shared tensors, never the private user vectors."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.app import PRIVATE, train
from clients.records import to_arrays, to_record
from fedrec import protocol
from fedrec.federation.device import Device
from fedrec.models import init_shared, shared_spec


def test_local_update_returns_only_shared_tensors(tiny_config) -> None:
    device = Device.simulated(tiny_config, 0)
    shared = init_shared(device.model, seed=0)
    result = device.train(shared=shared, private=None, config=tiny_config, round_=1)
    assert set(result.update) == set(shared_spec(device.model))
    assert not any(name.startswith("user") for name in result.update)
    # the private vectors did learn, and they are not among the uploaded arrays
    assert np.abs(result.private.user_gmf - device.fresh_private(tiny_config.seed).user_gmf).sum() > 0
    uploaded = np.concatenate([v.ravel() for v in result.update.values()])
    assert result.private.user_gmf.size > 0
    assert not np.isin(result.private.user_gmf, uploaded).all()


@pytest.fixture()
def server_identity():
    """Messages record who sends them; outside a Flower runtime we say it ourselves."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None


def test_flower_client_reply_has_only_shared_tensors(tiny_config, server_identity) -> None:
    device = Device.simulated(tiny_config, 0)
    shared = init_shared(device.model, seed=0)
    content = RecordDict(
        {
            protocol.ARRAYS: to_record(shared),
            protocol.CONFIG: ConfigRecord(
                {protocol.RUN_CONFIG: protocol.encode_run_config(tiny_config.to_flat()), protocol.SERVER_ROUND: 1}
            ),
        }
    )
    message = Message(content, dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 6}, state=RecordDict(), run_config={})
    reply = train(message, context)
    sent = reply.content
    assert set(sent.array_records) == {protocol.ARRAYS}
    assert set(to_arrays(sent.array_records[protocol.ARRAYS])) == set(shared_spec(device.model))
    assert PRIVATE in context.state.array_records  # kept on the device
    private = to_arrays(context.state.array_records[PRIVATE])
    assert set(private) == {"user_gmf", "user_mlp", "rounds_trained", "dp_history"}
