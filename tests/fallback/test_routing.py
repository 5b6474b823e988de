"""Routing between the fallback and the federated model, and the rank blend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedrec.errors import ConfigError
from fedrec.fallback.routing import BLEND, FALLBACK, FEDERATED, RoutingConfig, blend_scores, rank_percentiles, route

CONFIG = RoutingConfig(min_interactions=5, full_interactions=20)


def test_routes_at_the_boundaries() -> None:
    assert route(n_interactions=4, has_embedding=True, config=CONFIG).source == FALLBACK
    assert route(n_interactions=100, has_embedding=False, config=CONFIG).source == FALLBACK
    at_k = route(n_interactions=5, has_embedding=True, config=CONFIG)
    assert at_k.source == BLEND and 0 < at_k.federated_weight < 1
    assert route(n_interactions=20, has_embedding=True, config=CONFIG) == route(n_interactions=99, has_embedding=True, config=CONFIG)
    assert route(n_interactions=20, has_embedding=True, config=CONFIG).source == FEDERATED


@given(st.integers(0, 200), st.integers(0, 200))
def test_federated_weight_grows_with_history(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    w_lo = route(n_interactions=lo, has_embedding=True, config=CONFIG).federated_weight
    w_hi = route(n_interactions=hi, has_embedding=True, config=CONFIG).federated_weight
    assert 0.0 <= w_lo <= w_hi <= 1.0


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="full-interactions"):
        RoutingConfig(min_interactions=10, full_interactions=3)


def test_rank_percentiles_and_blend() -> None:
    np.testing.assert_allclose(rank_percentiles(np.array([0.1, 5.0, -3.0, 0.1])), [0.5, 1.0, 0.0, 0.5])
    fallback = np.array([3.0, 2.0, 1.0])
    federated = np.array([100.0, 300.0, 200.0])
    np.testing.assert_allclose(blend_scores(fallback=fallback, federated=federated, federated_weight=0.0), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(blend_scores(fallback=fallback, federated=federated, federated_weight=1.0), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        blend_scores(fallback=fallback, federated=federated, federated_weight=1.5)
