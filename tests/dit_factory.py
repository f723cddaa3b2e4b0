"""Random-weight tiny DiTs built through ComfyUI's own model classes, for FewStep's DiT patch tests.

``make_dit_patcher(kind, seed)`` -> a ComfyUI ``ModelPatcher`` around the real ``comfy.model_base``
model of ``kind`` (``comfy.supported_models`` config -> ``get_model``): ``flux`` (2 double + 3 single
blocks), ``sd3`` (MMDiT, 4 joint blocks, the last one context pre-only as in SD3), ``wan21`` (Wan 2.1
T2V, 4 blocks), ``pixart`` (PixArt-Sigma, 4 blocks), ``qwen_image`` (4 blocks). Every weight is
initialised explicitly from ``seed`` (ComfyUI layers skip initialisation); zero-initialised output
projections of the real models are not reproduced, so every block matters to the output; the
floating-point buffers ComfyUI leaves empty are filled from ``seed`` too.

``conditioning(kind, seed)`` -> a CONDITIONING list of the right context width (and pooled vector).
"""
from __future__ import annotations

import torch

import unet_factory

CONFIGS = {
    "flux": ("Flux", {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
                      "vec_in_dim": 16, "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
                      "depth": 2, "depth_single_blocks": 3, "axes_dim": [8, 12, 12], "theta": 10000,
                      "qkv_bias": True, "guidance_embed": False}),
    "sd3": ("SD3", {"in_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2, "out_channels": 16,
                    "depth": 4, "input_size": None, "adm_in_channels": 16, "pos_embed_max_size": 16,
                    "context_embedder_config": {"target": "torch.nn.Linear",
                                                "params": {"in_features": 32, "out_features": 256}},
                    "num_patches": 256, "qk_norm": None}),
    "wan21": ("WAN21_T2V", {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 16,
                            "in_dim": 16, "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": 32, "out_dim": 16,
                            "num_heads": 2, "num_layers": 4, "eps": 1e-6, "qk_norm": True, "cross_attn_norm": True}),
    "pixart": ("PixArtSigma", {"image_model": "pixart_sigma", "input_size": 16, "patch_size": 4, "in_channels": 4,
                               "hidden_size": 64, "depth": 4, "num_heads": 2, "caption_channels": 32,
                               "pe_interpolation": 1.0, "micro_condition": False, "model_max_length": 16}),
    "qwen_image": ("QwenImage", {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                                 "num_layers": 4, "attention_head_dim": 32, "num_attention_heads": 2,
                                 "joint_attention_dim": 32, "axes_dims_rope": (8, 12, 12)}),
}
# context width, pooled width (None = no pooled vector), latent shape (without batch)
INPUTS = {
    "flux": (32, 16, (16, 8, 8)),
    "sd3": (32, 16, (16, 8, 8)),
    "wan21": (32, None, (16, 1, 8, 8)),
    "pixart": (32, None, (4, 48, 48)),  # PixArt's position embedding needs (H+W)/2 >= 48
    "qwen_image": (32, None, (16, 1, 8, 8)),
}
KINDS = tuple(CONFIGS)


def make_dit_patcher(kind: str, seed: int = 0):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    if kind not in CONFIGS:
        raise ValueError(f"make_dit_patcher: kind must be one of {KINDS}, got {kind!r}")
    cls_name, cfg = CONFIGS[kind]
    mc = getattr(comfy.supported_models, cls_name)(dict(cfg))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, device="cpu")
    unet_factory.init_weights_(model.diffusion_model, seed, gain=1.0)
    g = torch.Generator().manual_seed(int(seed) + 7)
    with torch.no_grad():  # buffers ComfyUI leaves empty (SD3's pos_embed, PixArt's null caption)
        for _, b in sorted(model.diffusion_model.named_buffers(), key=lambda kv: kv[0]):
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    model.diffusion_model.to(dtype=torch.float32)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def conditioning(kind: str, seed: int = 0, tokens: int = 8):
    ctx, pooled, _ = INPUTS[kind]
    g = torch.Generator().manual_seed(int(seed))
    extra = {}
    if pooled is not None:
        extra["pooled_output"] = torch.randn(1, pooled, generator=g)
    return [[torch.randn(1, tokens, ctx, generator=g), extra]]


def latent(kind: str, batch: int = 1):
    return torch.zeros(batch, *INPUTS[kind][2])
