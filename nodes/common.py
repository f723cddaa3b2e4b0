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


def family_of_k_model(k_model) -> str:
    """The family inside a sampler function, from the k-diffusion model wrapper ComfyUI passes
    (``KSamplerX0Inpaint`` -> CFGGuider wrapper -> ``model_patcher``)."""
    inner = getattr(k_model, "inner_model", None)
    patcher = getattr(inner, "model_patcher", None)
    if patcher is not None:
        return families.family_of_model_sampling(patcher.get_model_object("model_sampling"))
    ms = getattr(getattr(inner, "inner_model", None), "model_sampling", None)
    if ms is not None:
        return families.family_of_model_sampling(ms)
    raise RuntimeError("FewStep: cannot find the model's model_sampling to tell eps from flow")


def sigmas_out(sigmas) -> torch.Tensor:
    """SIGMAS as ComfyUI's own schedulers return them: a float32 CPU tensor."""
    return torch.as_tensor(sigmas).detach().to("cpu", torch.float32).clone()
