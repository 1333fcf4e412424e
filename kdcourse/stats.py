"""Small statistics for per-seed results: mean ± std, and paired comparisons of two methods.

Introduced in notebook 01 (mean ± std over seeds) and notebook 02 (paired t comparison). Runs
of two methods with the same seed share initial weights and batches, so their per-seed
differences are compared, not their two means.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_std", "paired_difference", "describe_difference", "recovered_share", "plateaued"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of per-seed figures; the std is 0.0 for one value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def paired_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> dict:
    """Paired t comparison of runs `a` and `b` matched by seed (a[i] and b[i] share seed i).

    d_i = a_i - b_i; returns diff = mean(d), se = sd(d) / sqrt(n), t = the two-sided Student t
    quantile with n - 1 degrees of freedom, half = t * se (the half-width of the `level`
    interval), n, and sign = +1 or -1 when the interval excludes 0, else 0.
    """
    from scipy.stats import t as student_t

    if len(a) != len(b):
        raise ValueError(f"paired_difference needs runs matched by seed, got {len(a)} and {len(b)} values")
    if len(a) < 2:
        raise ValueError("paired_difference needs at least 2 seeds")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    diff, sd = mean_std([x - y for x, y in zip(a, b)])
    n = len(a)
    t = float(student_t.ppf(0.5 + level / 2, n - 1))
    se = sd / math.sqrt(n)
    sign = (1 if diff > 0 else -1) if abs(diff) > t * se else 0
    return dict(diff=diff, se=se, t=t, half=t * se, n=n, sign=sign)


def describe_difference(a: Sequence[float], b: Sequence[float], *, unit: str = "pt", level: float = 0.95,
                        better: str = "a gain", worse: str = "a loss") -> str:
    """The course's one way of printing a paired comparison, e.g. "+1.9 pt, 95 % CI [+0.4, +3.4]: a gain".

    a, b: per-seed figures matched by seed (see `paired_difference`). The verdict is `better` when
    the interval lies above 0, `worse` when below, and "no resolved difference" when it contains 0.
    """
    r = paired_difference(a, b, level=level)
    lo, hi = r["diff"] - r["half"], r["diff"] + r["half"]
    verdict = {1: better, -1: worse, 0: f"no resolved difference with {r['n']} seeds"}[r["sign"]]
    return f"{r['diff']:+.1f} {unit}, {100 * level:.0f} % CI [{lo:+.1f}, {hi:+.1f}]: {verdict}"


def recovered_share(fp32_acc: float, ptq_acc: float, qat_acc: float, *, noise: float = 0.0) -> float | None:
    """Share of PTQ's accuracy loss that QAT wins back, (qat - ptq) / (fp32 - ptq).

    None when PTQ lost no more than `noise` points (e.g. two standard errors of the test
    accuracy): there is then nothing to recover, and the ratio would divide by ~0 or a negative.
    Introduced in notebook 06.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    lost = fp32_acc - ptq_acc
    if lost <= noise:  # noise >= 0, so this also covers lost <= 0
        return None
    return (qat_acc - ptq_acc) / lost


def plateaued(curve: Sequence[float], *, window: int = 5, tol: float = 0.5) -> bool:
    """Has a training curve stopped improving? The course's one convergence test.

    curve: per-epoch test accuracies (%). True when the mean of the last `window` points is at
    most `tol` points above the mean of the `window` points before them:
    mean(curve[-w:]) - mean(curve[-2w:-w]) <= tol. Needs at least 2 * window points.
    """
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if len(curve) < 2 * window:
        raise ValueError(f"plateaued needs at least 2 * window = {2 * window} points, got {len(curve)}")
    last, before = mean_std(curve[-window:])[0], mean_std(curve[-2 * window:-window])[0]
    return last - before <= tol
