"""Seconds per round of the same DP training on both engines, in one process.

MovieLens 100K, user-level DP-FedAvg, 100 expected clients per round, 1 local epoch:

* ``inprocess``: fedrec's vectorised in-process engine (``fedrec simulate``'s default);
* ``flower``: Flower's simulation runtime (Ray actors, one virtual SuperNode per user)
  running the same ServerApp and ClientApp as a deployment;
* ``flower, do-nothing client``: the same ServerApp with a ClientApp that returns a
  zero NeuMF-sized update at once: what Flower's runtime costs before any training;
* ``centralized floor``: the same number of example-gradient steps (the examples of
  each round's sampled clients, in mini-batches of the same size, with Adam) in one
  central training loop over one model: the physical reference.

Prints seconds per round, client-rounds per second and the ratios. The per-round time
is the runner's own (sampling, training, clipping, noise, ledger, model step); start-up
and the final evaluation are not in it.

    FEDREC_DATA_DIR=../shared/data python benchmarks/engine_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation
from torch import nn

from clients.app import query as client_query
from clients.records import to_record
from fedrec import protocol
from fedrec.config import RunConfig, parse_run_config
from fedrec.engine.vectorised import run as run_inprocess
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.federation.device import simulated_population
from fedrec.federation.fedavg import client_rng
from fedrec.federation.rounds import PoissonSampler
from fedrec.models import SharedTower, UserEmbeddings, init_shared, shared_spec
from fedrec.training.steps import epoch_examples, make_optimizer
from server.app import build_server_app
from server.simulation import backend_config
from server.simulation import run as run_flower


def noop_client(config: RunConfig) -> ClientApp:
    """A ClientApp that does no work: a zero update of the right shapes, at once."""
    app = ClientApp()
    model = config.model.build(simulated_population(config).split.n_items)
    zeros = {name: np.zeros(shape, dtype=np.float32) for name, shape in shared_spec(model).items()}

    app.query()(client_query)  # the real app's answer to "which client are you"

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({protocol.NUM_EXAMPLES: 0, protocol.TRAIN_LOSS: 0.0, protocol.LOCAL_EPSILON: 0.0})
        return Message(RecordDict({protocol.ARRAYS: to_record(zeros), protocol.METRICS: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({protocol.METRICS: MetricRecord(dict.fromkeys(METRIC_NAMES, 0.0))}), reply_to=msg)

    return app


def flower_noop(config: RunConfig, out: Path) -> Path:
    n = simulated_population(config).split.n_users
    app = build_server_app(config, out)
    run_simulation(server_app=app, client_app=noop_client(config), num_supernodes=n, backend_config=backend_config())  # type: ignore[arg-type]
    return out / "results.json"


def centralized_floor(config: RunConfig, rounds: int) -> list[float]:
    """Seconds per round for the rounds' example-gradient steps in one central loop."""
    split = simulated_population(config).split
    model = config.model.build(split.n_items)
    train = config.train.build()
    sampler = PoissonSampler(expected_clients=config.federation.clients_per_round, population=split.n_users)
    rng = np.random.default_rng([config.seed, 3])
    gen = torch.Generator().manual_seed(config.seed)
    tower = SharedTower(model, generator=gen)
    users = UserEmbeddings(model, split.n_users, generator=gen)
    optimizer = make_optimizer(train, shared=list(tower.parameters()) + list(users.parameters()))
    loss_fn = nn.BCEWithLogitsLoss()
    seconds = []
    for round_ in range(1, rounds + 1):
        sampled = sampler.sample(list(range(split.n_users)), rng)
        parts = []
        for c in sampled:
            data = split.client(c)
            items, labels = epoch_examples(
                positives=data.train_items, excluded=data.training_exclusions(), n_items=model.n_items,
                num_negatives=train.num_negatives, rng=client_rng(seed=config.seed, round_=round_, client=c),
            )
            parts.append((np.full(items.shape[0], c), items, labels))
        u = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        i = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        y = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        order = torch.from_numpy(rng.permutation(u.shape[0]))
        started = time.perf_counter()
        for start in range(0, u.shape[0], train.batch_size):
            batch = order[start : start + train.batch_size]
            user_gmf, user_mlp = users(u[batch])
            loss = loss_fn(tower(user_gmf, user_mlp, i[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def per_round(results: Path) -> list[float]:
    return [r["seconds"] for r in json.loads(results.read_text())["round_log"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients-per-round", type=float, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    base = {
        "model": "neumf", "num-rounds": args.rounds, "clients-per-round": args.clients_per_round, "local-epochs": 1, "eval-every": 0,
        "epsilon": 8.0, "seed": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base["ledger-key"] = str(Path(tmp) / "ledger.pem")
        config = parse_run_config(base)
        simulated_population(config)  # load and split once, outside every timing
        init_shared(config.model.build(simulated_population(config).split.n_items), seed=0)
        timings: dict[str, list[float]] = {}
        timings["inprocess"] = per_round(run_inprocess(config, Path(tmp) / "inprocess"))
        torch.set_num_threads(os.cpu_count() or 1)
        timings["centralized floor"] = centralized_floor(config, args.rounds)
        torch.set_num_threads(1)
        timings["flower"] = per_round(run_flower(config, Path(tmp) / "flower"))
        timings["flower, do-nothing client"] = per_round(flower_noop(config, Path(tmp) / "noop"))
    fast = statistics.median(timings["inprocess"])
    print(f"\nML-100K, DP-FedAvg, {args.clients_per_round:.0f} expected clients/round, 1 local epoch, {args.rounds} rounds, "
          f"{os.cpu_count()} cores; median over rounds")
    print(f"{'engine':28s} {'s/round':>9s} {'client-rounds/s':>16s} {'vs inprocess':>13s}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:28s} {median:9.3f} {args.clients_per_round / median:16.1f} {median / fast:12.2f}x")


if __name__ == "__main__":
    main()
