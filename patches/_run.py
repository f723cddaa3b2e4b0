"""Per-sampling-run state for FewStep's model patches.

A patch stores its *settings* on the cloned ModelPatcher (they may be copied by later clones, which
is harmless) and creates its *state* fresh at the start of every sampling run, in an OUTER_SAMPLE
wrapper, inside a private copy of the guider's model_options (as ComfyUI's EasyCache does). So a
clone, a second sampler in the same graph, or the next prompt never sees another run's cache, and
the original model's options are restored when the run ends (also on error or interrupt).

The step index comes from the sampler callback (every ComfyUI sampler calls it once per step with
the step number), so no per-call host sync is needed to know where in the schedule a model call is.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_patcher
import comfy.patcher_extension as pe

from ..comfy_adapter import outer_sample_arg as _arg, set_outer_sample_arg as _set_arg
from ..core.cache_schedule import steps_in_sigma_window

log = logging.getLogger("FewStep")

class RunState:
    """Base of a patch's per-run state: the run's sigmas (a CPU copy, read once per run), the current
    step index and the model's sigma<->percent conversion."""

    def __init__(self, sigmas, model_sampling):
        self.sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
        self.total_steps = max(int(self.sigmas.shape[-1]) - 1, 0)
        self.model_sampling = model_sampling
        self.step = 0
        self.steps_seen = 0

    def on_step(self, i: int):
        self.step = int(i) + 1
        self.steps_seen += 1

    def percent_window(self, start_percent: float, end_percent: float) -> list[bool]:
        """Whether each step's starting sigma lies in (sigma(end_percent), sigma(start_percent)]."""
        hi = float(self.model_sampling.percent_to_sigma(float(start_percent)))
        lo = float(self.model_sampling.percent_to_sigma(float(end_percent)))
        return steps_in_sigma_window(self.sigmas[:self.total_steps], hi, lo)

    def summary(self) -> str:  # pragma: no cover - overridden
        return ""


def install(model, key: str, run_key: str, make_state, name: str):
    """Add (replacing an earlier one with the same key) an OUTER_SAMPLE wrapper that gives every
    sampling run a fresh ``make_state(sigmas, model_sampling)`` at
    ``transformer_options[run_key]`` and logs its ``summary()`` once when the run ends."""

    def outer_sample(executor, *args, **kwargs):
        args, kwargs = list(args), dict(kwargs)
        guider = executor.class_obj
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        sigmas = _arg(args, kwargs, "sigmas")
        state = make_state(sigmas, guider.model_patcher.get_model_object("model_sampling"))
        guider.model_options.setdefault("transformer_options", {})[run_key] = state
        user_cb = _arg(args, kwargs, "callback")

        def callback(step, *rest, **kw):
            state.on_step(step)
            if user_cb is not None:
                return user_cb(step, *rest, **kw)

        _set_arg(args, kwargs, "callback", callback)
        try:
            return executor(*args, **kwargs)
        finally:
            guider.model_options = original
            try:
                log.info("%s: %s", name, state.summary())
            except Exception as e:  # a log line must never turn a finished run into an error
                log.warning("%s: could not summarise the run (%s)", name, e)

    model.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, key)
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, key, outer_sample)


def add_wrapper(model, wrapper_type: str, key: str, fn):
    """Add a wrapper under ``key``, replacing any earlier one (applying a patch twice = once)."""
    model.remove_wrappers_with_key(wrapper_type, key)
    model.add_wrapper_with_key(wrapper_type, key, fn)


def replace_patch(model, patch_name: str, tag: str, fn):
    """Put ``fn`` in the clone's transformer_options patch list ``patch_name``, removing an earlier
    patch of ours with the same tag (edits the clone's own list in place; never another model's)."""
    fn._fewstep_patch = tag
    patches = model.model_options.setdefault("transformer_options", {}).setdefault("patches", {})
    lst = patches.setdefault(patch_name, [])
    lst[:] = [p for p in lst if getattr(p, "_fewstep_patch", None) != tag]
    lst.append(fn)
