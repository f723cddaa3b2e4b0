"""Noise families in ComfyUI's x-space.

* ``"eps"`` — every VP/VE model that ComfyUI samples as ``x = x0 + sigma * eps`` (EPS, V_PREDICTION,
  EDM, ...): alpha = 1 and lambda = -log(sigma).
* ``"flow"`` — flow-matching models (ComfyUI's CONST: SD3, Flux, Wan, ...):
  ``x = (1 - sigma) * x0 + sigma * eps``: alpha = 1 - sigma and lambda = log((1 - sigma) / sigma).

Both follow ``dx/dsigma = (x - x0_hat) / sigma``, and the data-prediction exponential integrator
``x_t = (sigma_t / sigma_s) * x_s + alpha_t * (1 - exp(-h)) * x0``, ``h = lambda_t - lambda_s``, is exact
for a constant x0 in both.
"""
from __future__ import annotations

import math

import torch

EPS = "eps"
FLOW = "flow"
FAMILIES = (EPS, FLOW)

#: lambda is -inf at sigma = 1 for flow models. Wherever a lambda is needed, a first sigma of 1 is
#: treated as 1 - FLOW_SIGMA_OFFSET (about lambda = -9.2). The state at sigma = 1 is pure noise, so the
#: first step's data term is unaffected; only step-size ratios of multistep methods see the offset.
FLOW_SIGMA_OFFSET = 1e-4


#: For *schedules* built in lambda on a flow model whose sigma_max is 1 (lambda = -inf there), the
#: lambda grid starts at FLOW_SCHEDULE_LAMBDA_TOP (sigma ~ 0.953, SNR 0.0025 — pure noise for data of
#: unit scale, like SD1.5's sigma_max of 14.6 at lambda -2.68) and sigma_max = 1 is kept as the first
#: value. Offsetting by FLOW_SIGMA_OFFSET instead would start the grid at lambda -9.2 and spend the
#: first steps between sigma 0.9999 and 0.99, where nothing changes.
FLOW_SCHEDULE_LAMBDA_TOP = -3.0


def schedule_lambda_top(sigma_max: float, family: str) -> float:
    """The largest-noise lambda a lambda-spaced schedule starts from (see FLOW_SCHEDULE_LAMBDA_TOP)."""
    if family == FLOW and sigma_max >= 1.0 - 1e-3:
        return FLOW_SCHEDULE_LAMBDA_TOP
    return lam(float(sigma_max), family)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return family


def alpha(sigma, family: str):
    """Signal scale alpha(sigma): 1 for eps, 1 - sigma for flow."""
    check_family(family)
    if family == EPS:
        return torch.ones_like(sigma) if torch.is_tensor(sigma) else 1.0
    return 1.0 - sigma


def clamp_sigma(sigma, family: str):
    """Sigma offset so that lambda is finite: flow sigmas are clamped into (0, 1 - FLOW_SIGMA_OFFSET]."""
    if family == FLOW:
        if torch.is_tensor(sigma):
            return sigma.clamp(max=1.0 - FLOW_SIGMA_OFFSET)
        return min(float(sigma), 1.0 - FLOW_SIGMA_OFFSET)
    return sigma


def lam(sigma, family: str):
    """Half log-SNR lambda = log(alpha / sigma). Finite for every sigma in (0, sigma_max]
    (flow sigmas at 1 are offset by FLOW_SIGMA_OFFSET)."""
    check_family(family)
    s = clamp_sigma(sigma, family)
    if torch.is_tensor(s):
        if family == EPS:
            return -torch.log(s)
        return torch.log1p(-s) - torch.log(s)
    s = float(s)
    if family == EPS:
        return -math.log(s)
    return math.log1p(-s) - math.log(s)


def sigma_from_lam(lmb, family: str):
    """Inverse of :func:`lam`: exp(-lambda) for eps, sigmoid(-lambda) for flow."""
    check_family(family)
    if torch.is_tensor(lmb):
        return torch.exp(-lmb) if family == EPS else torch.sigmoid(-lmb)
    lmb = float(lmb)
    if family == EPS:
        return math.exp(-lmb)
    return 1.0 / (1.0 + math.exp(lmb))
