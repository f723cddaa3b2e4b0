"""Random-weight UNets built through ComfyUI, for FewStep's patch tests and benchmarks.

* ``make_unet_patcher(kind, seed)`` -> a ComfyUI ``ModelPatcher`` around a real ``comfy.model_base``
  SD1.5 model (``comfy.supported_models.SD15`` config, ``openaimodel.UNetModel``):
  ``"sd15"`` has SD1.5's full size (320 channels, mult 1,2,4,4, 2 res blocks, 860M params);
  ``"tiny"`` has the same block structure at 32 channels (FreeU's 2x/4x channel levels exist, so
  every patch has something to act on); ``"tiny_v"`` is the tiny one as a v-prediction model (SD2.x
  style, linear transformer projections).
* ``write_tiny_checkpoint(path)`` -> a full ``.safetensors`` checkpoint that ComfyUI's
  ``CheckpointLoaderSimple`` detects as SD1.5: a small UNet in SD1.5 key layout (320 channels and a
  768-wide context are what the detector keys on, so the UNet keeps those and is shallow instead),
  a CLIP-L text encoder with random weights (its size is fixed by ComfyUI's config) and a TAESD VAE.
  Written atomically into a temporary models folder; never committed.

ComfyUI's layers skip weight initialisation, so every weight is initialised here explicitly from
``seed`` (fan-in scaled normal for convolutions and linear layers, unit norms, zero biases).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


def tiny_unet_config(v_pred: bool = False) -> dict:
    cfg = dict(SD15_UNET)
    cfg.update(model_channels=32, context_dim=64)
    if v_pred:
        cfg.update(use_linear_in_transformer=True, num_head_channels=8, num_heads=-1)
    return cfg


# checkpoint UNet: SD1.5 detection needs model_channels 320 and context_dim 768; one level, one res
# block, one transformer keeps it at ~25M parameters.
CKPT_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "channel_mult": [1], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "use_temporal_resblock": False, "use_temporal_attention": False,
}


def init_weights_(module: torch.nn.Module, seed: int = 0, gain: float = 1.0) -> torch.nn.Module:
    """Deterministic explicit initialisation of every parameter (ComfyUI layers leave them empty)."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2:
                p.normal_(0.0, gain / math.sqrt(p[0].numel()), generator=g)
            elif leaf == "weight" or name.endswith("vae_scale"):
                p.fill_(1.0)
            elif p.ndim == 1 and "embedding" in name:
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.normal_(0.0, 0.01, generator=g)
        for name, b in module.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    return module


def _config_for(kind: str) -> tuple[dict, str]:
    if kind == "sd15":
        return dict(SD15_UNET), "eps"
    if kind == "tiny":
        return tiny_unet_config(), "eps"
    if kind == "tiny_v":
        return tiny_unet_config(v_pred=True), "v"
    raise ValueError(f"make_unet_patcher: kind must be 'sd15', 'tiny' or 'tiny_v', got {kind!r}")


def make_unet_patcher(kind: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ComfyUI ``ModelPatcher`` around an SD1.5-layout UNet model with random weights (see module
    doc). Built with ComfyUI's own model classes, on ComfyUI's torch device."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    cfg, pred = _config_for(kind)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(dtype, None)
    device = comfy.model_management.get_torch_device()
    if pred == "v":
        model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION,
                                           device=device)
    else:
        model = model_config.get_model({}, device=device)
    init_weights_(model.diffusion_model, seed)
    model.diffusion_model.to(device=device, dtype=dtype)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def conditioning(context_dim: int, seed: int = 0, batch: int = 1, tokens: int = 77, scale: float = 1.0):
    """A ComfyUI CONDITIONING list with a random cross-attention context (a stand-in for a prompt)."""
    g = torch.Generator().manual_seed(int(seed))
    return [[torch.randn(batch, tokens, context_dim, generator=g) * scale, {}]]


# ------------------------------------------------------------------------------------------------
# a checkpoint file ComfyUI detects as SD1.5
def _unet_state_dict(cfg: dict, seed: int) -> dict:
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
    import comfy.ops

    kw = dict(cfg)
    kw.update(num_heads=8, num_head_channels=-1)
    unet = om.UNetModel(**kw, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights_(unet, seed)
    return {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}


def _clip_state_dict(seed: int) -> dict:
    import comfy.sd1_clip

    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float16)
    init_weights_(clip, seed + 1, gain=0.5)
    out = {}
    for k, v in clip.state_dict().items():
        if not k.startswith("clip_l."):
            continue
        out["cond_stage_model." + k[len("clip_l."):]] = v
    return out


def _taesd_state_dict(seed: int) -> dict:
    import comfy.taesd.taesd as taesd

    vae = taesd.TAESD(latent_channels=4)
    init_weights_(vae, seed + 2)
    return {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}


def write_tiny_checkpoint(path, seed: int = 0) -> Path:
    """Write (atomically) a small SD1.5-detectable checkpoint with random weights. Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {}
    sd.update(_unet_state_dict(CKPT_UNET, seed))
    sd.update(_clip_state_dict(seed))
    sd.update(_taesd_state_dict(seed))
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(sd, str(tmp), metadata={"fewstep": "random-weight test checkpoint (SD1.5 layout)"})
    os.replace(tmp, path)
    return path
