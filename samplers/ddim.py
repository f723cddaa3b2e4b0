"""DDIM (Song et al. 2021, arXiv 2010.02502) in ComfyUI's x-space, for both noise families.

Step s -> t with data prediction D and noise prediction eps = (x_s - alpha_s D) / sigma_s:

    x_t = alpha_t D + sqrt(sigma_t^2 - c^2) eps + c z,   c (noise_std) = eta sigma_t sqrt(1 - e^{-2h}),

with e^{-h} = (sigma_t alpha_s) / (sigma_s alpha_t). eta = 0 is deterministic DDIM (the exact solution
for a constant D, equal to DPM-Solver-1 and DPM-Solver++-1); eta = 1 is the DDPM posterior (ancestral)
step: in the VP parametrisation c^2 is the DDPM posterior variance, and this form is invariant to the
scaling, so flow models re-noise with alpha = 1 - sigma correctly. A final step to sigma = 0 returns D.
"""
from __future__ import annotations

import math

import torch

from ._common import check_float_range, setup, step_noise
from .noise import make_noise_sampler


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                eta=0.0, s_noise=1.0, noise_sampler=None, seed=None):
    eta = check_float_range(eta, 0.0, 1.0, "eta")
    s_noise = check_float_range(s_noise, 0.0, 10.0, "s_noise")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    stochastic = eta > 0
    # s_noise scales only the fresh noise (as in k-diffusion): at 0 the eta step keeps its drift, adds nothing
    noisy = stochastic and s_noise > 0
    if noisy:
        noise_sampler = make_noise_sampler(x, sigmas, "gaussian", seed, run.extra_args, noise_sampler)
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        a_s, a_t = grid.alpha[i], grid.alpha[i + 1]
        eps = (x - a_s * denoised) / s
        if t == 0.0:
            x = denoised
            continue
        if not stochastic:
            x = a_t * denoised + t * eps
            continue
        exp_neg_h = (t * a_s) / (s * a_t)
        noise_std = eta * t * math.sqrt(max(0.0, 1.0 - exp_neg_h * exp_neg_h))
        x_new = a_t * denoised + math.sqrt(max(0.0, t * t - noise_std * noise_std)) * eps
        x = x_new + (noise_std * s_noise) * step_noise(noise_sampler, s, t, x) if noisy else x_new
    return x
