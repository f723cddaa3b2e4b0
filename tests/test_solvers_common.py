"""Shared helpers for the solver unit tests (no ComfyUI) and the contract/bad-input tests that apply to
every registered solver."""
from __future__ import annotations

import functools
import logging
import math

import pytest
import torch

from fewstep.core import families
from fewstep.core.analytic import AnalyticModel, reference_solve
from fewstep.samplers import SOLVERS

SHAPE = (4, 2, 2)          # per-sample latent shape: small, so the asymptotic regime is reachable
COMPONENTS = 4
SPAN = {"eps": (10.0, 0.05), "flow": (0.9, 0.05)}   # smooth part of the sigma range used for orders

_CACHE = {}


def lam_grid(family, s_hi, s_lo, n, final_zero=False):
    """n steps uniform in lambda from s_hi to s_lo (optionally followed by a 0)."""
    lam = torch.linspace(families.lam(s_hi, family), families.lam(s_lo, family), n + 1, dtype=torch.float64)
    s = families.sigma_from_lam(lam, family)
    s[0], s[-1] = s_hi, s_lo
    if final_zero:
        s = torch.cat([s, s.new_zeros(1)])
    return s


def problem(family):
    """(model, x_start, reference endpoint) for the order tests, cached per family."""
    if family not in _CACHE:
        am = AnalyticModel(family, 3.0, COMPONENTS, 0)
        model = am.denoiser(1.0)
        s_hi, s_lo = SPAN[family]
        x = am.noise((2,) + SHAPE, 1) * s_hi
        ref = reference_solve(model, x, s_hi, s_lo, steps=1000)
        _CACHE[family] = (model, x, ref)
    return _CACHE[family]


def errors(fn, family, ns, **kw):
    model, x, ref = problem(family)
    s_hi, s_lo = SPAN[family]
    out = []
    for n in ns:
        y = fn(model, x, lam_grid(family, s_hi, s_lo, n), family=family, **kw)
        out.append(float((y - ref).norm() / ref.norm()))
    return out


