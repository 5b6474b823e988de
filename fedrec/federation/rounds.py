"""The federated training loop, written once against a small transport contract.

The Flower ServerApp hands in a transport over Flower's Grid; tests and quick
experiments hand in :class:`InProcessTransport`, which calls the very same device
functions directly. Sampling, aggregation, evaluation and results live here only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from fedrec.config import FederationSettings, RunConfig
from fedrec.errors import FedrecError
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.federation.checkpoint import Checkpoint, StatefulTransport, load_checkpoint, save_checkpoint
from fedrec.federation.compression import decode_update, payload_bytes
from fedrec.federation.device import Device
from fedrec.federation.fedavg import ServerOptimizer
from fedrec.models import Arrays, ModelConfig, init_shared, shared_spec
from fedrec.privacy.aggregator import Aggregator, make_aggregator
from fedrec.privacy.device_odometers import announce_job, dp_fedavg_releases
from fedrec.privacy.dp_fedavg import Part
from fedrec.privacy.eval_release import evaluation_generator, planned_evaluations, release_metrics, sensitivity
from fedrec.privacy.job_plan import PlannedRelease
from fedrec.privacy.sampling import PoissonSampler
from fedrec.privacy.session import PrivacySession
from fedrec.training.local import PrivateState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReply:
    client: int  # the transport's handle of the client
    update: Mapping[str, np.ndarray] | None  # None if the client failed; any mapping (the in-process engine's builds on read)
    num_examples: int = 0
    loss: float = float("nan")
    local_epsilon: float = 0.0
    error: str = ""
    contributors: int = 1  # > 1: ``update`` is already the sum of that many clients' updates (secure aggregation)
    encoded: bool = False  # ``update`` is a quantized payload (fedrec.federation.compression) the server decodes first


class Transport(Protocol):
    """How the server reaches its clients (Flower's Grid, or direct calls)."""

    def clients(self) -> list[int]:
        """Every client, in a fixed order that is the same for every engine."""
        ...

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]: ...

    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]: ...


@dataclass
class RunHistory:
    rounds: list[dict[str, float]] = field(default_factory=list)  # per round: sampled, aggregated, rejected, loss, ...
    evals: list[dict[str, float]] = field(default_factory=list)  # per evaluation: round + metrics
    rejected: int = 0  # replies not aggregated: failed (no update) plus invalid updates
    rounds_run: int = 0
    stopped_by_budget: bool = False
    privacy: dict[str, object] = field(default_factory=dict)  # what results.json reports about DP
    local_epsilon: float = 0.0  # largest record-level epsilon a device reported
    sample_rate: float = 0.0  # q, as the run's sampler decided it
    expected_clients: float = 0.0  # q N
    resumes: int = 0  # times the run was continued from a checkpoint after a crash


PRIVATE_TENSORS = frozenset({"user_gmf", "user_mlp"})  # a device's own vectors: never uploaded
UPDATE_DTYPE = np.dtype(np.float32)  # what every device uploads (fedrec.models.shared_arrays)


def check_update(update: object, spec: dict[str, tuple[int, ...]]) -> str:
    """Empty string if ``update`` is exactly the shared tensors: float32, finite, right shapes.

    Otherwise a one-line reason naming the first problem (tensor names only, never ids).
    A private tensor in an upload is reported as such: it means the device leaked its
    user vectors, which the server must not aggregate (or keep).
    """
    if not isinstance(update, Mapping):
        return f"update is a {type(update).__name__}, expected a mapping of tensor name to array"
    leaked = sorted(str(name) for name in update if name in PRIVATE_TENSORS)
    if leaked:
        return f"update carries private tensors {leaked}"
    if set(update) != set(spec):
        return f"tensors {sorted(map(str, set(update) ^ set(spec)))} missing or unexpected"
    for name, shape in spec.items():
        value = update[name]
        if not isinstance(value, np.ndarray):
            return f"{name} is a {type(value).__name__}, expected a numpy array"
        if tuple(value.shape) != shape:
            return f"{name} has shape {tuple(value.shape)}, expected {shape}"
        if value.dtype != UPDATE_DTYPE:
            return f"{name} has dtype {value.dtype}, expected {UPDATE_DTYPE}"
        if not np.all(np.isfinite(value)):
            return f"{name} is not finite float data"
    return ""


