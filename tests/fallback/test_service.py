"""The cold-start service end to end: the real `fedrec serve-fallback` process over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    run_dir = tmp_path_factory.mktemp("fallback")
    env = {**os.environ, "FEDREC_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedrec", "serve-fallback", "--text", "tfidf", "--run-dir", str(run_dir), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"service exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("service did not answer /health within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_health(service: str) -> None:
    body = httpx.get(f"{service}/health").json()
    assert body["status"] == "ok" and body["items"] == 1682 and "Sci-Fi" in body["genres"]


def test_recommend_from_a_profile(service: str) -> None:
    profile = {"genres": ["Sci-Fi"], "liked_items": [50], "demographics": {"age": 30, "gender": "F", "occupation": "engineer"}, "k": 10}
    response = httpx.post(f"{service}/recommend", json=profile)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 10
    assert 50 not in [i["item_id"] for i in items]
    assert len({i["item_id"] for i in items}) == 10
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert all(i["title"] and i["reason"] for i in items)
    assert "Return of the Jedi (1983)" in [i["title"] for i in items]  # a Sci-Fi neighbour of Star Wars
    allowed = ("matches your genre Sci-Fi", "similar to Star Wars (1977), which you like",
               "popular with users like you (25-34, F, engineer)")
    assert all(any(i["reason"].startswith(a) for a in allowed) for i in items), items
    assert sum("matches your genre Sci-Fi" in i["reason"] for i in items) >= 5


def test_empty_profile_defaults_to_ten_popular_items(service: str) -> None:
    body = httpx.post(f"{service}/recommend", json={}).json()
    items = body["items"]
    assert body["basis"] == "popularity"
    assert len(items) == 10
    assert items[0]["title"] == "Star Wars (1977)"  # the most rated movie of ML-100K
    assert {i["reason"] for i in items} == {"popular with many users"}


@pytest.mark.parametrize("genre", ["Documentary", "Animation", "Film-Noir", "Western"])
def test_a_stated_genre_fills_the_list(service: str, genre: str) -> None:
    body = httpx.post(f"{service}/recommend", json={"genres": [genre], "k": 10}).json()
    assert body["basis"] == "preferences"
    matched = [i for i in body["items"] if i["reason"].endswith(f"matches your genre {genre}")]
    assert len(matched) >= 5, body


def test_liked_items_and_text_move_the_list(service: str) -> None:
    liked = httpx.post(f"{service}/recommend", json={"liked_items": [50, 172]}).json()["items"]
    assert "Return of the Jedi (1983)" in [i["title"] for i in liked]
    assert any(i["reason"].startswith("similar to Star Wars (1977)") or "Empire" in i["reason"] for i in liked)
    text = httpx.post(f"{service}/recommend", json={"text": "Star Trek"}).json()
    assert text["basis"] == "preferences"
    assert sum("Star Trek" in i["title"] for i in text["items"]) >= 5


def test_an_unknown_genre_names_the_known_ones(service: str) -> None:
    response = httpx.post(f"{service}/recommend", json={"genres": ["Space Opera", "Drama"]})
    assert response.status_code == 422
    (line,) = response.json()["detail"]
    assert line.startswith("unknown genre 'Space Opera'; known genres: unknown, Action, Adventure, Animation")
    assert "Western" in line


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"genres": ["Space Opera"]}, "unknown genre 'Space Opera'"),
        ({"liked_items": [99999]}, "unknown item id 99999"),
        ({"k": 0}, "k must be an integer from 1 to 100"),
        ({"k": 1000}, "k must be an integer from 1 to 100"),
        ({"demographics": {"occupation": "astronaut"}}, "unknown occupation 'astronaut'"),
        ({"liked": [1]}, "liked: Extra inputs are not permitted"),
        ({"text": "y" * 600}, "text of 600 characters; give at most 500"),
    ],
)
def test_invalid_profiles_get_422_with_a_clear_message(service: str, body: dict[str, object], message: str) -> None:
    response = httpx.post(f"{service}/recommend", json=body)
    assert response.status_code == 422
    assert any(message in line for line in response.json()["detail"]), response.json()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_field = st.sampled_from(["genres", "liked_items", "text", "demographics", "k", "age", "gender", "occupation", "x"])
_profiles = st.dictionaries(_field, _json, max_size=4) | st.fixed_dictionaries(
    {},
    optional={
        "genres": st.lists(st.sampled_from(["Sci-Fi", "Drama", "Comedy", "sci-fi", ""]) | st.text(max_size=8), max_size=4),
        "liked_items": st.lists(st.integers(-5, 2000), max_size=6),
        "text": st.text(max_size=30) | st.sampled_from(["space", "old westerns", "Star Trek", ""]),
        "demographics": st.fixed_dictionaries(
            {}, optional={"age": st.integers(-10, 200) | _json, "gender": st.sampled_from(["F", "M", "X"]) | _json,
                          "occupation": st.sampled_from(["engineer", "none", "?"]) | _json}
        ),
        "k": st.integers(-3, 200) | _json,
    },
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_profiles | _json, raw=st.none() | st.binary(max_size=40))
def test_fuzzed_requests_get_an_answer_or_a_clear_4xx_never_a_server_error(service: str, body: object, raw: bytes | None) -> None:
    if raw is not None:
        response = httpx.post(f"{service}/recommend", content=raw, headers={"content-type": "application/json"})
    else:
        response = httpx.post(f"{service}/recommend", json=body)
    # 400: not JSON at all; 422: JSON that is not a valid profile; never a 5xx
    assert response.status_code in (200, 400, 422), (body, raw, response.status_code, response.text[:300])
    payload = response.json()
    if response.status_code != 200:
        detail = payload["detail"]
        lines = [detail] if isinstance(detail, str) else detail
        assert lines and all(isinstance(line, str) and line and "\n" not in line for line in lines)
    else:
        items = payload["items"]
        k = body.get("k", 10) if isinstance(body, dict) else 10
        assert 1 <= len(items) <= k and len({i["item_id"] for i in items}) == len(items)
