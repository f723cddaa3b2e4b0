"""DeepCache (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024).

A UNet's deep features change slowly from step to step. On a *full* step the whole UNet runs and
the main-branch feature entering output block ``n-1-depth`` is cached. On a *cached* step only the
time embedding, input blocks ``0..depth``, output blocks ``n-1-depth..n-1`` and the output head run;
the cached deep feature stands in for everything deeper (``depth`` 0 = the shallowest skip branch,
the paper's choice for Stable Diffusion).

Which steps are full:
* ``uniform``: every ``cache_interval``-th step (1:N);
* ``non-uniform``: the paper's 1:N schedule, denser around a centre step ``c`` with power ``p``:
  ``l = linspace(-c^(1/p), (T-c)^(1/p), k)``, full steps ``= unique(int(sign(l)|l|^p + c))`` with
  ``k = ceil(T/N)`` (``p`` is lowered in steps of 0.02 until k distinct steps come out, as the authors
  do); step 0 is always full.
Outside ``[start_percent, end_percent]`` every step is full.

The cache is per sampling run and per conditioning chunk (ComfyUI's cond uuid), so CFG's cond and
uncond, area conds, batch > 1 and differently sized latents each reuse their own feature; a chunk
with no usable cached feature (first step, new size) simply runs in full.
"""
from __future__ import annotations

import math

import numpy as np
import torch

import comfy.patcher_extension as pe

from . import _run
from ._unet import UNetLayout, forward_shallow, require_unet, unpack_forward_args

KEY = "fewstep_deepcache"
RUN_KEY = "fewstep_deepcache_run"
MODES = ("uniform", "non-uniform")


def full_steps(total: int, interval: int, mode: str = "uniform", center: float = 0.3, power: float = 1.4) -> list[int]:
    """Sorted indices of the full (uncached) steps among ``total`` steps."""
    if total <= 0:
        return []
    if interval <= 1:
        return list(range(total))
    if mode == "uniform":
        return list(range(0, total, interval))
    k = math.ceil(total / interval)
    c = float(center) * total
    p = float(power)
    while p > 1.0:
        a = -(c ** (1.0 / p))
        b = (total - c) ** (1.0 / p)
        ls = np.linspace(a, b, k, endpoint=False)
        idx = np.sign(ls) * np.abs(ls) ** p + c
        steps = sorted({0} | {int(v) for v in idx if 0 <= int(v) < total})
        if len(steps) == k:
            return steps
        p -= 0.02
    return list(range(0, total, interval))


class DeepCacheRun(_run.RunState):
    def __init__(self, settings, sigmas, model_sampling):
        super().__init__(sigmas, model_sampling)
        self.settings = settings
        window = self.percent_window(settings["start_percent"], settings["end_percent"])
        full = set(full_steps(self.total_steps, settings["cache_interval"], settings["mode"],
                              settings["center"], settings["power"]))
        self.cached_step = [window[i] and i not in full for i in range(self.total_steps)]
        self.cache = {}  # uuid -> (input chunk shape, deep feature chunk)
        self.full_calls = 0
        self.cached_calls = 0
        self.fallback_calls = 0
        self.cache_bytes = 0
        self.peak_cache_bytes = 0

    def is_cached_step(self) -> bool:
        return self.step < self.total_steps and self.cached_step[self.step]

    def caching_ahead(self) -> bool:
        return any(self.cached_step[self.step + 1:])

    def lookup(self, uuids, x):
        per = x.shape[0] // len(uuids)
        parts = []
        for u in uuids:
            hit = self.cache.get(u)
            if hit is None or hit[0] != (per, *x.shape[1:]):
                return None
            parts.append(hit[1])
        return torch.cat(parts, dim=0)  # always a new tensor: patches may edit h in place

    def store(self, uuids, x, deep):
        per = x.shape[0] // len(uuids)
        for i, u in enumerate(uuids):
            self.cache[u] = ((per, *x.shape[1:]), deep[i * per:(i + 1) * per])
        size = deep.numel() * deep.element_size()
        self.cache_bytes = sum(v[1].numel() * v[1].element_size() for v in self.cache.values())
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes, size)

    def summary(self):
        s = self.settings
        calls = self.full_calls + self.cached_calls
        speed = f"{calls / max(self.full_calls, 1):.2f}x fewer full passes" if calls else "no model calls"
        msg = (f"DeepCache (interval {s['cache_interval']}, depth {s['cache_depth']}, {s['mode']}): "
               f"{self.full_calls} full and {self.cached_calls} cached UNet calls over {self.total_steps} steps "
               f"({speed}); cache peak {self.peak_cache_bytes / 2**20:.2f} MiB")
        if self.fallback_calls:
            msg += f"; {self.fallback_calls} calls on cached steps ran in full (no cached feature of that size yet)"
        if self.total_steps > 1 and self.steps_seen == 0 and any(self.cached_step):
            msg += "; the sampler reported no steps (no callback), so every call ran in full"
        self.cache.clear()
        return msg