def mean_client_metrics(replies: list[dict[str, float]]) -> dict[str, float]:
    """Each client is one user: the unweighted mean of their metrics."""
    if not replies:
        return {name: float("nan") for name in METRIC_NAMES}
    return {name: float(np.mean([r[name] for r in replies])) for name in METRIC_NAMES}


def run_federated(
    config: RunConfig,
    transport: Transport,
    *,
    model: ModelConfig,
    run_dir: Path,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    resume: bool = False,
) -> tuple[Arrays, RunHistory, dict[str, float]]:
    """Run ``num-rounds`` rounds; return final shared parameters, history, test metrics.

    With DP on, the job's plan (its rounds and, on real devices, its metric releases)
    is announced to the devices before the first round (:func:`announce_job`); a device
    that refuses it is a dropout, never asked, even when sampled. Each round is checked
    against the budget and the plan before it starts and recorded in ``run_dir``'s
    ledger before its aggregate is applied. After every round the server checkpoints
    (:mod:`fedrec.federation.checkpoint`); ``resume`` continues from the last checkpoint
    in ``run_dir``, with every round in the ledger still counted.
    """
    fed = config.federation
    clients = transport.clients()  # in the transport's order: the sampler draws over positions
    sampler = PoissonSampler(expected_clients=fed.clients_per_round, population=len(clients))
    server = _ServerState.fresh(config, model, sampler)
    checkpoint = _matching_checkpoint(config, run_dir) if resume else None
    # Real devices release their evaluation metrics through a DP mechanism; simulations
    # evaluate exactly, and their ledger says so.
    private_eval = config.privacy.enabled and bool(getattr(transport, "private_evaluation", False))
    aggregator = make_aggregator(config, run_dir=run_dir, sampler=sampler, resume=resume, private_evaluation=private_eval)
    if checkpoint is not None:
        server.restore(checkpoint, aggregator=aggregator, transport=transport)
    if resume:
        server.history.resumes += 1
        aggregator.mark_resume(checkpoint_round=server.first - 1)
        logger.info("resuming at round %d of %d", server.first, fed.num_rounds)
    session = getattr(aggregator, "session", None)
    accepted, refused = announce_job(session, transport, clients, _planned(config, aggregator, sampler, private_eval))
    asked = None if len(accepted) == len(clients) else frozenset(accepted)  # None: every device takes part
    evaluation = _Evaluation.of(
        config, transport, clients, session=session if private_eval else None, resumes=server.history.resumes,
        asked=asked,
    )
    logger.info("federation: %d clients, sampling rate %.4f", len(clients), sampler.rate)
    optimizer = ServerOptimizer(lr=fed.server_lr, momentum=fed.server_momentum)
    spec = shared_spec(model)
    for round_ in range(server.first, fed.num_rounds + 1):
        if not _may_run(aggregator, server.history):
            break
        info = _train_round(
            round_, server=server, transport=transport, clients=clients, sampler=sampler, aggregator=aggregator,
            optimizer=optimizer, spec=spec, upload_bits=fed.upload_bits, asked=asked,
        )
        # The new model exists only here until the checkpoint is on disk: nothing derived
        # from it (evaluation, progress) leaves the server before.
        server.save(run_dir, round_, config=config, aggregator=aggregator, transport=transport)
        released = _evaluate_round(round_, info, server=server, evaluation=evaluation, fed=fed)
        if on_round is not None:
            on_round(round_, info)
        if released is None:  # the evaluation would exceed the budget: the run stops before releasing it
            server.history.stopped_by_budget = True
            break
    test = _finish(config, server, aggregator=aggregator, evaluation=evaluation)
    if session is not None:
        server.history.privacy["devices_refused"] = refused  # refused the job's plan (their own budgets): dropouts
    return server.shared, server.history, test


def _planned(config: RunConfig, aggregator: Aggregator, sampler: PoissonSampler, private_eval: bool) -> list[PlannedRelease]:
    """The job's plan (:func:`dp_fedavg_releases`): the aggregator's z, the sampler's q,
    the rounds, and the metric releases of a private evaluation; empty without DP."""
    mechanism = getattr(aggregator, "mechanism", None)
    if mechanism is None:
        return []
    p, fed = config.privacy, config.federation
    return dp_fedavg_releases(
        noise_multiplier=mechanism.noise_multiplier, sample_rate=sampler.rate, clipping_norm=mechanism.clipping_norm,
        rounds=fed.num_rounds,
        evaluations=planned_evaluations(rounds=fed.num_rounds, eval_every=fed.eval_every) if private_eval else 0,
        eval_noise_multiplier=p.eval_noise_multiplier, eval_sensitivity=sensitivity(len(METRIC_NAMES)),
        budget=p.epsilon, delta=p.delta, accountant=p.accountant,
    )


