"""Fuzzing the ledger parser and the audit: a damaged ledger never crashes the audit and
never passes it (issue 7, item 4). The longer run is ``benchmarks/fuzz_audit.py``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrec.experiments.results import RESULTS
from fedrec.privacy.audit import audit_run
from fedrec.privacy.ledger import LEDGER, load_or_create_key
from fedrec.privacy.session import PrivacySession


def write_ledger(run_dir: Path, key_path: Path, *, rounds: int = 3) -> None:
    """A real, closed ledger of a small DP run, and the results.json naming its head."""
    session = PrivacySession(
        run_dir=run_dir, key=load_or_create_key(key_path), accountant="rdp", delta=1e-5, budget=10.0,
        population=100, sample_rate=0.1, noise_multiplier=1.2, clipping_norm=1.0, config_hash="0" * 64,
    )
    for round_ in range(1, rounds + 1):
        session.record_round(round_, clients=10)
    session.close(stopped_by_budget=False)
    (run_dir / RESULTS).write_text(json.dumps({"ledger_head": session.head}))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ledger") / "run"
    write_ledger(run_dir, run_dir.parent / "key.pem")
    assert audit_run(run_dir).code == 0
    return run_dir


def mutate(data: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply (kind, position, length, payload) edits: 0 flip a byte, 1 insert, 2 delete, 3 overwrite."""
    out = bytearray(data)
    for kind, position, length, payload in edits:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] ^= 1 << (length % 8)
        elif kind == 1:
            out[at:at] = payload
        elif kind == 2:
            del out[at : at + length]
        else:
            out[at : at + len(payload)] = payload
    return bytes(out)


def is_no_op(original: bytes, mutated: bytes) -> bool:
    """Same lines, as the parser reads them ("\\r\\n" for "\\n" changes no entry)."""
    return mutated.endswith(b"\n") and mutated.splitlines() == original.splitlines()


# Payloads near what a tamperer would write: JSON punctuation, digits, keys of the ledger.
TOKENS = st.sampled_from([b"\n", b"\r", b" ", b"0", b"9", b"-", b".", b"e", b'"', b",", b"{", b"}", b"[", b"]",
                          b"null", b"true", b"1e999", b'"round"', b'"epsilon":0', b"\xff", b"\x00", b"9" * 5000])
EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 64), st.one_of(st.binary(max_size=8), TOKENS)),
    min_size=1, max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_a_mutated_ledger_never_crashes_the_audit_nor_passes_it(real_run: Path, edits) -> None:
    original = (real_run / LEDGER).read_bytes()
    mutated = mutate(original, edits)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(real_run, run_dir)
        (run_dir / LEDGER).write_bytes(mutated)
        report = audit_run(run_dir)  # must not raise
    if is_no_op(original, mutated):
        assert report.code == 0, report.problems
    else:
        assert report.code in (3, 4, 5), (report.code, report.problems)
        assert report.problems


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_ledger_are_malformed_or_tampered(real_run: Path, junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(real_run, run_dir)
        (run_dir / LEDGER).write_bytes(junk)
        report = audit_run(run_dir)
    assert report.code in (3, 5)


@pytest.mark.parametrize(
    "line, name, value",
    [(0, "delta", "x"), (0, "delta", [1]), (0, "budget", "ten"), (0, "budget", {}), (0, "accountant", 3),
     (1, "epsilon", "x"), (3, "epsilon", None), (3, "round", "3"), (4, "rounds", []),
     # forged mechanism parameters that overflow, divide by zero or hang the accountants
     (1, "noise_multiplier", 1e-300), (1, "noise_multiplier", 1e300), (2, "noise_multiplier", 0.02),
     (3, "sample_rate", 1e-300)],
)
def test_wrong_types_in_signed_fields_are_reported(real_run: Path, tmp_path: Path, line, name, value) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(real_run, run_dir)
    (run_dir / LEDGER).write_bytes(edit_field((real_run / LEDGER).read_bytes(), line, name, value, False))
    report = audit_run(run_dir)
    assert report.code in (3, 5) and report.problems


@pytest.mark.parametrize("payload", [b"9" * 5000, b"[" * 100_000, b'"\\ud800"'])
def test_pathological_json_is_malformed_not_a_crash(real_run: Path, tmp_path: Path, payload: bytes) -> None:
    """Huge integers (Python refuses > 4300 digits), deep nesting, lone surrogates."""
    run_dir = tmp_path / "run"
    shutil.copytree(real_run, run_dir)
    lines = (real_run / LEDGER).read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"round":', b'"round":' + payload + b",\"r\":")
    (run_dir / LEDGER).write_bytes(b"\n".join(lines) + b"\n")
    report = audit_run(run_dir)
    assert report.code in (3, 5) and report.problems


@pytest.mark.parametrize("results", [b"[]", b"3", b"\xff", b"[" * 100_000, b'{"ledger_head": 5}'])
def test_a_broken_results_json_is_no_crash(real_run: Path, tmp_path: Path, results: bytes) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(real_run, run_dir)
    (run_dir / RESULTS).write_bytes(results)
    report = audit_run(run_dir)
    assert report.code == (3 if results.startswith(b"{") else 0)  # a wrong head is tampering; no results, a warning


def test_the_fuzzed_ledger_is_a_real_one(real_run: Path) -> None:
    """The fuzz starts from a ledger that verifies, with rounds and a close entry."""
    report = audit_run(real_run)
    assert report.code == 0 and report.rounds == 3 and report.closed


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


def fields(ledger: bytes) -> list[tuple[int, str]]:
    """Every (line, field name) of a ledger."""
    return [(n, name) for n, line in enumerate(ledger.splitlines()) for name in sorted(json.loads(line))]


def edit_field(original: bytes, line: int, name: str, value: object, drop: bool) -> bytes:
    """Replace (or drop) one field of one entry, re-serialised as the writer would."""
    lines = original.splitlines()
    entry = json.loads(lines[line])
    if drop:
        del entry[name]
    else:
        entry[name] = value
    lines[line] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return b"\n".join(lines) + b"\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), value=JSON_VALUES, drop=st.booleans())
def test_a_field_of_any_type_never_crashes_the_audit_nor_passes_it(real_run: Path, data, value, drop) -> None:
    """A tamperer who edits fields (with values of the wrong type too) is caught, not a crash."""
    original = (real_run / LEDGER).read_bytes()
    line, name = data.draw(st.sampled_from(fields(original)), label="field")
    mutated = edit_field(original, line, name, value, drop)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(real_run, run_dir)
        (run_dir / LEDGER).write_bytes(mutated)
        report = audit_run(run_dir)
    if mutated == original:
        assert report.code == 0, report.problems
    else:
        assert report.code in (3, 4, 5), (report.code, report.problems)
