"""`coldstart-eval` end to end on a small held-out set (TF-IDF, no federated training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.interactions import Interactions
from fedrec.experiments.coldstart import (
    CSV_NAME,
    PLOT_NAME,
    SIGNUP_CSV,
    ColdStartConfig,
    FederatedReference,
    first_rounds_study,
    run_coldstart_eval,
)
from fedrec.experiments.results import RESULTS
from fedrec.fallback import BlendConfig, ContentRecommender, FeatureConfig, build_catalog
from fedrec.fallback.evaluation import WEIGHT_GRID, cold_users
from fedrec.fallback.signup import VARIANTS
from fedrec.models import init_shared


def test_coldstart_eval_writes_every_method_and_n(ml100k: Interactions, tmp_path: Path) -> None:
    config = ColdStartConfig(holdout_fraction=0.03, text_encoders=("tfidf",), federated=False, reveal=(0, 3))
    results = run_coldstart_eval(ml100k, out_dir=tmp_path, config=config, federated_config=None)
    assert (tmp_path / PLOT_NAME).stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / CSV_NAME).open()))
    assert {(r["method"], r["reveal"]) for r in rows} == {
        (m, n) for m in ("popularity", "content (tfidf)", "blend (tfidf)") for n in ("0", "3")
    }
    assert results["users"]["test"] == results["users"]["validation"] == round(0.03 * ml100k.n_users)
    assert results["tuned"]["tfidf"]["popularity_weight"] in WEIGHT_GRID
    pop = [float(r["full_ndcg@10"]) for r in rows if r["method"] == "popularity"]
    assert pop[0] == pop[1], "popularity ignores the revealed items"
    content0 = next(r for r in rows if r["method"] == "content (tfidf)" and r["reveal"] == "0")
    assert float(content0["full_hr@10"]) == 0.0, "no profile, no content signal: every item ties"
    saved = json.loads((tmp_path / RESULTS).read_text())
    assert set(saved["targets"]["tfidf"]) >= {"n3_relative_gain", "n0_target_met"}
    signup = list(csv.DictReader((tmp_path / SIGNUP_CSV).open()))
    assert {(r["answers"], r["reveal"]) for r in signup} == {(v, n) for v in VARIANTS for n in ("0", "3")}
    assert all(float(r["popularity_full_ndcg@10"]) == pop[0] for r in signup), "the same popularity as the popularity row"
    assert saved["tuned"]["tfidf"]["preferences"]["checks"]["genre_min_share"] >= 5
    assert set(saved["signup_targets"]) == {"preferences (tfidf), genres + likes n=0", "preferences (tfidf), genres + likes n=3"}


def test_first_rounds_study_runs_the_device_code(ml100k: Interactions, tiny_config: RunConfig) -> None:
    catalog = build_catalog(ml100k, features=FeatureConfig(text="tfidf"), run_dir=None)
    model = tiny_config.model.build(ml100k.n_items)
    ref = FederatedReference(shared=init_shared(model, seed=0), model=model, summary={})
    users = cold_users(ml100k, np.array([1, 2, 3]), max_reveal=3, num_negatives=99, rng=np.random.default_rng(0))
    rows = first_rounds_study(
        ref, users, federated_config=tiny_config, content=ContentRecommender(catalog, BlendConfig(0.0)), reveal=(0, 3), rounds=2
    )
    assert [(r["init"], r["round"]) for r in rows] == [(i, k) for i in ("random", "profile") for k in range(3)]
    assert all(r["reveal"] == 3 and r["users"] == 3 and 0.0 <= r["full_ndcg@10"] <= 1.0 for r in rows)
    # local training changes the private vectors, and so the ranking
    random_rows = [r for r in rows if r["init"] == "random"]
    assert random_rows[0]["ndcg@10"] != random_rows[2]["ndcg@10"]
