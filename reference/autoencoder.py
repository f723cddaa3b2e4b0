"""The reference model's latent space: the configuration of its autoencoder and the latent
normalisation folded into its weights. Plain torch; ComfyUI builds the network (see
``nodes/_reference_models.py``).

Architecture: ComfyUI's own SD-style ``AutoencoderKL`` (``comfy.ldm.models.autoencoder``, with
``Encoder``/``Decoder`` from ``comfy.ldm.modules.diffusionmodules.model``) at reduced width:
``ch`` 32, ``ch_mult`` (1, 1, 2) (two stride-2 stages: 32x32x3 -> 4x8x8, a real x4 spatial
downsampling), one res block per level, the usual mid block with self-attention, a diagonal
Gaussian posterior (``double_z``) and 1x1 ``quant_conv``/``post_quant_conv``. 0.73 M parameters.

Why this one: ComfyUI's ``comfy.sd.VAE`` detects SD autoencoders from a state dict only at full
width (``ch`` 128, 30-80 M parameters, far too slow to train on two CPU cores and over the size
budget) and TAESD only at x8 (a 32x32 image would give 4x4 latents). ``comfy.sd.VAE(sd=...,
config={"params": {"ddconfig": ..., "embed_dim": 4}})`` builds this small ``AutoencoderKL`` with
ComfyUI's own classes; only its pixel/latent ratio (8 by default) is set to 4 afterwards.

Latent scale: the diffusion model is a ``comfy.supported_models.SD15`` model, so ComfyUI multiplies
VAE latents by SD1.5's 0.18215 before the UNet. ``fold_latent_normalisation`` rewrites
``quant_conv`` and ``post_quant_conv`` so that the VAE's latents are ``(z - mean) / std / 0.18215``
per channel (z: the trained encoder's posterior mean) and decoding undoes it exactly: the UNet sees
zero-mean, unit-variance latents, and VAEEncode -> VAEDecode is unchanged.
"""
from __future__ import annotations

import torch

SD15_SCALE_FACTOR = 0.18215  # comfy.latent_formats.SD15.scale_factor
LATENT_CHANNELS = 4
DOWNSCALE = 4
EMBED_DIM = 4

DDCONFIG = {
    "double_z": True, "z_channels": LATENT_CHANNELS, "resolution": 32, "in_channels": 3, "out_ch": 3,
    "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


def vae_config() -> dict:
    """The ``config`` argument of ``comfy.sd.VAE`` for this autoencoder."""
    return {"params": {"ddconfig": dict(DDCONFIG, ch_mult=list(DDCONFIG["ch_mult"])), "embed_dim": EMBED_DIM}}


def fold_latent_normalisation(state_dict: dict, mean: torch.Tensor, std: torch.Tensor,
                              scale_factor: float = SD15_SCALE_FACTOR) -> dict:
    """A copy of an ``AutoencoderKL`` state dict whose encoder's posterior mean is
    ``(z - mean) / (std * scale_factor)`` per latent channel and whose decoder maps that back to
    what the original decoder got. ``mean``/``std``: (C,) statistics of the original posterior mean
    over data. The posterior log-variance moves by ``-2 log(std * scale_factor)`` to match."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    c = mean.numel()
    if std.numel() != c or not torch.all(std > 0):
        raise ValueError("fold_latent_normalisation: mean and std must have one entry per latent channel, std > 0")
    k = std * scale_factor  # z_new = (z - mean) / k
    w, b = sd["quant_conv.weight"].double(), sd["quant_conv.bias"].double()  # (2C, 2C', 1, 1)
    if w.shape[0] != 2 * c:
        raise ValueError(f"fold_latent_normalisation: quant_conv has {w.shape[0]} outputs, expected {2 * c}")
    w[:c] = w[:c] / k[:, None, None, None]
    b[:c] = (b[:c] - mean) / k
    b[c:] = b[c:] - 2 * torch.log(k)
    sd["quant_conv.weight"], sd["quant_conv.bias"] = w.float(), b.float()
    pw, pb = sd["post_quant_conv.weight"].double(), sd["post_quant_conv.bias"].double()  # (C', C, 1, 1)
    # post(z) = W z + b with z = k z_new + mean  ->  (W k) z_new + (W mean + b)
    pb = pb + (pw[:, :, 0, 0] @ mean)
    pw = pw * k[None, :, None, None]
    sd["post_quant_conv.weight"], sd["post_quant_conv.bias"] = pw.float(), pb.float()
    return sd
