"""Released values as a person reads them: clamped to their range, with their noise.

A metric released through the Gaussian sum of :mod:`fedrec.privacy.eval_release` is
``(sum of clipped values + N(0, (z C)^2)) / n``: unbiased, but with few devices the
noise can carry it far outside [0, 1] (an NDCG@10 of 6.97, a negative hit rate).
What is shown is therefore

- the value clamped to its range [0, 1] (post-processing of the release: no privacy
  cost); the raw value stays in ``results.json`` for whoever averages across runs;
- the standard deviation of the noise in it, ``sigma = z C / n`` with ``C = sqrt(d)``
  for d metrics and ``n`` the devices asked (the mechanism's fixed denominator), read
  from the release's own signed ledger entry;
- "not informative" when ``sigma`` exceeds a quarter of the range: the value then says
  more about the noise draw than about the model.

Everything here is pure and light (no torch): ``fedrec audit`` uses it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import LedgerError
from fedrec.experiments.results import RESULTS
from fedrec.privacy.ledger import LEDGER, read_entries

# The evaluation mechanism's name as its ledger entries carry it (eval_release.MECHANISM;
# a test keeps them equal: importing eval_release here would load numpy's generators for
# every `fedrec audit`).
METRIC_MECHANISM = "gaussian-sum/per-user-metrics"
METRIC_RANGE = (0.0, 1.0)  # every released metric (hit rate, NDCG, recall) is a mean of values in [0, 1]
NOT_INFORMATIVE_SHARE = 0.25  # noise sigma above this share of the range: the value is not informative
TARGET_NOISE_STD = 0.01  # the noise sigma `fedrec plan` sizes the evaluation for
METRIC_LABELS = {
    "hr@10": "HR@10", "ndcg@10": "NDCG@10", "full_hr@10": "full HR@10", "full_ndcg@10": "full NDCG@10",
    "recall@20": "Recall@20",
}


def metric_noise_std(*, noise_multiplier: float, sensitivity: float, devices_asked: int) -> float:
    """Noise standard deviation of one released mean metric: ``z C / n``.

    Parameters
    ----------
    noise_multiplier
        z of the release.
    sensitivity
        C, the L2 bound of one device's clipped metric vector (sqrt(d) for d metrics).
    devices_asked
        n, the mechanism's denominator (the devices asked, not those that replied).
    """
    if devices_asked < 1:
        raise ValueError(f"devices_asked must be >= 1, got {devices_asked}")
    return noise_multiplier * sensitivity / devices_asked


def devices_for_noise_std(*, noise_multiplier: float, n_metrics: int, target: float = TARGET_NOISE_STD) -> int:
    """Fewest devices asked whose release of ``n_metrics`` metrics at z has noise sigma
    at most ``target`` per metric: ``ceil(z sqrt(d) / target)``."""
    if not target > 0 or n_metrics < 1:
        raise ValueError(f"need target > 0 and n_metrics >= 1, got {target}, {n_metrics}")
    needed = noise_multiplier * math.sqrt(n_metrics) / target
    return max(1, math.ceil(needed - 1e-9 * needed))  # z sqrt(d) / target may land a rounding error above an integer


def informative(noise_std: float | None, *, low: float = METRIC_RANGE[0], high: float = METRIC_RANGE[1]) -> bool:
    """Whether a value with this noise sigma says something: sigma <= a quarter of the range
    (an exact value, ``None``, always does)."""
    return noise_std is None or noise_std <= NOT_INFORMATIVE_SHARE * (high - low)


def _number(value: float) -> str:
    """A noise sigma, readable at any size: 3 significant digits."""
    return f"{value:.3g}"


@dataclass(frozen=True)
class ShownMetric:
    """One metric as shown: the raw release, clamped, with its noise."""

    name: str
    raw: float  # as released (NaN: not released)
    noise_std: float | None = None  # None: exact (a simulation's evaluation)
    devices: int | None = None  # devices asked (the release's denominator)
    low: float = METRIC_RANGE[0]
    high: float = METRIC_RANGE[1]

    @property
    def value(self) -> float:
        """The raw value clamped to [low, high] (NaN stays NaN)."""
        return self.raw if math.isnan(self.raw) else min(max(self.raw, self.low), self.high)

    @property
    def clamped(self) -> bool:
        return not math.isnan(self.raw) and self.value != self.raw

    @property
    def informative(self) -> bool:
        return informative(self.noise_std, low=self.low, high=self.high)

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.name, self.name)

    def note(self) -> str:
        """What qualifies the value ("" for an exact, unclamped one)."""
        parts = ["clamped"] if self.clamped else []
        if self.noise_std is not None:
            sigma = f"noise σ {_number(self.noise_std)}"
            at = f"at {self.devices} devices" if self.devices is not None else ""
            parts.append(f"{sigma} — not informative {at}".rstrip() if not self.informative else f"{sigma} {at}".rstrip())
        return "; ".join(parts)

    def text(self) -> str:
        """E.g. ``HR@10 1.000 (clamped; noise σ 4.47 — not informative at 10 devices)``."""
        if math.isnan(self.raw):
            return f"{self.label} not released"
        note = self.note()
        return f"{self.label} {self.value:.3f}" + (f" ({note})" if note else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "value": None if math.isnan(self.raw) else self.value, "raw": None if math.isnan(self.raw) else self.raw,
            "clamped": self.clamped, "noise_std": self.noise_std, "devices_asked": self.devices,
            "informative": self.informative, "range": [self.low, self.high], "text": self.text(),
        }


def shown_metric(name: str, raw: object, *, noise_std: float | None = None, devices: int | None = None) -> ShownMetric:
    """``raw`` (anything read from JSON) as a :class:`ShownMetric`; a non-number is NaN."""
    value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    if math.isinf(value):
        value = math.nan
    return ShownMetric(name=name, raw=value, noise_std=noise_std, devices=devices)


@dataclass(frozen=True)
class MetricRelease:
    """One evaluation release as its signed ledger entry says."""

    release: int | None
    purpose: str
    split: str | None  # "val", "test", or None when the purpose does not say
    round: int | None  # the model round it evaluates, when the purpose says
    noise_multiplier: float
    sensitivity: float  # C = sqrt(d)
    devices_asked: int
    devices_recorded: bool  # False: an older entry without devices_asked; ``clients`` (replies, <= asked) is used

    @property
    def noise_std(self) -> float:
        """z C / n: exact with ``devices_asked`` recorded, else an upper bound (n = replies)."""
        return metric_noise_std(noise_multiplier=self.noise_multiplier, sensitivity=self.sensitivity,
                                devices_asked=self.devices_asked)

    @property
    def informative(self) -> bool:
        return informative(self.noise_std)

    def show(self, metrics: Mapping[str, object], names: Sequence[str] | None = None) -> dict[str, ShownMetric]:
        """Each released metric of ``metrics`` (raw values) shown with this release's noise."""
        keys = [n for n in (names or METRIC_LABELS) if n in metrics]
        return {n: shown_metric(n, metrics[n], noise_std=self.noise_std, devices=self.devices_asked) for n in keys}

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release, "purpose": self.purpose, "split": self.split, "round": self.round,
            "noise_multiplier": self.noise_multiplier, "sensitivity": self.sensitivity,
            "devices_asked": self.devices_asked,
            "devices_source": "devices_asked" if self.devices_recorded else "clients (replies; sigma is an upper bound)",
            "noise_std": self.noise_std, "informative": self.informative,
        }


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


