"""Privacy accounting with Opacus's vetted accountants (never a hand-written one).

The state of the accounting is a history of ``(noise_multiplier, sample_rate,
steps)``, as in Opacus; epsilon is a pure function of it, so anyone can recompute it
from the ledger. PRV (Gopi et al. 2021) is the headline; RDP (Mironov 2017;
Mironov et al. 2019 for the subsampled Gaussian) is reported beside it. Both assume
Poisson sampling, which is exactly what :class:`fedrec.privacy.sampling.PoissonSampler` does.

Opacus' accountants are numpy and scipy, but ``import opacus.accountants`` first runs
``opacus/__init__``, which imports the privacy engine and with it torch: seconds of an
audit that needs no model. :func:`load_opacus_accountants` loads Opacus' own
``opacus/accountants`` package, unchanged, without running ``opacus/__init__``, so an
auditor's ``fedrec audit`` never imports torch; tests check that its epsilon equals the
normal import's.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

from fedrec.errors import PrivacyError
from fedrec.privacy.spec import ACCOUNTANTS, Accountant

ACCOUNTANTS_MODULE = "fedrec.privacy._opacus_accountants"  # where Opacus' accountant package is loaded


def load_opacus_accountants() -> ModuleType:
    """Opacus' accountant package ``opacus/accountants``, its PRV and RDP modules loaded
    from Opacus' installed files under the name :data:`ACCOUNTANTS_MODULE`, without
    running ``opacus/__init__`` (which imports torch) or ``opacus/accountants/__init__``
    (which adds the Gaussian accountant and with it scipy.stats).

    ``prv.py``, ``rdp.py``, ``accountant.py`` and ``analysis/`` import each other
    relatively and need only numpy and scipy, except ``accountant.py``'s ``from
    opacus.optimizers import DPOptimizer``, a type annotation of the optimizer hook (never
    used here). While the modules load, and only if Opacus is not imported already,
    ``opacus`` and ``opacus.optimizers`` are stand-ins in ``sys.modules`` that hold just
    that name; they are removed after, so a later ``import opacus`` imports the real one.
    The code is Opacus' own, unchanged, so epsilon equals that of ``from
    opacus.accountants import ...`` (tests/privacy/test_accountant_loading.py).
    """
    loaded = sys.modules.get(ACCOUNTANTS_MODULE)
    if loaded is not None and hasattr(loaded, "prv") and hasattr(loaded, "rdp"):
        return loaded
    found = importlib.util.find_spec("opacus")  # finds the package without importing it
    if found is None or not found.submodule_search_locations:
        raise PrivacyError("Opacus is not installed; pip install opacus")
    folder = Path(next(iter(found.submodule_search_locations))) / "accountants"
    # the package itself, its __init__ not run: submodules are found in Opacus' folder
    package = importlib.util.module_from_spec(ModuleSpec(ACCOUNTANTS_MODULE, None, is_package=True))
    package.__path__ = [str(folder)]
    stand_ins: dict[str, ModuleType] = {}
    if "opacus" not in sys.modules:
        opacus, optimizers = ModuleType("opacus"), ModuleType("opacus.optimizers")
        opacus.__path__ = []  # a package that finds no submodule but the stand-in below
        optimizers.DPOptimizer = type("DPOptimizer", (), {})  # type: ignore[attr-defined]
        stand_ins = {"opacus": opacus, "opacus.optimizers": optimizers}
    sys.modules.update(stand_ins)
    sys.modules[ACCOUNTANTS_MODULE] = package
    try:
        importlib.import_module(f"{ACCOUNTANTS_MODULE}.prv")
        importlib.import_module(f"{ACCOUNTANTS_MODULE}.rdp")
    except BaseException:
        for name in [n for n in sys.modules if n == ACCOUNTANTS_MODULE or n.startswith(ACCOUNTANTS_MODULE + ".")]:
            del sys.modules[name]
        raise
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    return package


_opacus = load_opacus_accountants()
PRVAccountant = _opacus.prv.PRVAccountant
RDPAccountant = _opacus.rdp.RDPAccountant
rdp_analysis: ModuleType = _opacus.analysis.rdp



PRV_EPS_ERROR = 0.01  # Opacus' default; get_epsilon returns the upper end of the interval

History = tuple[tuple[float, float, int], ...]


def compress(steps: Iterable[tuple[float, float]]) -> History:
    """Run-length encode per-round (z, q) pairs into Opacus' history form."""
    out: list[tuple[float, float, int]] = []
    for z, q in steps:
        if out and out[-1][0] == z and out[-1][1] == q:
            out[-1] = (z, q, out[-1][2] + 1)
        else:
            out.append((float(z), float(q), 1))
    return tuple(out)


