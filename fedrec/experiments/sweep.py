"""Privacy-utility sweep: the same federated run at several epsilons (and populations).

Each point is a full run in its own folder (with its own ledger, auditable); the
sweep writes ``sweep.csv`` and ``sweep.png`` (NDCG@10 against epsilon, with the
non-private federated and centralized references as lines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedrec.config import CALIBRATE, DPMode, RunConfig
from fedrec.experiments.results import save_png, write_csv
from fedrec.families import family_of

COLUMNS = ("users", "epsilon_target", "epsilon", "epsilon_rdp", "epsilon_population", "noise_multiplier", "rounds",
           "hr@10", "ndcg@10", "full_ndcg@10", "recall@20", "seconds", "run_dir")

Runner = Callable[[RunConfig, Path], Mapping[str, Any]]


def point_config(base: RunConfig, *, target: float, users: int) -> RunConfig:
    """The base config at one epsilon (inf = DP off) and population size (0 = all)."""
    privacy = replace(base.privacy, dp=DPMode.OFF) if math.isinf(target) else replace(base.privacy, dp=DPMode.USER, epsilon=target, noise_multiplier=CALIBRATE)
    return replace(base, privacy=privacy, data=replace(base.data, max_users=users))


def run_sweep(
    base: RunConfig,
    *,
    epsilons: Sequence[float],
    populations: Sequence[int],
    out_dir: Path,
    run_point: Runner,
    central_ndcg: float | None = None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    done: list[tuple[Path, bool]] = []  # every point so far and whether it was private
    for users in populations:
        for target in epsilons:
            run_dir = out_dir / f"users-{users or 'all'}_eps-{target:g}"
            result = run_point(point_config(base, target=target, users=users), run_dir)
            rows.append(
                {
                    "users": result["clients"], "epsilon_target": target, "epsilon": result["epsilon"],
                    "epsilon_rdp": result.get("epsilon_rdp", math.inf), "noise_multiplier": result["noise_multiplier"],
                    "rounds": result["rounds"], **{m: result[m] for m in ("hr@10", "ndcg@10", "full_ndcg@10", "recall@20")},
                    "seconds": result["seconds"], "run_dir": str(run_dir),
                }
            )
            done.append((run_dir, math.isfinite(target)))
            rows[-1]["epsilon_population"] = population_epsilon(done)
            write_csv(out_dir / "sweep.csv", rows, COLUMNS)
    plot_sweep(out_dir / "sweep.png", rows, central_ndcg=central_ndcg, private_label=private_label(base))
    return rows


def population_epsilon(points: Sequence[tuple[Path, bool]]) -> float | None:
    """The composed epsilon of a user in every point's population after the points so far
    (:mod:`fedrec.privacy.population`: every ledger verified, the accountant over their
    concatenated histories): infinite once a point ran without DP, None when a private
    point's ledger does not verify."""
    if any(not private for _, private in points):
        return math.inf
    from fedrec.privacy.population import audit_population

    audit = audit_population([run_dir for run_dir, _ in points])
    return audit.headline if audit.code in (0, 4) else None


def private_label(config: RunConfig) -> str:
    """What the private curve of the plot is: the family's own label."""
    return family_of(config).label


def plot_sweep(
    path: Path, rows: Sequence[Mapping[str, Any]], *, central_ndcg: float | None, private_label: str = "DP-FedAvg"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    finite = [r["epsilon_target"] for r in rows if math.isfinite(r["epsilon_target"])]
    for users in sorted({r["users"] for r in rows}):
        points = sorted((r for r in rows if r["users"] == users), key=lambda r: r["epsilon_target"])
        private = [r for r in points if math.isfinite(r["epsilon_target"])]
        ax.plot([r["epsilon_target"] for r in private], [r["ndcg@10"] for r in private], marker="o", label=f"{private_label}, {users} users")
        for r in points:
            if not math.isfinite(r["epsilon_target"]):
                ax.axhline(r["ndcg@10"], ls="--", lw=1, label=f"federated, no DP ({users} users)")
    if central_ndcg is not None:
        ax.axhline(central_ndcg, ls=":", color="black", lw=1, label="centralized, no DP")
    if finite:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("user-level epsilon (delta = 1e-5)")
    ax.set_ylabel("test NDCG@10 (99 sampled negatives)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(path, fig)
