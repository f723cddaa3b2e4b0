"""Adding FewStep entries to ComfyUI's KSampler dropdowns.

ComfyUI has no public registry for them: the lists ``comfy.samplers.SCHEDULER_NAMES`` and
``comfy.samplers.SAMPLER_NAMES`` (the very objects ``KSampler.SCHEDULERS`` / ``SAMPLERS`` point to)
are appended to in place, and only when the name is absent. Nothing is ever rebound, removed or
overwritten, so other packs' entries are safe and re-registration is a no-op.
"""
import logging

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers

log = logging.getLogger("FewStep")


def register_scheduler(name: str, fn, use_ms: bool = True) -> bool:
    """``fn(model_sampling, steps) -> sigmas`` (use_ms) as KSampler scheduler ``name``."""
    if name in comfy.samplers.SCHEDULER_HANDLERS or name in comfy.samplers.SCHEDULER_NAMES:
        return False
    comfy.samplers.SCHEDULER_HANDLERS[name] = comfy.samplers.SchedulerHandler(fn, use_ms=use_ms)
    comfy.samplers.SCHEDULER_NAMES.append(name)
    return True


def register_sampler(name: str, fn) -> bool:
    """``fn(model, x, sigmas, extra_args, callback, disable)`` as KSampler sampler ``name``."""
    attr = f"sample_{name}"
    if name in comfy.samplers.SAMPLER_NAMES or hasattr(k_sampling, attr):
        return False
    setattr(k_sampling, attr, fn)
    comfy.samplers.SAMPLER_NAMES.append(name)
    if name not in comfy.samplers.KSAMPLER_NAMES:
        comfy.samplers.KSAMPLER_NAMES.append(name)
    return True
