"""How far could a collaborative signal take cold start? A non-private ceiling for the
n = 3 target of the cold-start evaluation.

The same held-out test users, validation users, targets and popularity prior as
``fedrec coldstart-eval`` (seed 0). Adds two scorers that fedrec's fallback does *not*
have, because they read every training user's raw interactions on a central server:

* ``item-kNN``: cosine similarity of items' co-occurrence over the training users, summed
  over the user's revealed items;
* ``item-kNN + popularity``: (1 - w) kNN + w prior, w tuned on the validation users;
* ``EASE``: Steck's closed-form item-item model (WWW 2019) on the same matrix, its L2
  weight tuned on the validation users; a strong published baseline for this task.

Prints full-ranking HR@10 / NDCG@10 per number of revealed items and each method's
NDCG@10 relative to popularity. If even this ceiling stays under +20 % at n = 3, the
target is out of reach for any cold-start recommender on this protocol.

    FEDREC_DATA_DIR=../shared/data python benchmarks/coldstart_ceiling.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from fedrec.data.location import resolve_data_dir
from fedrec.data.sources import load_interactions
from fedrec.fallback.evaluation import WEIGHT_GRID, ColdStartUser, cold_users, evaluate, split_users
from fedrec.fallback.popularity import PopularityPrior
from fedrec.fallback.profile import Demographics

REVEAL = (0, 1, 3, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_interactions("ml-100k", resolve_data_dir()).positives(
        0.0
    )  # every rating, as coldstart-eval's default config
    rng = np.random.default_rng([args.seed, 41])  # as fedrec.experiments.coldstart
    users = split_users(data, holdout_fraction=0.1, min_interactions=max(REVEAL) + 1, rng=rng)
    val = cold_users(data, users.validation, max_reveal=max(REVEAL), num_negatives=99, rng=rng)
    test = cold_users(data, users.test, max_reveal=max(REVEAL), num_negatives=99, rng=rng)
    keep = np.isin(data.users, users.train)
    prior = PopularityPrior.fit(
        users=data.users[keep], items=data.items[keep], n_items=data.n_items, user_meta=data.user_meta, smoothing=200.0
    )
    global_prior = prior.scores(Demographics(), smoothing=math.inf)  # what coldstart-eval's popularity row scores
    # item-item cosine over the training users' raw interactions (the part fedrec never has)
    matrix = np.zeros((data.n_users, data.n_items), dtype=np.float32)
    matrix[data.users[keep], data.items[keep]] = 1.0
    co = matrix.T @ matrix
    norms = np.sqrt(np.maximum(np.diag(co), 1.0))
    similarity = co / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)

    def knn(user: ColdStartUser, n: int) -> np.ndarray:
        given = user.sequence[:n]
        return similarity[given].sum(axis=0).astype(np.float64) if n else np.zeros(data.n_items)

    def blend(w: float):
        def score(user: ColdStartUser, n: int) -> np.ndarray:
            k = knn(user, n)
            top = k.max()
            return (1 - w) * (k / top if top > 0 else k) + w * global_prior

        return score

    gram = co.astype(np.float64)

    def ease(weight: float):
        inverse = np.linalg.inv(gram + weight * np.eye(data.n_items))
        b = -inverse / np.diag(inverse)[None, :]
        np.fill_diagonal(b, 0.0)
        return lambda user, n: b[user.sequence[:n]].sum(axis=0) if n else global_prior

    eases = {w: ease(w) for w in (50.0, 200.0, 1000.0, 3000.0, 10000.0, 30000.0)}
    best_l2 = max(eases, key=lambda w: np.mean([evaluate(eases[w], val, n)["full_ndcg@10"] for n in REVEAL if n]))
    best_w = max(WEIGHT_GRID, key=lambda w: np.mean([evaluate(blend(w), val, n)["full_ndcg@10"] for n in REVEAL if n]))
    methods = {
        "popularity": lambda user, n: global_prior,
        "item-kNN": knn,
        f"item-kNN + popularity (w={best_w})": blend(best_w),
        f"EASE (l2={best_l2:g}; n=0: popularity)": eases[best_l2],
    }
    rows = {name: {n: evaluate(scorer, test, n) for n in REVEAL} for name, scorer in methods.items()}
    print(f"ML-100K, {len(test)} held-out users, full ranking HR@10 / NDCG@10 (ratio of NDCG@10 to popularity)")
    print(f"{'method':36s} " + " ".join(f"{'n=' + str(n):>24s}" for n in REVEAL))
    for name, by_n in rows.items():
        cells = []
        for n in REVEAL:
            m = by_n[n]
            ratio = m["full_ndcg@10"] / rows["popularity"][n]["full_ndcg@10"]
            cells.append(f"{m['full_hr@10']:.3f} / {m['full_ndcg@10']:.4f} ({ratio:.2f}x)")
        print(f"{name:36s} " + " ".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
