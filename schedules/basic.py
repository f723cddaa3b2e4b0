"""Model-aware sigma schedules: Karras (EDM), logSNR-uniform, time-uniform, time-quadratic and
polyexponential. Each takes the model's ModelSigmas (family, sigma range and timestep grid, so the
flow shift is included) and returns ``n + 1`` float64 sigmas ending in 0."""
from __future__ import annotations

import math

import torch

from ..core import families
from ..core.model_sigmas import ModelSigmas


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras(n: int, ms: ModelSigmas, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (EDM eq. 5): sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho.

    For rho < 1 the powers smax^(1/rho) overflow (rho 0.003: 14.6^333) and the last point cancels, so
    the same formula is evaluated in logs there: sigma_i = smax * ((1-r) + r q)^rho with
    q = (smin/smax)^(1/rho), log((1-r) + r q) by logaddexp."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    if rho >= 1.0:
        lo, hi = ms.sigma_min ** (1 / rho), ms.sigma_max ** (1 / rho)
        return _append_zero((hi + ramp * (lo - hi)) ** rho)
    log_q = (math.log(ms.sigma_min) - math.log(ms.sigma_max)) / rho
    if not math.isfinite(log_q):
        raise ValueError(f"karras: rho {rho!r} is too small to compute (1/rho overflows)")
    inner = torch.logaddexp(torch.log1p(-ramp), torch.log(ramp) + log_q)
    s = ms.sigma_max * torch.exp(rho * inner)
    s[0] = ms.sigma_max
    if n > 1:
        s[-1] = ms.sigma_min
    return _append_zero(s)


def logsnr_uniform(n: int, ms: ModelSigmas) -> torch.Tensor:
    """Uniform in half-logSNR lambda = log(alpha/sigma) of the model's family (log sigma only for eps;
    logit for flow). A flow sigma_max of 1 is kept as the first value; the lambda grid starts at
    families.FLOW_SCHEDULE_LAMBDA_TOP there."""
    lmax = families.lam(ms.sigma_min, ms.family)
    lmin = families.schedule_lambda_top(ms.sigma_max, ms.family)
    lams = torch.linspace(lmin, lmax, n, dtype=torch.float64)
    s = families.sigma_from_lam(lams, ms.family)
    s[0] = ms.sigma_max
    return _append_zero(s)


def time_uniform(n: int, ms: ModelSigmas) -> torch.Tensor:
    """Uniform in the model's own timestep (its sigma table's index; for flow the unshifted time)."""
    u = torch.linspace(1, 0, n, dtype=torch.float64)
    return _append_zero(ms.sigma_at(u))


def time_quadratic(n: int, ms: ModelSigmas) -> torch.Tensor:
    """DPM-Solver's time-quadratic steps: t = (linspace(sqrt(t_T), sqrt(t_eps)))^2 in model time."""
    r = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    u = r ** 2
    return _append_zero(ms.sigma_at(u))


def polyexponential(n: int, ms: ModelSigmas, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's polynomial in log sigma: log sigma = ramp^rho (log smax - log smin) + log smin,
    ramp from 1 to 0. rho = 1 is log-uniform ("exponential")."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    lo, hi = math.log(ms.sigma_min), math.log(ms.sigma_max)
    return _append_zero(torch.exp(ramp * (hi - lo) + lo))
