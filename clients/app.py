"""The Flower ClientApp: parse the message, call fedrec, reply.

A family that trains by rounds (NeuMF, GMF) answers ``train`` and ``evaluate``; a
family of statistics releases (DP-EASE) answers ``query.statistics`` (one clipped
statistic of the device's own training items for a phase, computed by the family) and
``evaluate.ease`` (its metrics with the release, scored on the device).

Private state (the user vectors) is kept in the node's ``Context.state`` between
rounds and never put in a reply. Only ``result.update`` (shared tensors) is sent.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.records import to_arrays, to_record
from fedrec import protocol
from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.odometer import consider
from fedrec.families import family_of
from fedrec.federation.device import Device, simulated_population
from fedrec.training.local import PrivateState

# Simulated devices share two cores; one thread each avoids oversubscription.
torch.set_num_threads(1)

PRIVATE = "fedrec-private"

app = ClientApp()


def _config(msg: Message) -> tuple[RunConfig, ConfigRecord]:
    record = msg.content.config_records[protocol.CONFIG]
    return parse_run_config(protocol.decode_run_config(str(record[protocol.RUN_CONFIG]))), record


def _load_private(context: Context) -> PrivateState | None:
    if PRIVATE not in context.state.array_records:
        return None
    stored = to_arrays(context.state.array_records[PRIVATE])
    history = tuple((float(z), float(q), int(n)) for z, q, n in stored["dp_history"])
    return PrivateState(
        user_gmf=stored["user_gmf"], user_mlp=stored["user_mlp"], rounds_trained=int(stored["rounds_trained"][0]),
        dp_history=history,
    )


def _store_private(context: Context, state: PrivateState) -> None:
    context.state[PRIVATE] = to_record(
        {
            "user_gmf": state.user_gmf, "user_mlp": state.user_mlp, "rounds_trained": np.array([state.rounds_trained]),
            "dp_history": np.array(state.dp_history, dtype=np.float64).reshape(-1, 3),
        }
    )


def _device(context: Context, config: RunConfig) -> Device:
    return Device.simulated(config, int(context.node_config["partition-id"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    config, record = _config(msg)
    device = _device(context, config)
    result = device.train(
        shared=to_arrays(msg.content.array_records[protocol.ARRAYS]),
        private=_load_private(context),
        config=config,
        round_=int(str(record[protocol.SERVER_ROUND])),
    )
    _store_private(context, result.private)
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: result.num_examples, protocol.TRAIN_LOSS: result.loss,
            protocol.LOCAL_EPSILON: result.local_epsilon, protocol.CLIENT_ID: device.client_id,
        }
    )
    upload = device.upload(result.update, config=config, round_=int(str(record[protocol.SERVER_ROUND])))
    return Message(RecordDict({protocol.ARRAYS: to_record(upload), protocol.METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config, record = _config(msg)
    metrics = _device(context, config).evaluate(
        shared=to_arrays(msg.content.array_records[protocol.ARRAYS]),
        private=_load_private(context),
        config=config,
        which=str(record[protocol.HELD_OUT]),
    )
    return Message(RecordDict({protocol.METRICS: MetricRecord(dict(metrics))}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which client this node is: its partition id in a simulation, -1 on a real device."""
    client_id = int(context.node_config.get("partition-id", -1))
    return Message(RecordDict({protocol.METRICS: MetricRecord({protocol.CLIENT_ID: client_id})}), reply_to=msg)


@app.query(protocol.PLAN_ACTION)
def plan(msg: Message, context: Context) -> Message:
    """A job's signed privacy plan: a simulated device (no budget of its own) accepts any
    plan its ledger key signed."""
    decision = consider(None, str(msg.content.config_records[protocol.CONFIG][protocol.JOB_PLAN]), channel=str(msg.metadata.run_id))
    return Message(RecordDict({protocol.METRICS: MetricRecord({protocol.ACCEPTED: int(decision.accepted)})}), reply_to=msg)


@app.query(protocol.STATISTICS_ACTION)
def statistics(msg: Message, context: Context) -> Message:
    """A release of statistics (DP-EASE, ...): this device's statistic for the phase in the message, nothing else."""
    config, record = _config(msg)
    data = simulated_population(config).split.client(int(context.node_config["partition-id"]))
    statistic = family_of(config).device_statistic(
        data, phase=str(record[protocol.PHASE]), request=to_arrays(msg.content.array_records[protocol.ARRAYS]),
        config=config,
    )
    return Message(RecordDict({protocol.ARRAYS: to_record(statistic)}), reply_to=msg)


@app.evaluate(protocol.EASE_EVALUATE_ACTION)
def evaluate_ease(msg: Message, context: Context) -> Message:
    """A release of statistics: this device's metrics with the release, scored on the device."""
    config, record = _config(msg)
    data = simulated_population(config).split.client(int(context.node_config["partition-id"]))
    release = to_arrays(msg.content.array_records[protocol.ARRAYS])
    metrics = family_of(config).device_evaluate(data, release=release, which=str(record[protocol.HELD_OUT]), config=config)
    return Message(RecordDict({protocol.METRICS: MetricRecord(dict(metrics))}), reply_to=msg)
