"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): data-prediction exponential integrators.

For a step s -> t (h = lambda_t - lambda_s) the exact solution of the probability-flow ODE is
``x_t = (sigma_t/sigma_s) x_s + sigma_t int e^lambda D dlambda``; expanding D in lambda gives

    x_t = (sigma_t/sigma_s) x_s + alpha_t sum_k h^{k+1} phi_{k+1}(-h) D^(k)(lambda_s).

* ``sample_dpmpp_multistep`` — DPM-Solver++(2M) / (3M): derivatives from the previous data
  predictions (divided differences in lambda). Order 2 uses the paper's form
  ``D_s + (D_s - D_prev) / (2r)`` with the first-order weight; order 3 uses the phi_2/phi_3 Taylor terms.
  Warm-up with lower orders; ``lower_order_final`` lowers the last steps of schedules shorter than 10
  steps (reference implementation). ``min_step_ratio`` (FewStep safeguard, default 0.2, 0 = off):
  a previous prediction is used only while the lambda spacing to it is at least that fraction of the
  current step (see ``_common.limit_order_by_step_ratio``).
* ``sample_dpmpp_2s`` — DPM-Solver++(2S), singlestep second order with the midpoint in lambda (r = 1/2).
* ``sample_dpmpp_sde`` — SDE-DPM-Solver++(2M)/(3M) with ``eta`` (paper eta = 1): the same expansion with
  the SDE kernel, ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t c sum_k h^{k+1} phi_{k+1}(-c h) D^(k)
  + sigma_t sqrt(1 - e^{-2 eta h}) s_noise z`` with c = 1 + eta; eta = 0 is the ODE solver. Noise is a
  seeded Brownian path (refining the schedule refines the same path) or per-step Gaussian, or a given
  ``noise_sampler``.

