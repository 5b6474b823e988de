"""The fallback that follows what a new user says at sign-up: a list calibrated to it.

Calibrated recommendations (Steck, "Calibrated Recommendations", RecSys 2018): what a
user states becomes a target distribution ``p`` over *aspects*, and the list is built
greedily so that its own aspect mix ``q`` follows ``p``, traded against relevance by one
weight ``lam`` (Steck's lambda). The aspects are

- each stated genre;
- ``liked``: the ``neighbours`` items most similar to the liked items (content cosine,
  plus the item-item weights of a DP-EASE release where one is given: reading a release
  is post-processing and spends no privacy);
- ``text``: the ``neighbours`` items whose document (title, genre names, text) is most
  similar to the free text (TF-IDF).

The genres get a share 1 of ``p`` (split evenly over the stated genres), the liked items
``liked_share`` and the text ``text_share``, normalised to sum to 1. An item's aspect
distribution ``p(a|i)`` is spread evenly over the asked-for aspects it carries (Steck's
``p(g|i) = 1 / |genres(i)|``, with the ``liked`` and ``text`` neighbourhoods as two more
genres, and without the unstated genres: those are not held against an item). With ``q(a|S)`` the mean
of ``p(a|i)`` over the list ``S`` and ``q~ = (1 - alpha) q + alpha p``, each step adds the
item ``i`` with the largest gain

    (1 - lam) rel(i) + lam * sum_a p_a [log q~_a(S + i) - log q~_a(S + o)]

where ``o`` is an item that carries none of the aspects: the sum is the decrease of
``KL(p || q~)`` (Steck Eq. 5, greedy as in his Sec. 3.2) up to a constant that is the same
for every candidate, so the choice is Steck's, and each aspect's term is what the item
adds by carrying it (never negative). Here
``rel(i) = w_pop prior(i) + w_liked sim(i) + w_ease ease(i) + w_text text(i)``: the
(demographic) popularity prior in [0, 1] plus the similarities to the liked items and to
the text and, with a release, its fold-in score ``ease = x_K B`` of the liked items
(positive part), each scaled to [0, 1]. With ``genres_together`` several stated genres
form one aspect, the items that carry any of them (a single genre is unchanged).

The list shows the chosen items best first by their score, the sum of their
contributions: ``(1 - lam)`` times each relevance part and ``lam p_a p(a|i)`` for each
asked-for aspect (popularity, each stated genre, liked, text); with ``shared_credit``
an aspect's ``lam p_a`` is shared out over the listed items in proportion to their
``p(a|i)``, so that an aspect adds ``lam p_a`` to the list as a whole and relevance
decides the order inside it (the set of items is the same). Inside what was asked
for, popularity decides; the reason shown for an item names its largest contribution
(and, when that is popularity, the largest asked-for aspect the item also carries). An empty profile (or demographics alone) has no aspect, and the list is
the popularity prior's, labelled so (:meth:`PreferenceRecommender.basis`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from fedrec.errors import ConfigError
from fedrec.fallback.catalog import Catalog
from fedrec.fallback.collaborative import ReleasedEase
from fedrec.fallback.features import clean_title
from fedrec.fallback.profile import Query
from fedrec.fallback.recommender import Recommendation, top_k

POPULARITY, LIKED, TEXT, GENRES = "popularity", "liked", "text", "genres"
GENRE_PREFIX = "genre:"
BASIS_POPULARITY, BASIS_PREFERENCES = "popularity", "preferences"
SPARSE_BELOW = 0.1  # density under which item vectors are scored as a sparse matrix
SCORED_LIST = 100  # scores(): the greedy list this long, then relevance
_TOKEN = re.compile(r"[a-z0-9][a-z0-9'\-]*")


@dataclass(frozen=True)
class PreferenceConfig:
    """Steck's ``lam`` and the relevance weights of the module docstring."""

    calibration_weight: float = 0.7  # lam: 0 relevance only, 1 calibration only
    popularity_weight: float = 1.0  # w_pop
    liked_weight: float = 0.0  # w_liked
    text_weight: float = 0.5  # w_text
    liked_share: float = 0.5  # the liked items' share of the target, relative to the genres' (1)
    text_share: float = 1.0  # the free text's share of the target, relative to the genres' (1)
    neighbours: int = 20  # size of the liked and text neighbourhoods
    release_weight: float = 0.5  # share of the DP-EASE release in the liked-item similarity (when given)
    ease_weight: float = 0.0  # w_ease: weight of the release's fold-in score x_K B in the relevance (when given)
    release_ridge: float = 0.0  # extra ridge of the release's re-solve for short histories (read by the callers)
    genres_together: bool = False  # several stated genres form one aspect: the items that carry any of them
    shared_credit: bool = False  # an aspect's credit lam p_a shared among the listed items that carry it
    alpha: float = 0.01  # Steck's smoothing of q towards p
    smoothing: float = 5000.0  # demographic smoothing of the popularity prior

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.calibration_weight <= 1.0:
            problems.append(f"calibration-weight {self.calibration_weight} must be in [0, 1]")
        if not 0.0 <= self.release_weight <= 1.0:
            problems.append(f"release-weight {self.release_weight} must be in [0, 1]")
        if not 0.0 < self.alpha < 1.0:
            problems.append(f"alpha {self.alpha} must be in (0, 1)")
        for name in ("popularity_weight", "liked_weight", "text_weight", "ease_weight", "release_ridge", "smoothing"):
            if getattr(self, name) < 0:
                problems.append(f"{name.replace('_', '-')} must be >= 0")
        for name in ("liked_share", "text_share"):
            if not getattr(self, name) > 0:
                problems.append(f"{name.replace('_', '-')} must be > 0")
        if self.neighbours < 1:
            problems.append(f"neighbours {self.neighbours} must be >= 1")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreferenceConfig:
        """The config from a mapping (e.g. ``results.json``); keys it does not know are ignored."""
        known = set(asdict(cls()))
        return cls(**{k: v for k, v in values.items() if k in known})


