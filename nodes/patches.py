"""FewStepDeepCache, FewStepTGate, FewStepFreeU: MODEL in, patched clone out (see patches/)."""
from ..patches.deepcache import MODES, apply_deepcache
from ..patches.freeu import PRESETS, apply_freeu
from ..patches.tgate import apply_tgate
from .common import outputs

CATEGORY = "sampling/fewstep/patches"


class _PatchNode:
    """What every patch node shares: MODEL in, a patched copy out. A subclass names its PATCH."""
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    PATCH = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.RETURN_TYPES, cls.RETURN_NAMES, cls.OUTPUT_TOOLTIPS = outputs(
            ("MODEL", "model", f"A copy of the model with {cls.PATCH}; the input model is unchanged."))


class FewStepDeepCache(_PatchNode):
    DESCRIPTION = ("DeepCache: on full steps the whole UNet runs and its deep feature is cached; on the steps "
                   "in between only the shallow blocks run, reusing that feature. About N times fewer full "
                   "UNet passes for cache_interval N. UNets (SD1.x, SD2.x, SDXL, SVD) and DiTs (Flux, SD3/SD3.5, "
                   "Wan 2.x, Qwen-Image): on a DiT the first and last blocks run every step and the middle blocks' "
                   "residual is reused on cached steps. PixArt is refused (it has no block hook).")
    PATCH = "DeepCache"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A UNet model (SD1.x, SD2.x, SDXL, SVD) or a DiT (Flux, SD3/SD3.5, "
                                "Wan 2.x, Qwen-Image)."}),
            "cache_interval": ("INT", {"default": 3, "min": 1, "max": 1000, "tooltip":
                               "N: one full UNet pass every N steps, cached passes in between. 1 = no caching."}),
            "cache_depth": ("INT", {"default": 0, "min": 0, "max": 11, "tooltip":
                            "Which skip branch is recomputed on cached steps: 0 = the shallowest (fastest, the "
                            "paper's choice); higher recomputes more blocks (closer to the uncached result). "
                            "At most 11 for SD1.x/2.x, 8 for SDXL. UNets only; ignored on DiTs (see "
                            "dit_leading_blocks / dit_trailing_blocks)."}),
            "mode": (list(MODES), {"default": "uniform", "tooltip":
                     "uniform: full pass every N steps. non-uniform: the paper's 1:N schedule with the same "
                     "number of full passes, denser around the centre step."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                              "Cache only from this point of the sampling (0 = from the start)."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                            "Cache only up to this point of the sampling (1 = to the end)."}),
        }, "optional": {
            "center": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                       "non-uniform mode: centre of the dense full passes, as a fraction of the steps."}),
            "power": ("FLOAT", {"default": 1.4, "min": 1.01, "max": 4.0, "step": 0.01, "tooltip":
                      "non-uniform mode: how fast the full passes thin out away from the centre."}),
            "dit_leading_blocks": ("INT", {"default": 1, "min": 0, "max": 200, "tooltip":
                                   "DiTs only: how many of the first transformer blocks run on every step (Flux "
                                   "counts its double blocks, then its single blocks). The blocks between the "
                                   "leading and trailing ones are skipped on cached steps. Ignored on UNets "
                                   "(cache_depth applies there)."}),
            "dit_trailing_blocks": ("INT", {"default": 1, "min": 0, "max": 200, "tooltip":
                                    "DiTs only: how many of the last transformer blocks run on every step. "
                                    "Leading + trailing must leave at least one block to cache. Ignored on "
                                    "UNets."}),
        }}

    def patch(self, model, cache_interval, cache_depth, mode, start_percent, end_percent, center=0.3, power=1.4,
              dit_leading_blocks=1, dit_trailing_blocks=1):
        return (apply_deepcache(model, cache_interval, cache_depth, mode, start_percent, end_percent, center, power,
                                dit_leading_blocks, dit_trailing_blocks),)


class FewStepTGate(_PatchNode):
    DESCRIPTION = ("T-GATE: after the gate step, cross-attention output is cached (mean of cond and uncond) and "
                   "reused, and the unconditional batch is dropped from the model call. Before the gate nothing "
                   "changes. UNets; on DiTs the uncond drop applies everywhere (Flux, SD3/SD3.5, Wan 2.x, PixArt, "
                   "Qwen-Image) and cross-attention caching where the model has a hookable text cross-attention "
                   "(Wan 2.x); joint-attention models (Flux, SD3, Qwen-Image) have none to cache.")
    PATCH = "T-GATE"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A UNet model (SD1.x, SD2.x, SDXL) or a DiT (Flux, SD3/SD3.5, Wan 2.x, "
                                "PixArt, Qwen-Image)."}),
            "gate_percent": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                             "Fraction of the steps run unchanged; from there on cross-attention is cached and "
                             "CFG's unconditional pass is skipped. 1.0 = never gate (no change)."}),
            "self_attn_cache": ("BOOLEAN", {"default": False, "tooltip":
                                "After the gate, also reuse self-attention output on every other step "
                                "(T-GATE v2). Faster, slightly further from the unpatched result. UNets only; "
                                "ignored on DiTs."}),
        }}

    def patch(self, model, gate_percent, self_attn_cache):
        return (apply_tgate(model, gate_percent, self_attn_cache),)


class FewStepFreeU(_PatchNode):
    DESCRIPTION = ("FreeU: re-weights the UNet decoder's backbone features (b) and damps the low frequencies "
                   "of its skip features (s) in the first two decoder stages. Version 2 scales the backbone "
                   "by a structure-aware map. Presets are the FreeU authors' recommended values.")
    PATCH = "FreeU"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A UNet model (SD1.x, SD2.x, SDXL)."}),
            "version": ("INT", {"default": 2, "min": 1, "max": 2, "tooltip":
                        "1: constant backbone factor. 2: backbone factor modulated by the feature's normalised "
                        "channel mean (FreeU v2)."}),
            "b1": ("FLOAT", {"default": 1.3, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                   "Backbone factor of the deepest decoder stage (used when preset is custom)."}),
            "b2": ("FLOAT", {"default": 1.4, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                   "Backbone factor of the second decoder stage (used when preset is custom)."}),
            "s1": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                   "Low-frequency factor of the deepest stage's skip feature (used when preset is custom)."}),
            "s2": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                   "Low-frequency factor of the second stage's skip feature (used when preset is custom)."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                              "Apply FreeU from this point of the sampling."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                            "Apply FreeU up to this point of the sampling."}),
            "preset": (["custom", *PRESETS], {"default": "custom", "tooltip":
                       "The FreeU authors' recommended b1, b2, s1, s2 for a base model; custom uses the "
                       "sliders. " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items())}),
        }}

    def patch(self, model, version, b1, b2, s1, s2, start_percent, end_percent, preset):
        if preset != "custom":
            if preset not in PRESETS:
                raise ValueError(f"FewStepFreeU: preset must be one of {['custom', *PRESETS]}, got {preset!r}")
            b1, b2, s1, s2 = PRESETS[preset]
        return (apply_freeu(model, int(version), b1, b2, s1, s2, start_percent, end_percent),)


NODE_CLASS_MAPPINGS = {
    "FewStepDeepCache": FewStepDeepCache,
    "FewStepTGate": FewStepTGate,
    "FewStepFreeU": FewStepFreeU,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewStepDeepCache": "FewStep DeepCache",
    "FewStepTGate": "FewStep T-GATE",
    "FewStepFreeU": "FewStep FreeU",
}
