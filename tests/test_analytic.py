"""The analytic model: its denoiser is the exact posterior mean (checked against Tweedie's formula on
an independently written mixture density), and the reference ODE solution has converged."""
import math

import pytest
import torch

from fewstep.core import families
from fewstep.core.analytic import AnalyticModel, GaussianMixture, reference_solve


def log_density(mix: GaussianMixture, x, sigma, log_w, family):
    """log p_sigma(x) of the noised mixture, written directly (sum over components of Gaussians)."""
    a = 1.0 if family == "eps" else 1.0 - sigma
    mu = mix.means(x.shape[1:])
    d = mu.shape[1]
    xf = x.reshape(x.shape[0], -1)
    terms = []
    w = torch.log_softmax(log_w, 0)
    for k in range(mix.components):
        v = a * a * mix.stds[k] ** 2 + sigma ** 2
        r2 = ((xf - a * mu[k]) ** 2).sum(1)
        terms.append(w[k] - r2 / (2 * v) - 0.5 * d * torch.log(2 * math.pi * v))
    return torch.logsumexp(torch.stack(terms, 1), 1)


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("sigma", [0.05, 0.4, 0.9, 3.0])
def test_denoiser_is_tweedie(family, sigma):
    if family == "flow" and sigma >= 1:
        sigma = 0.97
    mix = GaussianMixture(5, seed=3)
    shape = (2, 3, 3)
    a = 1.0 if family == "eps" else 1.0 - sigma
    x0 = mix.sample(4, shape, mix.log_weights(True), torch.Generator().manual_seed(1))
    x = (a * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    x.requires_grad_(True)
    lp = log_density(mix, x, torch.tensor(sigma, dtype=torch.float64), mix.log_weights(True), family).sum()
    (score,) = torch.autograd.grad(lp, x)
    tweedie = (x + sigma ** 2 * score) / a
    got = mix.denoise(x.detach(), sigma, mix.log_weights(True), family)
    assert torch.allclose(got, tweedie, rtol=1e-9, atol=1e-9)


def test_conditional_and_unconditional_differ_so_cfg_matters():
    m = AnalyticModel("eps", components=8, seed=0)
    x = m.initial_state(m.noise((2, 4, 4, 4), 0), 3.0)
    d1 = m.denoiser(1.0)(x, torch.full((2,), 3.0, dtype=torch.float64))
    d5 = m.denoiser(5.0)(x, torch.full((2,), 3.0, dtype=torch.float64))
    assert (d1 - d5).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_reference_solution_has_converged(family, cfg):
    m = AnalyticModel(family, shift=3.0, components=6, seed=1)
    model = m.denoiser(cfg)
    x = m.initial_state(m.noise((2, 4, 4, 4), 5), m.sigma_max)
    a = reference_solve(model, x, m.sigma_max, steps=1000)
    b = reference_solve(model, x, m.sigma_max)  # the default every benchmark uses
    assert (a - b).abs().max() < 1e-7
    # and the solution is non-trivial: far from the one-step (Euler-to-zero) answer
    one_step = model(x, torch.full((2,), m.sigma_max, dtype=torch.float64))
    assert (b - one_step).abs().max() > 0.1


def test_exact_endpoint_is_the_reference():
    """For a single Gaussian the ODE solution is known in closed form:
    x(0) = mu + s / sqrt(s^2 + sigma_T^2) * (x_T - mu) (eps family)."""
    mix = GaussianMixture(1, seed=0)
    m = AnalyticModel("eps", components=1, seed=0)
    shape = (4, 2, 2)
    x = m.initial_state(m.noise((3,) + shape, 1), m.sigma_max)
    mu = mix.means(shape).reshape((1,) + shape)
    s = float(m.mixture.stds[0])
    exact = mu + s / math.sqrt(s * s + m.sigma_max ** 2) * (x - mu)
    got = reference_solve(m.denoiser(1.0), x, m.sigma_max, steps=1000)
    assert torch.allclose(got, exact, atol=1e-7)


def test_moments_match_samples():
    mix = GaussianMixture(4, seed=2)
    lw = mix.log_weights(True)
    mean, var = mix.moments((3,), lw)
    xs = mix.sample(200000, (3,), lw, torch.Generator().manual_seed(0))
    assert torch.allclose(xs.mean(0), mean, atol=0.02)
    assert torch.allclose(xs.var(0), var, atol=0.03)


def test_family_helpers_roundtrip():
    for fam in families.FAMILIES:
        s = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
        assert torch.allclose(families.sigma_from_lam(families.lam(s, fam), fam), s, rtol=1e-12)
    assert math.isfinite(families.lam(1.0, "flow"))
    with pytest.raises(ValueError, match="family must be one of"):
        families.lam(0.5, "vp")
