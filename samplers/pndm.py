"""PNDM / PLMS (Liu et al. 2022, arXiv 2202.09778): pseudo linear multistep with the DDIM transfer.

With rho = sigma / alpha and y = x / alpha the probability-flow ODE is ``dy/drho = eps(x)``, and the
DDIM step is exactly Euler's method in rho: ``T(x_s, e; s -> t) = alpha_t (x_s/alpha_s + (rho_t - rho_s) e)``,
written here as ``alpha_t D_s + sigma_t eps_s + alpha_t (rho_t - rho_s)(e - eps_s)`` (no 1/alpha_s on x).
PNDM's pseudo-numerical methods replace e by

* PLMS (4th-order Adams–Bashforth): ``e' = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24``;
* warm-up ``"rk"`` (F-PNDM): the first three steps are pseudo Runge–Kutta steps — RK4 in rho, stages
  at the rho-midpoint, 4 model calls per step; or ``"lower"`` (S-PNDM-like): Adams–Bashforth of orders
  1, 2, 3 with the fixed coefficients (1), (3, -1)/2, (23, -16, 5)/12.

The variable is rho because that is where the DDIM transfer is an Euler step; the fixed coefficients
are exact for steps uniform in rho (there PLMS with the RK start is 4th order). On other smooth grids
(e.g. uniform in lambda) fixed coefficients leave an O(h^2) consistency error: 2nd order. The lower-order
warm-up's first Euler step also limits the order to 2.

A final step to sigma = 0 is a full PLMS step (rho_t = 0 is finite). For a flow schedule starting at
sigma = 1 (rho = inf), the first step is a DDIM step.
"""
from __future__ import annotations

import torch

from ._common import alpha_of, check_choice, eps_from_x0, setup, x_from

WARMUPS = ("rk", "lower")
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _rho(sigma: float, family: str) -> float:
    return sigma / alpha_of(sigma, family)


def _sigma_of_rho(rho: float, family: str) -> float:
    return rho if family == "eps" else rho / (1.0 + rho)


@torch.no_grad()
def sample_pndm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps", warmup="rk"):
    check_choice(warmup, WARMUPS, "warmup")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    fam = grid.family

    def transfer(x0_s, eps_s, e, rho_s, sigma_u):
        out = x_from(x0_s, eps_s, sigma_u, fam)
        if e is not eps_s:
            out = out + (alpha_of(sigma_u, fam) * (_rho(sigma_u, fam) - rho_s)) * (e - eps_s)
        return out

    hist = []                                  # e_i = eps(x_i, sigma_i), newest first
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        eps_s = eps_from_x0(x, denoised, s, fam)
        hist.insert(0, eps_s)
        del hist[4:]
        if grid.alpha[i] == 0.0:               # flow sigma = 1: rho is infinite, take a DDIM step
            x = x_from(denoised, eps_s, t, fam)
            continue
        rho_s = _rho(s, fam)
        if len(hist) < 4 and warmup == "rk" and t > 0:
            rho_t = _rho(t, fam)
            sm = _sigma_of_rho(0.5 * (rho_s + rho_t), fam)
            x1 = transfer(denoised, eps_s, eps_s, rho_s, sm)
            e2 = eps_from_x0(x1, run.denoise(x1, sigma=sm), sm, fam)
            x2 = transfer(denoised, eps_s, e2, rho_s, sm)
            e3 = eps_from_x0(x2, run.denoise(x2, sigma=sm), sm, fam)
            x3 = transfer(denoised, eps_s, e3, rho_s, t)
            e4 = eps_from_x0(x3, run.denoise(x3, sigma=t), t, fam)
            e = (eps_s + 2.0 * e2 + 2.0 * e3 + e4) / 6.0
        else:
            coeffs = _AB[len(hist)]
            e = eps_s if len(coeffs) == 1 else sum(c * h for c, h in zip(coeffs, hist))
        x = transfer(denoised, eps_s, e, rho_s, t)
    return x
