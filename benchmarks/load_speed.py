"""Rows per second and peak memory of the interactions loader, new against old, in one run.

Generates a MovieLens-style CSV (``userId,movieId,rating,timestamp``, half-star
ratings, sparse ids) of ``--rows`` rows in a temporary folder, deleted afterwards, and
loads it in a fresh subprocess per loader, so that each peak resident memory
(``ru_maxrss``) is that loader's alone:

* ``new``: ``fedrec.data.load_csv`` (pyarrow's CSV reader, vectorised checks, dense
  id maps, duplicates merged by the default ``duplicates = last``), on all rows;
* the other shapes, the same rows written differently and loaded by ``load_csv`` with
  no flags: with 1% of the rows repeating a (user, item) pair (merged), whitespace-
  separated without a header (``1 31 4.5 964982703``), and a RecBole ``.inter``
  (``user_id:token`` ... ``timestamp:float`` header, tab-separated);
* ``fedrec data check FILE``: the command itself, in a fresh process (its imports
  included), on the plain CSV;
* ``old``: the loader before the data section (``fedrec/data/loaders.py`` at the
  commit ``--old-rev``, read from git: one ``csv`` row at a time), on the first
  ``--old-rows`` rows only (it needs minutes and gigabytes for 20M), its rows/s
  scaled from them;
* ``pyarrow`` / ``pandas``: the two parsers alone, reading the four typed columns
  (the figures the fast reader was chosen on).

Peak memory is also given above an idle process with the same imports, and beside the
size of the arrays the loader returns (users, items, ratings, timestamps, id maps).

    python benchmarks/load_speed.py [--rows 20000000] [--old-rows 1000000] [--only-new]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OLD_REV = "9f2ae597ff4ca957a990a082793622997d2120d2"  # main before the data section (issue 17)


SHAPES = {  # name: (file name, column names, delimiter, header, share of rows repeating the pair before them)
    "csv": ("ratings.csv", ("userId", "movieId", "rating", "timestamp"), ",", True, 0.0),
    "csv, 1% repeated pairs": ("repeats.csv", ("userId", "movieId", "rating", "timestamp"), ",", True, 0.01),
    "whitespace, no header": ("ratings.txt", ("1", "2", "3", "4"), " ", False, 0.0),
    "RecBole .inter": ("ratings.inter", ("user_id:token", "item_id:token", "rating:float", "timestamp:float"), "\t",
                       True, 0.0),
}


def generate(path: Path, rows: int, *, seed: int = 0, shape: str = "csv") -> None:
    """A ratings file like MovieLens' exports: sparse ids, half stars, unique (user, item) pairs
    (or a share of rows repeating the pair of the row before), in one of :data:`SHAPES`."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    _, names, delimiter, header, repeats = SHAPES[shape]
    rng = np.random.default_rng(seed)
    n_items = 60_000
    per_user = 100
    n_users = -(-rows // per_user)
    schema = pa.schema([(names[0], pa.int64()), (names[1], pa.int64()), (names[2], pa.float64()), (names[3], pa.int64())])
    options = pa_csv.WriteOptions(quoting_style="none", delimiter=delimiter, include_header=header)
    with pa_csv.CSVWriter(path, schema, write_options=options) as writer:
        step = 10_000  # users per block
        for first in range(0, n_users, step):
            users = np.arange(first, min(first + step, n_users))
            # distinct items per user: a random offset and stride through the item range
            offsets = rng.integers(0, n_items, size=users.shape[0])[:, None]
            items = (offsets + np.arange(per_user)[None, :] * 7) % n_items
            take = min(rows - first * per_user, users.shape[0] * per_user)
            u = np.repeat(users * 3 + 1, per_user)[:take]  # sparse user ids
            i = (items.ravel() * 5 + 1)[:take]  # sparse item ids
            if repeats:
                again = np.flatnonzero(rng.random(take) < repeats)
                again = again[(again % per_user) != 0]  # the row before is the same user's
                i[again] = i[again - 1]
            r = rng.integers(1, 11, size=take) / 2.0
            t = rng.integers(800_000_000, 1_700_000_000, size=take)
            writer.write_table(pa.table(dict(zip(names, (u, i, r, t))), schema=schema))


def head(src: Path, dst: Path, rows: int) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        for k, line in enumerate(fin):
            if k > rows:
                break
            fout.write(line)


def old_loader(rev: str):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:fedrec/data/loaders.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_loaders.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_loaders", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_loaders"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def worker(kind: str, path: Path, rev: str) -> dict[str, float]:
    """Run in a fresh process: load once, report seconds, rows, peak RSS and array bytes."""
    sys.path.insert(0, str(REPO))
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from fedrec.data import load_csv

    old = old_loader(rev) if kind == "old" else None
    arrays = 0
    started = time.perf_counter()
    if kind == "new":
        data = load_csv(path)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        arrays = sum(a.nbytes for a in (data.users, data.items, data.ratings, data.timestamps, data.user_ids,
                                         data.item_ids))
        with path.open("rb") as fh:  # the file's rows, repeats included (counted after the timing)
            rows = sum(1 for _ in fh) - (0 if path.suffix == ".txt" else 1)
        return {"seconds": seconds, "rows": rows, "peak_bytes": peak, "array_bytes": arrays, "kept": len(data)}
    elif kind == "old":
        assert old is not None
        data = old.load_csv(path, columns=old.CsvColumns(user="userId", item="movieId"))
        rows = len(data)
        arrays = sum(a.nbytes for a in (data.users, data.items, data.ratings, data.timestamps, data.user_ids,
                                         data.item_ids))
    elif kind == "pyarrow":
        types = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=types))
        columns = [table.column(c).to_numpy() for c in types]
        rows = columns[0].shape[0]
    elif kind == "pandas":
        frame = pd.read_csv(path, engine="c", dtype={"userId": np.int64, "movieId": np.int64, "rating": np.float64,
                                                     "timestamp": np.int64})
        rows = len(frame)
    else:  # idle: the same imports, nothing read
        rows = 0
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"seconds": seconds, "rows": rows, "peak_bytes": peak, "array_bytes": arrays}


