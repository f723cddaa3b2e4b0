"""TCD strategic stochastic sampling (Zheng et al. 2024, Trajectory Consistency Distillation,
arXiv 2402.19159).

Each step s -> t predicts x0 at s, moves deterministically (DDIM) to an intermediate noise level
sigma' at model time (1 - gamma) * time(t), then forward-diffuses from sigma' back up to t with fresh
noise: ``x_t = (alpha_t/alpha') x' + sqrt(sigma_t^2 - (alpha_t sigma' / alpha')^2) z``, which is the
exact forward process in both families (alpha = 1 - sigma for flow). gamma = 0 is deterministic DDIM;
gamma = 1 is a multistep consistency sampler (x0 re-noised to t). The last step (to sigma = 0) adds no
noise.

Model time: for flow models ComfyUI's time *is* sigma; for eps models it is the model's discrete
timestep, read from ``model_sigmas`` (a fewstep ModelSigmas; default: the SD1.x/SDXL grid that TCD was
trained on), where time 0 is sigma_min (as the reference scheduler's timestep 0).
"""
from __future__ import annotations

import torch

from ..core.model_sigmas import ModelSigmas
from ._common import check_float_range, eps_from_x0, setup, step_noise, x_from
from .edm import renoise
from .noise import make_noise_sampler


def intermediate_sigma(sigma_next: float, gamma: float, family: str, model_sigmas=None) -> float:
    """sigma' at time (1 - gamma) * time(sigma_next), never above sigma_next."""
    if sigma_next == 0.0 or gamma == 0.0:
        return sigma_next
    if family == "flow":
        return (1.0 - gamma) * sigma_next
    ms = model_sigmas if model_sigmas is not None else _default_grid()
    u = float(ms.time_of(sigma_next))
    return min(sigma_next, float(ms.sigma_at((1.0 - gamma) * u)))


_GRID = []


def _default_grid():
    if not _GRID:
        _GRID.append(ModelSigmas.discrete_vp())
    return _GRID[0]


@torch.no_grad()
def sample_tcd(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
               gamma=0.3, seed=None, noise_sampler=None, model_sigmas=None):
    gamma = check_float_range(gamma, 0.0, 1.0, "gamma")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    fam = grid.family
    if gamma > 0:
        noise_sampler = make_noise_sampler(x, sigmas, "gaussian", seed, run.extra_args, noise_sampler)
    # the intermediate sigmas of every step, before the loop (they read the model's sigma grid)
    s_mids = [intermediate_sigma(grid.sigma[i + 1], gamma, fam, model_sigmas) for i in range(grid.n)]
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        eps = eps_from_x0(x, denoised, s, fam)
        s_mid = s_mids[i]
        x = x_from(denoised, eps, s_mid, fam)
        if s_mid < t:
            x = renoise(x, s_mid, t, fam, step_noise(noise_sampler, s, t, x))
    return x
