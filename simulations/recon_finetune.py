"""DP-Recon warm start, then DP-FedAvg rounds fine-tuning the item factors: VALIDATION users.

The route "warm start from a DP release, fine-tune with the rest of the budget", measured
on validation users of development data only (the split's test items are replaced by
:func:`fedrec.dpease.select.without_test_items` before any device is built, so no test
item is read).

For each seed (its own split and noise draw) and each release share ``s``:

1. **Releases**: one DP-EASE run (both releases, the ledger) calibrated to ``s * epsilon``
   alone; the DP-Recon item factors ``Q`` (K, d) are post-processing of its noisy Gram
   (:func:`fedrec.dpease.factors.fit_recon`, the ``ReconSettings`` defaults).
2. **Budget for the rounds**: the rounds' noise multiplier ``z`` is the smallest (by
   bisection) for which the whole history, the two releases at the noise multipliers the
   run used (sample rate 1) followed by ``rounds`` Poisson-sampled rounds at rate ``q``,
   spends at most ``epsilon`` at ``delta`` under the run's accountant
   (:func:`fedrec.privacy.accountant.epsilon`, Opacus PRV); the composed epsilon is
   recomputed from that full history with both PRV and RDP and printed.
3. **Rounds** (Federated Reconstruction, Singhal et al. 2021, Alg. 1, with DP-FedAvg):
   each sampled device splits its training items at random into a reconstruction half
   and a loss half, solves its user vector from the first half against the current
   ``Q`` (:func:`fedrec.dpease.factors.reconstruct`, never sent), and computes the gradient
   with respect to ``Q`` of the multinomial log-likelihood of the second half under
   ``softmax(temperature * Q u)`` over the top items (``u`` held fixed; the temperature
   because ``Q u`` reconstructs a history of weights at most 1, where the softmax is
   almost flat); the gradient is clipped to ``C`` (``--clip``); the server sums, adds Gaussian noise of std ``z C``
   per coordinate, divides by the expected number of devices ``q N`` and steps
   ``Q <- Q - lr ||Q||_F / C * update``.
4. **Score** with the fine-tuned ``Q`` exactly as DP-Recon scores (the mixing weight
   recomputed from the release, post-processing), on the devices' validation items,
   against DP-Recon at ``s = 1`` without rounds from the same seed, with the per-user
   paired difference and its standard error; popularity on exact training counts and
   the same fine-tuning without noise (not private: an upper bound on what rounds can add)
   are printed beside.

    FEDREC_DATA_DIR=/path/to/data python simulations/recon_finetune.py --out runs/recon-finetune.csv
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.factors import ReconRelease, fit_recon, mixing, reconstruct
from fedrec.dpease.fit import EaseRelease
from fedrec.dpease.run import run_dp_ease
from fedrec.dpease.select import without_test_items
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.experiments.results import write_csv
from fedrec.families import family_of
from fedrec.federation.device import simulated_population
from fedrec.privacy.accountant import Accountant, History, epsilon

METRICS = ("ndcg@10", "full_ndcg@10")


@dataclass(frozen=True)
class Warm:
    """One seed's DP-EASE release at a share of the budget and the DP-Recon model from it."""

    config: RunConfig
    model: ReconRelease
    noisy: np.ndarray
    noise_std: float
    z_releases: tuple[float, float]


def warm_start(flat: dict[str, Any], split: Any, run_dir: Path) -> Warm:
    """DP-EASE's two releases at ``flat``'s epsilon, the DP-Recon model from them."""
    config = parse_run_config(flat)
    kept: dict[str, Any] = {}

    def keep(release: EaseRelease, noisy: np.ndarray | None, noise_std: float) -> dict[str, np.ndarray]:
        kept.update(release=release, noisy=noisy, noise_std=noise_std)
        return release.to_arrays()

    _, history, _, _ = run_dp_ease(config, family_of(config).simulated_devices(split, config), run_dir=run_dir,
                                   catalog=run_catalog(config), derive=keep)
    if kept["noisy"] is None:
        raise SystemExit(f"epsilon {config.privacy.epsilon}: no co-occurrence release; raise the share")
    r, std = config.recon, float(kept["noise_std"])
    model = fit_recon(kept["release"], kept["noisy"], noise_std=std, eigen_floor=config.ease.eigen_floor, dim=r.dim,
                      shrink=r.shrink, weight=r.weight)
    z1, z2 = history.noise_multipliers
    return Warm(config, model, kept["noisy"], std, (float(z1), float(z2)))


def releases_history(warm: Warm) -> History:
    return tuple((z, 1.0, 1) for z in warm.z_releases)


