"""Shared pieces of the FewStep solvers: input validation, the sigma grid in both noise families,
exponential-integrator phi functions, seeds and the per-step model/callback plumbing.

Notation: ``x = alpha * x0 + sigma * eps``; alpha = 1 (eps family) or 1 - sigma (flow);
lambda = log(alpha / sigma). For a step s -> t, ``h = lambda_t - lambda_s > 0``. The exact first-order
(constant-x0) update is ``x_t = (sigma_t / sigma_s) x_s + (alpha_t - sigma_t alpha_s / sigma_s) x0``; it
is computed from sigma and alpha directly, so it is exact at a flow sigma of 1 and at a final sigma of 0.
Only step-size ratios and the higher-order phi coefficients use lambda, where a flow sigma of 1 is
offset by ``families.clamp_sigma``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..core import families
from ..core.validate import check_choice, check_float, check_int  # noqa: F401  (check_choice: for the solvers)

log = logging.getLogger("FewStep")


# ------------------------------------------------------------------------------------------------
# option validation
def check_int_range(value, lo: int, hi: int, name: str) -> int:
    """An integer option in [lo, hi] (core/validate.py)."""
    return check_int(value, lo, hi, name)


def check_float_range(value, lo: float, hi: float, name: str) -> float:
    """A float option in [lo, hi] (core/validate.py)."""
    return check_float(value, lo, hi, name)


def check_sigmas(sigmas) -> None:
    """sigmas: 1-D, no NaN/inf, non-negative, strictly decreasing (a final 0 allowed, which is the
    only zero). Raises ValueError otherwise."""
    if not torch.is_tensor(sigmas) or sigmas.ndim != 1:
        raise ValueError("sigmas must be a 1-D tensor")
    s = sigmas.detach().to("cpu", torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError("sigmas contain NaN or inf")
    if s.numel() and (s < 0).any():
        raise ValueError("sigmas must be non-negative")
    if not (s[1:] < s[:-1]).all():          # empty for 0 or 1 sigmas
        raise ValueError("sigmas must be strictly decreasing (only the final sigma may be 0)")
    if (s[:-1] <= 0).any():
        raise ValueError("only the final sigma may be 0")


def lower_order_for_length(order: int, n_steps: int, solver: str) -> int:
    """A multistep solver cannot reach ``order`` in fewer than ``order`` steps: lower it and log it."""
    if n_steps < order:
        new = max(1, n_steps)
        log.warning("%s: the schedule has %d step(s), too short for order %d; using order %d",
                    solver, n_steps, order, new)
        return new
    return order


# ------------------------------------------------------------------------------------------------
# phi functions of exponential integrators
def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_n z^n / (n + k)!  (phi_0 = e^z, phi_1 = (e^z - 1)/z, phi_{k+1} = (phi_k - 1/k!)/z).

    Series for |z| < 1 (no cancellation), the recurrence otherwise. Exact integrals:
    ``int_0^h e^{-(h-tau)} tau^k / k! dtau = h^{k+1} phi_{k+1}(-h)`` (data prediction) and
    ``int_0^h e^{h-tau} tau^k / k! dtau = h^{k+1} phi_{k+1}(h)`` (noise prediction)."""
    z = float(z)
    if math.isinf(z):
        if z < 0:
            return 0.0
        return math.inf
    if abs(z) < 1.0:
        total, term = 0.0, 1.0 / math.factorial(k)
        n = 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300) and n < 60:
            total += term
            n += 1
            term *= z / (n + k)
        return total
    p = math.exp(z)
    for j in range(k):
        p = (p - 1.0 / math.factorial(j)) / z
    return p


