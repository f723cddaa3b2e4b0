"""What the AYS optimizer and the saved-schedule users need from ComfyUI's samplers (adapter code).

* ``align_choices()``: FewStepAYSOptimize's ``align_to`` values. The first ones are FewStep's solvers by
  their old names (``dpmpp_2m`` = FewStep's DPM-Solver++(2M), as saved workflows meant it), then
  "none", then every sampler of ComfyUI's KSampler list (built-in or FewStep's) as
  ``"KSampler: <name>"``, appended.
* ``comfy_solver(name, model_k, extra)``: ComfyUI's own sampler ``name`` (``comfy.samplers.sampler_object``,
  the KSAMPLER a KSampler would run) as ``solve(model, x, sigmas)`` for schedules/ays_optimize.py.
* ``sampler_id`` / ``sampler_id_of_object``: one spelling for "which sampler" -- ``comfyui:<name>`` for
  ComfyUI's samplers, ``fewstep:<solver>`` for FewStep's -- stored in saved schedules (``aligned_sampler``)
  and compared when a saved schedule is used, so that a mismatch can be warned about once.
"""
from __future__ import annotations

import logging

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers

from ..comfy_adapter import ksampler_sampler_names
from ..samplers.registry import KSAMPLER

log = logging.getLogger("FewStep")

KSAMPLER_PREFIX = "KSampler: "
#: align_to's default: the sampler users most often pair with a scheduler
DEFAULT_ALIGN = KSAMPLER_PREFIX + "dpmpp_2m"
#: ComfyUI samplers whose model call k is at sigma_k on a state made from sigmas[0..k] only, so the
#: optimizer's prefix cache replays exactly (tested against recomputing for euler, dpmpp_2m, uni_pc)
CACHE_SAFE = frozenset({"euler", "dpmpp_2m", "uni_pc", "uni_pc_bh2", "ipndm", "deis", "lms",
                        "fewstep_dpmpp_2m", "fewstep_dpmpp_3m", "fewstep_unipc_bh1", "fewstep_unipc_bh2",
                        "fewstep_deis_3", "fewstep_ddim"})
#: the solvers every final schedule is checked with (besides the one it is aligned to)
CHECK_COMFY = ("euler", "dpmpp_2m", "uni_pc")
CHECK_FEWSTEP = ("dpmpp_2m",)
#: FewStep's solvers in the KSampler list, by the solver name they run
_FEWSTEP_KSAMPLER = {f"fewstep_{n}": n for n in KSAMPLER}


def ksampler_names() -> list:
    return ksampler_sampler_names()


def align_choices(fewstep_names: tuple, none_label: str) -> list:
    return list(fewstep_names) + [none_label] + [KSAMPLER_PREFIX + n for n in ksampler_names()]


def sampler_id(ksampler_name: str) -> str:
    """The id of a KSampler-list sampler name."""
    if ksampler_name in _FEWSTEP_KSAMPLER:
        return "fewstep:" + _FEWSTEP_KSAMPLER[ksampler_name]
    return "comfyui:" + ksampler_name


def align_id(align_to: str) -> str | None:
    """The id of an align_to value (None: not aligned)."""
    if align_to.startswith(KSAMPLER_PREFIX):
        return sampler_id(align_to[len(KSAMPLER_PREFIX):])
    return "fewstep:" + align_to


def canonical(sid: str) -> str:
    """An id as this version spells it: files written before fewstep_deis_4 was known as FewStep's say
    ``comfyui:fewstep_deis_4``."""
    kind, _, name = sid.partition(":")
    return sampler_id(name) if kind == "comfyui" else sid


def describe(sid: str) -> str:
    kind, _, name = sid.partition(":")
    return f"ComfyUI's {name}" if kind == "comfyui" else f"FewStep's {name}"


