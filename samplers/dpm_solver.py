"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927): the noise-prediction singlestep solvers of order 1, 2
and 3 (Algorithms 1 and 2 of the paper, r1 = 1/2 for order 2; r1 = 1/3, r2 = 2/3 for order 3).

With eps = (x - alpha D) / sigma and h = lambda_t - lambda_s, the exact solution is
``x_t = (alpha_t/alpha_s) x_s - sigma_t sum_k h^{k+1} phi_{k+1}(h) eps^(k)(lambda_s)``. The first-order
part is written as ``alpha_t D_s + sigma_t eps_s`` (the DDIM step, algebraically identical and free of a
1/alpha_s that blows up at a flow sigma of 1), so order 1 *is* DDIM. Higher orders add

    order 2:  - sigma_t (e^h - 1) / (2 r1) (eps_u - eps_s)
    order 3:  - sigma_t / r2 (phi_1(h) - 1) (eps_u2 - eps_s)   (u2 itself uses the eps_u1 correction)

Each step of order k costs k model calls; a final step to sigma = 0 is the first-order (denoising)
step x = D (one call), the h -> inf limit of the update.
"""
from __future__ import annotations

import math

import torch

from ._common import check_int_range, eps_from_x0, phi, setup, sigma_of_lam, x_from


@torch.no_grad()
def sample_dpm_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                      order=3):
    order = check_int_range(order, 1, 3, "order")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    fam = grid.family

    def eps_of(xv, dv, sig):
        return eps_from_x0(xv, dv, sig, fam)

    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        if t == 0.0:
            x = denoised
            continue
        eps_s = eps_of(x, denoised, s)
        x_t = x_from(denoised, eps_s, t, fam)          # DDIM / DPM-Solver-1
        if order >= 2:
            h = grid.h(i)
            lam_s = grid.lam[i]
            if order == 2:
                r1 = 0.5
                su = sigma_of_lam(lam_s + r1 * h, fam)
                xu = x_from(denoised, eps_s, su, fam)
                eps_u = eps_of(xu, run.denoise(xu, sigma=su), su)
                x_t = x_t - (t * math.expm1(h) / (2.0 * r1)) * (eps_u - eps_s)
            else:
                r1, r2 = 1.0 / 3.0, 2.0 / 3.0
                su1 = sigma_of_lam(lam_s + r1 * h, fam)
                xu1 = x_from(denoised, eps_s, su1, fam)
                d1 = eps_of(xu1, run.denoise(xu1, sigma=su1), su1) - eps_s
                su2 = sigma_of_lam(lam_s + r2 * h, fam)
                xu2 = x_from(denoised, eps_s, su2, fam) \
                    - (su2 * (r2 / r1) * (phi(1, r2 * h) - 1.0)) * d1
                d2 = eps_of(xu2, run.denoise(xu2, sigma=su2), su2) - eps_s
                x_t = x_t - (t / r2 * (phi(1, h) - 1.0)) * d2
        x = x_t
    return x