_ROUND = re.compile(r"after round (\d+)")
_SPLIT = re.compile(r"evaluation: (val|validation|test)\b")  # how every metric release's purpose begins


def metric_release(entry: Mapping[str, Any]) -> MetricRelease | None:
    """The evaluation release an entry records (None for any other entry, or one whose
    parameters are missing or out of range)."""
    if entry.get("kind") != "release" or entry.get("mechanism") != METRIC_MECHANISM:
        return None
    z, c = _num(entry.get("noise_multiplier")), _num(entry.get("clipping_norm"))
    asked, replied = _count(entry.get("devices_asked")), _count(entry.get("clients"))
    n = asked if asked is not None else replied
    if z is None or c is None or n is None or z < 0 or c <= 0:
        return None
    purpose = entry.get("purpose") if isinstance(entry.get("purpose"), str) else ""
    which = _SPLIT.match(purpose)
    split = None if which is None else "test" if which.group(1) == "test" else "val"
    found = _ROUND.search(purpose)
    return MetricRelease(
        release=_count(entry.get("release")), purpose=purpose, split=split, round=int(found.group(1)) if found else None,
        noise_multiplier=z, sensitivity=c, devices_asked=n, devices_recorded=asked is not None,
    )


def metric_releases(entries: Iterable[Mapping[str, Any]]) -> list[MetricRelease]:
    """Every evaluation release in ledger order."""
    return [r for r in (metric_release(e) for e in entries) if r is not None]


