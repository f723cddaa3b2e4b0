"""Small helpers shared by the node modules: reading ComfyUI objects into FewStep's core types."""
import torch

from ..core import families
from ..core.model_sigmas import ModelSigmas


def model_sampling_of(model):
    """The ``model_sampling`` of a ComfyUI MODEL (ModelPatcher), honouring patches that replace it."""
    return model.get_model_object("model_sampling")


def model_sigmas_of(model) -> ModelSigmas:
    return ModelSigmas.from_model_sampling(model_sampling_of(model), name=type(model.model).__name__)


def family_of(model) -> str:
    return families.family_of_model_sampling(model_sampling_of(model))


def model_sampling_of_k_model(k_model):
    """The ``model_sampling`` inside a sampler function, from the k-diffusion model wrapper ComfyUI
    passes (``KSamplerX0Inpaint`` -> CFGGuider wrapper -> ``model_patcher``)."""
    inner = getattr(k_model, "inner_model", None)
    patcher = getattr(inner, "model_patcher", None)
    if patcher is not None:
        return patcher.get_model_object("model_sampling")
    ms = getattr(getattr(inner, "inner_model", None), "model_sampling", None)
    if ms is not None:
        return ms
    raise RuntimeError("FewStep: cannot find the model's model_sampling to tell eps from flow")


def family_of_k_model(k_model) -> str:
    """The family inside a sampler function (see :func:`model_sampling_of_k_model`)."""
    return families.family_of_model_sampling(model_sampling_of_k_model(k_model))


def interrupt_check():
    """ComfyUI's Cancel as a callable for long pure computations (schedules/ never imports ComfyUI):
    it raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    import comfy.model_management
    return comfy.model_management.throw_exception_if_processing_interrupted


def sigmas_out(sigmas) -> torch.Tensor:
    """SIGMAS as ComfyUI's own schedulers return them: a float32 CPU tensor."""
    return torch.as_tensor(sigmas).detach().to("cpu", torch.float32).clone()


def model_fingerprint(model) -> str:
    """A short, stable id of what a MODEL computes, for profiles and saved schedules: the model class,
    its sigma grid, a sample of every weight tensor (name, shape and a few values), and the patches
    (LoRA keys and strengths) on the patcher. Same checkpoint + same patches -> same fingerprint."""
    import hashlib

    h = hashlib.sha256()
    base = model.model
    h.update(type(base).__name__.encode())
    ms = model_sampling_of(model)
    h.update(families.family_of_model_sampling(ms).encode())
    h.update(torch.as_tensor(ms.sigmas).detach().to("cpu", torch.float64).numpy().tobytes())
    mixture = getattr(base, "mixture", None)
    if mixture is not None:  # the analytic model
        h.update(f"analytic:{mixture.components}:{mixture.seed}".encode())
    with torch.no_grad():
        for name, p in sorted(base.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            if p.numel():
                flat = p.detach().reshape(-1)
                idx = torch.linspace(0, flat.numel() - 1, steps=min(8, flat.numel())).long()
                h.update(flat[idx.to(flat.device)].to("cpu", torch.float64).numpy().tobytes())
    for key in sorted(getattr(model, "patches", {}) or {}):
        h.update(key.encode())
        for patch in model.patches[key]:
            h.update(str(patch[0]).encode())  # strength
    return h.hexdigest()[:16]