def apply_deepcache(model, cache_interval: int = 3, cache_depth: int = 0, mode: str = "uniform",
                    start_percent: float = 0.0, end_percent: float = 1.0, center: float = 0.3, power: float = 1.4):
    """A clone of ``model`` with DeepCache (replacing an earlier DeepCache of ours)."""
    unet = require_unet(model, "FewStepDeepCache")
    layout = UNetLayout(unet)
    if not (1 <= int(cache_interval) <= 1000):
        raise ValueError(f"FewStepDeepCache: cache_interval must be in [1, 1000], got {cache_interval}")
    if not (0 <= int(cache_depth) <= layout.max_depth):
        raise ValueError(f"FewStepDeepCache: cache_depth must be in [0, {layout.max_depth}] for this model "
                         f"({layout.n_in} input blocks), got {cache_depth}")
    if mode not in MODES:
        raise ValueError(f"FewStepDeepCache: mode must be one of {MODES}, got {mode!r}")
    if not (0.0 <= start_percent <= end_percent <= 1.0):
        raise ValueError(f"FewStepDeepCache: need 0 <= start_percent <= end_percent <= 1, got "
                         f"start_percent={start_percent}, end_percent={end_percent}")
    if not (0.0 <= center <= 1.0):
        raise ValueError(f"FewStepDeepCache: center must be in [0, 1], got {center}")
    if not (1.0 < power <= 4.0):
        raise ValueError(f"FewStepDeepCache: power must be in (1, 4], got {power}")
    depth = int(cache_depth)
    entry = layout.entry_block(depth)
    settings = dict(cache_interval=int(cache_interval), cache_depth=depth, mode=mode, center=float(center),
                    power=float(power), start_percent=float(start_percent), end_percent=float(end_percent))

    def diffusion_model_wrapper(executor, *args, **kwargs):
        x, t, context, y, control, to, extra = unpack_forward_args(args, kwargs)
        run = to.get(RUN_KEY)
        uuids = to.get("uuids") or []
        if run is None or not uuids or x.shape[0] % len(uuids):
            return executor(*args, **kwargs)
        if run.is_cached_step():
            deep = run.lookup(uuids, x)
            if deep is not None:
                run.cached_calls += 1
                return forward_shallow(executor.class_obj, layout, depth, deep, x, t, context, y, control, to, extra)
            run.fallback_calls += 1
        run.full_calls += 1
        if not run.caching_ahead():
            return executor(*args, **kwargs)

        captured = []
        old = to.get("patches")
        later = list((old or {}).get("output_block_patch", []))

        def capture(h, hsp, topts):
            if topts.get("block") == ("output", entry):
                captured.append(h.clone() if later else h)
            return h, hsp

        new = dict(old or {})
        new["output_block_patch"] = [capture] + later
        to["patches"] = new
        try:
            out = executor(*args, **kwargs)
        finally:
            if old is None:
                to.pop("patches", None)
            else:
                to["patches"] = old
        if captured:
            run.store(uuids, x, captured[-1])
        return out

    m = model.clone()
    _run.add_wrapper(m, pe.WrappersMP.DIFFUSION_MODEL, KEY, diffusion_model_wrapper)
    _run.install(m, KEY, RUN_KEY, lambda sigmas, ms: DeepCacheRun(settings, sigmas, ms), "FewStepDeepCache")
    return m
