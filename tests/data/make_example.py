"""Generate the small bring-your-own-data example (not MovieLens): a bookshop's ratings.

``ratings.csv`` has the header ``customer_id,sku,stars,ts`` (string ids, half-star
ratings 0.5..5, CRLF line ends, as many exports have) and ``books.csv`` has
``sku,title,categories,blurb`` with the year inside the title. Users like one or two of
eight categories and rate those books higher, so a model has something to learn.

    python tests/data/make_example.py tests/data/example
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

CATEGORIES = ("Mystery", "Romance", "Science Fiction", "Fantasy", "History", "Poetry", "Travel", "Cooking")
ADJECTIVES = ("Silent", "Golden", "Hidden", "Last", "Broken", "Distant", "Crimson", "Quiet", "Endless", "Wild",
              "Northern", "Forgotten", "Little", "Bright", "Secret", "Winter")
NOUNS = ("Harbor", "Garden", "Letters", "Machine", "Kingdom", "River", "Kitchen", "Empire", "Journey", "Orchard",
         "Station", "Lantern", "Island", "Voyage", "Archive", "Summer")
WORDS = {
    "Mystery": "detective murder clue inspector", "Romance": "love heart wedding letters",
    "Science Fiction": "robot starship future planet", "Fantasy": "dragon wizard quest kingdom",
    "History": "war empire century archive", "Poetry": "verse poems sonnet voice",
    "Travel": "journey road island voyage", "Cooking": "recipes kitchen bread feast",
}


def generate(out: Path, *, users: int = 200, books: int = 300, per_user: int = 20, seed: int = 17) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    book_cats = [sorted(set(rng.choice(len(CATEGORIES), size=int(rng.integers(1, 3)), replace=False).tolist()))
                 for _ in range(books)]
    skus = [f"BK-{k:04d}" for k in range(books)]
    with (out / "books.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["sku", "title", "categories", "blurb"])
        for k in range(books):
            title = f"The {ADJECTIVES[k % 16]} {NOUNS[(k * 7 + k // 16) % 16]} ({1950 + int(rng.integers(0, 70))})"
            cats = [CATEGORIES[c] for c in book_cats[k]]
            writer.writerow([skus[k], title, "|".join(cats), " ".join(WORDS[c] for c in cats)])
    affinity = np.zeros((users, books))
    with (out / "ratings.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["customer_id", "sku", "stars", "ts"])
        for u in range(users):
            liked = set(rng.choice(len(CATEGORIES), size=int(rng.integers(1, 3)), replace=False).tolist())
            affinity[u] = [2.0 if liked & set(c) else 0.0 for c in book_cats]
            p = np.exp(affinity[u]) / np.exp(affinity[u]).sum()
            chosen = rng.choice(books, size=per_user, replace=False, p=p)
            stamps = np.sort(rng.integers(1_600_000_000, 1_700_000_000, size=per_user))
            for item, ts in zip(chosen, stamps):
                stars = np.clip(2.0 + affinity[u, item] + rng.normal(0, 1.0), 0.5, 5.0)
                writer.writerow([f"cust-{u:04d}", skus[item], f"{round(stars * 2) / 2:g}", int(ts)])


if __name__ == "__main__":
    generate(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/example"))
