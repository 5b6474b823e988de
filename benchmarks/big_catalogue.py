"""End to end on a big catalogue: a file of a product-review log's shape (about 7,000
users, 100,000 items, 280,000 rows, 0-5 stars, no timestamps) through ``fedrec data
check``, ``fedrec simulate`` (DP-EASE at its defaults, with the popularity and EASE
references), ``fedrec audit`` and ``fedrec serve-fallback`` (until ``GET /health``
answers), each in its own process: wall seconds and peak resident memory of each.

The file is drawn by :mod:`fedrec.data.synthetic` (long-tailed item popularity,
heavy-tailed history lengths, latent taste) into a temporary folder, deleted
afterwards; each user's rows are in random order, so row order is a random split. An item file (``item_id title genres``: a made-up product title and
category per item) sits beside it, as the cold-start fallback needs item content.

    python benchmarks/big_catalogue.py [--users 7000] [--items 160000] [--skew 0.55]

``--items`` is the generator's catalogue: with the flatter popularity of ``--skew``
about 100,000 of them are drawn at least once. Prints one table row per step and the
DP-EASE upload sizes per device (item counts over the catalogue, the packed
co-occurrence over the released top items).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_file(path: Path, *, users: int, items: int, interactions: float, skew: float, seed: int) -> tuple[int, int, int]:
    """Draw the data set and write ``user_id item_id rating`` (tab-separated, header).
    Returns (users, distinct items, rows)."""
    from fedrec.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(n_users=users, n_items=items, mean_interactions=interactions, item_skew=skew)
    data = generate(spec, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    order = np.lexsort((rng.random(data.items.shape[0]), data.users))  # users in turn, their rows shuffled
    stars = rng.integers(0, 6, size=data.items.shape[0])
    with path.open("w") as out:
        out.write("user_id\titem_id\trating\n")
        np.savetxt(out, np.c_[data.users[order], data.items[order], stars], fmt="%d", delimiter="\t")
    drawn = np.unique(data.items)
    words = np.array(["red", "blue", "case", "cable", "lamp", "book", "mini", "pro", "kit", "set", "pack", "home"])
    categories = np.array(["Electronics", "Books", "Home", "Toys", "Garden", "Sports", "Beauty", "Music"])
    with path.with_name("items.tsv").open("w") as out:  # a product catalogue: a title and a category per item
        out.write("item_id\ttitle\tgenres\n")
        for item in drawn:
            title = " ".join(words[rng.integers(0, words.shape[0], size=3)])
            out.write(f"{item}\t{title} {item}\t{categories[rng.integers(0, categories.shape[0])]}\n")
    return users, int(drawn.shape[0]), int(data.items.shape[0])


def timed(argv: list[str], *, env: dict[str, str]) -> tuple[float, float, str]:
    """Run one command to its end: (wall seconds, peak RSS in GiB, its output)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{output}")
    return time.perf_counter() - started, usage.ru_maxrss / 2**20, output


def serve_until_healthy(argv: list[str], *, env: dict[str, str], port: int, limit: float = 600.0) -> tuple[float, float]:
    """Start the fallback service, wait for ``GET /health``, stop it: (seconds to ready, peak RSS in GiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode} before answering /health")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if time.perf_counter() - started > limit:
                    raise SystemExit(f"serve-fallback not healthy after {limit:.0f} s") from None
                time.sleep(0.2)
        ready = time.perf_counter() - started
    finally:
        proc.terminate()
    _, _, usage = os.wait4(proc.pid, 0)
    return ready, usage.ru_maxrss / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=7000)
    parser.add_argument("--items", type=int, default=160_000, help="the generator's catalogue (items drawn: fewer)")
    parser.add_argument("--interactions", type=float, default=40.0, help="mean rows per user")
    parser.add_argument("--skew", type=float, default=0.55, help="Zipf exponent of item popularity")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fedrec = [sys.executable, "-m", "fedrec"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reviews.tsv"
        started = time.perf_counter()
        users, items, rows = write_file(
            path, users=args.users, items=args.items, interactions=args.interactions, skew=args.skew, seed=args.seed
        )
        print(f"file: {users} users, {items} items, {rows} rows ({time.perf_counter() - started:.0f} s to generate)", flush=True)
        run = Path(tmp) / "run"
        steps: list[tuple[str, float, float]] = []
        print(f"{'step':<44} {'seconds':>8} {'peak GiB':>9}", flush=True)

        def done(name: str, seconds: float, rss: float) -> None:
            steps.append((name, seconds, rss))
            print(f"{name:<44} {seconds:>8.1f} {rss:>9.2f}", flush=True)

        seconds, rss, _ = timed([*fedrec, "data", "check", str(path)], env=env)
        done("data check", seconds, rss)
        seconds, rss, _ = timed([*fedrec, "simulate", "--set", f"dataset={path}", "--out", str(run)], env=env)
        done("simulate (DP-EASE, epsilon 8, references)", seconds, rss)
        seconds, rss, _ = timed([*fedrec, "audit", str(run)], env=env)
        done("audit", seconds, rss)
        port = free_port()
        seconds, rss = serve_until_healthy(
            [*fedrec, "serve-fallback", "--dataset", str(path), "--set", f"item-file={path.with_name('items.tsv')}",
             "--port", str(port), "--run-dir", str(Path(tmp) / "fb")],
            env=env, port=port,
        )
        done("serve-fallback (until /health answers)", seconds, rss)
        results = json.loads((run / "results.json").read_text())
    print(f"{'total':<44} {sum(s for _, s, _ in steps):>8.1f} {max(r for _, _, r in steps):>9.2f}")
    k = int(results["top_items"])
    print(f"uploads per device: {items} item counts + {k * (k + 1) // 2} co-occurrence values (K = {k}), float32: "
          f"{4 * items / 2**20:.2f} + {4 * k * (k + 1) / 2 / 2**20:.2f} MiB")
    refs = results.get("references", {})
    pop = refs.get("popularity", {}).get("test", {})
    for name, metrics in [("dp-ease", results), *((n, r["test"]) for n, r in refs.items())]:
        extra = f" (EASE on the top {refs[name]['items_fitted']} items)" if name in refs and "items_fitted" in refs[name] else ""
        print(f"{name:<12} sampled NDCG@10 {metrics['ndcg@10']:.4f}, full NDCG@10 {metrics['full_ndcg@10']:.4f}{extra}")
    if pop:
        print(f"dp-ease / popularity: {results['ndcg@10'] / pop['ndcg@10']:.2f}x sampled, "
              f"{results['full_ndcg@10'] / pop['full_ndcg@10']:.2f}x full; versus_popularity {results.get('versus_popularity')}")


if __name__ == "__main__":
    main()
