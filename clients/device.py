"""The ClientApp for a real device (Flower's deployment runtime).

The SuperNode's node config names the device's data file (``data-path=...``). The
device validates it with fedrec's loaders, keeps its private state in ``state.npz``
next to it, and replies to a training round with nothing but the clipped update of
the shared parameters (plus its record-level epsilon when local DP-SGD is on). An
outbox guard (a Flower mod) refuses to send any other record. For DP-EASE it answers
``query.statistics`` with nothing but the clipped statistic of its own training items
for the phase asked, and ``evaluate.ease`` with its metrics under the released weights.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Status,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key
from flwr.compat.common import recorddict_compat as compat

from clients.records import to_arrays, to_record
from fedrec import protocol
from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.device import LocalDevice
from fedrec.deploy.odometer import consider, device_odometer, require_accepted
from fedrec.dpease.run import REQUEST_NAMES, STATISTIC_NAMES
from fedrec.errors import ConfigError, DataError, FedrecError
from fedrec.families import family_of
from fedrec.models import shared_spec
from fedrec.privacy.odometer import Odometer

torch.set_num_threads(1)  # a phone-sized workload; several devices share a core in the demo

logger = logging.getLogger(__name__)

DATA_PATH = "data-path"  # node-config key
TELEMETRY = "telemetry.json"  # device-local: peak memory of the last ClientApp process
ALLOWED_TRAIN_METRICS = frozenset({protocol.LOCAL_EPSILON})
# SecAgg+'s legacy FitRes: the update, a constant weight of 1 and an OK status.
FITRES_SHAPE = {
    "arrays": {"fitres.parameters"}, "metrics": {"fitres.num_examples": {"num_examples"}},
    "config": {"fitres.metrics": set(), "fitres.status": {"code", "message"}},
}


def _carries_only_the_update(content: RecordDict) -> bool:
    metric_keys = {k for r in content.metric_records.values() for k in r}
    if set(content.array_records) == {protocol.ARRAYS}:
        return not content.config_records and metric_keys <= ALLOWED_TRAIN_METRICS
    return (
        set(content.array_records) == FITRES_SHAPE["arrays"]
        and {n: set(r) for n, r in content.metric_records.items()} == FITRES_SHAPE["metrics"]
        and {n: set(r) for n, r in content.config_records.items()} == FITRES_SHAPE["config"]
        and content.metric_records["fitres.num_examples"]["num_examples"] == 1
    )


def _carries_only_one_statistic(content: RecordDict, uploads: frozenset[str]) -> bool:
    """One array, named as one of the family's declared uploads, and nothing else."""
    if set(content.array_records) != {protocol.ARRAYS} or content.config_records or content.metric_records:
        return False
    names = set(content.array_records[protocol.ARRAYS])
    return len(names) == 1 and names <= uploads


def _declared_uploads(msg: Message) -> frozenset[str]:
    """The uploads the run's family declares (nothing where the message names no run)."""
    record = msg.content.config_records.get(protocol.CONFIG)
    if record is None or protocol.RUN_CONFIG not in record:
        return frozenset()
    config = parse_run_config(protocol.decode_run_config(str(record[protocol.RUN_CONFIG])))
    return family_of(config).uploads


def outbox_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Refuse to send a training reply that carries anything but the shared update, or a
    statistics reply that carries anything but one statistic the run's family declares."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    kind = msg.metadata.message_type
    if kind == "train" and not _carries_only_the_update(reply.content):
        raise FedrecError("outbox guard: a training reply may carry only the shared-parameter update")
    if kind == protocol.STATISTICS and not _carries_only_one_statistic(reply.content, _declared_uploads(msg)):
        raise FedrecError("outbox guard: a statistics reply may carry only the clipped statistic")
    return reply


def secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ client protocol, for rounds the server runs through SecAgg+."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return compact_masked_vector(secaggplus_mod(msg, context, call_next), context)
    return call_next(msg, context)


