"""The saved AYS schedule file (``ays_schedule/1``, written by FewStepAYSOptimize): its one loader.

Format. Tensors: ``sigmas``, the schedule FewStepAYSScheduler interpolates (float32 or float64, 1-D,
3 to ``MAX_VALUES`` values, strictly decreasing, ending in 0), and optionally ``level_<n>``, every
optimised level (n + 1 positive, strictly decreasing values). Metadata: ``fewstep_format``
``"ays_schedule/1"``, ``family`` (eps or flow) and ``sigma_min`` (the level's smallest sigma, that the
table ends at instead of 0) are required; ``sigma_max``, ``steps``, ``model_fingerprint``, ``klub``,
``stop_reason``, ``cfg``, ``seed``, ``samples``, ``iterations``, ``align_to`` and ``data`` are checked
where present, and so are the fields FewStep writes since the optimizer's final guard (all optional, so
older files load as before): ``aligned_sampler`` (the sampler the schedule was aligned to:
``comfyui:<name>`` or ``fewstep:<solver>``, or empty for the paper's bound alone), ``start`` (the fixed
schedule it started from), ``start_error`` and ``final_error`` (their held-out errors, >= 0), ``kept``
(``optimised``, ``stage1`` or ``fixed:<name>``) and ``guard`` (the guard's text). Other keys are ignored.

Every sigma must lie in the family's range (eps: (0, ``MAX_SIGMA``], flow: (0, 1]) and, when a model
is given, inside that model's sigma range (``SIGMA_RANGE_RTOL``) and of its family. ``sigma_min`` is the
value the table ends at instead of 0; only the sampled sigmas (``sigmas`` without its 0) are checked
against the model's range, because a schedule that already samples the model's sigma_min (Karras, say)
ends its table below it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..core import families
from ..core.io import FORMAT_KEY, FileCheck, ProfileError
from ..core.model_sigmas import ModelSigmas, within_range
from ._common import MAX_STEPS

AYS_FORMAT = "ays_schedule/1"
KIND = "AYS schedule"
#: the largest sigma an eps schedule may hold (the preview route's bound too; EDM/SVD top out at 700)
MAX_SIGMA = 1e4
MAX_VALUES = MAX_STEPS + 1
_LEVEL_RE = re.compile(r"level_([0-9]{1,5})", re.ASCII)
_SAMPLER_RE = re.compile(r"(comfyui|fewstep):[A-Za-z0-9_.\-]{1,100}", re.ASCII)
_KEPT_RE = re.compile(r"optimised|stage1|fixed:[A-Za-z0-9_]{1,50}", re.ASCII)


@dataclass(frozen=True)
class SavedAYS:
    table: torch.Tensor   # float64, positive, decreasing, ending at sigma_min (what ays_full interpolates)
    family: str
    meta: dict


def _is_pair(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v)


def _decreasing(t: torch.Tensor) -> bool:
    return bool((t[1:] < t[:-1]).all())


def check_against_model(sigma_max: float, sigma_min: float, family: str, ms: ModelSigmas, label: str):
    """Raise ValueError when a schedule made for ``family`` on [sigma_min, sigma_max] does not fit the
    model ``ms``: another family, or sigmas outside the model's range."""
    if ms.family != family:
        raise ValueError(f"{label} was made for a {family} model, but this model is {ms.family}")
    if not within_range(sigma_min, sigma_max, ms):
        raise ValueError(f"{label} spans sigmas [{sigma_min:.6g}, {sigma_max:.6g}], outside this model's range "
                         f"[{ms.sigma_min:.6g}, {ms.sigma_max:.6g}]: it was made for another model; optimise one "
                         "for this model")


