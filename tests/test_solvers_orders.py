"""Empirical convergence orders on the exact analytic model (both families): the error against the
exact ODE endpoint as the number of lambda-uniform steps doubles; the fitted order must be within
+-0.3 of the theoretical order. No ComfyUI."""
from __future__ import annotations

import pytest

from fewstep import samplers as S
from test_solvers_common import errors, fitted_order

# (id, function, options, theoretical order, step counts)
CASES = [
    ("euler", S.sample_euler, {}, 1, (20, 40, 80)),
    ("ddim", S.sample_ddim, {}, 1, (20, 40, 80)),
    ("dpmpp_1", S.sample_dpmpp_multistep, {"order": 1}, 1, (20, 40, 80)),
    ("dpmpp_2m", S.sample_dpmpp_multistep, {"order": 2}, 2, (20, 40, 80)),
    ("dpmpp_2m_heun", S.sample_dpmpp_multistep, {"order": 2, "solver_type": "heun"}, 2, (20, 40, 80)),
    ("dpmpp_3m_singlestep_warmup", S.sample_dpmpp_multistep, {"order": 3, "warmup": "singlestep"}, 3,
     (40, 80, 160)),
    # the paper's first-order start: one O(h^2) local error, so the asymptotic order is 2
    ("dpmpp_3m_lower_warmup", S.sample_dpmpp_multistep, {"order": 3}, 2, (80, 160, 320)),
    ("dpmpp_2s", S.sample_dpmpp_2s, {}, 2, (20, 40, 80)),
    # second order for every intermediate point r, not only the midpoint (whose D_eff is just D_u)
    ("dpmpp_2s_r_third", S.sample_dpmpp_2s, {"r": 1 / 3}, 2, (20, 40, 80)),
    ("dpmpp_2s_r_1", S.sample_dpmpp_2s, {"r": 1.0}, 2, (20, 40, 80)),
    ("dpm_solver_1", S.sample_dpm_solver, {"order": 1}, 1, (20, 40, 80)),
    ("dpm_solver_2", S.sample_dpm_solver, {"order": 2}, 2, (20, 40, 80)),
    ("dpm_solver_3", S.sample_dpm_solver, {"order": 3}, 3, (20, 40, 80)),
    ("unipc_bh2_1", S.sample_unipc, {"order": 1, "lower_order_final": False}, 2, (20, 40, 80)),
    ("unipc_bh2_2", S.sample_unipc, {"order": 2, "lower_order_final": False}, 3, (20, 40, 80)),
    ("unipc_bh1_2", S.sample_unipc, {"order": 2, "variant": "bh1", "lower_order_final": False}, 3, (20, 40, 80)),
    # without the corrector the order-1 start caps the order at 2 (as for DPM-Solver++(3M))
    ("unipc_bh2_3_no_corrector", S.sample_unipc, {"order": 3, "use_corrector": False, "lower_order_final": False},
     2, (80, 160, 320)),
    ("deis_1", S.sample_deis, {"order": 1}, 1, (20, 40, 80)),
    ("deis_2", S.sample_deis, {"order": 2}, 2, (20, 40, 80)),
    ("deis_3_singlestep_warmup", S.sample_deis, {"order": 3, "warmup": "singlestep"}, 3, (40, 80, 160)),
    # PLMS's fixed coefficients assume steps uniform in rho: on a lambda-uniform grid they are 2nd order
    ("pndm_rk_lambda_grid", S.sample_pndm, {"warmup": "rk"}, 2, (20, 40, 80)),
    ("pndm_lower_lambda_grid", S.sample_pndm, {"warmup": "lower"}, 2, (20, 40, 80)),
    ("edm_heun", S.sample_edm, {"method": "heun"}, 2, (20, 40, 80)),
    ("edm_euler", S.sample_edm, {"method": "euler"}, 1, (20, 40, 80)),
    ("tcd_gamma0", S.sample_tcd, {"gamma": 0.0}, 1, (20, 40, 80)),
    ("dpmpp_sde_eta0_3m", S.sample_dpmpp_sde, {"order": 3, "eta": 0.0, "warmup": "singlestep"}, 3, (40, 80, 160)),
]


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convergence_order(case, family):
    name, fn, kw, order, ns = case
    errs = errors(fn, family, ns, **kw)
    p = fitted_order(ns, errs)
    assert abs(p - order) <= 0.3, (name, family, errs, p)


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_3_order_between_3_and_4(variant, family):
    """UniC-3 steps are fourth order (p + 1); the order-1 (+UniC) start is a single O(h^3) local error, so
    the asymptotic order is 3. Over 40..160 steps the measured order lies between the two."""
    ns = (40, 80, 160)
    p = fitted_order(ns, errors(S.sample_unipc, family, ns, order=3, variant=variant, lower_order_final=False))
    assert 3 - 0.3 <= p <= 4 + 0.3, p


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_first_order_solvers_agree(family):
    """DDIM (eta 0), DPM-Solver-1 and DPM-Solver++-1 are the same update."""
    from test_solvers_common import lam_grid, problem
    model, x, _ = problem(family)
    sig = lam_grid(family, 0.9 if family == "flow" else 10.0, 0.05, 12, final_zero=True)
    if family == "flow":
        sig[0] = 1.0
    a = S.sample_ddim(model, x, sig, family=family)
    b = S.sample_dpm_solver(model, x, sig, family=family, order=1)
    c = S.sample_dpmpp_multistep(model, x, sig, family=family, order=1)
    assert (a - b).abs().max() < 1e-6 and (a - c).abs().max() < 1e-6


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_deis_3_lower_warmup_between_2_and_3(family):
    """tAB3 with the paper's first-order start: third-order steps, one O(h^2) start error; the measured
    order sits between the asymptotic 2 and the step order 3."""
    ns = (40, 80, 160)
    p = fitted_order(ns, errors(S.sample_deis, family, ns, order=3))
    assert 2 - 0.3 <= p <= 3 + 0.3, p