def masked_dtype(modulus: int) -> np.dtype:
    """The narrowest unsigned integer that holds every residue modulo ``modulus`` (a power of 2)."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if modulus - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"SecAgg+ modulus {modulus} does not fit in 64 bits")


def compact_masked_vector(reply: Message, context: Context) -> Message:
    """Send SecAgg+'s masked vector in the narrowest unsigned dtype its modulus allows.

    Flower's mod uploads the masked residues (all in ``[0, modulus)``, modulus 2^32 by
    default) as int64. Stored as uint32 they are the same numbers in half the bytes. The
    server's workflow adds the devices' vectors element-wise and reduces modulo the
    modulus: uint32 additions wrap modulo 2^32, a multiple of any power-of-two modulus up
    to 2^32, so the unmasked sum is unchanged (``tests/deploy/test_secagg.py``).
    """
    if reply.has_error() or RECORD_KEY_CONFIGS not in reply.content.config_records:
        return reply
    configs = reply.content.config_records[RECORD_KEY_CONFIGS]
    if Key.MASKED_PARAMETERS not in configs:
        return reply
    modulus = int(str(context.state.config_records[RECORD_KEY_STATE]["mod_range"]))
    dtype = masked_dtype(modulus)
    vectors = [bytes_to_ndarray(b) for b in cast(list[bytes], configs[Key.MASKED_PARAMETERS])]
    if any(v.size and (v.min() < 0 or v.max() >= modulus) for v in vectors):
        return reply  # not reduced residues: leave Flower's payload as it is
    configs[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(v.astype(dtype)) for v in vectors]
    return reply


# Order matters: SecAgg+ masks what the guard has checked.
app = ClientApp(mods=[secure_aggregation, outbox_guard])


def _open(msg: Message, context: Context) -> tuple[LocalDevice, RunConfig, int]:
    if "fitins.config" in msg.content.config_records:  # a SecAgg+ round (legacy FitIns)
        record = msg.content.config_records["fitins.config"]
    else:
        record = msg.content.config_records[protocol.CONFIG]
    config = parse_run_config(protocol.decode_run_config(str(record[protocol.RUN_CONFIG])))
    path = context.node_config.get(DATA_PATH)
    if not path:
        raise ConfigError([f"node config has no {DATA_PATH}: start the SuperNode with --node-config '{DATA_PATH}=\"FILE\"'"])
    try:
        local = LocalDevice.open(str(path), config)
    except DataError as err:
        # The details (file name, line) stay in the device's log; the server only
        # learns that this device's data is unusable.
        logger.error("device data unusable: %s", err)
        raise FedrecError("the device's data file is unusable (details in the device log)") from None
    round_ = int(str(record[protocol.SERVER_ROUND]))
    # a device with its own budget answers only jobs whose signed plan it accepted
    require_accepted(_odometer(context), channel=str(msg.metadata.run_id), release=f"{msg.metadata.message_type} {round_}")
    return local, config, round_


def _note_memory(local: LocalDevice) -> None:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    telemetry = {"peak_rss_bytes": peak_kib * 1024, "at": time.time()}
    Path(local.files.state.parent / TELEMETRY).write_text(json.dumps(telemetry))


@app.train()
def train(msg: Message, context: Context) -> Message:
    local, config, round_ = _open(msg, context)
    secure = "fitins.parameters" in msg.content.array_records
    if secure and protocol.PHASE in msg.content.config_records["fitins.config"]:  # a release of statistics
        return _secure_statistic(msg, local, config)
    if secure:
        if config.privacy.local_dp:
            raise ConfigError(["local-dp with secure-aggregation: the device's epsilon cannot be reported through SecAgg+"])
        names = sorted(shared_spec(local.device.model))  # the server sends tensors in name order
        parameters = compat.recorddict_to_fitins(msg.content, keep_input=True).parameters
        shared = dict(zip(names, parameters_to_ndarrays(parameters), strict=True))
    else:
        shared = to_arrays(msg.content.array_records[protocol.ARRAYS])
    result = local.device.train(shared=shared, private=local.state.private, config=config, round_=round_)
    local.remember(shared=shared, config=config, round_=round_, private=result.private)
    _note_memory(local)
    if secure:
        update = ndarrays_to_parameters([result.update[n] for n in names])
        fitres = FitRes(status=Status(Code.OK, ""), parameters=update, num_examples=1, metrics={})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
    # SecAgg+ rounds (above) send the float update: SecAgg+ quantizes it itself
    content = RecordDict({protocol.ARRAYS: to_record(local.device.upload(result.update, config=config, round_=round_))})
    if config.privacy.local_dp:
        content[protocol.METRICS] = MetricRecord({protocol.LOCAL_EPSILON: result.local_epsilon})
    return Message(content, reply_to=msg)


def _secure_statistic(msg: Message, local: LocalDevice, config: RunConfig) -> Message:
    """DP-EASE under SecAgg+: the request (the top items) arrives as the FitIns
    parameters; the statistic leaves as the FitRes parameters, which the mod masks."""
    phase = str(msg.content.config_records["fitins.config"][protocol.PHASE])
    parameters = compat.recorddict_to_fitins(msg.content, keep_input=True).parameters
    request = dict(zip(REQUEST_NAMES[phase], parameters_to_ndarrays(parameters), strict=True))
    statistic = family_of(config).device_statistic(local.device.data, phase=phase, request=request, config=config)
    _note_memory(local)
    upload = ndarrays_to_parameters([statistic[STATISTIC_NAMES[phase]]])
    fitres = FitRes(status=Status(Code.OK, ""), parameters=upload, num_examples=1, metrics={})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    local, config, round_ = _open(msg, context)
    shared = to_arrays(msg.content.array_records[protocol.ARRAYS])
    local.remember(shared=shared, config=config, round_=round_)
    record = msg.content.config_records[protocol.CONFIG]
    metrics = local.device.evaluate(shared=shared, private=local.state.private, config=config, which=str(record[protocol.HELD_OUT]))
    _note_memory(local)
    return Message(RecordDict({protocol.METRICS: MetricRecord(dict(metrics))}), reply_to=msg)


def _odometer(context: Context) -> Odometer | None:
    """This device's privacy odometer beside its data (None without device-epsilon)."""
    return device_odometer(context.node_config, str(context.node_config.get(DATA_PATH, "")))