def load_ays_schedule(path, model_sigmas: ModelSigmas | None = None) -> SavedAYS:
    """Read and check a saved AYS schedule. Raises ProfileError naming the file and the field."""
    f = FileCheck(path, KIND, required_tensors=("sigmas",), required_meta=("family", "sigma_min"))
    f.text(FORMAT_KEY, choices=(AYS_FORMAT,))
    family = f.text("family", choices=families.FAMILIES)
    top = MAX_SIGMA if family == families.EPS else 1.0
    s = f.tensor("sigmas", ndim=1, min_numel=3, max_numel=MAX_VALUES).to(torch.float64)
    if float(s[-1]) != 0.0 or not _decreasing(s) or float(s[-2]) <= 0:
        raise f.error("tensor 'sigmas'", "is not a strictly decreasing schedule of positive sigmas ending in 0")
    if float(s[0]) > top:
        raise f.error("tensor 'sigmas'", f"starts at {float(s[0]):.6g}, above the largest sigma of a {family} "
                                         f"model ({top:g})")
    sigma_min = f.number("sigma_min", 0.0, top, lo_open=True)
    if not sigma_min < float(s[-2]):
        raise f.error("sigma_min", f"must be below the schedule's last positive sigma {float(s[-2]):.6g}, got "
                                   f"{sigma_min!r}")
    sigma_max = f.number("sigma_max", 0.0, top, default=None, lo_open=True)
    if sigma_max is not None and not math.isclose(sigma_max, float(s[0]), rel_tol=1e-5):
        raise f.error("sigma_max", f"is {sigma_max!r}, but the schedule starts at {float(s[0]):.6g}")
    for key in f.tensors:
        m = _LEVEL_RE.fullmatch(key)
        if key == "sigmas":
            continue
        if m is None:
            raise f.error(f"tensor '{key}'", "is not part of the format (sigmas, level_<n>)")
        n = int(m.group(1))
        if not 1 <= n <= MAX_STEPS:
            raise f.error(f"tensor '{key}'", f"names {n} steps (allowed 1..{MAX_STEPS})")
        lv = f.tensor(key, shape=(n + 1,)).to(torch.float64)
        if not _decreasing(lv) or float(lv[-1]) <= 0 or float(lv[0]) > top:
            raise f.error(f"tensor '{key}'", f"is not a strictly decreasing list of sigmas in (0, {top:g}]")
    f.integer("steps", 1, MAX_STEPS, default=None)
    f.text("model_fingerprint", default=None, max_len=200)
    f.mapping("klub", _is_pair, default=None)
    f.mapping("stop_reason", lambda v: isinstance(v, str), default=None)
    f.number("cfg", 0.0, 100.0, default=None)
    f.integer("seed", 0, 2 ** 64 - 1, default=None)
    f.integer("samples", 1, 1 << 20, default=None)
    f.integer("iterations", 1, 10000, default=None)
    f.text("align_to", default=None, max_len=200)
    f.text("data", default=None, choices=("teacher", "latent_image"))
    sampler = f.text("aligned_sampler", default=None, max_len=120)
    if sampler and not _SAMPLER_RE.fullmatch(sampler):
        raise f.error("aligned_sampler", f"must be empty, 'comfyui:<sampler>' or 'fewstep:<solver>', got {sampler!r}")
    f.text("start", default=None, max_len=60)
    f.number("start_error", 0.0, math.inf, default=None)
    f.number("final_error", 0.0, math.inf, default=None)
    kept = f.text("kept", default=None, max_len=60)
    if kept is not None and not _KEPT_RE.fullmatch(kept):
        raise f.error("kept", f"must be 'optimised', 'stage1' or 'fixed:<schedule>', got {kept!r}")
    f.text("guard", default=None, max_len=2000)
    if model_sigmas is not None:
        try:
            check_against_model(float(s[0]), float(s[-2]), family, model_sigmas, f"{KIND} {f.path.name}")
        except ValueError as e:
            raise ProfileError(str(e)) from None
    table = s.clone()
    table[-1] = sigma_min
    return SavedAYS(table, family, dict(f.meta))
