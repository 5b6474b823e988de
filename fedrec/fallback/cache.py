"""Item vectors are computed once per run directory and keyed by a hash of their inputs.

The key covers everything the vectors depend on (titles, genre flags, years, the
encoder and its version, the block weights), so a changed catalogue or encoder never
reads a stale file, and a second start of the service skips the sentence encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedrec.data.interactions import ItemMetadata
from fedrec.fallback.features import FeatureConfig, build_item_vectors, encoder_version

logger = logging.getLogger(__name__)

CACHE_DIR = "item_vectors"


def inputs_digest(meta: ItemMetadata, config: FeatureConfig) -> str:
    """SHA-256 over the item content and the feature settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"titles": list(meta.titles), "genre_names": list(meta.genre_names)}).encode())
    if meta.texts is not None:
        h.update(json.dumps({"texts": list(meta.texts)}).encode())
    h.update(np.ascontiguousarray(meta.genres, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(meta.year, dtype=np.float32).tobytes())
    h.update(json.dumps({**asdict(config), "encoder": encoder_version(config.text)}, sort_keys=True).encode())
    return h.hexdigest()


def cached_item_vectors(meta: ItemMetadata, config: FeatureConfig, *, run_dir: Path | None) -> np.ndarray:
    """Item vectors from ``run_dir/item_vectors/<encoder>-<digest>.npy``, computed if absent.

    ``run_dir=None`` computes them without caching. The file is written to a temporary
    name and renamed, so a crash never leaves a truncated cache behind.
    """
    if run_dir is None:
        return build_item_vectors(meta, config)
    digest = inputs_digest(meta, config)
    path = Path(run_dir) / CACHE_DIR / f"{config.text}-{digest[:24]}.npy"
    if path.is_file():
        vectors = np.load(path)
        if vectors.shape[0] == len(meta.titles):
            logger.info("item vectors (%s) read from the cache", config.text)
            return vectors
    vectors = build_item_vectors(meta, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    logger.info("item vectors (%s) computed and cached, %d dimensions", config.text, vectors.shape[1])
    return vectors
