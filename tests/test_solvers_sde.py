"""Stochastic solvers converge in distribution: starting from exact samples of the noised mixture at
sigma_max, the endpoint's per-element mean and variance across many seeds match the mixture's exact
moments (cfg 1). No ComfyUI."""
from __future__ import annotations

import math

import pytest
import torch

from fewstep.core import families
from fewstep.core.analytic import AnalyticModel
from fewstep.samplers import SOLVERS
from fewstep.samplers.ddim import sample_ddim
from fewstep.samplers.dpm_solver_pp import sample_dpmpp_sde
from test_solvers_common import lam_grid

N = 3000
SHAPE = (2, 2, 2)
# TCD is made for consistency (TCD-distilled) models: see test_tcd_with_a_consistency_model
STOCHASTIC = sorted(n for n, s in SOLVERS.items() if s.stochastic and n != "tcd")


def _start(family, s_hi):
    am = AnalyticModel(family, 3.0, 4, 0)
    g = torch.Generator().manual_seed(11)
    lw = am.mixture.log_weights(True)
    x0 = am.mixture.sample(N, SHAPE, lw, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x = families.alpha(s_hi, family) * x0 + s_hi * eps
    return am, x, am.mixture.moments(SHAPE, lw)


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_moments(name, family):
    s_hi = 14.0 if family == "eps" else 0.95
    am, x, (mean, var) = _start(family, s_hi)
    # first-order schemes (DDIM eta 1) have an O(h) weak bias: give them more steps
    steps = 160 if SOLVERS[name].order == 1 else 40
    sig = lam_grid(family, s_hi, 0.03, steps, final_zero=True)
    y = SOLVERS[name](am.denoiser(1.0), x, sig, {"seed": 5}, family=family)
    m_hat, v_hat = y.mean(0), y.var(0)
    se_m = (var / N).sqrt()
    se_v = var * (2.0 / N) ** 0.5
    assert ((m_hat - mean).abs() / se_m).max() < 4.5, (m_hat - mean) / se_m
    # variance of a mixture is not Gaussian-distributed: allow a wider band
    assert ((v_hat - var).abs() / se_v).max() < 6.0, (v_hat - var) / se_v
    assert ((v_hat - var).abs() / var).max() < 0.1


def _check_moments(y, mean, var):
    m_hat, v_hat = y.mean(0), y.var(0)
    assert ((m_hat - mean).abs() / (var / N).sqrt()).max() < 4.5
    assert ((v_hat - var).abs() / var).max() < 0.1


@pytest.mark.parametrize("family,gamma", [("flow", 1.0), ("eps", 1.0)])
def test_tcd_with_a_consistency_model(family, gamma):
    """TCD assumes the model's x0 is the trajectory-consistent endpoint (a distilled model). With the
    exact consistency function of the analytic model (its probability-flow ODE endpoint) as the model,
    4-step TCD with gamma = 1 reproduces the data distribution: every step re-noises an exact sample
    (exactly for flow, where the intermediate time is sigma = 0; eps stops at the grid's sigma_min).
    Smaller gamma relies on the DDIM jump being on-distribution, which it is only approximately."""
    from fewstep.core.analytic import reference_solve
    s_hi = 14.0 if family == "eps" else 0.95
    am, x, (mean, var) = _start(family, s_hi)
    den = am.denoiser(1.0)

    def consistency_model(xv, sigma, **kw):
        return reference_solve(den, xv, float(sigma[0]), 0.0, steps=60)

    sig = lam_grid(family, s_hi, 0.3, 3, final_zero=True)
    y = SOLVERS["tcd"](consistency_model, x, sig, {"seed": 5}, family=family, gamma=gamma)
    _check_moments(y, mean, var)


def test_tcd_with_a_plain_denoiser_is_biased_for_gamma_above_0():
    """Documented behaviour: on a non-distilled denoiser the DDIM jump to (1 - gamma) t keeps a finite
    error however many steps are taken (variance is lost), while gamma = 0 is DDIM."""
    am, x, (mean, var) = _start("flow", 0.95)
    sig = lam_grid("flow", 0.95, 0.03, 160, final_zero=True)
    y = SOLVERS["tcd"](am.denoiser(1.0), x, sig, {"seed": 5}, family="flow", gamma=0.3)
    assert ((y.var(0) - var) / var).mean() < -0.05


def test_moment_test_detects_a_wrong_sampler():
    """The same check fails for a sampler whose noise is 20% too strong."""
    am, x, (mean, var) = _start("eps", 14.0)
    sig = lam_grid("eps", 14.0, 0.03, 40, final_zero=True)
    y = SOLVERS["dpmpp_sde_2m"](am.denoiser(1.0), x, sig, {"seed": 5}, family="eps", s_noise=1.2)
    with pytest.raises(AssertionError):
        _check_moments(y, mean, var)
    # and it is the variance check that trips, the one a too-strong noise must trip (1.2^2 = 1.44x the
    # injected variance): the mean stays within the test's bound
    assert ((y.var(0) - var) / var).max() > 0.1
    assert ((y.mean(0) - mean).abs() / (var / N).sqrt()).max() < 4.5
    y_ok = SOLVERS["dpmpp_sde_2m"](am.denoiser(1.0), x, sig, {"seed": 5}, family="eps")
    _check_moments(y_ok, mean, var)


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("name", ["ddim_ancestral", "dpmpp_sde_2m", "dpmpp_sde_3m"])
@pytest.mark.parametrize("steps", [2, 12])
def test_first_order_stochastic_update_is_exact_for_constant_denoiser(name, family, steps):
    """With a fixed x0 the eta = 1 step is the exact DDPM posterior, so from a fixed start x_s the end
    state is N(alpha_e x0 + sigma_e e^{-dl} eps_s, sigma_e^2 (1 - e^{-2 dl})), dl = lambda_e - lambda_s,
    for any number of steps."""
    import math
    n = 20000
    s_hi, s_lo = (8.0, 0.2) if family == "eps" else (0.9, 0.2)
    x0 = torch.full((1, 1), 0.7, dtype=torch.float64)
    eps_s = 1.3
    a = lambda s: 1.0 if family == "eps" else 1.0 - s  # noqa: E731
    x = torch.full((n, 1), a(s_hi) * 0.7 + s_hi * eps_s, dtype=torch.float64)
    sig = lam_grid(family, s_hi, s_lo, steps)
    y = SOLVERS[name](lambda xv, sv, **k: x0.expand_as(xv), x, sig, {"seed": 3}, family=family)
    dl = families.lam(s_lo, family) - families.lam(s_hi, family)
    mean = a(s_lo) * 0.7 + s_lo * math.exp(-dl) * eps_s
    var = s_lo ** 2 * (1 - math.exp(-2 * dl))
    assert abs(float(y.mean()) - mean) < 4.5 * math.sqrt(var / n)
    assert abs(float(y.var()) / var - 1) < 4.5 * math.sqrt(2 / n)


def test_brownian_noise_gives_pathwise_convergence():
    """With the Brownian path, refining the schedule refines the same noise path, so SDE-DPM-Solver++(2M)
    converges pathwise to the fine-step solution for one seed; independent per-step Gaussian noise does not."""
    am = AnalyticModel("flow", 3.0, 4, 0)
    model = am.denoiser(1.0)
    x = am.noise((2, 4, 2, 2), 1) * 0.9

    def run(n, noise):
        return SOLVERS["dpmpp_sde_2m"](model, x, lam_grid("flow", 0.9, 0.05, n), {"seed": 3}, family="flow",
                                       noise=noise)

    for noise, converges in (("brownian", True), ("gaussian", False)):
        ref = run(640, noise)
        errs = [float((run(n, noise) - ref).norm() / ref.norm()) for n in (40, 80, 160)]
        if converges:
            assert errs[0] > errs[1] > errs[2] and errs[2] < 0.01, errs
        else:
            assert min(errs) > 0.3, errs


@pytest.mark.parametrize("s_churn,steps", [(40.0, 4), (1.0, 4), (100.0, 10)])
def test_edm_churn_is_capped_at_sqrt2_minus_1_inside_the_window(s_churn, steps):
    """Karras et al. 2022, Algorithm 2: gamma_i = min(S_churn / N, sqrt(2) - 1) for sigma_i in
    [S_tmin, S_tmax], else 0; sigma_hat = sigma (1 + gamma). Read from the callback's sigma_hat."""
    import math
    am = AnalyticModel("eps", 3.0, 4, 0)
    sig = torch.tensor([10.0, 4.0, 1.5, 0.5, 0.1][:steps] + [0.0], dtype=torch.float64)[: steps + 1]
    x = am.noise((2, 4, 2, 2), 1, dtype=torch.float64) * 10.0
    seen = []
    SOLVERS["edm_heun"](am.denoiser(1.0), x, sig, {"seed": 3}, lambda d: seen.append(float(d["sigma_hat"])),
                        family="eps", s_churn=s_churn, s_tmin=1.0, s_tmax=5.0)
    n = len(sig) - 1
    want = [float(s) * (1 + (min(s_churn / n, math.sqrt(2) - 1) if 1.0 <= float(s) <= 5.0 else 0.0))
            for s in sig[:-1]]
    assert seen == pytest.approx(want, rel=1e-12)


def test_edm_accepts_every_s_noise_in_its_range():
    """s_noise in [0, 10]: values below 1 (less churn noise) are valid, 0 included."""
    am = AnalyticModel("eps", 3.0, 4, 0)
    sig = torch.tensor([10.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    x = am.noise((1, 4, 2, 2), 1, dtype=torch.float64) * 10.0
    for s_noise in (0.0, 0.5, 10.0):
        y = SOLVERS["edm_heun"](am.denoiser(1.0), x, sig, {"seed": 3}, family="eps", s_churn=1.0, s_noise=s_noise)
        assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match=r"s_noise must be a number in \[0.0, 10.0\]"):
        SOLVERS["edm_heun"](am.denoiser(1.0), x, sig, {"seed": 3}, family="eps", s_noise=-0.1)


def _one_step(family):
    am = AnalyticModel(family, 3.0, 4, 0)
    model = am.denoiser(1.0)
    s, t = (2.0, 0.7) if family == "eps" else (0.8, 0.4)
    x = am.noise((2, 4, 2, 2), 3) * s
    return model, x, s, t


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_ddim_with_eta_and_no_noise_keeps_the_eta_drift(family):
    """s_noise scales only the fresh noise (k-diffusion's convention): DDIM at eta 1 with s_noise 0 is the
    noise-free part of the ancestral step, x_t = (t/s) e^-h x + a_t (1 - e^-2h) D(x, s) (the DDPM
    posterior mean, which is also DPM-Solver++'s first-order SDE step), not the eta-0 step."""
    model, x, s, t = _one_step(family)
    a_s, a_t = families.alpha(s, family), families.alpha(t, family)
    e = (t * a_s) / (s * a_t)
    d = model(x, torch.full((x.shape[0],), s, dtype=x.dtype))
    want = (t / s) * e * x + a_t * (1 - e * e) * d
    sig = torch.tensor([s, t], dtype=torch.float64)
    got = sample_ddim(model, x, sig, family=family, eta=1.0, s_noise=0.0)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, sample_ddim(model, x, sig, family=family, eta=0.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_dpmpp_sde_noise_is_t_sqrt_1_minus_exp_minus_2_eta_h(eta):
    """One SDE step from x = 0 with a zero denoiser and unit 'noise' adds exactly t sqrt(1 - e^{-2 eta h})
    s_noise (the SDE-DPM-Solver++ noise term, Lu et al. 2022, eq. for the 2M SDE)."""
    s, t = 2.0, 0.7
    h = math.log(s / t)
    x = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    zero = lambda xx, sigma, **kw: torch.zeros_like(xx)  # noqa: E731
    ones = lambda *a, **kw: torch.ones_like(x)  # noqa: E731
    got = sample_dpmpp_sde(zero, x, torch.tensor([s, t], dtype=torch.float64), family="eps", order=1, eta=eta,
                           s_noise=0.8, noise_sampler=ones)
    want = t * math.sqrt(1 - math.exp(-2 * eta * h)) * 0.8
    assert torch.allclose(got, torch.full_like(x, want), rtol=1e-12, atol=0)