def rounds_noise(prior: History, *, target: float, delta: float, q: float, rounds: int, accountant: str) -> float:
    """Smallest z (bisection, relative tolerance 1e-3) whose ``rounds`` rounds at rate ``q``
    after ``prior`` keep the composed epsilon within ``target``; the returned z is checked."""

    def spent(z: float) -> float:
        return epsilon(prior + ((z, q, rounds),), delta=delta, accountant=accountant)

    if epsilon(prior, delta=delta, accountant=accountant) >= target:
        raise SystemExit("the releases alone spend the budget: lower the share")
    low, high = 0.05, 1.0
    while spent(high) > target:
        low, high = high, high * 2
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target else (low, middle)
    if spent(high) > target:
        raise RuntimeError("calibration overshot")
    return high


def history_matrix(model: ReconRelease, split: Any) -> np.ndarray:
    """(U, n_items) each device's recency-weighted history, as DP-EASE scores it."""
    return np.stack([model.history(split.train_of(u)) for u in range(split.n_users)])


def clipped_sum(
    factors: np.ndarray, xs: np.ndarray, *, ridge_: float, clip: float, temperature: float, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the clipped per-device gradients (K, d), each device's gradient norm (S,))
    of the devices with histories ``xs`` (S, K) over the top items."""
    half = (rng.random(xs.shape) < 0.5) & (xs > 0)  # the reconstruction half of each history
    recon_x, loss_y = np.where(half, xs, 0.0), ((xs > 0) & ~half).astype(np.float64)
    users = reconstruct(factors, recon_x, ridge_=ridge_)  # (S, d), on the devices
    logits = temperature * users @ factors.T
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = loss_y.sum(axis=1, keepdims=True)
    g = temperature * np.where(n > 0, p - loss_y / np.maximum(n, 1.0), 0.0)  # dL/d(Q u), (S, K)
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(users, axis=1)  # ||g u^T||_F
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    return (g * scale[:, None]).T @ users, norms


def fine_tune(
    model: ReconRelease, x: np.ndarray, *, rounds: int, q: float, z: float, clip: float, lr: float,
    temperature: float, rng: np.random.Generator,
) -> np.ndarray:
    """(K, d) item factors after ``rounds`` DP-FedAvg rounds (see the module docstring)
    from the (U, n_items) histories ``x``."""
    factors = model.factors.copy()
    x = x[:, model.ease.top_items]
    n_users = x.shape[0]
    for _ in range(rounds):
        sampled = np.flatnonzero(rng.random(n_users) < q)  # Poisson sampling
        total, _ = clipped_sum(factors, x[sampled], ridge_=model.ridge, clip=clip, temperature=temperature, rng=rng)
        if z > 0:
            total = total + rng.normal(0.0, z * clip, size=total.shape)
        update = total / (q * n_users)
        factors = factors - lr * np.linalg.norm(factors) / clip * update
    return factors


def with_factors(model: ReconRelease, factors: np.ndarray, config: RunConfig) -> ReconRelease:
    """DP-Recon scoring with new factors, its mixing weight recomputed from the release."""
    mix = mixing(np.asarray(model.ease.weights, dtype=np.float64), factors, ridge_=model.ridge, weight=config.recon.weight)
    return ReconRelease(ease=model.ease, factors=factors, ridge=model.ridge, mix=mix)


def paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray], m: str) -> tuple[float, float]:
    diff = a[m] - b[m]
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.shape[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (split and noise draw)")
    parser.add_argument("--shares", default="0.9,0.8,0.6", help="release shares of epsilon below 1 (1 is the baseline)")
    parser.add_argument("--rounds", default="10", help="comma-separated round counts")
    parser.add_argument("--rates", default="1.0,0.5", help="comma-separated Poisson sampling rates q")
    parser.add_argument("--lrs", default="1,5", help="comma-separated relative server learning rates")
    parser.add_argument("--clip", type=float, default=0.2, help="the rounds' per-device clipping norm C")
    parser.add_argument("--temperature", type=float, default=30.0, help="softmax temperature of the device loss")
    parser.add_argument("--out", type=Path, default=Path("runs/recon-finetune.csv"))
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    rows: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        flat = {"dataset": "ml-100k", "seed": seed, "model": "dp-ease", "delta": args.delta, "ledger-key": ""}
        base_config = parse_run_config({**flat, "epsilon": args.epsilon})
        split = without_test_items(simulated_population(base_config).split)
        data = [split.client(u) for u in range(split.n_users)]
        counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float64)
        popularity = metrics_from_scores(np.tile(counts, (split.n_users, 1)), data, "val")
        warms = {1.0: warm_start({**flat, "epsilon": args.epsilon}, split, Path(tempfile.mkdtemp(prefix="finetune-")))}
        for s in shares:
            warms[s] = warm_start({**flat, "epsilon": s * args.epsilon}, split, Path(tempfile.mkdtemp(prefix="finetune-")))
        base = warms[1.0]
        x_full = history_matrix(base.model, split)
        reference = metrics_from_scores(base.model.score(x_full), data, "val")
        accountant = base.config.privacy.accountant
        clip, tau = args.clip, args.temperature

        def signal(warm: Warm, q: float, z: float, seed: int = seed, clip: float = clip, tau: float = tau,
                   split: Any = split) -> dict[str, float]:
            """The first round's gradient at the warm start, every device: the median device's
            norm, the norm of the mean clipped gradient, and that of the noise in the mean."""
            x_top = history_matrix(warm.model, split)[:, warm.model.ease.top_items]
            total, norms = clipped_sum(warm.model.factors, x_top, ridge_=warm.model.ridge, clip=clip, temperature=tau,
                                       rng=np.random.default_rng([seed, 13]))
            noise = z * clip * math.sqrt(warm.model.factors.size) / (q * x_top.shape[0]) if q > 0 else 0.0
            return {"device_grad_norm_median": float(np.median(norms)),
                    "mean_clipped_grad_norm": float(np.linalg.norm(total) / x_top.shape[0]), "noise_norm_of_mean": noise}

        def record(s: float, warm: Warm, rounds: int, q: float, z: float, lr: float, per_user: dict[str, np.ndarray],
                   hist: History, seed: int = seed, accountant: str = accountant,
                   reference: dict[str, np.ndarray] = reference, popularity: dict[str, np.ndarray] = popularity,
                   clip: float = clip, tau: float = tau) -> None:
            row: dict[str, Any] = {
                "seed": seed, "share": s, "rounds": rounds, "q": q, "z_rounds": z, "lr": lr, "clip": clip, "temperature": tau,
                "z_counts": warm.z_releases[0], "z_gram": warm.z_releases[1], "K": warm.model.ease.top_items.shape[0],
                "eps_releases": epsilon(releases_history(warm), delta=args.delta, accountant=accountant),
                **signal(warm, q, z),
                "eps_composed_prv": epsilon(hist, delta=args.delta, accountant=Accountant.PRV),
                "eps_composed_rdp": epsilon(hist, delta=args.delta, accountant=Accountant.RDP),
            }
            for m in METRICS:
                row[m] = float(per_user[m].mean())
                row[f"vs_dp_recon_{m}"], row[f"se_{m}"] = paired(per_user, reference, m)
                row[f"popularity_{m}"] = float(popularity[m].mean())
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

        for s, warm in warms.items():
            x = history_matrix(warm.model, split)
            record(s, warm, 0, 0.0, 0.0, 0.0, metrics_from_scores(warm.model.score(x), data, "val"), releases_history(warm))
        # no noise in the rounds (not private, epsilon inf): what fine-tuning can add at best
        for rounds in (int(r) for r in args.rounds.split(",")):
            for lr in (float(v) for v in args.lrs.split(",")):
                factors = fine_tune(base.model, x_full, rounds=rounds, q=1.0, z=0.0, clip=clip, lr=lr, temperature=tau,
                                    rng=np.random.default_rng([seed, 7]))
                tuned = with_factors(base.model, factors, base.config)
                record(1.0, base, rounds, 1.0, 0.0, lr, metrics_from_scores(tuned.score(x_full), data, "val"),
                       releases_history(base) + ((0.0, 1.0, rounds),))
        for s in shares:
            warm = warms[s]
            x = history_matrix(warm.model, split)
            for rounds in (int(r) for r in args.rounds.split(",")):
                for q in (float(v) for v in args.rates.split(",")):
                    z = rounds_noise(releases_history(warm), target=args.epsilon, delta=args.delta, q=q, rounds=rounds,
                                     accountant=accountant)
                    hist = releases_history(warm) + ((z, q, rounds),)
                    if epsilon(hist, delta=args.delta, accountant=accountant) > args.epsilon:
                        raise RuntimeError("composed epsilon above the budget")
                    for lr in (float(v) for v in args.lrs.split(",")):
                        factors = fine_tune(warm.model, x, rounds=rounds, q=q, z=z, clip=clip, lr=lr, temperature=tau,
                                            rng=np.random.default_rng([seed, 11]))
                        tuned = with_factors(warm.model, factors, warm.config)
                        record(s, warm, rounds, q, z, lr, metrics_from_scores(tuned.score(x), data, "val"), hist)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, rows, list(rows[0]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
