"""How long the audit report takes for a long ledger (issue 15 target: < 5 s at 1,000 rounds).

Writes a real ledger with :class:`fedrec.privacy.session.PrivacySession` (signed,
hash-chained, a resume in the middle, closed), then times, in this process after the
imports, reading and verifying it, building the report's dict and rendering the HTML
page (the accountant's cache emptied first, so no epsilon comes from writing the
ledger); and, separately, the whole ``fedrec audit RUN --html`` command in a fresh
process (Python start and every import included; it imports neither torch nor
``opacus/__init__``, see :func:`fedrec.privacy.accountant.load_opacus_accountants`).

    python benchmarks/audit_report_speed.py --rounds 1000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from fedrec.privacy.accountant import epsilon
from fedrec.privacy.ledger import PUBLIC_KEY, load_or_create_key
from fedrec.privacy.report import PRV_POINTS, build_document, collect
from fedrec.privacy.report_html import render_html
from fedrec.privacy.session import PrivacySession


def write_ledger(run_dir: Path, *, rounds: int, accountant: str) -> None:
    key = load_or_create_key(run_dir.parent / "key.pem")
    settings: dict[str, Any] = {
        "key": key, "accountant": accountant, "delta": 1e-5, "budget": 50.0, "population": 100_000, "sample_rate": 0.01,
        "noise_multiplier": 1.0, "clipping_norm": 1.0, "config_hash": "b" * 64,
    }
    session = PrivacySession(run_dir=run_dir, **settings)
    crash_at = rounds // 2
    with Progress() as progress:
        task = progress.add_task(f"writing a {rounds}-round ledger", total=rounds)
        for round_ in range(1, crash_at + 1):
            session.record_round(round_, clients=1000)
            progress.advance(task)
        # a crash after the ledger write of round crash_at; the checkpoint is of the round before
        session = PrivacySession(run_dir=run_dir, resume=True, **settings)
        session.mark_resume(checkpoint_round=crash_at - 1)
        for round_ in range(crash_at, rounds):
            session.record_round(round_, clients=1000)
            progress.advance(task)
    session.close(stopped_by_budget=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--accountant", choices=("prv", "rdp"), default="prv", help="the run's headline accountant")
    parser.add_argument("--prv-points", type=int, default=PRV_POINTS)
    parser.add_argument("--keep", type=Path, default=None, help="write the run and report here instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="time the ledger already in KEEP/run (written by an earlier --keep)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        run_dir = base / "run"
        if not (args.reuse and args.keep):
            started = time.perf_counter()
            write_ledger(run_dir, rounds=args.rounds, accountant=args.accountant)
            print(f"wrote {args.rounds} ledger rounds in {time.perf_counter() - started:.1f} s")

        epsilon.cache_clear()  # the report recomputes every epsilon, as an auditor's process does
        cpu = time.process_time()
        started = time.perf_counter()
        inputs = collect(run_dir, public_key=run_dir / PUBLIC_KEY)
        collected = time.perf_counter()
        doc = build_document(inputs, prv_points=args.prv_points)
        built = time.perf_counter()
        page = render_html(doc)
        rendered = time.perf_counter()
        cpu = time.process_time() - cpu
        (base / "report.html").write_text(page, encoding="utf-8")
        print(f"status {doc['status']}, {doc['rounds']} rounds, epsilon {doc['epsilon']['headline']:.4f} ({doc['epsilon']['accountant']}), "
              f"{len(page) / 1e3:.0f} kB of HTML")
        print(f"in process: verify {collected - started:.2f} s + document {built - collected:.2f} s "
              f"+ HTML {rendered - built:.2f} s = {rendered - started:.2f} s wall, {cpu:.2f} s CPU "
              "(CPU time: what an idle machine would take, as the report runs on one core)")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fedrec", "audit", str(run_dir), "--public-key", str(run_dir / PUBLIC_KEY),
             "--html", str(base / "report-cli.html"), "--prv-points", str(args.prv_points)],
            env=env, capture_output=True, text=True, check=False,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
        print(f"fedrec audit --html (fresh process, imports included): {wall:.2f} s wall, {child_cpu:.2f} s CPU, exit {done.returncode}")


if __name__ == "__main__":
    main()