@dataclass
class _ServerState:
    """What the server carries from one round to the next; all of it is checkpointed."""

    shared: Arrays
    buffer: Arrays | None  # the server optimizer's momentum
    rng: np.random.Generator  # the sampler's
    history: RunHistory
    first: int = 1  # the next round to run

    @classmethod
    def fresh(cls, config: RunConfig, model: ModelConfig, sampler: PoissonSampler) -> _ServerState:
        """A new run's state: the seeded initial model, no rounds run."""
        return cls(
            shared=init_shared(model, seed=config.seed), buffer=None, rng=np.random.default_rng([config.seed, 3]),
            history=RunHistory(sample_rate=sampler.rate, expected_clients=sampler.expected_clients),
        )

    def restore(self, checkpoint: Checkpoint, *, aggregator: Aggregator, transport: Transport) -> None:
        """Continue from ``checkpoint``: the model, the generators, the history and the
        simulated devices' private state."""
        self.shared, self.buffer, self.first = checkpoint.shared, checkpoint.buffer, checkpoint.round + 1
        self.rng.bit_generator.state = checkpoint.sampler_rng
        aggregator.restore_rng(checkpoint.noise_rng)
        self.history = RunHistory(**checkpoint.history)
        if isinstance(transport, StatefulTransport) and checkpoint.clients:
            transport.restore_client_state(checkpoint.clients)

    def save(self, run_dir: Path, round_: int, *, config: RunConfig, aggregator: Aggregator, transport: Transport) -> None:
        """Checkpoint the state after ``round_`` (atomically, :func:`save_checkpoint`)."""
        save_checkpoint(
            run_dir,
            Checkpoint(
                round=round_, shared=self.shared, buffer=self.buffer, sampler_rng=dict(self.rng.bit_generator.state),
                noise_rng=aggregator.rng_state(), history=asdict(self.history), ledger_rounds=aggregator.ledger_rounds,
                config_hash=config.digest(),
                clients=transport.client_state() if isinstance(transport, StatefulTransport) else {},
            ),
        )


def _matching_checkpoint(config: RunConfig, run_dir: Path) -> Checkpoint | None:
    """The last checkpoint in ``run_dir`` (None if there is none); an error if it belongs
    to another configuration."""
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None and checkpoint.config_hash != config.digest():
        raise FedrecError(f"the checkpoint in {run_dir} belongs to a different configuration; resume with the run's own")
    return checkpoint


@dataclass(frozen=True)
class _Evaluation:
    """How the server learns the model's metrics: the evaluation users' mean, released
    through the privacy session when devices evaluate privately."""

    transport: Transport
    clients: list[int]  # the evaluation users (all, or ``eval-users`` of them)
    session: PrivacySession | None  # set when metrics are DP releases
    noise_multiplier: float
    rng: np.random.Generator  # the releases' noise

    @classmethod
    def of(
        cls, config: RunConfig, transport: Transport, clients: list[int], *, session: PrivacySession | None, resumes: int,
        asked: frozenset[int] | None = None,
    ) -> _Evaluation:
        """The run's evaluation: ``eval-users`` clients drawn once from the run's seed,
        of which those in ``asked`` (the devices that accepted the job; None: all)."""
        eval_clients = clients
        if 0 < config.federation.eval_users < len(clients):
            rng = np.random.default_rng([config.seed, 5])
            chosen = np.sort(rng.choice(len(clients), size=config.federation.eval_users, replace=False))
            eval_clients = [clients[i] for i in chosen]
        if asked is not None:
            eval_clients = [c for c in eval_clients if c in asked]
        return cls(
            transport=transport, clients=eval_clients, session=session,
            noise_multiplier=config.privacy.eval_noise_multiplier,
            rng=evaluation_generator(seed=config.seed, secure=config.privacy.secure_noise, resumes=resumes),
        )

    def __call__(self, params: Arrays, which: str, round_: int) -> dict[str, float] | None:
        """Mean metrics of the evaluation users; None if releasing them would exceed the budget."""
        if self.session is None:
            return mean_client_metrics(self.transport.evaluate(self.clients, params, which, round_))
        return release_metrics(
            self.session, lambda: self.transport.evaluate(self.clients, params, which, round_), names=METRIC_NAMES,
            purpose=f"evaluation: {which} metrics after round {round_}", noise_multiplier=self.noise_multiplier,
            expected_users=len(self.clients), rng=self.rng,
        )