def fitted_order(ns, errs):
    """Least-squares slope of -log(err) against log(n)."""
    lx = [math.log(n) for n in ns]
    ly = [-math.log(e) for e in errs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


class ConstantModel:
    """A denoiser that always returns the same x0 (counts calls, checks extra_args pass-through)."""

    def __init__(self, x0, expect_extra=None):
        self.x0, self.calls, self.expect = x0, 0, expect_extra

    def __call__(self, x, sigma, **extra):
        self.calls += 1
        if self.expect is not None:
            assert extra == self.expect
        assert sigma.shape == (x.shape[0],)
        return self.x0.expand_as(x).to(x.dtype)


#: solvers that stop at a small sigma instead of denoising to 0 (reference-implementation behaviour)
FINAL_SIGMA = {"unipc_bh1": 1e-3, "unipc_bh2": 1e-3}
DETERMINISTIC = sorted(n for n, s in SOLVERS.items() if not s.stochastic)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_exact_for_constant_denoiser(name, family):
    """With a constant x0 the ODE solution is x0 + (sigma/sigma_0)(x_0 - x0): every solver is exact."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn((1,) + SHAPE, generator=g, dtype=torch.float64)
    xs = torch.randn((2,) + SHAPE, generator=g, dtype=torch.float64)
    start = 12.0 if family == "eps" else 1.0                 # flow from exactly sigma = 1
    for end in (0.04, 0.0):
        sig = lam_grid(family, start if family == "eps" else 0.97, 0.04, 9, final_zero=end == 0.0)
        sig[0] = start
        y = SOLVERS[name](ConstantModel(x0), xs * start, sig, family=family)
        stop = FINAL_SIGMA.get(name, end) if end == 0.0 else end
        expect = x0 + (stop / start) * (xs * start - x0)
        assert torch.allclose(y, expect, rtol=0, atol=1e-10), (name, end, float((y - expect).abs().max()))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_contract(name):
    """callback every step with the documented keys; sigmas untouched; extra_args passed through;
    dtype and shape kept."""
    am = AnalyticModel("eps", 3.0, COMPONENTS, 0)
    base = am.denoiser(1.0)
    extra = {"model_options": {"k": 1}, "seed": 7}

    def model(x, sigma, **kw):
        assert kw == extra
        return base(x, sigma)

    sig = lam_grid("eps", 14.0, 0.05, 8, final_zero=True)
    before = sig.clone()
    seen = []
    x = (am.noise((2,) + SHAPE, 0) * 14.0).to(torch.float32)
    y = SOLVERS[name](model, x, sig, extra, lambda d: seen.append(d), family="eps")
    assert torch.equal(sig, before)
    assert [d["i"] for d in seen] == list(range(len(sig) - 1))
    assert all({"i", "x", "denoised", "sigma", "sigma_hat"} <= set(d) for d in seen)
    assert y.dtype == torch.float32 and y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_bad_sigmas(name):
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    x = torch.zeros((1,) + SHAPE)
    for bad in ([3.0, 2.0, 2.0, 0.0], [3.0, float("nan"), 1.0, 0.0], [1.0, 2.0, 0.5, 0.0], [3.0, 0.0, 1.0, 0.0]):
        with pytest.raises(ValueError, match="sigma"):
            SOLVERS[name](m, x, torch.tensor(bad), family="eps")
    with pytest.raises(ValueError, match="family"):
        SOLVERS[name](m, x, torch.tensor([3.0, 1.0, 0.0]), family="vp")


def test_bad_orders_and_options():
    from fewstep.samplers import sample_dpmpp_multistep, sample_dpmpp_sde, sample_ddim
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    x = torch.zeros((1,) + SHAPE)
    sig = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0])
    for bad in (0, 4, 2.5, "2"):
        with pytest.raises(ValueError, match=r"order must be a whole number in \[1, 3\]"):
            sample_dpmpp_multistep(m, x, sig, order=bad)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(m, x, sig, eta=1.5)
    with pytest.raises(ValueError, match="noise"):
        sample_dpmpp_sde(m, x, sig, noise="pink")
    with pytest.raises(ValueError, match="eta"):
        sample_dpmpp_sde(m, x, sig, eta=-0.1)


@pytest.mark.parametrize("fn,kw,match", [
    ("sample_dpm_solver", {"order": 4}, r"order must be a whole number in \[1, 3\]"),
    ("sample_unipc", {"order": 0}, r"order must be a whole number in \[1, 3\]"),
    ("sample_deis", {"order": 5}, r"order must be a whole number in \[1, 4\]"),
    ("sample_dpmpp_sde", {"order": 4}, r"order must be a whole number in \[1, 3\]"),
    ("sample_tcd", {"gamma": 1.5}, r"gamma must be a number in \[0.0, 1.0\]"),
    ("sample_tcd", {"gamma": -0.1}, r"gamma must be a number in \[0.0, 1.0\]"),
    ("sample_tcd", {"gamma": float("nan")}, "gamma"),
    ("sample_unipc", {"variant": "bh3"}, "variant must be one of"),
    ("sample_pndm", {"warmup": "euler"}, "warmup must be one of"),
    ("sample_deis", {"warmup": "rk"}, "warmup must be one of"),
    ("sample_edm", {"method": "rk4"}, "method must be one of"),
    ("sample_edm", {"s_churn": -1.0}, "s_churn"),
    ("sample_dpmpp_multistep", {"solver_type": "euler"}, "solver_type must be one of"),
    ("sample_dpmpp_multistep", {"min_step_ratio": 2.0}, r"min_step_ratio must be a number in \[0.0, 1.0\]"),
    ("sample_unipc", {"min_step_ratio": -1.0}, "min_step_ratio"),
])
def test_bad_options(fn, kw, match):
    from fewstep import samplers
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    with pytest.raises(ValueError, match=match):
        getattr(samplers, fn)(m, torch.zeros((1,) + SHAPE), torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0]), **kw)


def test_flow_sigmas_above_one_rejected():
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    with pytest.raises(ValueError, match="<= 1"):
        SOLVERS["dpmpp_2m"](m, torch.zeros((1,) + SHAPE), torch.tensor([1.5, 0.5, 0.0]), family="flow")


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc_bh2", "deis_3"])
def test_short_schedule_lowers_order_for_every_multistep_solver(name, caplog):
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    with caplog.at_level(logging.WARNING, logger="FewStep"):
        y = SOLVERS[name](m, torch.ones((1,) + SHAPE), torch.tensor([3.0, 1.0, 0.0]))
    assert torch.isfinite(y).all()
    assert any("too short for order 3" in r.getMessage() for r in caplog.records)


def test_short_schedule_lowers_order_and_logs(caplog):
    from fewstep.samplers import sample_dpmpp_multistep
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    x = torch.ones((1,) + SHAPE)
    with caplog.at_level(logging.WARNING, logger="FewStep"):
        sample_dpmpp_multistep(m, x, torch.tensor([3.0, 1.0, 0.0]), order=3)
    assert any("too short for order 3" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_empty_schedule_returns_input(name):
    """A schedule with a single sigma (no step) makes no model call and returns x unchanged."""
    m = ConstantModel(torch.zeros((1,) + SHAPE))
    x = torch.ones((1,) + SHAPE)
    y = SOLVERS[name](m, x, torch.tensor([2.0]))
    assert m.calls == 0 and torch.equal(y, x)


def test_taylor_derivatives_are_the_polynomials_derivatives():
    """Against closed forms: the line through 2 points has their slope; the parabola through
    f(l) = 2 + 3 l + 5 l^2 at 3 points has f'(l0) = 3 + 10 l0 and f'' = 10."""
    from fewstep.samplers._common import taylor_derivatives
    f = lambda v: 2 + 3 * v + 5 * v * v  # noqa: E731
    (d1,) = taylor_derivatives([1.5, 0.5], [f(1.5), f(0.5)])
    assert d1 == pytest.approx((f(1.5) - f(0.5)) / 1.0, rel=1e-12)
    d1, d2 = taylor_derivatives([1.5, 0.75, -0.5], [f(1.5), f(0.75), f(-0.5)])
    assert d1 == pytest.approx(3 + 10 * 1.5, rel=1e-12) and d2 == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(ValueError):
        taylor_derivatives([1.0], [1.0])


def test_multistep_order_is_lowered_when_the_schedule_is_too_short(caplog):
    """The order a multistep solver may use: at most the number of steps, a final step to sigma 0 not
    counted (it is a first-order denoising step); a lowered order is logged."""
    from fewstep.samplers._common import make_grid, multistep_order
    f64 = functools.partial(torch.tensor, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="FewStep"):
        assert multistep_order(3, 1, 3, make_grid(f64([2.0, 1.0]), "eps"), "t") == 1
    assert "too short for order 3" in caplog.text
    assert multistep_order(3, 1, 3, make_grid(f64([2.0, 1.0, 0.0]), "eps"), "t") == 1
    assert multistep_order(3, 1, 3, make_grid(f64([3.0, 2.0, 1.0, 0.0]), "eps"), "t") == 2
    assert multistep_order(3, 1, 3, make_grid(f64([3.0, 2.0, 1.0, 0.5]), "eps"), "t") == 3


@pytest.mark.parametrize("lmb", [-3.0, 0.0, 0.7, 2.5])
def test_sigma_from_lambda_is_the_closed_form_for_floats_and_tensors(lmb):
    """eps: lambda = -log sigma; flow: lambda = log((1 - sigma)/sigma), so sigma = 1/(1 + e^lambda)."""
    want = {"eps": math.exp(-lmb), "flow": 1.0 / (1.0 + math.exp(lmb))}
    for family, w in want.items():
        assert families.sigma_from_lam(lmb, family) == pytest.approx(w, rel=1e-14)
        t = families.sigma_from_lam(torch.tensor([lmb], dtype=torch.float64), family)
        assert float(t[0]) == pytest.approx(w, rel=1e-14)


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_deis_singlestep_warmup_evaluates_at_the_first_steps_lambda_midpoint(family):
    """DEIS-3's singlestep start: its second model call is at the lambda midpoint of the first step
    (eps: the geometric mean of the two sigmas; flow: the odds' geometric mean)."""
    model, x, _ = problem(family)
    seen = []

    def recording(xx, sigma, **kw):
        seen.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return model(xx, sigma, **kw)

    s = lam_grid(family, *SPAN[family], 6)
    SOLVERS["deis_3"].fn(recording, x, s, family=family, **{**SOLVERS["deis_3"].kwargs, "warmup": "singlestep"})
    s0, s1 = float(s[0]), float(s[1])
    if family == "eps":
        mid = math.sqrt(s0 * s1)
    else:
        odds = math.sqrt((s0 / (1 - s0)) * (s1 / (1 - s1)))
        mid = odds / (1 + odds)
    assert seen[:3] == pytest.approx([s0, mid, s1], rel=1e-12)
    assert len(seen) == 7   # one call per step, plus the midpoint


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("final_zero", [False, True])
def test_unipc_makes_one_model_call_per_step(family, final_zero):
    """UniC reuses the next step's model call, so it is skipped after the last step: n steps, n calls."""
    model, x, _ = problem(family)
    calls = []

    def counting(xx, sigma, **kw):
        calls.append(1)
        return model(xx, sigma, **kw)

    s = lam_grid(family, *SPAN[family], 6, final_zero=final_zero)
    SOLVERS["unipc_bh2"].fn(counting, x, s, family=family, **SOLVERS["unipc_bh2"].kwargs)
    assert len(calls) == len(s) - 1


def test_flow_sigmas_are_clamped_below_1_so_lambda_stays_finite():
    top = 1.0 - families.FLOW_SIGMA_OFFSET
    assert families.clamp_sigma(1.0, "flow") == top
    t = families.clamp_sigma(torch.tensor([1.0, 0.5], dtype=torch.float64), "flow")
    assert t.tolist() == [top, 0.5]
    assert math.isfinite(float(families.lam(t, "flow")[0]))


def test_edm_churns_on_the_closed_interval_s_tmin_to_s_tmax():
    """Karras et al. 2022, Algorithm 2: gamma_i > 0 for t_i in [S_tmin, S_tmax], both ends included. With
    both ends at one grid sigma only that step churns: its first model call is at sigma (1 + gamma)."""
    model, x, _ = problem("eps")
    s = lam_grid("eps", *SPAN["eps"], 5)
    at = float(s[2])
    seen = []

    def recording(xx, sigma, **kw):
        seen.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return model(xx, sigma, **kw)

    gamma = min(0.5 / 5, math.sqrt(2.0) - 1.0)
    SOLVERS["edm_euler"].fn(recording, x, s, family="eps", **{**SOLVERS["edm_euler"].kwargs, "s_churn": 0.5,
                                                               "s_tmin": at, "s_tmax": at, "seed": 0})
    assert seen[2] == pytest.approx(at * (1 + gamma), rel=1e-12)
    assert seen[:2] + seen[3:] == pytest.approx([float(v) for v in s[:2]] + [float(v) for v in s[3:-1]], rel=1e-12)


def test_edm_takes_every_churn_range_in_its_bounds():
    """s_tmin and s_tmax may be anywhere in [0, inf) (the paper's S_tmin is 0.05 for some models)."""
    model, x, _ = problem("eps")
    s = lam_grid("eps", *SPAN["eps"], 4)
    for lo, hi in [(0.0, float("inf")), (0.05, 1.0), (0.5, 50.0)]:
        out = SOLVERS["edm_heun"].fn(model, x, s, family="eps", **{**SOLVERS["edm_heun"].kwargs, "s_churn": 1.0,
                                                                    "s_tmin": lo, "s_tmax": hi, "seed": 0})
        assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="s_tmin"):
        SOLVERS["edm_heun"].fn(model, x, s, family="eps", s_tmin=-0.1)


@pytest.mark.parametrize("name,options", [("dpmpp_3m", {"warmup": "singlestep"}), ("deis_3", {"warmup": "singlestep"})])
@pytest.mark.parametrize("family", ["eps", "flow"])
def test_singlestep_warmups_evaluate_at_the_first_steps_midpoint_on_an_uneven_grid(name, options, family):
    """On a grid whose steps differ in lambda, the start's extra call is at the first step's own midpoint
    (not one made from another step's length)."""
    model, x, _ = problem(family)
    s = torch.tensor([10.0, 5.0, 1.5, 0.6, 0.2, 0.05] if family == "eps" else [0.9, 0.75, 0.5, 0.3, 0.1, 0.05],
                     dtype=torch.float64)
    seen = []

    def recording(xx, sigma, **kw):
        seen.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return model(xx, sigma, **kw)

    SOLVERS[name].fn(recording, x, s, family=family, **{**SOLVERS[name].kwargs, **options})
    lam0, lam1 = families.lam(float(s[0]), family), families.lam(float(s[1]), family)
    assert seen[1] == pytest.approx(families.sigma_from_lam(0.5 * (lam0 + lam1), family), rel=1e-12)