def ledger_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ledger entries as parsed ([] without a readable ledger)."""
    try:
        return read_entries(Path(run_dir) / LEDGER).entries
    except LedgerError:
        return []


def _for_row(releases: Sequence[MetricRelease], split: str, round_: object) -> MetricRelease | None:
    """The release a row of ``split`` metrics came from: the one of its round, else the last of the split without a round."""
    of_split = [r for r in releases if r.split == split]
    if isinstance(round_, (int, float)) and not isinstance(round_, bool):
        same = [r for r in of_split if r.round is not None and r.round == int(round_)]
        if same:
            return same[-1]
    loose = [r for r in of_split if r.round is None]
    return loose[-1] if loose else None


def _block(release: MetricRelease, raw: Mapping[str, object]) -> tuple[dict[str, float], dict[str, Any]]:
    """(the clamped values to put in place of ``raw``'s (NaN stays NaN), the release's block for results.json)."""
    shown = release.show(raw)
    values = {n: s.value for n, s in shown.items()}
    block = {**release.to_json(), "metrics": {n: s.to_json() for n, s in shown.items()}}
    return values, block


def readable_results(results: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``results`` with every DP-released metric clamped to its range, and a ``released``
    block holding, per release, its raw values, noise sigma and whether it is informative.

    The releases are read from the ledger ``entries`` (signed): the test metrics (top
    level) from the last test release, ``validation`` from the last validation release,
    each ``curve`` / ``round_log`` row from the validation release of its round, each
    tuning try's ``validation`` from the release numbered last in its ``releases``.
    Without evaluation releases (exact evaluation) ``results`` comes back unchanged.
    """
    releases = metric_releases(entries)
    out = dict(results)
    if not releases:
        return out
    released: dict[str, Any] = {"mechanism": METRIC_MECHANISM, "range": list(METRIC_RANGE),
                                "not_informative_above": NOT_INFORMATIVE_SHARE * (METRIC_RANGE[1] - METRIC_RANGE[0])}
    test = next((r for r in reversed(releases) if r.split == "test"), None)
    if test is not None:
        values, released["test"] = _block(test, results)
        out.update(values)
    val = results.get("validation")
    last_val = next((r for r in reversed(releases) if r.split == "val"), None)
    if isinstance(val, Mapping) and last_val is not None:
        values, released["validation"] = _block(last_val, val)
        out["validation"] = {**val, **values}
    for key in ("curve", "round_log"):
        rows = results.get(key)
        if not isinstance(rows, list):
            continue
        shown_rows, blocks = [], []
        for row in rows:
            release = _for_row(releases, "val", row.get("round")) if isinstance(row, Mapping) else None
            if release is None or not any(n in row for n in METRIC_LABELS):
                shown_rows.append(row)
                continue
            values, block = _block(release, row)
            shown_rows.append({**row, **values})
            blocks.append({"round": row.get("round"), **block})
        out[key] = shown_rows
        if blocks and key == "curve":
            released["curve"] = blocks
    tries = results.get("tries")
    if isinstance(tries, list):
        by_number = {r.release: r for r in releases}
        shown_tries, blocks = [], []
        for t in tries:
            numbers = t.get("releases") if isinstance(t, Mapping) else None
            release = by_number.get(numbers[-1]) if isinstance(numbers, list) and numbers else None
            if release is None or not isinstance(t.get("validation"), Mapping):
                shown_tries.append(t)
                continue
            values, block = _block(release, t["validation"])
            shown_tries.append({**t, "validation": {**t["validation"], **values}})
            blocks.append({"try": t.get("try"), **block})
        out["tries"] = shown_tries
        if blocks:
            released["tries"] = blocks
    out["released"] = released
    return out


