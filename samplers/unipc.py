"""UniPC (Zhao et al. 2023, arXiv 2302.04867): the data-prediction unified predictor-corrector, B(h)
variants bh1 (B = h) and bh2 (B = e^h - 1), with the UniC corrector.

Step s -> t of order p, with previous data predictions D_k at lambda_k (r_k = (lambda_k - lambda_s)/h) and
D1_k = (D_k - D_s) / r_k:

    x_t^0  = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D_s                  (first order)
    UniP:  x_t = x_t^0 - alpha_t B(-h) sum_{k<p} a_k D1_k,   R[:-1,:-1] a = b[:-1]   (a = 1/2 when p = 2)
    UniC:  x_t^c = x_t^0 - alpha_t B(-h) (sum_{k<p} c_k D1_k + c_p (D_t - D_s)),  R c = b   (c = 1/2, p = 1)

with R[i, k] = r_k^i (r_p = 1) and b_i = (-h) phi_{i+2}(-h) (i+1)! / B(-h). D_t = D(x_t) is the model call
the next step needs anyway, so the corrector is free — except after the last model call, where it is
skipped. Orders warm up 1, 2, ..; ``lower_order_final`` lowers the final steps as the reference
implementation does (order min(p, steps left)). A final sigma of 0 is replaced by ``final_sigma``
(reference implementation and ComfyUI: 1e-3) and the state there is returned; ``final_sigma=0`` makes the
last step a denoising step x = D instead. ``min_step_ratio`` (FewStep safeguard, default 0.2, 0 = off) lowers
the order where the previous lambda steps are shorter than that fraction of the current one.
"""
from __future__ import annotations

import math

import torch

from ._common import (alpha_of, check_choice, check_float_range, first_order_coeffs, lam_of, multistep_order,
                      limit_order_by_step_ratio, phi, setup, step_order)

VARIANTS = ("bh1", "bh2")


def _coefficients(rks, h, variant):
    """(B(h), b, R) for data prediction, with neg_h = -h (plain Python lists: this runs every step)."""
    neg_h = -h
    b_of_h = neg_h if variant == "bh1" else math.expm1(neg_h)
    p = len(rks)
    b = [neg_h * phi(i + 2, neg_h) * math.factorial(i + 1) / b_of_h for i in range(p)]
    R = [[r ** i for r in rks] for i in range(p)]
    return b_of_h, b, R


def _solve(A, y):
    """Solve the small dense system A z = y (Gaussian elimination with partial pivoting)."""
    n = len(y)
    M = [list(row[:n]) + [y[i]] for i, row in enumerate(A[:n])]
    for c in range(n):
        piv = max(range(c, n), key=lambda rr: abs(M[rr][c]))
        M[c], M[piv] = M[piv], M[c]
        for rr in range(c + 1, n):
            f = M[rr][c] / M[c][c]
            M[rr] = [u - f * v for u, v in zip(M[rr], M[c])]
    z = [0.0] * n
    for rr in range(n - 1, -1, -1):
        z[rr] = (M[rr][n] - sum(M[rr][k] * z[k] for k in range(rr + 1, n))) / M[rr][rr]
    return z


def _predictor(p, R, bvec, d1s):
    """UniP's correction sum_{k<p} a_k D1_k (None at order 1; a = 1/2 at order 2)."""
    if p == 1:
        return None
    if p == 2:
        return 0.5 * d1s[0]
    rho = _solve([row[:-1] for row in R[:-1]], bvec[:-1])
    return sum(c * d for c, d in zip(rho, d1s))


def _corrector(p, R, bvec, d1s, d_change):
    """UniC's correction sum_{k<p} c_k D1_k + c_p (D_t - D_s) (c = 1/2 at order 1)."""
    rho_c = [0.5] if p == 1 else _solve(R, bvec)
    corr = rho_c[-1] * d_change
    for c, d in zip(rho_c[:-1], d1s):
        corr = corr + c * d
    return corr


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                 variant="bh2", order=3, use_corrector=True, lower_order_final=True, final_sigma=1e-3,
                 min_step_ratio=0.2):
    check_choice(variant, VARIANTS, "variant")
    final_sigma = check_float_range(final_sigma, 0.0, 0.1, "final_sigma")
    min_step_ratio = check_float_range(min_step_ratio, 0.0, 1.0, "min_step_ratio")
    run, grid = setup(model, x, sigmas, extra_args, callback, family)
    order = multistep_order(order, 1, 3, grid, "UniPC")
    fam = grid.family
    n = grid.n
    targets = list(grid.sigma)
    if grid.final_zero and final_sigma > 0 and targets[-2] > final_sigma:
        targets[-1] = final_sigma
    lams = list(grid.lam)
    lams[-1] = lam_of(targets[-1], fam)

    hist_d, hist_l = [], []           # newest first
    denoised = None
    for i in range(n):
        if denoised is None:          # first step (the corrector's model call feeds the later ones)
            denoised = run.denoise(x, i)
        run.report(i, x, denoised)
        hist_d.insert(0, denoised)
        hist_l.insert(0, lams[i])
        del hist_d[order:], hist_l[order:]
        s, t = targets[i], targets[i + 1]
        if t == 0.0:
            x = denoised
            break
        a, b0 = first_order_coeffs(s, t, fam)
        alpha_t = alpha_of(t, fam)
        x0_part = a * x + b0 * denoised
        p = step_order(order, i, n, lower_order_final, len(hist_d), final_below=None)
        h = lams[i + 1] - lams[i]
        p = limit_order_by_step_ratio(p, hist_l, h, min_step_ratio)
        rks = [(hist_l[k] - hist_l[0]) / h for k in range(1, p)] + [1.0]
        b_of_h, bvec, R = _coefficients(rks, h, variant)
        d1s = [(hist_d[k] - denoised) / rks[k - 1] for k in range(1, p)]
        pred = _predictor(p, R, bvec, d1s)
        x_t = x0_part if pred is None else x0_part - (alpha_t * b_of_h) * pred
        last = i == n - 1
        if last:
            x = x_t
            break
        d_t = run.denoise(x_t, i + 1)
        if use_corrector:
            x_t = x0_part - (alpha_t * b_of_h) * _corrector(p, R, bvec, d1s, d_t - denoised)
        x = x_t
        denoised = d_t
    return x
