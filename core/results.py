"""Showing a result: a latent as a picture, and a sample's distance from the exact ODE solution.

``latent_to_image`` is a visualisation, not a VAE: a fixed linear map of the four latent channels to
RGB (channel 0 -> red, 1 -> green, 2 -> blue, channel 3 lightens or darkens all three), a fixed value
range mapped to [0, 1], and nearest-neighbour upsampling so each latent pixel is a visible block.
The same latent always gives the same picture, so pictures of two runs can be compared by eye.

``exact_error`` compares a sampled latent with the analytic model's exact probability-flow ODE
solution from the same starting state (``core.analytic.reference_solve``).
"""
from __future__ import annotations

import math

import torch

from .analytic import cfg_denoiser, reference_solve  # noqa: F401  (cfg_denoiser: re-exported for the nodes)

#: RGB rows of the channel map (3 x 4); channel 3 moves all three colours together
CHANNEL_TO_RGB = ((1.0, 0.0, 0.0, 0.5),
                  (0.0, 1.0, 0.0, 0.5),
                  (0.0, 0.0, 1.0, 0.5))
CHANNELS = 4
MAX_SIDE = 8192


def latent_to_image(samples: torch.Tensor, scale: int = 16, value_range: float = 2.0) -> torch.Tensor:
    """[B, 4, H, W] latent -> [B, H*scale, W*scale, 3] float32 image in [0, 1] (ComfyUI IMAGE layout).

    A latent value of ``-value_range`` maps to 0 and ``+value_range`` to 1 (after the channel map)."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError(f"samples: expected a [batch, {CHANNELS}, height, width] latent, got "
                         f"{tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__}")
    if samples.shape[1] != CHANNELS:
        raise ValueError(f"samples: this view maps {CHANNELS} latent channels to RGB; the latent has "
                         f"{samples.shape[1]} (shape {tuple(samples.shape)})")
    scale = int(scale)
    if not 1 <= scale <= 64:
        raise ValueError(f"scale must be in [1, 64], got {scale}")
    if not (value_range > 0 and math.isfinite(value_range)):
        raise ValueError(f"value_range must be a finite number > 0, got {value_range}")
    side = max(samples.shape[2], samples.shape[3]) * scale
    if side > MAX_SIDE:
        raise ValueError(f"scale {scale} makes a {side}-pixel image (at most {MAX_SIDE}); lower scale")
    x = samples.detach().to(torch.float32).cpu()
    m = torch.tensor(CHANNEL_TO_RGB, dtype=torch.float32)
    rgb = torch.einsum("rc,bchw->brhw", m, x)
    rgb = ((rgb / float(value_range)) + 1.0) * 0.5
    rgb = torch.nan_to_num(rgb, nan=0.0).clamp(0.0, 1.0)
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return rgb.permute(0, 2, 3, 1).contiguous()




def exact_error(sample: torch.Tensor, x_start: torch.Tensor, denoiser, sigma_start: float,
                sigma_end: float = 0.0, steps: int = 500):
    """(rms, relative rms, exact solution) of ``sample`` against the ODE solution of ``denoiser``
    from state ``x_start`` at ``sigma_start`` down to ``sigma_end`` (RK4, ``steps`` steps, float64)."""
    if tuple(sample.shape) != tuple(x_start.shape):
        raise ValueError(f"samples has shape {tuple(sample.shape)}, but the start state has {tuple(x_start.shape)}")
    if not (sigma_start > 0 and math.isfinite(sigma_start)):
        raise ValueError(f"the first sigma must be a finite number > 0, got {sigma_start}")
    if not 0 <= sigma_end < sigma_start:
        raise ValueError(f"the last sigma must be in [0, {sigma_start}), got {sigma_end}")
    exact = reference_solve(denoiser, x_start.to(torch.float64), float(sigma_start), float(sigma_end), steps=steps)
    diff = sample.detach().to(torch.float64).cpu() - exact
    rms = float(diff.pow(2).mean().sqrt())
    scale = float(exact.pow(2).mean().sqrt())
    return rms, (rms / scale if scale > 0 else float("inf")), exact
