"""Validation and the one denoise rule shared by every FewStep schedule."""
from __future__ import annotations

import math

import torch

MAX_STEPS = 10000


def check_steps(steps, widget: str = "steps", minimum: int = 1) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int,)) and not (isinstance(steps, float) and steps.is_integer()):
        raise ValueError(f"{widget} must be a whole number in [{minimum}, {MAX_STEPS}], got {steps!r}")
    steps = int(steps)
    if not (minimum <= steps <= MAX_STEPS):
        raise ValueError(f"{widget} must be in [{minimum}, {MAX_STEPS}], got {steps}")
    return steps


def check_denoise(denoise) -> float:
    if not isinstance(denoise, (int, float)) or not math.isfinite(denoise) or not (0.0 < denoise <= 1.0):
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r} (denoise 0 would run no step)")
    return float(denoise)


def check_positive(value, widget: str, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not (lo < value <= hi):
        raise ValueError(f"{widget} must be in ({lo:g}, {hi:g}], got {value!r}")
    return float(value)


def total_steps_for(steps: int, denoise: float) -> int:
    """The one denoise rule (KSampler's): `steps` steps actually run, taken from the tail of a
    schedule built for int(steps / denoise) steps."""
    return max(steps, int(steps / denoise))     # denoise 1: steps


def with_denoise(build, steps: int, denoise: float, build_tail=None, check_interrupt=None) -> torch.Tensor:
    """``build(total)`` returns a full schedule (total+1 values ending in 0); keep the last steps+1.
    ``build_tail(total, start)``, where given, returns only the values from index ``start`` on (for
    schedules whose cost grows with the number of values: denoise 0.01 would build 100x more than it
    keeps). ``check_interrupt`` is called before and after building."""
    steps = check_steps(steps)
    denoise = check_denoise(denoise)
    total = total_steps_for(steps, denoise)
    if check_interrupt is not None:
        check_interrupt()
    if build_tail is not None:
        out = build_tail(total, total - steps)
    else:
        full = build(total)
        out = full[-(steps + 1):].clone()
    if check_interrupt is not None:
        check_interrupt()
    return finalize(out, steps)


def finalize(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """Check the schedule contract: length steps+1, finite, strictly decreasing, ending in 0."""
    s = sigmas.to(torch.float64)
    if s.numel() != steps + 1:
        raise RuntimeError(f"internal: schedule has {s.numel()} values, expected {steps + 1}")
    if s[-1] != 0:
        raise RuntimeError("internal: schedule must end in 0")
    if not torch.isfinite(s).all():
        raise ValueError("schedule contains NaN or inf (check the model's sigma range)")
    if not (s[1:] < s[:-1]).all():
        raise ValueError("schedule is not strictly decreasing: too many steps for this sigma range and "
                         "schedule (neighbouring sigmas coincide); lower steps")
    return s