# ------------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """The sigma grid of one sampling run as float64 Python numbers (sigmas are read once)."""
    family: str
    sigma: list        # actual sigmas
    alpha: list        # actual alphas
    lam: list          # lambda (flow sigma 1 offset; +inf at sigma 0)

    @property
    def n(self) -> int:
        return len(self.sigma) - 1

    @property
    def final_zero(self) -> bool:
        return len(self.sigma) > 1 and self.sigma[-1] == 0.0

    def h(self, i: int, j: int | None = None) -> float:
        """lambda step from grid index i to j (default i + 1)."""
        j = i + 1 if j is None else j
        return self.lam[j] - self.lam[i]

    # the exact first-order (DDIM / DPM-Solver-1 / DPM-Solver++-1) coefficients
    def first_order(self, i: int, j: int | None = None):
        """(a, b) with x_t = a x_s + b x0 exact for a constant x0, s = grid[i], t = grid[j]."""
        j = i + 1 if j is None else j
        return first_order_coeffs(self.sigma[i], self.sigma[j], self.family)


def make_grid(sigmas: torch.Tensor, family: str) -> Grid:
    families.check_family(family)
    check_sigmas(sigmas)
    sig = [float(v) for v in sigmas.detach().to("cpu", torch.float64).tolist()]
    if family == families.FLOW and sig and sig[0] > 1.0:
        raise ValueError(f"flow-model sigmas must be <= 1, got {sig[0]}")
    alp = [float(families.alpha(s, family)) for s in sig]
    lam = [math.inf if s == 0.0 else float(families.lam(s, family)) for s in sig]
    return Grid(family, sig, alp, lam)


def alpha_of(sigma: float, family: str) -> float:
    return float(families.alpha(float(sigma), family))


def lam_of(sigma: float, family: str) -> float:
    return math.inf if sigma == 0.0 else float(families.lam(float(sigma), family))


def sigma_of_lam(lmb: float, family: str) -> float:
    return float(families.sigma_from_lam(float(lmb), family))


def first_order_coeffs(sigma_s: float, sigma_t: float, family: str):
    """(a, b): x_t = a x_s + b x0, the exact solution for constant x0 (both families):
    a = sigma_t / sigma_s, b = alpha_t - sigma_t alpha_s / sigma_s = alpha_t (1 - e^{-h})."""
    a = sigma_t / sigma_s
    return a, alpha_of(sigma_t, family) - a * alpha_of(sigma_s, family)


def eps_from_x0(x, x0, sigma: float, family: str):
    """Noise prediction from a data prediction: eps = (x - alpha x0) / sigma."""
    a = alpha_of(sigma, family)
    return (x - a * x0) / sigma if a != 1.0 else (x - x0) / sigma


def x_from(x0, eps, sigma: float, family: str):
    """alpha x0 + sigma eps (the DDIM transfer written without 1/alpha)."""
    return alpha_of(sigma, family) * x0 + sigma * eps


# ------------------------------------------------------------------------------------------------
def step_noise(noise_sampler, sigma: float, sigma_next: float, like: torch.Tensor) -> torch.Tensor:
    """``noise_sampler(sigma, sigma_next)`` for one step, on ``like``'s device, without a host sync.

    The step's sigmas are passed as Python floats (from the run's Grid): reading a device tensor's
    value (``float(t)``, ``.item()``, ``.cpu()``) makes the host wait for the device on every step.
    A sampler that draws on the CPU (ComfyUI's Brownian tree given CPU sigmas) returns a CPU tensor;
    it is put on ``like``'s device, on CUDA with a non-blocking copy, which the device stream orders
    before its use (the values are the same as with a blocking copy; other devices copy as before)."""
    z = noise_sampler(sigma, sigma_next)
    if z.device != like.device:
        z = z.to(like.device, non_blocking=like.device.type == "cuda")
    return z


# ------------------------------------------------------------------------------------------------
def resolve_seed(seed, extra_args) -> int:
    if seed is not None:
        return int(seed)
    if extra_args:
        s = extra_args.get("seed")
        if s is not None:
            return int(s)
    return 0


