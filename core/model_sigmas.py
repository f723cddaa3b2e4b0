"""What a schedule needs to know about a model: its family and its timestep grid.

A model's discrete timestep grid is held as an ascending sigma table (ComfyUI's
``model_sampling.sigmas``). "Model time" u in [0, 1] walks that table linearly in index, with
log-sigma interpolation between entries, so time-uniform schedules follow the model's own timesteps
(for flow models with a shift, u is the unshifted time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import families


@dataclass(frozen=True)
class ModelSigmas:
    family: str
    table: torch.Tensor  # ascending float64 sigmas, one per model timestep
    name: str = "custom"

    def __post_init__(self):
        families.check_family(self.family)
        t = torch.as_tensor(self.table, dtype=torch.float64).flatten()
        if t.numel() < 2:
            raise ValueError("a model sigma table needs at least 2 entries")
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise ValueError("model sigma table must be finite and positive")
        if not (t[1:] > t[:-1]).all():
            raise ValueError("model sigma table must be strictly ascending")
        object.__setattr__(self, "table", t)

    @property
    def sigma_min(self) -> float:
        return float(self.table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.table[-1])

    # --- model time ------------------------------------------------------------------------------
    def sigma_at(self, u) -> torch.Tensor:
        """Sigma at model time u in [0, 1] (0 = sigma_min, 1 = sigma_max), log-linear in the table."""
        u = torch.as_tensor(u, dtype=torch.float64)
        n = self.table.numel()
        pos = (u.clamp(0, 1) * (n - 1))
        lo = pos.floor().long().clamp(0, n - 2)
        w = pos - lo
        logt = self.table.log()
        return torch.exp(logt[lo] * (1 - w) + logt[lo + 1] * w)

    def time_of(self, sigma) -> torch.Tensor:
        """Inverse of :meth:`sigma_at`: model time in [0, 1] of a sigma, clamped to the table's range."""
        s = torch.as_tensor(sigma, dtype=torch.float64).clamp(self.sigma_min, self.sigma_max)
        logt = self.table.log().numpy()
        pos = np.interp(s.log().numpy(), logt, np.arange(logt.size, dtype=np.float64))
        return torch.as_tensor(pos / (logt.size - 1), dtype=torch.float64)

    # --- constructors ----------------------------------------------------------------------------
    @staticmethod
    def discrete_vp(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000,
                    name: str = "sd15") -> "ModelSigmas":
        """The discrete VP grid of SD1.x/SDXL (scaled-linear betas): sigma from 0.0292 to 14.6146."""
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        acp = torch.cumprod(1.0 - betas, dim=0)
        return ModelSigmas(families.EPS, ((1 - acp) / acp).sqrt(), name)

    @staticmethod
    def flow(shift: float, timesteps: int = 1000, name: str | None = None) -> "ModelSigmas":
        """A flow-matching grid (SD3-style): sigma = shift*t / (1 + (shift-1)*t), t = 1/T .. 1."""
        if not (shift > 0 and math.isfinite(shift)):
            raise ValueError(f"shift must be a positive number, got {shift}")
        t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
        return ModelSigmas(families.FLOW, shift * t / (1 + (shift - 1) * t), name or f"flow_shift{shift:g}")

    @staticmethod
    def from_table(family: str, sigmas, name: str = "model") -> "ModelSigmas":
        """From a model's table of sigmas in any order (e.g. a ComfyUI ``model_sampling.sigmas`` buffer;
        comfy_adapter.model_sigmas_of_sampling reads it)."""
        fam = families.check_family(family)
        table = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten()
        table = torch.sort(table).values
        # some grids repeat values at the ends; keep them strictly ascending
        keep = torch.cat([torch.tensor([True]), table[1:] > table[:-1]])
        return ModelSigmas(fam, table[keep], name)

    @staticmethod
    def from_range(family: str, sigma_min: float, sigma_max: float, n: int = 1000,
                   name: str = "range") -> "ModelSigmas":
        """A log-uniform grid between two sigmas, for callers that only know the range."""
        check_sigma_range(sigma_min, sigma_max, family)
        table = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n, dtype=torch.float64))
        return ModelSigmas(family, table, name)



#: relative slack when a file made for one model is checked against a model's sigma range (files hold
#: float32 copies of the model's sigmas)
SIGMA_RANGE_RTOL = 1e-3


def within_range(sigma_min: float, sigma_max: float, ms: "ModelSigmas", rtol: float = SIGMA_RANGE_RTOL) -> bool:
    """Whether [sigma_min, sigma_max] lies inside the model's sigma range (up to ``rtol``)."""
    return sigma_max <= ms.sigma_max * (1 + rtol) and sigma_min >= ms.sigma_min * (1 - rtol)


def check_sigma_range(sigma_min: float, sigma_max: float, family: str):
    for nm, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{nm} must be a finite number, got {v!r}")
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"sigma range must satisfy 0 < sigma_min < sigma_max, got [{sigma_min}, {sigma_max}]")
    if family == families.FLOW and sigma_max > 1.0:
        raise ValueError(f"flow models have sigma_max <= 1, got {sigma_max}")
