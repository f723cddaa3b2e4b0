"""The analytic model: a Gaussian mixture in latent shape with an exact denoiser.

Data x0 ~ sum_k w_k N(mu_k, s_k^2 I). Under either noise family, x = alpha*x0 + sigma*eps, so given
component k, x ~ N(alpha*mu_k, v_k I) with v_k = alpha^2 s_k^2 + sigma^2, and

    E[x0 | x, k] = mu_k + (alpha s_k^2 / v_k) (x - alpha mu_k),
    E[x0 | x]    = sum_k r_k(x) E[x0 | x, k],   r = softmax_k(log w_k - |x - alpha mu_k|^2/(2 v_k) - D/2 log v_k).

This is the exact denoiser at any sigma (not only at rounded timesteps), so the probability-flow ODE
``dx/d log(sigma) = x - D(x, sigma)`` has a solution that a fine RK4 integration gives to ~1e-9.

Conditional and unconditional mixtures share components and differ in weights: the conditioning
tensor *is* the log-weight vector, shape (B, 1, K), so a ComfyUI CONDITIONING carries it as-is and
CFG is meaningful.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import families
from .model_sigmas import ModelSigmas

LATENT_CHANNELS = 4


def _shape_seed(seed: int, shape) -> int:
    h = seed * 1_000_003
    for s in shape:
        h = (h * 31 + int(s)) % (2 ** 62)
    return h


class GaussianMixture:
    """Mixture parameters, made deterministically for any latent shape from (seed, shape)."""

    def __init__(self, components: int = 8, seed: int = 0, std_range: tuple = (0.25, 0.7),
                 radius_range: tuple = (1.5, 4.0), cond_mass: float = 0.9):
        """``std_range``: the component standard deviations are uniform in it; ``radius_range``: the
        distances of the component means from their common centre; ``cond_mass``: the share of the
        conditional mixture's weight on the first half of the components (the unconditional one is
        uniform). The defaults are the project's analytic model."""
        if not (1 <= int(components) <= 256):
            raise ValueError(f"components must be in [1, 256], got {components}")
        lo, hi = (float(v) for v in std_range)
        r_lo, r_hi = (float(v) for v in radius_range)
        if not (0 < lo <= hi) or not (0 <= r_lo <= r_hi) or not (0 < cond_mass < 1):
            raise ValueError(f"need 0 < std_range[0] <= std_range[1], 0 <= radius_range[0] <= radius_range[1] and "
                             f"0 < cond_mass < 1, got {std_range}, {radius_range}, {cond_mass}")
        self.components = int(components)
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        k = self.components
        self.stds = lo + (hi - lo) * torch.rand(k, generator=g, dtype=torch.float64)
        self.radii = r_lo + (r_hi - r_lo) * torch.rand(k, generator=g, dtype=torch.float64)
        # conditional: the first half of the components carries cond_mass (90%) of the mass
        half = max(1, k // 2)
        w = torch.full((k,), round(1.0 - cond_mass, 12) / max(1, k - half), dtype=torch.float64)
        w[:half] = cond_mass / half if k > half else 1.0 / k
        if k == half:
            w[:] = 1.0 / k
        self.cond_log_weights = torch.log(w / w.sum())
        self.uncond_log_weights = torch.full((k,), -math.log(k), dtype=torch.float64)
        self._means = {}

    def means(self, shape, device=None) -> torch.Tensor:
        """(K, D) float64 means for a latent of per-sample ``shape`` (C, H, W, ...)."""
        shape = tuple(int(s) for s in shape)
        key = (shape, str(device))
        m = self._means.get(key)
        if m is None:
            d = math.prod(shape)
            g = torch.Generator().manual_seed(_shape_seed(self.seed, shape))
            base = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
            dirs = torch.randn(self.components, d, generator=g, dtype=torch.float64)
            dirs = dirs / dirs.norm(dim=1, keepdim=True) * self.radii[:, None]
            m = (base[None] + dirs).to(device)
            self._means[key] = m
        return m

    def log_weights(self, cond: bool) -> torch.Tensor:
        return (self.cond_log_weights if cond else self.uncond_log_weights).clone()

    def conditioning_tensor(self, cond: bool) -> torch.Tensor:
        """The (1, 1, K) float32 tensor a ComfyUI CONDITIONING carries for this mixture."""
        return self.log_weights(cond).to(torch.float32).view(1, 1, -1)

    # ------------------------------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma, log_weights: torch.Tensor, family: str) -> torch.Tensor:
        """Exact E[x0 | x] for a batch. ``sigma``: scalar or (B,); ``log_weights``: (K,) or (B, K).
        Computed in float64, returned in x's dtype."""
        families.check_family(family)
        b = x.shape[0]
        xf = x.reshape(b, -1).to(torch.float64)
        d = xf.shape[1]
        mu = self.means(x.shape[1:], x.device)
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(b)
        lw = torch.as_tensor(log_weights, dtype=torch.float64, device=x.device)
        lw = lw.reshape(-1, self.components)
        if lw.shape[0] == 1:
            lw = lw.expand(b, -1)
        lw = torch.log_softmax(lw, dim=1)
        a = families.alpha(sig, family)                      # (B,)
        s2 = self.stds.to(x.device) ** 2                      # (K,)
        v = (a[:, None] ** 2) * s2[None] + (sig[:, None] ** 2)  # (B, K)
        # |x - a mu_k|^2 without a (B, K, D) tensor
        xx = (xf * xf).sum(1, keepdim=True)
        xm = xf @ mu.T
        mm = (mu * mu).sum(1)[None]
        sq = (xx - 2 * a[:, None] * xm + (a[:, None] ** 2) * mm).clamp_min(0)
        logp = lw - sq / (2 * v) - 0.5 * d * torch.log(v)
        r = torch.softmax(logp, dim=1)
        c = a[:, None] * s2[None] / v                         # (B, K)
        coef_mu = r * (1 - a[:, None] * c)
        out = coef_mu @ mu + (r * c).sum(1, keepdim=True) * xf
        return out.reshape(x.shape).to(x.dtype)

    def moments(self, shape, log_weights: torch.Tensor):
        """Exact per-element mean and variance of x0 under the mixture with these weights."""
        mu = self.means(shape)
        w = torch.softmax(torch.as_tensor(log_weights, dtype=torch.float64), 0)
        mean = w @ mu
        second = w @ (mu ** 2) + (w * self.stds ** 2).sum()
        return mean.reshape(shape), (second - mean ** 2).reshape(shape)

    def sample(self, n: int, shape, log_weights: torch.Tensor, generator: torch.Generator | None = None):
        """n exact samples of x0 (float64)."""
        mu = self.means(shape)
        w = torch.softmax(torch.as_tensor(log_weights, dtype=torch.float64), 0)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, mu.shape[1], generator=generator, dtype=torch.float64)
        return (mu[k] + self.stds[k][:, None] * z).reshape((n,) + tuple(shape))


