"""FreeU (Si et al., "FreeU: Free Lunch in Diffusion U-Net", CVPR 2024) as a FewStep patch.

In the first two decoder stages of the UNet (recognised, as in the authors' code, by the width of
the main-branch feature: 4x and 2x the base channel count) FreeU
* scales the first half of the backbone (main-branch) channels by ``b`` (version 1), or by
  ``1 + (b - 1) * m`` where ``m`` is the channel-mean of the feature min-max normalised over each
  image (version 2, the authors' structure-aware update);
* scales the lowest frequencies of the skip feature (the 2x2 block around DC of its 2-D spectrum)
  by ``s``.

With ``start_percent``/``end_percent`` it acts only on the steps whose sigma lies in that window.
The FFT runs on the model's device; a device without FFT support falls back to the CPU (once
noticed, the fallback is remembered for that device).
"""
from __future__ import annotations

import logging

import torch

from . import _run
from ._unet import require_unet

log = logging.getLogger("FewStep")

KEY = "fewstep_freeu"
RUN_KEY = "fewstep_freeu_run"

# the FreeU authors' recommended values (b1, b2, s1, s2), from their demo app
PRESETS = {
    "SD1.4": (1.3, 1.4, 0.9, 0.2),
    "SD1.5": (1.5, 1.6, 0.9, 0.2),
    "SD2.1": (1.4, 1.6, 0.9, 0.2),
    "SDXL": (1.3, 1.4, 0.9, 0.2),
}

_NO_FFT_DEVICES: set = set()


def _lowfreq_scale_spectrum(x: torch.Tensor, s: float) -> torch.Tensor:
    """Real part of the inverse FFT of x's 2-D spectrum with its 2x2 block around DC (frequencies
    0 and -1 on each axis, i.e. the centre block of the shifted spectrum) multiplied by s."""
    spec = torch.fft.fftn(x.float(), dim=(-2, -1))
    h, w = spec.shape[-2:]
    rows = [0] if h == 1 else [0, h - 1]
    cols = [0] if w == 1 else [0, w - 1]
    for r in rows:
        for c in cols:
            spec[..., r, c] *= s
    return torch.fft.ifftn(spec, dim=(-2, -1)).real.to(x.dtype)


def skip_filter(x: torch.Tensor, s: float) -> torch.Tensor:
    if x.device not in _NO_FFT_DEVICES:
        try:
            return _lowfreq_scale_spectrum(x, s)
        except (RuntimeError, NotImplementedError) as e:
            _NO_FFT_DEVICES.add(x.device)
            log.warning("FewStepFreeU: %s has no usable FFT (%s); using the CPU for FreeU's filter", x.device, e)
    return _lowfreq_scale_spectrum(x.cpu(), s).to(x.device)


def backbone_scale(h: torch.Tensor, b: float, version: int) -> torch.Tensor:
    half = h.shape[1] // 2
    head = h[:, :half]
    if version == 1:
        factor = b
    else:
        m = h.mean(1, keepdim=True)
        flat = m.reshape(m.shape[0], -1)
        lo = flat.min(dim=-1, keepdim=True).values[..., None, None]
        hi = flat.max(dim=-1, keepdim=True).values[..., None, None]
        m = (m - lo) / (hi - lo)
        factor = (b - 1) * m + 1
    return torch.cat([head * factor, h[:, half:]], dim=1)  # new tensor: never edits a cached feature


class FreeURun(_run.RunState):
    def __init__(self, settings, sigmas, model_sampling):
        super().__init__(sigmas, model_sampling)
        self.settings = settings
        self.window = self.percent_window(settings["start_percent"], settings["end_percent"])
        self.applied = 0
        self.passed = 0

    def active(self) -> bool:
        if not self.window:
            return True
        return self.window[min(self.step, len(self.window) - 1)]

    def summary(self):
        s = self.settings
        steps_on = sum(self.window)
        return (f"FreeU v{s['version']} (b1={s['b1']}, b2={s['b2']}, s1={s['s1']}, s2={s['s2']}) active on "
                f"{steps_on}/{self.total_steps} steps; re-weighted {self.applied} decoder-stage features, "
                f"left {self.passed} untouched outside the window")


def apply_freeu(model, version: int, b1: float, b2: float, s1: float, s2: float,
                start_percent: float = 0.0, end_percent: float = 1.0):
    """A clone of ``model`` with FreeU; a FreeU patch of ours already on it is replaced, not stacked."""
    unet = require_unet(model, "FewStepFreeU")
    if version not in (1, 2):
        raise ValueError(f"FewStepFreeU: version must be 1 or 2, got {version!r}")
    for name, v in (("b1", b1), ("b2", b2), ("s1", s1), ("s2", s2)):
        if not (0.0 <= float(v) <= 10.0):
            raise ValueError(f"FewStepFreeU: {name} must be in [0, 10], got {v}")
    if not (0.0 <= start_percent <= end_percent <= 1.0):
        raise ValueError(f"FewStepFreeU: need 0 <= start_percent <= end_percent <= 1, got "
                         f"start_percent={start_percent}, end_percent={end_percent}")
    mc = int(unet.model_channels)
    stages = {4 * mc: (float(b1), float(s1)), 2 * mc: (float(b2), float(s2))}
    mults = getattr(getattr(model.model, "model_config", None), "unet_config", {}).get("channel_mult")
    if mults and not any(mc * int(k) in stages for k in mults):
        log.warning("FewStepFreeU: this UNet (%d base channels) has no decoder stage of %d or %d channels, so "
                    "FreeU changes nothing on it", mc, 2 * mc, 4 * mc)
    settings = dict(version=int(version), b1=b1, b2=b2, s1=s1, s2=s2,
                    start_percent=float(start_percent), end_percent=float(end_percent))
    full_window = start_percent <= 0.0 and end_percent >= 1.0

    def output_block_patch(h, hsp, transformer_options):
        stage = stages.get(int(h.shape[1]))
        if stage is None:
            return h, hsp
        run = transformer_options.get(RUN_KEY)
        if run is not None and not full_window and not run.active():
            run.passed += 1
            return h, hsp
        if run is not None:
            run.applied += 1
        b, s = stage
        return backbone_scale(h, b, version), skip_filter(hsp, s)

    m = model.clone()
    _run.replace_patch(m, "output_block_patch", KEY, output_block_patch)
    _run.install(m, KEY, RUN_KEY, lambda sigmas, ms: FreeURun(settings, sigmas, ms), "FewStepFreeU")
    return m
