"""DEIS, tAB variant (Zhang & Chen 2022, arXiv 2204.13902), for the actual sigma grid and noise family.

The exponential integrator in noise prediction: with rho = sigma / alpha and y = x / alpha,
``dy/drho = eps(x)``, so ``x_t = (alpha_t/alpha_s) x_s + alpha_t int_{rho_s}^{rho_t} eps drho``. tAB
extrapolates eps by the Lagrange polynomial through the last k noise predictions *in time*, and
integrates it exactly against drho:

    C_j = int_{sigma_s}^{sigma_t} l_j(sigma) (drho/dsigma) dsigma,
    eps family: drho/dsigma = 1;   flow family: drho/dsigma = 1/(1 - sigma)^2 (closed form in w = 1 - sigma).

Time is the model's noise level sigma (the EDM time of VP/VE models in ComfyUI's x-space; the flow time
of flow models). The coefficients come from the schedule actually passed in and from the family — no
fixed EDM/VP constants (ComfyUI's DEIS maps every model onto an EDM VP-SDE with sigma 0.002..80).

The update is written as ``alpha_t D_s + sigma_t eps_s + alpha_t sum_{j>=1} C_j (eps_j - eps_s)`` (DDIM
plus corrections; no 1/alpha_s). A final step to sigma = 0 is a full tAB step (rho_t = 0 is finite).
Orders 1-4 (tAB is defined for any order; order 4 on equal steps in the eps family is the classical
Adams-Bashforth (55, -59, 37, -9)/24 of PLMS, here with variable-step coefficients).
Warm-up: orders 1, 2, .. (paper; a first-order start caps the asymptotic order at 2) or, with
``warmup="singlestep"`` and order 3, one extra model call at the first step's lambda midpoint whose
noise prediction joins the history (not from a flow sigma of 1, where rho is infinite).
"""
from __future__ import annotations

import math

import torch

from ._common import alpha_of, check_choice, eps_from_x0, multistep_order, setup, sigma_of_lam, x_from

WARMUPS = ("lower", "singlestep")
#: tAB is defined for any order (the Lagrange polynomial through the last k noise predictions); 1-4 here
MAX_ORDER = 4


def _poly_mul_linear(coefs, root):
    """(sum_m c_m s^m) * (s - root), coefficients lowest power first."""
    out = [0.0] * (len(coefs) + 1)
    for m, c in enumerate(coefs):
        out[m + 1] += c
        out[m] -= root * c
    return out


def _lagrange(nodes, j):
    """Coefficients (lowest power first) of the j-th Lagrange basis polynomial over ``nodes``."""
    coefs = [1.0]
    for k, v in enumerate(nodes):
        if k != j:
            coefs = [c / (nodes[j] - v) for c in _poly_mul_linear(coefs, v)]
    return coefs


def tab_coefficients(nodes, sigma_s: float, sigma_t: float, family: str):
    """C_j = int_{sigma_s}^{sigma_t} l_j(sigma) drho for the Lagrange basis over ``nodes`` (sigmas of the
    noise predictions, nodes[0] = sigma_s), in closed form (plain Python: this runs every step)."""
    out = []
    for j in range(len(nodes)):
        a = _lagrange(nodes, j)
        if family == "eps":
            out.append(sum(c / (m + 1) * (sigma_t ** (m + 1) - sigma_s ** (m + 1)) for m, c in enumerate(a)))
            continue
        # l_j(1 - w) = sum_k b_k w^k (binomial expansion), degree <= order - 1
        b = [0.0] * len(a)
        for m, c in enumerate(a):
            for k in range(m + 1):
                b[k] += c * math.comb(m, k) * (-1.0) ** k
        ws, wt = 1.0 - sigma_s, 1.0 - sigma_t
        # int_{sigma_s}^{sigma_t} l(sigma)/(1-sigma)^2 dsigma = -int_{ws}^{wt} sum_k b_k w^(k-2) dw
        total = b[0] * (1.0 / ws - 1.0 / wt)
        if len(b) > 1:
            total += b[1] * math.log(wt / ws)
        for k in range(2, len(b)):
            total += b[k] * (wt ** (k - 1) - ws ** (k - 1)) / (k - 1)
        out.append(-total)
    return out


def tab_step(denoised, hist_e, hist_s, sigma_t: float, family: str):
    """One tAB step from hist_s[0] to sigma_t: ``alpha_t D_s + sigma_t eps_s + alpha_t sum_{j>=1} C_j (eps_j - eps_s)``
    with ``hist_e`` / ``hist_s`` the noise predictions and their sigmas, newest first (hist_e[0] = eps_s at
    hist_s[0], the step's start; its data prediction is ``denoised``). The order is len(hist_e)."""
    eps_s, s = hist_e[0], hist_s[0]
    x_t = x_from(denoised, eps_s, sigma_t, family)                      # DDIM
    if len(hist_e) > 1:
        alpha_t = alpha_of(sigma_t, family)
        c = tab_coefficients(hist_s, s, sigma_t, family)
        for j in range(1, len(hist_e)):
            x_t = x_t + (alpha_t * c[j]) * (hist_e[j] - eps_s)
    return x_t


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                order=3, warmup="lower"):
    check_choice(warmup, WARMUPS, "warmup")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    order = multistep_order(order, 1, MAX_ORDER, grid, "DEIS")
    fam = grid.family
    hist_e, hist_s = [], []            # noise predictions and their sigmas, newest first
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        eps_s = eps_from_x0(x, denoised, s, fam)
        hist_e.insert(0, eps_s)
        hist_s.insert(0, s)
        del hist_e[order:], hist_s[order:]
        if warmup == "singlestep" and order == 3 and i == 0 and grid.n > 1 and t > 0 and grid.alpha[0] > 0:
            # start with eps at the first step's lambda midpoint and a 2-node tAB step; eps_u joins the
            # history, so the next step is already third order
            su = sigma_of_lam(grid.lam[0] + 0.5 * grid.h(0), fam)
            xu = x_from(denoised, eps_s, su, fam)
            eps_u = eps_from_x0(xu, run.denoise(xu, sigma=su), su, fam)
            x_t = tab_step(denoised, [eps_s, eps_u], [s, su], t, fam)
            hist_e.insert(0, eps_u)
            hist_s.insert(0, su)
        else:
            x_t = tab_step(denoised, hist_e, hist_s, t, fam)
        x = x_t
    return x
