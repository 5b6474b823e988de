"""The audit report (issue 15): one dict for --json and --html, built from a real ledger."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.experiments.results import RESULTS
from fedrec.privacy.accountant import compress, epsilon
from fedrec.privacy.audit import MALFORMED, OK, OVER_BUDGET, TAMPERED, audit_run
from fedrec.privacy.audit_curve import prv_rounds, rdp_curve
from fedrec.privacy.ledger import LEDGER, PUBLIC_KEY, public_pem
from fedrec.privacy.report import EMPIRICAL_AUDIT, audit_document
from fedrec.privacy.report_html import render_html

from .conftest import TAMPERINGS, MakeRun, tamper

runner = CliRunner()


class _Text(HTMLParser):
    """Text by element id, and the first element inside <body>."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.first_in_body: tuple[str, dict[str, str | None]] | None = None
        self._in_body = False
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._in_body = True
            return
        if self._in_body and self.first_in_body is None:
            self.first_in_body = (tag, dict(attrs))
        ident = dict(attrs).get("id")
        if ident:
            self.by_id[ident] = ""
        self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag != "body":
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.by_id[ident] += data


def parse(page: str) -> _Text:
    parser = _Text()
    parser.feed(page)
    return parser


def report(run_dir: Path, tmp_path: Path, *extra: str) -> tuple[dict, str, int]:
    """Run ``fedrec audit --json --html`` as a user would; the JSON and the page."""
    page = tmp_path / f"{run_dir.name}.html"
    result = runner.invoke(app, ["audit", str(run_dir), "--json", "--html", str(page), "--prv-points", "2", *extra])
    return json.loads(result.output), page.read_text(encoding="utf-8"), result.exit_code


def test_the_rdp_curve_equals_the_accountant_on_every_prefix() -> None:
    steps = [(1.0, 0.05)] * 5 + [(0.8, 0.1)] * 3 + [(1.0, 0.0)] + [(1.0, 0.05)] * 2
    curve = rdp_curve(steps, delta=1e-5)
    assert len(curve) == len(steps)
    for k in range(1, len(steps) + 1):
        assert curve[k - 1] == epsilon(compress(steps[:k]), delta=1e-5, accountant="rdp")
    assert rdp_curve([(1.0, 0.1), (0.0, 0.1), (1.0, 0.1)], delta=1e-5)[1:] == [float("inf")] * 2


def test_prv_is_evaluated_at_the_last_round_and_before_resumes() -> None:
    assert prv_rounds(1000, points=4) == [250, 500, 750, 1000]
    assert prv_rounds(3, points=8) == [1, 2, 3]
    assert prv_rounds(10, points=0, always=[4, 99]) == [4, 10]
    assert prv_rounds(0, points=8) == []