def _stem(token: str) -> str:
    """A light plural folding, so that 'documentaries' finds 'Documentary' and 'westerns' 'Western'."""
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def tokens(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text.lower())]


class TextIndex:
    """TF-IDF over each item's document (cleaned title, genre names, free text) for free-text queries."""

    def __init__(self, catalog: Catalog, texts: tuple[str, ...] | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = []
        for i, title in enumerate(catalog.titles):
            names = " ".join(catalog.genre_names[g] for g in np.flatnonzero(catalog.genres[i]))
            extra = texts[i] if texts is not None else ""
            docs.append(f"{clean_title(title)} {names} {extra}")
        self._vectorizer = TfidfVectorizer(tokenizer=tokens, lowercase=False, token_pattern=None, sublinear_tf=True,
                                           stop_words=[_stem(w) for w in _english_stop_words()])
        try:
            self._matrix: Any = self._vectorizer.fit_transform(docs).tocsr()  # (n_items, vocabulary), rows L2-normalised
        except ValueError:  # no word at all in the catalogue
            self._matrix = None

    def scores(self, text: str) -> np.ndarray:
        """(n_items,) cosine of the text to each item's document; zeros if no word is known."""
        if self._matrix is None or not text:
            return np.zeros(0 if self._matrix is None else self._matrix.shape[0])
        query = self._vectorizer.transform([text])  # (1, vocabulary)
        return np.asarray((self._matrix @ query.T).todense(), dtype=np.float64).ravel()


def _english_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


def _unit(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if values.shape[0] else 0.0
    return values / top if top > 0 else np.zeros_like(values)


@dataclass(frozen=True)
class Plan:
    """One query's target and the per-item quantities the greedy selection reads."""

    target: np.ndarray  # (A,) p over the active aspects
    labels: tuple[str, ...]  # (A,) aspect labels: "genre:<index>", LIKED, TEXT
    aspects: np.ndarray  # (n_items, A) p(a|i)
    carried: np.ndarray  # (n_items, A) 0/1: the item carries the aspect
    relevance: dict[str, np.ndarray]  # label -> (n_items,) weighted relevance part (POPULARITY, LIKED, TEXT)
    liked_by_item: np.ndarray  # (n_given, n_items) similarity of each item to each liked item
    excluded: np.ndarray  # (n_given,) the liked items

    @property
    def total_relevance(self) -> np.ndarray:
        return np.sum(list(self.relevance.values()), axis=0)


@dataclass(frozen=True)
class Selection:
    """The greedy list: items in order, each one's gain and its parts."""

    items: np.ndarray  # (L,) item indices, best first
    gains: np.ndarray  # (L,) each item's credit in the list (the score shown): the sum of its contributions
    contributions: list[dict[str, float]] = field(default_factory=list)  # per item: label -> part of its credit


class PreferenceRecommender:
    """Stated genres, liked items and free text shape the list (module docstring)."""

    def __init__(
        self, catalog: Catalog, config: PreferenceConfig = PreferenceConfig(), *, release: ReleasedEase | None = None,
        texts: tuple[str, ...] | None = None,
    ) -> None:
        if release is not None and release.n_items != catalog.n_items:
            problem = (f"the DP-EASE release has {release.n_items} items, the catalogue {catalog.n_items}: "
                       "give the release of a run on the same data set")
            raise ConfigError([problem])
        self.catalog = catalog
        self.config = config
        self.release = release
        genres = np.asarray(catalog.genres, dtype=np.float64)  # (n_items, G)
        self._genres = genres
        vectors = catalog.vectors
        self._vectors: Any = csr_matrix(vectors) if np.count_nonzero(vectors) < SPARSE_BELOW * vectors.size else vectors
        self._text = TextIndex(catalog, texts)

    # ------------------------------------------------------------------ what the user asked for
    def liked_similarity(self, given: np.ndarray) -> np.ndarray:
        """(n_given, n_items) similarity of every item to each liked item, in [-1, 1]:
        content cosine, mixed with the release's EASE weights (scaled to at most 1) where a release is given."""
        content = np.asarray(self._vectors @ self.catalog.vectors[given].T, dtype=np.float64).T  # (L, n_items)
        if self.release is None or self.release.top_items.shape[0] == 0:
            return content
        collaborative = np.zeros_like(content)
        position = {int(item): k for k, item in enumerate(self.release.top_items)}
        for row, item in enumerate(given):
            k = position.get(int(item))
            if k is not None:
                weights = self.release.weights[k].copy()  # (K,) EASE weights from this item to the others
                weights[k] = 0.0
                top = float(np.abs(weights).max())
                collaborative[row, self.release.top_items] = weights / top if top > 0 else weights
        r = self.config.release_weight
        return (1.0 - r) * content + r * collaborative

    def plan(self, query: Query) -> Plan:
        cfg = self.config
        n = self.catalog.n_items
        prior = self.catalog.popularity.scores(query.demographics, smoothing=cfg.smoothing)
        relevance = {POPULARITY: cfg.popularity_weight * prior}
        allowed = np.ones(n, dtype=bool)
        allowed[query.given] = False
        members: dict[str, np.ndarray] = {}
        liked_by_item = np.zeros((0, n))
        if query.given.shape[0]:
            liked_by_item = self.liked_similarity(query.given)
            sim = np.where(allowed, np.maximum(liked_by_item.mean(axis=0), 0.0), 0.0)
            if np.any(sim > 0):
                relevance[LIKED] = cfg.liked_weight * _unit(sim)
                members[LIKED] = self._neighbourhood(sim)
            if self.release is not None and cfg.ease_weight > 0:
                ease = np.where(allowed, np.maximum(self.release.ease_scores(query), 0.0), 0.0)
                relevance[LIKED] = relevance.get(LIKED, np.zeros(n)) + cfg.ease_weight * _unit(ease)
        if query.text:
            words = self._text.scores(query.text)
            if words.shape[0] and np.any(words[allowed] > 0):
                words = np.where(allowed, words, 0.0)
                relevance[TEXT] = cfg.text_weight * _unit(words)
                members[TEXT] = self._neighbourhood(words)
        share = {LIKED: cfg.liked_share, TEXT: cfg.text_share}
        kinds = (1.0 if query.genres else 0.0) + sum(share[label] for label in members)
        labels: list[str] = []
        target: list[float] = []
        together = cfg.genres_together and len(query.genres) > 1
        genre_columns = [self._genres[:, g] for g in query.genres]
        if together:
            labels.append(GENRES)
            target.append(1.0 / kinds)
            genre_columns = [(np.sum(genre_columns, axis=0) > 0).astype(np.float64)]
        for g in () if together else query.genres:
            labels.append(f"{GENRE_PREFIX}{g}")
            target.append(1.0 / kinds / len(query.genres))
        for label in members:
            labels.append(label)
            target.append(share[label] / kinds)
        columns = genre_columns + list(members.values())
        carried = np.stack(columns, axis=1) if columns else np.zeros((n, 0))
        count = carried.sum(axis=1, keepdims=True)  # (n_items, 1) the asked-for aspects each item carries
        aspects = np.divide(carried, count, out=np.zeros_like(carried), where=count > 0)
        return Plan(target=np.asarray(target, dtype=np.float64), labels=tuple(labels), aspects=aspects, carried=carried,
                    relevance=relevance, liked_by_item=liked_by_item, excluded=query.given)

    def _neighbourhood(self, similarity: np.ndarray) -> np.ndarray:
        """(n_items,) 0/1: the ``neighbours`` items of highest positive similarity (ties to the lower index)."""
        chosen = top_k(similarity, k=self.config.neighbours, exclude=np.flatnonzero(similarity <= 0))
        out = np.zeros(similarity.shape[0])
        out[chosen] = 1.0
        return out

    # ------------------------------------------------------------------ the greedy list
    def select(self, query: Query, *, k: int, plan: Plan | None = None) -> Selection:
        """Steck's greedy set of ``k`` items (never the liked ones), shown best first by
        each item's score (:meth:`credits`)."""
        plan = plan or self.plan(query)
        lam, alpha = self.config.calibration_weight, self.config.alpha
        available = np.ones(self.catalog.n_items, dtype=bool)
        available[plan.excluded] = False
        base = (1.0 - lam) * plan.total_relevance  # (n_items,)
        p, m = plan.target, plan.aspects
        items: list[int] = []
        q_sum = np.zeros(p.shape[0])
        if not p.shape[0]:  # nothing asked for: relevance alone
            items = top_k(base, k=k, exclude=plan.excluded).tolist()
        while p.shape[0] and available.any() and len(items) < k:
            size = len(items)
            # against an item that carries nothing asked for (the same for every candidate, so the choice is Steck's)
            neutral = np.log((1 - alpha) * q_sum / (size + 1) + alpha * p)  # (A,)
            after = np.log((1 - alpha) * (q_sum[None, :] + m) / (size + 1) + alpha * p)  # (n_items, A)
            gain = base + lam * (p * (after - neutral)).sum(axis=1)
            gain[~available] = -np.inf
            best = int(np.argmax(gain))  # ties: the lower index
            available[best] = False
            items.append(best)
            q_sum = q_sum + m[best]
        chosen = np.asarray(items, dtype=np.int64)
        parts = self.credits(chosen, plan)
        scores = np.array([sum(c.values()) for c in parts])
        order = np.lexsort((np.arange(chosen.shape[0]), -scores)) if chosen.shape[0] else np.empty(0, dtype=np.int64)
        return Selection(items=chosen[order], gains=scores[order], contributions=[parts[j] for j in order])

    def credits(self, items: np.ndarray, plan: Plan) -> list[dict[str, float]]:
        """Each listed item's score by source: ``(1 - lam)`` times each relevance part, and
        ``lam p_a p(a|i)`` for each asked-for aspect (the target's weight of what the item carries)."""
        lam = self.config.calibration_weight
        out = []
        held = plan.aspects[items].sum(axis=0) if self.config.shared_credit else np.ones(plan.target.shape[0])
        held = np.where(held > 0, held, 1.0)
        for i in items:
            part = {label: (1.0 - lam) * float(values[i]) for label, values in plan.relevance.items()}
            for a, label in enumerate(plan.labels):
                part[label] = part.get(label, 0.0) + lam * float(plan.target[a] * plan.aspects[i, a] / held[a])
            out.append(part)
        return out

    def ranking_scores(self, query: Query, *, k: int) -> np.ndarray:
        """(n_items,) a full ranking: the list of ``k`` in its shown order, then every other
        item by relevance."""
        plan = self.plan(query)
        selection = self.select(query, k=k, plan=plan)
        floor = float(selection.gains.min()) if selection.gains.shape[0] else 0.0
        relevance = plan.total_relevance
        out = floor - 2.0 + _unit(relevance - relevance.min())  # every item below the list
        out[selection.items] = selection.gains
        return out

    # ------------------------------------------------------------------ the Recommender contract
    def scores(self, query: Query) -> np.ndarray:
        return self.ranking_scores(query, k=min(self.catalog.n_items, SCORED_LIST))

    def recommend(self, query: Query, *, k: int) -> list[Recommendation]:
        plan = self.plan(query)
        selection = self.select(query, k=k, plan=plan)
        return [
            Recommendation(int(i), float(s), self.reason(int(i), parts, plan, query), contributions=parts)
            for i, s, parts in zip(selection.items, selection.gains, selection.contributions)
        ]

    @staticmethod
    def basis(query: Query) -> str:
        """What the list is built from: the user's stated preferences, or popularity alone."""
        return basis(query)

    def reason(self, item: int, parts: Mapping[str, float], plan: Plan, query: Query) -> str:
        """One line naming the largest contribution to the item's score first; when that is
        popularity, the largest asked-for aspect the item carries follows it."""
        driver = largest(parts)
        first = self._phrase(driver, item, plan, query)
        stated = {label: value for label, value in parts.items() if label in plan.labels and value > 0}
        if driver == POPULARITY and stated:
            return f"{first}; {self._phrase(largest(stated), item, plan, query)}"
        return first

    def _phrase(self, driver: str, item: int, plan: Plan, query: Query) -> str:
        cat = self.catalog
        if driver == GENRES:
            names = [cat.genre_names[g] for g in query.genres if cat.genres[item, g]]
            return f"matches your genre{'s' if len(names) > 1 else ''} {', '.join(names)}"
        if driver.startswith(GENRE_PREFIX):
            return f"matches your genre {cat.genre_names[int(driver[len(GENRE_PREFIX):])]}"
        if driver == LIKED:
            closest = int(plan.excluded[int(np.argmax(plan.liked_by_item[:, item]))])
            return f"similar to {cat.titles[closest]}, which you like"
        if driver == TEXT:
            said = query.text if len(query.text) <= 40 else query.text[:37] + "..."
            return f"matches what you wrote: {said!r}"
        who = query.demographics.describe()
        return f"popular with users like you ({who})" if who else "popular with many users"


def basis(query: Query) -> str:
    """``preferences`` when the query states genres, liked items or text; ``popularity`` otherwise."""
    return BASIS_PREFERENCES if query.states_preferences else BASIS_POPULARITY


def largest(parts: Mapping[str, float]) -> str:
    """The label of the largest contribution (ties: popularity first, then the order given)."""
    order = sorted(parts, key=lambda label: (-parts[label], label != POPULARITY))
    return order[0] if order else POPULARITY


@dataclass(frozen=True)
class StatedChecks:
    """How strongly a recommender follows single statements on its catalogue (no user involved)."""

    genre_min_share: int  # fewest of the top 10 carrying a stated genre, over genres with >= MIN_GENRE_ITEMS items
    weakest_genre: str  # the genre where that happens ("" if none qualifies)
    liked_min_overlap: int  # fewest of the top 10 among the neighbours of two liked items, over the sampled pairs
    pairs: int

    @property
    def honoured(self) -> bool:
        return self.genre_min_share >= GENRE_SHARE and self.liked_min_overlap >= LIKED_OVERLAP


TOP = 10
MIN_GENRE_ITEMS = 10  # a genre with fewer items cannot fill half a list
GENRE_SHARE = 5  # of the top 10 carry a stated genre
LIKED_OVERLAP = 3  # of the top 10 are among the neighbours of two liked items


def most_similar(recommender: PreferenceRecommender, given: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` items most similar to the liked items ``given`` (mean similarity; ties to the lower index)."""
    sim = recommender.liked_similarity(given).mean(axis=0)
    return top_k(sim, k=count, exclude=given)


def stated_checks(recommender: PreferenceRecommender, *, pairs: int, rng: np.random.Generator) -> StatedChecks:
    """Every genre with at least ``MIN_GENRE_ITEMS`` items stated alone, and ``pairs`` random
    pairs of liked items: how many of the top 10 carry the genre / are among the
    ``neighbours`` items most similar to the pair."""
    cat = recommender.catalog
    empty = np.empty(0, dtype=np.int64)
    genre_min, weakest = TOP, ""
    for g in np.flatnonzero(cat.genres.sum(axis=0) >= MIN_GENRE_ITEMS):
        recs = recommender.recommend(Query(given=empty, genres=(int(g),)), k=TOP)
        carried = int(sum(cat.genres[r.item, g] > 0 for r in recs))
        if carried < genre_min:
            genre_min, weakest = carried, cat.genre_names[int(g)]
    liked_min = TOP
    for _ in range(pairs if cat.n_items >= 2 else 0):
        given = np.sort(rng.choice(cat.n_items, size=2, replace=False)).astype(np.int64)
        near = set(most_similar(recommender, given, recommender.config.neighbours).tolist())
        recs = recommender.recommend(Query(given=given), k=TOP)
        liked_min = min(liked_min, sum(r.item in near for r in recs))
    return StatedChecks(genre_min_share=genre_min, weakest_genre=weakest, liked_min_overlap=liked_min, pairs=pairs)