def _needs_accountant(history: History) -> tuple[History, float | None]:
    """Drop empty steps; return the answer directly when no accountant is needed
    (0 for no steps, inf if any step had no noise), else None."""
    history = tuple((z, q, n) for z, q, n in history if q > 0 and n > 0)
    if not history:
        return history, 0.0
    if any(z <= 0 for z, _, _ in history):
        return history, math.inf
    return history, None


@lru_cache(maxsize=4096)
def epsilon(history: History, *, delta: float, accountant: str) -> float:
    """Epsilon spent after ``history`` at ``delta``; ``inf`` if any step has no noise."""
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    history, trivial = _needs_accountant(history)
    if trivial is not None:
        return trivial
    acc = PRVAccountant() if accountant == Accountant.PRV else RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP warns when the optimal order is at the edge
        if accountant == Accountant.PRV:
            return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        return float(acc.get_epsilon(delta=delta))


INTEGER_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 256)


@lru_cache(maxsize=4096)
def device_epsilon(history: History, *, delta: float) -> float:
    """RDP epsilon over integer orders only: what a device reports about its own DP-SGD.

    Any set of orders gives a valid upper bound (Mironov 2017, Prop. 3); Opacus'
    default set adds fractional orders that make a call slow at small sampling rates,
    too slow to run on every device every round. The bound is slightly looser
    (benchmarks/README.md).
    """
    history, trivial = _needs_accountant(history)
    if trivial is not None:
        return trivial
    acc = RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta, alphas=list(INTEGER_ORDERS)))


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str) -> float:
    """Smallest noise multiplier (to Opacus' tolerance) whose epsilon after ``rounds``
    Poisson-sampled rounds stays at or below ``target_epsilon``.

    Uses Opacus' own calibration, then checks the result independently, so that an
    overshoot can never pass silently.
    """
    if not 0 < target_epsilon < math.inf:
        raise PrivacyError(f"target epsilon must be finite and > 0 to calibrate z, got {target_epsilon}")
    from opacus.accountants.utils import get_noise_multiplier  # imports torch: only where a run calibrates

    kwargs = {"eps_error": PRV_EPS_ERROR} if accountant == Accountant.PRV else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                    steps=rounds, accountant=accountant, epsilon_tolerance=0.01, **kwargs,
                )
            )
    except ValueError as err:
        raise PrivacyError(f"cannot reach epsilon {target_epsilon} in {rounds} rounds: {err}") from None
    spent = epsilon(((z, sample_rate, rounds),), delta=delta, accountant=accountant)
    if spent > target_epsilon:
        raise PrivacyError(f"calibration overshot: z={z} gives epsilon {spent} > {target_epsilon}")
    return z


def calibrate_releases(
    *, target_epsilon: float, delta: float, shares: Sequence[float], sample_rate: float = 1.0, accountant: str,
    prior: History = (), after: History = (), tolerance: float = 1e-3,
) -> tuple[float, ...]:
    """Noise multipliers for a run of several Gaussian releases (one step each) whose
    composition, after the ``prior`` history and followed by the ``after`` history (fixed
    releases planned for later, such as evaluations), spends at most ``target_epsilon``.

    Release ``k`` gets ``z_k = s / sqrt(shares[k])``: for unsampled Gaussian mechanisms
    the composition is a Gaussian mechanism with ``1 / z^2 = sum 1 / z_k^2`` (Dong, Roth
    and Su 2022, "Gaussian Differential Privacy", Cor. 3.3), so ``shares`` is each
    release's part of the budget in that currency. The common scale ``s`` is found by
    bisection on the accountant's own epsilon of the whole history (PRV or RDP, whatever
    the sampling rate), so the answer never relies on that approximation: the returned
    multipliers are checked to stay within the target.
    """
    if not target_epsilon > 0:
        raise PrivacyError(f"target epsilon must be > 0, got {target_epsilon}")
    if not shares or any(not s > 0 for s in shares):
        raise PrivacyError(f"release shares must be positive, got {list(shares)}")

    def history(scale: float) -> History:
        return tuple(prior) + tuple((scale / math.sqrt(s), float(sample_rate), 1) for s in shares) + tuple(after)

    def spent(scale: float) -> float:
        return epsilon(history(scale), delta=delta, accountant=accountant)

    if spent(1e4) > target_epsilon:
        raise PrivacyError(f"epsilon {target_epsilon} cannot be reached: the other releases already spend it; raise the budget")
    low, high = 1e-3, 1.0
    while spent(high) > target_epsilon:  # grow until the budget holds
        low, high = high, high * 2
    # invariant: spent(high) <= target < spent(low) (or low is tiny)
    while (high - low) > tolerance * high:
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    if spent(high) > target_epsilon:  # never: bisection keeps ``high`` within budget
        raise PrivacyError(f"calibration overshot: scale {high} gives epsilon {spent(high)} > {target_epsilon}")
    return tuple(z for z, _, _ in history(high)[len(prior) : len(prior) + len(shares)])
