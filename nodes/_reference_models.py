"""The reference model in ComfyUI's own classes (imported only inside ComfyUI).

* ``build_autoencoder()``: ComfyUI's ``AutoencoderKL`` with the reference configuration
  (``reference/autoencoder.py``), weights initialised from a seed; trainable.
* ``make_vae(state_dict)``: a ``comfy.sd.VAE`` (what VAEDecode/VAEEncode take) built by ComfyUI
  from that configuration and state dict, with its pixel/latent ratio set to 4.
* ``build_base_model(unet_state_dict=None)``: a ``comfy.model_base.BaseModel`` from
  ``comfy.supported_models.SD15(spec.UNET_CONFIG)`` (eps, SD1's discrete schedule), its
  ``diffusion_model`` an ``openaimodel.UNetModel``; ``make_patcher(base)`` wraps it as a MODEL.
* ``conditioning(tokens, index)``: a ComfyUI CONDITIONING list holding one class's token sequence
  (or the null sequence, ``spec.NULL_INDEX``) as the cross-attention context.
"""
from __future__ import annotations

import torch

import comfy.ldm.models.autoencoder
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models

from ..reference import autoencoder as ae_spec
from ..reference import spec
from ..reference.training import init_weights_


def build_autoencoder(seed: int = 0):
    cfg = ae_spec.vae_config()["params"]
    ae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=cfg["ddconfig"], embed_dim=cfg["embed_dim"])
    return init_weights_(ae, seed)


def make_vae(state_dict: dict, device=None):
    """``comfy.sd.VAE`` of the reference autoencoder (ComfyUI builds ``AutoencoderKL`` from the
    config and loads the state dict; missing keys raise)."""
    expected = set(build_autoencoder_keys())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"reference VAE weights do not fit the reference autoencoder: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    vae = comfy.sd.VAE(sd=dict(state_dict), config=ae_spec.vae_config(), device=device)
    vae.downscale_ratio = ae_spec.DOWNSCALE
    vae.upscale_ratio = ae_spec.DOWNSCALE
    vae.latent_channels = ae_spec.LATENT_CHANNELS
    # ComfyUI's estimates are sized for the 128-channel SD VAE; this one needs far less
    vae.memory_used_encode = lambda shape, dtype: (200 * shape[2] * shape[3]) * comfy.model_management.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: (200 * shape[2] * shape[3] * 16) * comfy.model_management.dtype_size(dtype)
    return vae


_AE_KEYS = None


def build_autoencoder_keys():
    global _AE_KEYS
    if _AE_KEYS is None:
        cfg = ae_spec.vae_config()["params"]
        with torch.device("meta"):
            ae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=cfg["ddconfig"], embed_dim=cfg["embed_dim"])
        _AE_KEYS = tuple(ae.state_dict().keys())
    return _AE_KEYS


def model_config():
    return comfy.supported_models.SD15(spec.unet_config())


def build_base_model(unet_state_dict: dict | None = None, seed: int = 0, dtype=torch.float32, device=None):
    """The reference ``BaseModel``. ``unet_state_dict``: the UNet's weights with or without the
    checkpoint prefix ``model.diffusion_model.``; None: weights initialised from ``seed``
    (output convolution at zero, as for a diffusion UNet being trained)."""
    cfg = model_config()
    cfg.set_inference_dtype(dtype, None)
    device = device if device is not None else comfy.model_management.get_torch_device()
    base = cfg.get_model({}, device=device)
    unet = base.diffusion_model
    if unet_state_dict is None:
        init_weights_(unet, seed, zero=("out.2.",))
    else:
        sd = {(k[len(spec.UNET_PREFIX):] if k.startswith(spec.UNET_PREFIX) else k): v
              for k, v in unet_state_dict.items() if not k.startswith("fewstep.")}
        missing, unexpected = unet.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"reference UNet weights do not fit the reference UNet: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    unet.to(device=device, dtype=dtype)
    return base


def make_patcher(base):
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _pytorch_attention(func, *args, **kwargs):
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def pytorch_attention_options() -> dict:
    """``transformer_options`` that make the UNet's attention layers use PyTorch's
    ``scaled_dot_product_attention`` (ComfyUI's ``optimized_attention_override`` hook). On the CPU
    ComfyUI otherwise picks its sub-quadratic attention, which computes the same function several
    times slower for these short sequences (and far slower in backward)."""
    return {"optimized_attention_override": _pytorch_attention}


def with_pytorch_attention(patcher):
    """A clone of the MODEL whose attention uses ``pytorch_attention_options``."""
    m = patcher.clone()
    to = m.model_options.setdefault("transformer_options", {})
    to.update(pytorch_attention_options())
    return m


def conditioning(tokens: torch.Tensor, index: int, batch: int = 1):
    """CONDITIONING with class ``index``'s token sequence (``spec.NULL_INDEX``: the null one)."""
    ctx = tokens[int(index)].detach().to(torch.float32)[None].repeat(batch, 1, 1)
    return [[ctx, {}]]
