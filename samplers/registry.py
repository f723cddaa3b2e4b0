"""The one registry of FewStep solvers: every name ``python -m fewstep compare``, the OLSS teachers, the
AYS optimizer, the recipes, the KSampler entries and the tests read.

To add a solver: write ``samplers/<name>.py`` (the k-diffusion contract, see ``samplers/__init__``),
import it here and ``register`` it (and list its name in ``KSAMPLER`` for a ``fewstep_<name>`` entry in
KSampler's sampler list); add its test. ``node``/``widgets`` name the FewStep solver node and widget
values that give exactly this solver in ComfyUI (``recipes.py`` prints them; tests check them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .ddim import sample_ddim
from .deis import sample_deis
from .dpm_solver import sample_dpm_solver
from .dpm_solver_pp import sample_dpmpp_2s, sample_dpmpp_multistep, sample_dpmpp_sde
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
    node: str | None = None       # the FewStep solver node that gives exactly this solver ...
    widgets: dict = field(default_factory=dict)   # ... with these widget values (in the node's order)

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


_PP = dict(eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True)
_EDM = dict(s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0)
_UNIPC = dict(order=3, corrector=True, lower_order_final=True)

register("euler", SolverSpec(sample_euler, {}, 1, False, "Euler on dx/dsigma = (x - D)/sigma",
                             "FewStepEDM", dict(method="euler", **_EDM)))
register("ddim", SolverSpec(sample_ddim, {"eta": 0.0}, 1, False, "DDIM, eta 0 (deterministic)",
                            "FewStepDDIM", dict(eta=0.0, s_noise=1.0)))
register("ddim_ancestral", SolverSpec(sample_ddim, {"eta": 1.0}, 1, True, "DDIM, eta 1 (DDPM-like ancestral)"))
register("dpmpp_2m", SolverSpec(sample_dpmpp_multistep, {"order": 2}, 2, False, "DPM-Solver++(2M)",
                                "FewStepDPMSolverPP", dict(mode="2m", **_PP)))
register("dpmpp_3m", SolverSpec(sample_dpmpp_multistep, {"order": 3}, 3, False,
                                "DPM-Solver++(3M); with the paper's first-order start the asymptotic order is 2, "
                                "warmup='singlestep' (one extra model call) restores 3",
                                "FewStepDPMSolverPP", dict(mode="3m", **_PP)))
register("dpmpp_2s", SolverSpec(sample_dpmpp_2s, {}, 2, False, "DPM-Solver++(2S), singlestep, 2 calls per step",
                                "FewStepDPMSolverPP", dict(mode="2s", **_PP)))
register("dpmpp_sde_2m", SolverSpec(sample_dpmpp_sde, {"order": 2, "eta": 1.0}, 2, True,
                                    "SDE-DPM-Solver++(2M), eta 1, Brownian noise"))
register("dpmpp_sde_3m", SolverSpec(sample_dpmpp_sde, {"order": 3, "eta": 1.0}, 3, True,
                                    "SDE-DPM-Solver++(3M), eta 1, Brownian noise"))
register("dpm_solver_2", SolverSpec(sample_dpm_solver, {"order": 2}, 2, False,
                                    "DPM-Solver-2, noise prediction, singlestep, 2 calls per step",
                                    "FewStepDPMSolver", dict(order=2)))
register("dpm_solver_3", SolverSpec(sample_dpm_solver, {"order": 3}, 3, False,
                                    "DPM-Solver-3, noise prediction, singlestep, 3 calls per step",
                                    "FewStepDPMSolver", dict(order=3)))
for _v in ("bh1", "bh2"):
    register(f"unipc_{_v}", SolverSpec(sample_unipc, {"variant": _v, "order": 3}, 3, False,
                                       f"UniPC {_v}, order 3, UniC corrector (asymptotic order 3 with the order-1 "
                                       "start; 4 for the UniC-3 steps)",
                                       "FewStepUniPC", dict(variant=_v, **_UNIPC)))
for _k in (1, 2, 3, 4):
    register(f"deis_{_k}", SolverSpec(sample_deis, {"order": _k}, _k, False,
                                      f"DEIS tAB{_k}, coefficients for the actual grid and family"
                                      + (" (paper's first-order start: asymptotic order 2)" if _k >= 3 else ""),
                                      "FewStepDEIS", dict(order=_k)))
register("pndm", SolverSpec(sample_pndm, {"warmup": "lower"}, 4, False,
                            "PLMS (PNDM's linear multistep in rho = sigma/alpha) with the lower-order warm-up, one "
                            "call per step (the first Euler step limits the order to 2)",
                            "FewStepPNDM", dict(warmup="lower")))
register("pndm_rk", SolverSpec(sample_pndm, {"warmup": "rk"}, 4, False,
                               "PNDM/PLMS with the paper's pseudo Runge-Kutta warm-up (4 calls per warm-up step); "
                               "order 4 on rho-uniform steps, 2 on other smooth grids",
                               "FewStepPNDM", dict(warmup="rk")))
register("edm_heun", SolverSpec(sample_edm, {"method": "heun"}, 2, False, "EDM Heun (Algorithm 2, no churn)",
                                "FewStepEDM", dict(method="heun", **_EDM)))
register("edm_euler", SolverSpec(sample_edm, {"method": "euler"}, 1, False, "EDM Euler (no churn)",
                                 "FewStepEDM", dict(method="euler", **_EDM)))
register("edm_heun_churn", SolverSpec(sample_edm, {"method": "heun", "s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0,
                                                   "s_noise": 1.003}, 2, True,
                                      "EDM Heun with the paper's ImageNet churn settings"))
register("tcd", SolverSpec(sample_tcd, {"gamma": 0.3}, 1, True, "TCD strategic stochastic sampling, gamma 0.3"))

#: registry solvers FewStep adds to KSampler's sampler list as ``fewstep_<name>``, in the list's order
#: (deterministic, so KSampler's seed does not matter; one model call per step unless noted)
KSAMPLER = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "unipc_bh1", "unipc_bh2", "deis_3", "pndm", "ddim", "edm_heun",
            "deis_4")
KSAMPLER_ENTRIES: dict[str, SolverSpec] = {f"fewstep_{n}": SOLVERS[n] for n in KSAMPLER}

__all__ = ["SOLVERS", "SolverSpec", "register", "KSAMPLER", "KSAMPLER_ENTRIES"]