def readable_run(results: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """:func:`readable_results` with the run folder's own ledger."""
    return readable_results(results, ledger_entries(run_dir))


def released_lines(results: Mapping[str, Any]) -> list[str]:
    """The test metrics of a results.json as text lines with their noise (``[]`` when the
    evaluation was exact): what the terminal prints under the table."""
    block = results.get("released")
    test = block.get("test") if isinstance(block, Mapping) else None
    if not isinstance(test, Mapping) or not isinstance(test.get("metrics"), Mapping):
        return []
    lines = [str(m.get("text")) for m in test["metrics"].values() if isinstance(m, Mapping)]
    head = (f"test metrics released with DP (release {test.get('release')}: noise σ {_number(test['noise_std'])} per "
            f"metric = z {_number(test['noise_multiplier'])} x sqrt(d) {_number(test['sensitivity'])} / "
            f"{test['devices_asked']} devices asked; values clamped to [0, 1])")
    return [head, *lines]


def _read_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((Path(run_dir) / RESULTS).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def audit_metrics(entries: Sequence[Mapping[str, Any]], results: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The test metrics the run reports (results.json, not signed) shown with the noise
    of the last test release in the (signed) ledger; [] without one. The raw value is
    taken from ``released`` when results.json has it, else from the top level; every
    value is clamped again here, whatever results.json says."""
    test = next((r for r in reversed(metric_releases(entries)) if r.split == "test"), None)
    if test is None or results is None:
        return []
    block = results.get("released")
    metrics = block.get("test", {}).get("metrics") if isinstance(block, Mapping) and isinstance(block.get("test"), Mapping) else None
    raw: dict[str, object] = {}
    for name in METRIC_LABELS:
        kept = metrics.get(name) if isinstance(metrics, Mapping) else None
        raw[name] = kept.get("raw") if isinstance(kept, Mapping) and "raw" in kept else results.get(name)
    return [{"name": n, **s.to_json()} for n, s in test.show({k: v for k, v in raw.items() if v is not None}).items()]


def audit_lines(run_dir: Path) -> list[str]:
    """For the terminal ``fedrec audit``: each evaluation release's noise sigma, then the
    reported test metrics shown with it."""
    entries = ledger_entries(run_dir)
    lines = []
    for r in metric_releases(entries):
        bound = "" if r.devices_recorded else " (at most: the entry records replies, not devices asked)"
        verdict = "" if r.informative else " — not informative"
        lines.append(f"release {r.release} ({r.purpose}): noise σ {_number(r.noise_std)}{bound} per metric at "
                     f"{r.devices_asked} devices{verdict}")
    shown = audit_metrics(entries, _read_results(run_dir))
    if shown:
        lines += ["test metrics (results.json, not signed; clamped to [0, 1]):", *(f"  {m['text']}" for m in shown)]
    return lines


def released_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """For a one-page summary (the demo's demo.json): each test metric's text, the noise
    sigma and whether the release is informative ({} when the evaluation was exact)."""
    block = results.get("released")
    test = block.get("test") if isinstance(block, Mapping) else None
    if not isinstance(test, Mapping) or not isinstance(test.get("metrics"), Mapping):
        return {}
    return {
        "metrics": {name: m.get("text") for name, m in test["metrics"].items() if isinstance(m, Mapping)},
        "metric_noise_std": test.get("noise_std"), "metric_devices_asked": test.get("devices_asked"),
        "metrics_informative": test.get("informative"),
    }


def released_tries_lines(results: Mapping[str, Any]) -> list[str]:
    """For ``fedrec tune``: each try's validation release with its noise sigma ([] when
    the tries were evaluated exactly)."""
    block = results.get("released")
    tries = block.get("tries") if isinstance(block, Mapping) else None
    if not isinstance(tries, list):
        return []
    lines = ["validation metrics of the tries as released with DP (clamped to [0, 1]):"]
    for t in tries:
        verdict = "" if t.get("informative") else " — not informative"
        lines.append(f"  try {t.get('try')}: noise σ {_number(t['noise_std'])} per metric at {t['devices_asked']} "
                     f"devices{verdict}")
    return lines
