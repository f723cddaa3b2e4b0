"""The FewStep solvers by name with their default options (iterated by ``python -m fewstep compare``,
the nodes and the tests)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .ddim import sample_ddim
from .dpm_solver_pp import sample_dpmpp_2s, sample_dpmpp_multistep, sample_dpmpp_sde
from .deis import sample_deis
from .dpm_solver import sample_dpm_solver
from .edm import sample_edm
from .euler import sample_euler
from .pndm import sample_pndm
from .tcd import sample_tcd
from .unipc import sample_unipc


@dataclass(frozen=True)
class SolverSpec:
    fn: Callable
    kwargs: dict = field(default_factory=dict)
    order: int = 1                # theoretical order of the method (deterministic solvers: ODE order)
    stochastic: bool = False
    description: str = ""

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps",
                 **options):
        kw = dict(self.kwargs)
        kw.update(options)
        return self.fn(model, x, sigmas, extra_args, callback, disable, family=family, **kw)


SOLVERS: dict[str, SolverSpec] = {}


def register(name: str, spec: SolverSpec) -> None:
    if name in SOLVERS:
        raise ValueError(f"solver {name!r} is already registered")
    SOLVERS[name] = spec


register("euler", SolverSpec(sample_euler, {}, 1, False, "Euler on dx/dsigma = (x - D)/sigma"))
register("ddim", SolverSpec(sample_ddim, {"eta": 0.0}, 1, False, "DDIM, eta 0 (deterministic)"))
register("ddim_ancestral", SolverSpec(sample_ddim, {"eta": 1.0}, 1, True, "DDIM, eta 1 (DDPM-like ancestral)"))
register("dpmpp_2m", SolverSpec(sample_dpmpp_multistep, {"order": 2}, 2, False, "DPM-Solver++(2M)"))
register("dpmpp_3m", SolverSpec(sample_dpmpp_multistep, {"order": 3}, 3, False,
                                "DPM-Solver++(3M); with the paper's first-order start the asymptotic order is 2, "
                                "warmup='singlestep' (one extra model call) restores 3"))
register("dpmpp_2s", SolverSpec(sample_dpmpp_2s, {}, 2, False, "DPM-Solver++(2S), singlestep, 2 calls per step"))
register("dpmpp_sde_2m", SolverSpec(sample_dpmpp_sde, {"order": 2, "eta": 1.0}, 2, True,
                                    "SDE-DPM-Solver++(2M), eta 1, Brownian noise"))
register("dpmpp_sde_3m", SolverSpec(sample_dpmpp_sde, {"order": 3, "eta": 1.0}, 3, True,
                                    "SDE-DPM-Solver++(3M), eta 1, Brownian noise"))
register("dpm_solver_2", SolverSpec(sample_dpm_solver, {"order": 2}, 2, False,
                                   "DPM-Solver-2, noise prediction, singlestep, 2 calls per step"))
register("dpm_solver_3", SolverSpec(sample_dpm_solver, {"order": 3}, 3, False,
                                   "DPM-Solver-3, noise prediction, singlestep, 3 calls per step"))
register("unipc_bh1", SolverSpec(sample_unipc, {"variant": "bh1", "order": 3}, 3, False,
                                 "UniPC bh1, order 3, UniC corrector (asymptotic order 3 with the order-1 start; "
                                 "4 for the UniC-3 steps)"))
register("unipc_bh2", SolverSpec(sample_unipc, {"variant": "bh2", "order": 3}, 3, False,
                                 "UniPC bh2, order 3, UniC corrector (asymptotic order 3 with the order-1 start; "
                                 "4 for the UniC-3 steps)"))
for _k in (1, 2, 3, 4):
    register(f"deis_{_k}", SolverSpec(sample_deis, {"order": _k}, _k, False,
                                      f"DEIS tAB{_k}, coefficients for the actual grid and family"
                                      + (" (paper's first-order start: asymptotic order 2)" if _k >= 3 else "")))
register("pndm", SolverSpec(sample_pndm, {"warmup": "rk"}, 4, False,
                            "PNDM/PLMS in rho = sigma/alpha with a pseudo Runge-Kutta warm-up (4 calls per warm-up "
                            "step); order 4 on rho-uniform steps, 2 on other smooth grids"))
register("edm_heun", SolverSpec(sample_edm, {"method": "heun"}, 2, False, "EDM Heun (Algorithm 2, no churn)"))
register("edm_euler", SolverSpec(sample_edm, {"method": "euler"}, 1, False, "EDM Euler (no churn)"))
register("edm_heun_churn", SolverSpec(sample_edm, {"method": "heun", "s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0,
                                                   "s_noise": 1.003}, 2, True,
                                      "EDM Heun with the paper's ImageNet churn settings"))
register("tcd", SolverSpec(sample_tcd, {"gamma": 0.3}, 1, True, "TCD strategic stochastic sampling, gamma 0.3"))

__all__ = ["SOLVERS", "SolverSpec", "register"]