def sampler_id_of_object(sampler) -> str | None:
    """The id of a SAMPLER object when it can be told (ComfyUI's sampler_object, FewStep's KSampler entries
    and solver nodes), else None."""
    fn = getattr(sampler, "sampler_function", None)
    if fn is None:
        return None
    opts = dict(getattr(sampler, "extra_options", {}) or {})
    for name in ksampler_names():
        if getattr(k_sampling, f"sample_{name}", None) is fn:
            return sampler_id(name)
    try:
        from comfy.extra_samplers import uni_pc
        if fn is uni_pc.sample_unipc:
            return "comfyui:uni_pc"
        if fn is uni_pc.sample_unipc_bh2:
            return "comfyui:uni_pc_bh2"
    except ImportError:  # pragma: no cover - layout of another ComfyUI
        pass
    fname = getattr(fn, "__name__", "")
    fewstep = {"fewstep_sample_dpmpp_multistep": lambda o: f"dpmpp_{int(o.get('order', 2))}m",
               "fewstep_sample_unipc": lambda o: f"unipc_{o.get('variant', 'bh2')}",
               "fewstep_sample_deis": lambda o: f"deis_{int(o.get('order', 3))}",
               "fewstep_sample_ddim": lambda o: "ddim" if not o.get("eta") else None,
               "fewstep_sample_euler": lambda o: "euler"}
    if fname in fewstep:
        name = fewstep[fname](opts)
        return None if name is None else "fewstep:" + name
    return None


class _ModelView:
    """What a ComfyUI sampler function is handed: calls go to ``fn`` (the optimizer's counting, caching
    denoiser); every other attribute (inner_model, model_sampling, ...) is the sampling model's."""

    def __init__(self, fn, model_k):
        self._fn = fn
        self._model_k = model_k

    def __call__(self, x, sigma, **kw):
        return self._fn(x, sigma, **kw)

    def __getattr__(self, name):
        return getattr(self._model_k, name)


def comfy_solver(name: str, model_k, extra: dict):
    """ComfyUI's sampler ``name`` (a KSampler-list name) as ``solve(model, x, sigmas)``: the function and
    options of ``comfy.samplers.sampler_object(name)`` -- the KSAMPLER a KSampler runs -- on the
    optimizer's denoiser, from x (already at sigmas[0]: the teacher pairs' start, so no noise scaling)."""
    if name not in ksampler_sampler_names():
        raise ValueError(f"{name!r} is not in ComfyUI's KSampler list")
    sampler = comfy.samplers.sampler_object(name)
    fn, opts = sampler.sampler_function, dict(sampler.extra_options)

    def solve(model, x, sigmas):
        sig = sigmas.to(x.device, x.dtype)
        return fn(_ModelView(model, model_k), x, sig, extra_args=dict(extra), callback=None, disable=True, **opts)
    solve.__name__ = f"comfyui_{name}"
    return solve


# --- the warning when a saved schedule is used with another sampler --------------------------------------
_warned: set = set()


def show_on_node(text: str) -> None:
    """Show ``text`` on the executing node (ComfyUI's progress text), when there is one."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
        ctx = get_executing_context()
        if ctx is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, ctx.node_id)
    except Exception:  # no server (tests, scripts): the log line is the message
        pass


def aligned_text(meta: dict, name: str) -> str:
    sid = meta.get("aligned_sampler")
    if not sid:
        return f"saved AYS schedule {name}: not aligned to a sampler (the paper's bound only)"
    return (f"saved AYS schedule {name} was aligned to {describe(sid)}: sample it with that sampler; with other "
            "samplers it may be worse than a fixed schedule")


def check_sampler(meta: dict, name: str, used: str | None, where: str) -> str | None:
    """Warn once (log and node) when the saved schedule ``name`` (metadata ``meta``) is used with the sampler
    ``used`` (an id) but was aligned to another. Returns the warning, or None."""
    sid = meta.get("aligned_sampler")
    if not sid or used is None or canonical(used) == canonical(sid):
        return None
    text = (f"FewStep: saved AYS schedule {name} was aligned to {describe(sid)}, but {where} samples it with "
            f"{describe(used)}: the schedule is fitted to its solver and may be worse (even unsafe) with another; "
            f"sample with {describe(sid)} or optimise a schedule for {describe(used)}")
    key = (name, str(meta.get("model_fingerprint")), sid, used, where)
    if key not in _warned:
        _warned.add(key)
        log.warning(text)
        show_on_node(text)
    return text


def executing_ksampler_name():
    """The sampler name of the comfy.samplers.KSampler whose scheduler is being computed, read from the
    caller's frames (ComfyUI hands a scheduler only model_sampling and steps); None when not found."""
    import sys
    f = sys._getframe(1)
    for _ in range(12):
        if f is None:
            return None
        obj = f.f_locals.get("self")
        if isinstance(obj, comfy.samplers.KSampler):
            name = getattr(obj, "sampler", None)
            return name if isinstance(name, str) else None
        f = f.f_back
    return None
