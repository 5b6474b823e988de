"""Latency of the cold-start service: p50 / p99 of POST /recommend (top-10 over all items).

Starts `fedrec serve-fallback` on a free localhost port (or uses --url), sends
--requests requests one after the other with varied profiles, and prints the figures.
Targets (issue 4): p50 < 10 ms, p99 < 50 ms.

    FEDREC_DATA_DIR=/path/to/data python3 benchmarks/fallback_latency.py --requests 2000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Romance", "Thriller", "Horror", "Children's"]
OCCUPATIONS = ["engineer", "student", "writer", "educator", "programmer", "other"]
TEXTS = ["space adventure", "old westerns", "Star Trek", "documentaries about music", "funny animated films"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def profiles(n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    """A mix: empty, genres only, liked items only, everything (every other one with free text)."""
    out: list[dict[str, object]] = []
    for i in range(n):
        body: dict[str, object] = {"k": 10}
        if i % 4 in (1, 3):
            body["genres"] = list(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False))
        if i % 8 == 3:
            body["text"] = str(rng.choice(TEXTS))
        if i % 4 in (2, 3):
            body["liked_items"] = [int(x) for x in rng.choice(np.arange(1, 1683), size=int(rng.integers(1, 6)), replace=False)]
            body["demographics"] = {"age": int(rng.integers(15, 70)), "gender": str(rng.choice(["F", "M"])),
                                    "occupation": str(rng.choice(OCCUPATIONS))}
        out.append(body)
    return out


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"service exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("service did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--text", default="tfidf", choices=["tfidf", "minilm"])
    parser.add_argument("--url", default="", help="benchmark a service that is already running")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    proc = None
    url = args.url
    if not url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedrec", "serve-fallback", "--text", args.text, "--port", str(port)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    try:
        wait_healthy(url, proc)
        bodies = profiles(args.warmup + args.requests, np.random.default_rng(args.seed))
        latencies = []
        with httpx.Client(base_url=url, timeout=10) as client:
            for i, body in enumerate(bodies):
                started = time.perf_counter()
                response = client.post("/recommend", json=body)
                elapsed = time.perf_counter() - started
                if response.status_code != 200 or len(response.json()["items"]) != 10:
                    raise SystemExit(f"bad answer {response.status_code}: {response.text[:200]}")
                if i >= args.warmup:
                    latencies.append(elapsed * 1000.0)
        ms = np.array(latencies)
        p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
        print(f"{ms.shape[0]} requests (top-10 over all items, text {args.text}): "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, mean {ms.mean():.2f} ms, max {ms.max():.2f} ms")
        print(f"targets p50 < 10 ms: {'met' if p50 < 10 else 'MISSED'}; p99 < 50 ms: {'met' if p99 < 50 else 'MISSED'}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
