"""Run artefacts: results.json and curves.png, written so that a crash never leaves
a file that looks complete (write to a temporary name, fsync, rename)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = "results.json"
CURVES = "curves.png"
MODEL = "model.npz"  # the released shared parameters (what every device downloads)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file in the same folder + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, float_format: str | None = None) -> None:
    """Replace ``path`` with ``rows`` as CSV under the header ``columns`` (keys outside it
    are left out; floats written with ``float_format`` when given), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format(v, float_format) if float_format and isinstance(v, float) else v for k, v in row.items()})
    write_atomic(path, buffer.getvalue().encode())


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    write_atomic(path, buffer.getvalue())


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n").encode())


def plot_curves(
    path: Path,
    evals: Sequence[Mapping[str, float]],
    *,
    x: str = "round",
    title: str,
    references: Mapping[str, float] | None = None,
    losses: Sequence[Mapping[str, float]] = (),
) -> None:
    """Validation HR@10 / NDCG@10 per round (or epoch), with horizontal reference lines,
    and the clients' mean training loss per round when given.

    ``references`` maps ``"<model> (<split>): <metric>"`` to a value, e.g.
    ``"popularity (val): ndcg@10"``; each model gets its own line style.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if losses else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    if losses:
        ax = axes[-1]
        ax.plot([r["round"] for r in losses], [r["train_loss"] for r in losses], lw=1)
        ax.set_xlabel("round")
        ax.set_ylabel("mean client training loss (BCE)")
        ax.grid(alpha=0.3)
    xs = [e[x] for e in evals]
    x_end = max([*xs, *(r["round"] for r in losses)], default=1.0)
    # one line style per reference model (the names are "<model> (<split>): <metric>")
    models = list(dict.fromkeys(name.split(":")[0] for name in references or {}))
    styles = dict(zip(models, ("--", ":", "-.", (0, (5, 1, 1, 1)))))
    for ax, metric in zip(axes, ("hr@10", "ndcg@10")):
        ax.plot(xs, [e[metric] for e in evals], marker="o", ms=5 if len(xs) < 3 else 3,
                label="federated (val)" if x == "round" else "val")
        for name, value in (references or {}).items():
            if name.endswith(f": {metric}"):
                model = name.split(":")[0]
                ax.axhline(value, ls=styles.get(model, "--"), lw=1.2, color="gray", label=model)
        ax.set_xlim(0, x_end * 1.03)  # the whole run, so that a single evaluation sits at its end
        ax.set_xlabel(x)
        ax.set_ylabel(f"{metric} (99 sampled negatives)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    save_png(path, fig)


def plot_release(
    path: Path, per_user: Mapping[str, Mapping[str, np.ndarray]], *, title: str,
    metrics: Sequence[str] = ("ndcg@10", "full_ndcg@10", "hr@10", "full_hr@10"),
) -> None:
    """A one-shot release beside the references: each model's mean test metric (sampled
    and full ranking) with its standard error over users, one panel per metric.

    ``per_user`` maps a model's name to its per-user test metrics (name -> (U,))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8), constrained_layout=True)
    names = list(per_user)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        values = [np.asarray(per_user[n][metric], dtype=np.float64) for n in names]
        means = [float(v.mean()) if v.size else float("nan") for v in values]
        errors = [float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0 for v in values]
        ax.bar(range(len(names)), means, yerr=errors, capsize=4, color=["C0", *["0.6"] * (len(names) - 1)])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        sampled = "99 sampled negatives" if not metric.startswith("full_") else "full ranking"
        ax.set_ylabel(f"test {metric.removeprefix('full_')} ({sampled})")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} (test, mean +- standard error over users)")
    save_png(path, fig)


def save_png(path: Path, fig: Any) -> None:
    """Write a matplotlib figure atomically as PNG, then close it."""
    import io

    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, out.getvalue())
