"""Nodes that make a run's result visible: a latent as a picture, and the sample's error against the
analytic model's exact ODE solution, shown on the node. The logic is in core/results.py."""
import math

import torch

from ..core import results
from .analytic import AnalyticBaseModel
from ..comfy_adapter import model_sampling_of
from .common import outputs

REFERENCE_STEPS = 500  # RK4 steps of the exact solve: ~1e-7 from a 2000-step solve on the examples


class FewStepLatentView:
    DESCRIPTION = ("Shows a 4-channel latent as a picture, without a VAE: a fixed linear map of the "
                   "channels to RGB (0 -> red, 1 -> green, 2 -> blue, 3 -> brightness), the value range "
                   "below mapped to black..white, each latent pixel drawn as a scale x scale block. "
                   "A visualisation for latents no VAE decodes (the analytic model's), not a decode: "
                   "the same latent always gives the same picture, so runs compare by eye.")
    CATEGORY = "sampling/fewstep/results"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("IMAGE", "image", "The latent as an RGB picture (batch x height*scale x width*scale x 3); "
                           "connect it to Save Image or Preview Image."))
    FUNCTION = "view"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The 4-channel latent to show (e.g. a sampler's output)."}),
            "scale": ("INT", {"default": 16, "min": 1, "max": 64, "tooltip":
                      "Each latent pixel becomes a scale x scale block (16: a 16x16 latent -> 256x256 px)."}),
            "value_range": ("FLOAT", {"default": 2.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip":
                            "Latent values from -range (black) to +range (white); values outside clip."}),
        }}

    def view(self, samples, scale, value_range):
        if not isinstance(samples, dict) or "samples" not in samples:
            raise ValueError("FewStep Latent View: samples must be a LATENT (a dict with 'samples')")
        try:
            return (results.latent_to_image(samples["samples"], scale, value_range),)
        except ValueError as e:
            raise ValueError(f"FewStep Latent View: {e}") from None


class FewStepExactError:
    DESCRIPTION = ("The RMS error of a sampled latent against the exact probability-flow ODE solution "
                   "of FewStep's analytic model from the same noise: the model's denoiser is known in "
                   "closed form, so the solution is computed to ~1e-7 (RK4, 500 steps in log sigma). "
                   "Give it the same model, conditioning, cfg and noise seed as the sampler, the "
                   "sampler's output and (if the sampler takes them) the same sigmas; it assumes the "
                   "sampler started from an empty latent (full denoise). Deterministic samplers converge "
                   "to 0 as steps grow; stochastic ones (SDE, TCD, ancestral) do not aim at this "
                   "solution, so there the number is a distance, not an error.")
    CATEGORY = "sampling/fewstep/results"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "report", "One line: the RMS error, the relative error and the sigma range solved."),
        ("FLOAT", "rms_error", "The RMS error itself (mean over every latent value)."))
    OUTPUT_NODE = True
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL output of FewStep Analytic Model (the only model "
                                           "whose exact solution is known)."}),
            "positive": ("CONDITIONING", {"tooltip": "The sampler's positive (the analytic model's)."}),
            "negative": ("CONDITIONING", {"tooltip": "The sampler's negative (the analytic model's)."}),
            "samples": ("LATENT", {"tooltip": "The sampler's output latent."}),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip":
                           "The sampler's noise seed (KSampler's seed, RandomNoise's noise_seed)."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "The sampler's cfg."}),
        }, "optional": {
            "sigmas": ("SIGMAS", {"tooltip": "The sampler's sigmas: the solve runs from the first to the "
                                             "last. Unconnected: from the model's largest sigma to 0 "
                                             "(what KSampler does at denoise 1)."}),
        }}

    def measure(self, model, positive, negative, samples, noise_seed, cfg, sigmas=None):
        where = "FewStep Error vs Exact"
        base = getattr(model, "model", None)
        if not isinstance(base, AnalyticBaseModel):
            raise ValueError(f"{where}: model must come from FewStep Analytic Model (got "
                             f"{type(base).__name__}); only its exact ODE solution is known")
        for name, cond in (("positive", positive), ("negative", negative)):
            try:
                ok = cond[0][0].shape[-1] == base.mixture.components
            except (TypeError, IndexError, AttributeError):
                ok = False
            if not ok:
                raise ValueError(f"{where}: {name} must be the {name} output of the same FewStep Analytic "
                                 "Model node")
        if not isinstance(samples, dict) or not isinstance(samples.get("samples"), torch.Tensor):
            raise ValueError(f"{where}: samples must be a LATENT (the sampler's output)")
        x = samples["samples"]
        if not math.isfinite(cfg):
            raise ValueError(f"{where}: cfg must be a finite number, got {cfg}")
        ms = model_sampling_of(model)
        sigma_max = float(ms.sigma_max)
        if sigmas is not None:
            if sigmas.ndim != 1 or len(sigmas) < 2:
                raise ValueError(f"{where}: sigmas must hold at least 2 values, got shape {tuple(sigmas.shape)}")
            s0, s1 = float(sigmas[0]), float(sigmas[-1])
        else:
            s0, s1 = sigma_max, 0.0
        # the sampler's start state, as ComfyUI builds it from the empty latent and the seed
        gen = torch.Generator().manual_seed(int(noise_seed))
        noise = torch.randn(x.shape, dtype=torch.float32, generator=gen)
        max_denoise = math.isclose(sigma_max, s0, rel_tol=1e-05) or s0 > sigma_max
        x_start = ms.noise_scaling(torch.tensor([s0]), noise, torch.zeros_like(noise), max_denoise)
        den = results.cfg_denoiser(base.mixture, base.family, float(cfg))
        try:
            rms, rel, _ = results.exact_error(x, x_start, den, s0, s1, steps=REFERENCE_STEPS)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        report = f"RMS error vs exact: {rms:.3g} ({100 * rel:.2g}% of the solution), sigma {s0:.3g} -> {s1:.3g}"
        return {"ui": {"text": [report]}, "result": (report, rms)}


NODE_CLASS_MAPPINGS = {"FewStepLatentView": FewStepLatentView, "FewStepExactError": FewStepExactError}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepLatentView": "FewStep Latent View",
                              "FewStepExactError": "FewStep Error vs Exact"}
