"""Beta sampling (Lee, Lin, Kim et al. 2024, "Beta Sampling is All You Need", arXiv 2407.12173):
timesteps at the quantiles of a Beta(alpha, beta) distribution, so that with alpha = beta < 1 the steps
crowd at both ends of the model's time range (the coarse layout and the fine detail) and thin out in
the middle. The paper's default is alpha = beta = 0.6.

Step i of n (i = 0 .. n-1) sits at model time u_i = F^{-1}(1 - i/n), F the Beta CDF; sigma_i is the
model's sigma at that time (``ModelSigmas.sigma_at``, the same time axis as FewStep's time-uniform
schedule, so the flow shift is included), then 0. The times are not rounded to integer timesteps.

The CDF is the regularised incomplete beta function, evaluated here by its continued fraction (with
the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly), and inverted by
bisection. numpy/math only: no scipy.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.model_sigmas import ModelSigmas
from ._common import check_positive
from .basic import _append_zero

DEFAULT_ALPHA = 0.6
DEFAULT_BETA = 0.6
_TINY = 1e-300
_EPS = 1e-15


def _cont_frac(x: np.ndarray, a: float, b: float, check_interrupt=None) -> np.ndarray:
    """The continued fraction of I_x(a, b) (modified Lentz), elementwise; converges fast for
    x < (a+1)/(a+b+2). Each element stops at its own convergence, so its value does not depend on
    the other elements of the batch (a schedule's tail equals the same values of the whole schedule)."""
    def guard(v):
        return np.where(np.abs(v) > _TINY, v, _TINY)
    c = np.ones_like(x)
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    f = d.copy()
    live = np.ones(x.shape, dtype=bool)
    for m in range(1, 1000):
        if check_interrupt is not None and m % 64 == 0:
            check_interrupt()
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))        # even term
        d = 1.0 / guard(1.0 + num * d)
        c = guard(1.0 + num / c)
        f = np.where(live, f * c * d, f)
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))   # odd term
        d = 1.0 / guard(1.0 + num * d)
        c = guard(1.0 + num / c)
        step = c * d
        f = np.where(live, f * step, f)
        live &= ~(np.abs(step - 1.0) < _EPS)
        if not live.any():
            return f
    raise RuntimeError(f"incomplete beta: no convergence (a={a}, b={b})")


def beta_cdf(x, a: float, b: float, check_interrupt=None) -> np.ndarray:
    """The regularised incomplete beta function I_x(a, b) = P(X <= x) for X ~ Beta(a, b), elementwise."""
    x = np.asarray(x, dtype=np.float64)
    inner = (x > 0.0) & (x < 1.0)       # outside (0, 1), NaN included, the last line gives 0 or 1
    xi = np.where(inner, x, 0.5)
    log_front = (a * np.log(xi) + b * np.log1p(-xi)
                 - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
    direct = xi < (a + 1.0) / (a + b + 2.0)
    # each branch where its fraction converges fast; the other branch's inputs are parked at a safe x
    lo = np.exp(log_front) * _cont_frac(np.where(direct, xi, 0.0), a, b, check_interrupt) / a
    hi = 1.0 - np.exp(log_front) * _cont_frac(np.where(direct, 0.0, 1.0 - xi), b, a, check_interrupt) / b
    out = np.where(direct, lo, hi)
    return np.where(inner, out, np.where(x >= 1.0, 1.0, 0.0))


def beta_ppf(q, a: float, b: float, check_interrupt=None) -> np.ndarray:
    """The quantile F^{-1}(q) of Beta(a, b), elementwise, by bisection on :func:`beta_cdf` (64 halvings:
    below float64 resolution). ``check_interrupt`` (a callable that raises to stop) is called between
    halvings and inside the continued fraction."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(64):
        if check_interrupt is not None:
            check_interrupt()
        mid = 0.5 * (lo + hi)
        below = beta_cdf(mid, a, b, check_interrupt) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out = 0.5 * (lo + hi)
    return np.where(q <= 0.0, 0.0, np.where(q >= 1.0, 1.0, out))


def beta_times(n: int, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, start: int = 0,
               check_interrupt=None) -> np.ndarray:
    """The model times F^{-1}(1 - i/n), i = start .. n-1, from 1 down (float64). ``start`` > 0 gives
    the tail only (denoise < 1): the cost grows with the values asked for, not with n."""
    a = check_positive(alpha, "alpha", 0.0, 100.0)
    b = check_positive(beta, "beta", 0.0, 100.0)
    if not 0 <= start < n:
        raise ValueError(f"internal: start {start} outside [0, {n})")
    return beta_ppf(1.0 - np.arange(start, n, dtype=np.float64) / n, a, b, check_interrupt)


def beta_schedule(n: int, ms: ModelSigmas, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                  start: int = 0, check_interrupt=None) -> torch.Tensor:
    """n + 1 - start float64 sigmas: the model's sigma at each beta time from step ``start`` on, then 0
    (``start`` 0: the whole schedule)."""
    u = torch.from_numpy(beta_times(n, alpha, beta, start, check_interrupt))
    return _append_zero(ms.sigma_at(u).to(torch.float64))
