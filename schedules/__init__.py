"""Sigma schedules: torch/numpy only, no ComfyUI.

``get_schedule(name, steps, model_sigmas, denoise=1.0, rho=...)`` returns a float64 1-D tensor,
strictly decreasing, ending in 0, of length steps+1. One denoise rule for every schedule: ``steps``
is the number of steps actually run (as KSampler does).
"""
from __future__ import annotations

import torch

from ..core.model_sigmas import ModelSigmas
from . import basic
from .beta import beta_schedule
from ._common import check_denoise, check_positive, check_steps, with_denoise
from .ays import AYS_MODEL_TYPES, ays_full, ays_table, loglinear_interp

SCHEDULE_NAMES = ("karras", "logsnr_uniform", "time_uniform", "time_quadratic", "polyexponential", "ays", "beta")
#: default rho per schedule (only karras and polyexponential use it)
DEFAULT_RHO = {"karras": 7.0, "polyexponential": 1.0}


def get_schedule(name: str, steps: int, model_sigmas: ModelSigmas, denoise: float = 1.0,
                 rho: float | None = None, ays_model_type: str = "SD1", check_interrupt=None) -> torch.Tensor:
    """``check_interrupt``: an optional callable that raises to stop a long construction (inside
    ComfyUI the node passes its interrupt check; the preview route a deadline)."""
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {SCHEDULE_NAMES}, got {name!r}")
    if not isinstance(model_sigmas, ModelSigmas):
        raise TypeError("model_sigmas must be a fewstep ModelSigmas")
    if rho is None:
        rho = DEFAULT_RHO.get(name, 7.0)
    rho = check_positive(rho, "rho", 0.0, 100.0)
    ms = model_sigmas
    builders = {
        "karras": lambda n: basic.karras(n, ms, rho),
        "logsnr_uniform": lambda n: basic.logsnr_uniform(n, ms),
        "time_uniform": lambda n: basic.time_uniform(n, ms),
        "time_quadratic": lambda n: basic.time_quadratic(n, ms),
        "polyexponential": lambda n: basic.polyexponential(n, ms, rho),
        "ays": lambda n: ays_full(ays_model_type, n, ms),
        "beta": lambda n: beta_schedule(n, ms, check_interrupt=check_interrupt),
    }
    tails = {"beta": lambda n, start: beta_schedule(n, ms, start=start, check_interrupt=check_interrupt)}
    try:
        return with_denoise(builders[name], steps, denoise, build_tail=tails.get(name),
                            check_interrupt=check_interrupt)
    except ValueError as e:
        if name in DEFAULT_RHO and "strictly decreasing" in str(e):
            hint = "raise rho towards 7" if name == "karras" else "move rho towards 1"
            raise ValueError(f"{e}; or, with {name} at rho {rho:g}: {hint}") from None
        raise


def ays_sigmas(model_type: str, steps: int, denoise: float = 1.0, model_sigmas: ModelSigmas | None = None,
               table=None, check_interrupt=None) -> torch.Tensor:
    """AYS for a model type (published table, remapped onto ``model_sigmas`` when its range differs),
    or for an explicit ``table`` (a saved optimised schedule), interpolated to ``steps``."""
    return with_denoise(lambda n: ays_full(model_type, n, model_sigmas, table=table), steps, denoise,
                        check_interrupt=check_interrupt)


__all__ = ["SCHEDULE_NAMES", "AYS_MODEL_TYPES", "get_schedule", "ays_sigmas", "ays_table", "loglinear_interp",
           "check_steps", "check_denoise", "ModelSigmas"]
