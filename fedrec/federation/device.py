"""Everything a device does, as plain functions the Flower ClientApp calls.

A device knows its own data (a :class:`ClientData`) and its private state; it
receives the shared parameters and the run config, and returns only the update of
the shared parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedrec.config import RunConfig
from fedrec.data.sources import PreparedData, prepare
from fedrec.data.split import ClientData
from fedrec.evaluation.scoring import evaluate_client
from fedrec.federation.compression import encode_update, upload_rng
from fedrec.federation.fedavg import client_rng
from fedrec.models import Arrays, ModelConfig
from fedrec.privacy.clipping import clip_update
from fedrec.training.local import LocalResult, PrivateState, fresh_private, local_update


def simulated_population(config: RunConfig) -> PreparedData:
    """The data set a simulation partitions into one device per user (cached)."""
    return prepare(config.data, seed=config.seed)


@dataclass(frozen=True)
class Device:
    """One device: its user's data and the model architecture it runs."""

    client_id: int
    data: ClientData
    model: ModelConfig
    # a cold user's first private vectors, e.g. from their content profile
    # (fedrec.fallback.ondevice.profile_init); None: random, N(0, init_std^2)
    initial_private: PrivateState | None = None

    @classmethod
    def simulated(cls, config: RunConfig, client_id: int) -> Device:
        split = simulated_population(config).split
        return cls(client_id=client_id, data=split.client(client_id), model=config.model.build(split.n_items))

    def fresh_private(self, seed: int) -> PrivateState:
        if self.initial_private is not None:
            return self.initial_private
        return fresh_private(self.model, seed=seed, client=self.client_id)

    def train(self, *, shared: Arrays, private: PrivateState | None, config: RunConfig, round_: int) -> LocalResult:
        """Local epochs, then (with user-level DP) clip the update to C before it leaves."""
        common = {
            "shared": shared,
            "private": private if private is not None else self.fresh_private(config.seed),
            "data": self.data,
            "model": self.model,
            "train": config.train.build(),
            "rng": client_rng(seed=config.seed, round_=round_, client=self.client_id),
        }
        p = config.privacy
        if p.local_dp:
            # Importing Opacus takes seconds and much memory (benchmarks/README.md): only devices that use it pay.
            from fedrec.privacy.local_dp import LocalDPConfig, local_update_dp

            local = LocalDPConfig(noise_multiplier=p.local_noise_multiplier, max_grad_norm=p.local_clipping_norm, delta=p.local_delta)
            result = local_update_dp(local=local, **common)  # type: ignore[arg-type]
        else:
            result = local_update(**common)  # type: ignore[arg-type]
        if config.privacy.enabled:
            result = replace(result, update=clip_update(result.update, max_norm=config.privacy.clipping_norm)[0])
        return result

    def upload(self, update: Arrays, *, config: RunConfig, round_: int) -> Arrays:
        """What the device sends for its (already clipped) ``update``: the update itself,
        or with ``upload-bits`` > 0 its quantized payload (:mod:`fedrec.federation.compression`)."""
        bits = config.federation.upload_bits
        if bits == 0:
            return update
        return encode_update(update, bits=bits, rng=upload_rng(seed=config.seed, round_=round_, client=self.client_id))

    def evaluate(self, *, shared: Arrays, private: PrivateState | None, config: RunConfig, which: str) -> dict[str, float]:
        state = private if private is not None else self.fresh_private(config.seed)
        return evaluate_client(
            shared=shared, user_gmf=state.user_gmf, user_mlp=state.user_mlp, data=self.data, model=self.model, which=which
        )