def run_check(path: Path, rows: int) -> dict[str, float]:
    """``fedrec data check FILE`` in a fresh process, timed from outside (imports included)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fedrec", "data", "check", str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    seconds = time.perf_counter() - started
    assert f"{rows} interactions" in out.stdout, out.stdout
    return {"seconds": seconds, "rows": rows, "peak_bytes": 0, "array_bytes": 0}


def run(kind: str, path: Path, rev: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--path", str(path), "--old-rev", rev],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--old-rows", type=int, default=1_000_000)
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--only-new", action="store_true", help="skip the old loader and the parsers alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.path, args.old_rev)))
        return
    mib = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "ratings.csv", Path(tmp) / "ratings_head.csv"
        started = time.perf_counter()
        generate(big, args.rows)
        head(big, small, args.old_rows)
        print(f"generated {args.rows:,} rows ({big.stat().st_size / mib:.0f} MiB) in {time.perf_counter() - started:.0f} s")
        idle = run("idle", small, args.old_rev)
        results = {
            "new (pyarrow reader, fedrec.data.load_csv)": run("new", big, args.old_rev),
            "`fedrec data check` (fresh process, imports included)": run_check(big, args.rows),
        }
        for shape, (name, *_) in SHAPES.items():
            if shape == "csv":
                continue
            path = Path(tmp) / name
            generate(path, args.rows, shape=shape)
            results[f"new, {shape}"] = run("new", path, args.old_rev)
            path.unlink()
        if not args.only_new:
            results["pyarrow read_csv alone"] = run("pyarrow", big, args.old_rev)
            results["pandas read_csv (C engine) alone"] = run("pandas", big, args.old_rev)
            old_name = f"old (csv module per row, {args.old_rev[:7]}), first {args.old_rows:,} rows"
            results[old_name] = run("old", small, args.old_rev)
    print(f"idle process with the same imports: {idle['peak_bytes'] / mib:.0f} MiB peak RSS")
    print(f"{'loader':<62} {'rows':>11} {'s':>7} {'rows/s':>12} {'peak MiB':>9} {'+idle MiB':>9} {'arrays MiB':>10}")
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        extra = (r["peak_bytes"] - idle["peak_bytes"]) / mib
        arrays = f"{r['array_bytes'] / mib:.0f}" if r["array_bytes"] else "-"
        peak = f"{r['peak_bytes'] / mib:.0f}" if r["peak_bytes"] else "-"
        extra_text = f"{extra:.0f}" if r["peak_bytes"] else "-"
        kept = f" ({r['kept']:,} rows kept)" if r.get("kept", r["rows"]) != r["rows"] else ""
        print(f"{name:<62} {r['rows']:>11,} {r['seconds']:>7.1f} {rate:>12,.0f} {peak:>9} {extra_text:>9} {arrays:>10}{kept}")
    new = results["new (pyarrow reader, fedrec.data.load_csv)"]
    if args.only_new:
        return
    old = next(v for k, v in results.items() if k.startswith("old"))
    speedup = (new["rows"] / new["seconds"]) / (old["rows"] / old["seconds"])
    ratio = (new["peak_bytes"] - idle["peak_bytes"]) / new["array_bytes"]
    print(f"new vs old rows/s: {speedup:.1f}x (old measured on its first {old['rows']:,} rows; rows/s compared)")
    print(f"new loader's peak memory above the idle process: {ratio:.2f}x the arrays it returns")


if __name__ == "__main__":
    main()
