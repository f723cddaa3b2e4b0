"""DEIS tAB of order 4 (Zhang & Chen 2022): the Lagrange polynomial through the last four noise
predictions, integrated exactly against d(sigma/alpha) for the actual grid and family.

* the coefficients are the exact integrals (Gauss-Legendre), and on equal steps in the eps family they
  are the classical 4th-order Adams-Bashforth weights (55, -59, 37, -9)/24 (PLMS);
* on a sigma-uniform eps grid the whole DEIS-4 run equals PNDM with its lower-order warm-up (an
  independent implementation with fixed coefficients);
* tAB4 steps converge at order 4 (+-0.3) on the exact analytic model when the first three states are
  exact; with the paper's lower-order start the measured order lies between 2 and 4;
* exact for a constant denoiser; a schedule too short for order 4 lowers it and logs it; the node
  accepts 1-4 (host).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fewstep import samplers as S
from fewstep.core.analytic import AnalyticModel, reference_solve
from fewstep.samplers._common import eps_from_x0
from fewstep.samplers.deis import tab_coefficients, tab_step
from test_solvers_common import ConstantModel, errors, fitted_order, lam_grid

FAMILIES = ["eps", "flow"]


@pytest.mark.parametrize("family", FAMILIES)
def test_order4_coefficients_are_the_exact_integrals(family):
    nodes = [0.5, 0.6, 0.75, 0.9]
    a, b = 0.5, 0.32
    xs, ws = np.polynomial.legendre.leggauss(40)
    s = (b - a) / 2 * xs + (a + b) / 2
    weight = 1.0 if family == "eps" else 1.0 / (1.0 - s) ** 2
    got = tab_coefficients(nodes, a, b, family)
    for j in range(4):
        basis = np.prod([(s - nodes[m]) / (nodes[j] - nodes[m]) for m in range(4) if m != j], axis=0)
        assert got[j] == pytest.approx((b - a) / 2 * np.sum(ws * basis * weight), rel=1e-12, abs=1e-14)


def test_equal_steps_give_the_adams_bashforth_4_weights():
    """eps family (rho = sigma): equal sigma steps give AB4's (55, -59, 37, -9)/24 times the step."""
    h = 0.1
    nodes = [1.0, 1.1, 1.2, 1.3]
    c = tab_coefficients(nodes, 1.0, 1.0 - h, "eps")
    want = [-h * w / 24 for w in (55, -59, 37, -9)]
    assert c == pytest.approx(want, rel=1e-10, abs=1e-13)


def test_sigma_uniform_eps_run_equals_pndm_lower():
    """On steps uniform in sigma (= rho for eps models), variable-step tAB of orders 1..4 reduces to
    PLMS's fixed Adams-Bashforth coefficients: DEIS-4 equals PNDM with the lower-order warm-up."""
    am = AnalyticModel("eps", 3.0, 4, 0)
    model = am.denoiser(1.0)
    sig = torch.linspace(3.0, 0.2, 15, dtype=torch.float64)
    x = am.noise((2, 4, 2, 2), 3) * 3.0
    a = S.sample_deis(model, x, sig, family="eps", order=4)
    b = S.sample_pndm(model, x, sig, family="eps", warmup="lower")
    assert float((a - b).abs().max()) < 1e-10


_TRAJ = {}


def _exact_trajectory(family, sig):
    """The exact ODE states at every sigma of ``sig`` (chained float64 RK4 solves)."""
    key = (family, tuple(float(v) for v in sig))
    if key not in _TRAJ:
        am = AnalyticModel(family, 3.0, 4, 0)
        model = am.denoiser(1.0)
        xs = [am.noise((2, 4, 2, 2), 1) * float(sig[0])]
        for k in range(len(sig) - 1):
            xs.append(reference_solve(model, xs[-1], float(sig[k]), float(sig[k + 1]), steps=8))
        _TRAJ[key] = (model, xs)
    return _TRAJ[key]


#: a smooth part of the range, where 40..160 steps are asymptotic for the 4th-order steps
TAB4_SPAN = {"eps": (2.0, 0.1), "flow": (0.7, 0.1)}