class AnalyticModel:
    """The analytic model in one of the two families, with a ComfyUI-like sigma grid.

    ``eps`` uses SD1.5's discrete VP grid (sigma 0.0292..14.6146); ``flow`` uses an SD3-style grid
    with ``shift``.
    """

    def __init__(self, family: str = "eps", shift: float = 3.0, components: int = 8, seed: int = 0,
                 mixture: GaussianMixture | None = None):
        self.family = families.check_family(family)
        self.shift = float(shift)
        self.mixture = mixture if mixture is not None else GaussianMixture(components, seed)
        self.model_sigmas = ModelSigmas.discrete_vp() if family == families.EPS else ModelSigmas.flow(shift)

    @property
    def sigma_min(self) -> float:
        return self.model_sigmas.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.model_sigmas.sigma_max

    def denoiser(self, cfg: float = 1.0, counter: list | None = None) -> Callable:
        """A k-diffusion style ``model(x, sigma, **extra_args)`` returning the CFG-combined x0.
        ``counter`` (a one-element list) counts model calls as ComfyUI does (one per call)."""
        return cfg_denoiser(self.mixture, self.family, cfg, counter)

    def noise(self, shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(tuple(shape), generator=g, dtype=dtype)

    def initial_state(self, noise: torch.Tensor, sigma_start: float) -> torch.Tensor:
        """x at the first sigma from pure noise: sigma * noise in both families
        (ComfyUI's noise scaling on an empty latent)."""
        return noise * float(sigma_start)


def reference_solve(model: Callable, x: torch.Tensor, sigma_start: float, sigma_end: float = 0.0,
                    steps: int = 2000, sigma_floor: float = 1e-5) -> torch.Tensor:
    """The exact probability-flow ODE solution from ``sigma_start`` to ``sigma_end``.

    Classic RK4 in u = log(sigma) on ``dx/du = x - D(x, sigma)``, which is smooth in both families
    (flow models included at sigma = 1), down to max(sigma_end, sigma_floor); for sigma_end = 0 the last
    state is denoised once (an O(sigma_floor^2) error). Runs in float64.
    """
    x = x.to(torch.float64)
    s_in = x.new_ones(x.shape[0])
    target = max(float(sigma_end), sigma_floor)
    u0, u1 = math.log(float(sigma_start)), math.log(target)
    h = (u1 - u0) / steps

    def f(xv, u):
        return xv - model(xv, math.exp(u) * s_in)

    u = u0
    for _ in range(steps):
        k1 = f(x, u)
        k2 = f(x + 0.5 * h * k1, u + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, u + 0.5 * h)
        k4 = f(x + h * k3, u + h)
        x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        u += h
    if sigma_end == 0:
        x = model(x, target * s_in)
    return x


def cfg_denoiser(mixture, family: str, cfg: float = 1.0, counter: list | None = None) -> Callable:
    """The mixture's CFG-combined denoiser ``model(x, sigma, **extra_args)`` (as CFGGuider combines the
    cond and uncond x0). ``counter`` (a one-element list) counts model calls, one per call."""
    cond, uncond = mixture.log_weights(True), mixture.log_weights(False)

    def model(x, sigma, **_):
        if counter is not None:
            counter[0] += 1
        dc = mixture.denoise(x, sigma, cond, family)
        if cfg == 1.0:
            return dc
        du = mixture.denoise(x, sigma, uncond, family)
        return du + cfg * (dc - du)

    return model
