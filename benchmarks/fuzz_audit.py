"""Fuzz the ledger parser and the audit for ``--minutes`` minutes (issue 7, item 4).

Starts from a real signed ledger (a closed DP run that was resumed once after a crash,
and the results.json that names its head), applies random mutations (byte flips, inserts of random bytes or of
JSON tokens, deletions, overwrites, one field set to a random JSON value of any type,
one field dropped, lines swapped or duplicated) and runs
:func:`fedrec.privacy.audit.audit_run` on each. A *crash* is any exception escaping the
audit; a *false pass* is exit code 0 for a ledger whose lines differ from the original.
Prints the number of inputs tried, crashes and false passes (target: 0 and 0).

    python3 benchmarks/fuzz_audit.py --minutes 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from fedrec.experiments.results import RESULTS
from fedrec.privacy.audit import audit_run
from fedrec.privacy.ledger import LEDGER, load_or_create_key
from fedrec.privacy.session import PrivacySession

TOKENS = [b"\n", b"\r", b" ", b"0", b"9", b"-", b".", b"e", b'"', b",", b"{", b"}", b"[", b"]", b"null", b"true",
          b"1e999", b"NaN", b"-Infinity", b'"round"', b'"epsilon":0,', b"\xff", b"\x00", b"\\u0000", b"\\ud800",
          b"9" * 5000, b"[" * 3000]


def write_ledger(run_dir: Path) -> None:
    """Two rounds, a crash, a resume from the round-1 checkpoint, two more rounds, close."""
    key = load_or_create_key(run_dir.parent / "key.pem")

    def open_session(resume: bool) -> PrivacySession:
        return PrivacySession(
            run_dir=run_dir, key=key, accountant="rdp", delta=1e-5, budget=10.0, population=100, sample_rate=0.1,
            noise_multiplier=1.2, clipping_norm=1.0, config_hash="0" * 64, resume=resume,
        )

    session = open_session(False)
    for round_ in (1, 2):
        session.record_round(round_, clients=10)
    session = open_session(True)
    session.mark_resume(checkpoint_round=1)
    for round_ in (2, 3):
        session.record_round(round_, clients=10)
    session.close(stopped_by_budget=False)
    (run_dir / RESULTS).write_text(json.dumps({"ledger_head": session.head}))


def random_json(rng: np.random.Generator, depth: int = 0) -> object:
    kind = int(rng.integers(0, 8 if depth < 2 else 6))
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return int(rng.integers(-(2**62), 2**62)) >> int(rng.integers(0, 62))
    if kind == 3:
        return float(rng.choice([0.0, -1.0, 1e-300, 1e300, float(rng.normal()), float("inf"), float("nan")]))
    if kind == 4:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, size=int(rng.integers(0, 6))))
    if kind == 5:
        return str(float(rng.normal()))  # a number, as a string
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 3)))]
    return {str(k): random_json(rng, depth + 1) for k in range(int(rng.integers(0, 3)))}


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four random edits, at the byte level or on the JSON of one entry."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 8))
        at = int(rng.integers(0, len(out) + 1))
        lines = bytes(out).splitlines()
        if op == 0 and at < len(out):
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            out[at:at] = rng.bytes(int(rng.integers(1, 9)))
        elif op == 2:
            out[at:at] = TOKENS[int(rng.integers(0, len(TOKENS)))]
        elif op == 3:
            del out[at : at + int(rng.integers(1, 65))]
        elif op == 4:
            token = TOKENS[int(rng.integers(0, len(TOKENS)))]
            out[at : at + len(token)] = token
        elif op in (5, 6) and lines:
            n = int(rng.integers(0, len(lines)))
            try:
                entry = json.loads(lines[n])
            except (ValueError, RecursionError):
                continue
            if not isinstance(entry, dict) or not entry:
                continue
            name = sorted(entry)[int(rng.integers(0, len(entry)))]
            if op == 5:
                entry[name] = random_json(rng)
            else:
                del entry[name]
            lines[n] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
            out = bytearray(b"\n".join(lines) + b"\n")
        elif op == 7 and len(lines) > 1:
            i, j = (int(k) for k in rng.integers(0, len(lines), size=2))
            if rng.integers(0, 2):
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(i, lines[j])
            out = bytearray(b"\n".join(lines) + b"\n")
    return bytes(out)


class Hang(Exception):
    """An audit that ran past ``--hang-seconds``: a denial of service, counted as a crash."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=int, default=10, help="an audit slower than this is a crash")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    rng = np.random.default_rng(args.seed)
    tried = crashes = false_passes = no_ops = 0
    codes: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real" / "run"
        write_ledger(real)
        if audit_run(real).code != 0:
            raise SystemExit("the unmodified ledger does not verify: nothing to fuzz")
        original = (real / LEDGER).read_bytes()
        work = Path(tmp) / "work"
        shutil.copytree(real, work)
        deadline = time.monotonic() + 60 * args.minutes
        while time.monotonic() < deadline:
            mutated = mutate(original, rng)
            (work / LEDGER).write_bytes(mutated)
            tried += 1
            signal.alarm(args.hang_seconds)
            try:
                report = audit_run(work)
            except Exception:  # noqa: BLE001 - what this script exists to find (Hang included)
                crashes += 1
                if crashes <= 5:
                    print(f"CRASH on input {tried}: {mutated[:400]!r}\n{traceback.format_exc()}")
                continue
            finally:
                signal.alarm(0)
            codes[report.code] = codes.get(report.code, 0) + 1
            same = mutated.endswith(b"\n") and mutated.splitlines() == original.splitlines()
            no_ops += same
            if report.code == 0 and not same:
                false_passes += 1
                if false_passes <= 5:
                    print(f"FALSE PASS on input {tried}: {mutated[:400]!r}")
    print(
        f"fuzz_audit: {tried} inputs in {args.minutes:g} min, {crashes} crashes, {false_passes} false passes, "
        f"{no_ops} no-op mutations; exit codes {dict(sorted(codes.items()))}"
    )


if __name__ == "__main__":
    main()