RHO_SPAN = {"eps": (1.5, 0.4), "flow": (0.6, 0.3)}


def _rho_grid(family, s_hi, s_lo, n):
    import torch
    if family == "eps":
        return torch.linspace(s_hi, s_lo, n + 1, dtype=torch.float64)
    r = torch.linspace(s_hi / (1 - s_hi), s_lo / (1 - s_lo), n + 1, dtype=torch.float64)
    return r / (1 + r)


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("warmup,order", [("rk", 4), ("lower", 2)])
def test_pndm_order_on_rho_uniform_steps(family, warmup, order):
    """On steps uniform in rho = sigma/alpha PLMS is 4th order with the Runge-Kutta start, 2nd with the
    lower-order (first Euler step) start."""
    from fewstep.core.analytic import AnalyticModel, reference_solve
    s_hi, s_lo = RHO_SPAN[family]
    am = AnalyticModel(family, 3.0, 4, 0)
    model = am.denoiser(1.0)
    x = am.noise((2, 4, 2, 2), 1) * s_hi
    ref = reference_solve(model, x, s_hi, s_lo, steps=1000)
    ns = (40, 80, 160)
    errs = [float((S.sample_pndm(model, x, _rho_grid(family, s_hi, s_lo, n), family=family, warmup=warmup)
                   - ref).norm() / ref.norm()) for n in ns]
    p = fitted_order(ns, errs)
    assert abs(p - order) <= 0.3, (errs, p)


def test_convergence_table_command_runs(capsys):
    from fewstep.samplers import convergence
    convergence.main(["--steps", "8", "16", "--family", "flow"])
    out = capsys.readouterr().out
    assert "| dpmpp_2m | 2 |" in out and "measured order" in out


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_dpmpp_3m_equals_unipc_bh2_predictor(family):
    """Two independent derivations of the third-order data-prediction multistep step agree: DPM-Solver++(3M)
    from the phi_2/phi_3 Taylor terms and UniPC's bh2 predictor (no corrector) from its linear system
    R a = b. (k-diffusion's dpmpp_3m_sde at eta 0 differs: it weights the second difference by half.)"""
    from test_solvers_common import lam_grid, problem
    model, x, _ = problem(family)
    sig = lam_grid(family, 0.9 if family == "flow" else 10.0, 0.05, 12)
    a = S.sample_dpmpp_multistep(model, x, sig, family=family, order=3, lower_order_final=False)
    b = S.sample_unipc(model, x, sig, family=family, order=3, variant="bh2", use_corrector=False,
                       lower_order_final=False)
    assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "unipc_bh1", "unipc_bh2"])
def test_step_ratio_safeguard(name):
    """A time-uniform flow schedule ends with a lambda step ~10x its predecessor: extrapolating the data
    prediction across it (the papers' multistep rule) is worse than Euler; with the min_step_ratio
    safeguard (default) the solver beats Euler. On smooth grids it never triggers (order tests above)."""
    from fewstep.core.analytic import AnalyticModel, reference_solve
    from fewstep.samplers import SOLVERS
    from fewstep.schedules import get_schedule
    am = AnalyticModel("flow", 3.0, 8, 0)
    model = am.denoiser(3.0)
    x = am.initial_state(am.noise((4, 4, 8, 8), 1000), 1.0)
    key = "flow_tu"
    if key not in _REF:
        _REF[key] = reference_solve(model, x, 1.0, steps=500)
    ref = _REF[key]
    sig = get_schedule("time_uniform", 20, am.model_sigmas)
    err = lambda y: float((y - ref).norm() / ref.norm())  # noqa: E731
    euler = err(S.sample_euler(model, x, sig, family="flow"))
    guarded = err(SOLVERS[name](model, x, sig, family="flow"))
    unguarded = err(SOLVERS[name](model, x, sig, family="flow", min_step_ratio=0.0))
    assert guarded < 0.5 * euler < unguarded, (guarded, euler, unguarded)


_REF = {}


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_deis_coefficients_are_the_exact_integrals(family):
    """tAB coefficients equal int l_j(sigma) drho by 40-point Gauss-Legendre quadrature."""
    import numpy as np
    from fewstep.samplers.deis import tab_coefficients
    nodes, a, b = [0.5, 0.6, 0.8], 0.5, 0.3
    xs, ws = np.polynomial.legendre.leggauss(40)
    s = (b - a) / 2 * xs + (a + b) / 2
    weight = 1.0 if family == "eps" else 1.0 / (1.0 - s) ** 2
    for k in (1, 2, 3):
        got = tab_coefficients(nodes[:k], a, b, family)
        for j in range(k):
            basis = np.prod([(s - nodes[m]) / (nodes[j] - nodes[m]) for m in range(k) if m != j], axis=0)
            assert got[j] == pytest.approx((b - a) / 2 * np.sum(ws * basis * weight), rel=1e-12, abs=1e-14)
