"""Gaussian noise for the aggregate (McMahan et al. 2018, Alg. 1: N(0, (z * C)^2 I)).

Noise is drawn from an injected numpy Generator. :func:`noise_generator` makes one:
from a seed for reproducible simulations, or seeded from the operating system's
CSPRNG (``secrets``) for deployments, where a predictable seed would let anyone who
knows it subtract the noise.
"""

from __future__ import annotations

import secrets

import numpy as np

from fedrec.models import Arrays


def noise_generator(*, seed: int | None, secure: bool) -> np.random.Generator:
    """Seeded generator, or one seeded with 256 bits from ``secrets`` when ``secure``."""
    if secure:
        return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(secrets.randbits(256))))
    if seed is None:
        raise ValueError("a seed is needed unless secure noise is asked for")
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence([seed, 0xD1F])))


def add_gaussian_noise(total: Arrays, *, std: float, rng: np.random.Generator) -> Arrays:
    """Return ``total + N(0, std^2)`` element-wise (a new dict; std 0 adds nothing)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return {name: np.asarray(value, dtype=np.float64).copy() for name, value in total.items()}
    return {
        name: np.asarray(value, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(value))
        for name, value in total.items()
    }
