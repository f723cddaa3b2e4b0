"""Align Your Steps (Sabour, Fidler, Kreis 2024): the published 10-step schedules, log-linear
interpolation to any step count (as ComfyUI's AlignYourStepsScheduler), and remapping onto another
model's sigma range through logSNR.

The AYS project page publishes, for SD1.5 and SDXL, both the optimised discrete *timesteps* and
their *sigmas* rounded to 3 decimals; the two columns disagree by up to 0.1% (e.g. 3.861 vs
sigma(t=736) = 3.8637). FewStep, like ComfyUI, takes the timesteps as the definition and reads their
sigmas off the model's discrete grid, so on SD1.5/SDXL it equals ComfyUI's node exactly. SVD
(continuous EDM sigmas) is published as sigmas only.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core import families
from ..core.model_sigmas import ModelSigmas

#: published AYS timesteps (project page, "How to use"), SD1.5 and SDXL, 10 steps
AYS_TIMESTEPS = {
    "SD1": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0],
    "SDXL": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0],
}
#: published AYS sigmas (project page), 10 steps
AYS_PUBLISHED_SIGMAS = {
    "SD1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "SDXL": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}
AYS_MODEL_TYPES = ("SD1", "SDXL", "SVD")

_SD_GRID = None


def ays_table(model_type: str) -> torch.Tensor:
    """The 10-step AYS schedule (11 sigmas, the last being the table's smallest sigma, not 0)."""
    global _SD_GRID
    if model_type not in AYS_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {AYS_MODEL_TYPES} (or auto with a model), got {model_type!r}")
    if model_type in AYS_TIMESTEPS:
        if _SD_GRID is None:
            _SD_GRID = ModelSigmas.discrete_vp().table
        return _SD_GRID[torch.tensor(AYS_TIMESTEPS[model_type])].clone()
    return torch.tensor(AYS_PUBLISHED_SIGMAS[model_type], dtype=torch.float64)


def loglinear_interp(sigmas, num: int) -> torch.Tensor:
    """Resample a decreasing positive sequence to ``num`` points, linearly in log sigma over a uniform
    index grid (the AYS paper's rule, and ComfyUI's)."""
    s = np.asarray(torch.as_tensor(sigmas, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    if s.size == num:
        return torch.as_tensor(s.copy())
    xs = np.linspace(0, 1, s.size)
    ys = np.log(s[::-1])
    new = np.interp(np.linspace(0, 1, num), xs, ys)
    return torch.as_tensor(np.exp(new)[::-1].copy())


def remap_to_model(sigmas: torch.Tensor, src_family: str, ms: ModelSigmas) -> torch.Tensor:
    """Map a schedule made for one sigma range onto a model's range, affinely in lambda (logSNR):
    the source's first and last sigmas go to the model's sigma_max and sigma_min, and every point
    keeps its relative logSNR position. Works across families (an SD schedule onto a flow model).
    A flow model's sigma_max of 1 has lambda -inf: there the top of the lambda range is
    families.FLOW_SCHEDULE_LAMBDA_TOP, and the first value stays sigma_max."""
    lam_src = families.lam(sigmas, src_family)
    a0, a1 = lam_src[0], lam_src[-1]
    b0 = families.schedule_lambda_top(ms.sigma_max, ms.family)
    b1 = families.lam(torch.tensor(ms.sigma_min, dtype=torch.float64), ms.family)
    lam_dst = b0 + (lam_src - a0) * (b1 - b0) / (a1 - a0)
    out = families.sigma_from_lam(lam_dst, ms.family)
    out[0] = ms.sigma_max
    out[-1] = ms.sigma_min
    return out


def needs_remap(table: torch.Tensor, ms: ModelSigmas, rtol: float = 1e-3) -> bool:
    if ms.family != families.EPS:
        return True
    return (abs(ms.sigma_max - float(table[0])) > rtol * float(table[0])
            or abs(ms.sigma_min - float(table[-1])) > rtol * float(table[-1]))


def ays_full(model_type: str, total: int, ms: ModelSigmas | None = None, table=None) -> torch.Tensor:
    """A full (denoise 1) AYS schedule of ``total`` steps: total+1 values, the last replaced by 0.
    ``table`` overrides the published one (e.g. a schedule saved by the AYS optimizer)."""
    t = ays_table(model_type) if table is None else torch.as_tensor(table, dtype=torch.float64)
    src_family = families.EPS if table is None else (ms.family if ms is not None else families.EPS)
    if ms is not None and table is None and needs_remap(t, ms):
        t = remap_to_model(t, src_family, ms)
    s = loglinear_interp(t, total + 1)
    s[-1] = 0.0
    return s