def _may_run(aggregator: Aggregator, history: RunHistory) -> bool:
    """Whether another round may start; if not, the history says why the run stopped."""
    if aggregator.finished:  # resumed after the run's end was recorded
        history.stopped_by_budget = aggregator.stopped_by_budget
        return False
    if not aggregator.allows_next_round():
        history.stopped_by_budget = True
        return False
    return True


def _train_round(
    round_: int, *, server: _ServerState, transport: Transport, clients: list[int], sampler: PoissonSampler,
    aggregator: Aggregator, optimizer: ServerOptimizer, spec: dict[str, tuple[int, ...]], upload_bits: int,
    asked: frozenset[int] | None = None,
) -> dict[str, float]:
    """One round's training: sample over the whole population, train on the sampled
    devices that accepted the job (``asked``; None: all), accept their replies,
    aggregate, and step the server's model. Returns the round's info, also appended to
    the history."""
    history = server.history
    started = time.perf_counter()
    sampled = sampler.sample(clients, server.rng)
    training = sampled if asked is None else [c for c in sampled if c in asked]  # a refusal is a dropout
    replies = transport.train(training, server.shared, round_) if training else []
    good, failed, invalid, upload_sizes = _accept_replies(replies, spec=spec, upload_bits=upload_bits, round_=round_)
    history.rejected += failed + invalid
    round_local_epsilon = max((r.local_epsilon for r in good), default=0.0)
    history.local_epsilon = max(history.local_epsilon, round_local_epsilon)
    # a secure-aggregation reply is already the sum of its contributors' clipped updates
    parts = [Part(r.update, r.contributors) for r in good if r.update is not None]
    delta = aggregator.aggregate(parts, like=server.shared, round_=round_, local_epsilon=round_local_epsilon)
    if delta is not None:
        server.shared, server.buffer = optimizer.step(server.shared, delta, server.buffer)
    info = {
        "round": float(round_),
        "sampled": float(len(sampled)),
        **({"refused": float(len(sampled) - len(training))} if asked is not None else {}),  # sampled, refused the plan
        "aggregated": float(sum(p.contributors for p in parts)),
        "rejected": float(failed + invalid),  # replies left out of the aggregate ...
        "invalid": float(invalid),  # ... of which updates that failed check_update
        "train_loss": float(np.mean([r.loss for r in good])) if good else float("nan"),
        # mean bytes of the arrays one device uploaded (not the secure-aggregation sum)
        "upload_bytes": float(np.mean(upload_sizes)) if upload_sizes else float("nan"),
        "seconds": time.perf_counter() - started,
    }
    info.update(aggregator.round_info())
    history.rounds.append(info)
    history.rounds_run = round_
    return info


def _evaluate_round(
    round_: int, info: dict[str, float], *, server: _ServerState, evaluation: _Evaluation, fed: FederationSettings,
) -> dict[str, float] | None:
    """The validation metrics every ``eval-every`` rounds (but the last, which
    :func:`_finish` evaluates), added to ``info`` and the history; ``{}`` when none are
    due, None when releasing them would exceed the budget."""
    if not (fed.eval_every and round_ % fed.eval_every == 0 and round_ != fed.num_rounds):
        return {}
    released = evaluation(server.shared, "val", round_)
    if released is not None:
        info.update(released)
        server.history.evals.append({"round": float(round_), **{k: info[k] for k in METRIC_NAMES}})
    return released


def _finish(config: RunConfig, server: _ServerState, *, aggregator: Aggregator, evaluation: _Evaluation) -> dict[str, float]:
    """The final validation and test metrics, then the run's close entry; returns the
    test metrics (NaN where they could not be released)."""
    history = server.history
    final_round = history.rounds_run
    # the final metrics come before the close entry: on real devices they are releases
    unreleased = {name: float("nan") for name in METRIC_NAMES}
    final_val: dict[str, float] | None = unreleased
    test: dict[str, float] | None = unreleased
    if not (evaluation.session is not None and evaluation.session.closed):  # a closed ledger takes no more releases
        final_val = evaluation(server.shared, "val", final_round)
        test = evaluation(server.shared, "test", final_round) if final_val is not None else None
        if final_val is None or test is None:
            history.stopped_by_budget = True
    history.evals.append({"round": float(final_round), **(final_val or unreleased)})
    history.privacy = aggregator.close(stopped_by_budget=history.stopped_by_budget)
    if config.privacy.local_dp:
        history.privacy["local_dp_epsilon_max"] = history.local_epsilon
        history.privacy["local_dp_delta"] = config.privacy.local_delta
    return test or unreleased


