"""FewStep's one door into ComfyUI's internals: everything the pack knows about ComfyUI objects beyond its
node API (which ``nodes/`` uses directly) lives here, so a change in ComfyUI is a change in this file.

* KSampler's dropdowns: ComfyUI has no public registry for them. The lists
  ``comfy.samplers.SCHEDULER_NAMES`` / ``SAMPLER_NAMES`` (the very objects ``KSampler.SCHEDULERS`` /
  ``SAMPLERS`` point to) are appended to in place, only when the name is absent; nothing is ever
  rebound, removed or overwritten, so other packs' entries are safe and re-registration is a no-op.
* Model unwrapping: the ``model_sampling`` of a MODEL (ModelPatcher) and of the k-diffusion model a
  sampler function receives; the noise family (flow = ComfyUI's ``CONST`` noise type).
* The server: the running ``PromptServer`` (never imported here), for routes.
* Wrapper arguments: where ``CFGGuider.outer_sample``'s arguments sit, read from its signature.
* Cancel: ComfyUI's interrupt check as a callable for the pure code.
* Model folders: FewStep's ``models/fewstep_*`` folders in folder_paths.
"""
from __future__ import annotations

import inspect
import sys

import os

import comfy.k_diffusion.sampling as k_sampling
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import folder_paths

from .core import families
from .core.model_sigmas import ModelSigmas


# ------------------------------------------------------------------------------------------------
# KSampler's scheduler and sampler lists
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


def register_models_folder(name: str) -> None:
    """``models/<name>`` for .safetensors files in folder_paths, unless someone (extra_model_paths.yaml)
    registered it already: append-only."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], {".safetensors"})


def ksampler_sampler_names() -> list:
    return list(comfy.samplers.SAMPLER_NAMES)


# ------------------------------------------------------------------------------------------------
# models
def model_sampling_of(model):
    """The ``model_sampling`` of a ComfyUI MODEL (ModelPatcher), honouring patches that replace it."""
    return model.get_model_object("model_sampling")


def guider_of_k_model(k_model):
    """The CFGGuider behind the k-diffusion model a sampler function receives (``KSamplerX0Inpaint``), or
    None."""
    return getattr(k_model, "inner_model", None)


def patcher_of_k_model(k_model):
    """The ModelPatcher behind the k-diffusion model a sampler function receives, or None."""
    return getattr(guider_of_k_model(k_model), "model_patcher", None)


def model_sampling_of_k_model(k_model):
    """The ``model_sampling`` inside a sampler function, from the k-diffusion model wrapper ComfyUI
    passes (``KSamplerX0Inpaint`` -> CFGGuider wrapper -> ``model_patcher``)."""
    inner = guider_of_k_model(k_model)
    patcher = patcher_of_k_model(k_model)
    if patcher is not None:
        return patcher.get_model_object("model_sampling")
    ms = getattr(getattr(inner, "inner_model", None), "model_sampling", None)
    if ms is not None:
        return ms
    raise RuntimeError("FewStep: cannot find the model's model_sampling to tell eps from flow")


def family_of_model_sampling(model_sampling) -> str:
    """flow for ComfyUI's ``CONST`` noise type (SD3, Flux, Wan, ...), eps otherwise."""
    return families.FLOW if isinstance(model_sampling, comfy.model_sampling.CONST) else families.EPS


def family_of(model) -> str:
    return family_of_model_sampling(model_sampling_of(model))


def family_of_k_model(k_model) -> str:
    """The family inside a sampler function (see :func:`model_sampling_of_k_model`)."""
    return family_of_model_sampling(model_sampling_of_k_model(k_model))


def is_discrete(model_sampling) -> bool:
    """A discrete-time eps model (SD1.x, SDXL), whose network takes integer timesteps."""
    return (family_of_model_sampling(model_sampling) == families.EPS
            and isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete))


def model_sigmas_of_sampling(model_sampling, name: str = "model") -> ModelSigmas:
    """FewStep's ModelSigmas of a ComfyUI ``model_sampling`` (its ``sigmas`` buffer and family)."""
    return ModelSigmas.from_table(family_of_model_sampling(model_sampling), model_sampling.sigmas, name)


def model_sigmas_of(model) -> ModelSigmas:
    return model_sigmas_of_sampling(model_sampling_of(model), name=type(model.model).__name__)


# ------------------------------------------------------------------------------------------------
# the server
def prompt_server():
    """The running PromptServer, or None (tests, scripts). ComfyUI's ``server`` module is never imported
    here: it exists only when ComfyUI's main started it."""
    srv = sys.modules.get("server")
    cls = getattr(srv, "PromptServer", None)
    return getattr(cls, "instance", None)


def interrupt_check():
    """ComfyUI's Cancel as a callable for long pure computations (schedules/ never imports ComfyUI):
    it raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    return comfy.model_management.throw_exception_if_processing_interrupted


# ------------------------------------------------------------------------------------------------
# OUTER_SAMPLE wrapper arguments (the executor gets outer_sample's arguments without ``self``)
_OUTER_SAMPLE_PARAMS = [p for p in inspect.signature(comfy.samplers.CFGGuider.outer_sample).parameters
                        if p != "self"]


def outer_sample_arg(args, kwargs, name):
    """Argument ``name`` of an OUTER_SAMPLE wrapper call, given by position or keyword (None: absent)."""
    if name in kwargs:
        return kwargs[name]
    pos = _OUTER_SAMPLE_PARAMS.index(name)
    return args[pos] if len(args) > pos else None


def set_outer_sample_arg(args: list, kwargs: dict, name, value):
    """Replace argument ``name`` where the caller gave it (as a keyword when it was not given)."""
    pos = _OUTER_SAMPLE_PARAMS.index(name)
    if name in kwargs or len(args) <= pos:
        kwargs[name] = value
    else:
        args[pos] = value