def _tab4_from_exact_start(family, n):
    """tab_step of order 4 over n lambda-uniform steps, the first three states taken from the exact
    trajectory (so only the tAB4 steps contribute): relative endpoint error."""
    s_hi, s_lo = TAB4_SPAN[family]
    fine = lam_grid(family, s_hi, s_lo, 320)
    step = 320 // n
    sig = fine[::step]
    model, traj = _exact_trajectory(family, fine)
    exact = traj[::step]
    s_in = torch.ones(2, dtype=torch.float64)
    hist_e, hist_s = [], []
    x = exact[0]
    for i in range(n):
        s, t = float(sig[i]), float(sig[i + 1])
        if i < 4:
            x = exact[i]
        d = model(x, s * s_in)
        hist_e.insert(0, eps_from_x0(x, d, s, family))
        hist_s.insert(0, s)
        del hist_e[4:], hist_s[4:]
        x = tab_step(d, hist_e, hist_s, t, family) if i >= 3 else exact[i + 1]
    ref = exact[-1]
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_tab4_steps_converge_at_order_4(family):
    ns = (40, 80, 160)
    errs = [_tab4_from_exact_start(family, n) for n in ns]
    p = fitted_order(ns, errs)
    assert abs(p - 4) <= 0.3, (errs, p)


@pytest.mark.parametrize("family", FAMILIES)
def test_deis_4_lower_warmup_order_between_2_and_4(family):
    """The sampler with the paper's lower-order start (orders 1, 2, 3, then 4): the first Euler step's
    O(h^2) local error caps the asymptotic order at 2; the measured order lies between 2 and 4, and
    DEIS-4 is more accurate than DEIS-3 on the same grid."""
    ns = (40, 80, 160)
    e4 = errors(S.sample_deis, family, ns, order=4)
    e3 = errors(S.sample_deis, family, ns, order=3)
    p = fitted_order(ns, e4)
    assert 2 - 0.3 <= p <= 4 + 0.3, (e4, p)
    assert all(a < b for a, b in zip(e4, e3)), (e4, e3)


@pytest.mark.parametrize("family", FAMILIES)
def test_order4_exact_for_constant_denoiser(family):
    x0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s0 = 1.0 if family == "flow" else 14.6
    sig = torch.cat([lam_grid(family, 0.999 if family == "flow" else s0, 0.03, 9), torch.zeros(1, dtype=torch.float64)])
    sig[0] = s0
    x = noise * s0 if family == "eps" else noise        # flow sigma 1: x = noise
    out = S.sample_deis(ConstantModel(x0), x, sig, family=family, order=4)
    assert float((out - x0.expand_as(out)).abs().max()) < 1e-10


def test_short_schedule_lowers_order_4(caplog):
    am = AnalyticModel("eps", 3.0, 4, 0)
    sig = torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64)
    x = am.noise((1, 4, 2, 2), 0) * 5.0
    with caplog.at_level(logging.WARNING, logger="FewStep"):
        a = S.sample_deis(am.denoiser(1.0), x, sig, family="eps", order=4)
    b = S.sample_deis(am.denoiser(1.0), x, sig, family="eps", order=2)
    assert "too short for order 4; using order 2" in caplog.text
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
@pytest.mark.host
@pytest.mark.parametrize("family", FAMILIES)
def test_node_order_4_through_comfyui(comfy, family):
    """FewStepDEIS order 4 (widget range 1-4) runs through SamplerCustomAdvanced's sampling path, fires
    the callback every step, leaves sigmas alone and gives the core solver's result."""
    from test_host_solvers import node_sampler, noise_of, run, setup, sigmas_for, spy
    assert comfy.NODES["FewStepDEIS"].INPUT_TYPES()["required"]["order"][1]["max"] == 4
    sigmas = sigmas_for(comfy, family, "karras" if family == "eps" else "simple", 10)
    before = sigmas.clone()
    record = {}
    out = run(comfy, family, spy(node_sampler(comfy, "FewStepDEIS", order=4), record), sigmas, noise_of(5))
    assert torch.equal(sigmas, before)
    assert [d["i"] for d in record["steps"]] == list(range(10))
    patcher, _, _ = setup(comfy, family)
    am = AnalyticModel(family, 3.0, 8, 0)
    want = S.sample_deis(am.denoiser(1.0), record["x_init"].double(), sigmas.double(), family=family, order=4)
    assert float((out.double() - want).norm() / want.norm()) < 1e-4
