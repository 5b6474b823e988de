"""Empirical lower bounds on epsilon from a membership-inference attack.

An accountant gives an *upper* bound on what a run can leak. An audit gives a
*lower* bound: if an attacker tells members from non-members better than any
(epsilon, delta)-DP mechanism allows, the run is not (epsilon, delta)-DP, whatever the
accountant says. Two bounds are computed here, both as plain functions of counts:

* :func:`one_run_lower_bound`: Steinke, Nasr and Jagielski (2023), "Privacy
  auditing with one (1) training run", Sec. 3 and Algorithm 2 of the paper. m canaries
  are each included independently with probability 1/2; the attacker makes r guesses
  (abstaining on the rest) of which v are right. Under (epsilon, delta)-DP the number of
  right guesses is dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta term;
  the bound is the largest epsilon this test rejects at level beta.
* :func:`clopper_pearson_lower_bound`: Jagielski, Ullman and Oprea (2020), "Auditing
  differentially private machine learning", Sec. 3: (epsilon, delta)-DP forces
  TPR <= e^eps FPR + delta (and the same with the roles of FNR and TNR), so
  Clopper-Pearson intervals on FPR and FNR bound epsilon from below.

Both are valid for one fixed guessing rule. Choosing the rule (how many guesses, which
threshold) after seeing the answers is a multiple test: :func:`audit_scores` tries a
small fixed grid of rules and splits the error level over them (Bonferroni).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fedrec.errors import PrivacyError

EPS_MAX = 50.0  # no bound beyond this is meaningful (e^50 odds)
BISECTIONS = 60
GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # r / m tried by audit_scores


def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses right] for an (epsilon, delta)-DP run.

    Steinke, Nasr, Jagielski (2023), Theorem 3.3 / Algorithm 2: the binomial tail at
    p = e^eps / (1 + e^eps), plus 2 m delta times the largest average of the binomial
    mass just below ``v``.
    """
    if not 0 <= v <= r <= m:
        raise PrivacyError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise PrivacyError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, p))  # P[Bin(r, p) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = np.cumsum(stats.binom.pmf(v - np.arange(1, v + 1), r, p))  # P[v > Bin >= v - i], i = 1..v
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def one_run_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """The largest epsilon at which ``v`` right out of ``r`` guesses has p-value < ``beta``.

    0 when even epsilon = 0 cannot be rejected. The p-value grows with epsilon, so this
    is a bisection.
    """
    if not 0 < beta < 1:
        raise PrivacyError(f"beta must be in (0, 1), got {beta}")
    if one_run_p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= beta:
        return 0.0
    lo, hi = 0.0, EPS_MAX
    if one_run_p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) < beta:
        return hi
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        if one_run_p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def clopper_pearson_upper(*, successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper limit of a binomial proportion."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise PrivacyError(f"need 0 <= successes ({successes}) <= trials ({trials}) and trials > 0")
    if successes == trials:
        return 1.0
    return float(stats.beta.ppf(1 - alpha, successes + 1, trials - successes))


def clopper_pearson_lower_bound(*, tp: int, fn: int, fp: int, tn: int, delta: float, alpha: float = 0.05) -> float:
    """Jagielski et al. (2020) bound from a confusion matrix of members vs non-members.

    With probability >= 1 - alpha, FPR <= FPR_hi and FNR <= FNR_hi (each at alpha / 2);
    (epsilon, delta)-DP implies 1 - FNR <= e^eps FPR + delta and 1 - FPR <= e^eps FNR +
    delta, so epsilon >= log((1 - delta - FNR_hi) / FPR_hi) and the mirror image.
    """
    fpr_hi = clopper_pearson_upper(successes=fp, trials=fp + tn, alpha=alpha / 2)
    fnr_hi = clopper_pearson_upper(successes=fn, trials=fn + tp, alpha=alpha / 2)
    best = 0.0
    for a, b in ((fnr_hi, fpr_hi), (fpr_hi, fnr_hi)):
        if 1 - delta - a > 0:
            best = max(best, math.log((1 - delta - a) / b) if b > 0 else EPS_MAX)
    return min(best, EPS_MAX)


@dataclass(frozen=True)
class AuditBounds:
    """What :func:`audit_scores` found: the best rule of each kind, already corrected."""

    canaries: int
    members: int
    one_run_epsilon: float  # Steinke et al., beta split over GUESS_FRACTIONS
    guesses: int  # r of the best one-run rule
    correct: int  # v of the best one-run rule
    cp_epsilon: float  # Jagielski et al., alpha split over the thresholds tried
    tpr: float  # at the best Clopper-Pearson threshold
    fpr: float
    auc: float  # how well the score separates members from non-members (0.5 = not at all)


def _auc(scores: np.ndarray, members: np.ndarray) -> float:
    ranks = stats.rankdata(scores)
    n_in, n_out = int(members.sum()), int((~members).sum())
    if n_in == 0 or n_out == 0:
        return float("nan")
    return float((ranks[members].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def audit_scores(*, scores: np.ndarray, members: np.ndarray, delta: float, beta: float = 0.05) -> AuditBounds:
    """Both lower bounds from per-canary membership scores (higher = "was trained on").

    One-run rule with r guesses: the r/2 highest scores guessed in, the r/2 lowest
    out, the rest abstain (Steinke et al., Sec. 6). Clopper-Pearson rule: "in" above a
    threshold, for thresholds at the same fractions of the canaries. Each family is
    Bonferroni-corrected over its rules, so both bounds hold at level ``beta``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(members, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 1 or scores.shape[0] < 2:
        raise PrivacyError("need one score and one membership flag per canary, at least two canaries")
    if not np.all(np.isfinite(scores)):
        raise PrivacyError("membership scores must be finite")
    m = scores.shape[0]
    order = np.argsort(-scores, kind="stable")  # highest first
    ranked = members[order]
    level = beta / len(GUESS_FRACTIONS)
    best_run, best_r, best_v = 0.0, 0, 0
    for fraction in GUESS_FRACTIONS:
        half = max(1, min(m // 2, round(fraction * m / 2)))
        r, v = 2 * half, int(ranked[:half].sum() + (~ranked[-half:]).sum())
        eps = one_run_lower_bound(m=m, r=r, v=v, delta=delta, beta=level)
        if eps > best_run or best_r == 0:
            best_run, best_r, best_v = eps, r, v
    best_cp, best_tpr, best_fpr = 0.0, float("nan"), float("nan")
    n_in, n_out = int(members.sum()), int((~members).sum())
    if n_in and n_out:
        for fraction in GUESS_FRACTIONS[:-1]:  # "everyone is in" says nothing
            top = max(1, round(fraction * m))
            tp = int(ranked[:top].sum())
            fp = top - tp
            eps = clopper_pearson_lower_bound(tp=tp, fn=n_in - tp, fp=fp, tn=n_out - fp, delta=delta, alpha=level)
            if eps > best_cp or math.isnan(best_tpr):
                best_cp, best_tpr, best_fpr = eps, tp / n_in, fp / n_out
    return AuditBounds(
        canaries=m, members=n_in, one_run_epsilon=best_run, guesses=best_r, correct=best_v,
        cp_epsilon=best_cp, tpr=best_tpr, fpr=best_fpr, auc=_auc(scores, members),
    )