def test_a_verified_report_has_the_audits_numbers(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(rounds=6)
    doc, page, code = report(run, tmp_path, "--public-key", str(run / PUBLIC_KEY))
    assert code == OK and doc["status"] == "verified" and doc["verdict"]["entries_verified"]
    legacy = audit_run(run).to_json()  # what --json printed before the report: still there, unchanged
    assert {k: doc[k] for k in legacy} == legacy
    rounds = doc["per_round"]
    assert [r["round"] for r in rounds] == list(range(1, 7))
    assert rounds[-1]["epsilon_rdp"] == doc["epsilon_rdp"] and rounds[-1]["epsilon_prv"] == doc["epsilon_prv"]
    assert doc["epsilon"]["headline"] == doc["epsilon_rdp"]  # the run's headline accountant is RDP
    assert doc["phases"] == [{
        "first_round": 1, "last_round": 6, "rounds": 6, "mechanism": "dp-fedavg/user-level/poisson-subsampled-gaussian",
        "noise_multiplier": 1.1, "sample_rate": 0.05, "clipping_norm": 1.0, "local_dp": None,
        "clients_min": 10.0, "clients_max": 10.0, "clients_mean": 10.0,
    }]
    assert doc["key"]["matches"] is True and doc["key"]["source"] == "--public-key"
    text = parse(page)
    # the page's epsilon is --json's, to the printed precision
    assert text.by_id["eps-prv"] == f"{doc['epsilon_prv']:.4f}"
    assert text.by_id["eps-rdp"] == f"{doc['epsilon_rdp']:.4f}"
    assert text.by_id["eps-headline"] == f"{doc['epsilon_rdp']:.4f}"
    assert text.by_id["rounds"] == "6" and "matches" in text.by_id["key-match"]
    assert text.first_in_body is not None and text.first_in_body[1].get("class") == "verdict verified"
    assert "<svg" in page


def test_the_page_is_self_contained(make_run: MakeRun, tmp_path: Path) -> None:
    _, page, _ = report(make_run(rounds=3), tmp_path)
    for needle in ("<script", "<link", "src=", "@import", "@font-face", "<iframe", "<img", "<object", "<embed"):
        assert needle not in page.lower(), needle
    assert re.findall(r"url\((?!#)", page) == []  # only references inside the page (clip paths)
    # the only addresses are XML namespace names, which a browser never fetches
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


@pytest.mark.parametrize("kind", TAMPERINGS)
def test_each_tampering_gives_a_red_tampered_page(make_run: MakeRun, tmp_path: Path, kind: str) -> None:
    run, other = make_run(rounds=4), make_run(rounds=4)
    tamper(run, kind, other=other)
    doc, page, code = report(run, tmp_path)
    assert code == TAMPERED and doc["status"] == "tampered", doc["problems"]
    assert not doc["verdict"]["entries_verified"] and doc["epsilon"]["headline"] is None
    text = parse(page)
    assert text.first_in_body == ("h1", {"id": "verdict", "class": "verdict tampered"})
    assert text.by_id["verdict"].startswith("TAMPERED: ") and doc["verdict"]["reason"] in text.by_id["verdict"]
    assert re.search(r"\.verdict\.tampered[^{]*\{[^}]*color:#b00020", page)  # red
    assert text.by_id["eps-prv"] == "-"  # no epsilon from entries the server did not sign


def test_a_foreign_public_key_is_shown_as_not_matching(make_run: MakeRun, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    trusted = tmp_path / "operator.pem"
    trusted.write_bytes(public_pem(Ed25519PrivateKey.generate()))
    doc, page, code = report(make_run(rounds=2), tmp_path, "--public-key", str(trusted))
    assert code == TAMPERED and doc["key"]["matches"] is False
    assert "does NOT match" in parse(page).by_id["key-match"]


@pytest.mark.parametrize("content", [b"", b'{"kind": "header"\n', b"\xff\xfe\n", b"[1, 2]\n"])
def test_a_malformed_ledger_gives_a_red_page_not_a_crash(make_run: MakeRun, tmp_path: Path, content: bytes) -> None:
    run = make_run(rounds=2)
    (run / LEDGER).write_bytes(content)
    doc, page, code = report(run, tmp_path)
    assert code == MALFORMED and doc["status"] == "malformed"
    assert parse(page).first_in_body == ("h1", {"id": "verdict", "class": "verdict malformed"})


def test_a_missing_run_gives_a_malformed_page(tmp_path: Path) -> None:
    _doc, page, code = report(tmp_path / "nothing", tmp_path)
    assert code == MALFORMED and "MALFORMED" in parse(page).by_id["verdict"]


def test_over_budget_page(make_run: MakeRun, tmp_path: Path) -> None:
    doc, page, code = report(make_run(rounds=4, budget=0.5), tmp_path)
    assert code == OVER_BUDGET and doc["epsilon"]["headline"] > 0.5
    text = parse(page)
    assert text.by_id["verdict"].startswith("OVER BUDGET: epsilon ")
    assert text.by_id["budget"] == "0.5" and text.by_id["eps-rdp"] == f"{doc['epsilon_rdp']:.4f}"


def test_resumed_run_shows_spent_but_unused_rounds(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(rounds=5, resume_at=3, rejected={1: 2, 4: 1})
    doc, page, code = report(run, tmp_path)
    assert code == OK and doc["resumes"] == 1 and doc["unused_rounds"] == 1
    assert doc["resume_events"] == [{"after_ledger_round": 3, "checkpoint_round": 2, "unused_rounds": [3]}]
    assert [r["model_round"] for r in doc["per_round"]] == [1, 2, 3, 3, 4]
    assert [r["unused"] for r in doc["per_round"]] == [False, False, True, False, False]
    # rejected updates per model round from results.json; none for the unused round
    assert [r["rejected"] for r in doc["per_round"]] == [2, 0, None, 0, 1] and doc["rejected"]["total"] == 3
    # PRV is also evaluated where the crash happened
    assert doc["per_round"][2]["epsilon_prv"] == pytest.approx(epsilon(((1.1, 0.05, 3),), delta=1e-5, accountant="prv"))
    text = parse(page)
    assert text.by_id["resumes"] == "1" and text.by_id["unused"] == "1"
    assert "ledger rounds 3 spent but unused" in text.by_id["resumes-list"]


def test_empirical_audit_is_shown_and_checked_against_the_accountant(make_run: MakeRun, tmp_path: Path) -> None:
    from fedrec.privacy.canaries import EMPIRICAL_AUDIT as WRITTEN

    assert EMPIRICAL_AUDIT == WRITTEN
    run = make_run(rounds=3)
    emp = {"dp": True, "accountant_epsilon": 1.0, "delta": 1e-5, "one_run_epsilon_lower_bound": 0.123,
           "cp_epsilon_lower_bound": 0.05, "canaries": 200, "members": 101, "guesses": 40, "correct": 25, "auc": 0.55,
           "beta": 0.05, "rounds": 3}
    (run / EMPIRICAL_AUDIT).write_text(json.dumps(emp))
    doc, page, _ = report(run, tmp_path)
    assert doc["empirical"]["lower_bound"] == 0.123 and doc["empirical"]["consistent"] is True
    assert parse(page).by_id["emp-one-run"] == "0.123"
    emp["one_run_epsilon_lower_bound"] = 99.0  # a bound above the accountant's epsilon
    (run / EMPIRICAL_AUDIT).write_text(json.dumps(emp))
    doc, page, _ = report(run, tmp_path)
    assert doc["empirical"]["consistent"] is False and "EXCEEDS" in page


@pytest.mark.parametrize("junk", [b"[]", b"\xff", b'{"round_log": [1, {"round": "x"}, {"round": 1, "rejected": null}]}',
                                  b'{"round_log": {}, "rejected_updates": "many"}'])
def test_hostile_side_files_are_no_crash(make_run: MakeRun, tmp_path: Path, junk: bytes) -> None:
    run = make_run(rounds=2)
    (run / RESULTS).write_bytes(junk)
    (run / EMPIRICAL_AUDIT).write_bytes(junk)
    doc, page, _ = report(run, tmp_path)
    assert "<h1" in page and all(r["rejected"] is None for r in doc["per_round"])


def test_strings_from_the_run_folder_are_escaped(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(rounds=2)
    lines = (run / LEDGER).read_bytes().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["run_id"] = "<script>alert(1)</script>"
    lines[0] = json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (run / LEDGER).write_bytes(b"".join(lines))
    doc = audit_document(run)
    assert doc["status"] == "tampered"
    page = render_html(doc)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_releases_are_composed_listed_and_shared(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedrec.privacy.session import PrivacySession

    run = tmp_path / "run"
    session = PrivacySession(
        run_dir=run, key=Ed25519PrivateKey.generate(), accountant="prv", delta=1e-5, budget=20.0, population=200,
        sample_rate=0.05, noise_multiplier=1.1, clipping_norm=1.0, config_hash="a" * 64,
    )
    session.record_release(mechanism="gaussian-sum/item-counts", purpose="popularity prior", noise_multiplier=4.0,
                           sample_rate=1.0, clipping_norm=1.0, clients=200)
    for r in range(1, 4):
        session.record_round(r, clients=10)
    session.record_release(mechanism="gaussian-sum/metrics", purpose="evaluation (val)", noise_multiplier=3.0,
                           sample_rate=0.5, clipping_norm=1.5, clients=100, steps=2)
    session.close(stopped_by_budget=False)
    doc, page, code = report(run, tmp_path)
    assert code == OK and doc["releases"] == 2  # the audit's own count, unchanged
    eps = doc["epsilon"]
    assert eps["prv"] == audit_run(run).epsilon_prv
    rounds_only = ((1.1, 0.05, 3),)
    assert eps["rounds_only"]["prv"] == epsilon(rounds_only, delta=1e-5, accountant="prv")
    assert eps["rounds_only"]["rdp"] == epsilon(rounds_only, delta=1e-5, accountant="rdp")
    assert eps["rounds_only"]["prv"] < eps["prv"]
    first, second = doc["other_releases"]
    assert (first["purpose"], first["after_round"], second["steps"], second["after_round"]) == ("popularity prior", 0, 2, 3)
    assert first["epsilon_alone"]["prv"] == epsilon(((4.0, 1.0, 1),), delta=1e-5, accountant="prv")
    # each round's epsilon includes what was released before it
    history = ((4.0, 1.0, 1), (1.1, 0.05, 1))
    assert doc["per_round"][0]["epsilon_rdp"] == epsilon(history, delta=1e-5, accountant="rdp")
    assert second["epsilon_rdp_after"] == doc["epsilon_rdp"]
    assert doc["evaluation"]["private"] is True and doc["evaluation"]["releases"] == [2]
    text = parse(page)
    assert text.by_id["eps-total"] == f"{eps['prv']:.4f}" and text.by_id["eps-rounds-only"] == f"{eps['rounds_only']['prv']:.4f}"
    assert text.by_id["eps-releases-share"] == f"{eps['prv'] - eps['rounds_only']['prv']:.4f}"


def test_a_prefix_the_prv_accountant_cannot_evaluate_is_a_missing_point_not_a_crash() -> None:
    from fedrec.privacy.audit_curve import prv_at

    # Opacus' PRV raises "Discrete mean differs significantly" for one step at z = 0.01
    points = prv_at([(1.0, 1.0), (0.01, 1.0)], [1, 2], delta=1e-5)
    assert math.isfinite(points[1])
    assert math.isnan(points[2])