def _accept_replies(
    replies: list[TrainReply], *, spec: dict[str, tuple[int, ...]], upload_bits: int, round_: int
) -> tuple[list[TrainReply], int, int, list[int]]:
    """(replies to aggregate, failed, invalid, bytes each single device uploaded).

    A failed client or an invalid update is counted and left out, never a crash.
    """
    good: list[TrainReply] = []
    failed = invalid = 0
    upload_sizes: list[int] = []
    for reply in replies:
        if reply.error or reply.update is None:
            failed += 1
            logger.warning("round %d: a client failed (%s)", round_, reply.error or "no update")
            continue
        if reply.contributors == 1:
            upload_sizes.append(payload_bytes(reply.update))
        if reply.encoded:
            decoded, problem = decode_update(reply.update, spec, bits=upload_bits)
            if decoded is None:
                invalid += 1
                logger.warning("round %d: rejected a malformed encoded update: %s", round_, problem)
                continue
            reply = replace(reply, update=decoded, encoded=False)
        problem = check_update(reply.update, spec)
        if problem:
            invalid += 1
            logger.warning("round %d: rejected an invalid update: %s", round_, problem)
            continue
        good.append(reply)
    return good, failed, invalid, upload_sizes


class InProcessTransport:
    """Calls each device directly, one after the other; private state in a dict.

    The same :class:`Device` functions as the Flower ClientApp, without messages.
    """

    def __init__(self, config: RunConfig, n_clients: int, *, devices: Sequence[Device] | None = None) -> None:
        self.config = config
        # ``devices`` lets a caller federate a population of its own (e.g. cold start's training users)
        self.devices = list(devices) if devices is not None else [Device.simulated(config, c) for c in range(n_clients)]
        self.private: dict[int, PrivateState] = {}

    def clients(self) -> list[int]:
        return list(range(len(self.devices)))

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        replies = []
        for c in clients:
            result = self.devices[c].train(shared=shared, private=self.private.get(c), config=self.config, round_=round_)
            self.private[c] = result.private
            replies.append(
                TrainReply(
                    client=c, update=self.devices[c].upload(result.update, config=self.config, round_=round_),
                    num_examples=result.num_examples, loss=result.loss, local_epsilon=result.local_epsilon,
                    encoded=self.config.federation.upload_bits > 0,
                )
            )
        return replies

    def client_state(self) -> Arrays:
        """Every started device's private state as arrays (row k is client ``ids[k]``)."""
        ids = sorted(self.private)
        states = [self.private[c] for c in ids]
        history = [(c, z, q, steps) for c, s in zip(ids, states) for z, q, steps in s.dp_history]
        return {
            "ids": np.asarray(ids, dtype=np.int64),
            "user_gmf": np.asarray([s.user_gmf for s in states], dtype=np.float32).reshape(len(ids), -1),
            "user_mlp": np.asarray([s.user_mlp for s in states], dtype=np.float32).reshape(len(ids), -1),
            "rounds_trained": np.asarray([s.rounds_trained for s in states], dtype=np.int64),
            "dp_history": np.asarray(history, dtype=np.float64).reshape(len(history), 4),
        }

    def restore_client_state(self, state: Arrays) -> None:
        history: dict[int, list[tuple[float, float, int]]] = {}
        for c, z, q, steps in state["dp_history"]:
            history.setdefault(int(c), []).append((float(z), float(q), int(steps)))
        self.private = {
            int(c): PrivateState(
                user_gmf=state["user_gmf"][k].copy(), user_mlp=state["user_mlp"][k].copy(),
                rounds_trained=int(state["rounds_trained"][k]), dp_history=tuple(history.get(int(c), ())),
            )
            for k, c in enumerate(state["ids"])
        }

    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]:
        return [
            self.devices[c].evaluate(shared=shared, private=self.private.get(c), config=self.config, which=which)
            for c in clients
        ]
