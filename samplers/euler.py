"""Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``.

The same ODE holds in both noise families, and one Euler step is exact when the denoiser is constant:
``x_t = D + (sigma_t / sigma_s)(x_s - D)``. First order. (Karras et al. 2022, Algorithm 1 without churn.)
"""
from __future__ import annotations

import torch

from ._common import setup


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps"):
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        x = x + (t - s) / s * (x - denoised)
    return x