@app.query(protocol.PLAN_ACTION)
def plan(msg: Message, context: Context) -> Message:
    """A job's signed privacy plan: accept it if it fits this device's own budget."""
    record = msg.content.config_records[protocol.CONFIG]
    decision = consider(_odometer(context), str(record[protocol.JOB_PLAN]), channel=str(msg.metadata.run_id))
    return Message(RecordDict({protocol.METRICS: MetricRecord({protocol.ACCEPTED: int(decision.accepted)})}), reply_to=msg)


@app.query(protocol.STATISTICS_ACTION)
def statistics(msg: Message, context: Context) -> Message:
    """DP-EASE: the clipped statistic of this device's training items for the phase asked."""
    local, config, _ = _open(msg, context)
    record = msg.content.config_records[protocol.CONFIG]
    statistic = family_of(config).device_statistic(
        local.device.data, phase=str(record[protocol.PHASE]),
        request=to_arrays(msg.content.array_records[protocol.ARRAYS]), config=config,
    )
    _note_memory(local)
    return Message(RecordDict({protocol.ARRAYS: to_record(statistic)}), reply_to=msg)


@app.evaluate(protocol.EASE_EVALUATE_ACTION)
def evaluate_ease(msg: Message, context: Context) -> Message:
    """DP-EASE: this device's metrics with the released weights, scored on the device."""
    local, config, round_ = _open(msg, context)
    record = msg.content.config_records[protocol.CONFIG]
    release = to_arrays(msg.content.array_records[protocol.ARRAYS])
    local.remember(shared=release, config=config, round_=round_)  # `fedrec recommend` scores with it on the device
    metrics = family_of(config).device_evaluate(
        local.device.data, release=release, which=str(record[protocol.HELD_OUT]), config=config
    )
    _note_memory(local)
    return Message(RecordDict({protocol.METRICS: MetricRecord(dict(metrics))}), reply_to=msg)