In every solver a final step to sigma = 0 is the first-order (denoising) step x = D, which is the h -> inf
limit of the update (as in the reference implementations). All first-order coefficients are taken from
sigma and alpha directly (exact at a flow sigma of 1); lambda (offset at a flow sigma of 1) only enters
step ratios and phi_2/phi_3.
"""
from __future__ import annotations

import math

import torch

from ._common import (check_choice, check_float_range, first_order_coeffs, limit_order_by_step_ratio,
                      multistep_order, phi, setup, sigma_of_lam, step_noise, step_order,
                      taylor_derivatives)
from .noise import NOISE_TYPES, make_noise_sampler

SOLVER_TYPES = ("midpoint", "heun")
WARMUPS = ("lower", "singlestep")


def _multistep(run, grid, x, order, lower_order_final, eta=0.0, s_noise=1.0, noise_sampler=None,
               solver_type="midpoint", warmup="lower", min_step_ratio=0.2):
    hist_d, hist_l = [], []          # previous data predictions and their lambdas, newest first
    one_plus_eta = 1.0 + eta
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        hist_d.insert(0, denoised)
        hist_l.insert(0, grid.lam[i])
        del hist_d[3:], hist_l[3:]
        if t == 0.0:
            x = denoised
            continue
        a_s, a_t = grid.alpha[i], grid.alpha[i + 1]
        exp_neg_h = (t * a_s) / (s * a_t)                 # e^{-h}, exact at a flow sigma of 1
        exp_neg_ch = exp_neg_h ** one_plus_eta         # e^{-(1 + eta) h}
        x_new = (t / s) * (exp_neg_h ** eta) * x + (a_t * (1.0 - exp_neg_ch)) * denoised
        if warmup == "singlestep" and order == 3 and i == 0 and grid.n > 1 and grid.sigma[2] > 0:
            # one DPM-Solver++(2S) midpoint evaluation makes the start second-order accurate; its data
            # prediction joins the history, so the next step is already third order
            lam_u = grid.lam[0] + 0.5 * grid.h(0)
            su = sigma_of_lam(lam_u, grid.family)
            au, bu = first_order_coeffs(s, su, grid.family)
            d_u = run.denoise(au * x + bu * denoised, sigma=su)
            x_new = x_new + (a_t * (1.0 - exp_neg_ch)) * (d_u - denoised)
            hist_d.insert(0, d_u)
            hist_l.insert(0, lam_u)
        else:
            k = step_order(order, i, grid.n, lower_order_final, len(hist_d))
            h = grid.h(i)
            k = limit_order_by_step_ratio(k, hist_l, h, min_step_ratio)
            if k >= 2:
                if k == 2 and solver_type == "midpoint":
                    r = (hist_l[0] - hist_l[1]) / h
                    x_new = x_new + (a_t * (1.0 - exp_neg_ch) / (2.0 * r)) * (denoised - hist_d[1])
                else:
                    ders = taylor_derivatives(hist_l[:k], hist_d[:k])
                    x_new = x_new + (a_t * one_plus_eta * h * h * phi(2, -one_plus_eta * h)) * ders[0]
                    if k == 3:
                        x_new = x_new + (a_t * one_plus_eta * h ** 3 * phi(3, -one_plus_eta * h)) * ders[1]
        if eta > 0 and s_noise > 0:
            x_new = x_new + (t * math.sqrt(max(0.0, 1.0 - exp_neg_h ** (2 * eta))) * s_noise) \
                * step_noise(noise_sampler, s, t, x)
        x = x_new
    return x


@torch.no_grad()
def sample_dpmpp_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                           order=2, lower_order_final=True, solver_type="midpoint", warmup="lower",
                           min_step_ratio=0.2):
    """DPM-Solver++(2M) (order 2) or (3M) (order 3); order 1 is DDIM. ``solver_type`` only affects
    order 2: "midpoint" (paper) or "heun" (the phi_2 form). ``warmup``: "lower" (paper: first steps
    with orders 1, 2 — a first-order start caps the asymptotic order at 2) or "singlestep" (order 3
    only: one extra model call at the first step's lambda midpoint, which makes 3M third order)."""
    check_choice(solver_type, SOLVER_TYPES, "solver_type")
    check_choice(warmup, WARMUPS, "warmup")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    order = multistep_order(order, 1, 3, grid, "DPM-Solver++ multistep")
    min_step_ratio = check_float_range(min_step_ratio, 0.0, 1.0, "min_step_ratio")
    return _multistep(run, grid, x, order, bool(lower_order_final), solver_type=solver_type, warmup=warmup,
                      min_step_ratio=min_step_ratio)


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                     order=2, eta=1.0, s_noise=1.0, noise="brownian", seed=None, noise_sampler=None,
                     lower_order_final=True, solver_type="midpoint", warmup="lower", min_step_ratio=0.2):
    """SDE-DPM-Solver++(2M)/(3M). eta in [0, 1] scales the injected noise (0 = ODE)."""
    check_choice(solver_type, SOLVER_TYPES, "solver_type")
    check_choice(warmup, WARMUPS, "warmup")
    eta = check_float_range(eta, 0.0, 1.0, "eta")
    s_noise = check_float_range(s_noise, 0.0, 10.0, "s_noise")
    check_choice(noise, NOISE_TYPES, "noise")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    order = multistep_order(order, 1, 3, grid, "DPM-Solver++ SDE")
    if eta > 0 and s_noise > 0:
        noise_sampler = make_noise_sampler(x, sigmas, noise, seed, run.extra_args, noise_sampler)
    min_step_ratio = check_float_range(min_step_ratio, 0.0, 1.0, "min_step_ratio")
    return _multistep(run, grid, x, order, bool(lower_order_final), eta, s_noise, noise_sampler, solver_type,
                      warmup, min_step_ratio)


@torch.no_grad()
def sample_dpmpp_2s(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                    r=0.5):
    """DPM-Solver++(2S): u = first-order step to lambda_s + r h, then
    x_t = first-order step from x_s with D_eff = (1 - 1/(2r)) D_s + 1/(2r) D_u. Two model calls per step
    (one for a final step to sigma = 0, which denoises)."""
    r = check_float_range(r, 1e-3, 1.0, "r")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    fam = grid.family
    for i in range(grid.n):
        denoised, s, t = run.start(i, x, grid)
        if t == 0.0:
            x = denoised
            continue
        lam_u = grid.lam[i] + r * grid.h(i)
        su = sigma_of_lam(lam_u, fam)
        au, bu = first_order_coeffs(s, su, fam)
        d_u = run.denoise(au * x + bu * denoised, sigma=su)
        d_eff = (1.0 - 1.0 / (2.0 * r)) * denoised + (1.0 / (2.0 * r)) * d_u if r != 0.5 else d_u
        a, b = grid.first_order(i)
        x = a * x + b * d_eff
    return x