class Run:
    """Model calls and callbacks of one sampling run (the k-diffusion contract)."""

    def __init__(self, model, x, sigmas, extra_args, callback, family):
        self.model = model
        self.sigmas = sigmas
        self.extra_args = {} if extra_args is None else extra_args
        self.callback = callback
        self.family = families.check_family(family)
        self.s_in = x.new_ones([x.shape[0]])

    def denoise(self, x, i=None, sigma=None):
        """model(x, sigma * s_in): sigma = sigmas[i] (the tensor entry) or a float."""
        s = self.sigmas[i] if sigma is None else sigma
        return self.model(x, s * self.s_in, **self.extra_args)

    def start(self, i, x, grid):
        """The model call at sigmas[i] and its callback: (denoised, sigma_s, sigma_t) as floats."""
        denoised = self.denoise(x, i)
        self.report(i, x, denoised)
        return denoised, grid.sigma[i], grid.sigma[i + 1]

    def report(self, i, x, denoised, sigma_hat=None):
        if self.callback is not None:
            sh = self.sigmas[i] if sigma_hat is None else sigma_hat
            self.callback({"x": x, "i": i, "sigma": self.sigmas[i], "sigma_hat": sh, "denoised": denoised})


def setup(model, x, sigmas, extra_args, callback, family):
    """(Run, Grid) for a solver call; validates sigmas and family."""
    grid = make_grid(sigmas, family)
    return Run(model, x, sigmas, extra_args, callback, family), grid


def multistep_order(order: int, lo: int, hi: int, grid: Grid, solver: str, name: str = "order") -> int:
    """Validate a multistep order and lower it (logged) when the schedule is too short for it.
    Steps to a final sigma of 0 are first-order denoising steps and do not count."""
    order = check_int_range(order, lo, hi, name)
    if grid.n <= 0:
        return order                          # nothing to run
    n = grid.n - (1 if grid.final_zero else 0)
    return lower_order_for_length(order, max(n, 1), solver)


def taylor_derivatives(lams, values):
    """First and second derivatives at lams[0] of the polynomial through (lams[k], values[k]),
    k = 0..len-1 (Newton divided differences; 2 points -> [d1], 3 points -> [d1, d2])."""
    if len(lams) == 2:
        return [(values[0] - values[1]) / (lams[0] - lams[1])]
    if len(lams) == 3:
        f01 = (values[0] - values[1]) / (lams[0] - lams[1])
        f12 = (values[1] - values[2]) / (lams[1] - lams[2])
        f012 = (f01 - f12) / (lams[0] - lams[2])
        return [f01 + f012 * (lams[0] - lams[1]), 2.0 * f012]
    raise ValueError("taylor_derivatives takes 2 or 3 points")


def step_order(order: int, i: int, n: int, lower_order_final: bool, history: int,
               final_below: int | None = 10) -> int:
    """Order of multistep step i (0-based) of n: limited by the history available (warm-up with lower
    orders) and, with lower_order_final, by the steps left (n - i) on schedules of fewer than
    ``final_below`` steps (DPM-Solver++'s reference rule: 10) or on every schedule (``None``: UniPC's
    reference rule)."""
    k = min(order, history)
    if lower_order_final and (final_below is None or n < final_below):
        k = min(k, n - i)
    return max(1, k)


def limit_order_by_step_ratio(k: int, hist_lams, h: float, min_ratio: float) -> int:
    """FewStep safeguard for multistep extrapolation: use a previous point only while the lambda
    spacings it spans are at least ``min_ratio`` times the current step h. Data predictions saturate in
    lambda, so extrapolating a slope measured over a short step across a step many times longer (the
    last steps of time-uniform or "normal" schedules) overshoots badly. On smooth grids the ratios tend
    to 1 as steps are refined, so the convergence order is unchanged; ``min_ratio=0`` turns it off."""
    if min_ratio <= 0:
        return k
    m = 1
    while m < k and (hist_lams[m - 1] - hist_lams[m]) >= min_ratio * h:
        m += 1
    return m
