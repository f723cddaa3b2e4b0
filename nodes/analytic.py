"""FewStepAnalyticModel: the analytic Gaussian-mixture model as a real ComfyUI MODEL.

Nothing is downloaded. The model is a ``comfy.model_base.BaseModel`` with no network: its
``_apply_model`` returns the exact denoiser of the mixture at the exact sigma it is called with, in
either family (eps: SD1.5's discrete VP sigmas; flow: SD3-style ModelSamplingDiscreteFlow with the
shift widget). CONDITIONING carries the mixture's log-weights, so CFG, conditioning combine nodes and
every sampler work on it as on a real model. APPLY_MODEL wrappers compose as usual.
"""
import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from ..core import families
from ..core.analytic import LATENT_CHANNELS, GaussianMixture
from .common import outputs


class _AnalyticConfig(comfy.supported_models_base.BASE):
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.LatentFormat  # scale 1, 4 channels
    memory_usage_factor = 0.01


class AnalyticBaseModel(comfy.model_base.BaseModel):
    """A BaseModel whose denoiser is the mixture's exact posterior mean."""

    def __init__(self, mixture: GaussianMixture, family: str, shift: float):
        cfg = _AnalyticConfig({"disable_unet_model_creation": True})
        if family == families.FLOW:
            cfg.sampling_settings = {"shift": float(shift), "multiplier": 1000}
            model_type = comfy.model_base.ModelType.FLOW
        else:
            model_type = comfy.model_base.ModelType.EPS
        super().__init__(cfg, model_type=model_type, device=comfy.model_management.get_torch_device())
        self.mixture = mixture
        self.family = family

    def get_dtype(self):
        return torch.float32

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        if c_crossattn is None:
            raise ValueError("FewStepAnalyticModel needs the positive/negative CONDITIONING of "
                             "FewStepAnalyticModel (got no cross-attention conditioning)")
        if c_crossattn.shape[-1] != self.mixture.components:
            raise ValueError(
                f"FewStepAnalyticModel: conditioning has {c_crossattn.shape[-1]} features, but this model has "
                f"{self.mixture.components} components. Use the positive/negative outputs of the same "
                "FewStepAnalyticModel node (text-encoder CONDITIONING does not fit this model).")
        lw = c_crossattn[:, 0, :]
        return self.mixture.denoise(x.float(), t, lw, self.family)


def make_analytic_patcher(family: str = "eps", shift: float = 3.0, components: int = 8, seed: int = 0,
                          mixture: GaussianMixture | None = None):
    """(ModelPatcher, positive, negative) for the analytic model (``mixture``: another mixture than
    GaussianMixture(components, seed), e.g. for benchmarks on other models)."""
    mixture = mixture if mixture is not None else GaussianMixture(components, seed)
    base = AnalyticBaseModel(mixture, family, shift)
    patcher = comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())
    positive = [[mixture.conditioning_tensor(True), {}]]
    negative = [[mixture.conditioning_tensor(False), {}]]
    return patcher, positive, negative


class FewStepAnalyticModel:
    DESCRIPTION = ("An exact, zero-download test model: a mixture of Gaussians in latent shape whose "
                   "denoiser is known in closed form, so the true ODE solution is known. Use it to compare "
                   "samplers and schedules, or to run FewStep workflows with nothing downloaded.")
    CATEGORY = "sampling/fewstep"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("MODEL", "model", "The analytic model (eps: SD1.5 sigmas; flow: SD3-style with the shift)."),
        ("CONDITIONING", "positive", "Conditional mixture weights: use as positive."),
        ("CONDITIONING", "negative", "Unconditional (uniform) mixture weights: use as negative."),
        ("LATENT", "latent", "An empty 4-channel latent of the chosen size."))
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (["eps", "flow"], {"default": "eps", "tooltip":
                       "eps: x = x0 + sigma*noise on SD1.5's discrete sigmas (0.029..14.6). "
                       "flow: x = (1-sigma)*x0 + sigma*noise, as SD3/Flux, with the shift below."}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip":
                      "Timestep shift of the flow family (SD3 uses 3.0). Ignored for eps."}),
            "components": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip":
                           "Number of Gaussian components in the mixture."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip":
                     "Seed of the mixture's means and widths (not the sampling noise)."}),
            "latent_size": ("INT", {"default": 16, "min": 1, "max": 512, "tooltip":
                            "Side of the square latent on the LATENT output, in latent pixels."}),
        }}

    def build(self, family, shift, components, seed, latent_size):
        if family not in families.FAMILIES:
            raise ValueError(f"FewStepAnalyticModel: family must be one of {families.FAMILIES}, got {family!r}")
        if not (shift > 0):
            raise ValueError(f"FewStepAnalyticModel: shift must be > 0, got {shift}")
        patcher, pos, neg = make_analytic_patcher(family, shift, components, seed)
        latent = {"samples": torch.zeros(1, LATENT_CHANNELS, latent_size, latent_size)}
        return (patcher, pos, neg, latent)


NODE_CLASS_MAPPINGS = {"FewStepAnalyticModel": FewStepAnalyticModel}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepAnalyticModel": "FewStep Analytic Model"}
