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
    ("dpmpp_sde_eta0_3m", S.sample_dpmpp_sde, {"order": 3, "eta": 0.0, "warmup": "singlestep"}, 3, (40, 80, 160)),
]


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convergence_order(case, family):
    name, fn, kw, order, ns = case
    errs = errors(fn, family, ns, **kw)
    p = fitted_order(ns, errs)
    assert abs(p - order) <= 0.3, (name, family, errs, p)
