"""EDM sampler (Karras et al. 2022, arXiv 2206.00364, Algorithm 2): Heun's 2nd-order method (or Euler)
on ``dx/dsigma = (x - D(x, sigma)) / sigma`` with optional stochastic churn.

Churn: for sigma_i in [s_tmin, s_tmax], gamma = min(s_churn / N, sqrt(2) - 1) raises the noise level to
sigma_hat = sigma_i (1 + gamma) before the step. The re-noising is family-correct: from
``x = alpha x0 + sigma eps`` to ``alpha_hat x0 + sigma_hat eps'`` the state is scaled by alpha_hat/alpha and
noise of variance ``sigma_hat^2 - (alpha_hat sigma / alpha)^2`` is added (for eps models alpha = 1 and this
is the paper's sqrt(sigma_hat^2 - sigma^2); flow models cap sigma_hat at 1). The Heun correction is skipped
on a step to sigma = 0 (Euler there, as in the paper).
"""
from __future__ import annotations

import math

import torch

from ._common import alpha_of, check_choice, check_float_range, setup, step_noise
from .noise import make_noise_sampler

METHODS = ("heun", "euler")


def renoise(x, sigma: float, sigma_up: float, family: str, z):
    """Move x from noise level sigma up to sigma_up >= sigma (fresh noise z ~ N(0, 1))."""
    a, a_up = alpha_of(sigma, family), alpha_of(sigma_up, family)
    scale = a_up / a
    var = sigma_up * sigma_up - (scale * sigma) ** 2
    return scale * x + math.sqrt(max(0.0, var)) * z


@torch.no_grad()
def sample_edm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
               method="heun", s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, seed=None,
               noise_sampler=None):
    check_choice(method, METHODS, "method")
    s_churn = check_float_range(s_churn, 0.0, 1e6, "s_churn")
    s_tmin = check_float_range(s_tmin, 0.0, float("inf"), "s_tmin")
    s_tmax = check_float_range(s_tmax, 0.0, float("inf"), "s_tmax")
    s_noise = check_float_range(s_noise, 0.0, 10.0, "s_noise")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    n = grid.n
    if s_churn > 0:
        noise_sampler = make_noise_sampler(x, sigmas, "gaussian", seed, run.extra_args, noise_sampler)
    for i in range(n):
        s, t = grid.sigma[i], grid.sigma[i + 1]
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= s <= s_tmax else 0.0   # s_churn 0: 0
        s_hat = s * (1.0 + gamma)
        if grid.family == "flow":
            s_hat = min(s_hat, 1.0)
        if s_hat > s:
            x = renoise(x, s, s_hat, grid.family, s_noise * step_noise(noise_sampler, s_hat, s, x))
            denoised = run.denoise(x, sigma=s_hat)
        else:
            denoised = run.denoise(x, i)
        run.report(i, x, denoised, sigma_hat=sigmas[i] * (s_hat / s) if s_hat > s else None)
        d = (x - denoised) / s_hat
        x_next = x + (t - s_hat) * d
        if method == "heun" and t > 0:
            d2 = (x_next - run.denoise(x_next, i + 1)) / t
            x_next = x + (t - s_hat) * 0.5 * (d + d2)
        x = x_next
    return x
