"""ComfyUI's built-in KSampler schedulers as pure functions of a ModelSigmas (torch/numpy only).

They follow the published definitions that ComfyUI 0.3.x implements in ``comfy/samplers.py`` (tested
against ComfyUI's own functions in tests/test_host_ays_optimize.py), so the AYS optimizer can start
from, and be compared with, the schedules a KSampler user picks. Each returns ``n + 1`` float64
sigmas ending in 0; the model's sigma table is ComfyUI's ``model_sampling.sigmas`` (ascending).

* ``exponential``: uniform in log sigma from sigma_max to sigma_min (k-diffusion's
  ``get_sigmas_exponential``). For eps models it equals logSNR-uniform; for flow models it does not.
* ``simple``: every (T/n)-th entry of the model's sigma table from the top (ComfyUI's
  ``simple_scheduler``).
* ``normal`` / ``sgm_uniform``: uniform in the model's timestep t between t(sigma_max) and
  t(sigma_min); ``sgm_uniform`` takes n+1 points and drops the last (ComfyUI's ``normal_scheduler``).
  As in ComfyUI, a flow model's timestep is sigma * T and its sigma(t) applies the shift to t / T.
* ``kl_optimal``: uniform in arctan(sigma) (Sun et al.; ComfyUI's ``kl_optimal_scheduler``).
"""
from __future__ import annotations

import math

import torch

from ..core import families
from ..core.model_sigmas import ModelSigmas
from .basic import _append_zero

COMFY_SCHEDULES = ("exponential", "simple", "normal", "sgm_uniform", "kl_optimal")


def exponential(n: int, ms: ModelSigmas) -> torch.Tensor:
    s = torch.linspace(math.log(ms.sigma_max), math.log(ms.sigma_min), n, dtype=torch.float64).exp()
    return _append_zero(s)


def simple(n: int, ms: ModelSigmas) -> torch.Tensor:
    t = ms.table
    ss = t.numel() / n
    return _append_zero(torch.stack([t[-(1 + int(x * ss))] for x in range(n)]).to(torch.float64))


def _timestep(sigma: float, ms: ModelSigmas) -> float:
    """ComfyUI's model_sampling.timestep for the grid: the table index of sigma (discrete eps models:
    the nearest index; flow models: sigma * multiplier, continuous)."""
    if ms.family == families.FLOW:
        return sigma * ms.table.numel()   # ComfyUI: sigma * multiplier (= the number of timesteps)
    logt = ms.table.log()
    return float(torch.argmin((logt - math.log(sigma)).abs()))


def _flow_shift(ms: ModelSigmas) -> float:
    n = ms.table.numel()
    t = (n - 1) / n
    s = float(ms.table[-2])
    # s = shift t / (1 + (shift - 1) t)  ->  shift = s (1 - t) / (t (1 - s))
    return s * (1 - t) / (t * (1 - s))


def _sigma_of_t(t: torch.Tensor, ms: ModelSigmas) -> torch.Tensor:
    """ComfyUI's model_sampling.sigma(t): discrete eps models interpolate log sigma linearly in the
    table index; flow models evaluate the shifted time."""
    if ms.family == families.FLOW:
        shift = _flow_shift(ms)
        u = t / ms.table.numel()
        return shift * u / (1 + (shift - 1) * u)
    n = ms.table.numel()
    t = t.clamp(0, n - 1)
    lo = t.floor().long().clamp(0, n - 2)
    w = t - lo
    logt = ms.table.log()
    return torch.exp((1 - w) * logt[lo] + w * logt[lo + 1])


def normal(n: int, ms: ModelSigmas, sgm: bool = False) -> torch.Tensor:
    start, end = _timestep(ms.sigma_max, ms), _timestep(ms.sigma_min, ms)
    if sgm:
        ts = torch.linspace(start, end, n + 1, dtype=torch.float64)[:-1]
    else:
        ts = torch.linspace(start, end, n, dtype=torch.float64)
    return _append_zero(_sigma_of_t(ts, ms))


def sgm_uniform(n: int, ms: ModelSigmas) -> torch.Tensor:
    return normal(n, ms, sgm=True)


def kl_optimal(n: int, ms: ModelSigmas) -> torch.Tensor:
    idx = torch.arange(n, dtype=torch.float64) / max(1, n - 1)
    s = (idx * math.atan(ms.sigma_min) + (1 - idx) * math.atan(ms.sigma_max)).tan()
    return _append_zero(s)


def comfy_schedule(name: str, n: int, ms: ModelSigmas) -> torch.Tensor:
    if name not in COMFY_SCHEDULES:
        raise ValueError(f"schedule must be one of {COMFY_SCHEDULES}, got {name!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {n!r}")
    return {"exponential": exponential, "simple": simple, "normal": normal, "sgm_uniform": sgm_uniform,
            "kl_optimal": kl_optimal}[name](n, ms)
