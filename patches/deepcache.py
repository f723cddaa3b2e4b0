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

On a DiT (Flux, SD3/SD3.5 MMDiT, Wan 2.x, Qwen-Image) DeepCache is block-residual caching, as in
Delta-DiT and FORA: the first ``dit_leading_blocks`` and last ``dit_trailing_blocks`` transformer
blocks run every step; on a full step the residual the blocks in between add to the hidden state
(``exit - entry``, per stream: image tokens, and text tokens where the block returns them) is
cached; on a cached step those middle blocks are skipped (their ``original_block`` is never called)
and the cached residual is added to the entry state at the last middle block. Everything goes
through ComfyUI's ``patches_replace["dit"]`` block hook (see ``_dit.py``); for Flux the stack is the
double blocks followed by the single blocks, and a middle range that spans both caches the residual
in the single blocks' joint ``cat(txt, img)`` form. PixArt has no block hook and is refused.
"""
from __future__ import annotations

import torch

import comfy.patcher_extension as pe

from ..core.cache_schedule import cached_step_mask, dit_block_plan, full_steps
from . import _dit, _run
from ._unet import UNetLayout, UnsupportedModelError, architecture_name, forward_shallow, unpack_forward_args
import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel

KEY = "fewstep_deepcache"
RUN_KEY = "fewstep_deepcache_run"
MODES = ("uniform", "non-uniform")


class DeepCacheRun(_run.RunState):
    def __init__(self, settings, sigmas, model_sampling):
        super().__init__(sigmas, model_sampling)
        self.settings = settings
        window = self.percent_window(settings["start_percent"], settings["end_percent"])
        full = set(full_steps(self.total_steps, settings["cache_interval"], settings["mode"],
                              settings["center"], settings["power"]))
        self.cached_step = cached_step_mask(self.total_steps, full, window)
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

    REUSED = "feature"   # what a cached step reuses, for the summary

    def summary(self):
        """What the run did (the node's report, logged at the end of sampling); frees the cache."""
        calls = self.full_calls + self.cached_calls
        speed = f"{calls / max(self.full_calls, 1):.2f}x fewer full passes" if calls else "no model calls"
        msg = self._counts(self.settings, speed)
        if self.fallback_calls:
            msg += f"; {self.fallback_calls} calls on cached steps ran in full (no cached {self.REUSED} of that size yet)"
        if self.total_steps > 1 and self.steps_seen == 0 and any(self.cached_step):
            msg += "; the sampler reported no steps (no callback), so every call ran in full"
        self.cache.clear()
        return msg

    def _counts(self, s, speed):
        return (f"DeepCache (interval {s['cache_interval']}, depth {s['cache_depth']}, {s['mode']}): "
                f"{self.full_calls} full and {self.cached_calls} cached UNet calls over {self.total_steps} steps "
                f"({speed}); cache peak {self.peak_cache_bytes / 2**20:.2f} MiB")


def _settings(cache_interval, mode, start_percent, end_percent, center, power) -> dict:
    """The settings both kinds of model share, checked (errors name the widget and its range)."""
    if not (1 <= int(cache_interval) <= 1000):
        raise ValueError(f"FewStepDeepCache: cache_interval must be in [1, 1000], got {cache_interval}")
    if mode not in MODES:
        raise ValueError(f"FewStepDeepCache: mode must be one of {MODES}, got {mode!r}")
    if not (0.0 <= start_percent <= end_percent <= 1.0):
        raise ValueError(f"FewStepDeepCache: need 0 <= start_percent <= end_percent <= 1, got "
                         f"start_percent={start_percent}, end_percent={end_percent}")
    if not (0.0 <= center <= 1.0):
        raise ValueError(f"FewStepDeepCache: center must be in [0, 1], got {center}")
    if not (1.0 < power <= 4.0):
        raise ValueError(f"FewStepDeepCache: power must be in (1, 4], got {power}")
    return dict(cache_interval=int(cache_interval), cache_depth=0, mode=mode, center=float(center),
                power=float(power), start_percent=float(start_percent), end_percent=float(end_percent))


def _supported_dit(model):
    """The DiT architecture of a model that is not a UNet, or UnsupportedModelError saying why not."""
    arch = _dit.describe(model)
    if arch is None:
        raise UnsupportedModelError(
            f"FewStepDeepCache: this model is {architecture_name(model)}; FewStepDeepCache works on "
            f"UNet models (SD1.x, SD2.x, SDXL, SVD) and on the DiTs {DIT_SUPPORTED} only.")
    if not arch.block_hook:
        raise UnsupportedModelError(
            f"FewStepDeepCache: this model is {arch.name} ({architecture_name(model)}); its forward calls its "
            "transformer blocks directly, with no patches_replace block hook and no DIFFUSION_MODEL wrapper, "
            "so its blocks cannot be skipped without re-implementing the model's forward. Supported DiTs: "
            f"{DIT_SUPPORTED}.")
    return arch


def apply_deepcache(model, cache_interval: int = 3, cache_depth: int = 0, mode: str = "uniform",
                    start_percent: float = 0.0, end_percent: float = 1.0, center: float = 0.3, power: float = 1.4,
                    dit_leading_blocks: int = 1, dit_trailing_blocks: int = 1):
    """A clone of ``model`` with DeepCache (replacing an earlier DeepCache of ours). On a UNet
    ``cache_depth`` picks the skip branch and the ``dit_*`` arguments are ignored; on a DiT the first
    ``dit_leading_blocks`` and last ``dit_trailing_blocks`` blocks run every step and ``cache_depth``
    is ignored."""
    settings = _settings(cache_interval, mode, start_percent, end_percent, center, power)
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(dm, openaimodel.UNetModel):
        return _apply_dit(model, _supported_dit(model), settings, dit_leading_blocks, dit_trailing_blocks)
    layout = UNetLayout(dm)
    if not (0 <= int(cache_depth) <= layout.max_depth):
        raise ValueError(f"FewStepDeepCache: cache_depth must be in [0, {layout.max_depth}] for this model "
                         f"({layout.n_in} input blocks), got {cache_depth}")
    settings["cache_depth"] = depth = int(cache_depth)
    m = model.clone()
    _dit.remove_block_replaces(m, KEY)
    _run.add_wrapper(m, pe.WrappersMP.DIFFUSION_MODEL, KEY, _unet_wrapper(layout, depth))
    _run.install(m, KEY, RUN_KEY, lambda sigmas, ms: DeepCacheRun(settings, sigmas, ms), "FewStepDeepCache")
    return m


def _unet_wrapper(layout, depth: int):
    """The DIFFUSION_MODEL wrapper: a cached step runs the shallow part on the cached deep feature; a full
    step before a cached one records the feature entering output block ``entry``."""
    entry = layout.entry_block(depth)

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
        out, captured = _recording_pass(executor, args, kwargs, to, entry)
        if captured:
            run.store(uuids, x, captured[-1])
        return out
    return diffusion_model_wrapper


def _recording_pass(executor, args, kwargs, to, entry: int):
    """A full pass with an output_block_patch (first in the list) that captures output block ``entry``'s
    input; the transformer options' patches are restored after. Returns (output, captured features)."""
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
    return out, captured


# ------------------------------------------------------------------------------------------------
# DiTs: block-residual caching through ComfyUI's patches_replace["dit"] block hook
DIT_SUPPORTED = "Flux (double and single blocks), SD3/SD3.5 MMDiT, Wan 2.x and Qwen-Image"
_CALL = "_fewstep_deepcache_call"  # per model call: what the middle blocks do ("record" / "skip")


class DiTDeepCacheRun(DeepCacheRun):
    """Per-run state on a DiT: per cond chunk (uuid), the residual the middle blocks added on the last
    full step, keyed by the chunk's entry-state shapes (another latent size never reuses it)."""

    def __init__(self, settings, arch, plan, sigmas, model_sampling):
        super().__init__(settings, sigmas, model_sampling)
        self.arch = arch
        self.plan = plan
        self.block_runs = [0] * plan.n_blocks
        self.block_skips = [0] * plan.n_blocks

    def lookup(self, uuids, shapes):
        parts = []
        for u in uuids:
            hit = self.cache.get(u)
            if hit is None or hit[0] != shapes:
                return None
            parts.append(hit[1])
        return {k: (torch.cat([p[k] for p in parts], dim=0) if parts[0][k] is not None else None) for k in parts[0]}

    def store(self, uuids, shapes, residual):
        n = len(uuids)
        for i, u in enumerate(uuids):
            part = {k: (v.chunk(n, dim=0)[i] if v is not None else None) for k, v in residual.items()}
            self.cache[u] = (shapes, part)
        self.cache_bytes = sum(v.numel() * v.element_size() for _, r in self.cache.values() for v in r.values()
                               if v is not None)
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache_bytes)

    REUSED = "residual"

    def _counts(self, s, speed):
        p = self.plan
        return (f"DeepCache on {self.arch.name} (interval {s['cache_interval']}, {s['mode']}; blocks "
                f"{p.first_cached}..{p.last_cached} of {p.n_blocks} cached, {p.leading} leading and {p.trailing} "
                f"trailing recomputed): {self.full_calls} full and {self.cached_calls} cached model calls over "
                f"{self.total_steps} steps ({speed}); block calls run {sum(self.block_runs)}, skipped "
                f"{sum(self.block_skips)}; cache peak {self.peak_cache_bytes / 2**20:.2f} MiB")


def _shapes(state: dict, n: int):
    return tuple((k, (v.shape[0] // n, *v.shape[1:]) if v is not None else None) for k, v in sorted(state.items()))


def _enter_middle(run, to, args, streams, entry_kind, exit_kind) -> None:
    """At the first middle block: what this model call does with the middle (``to[_CALL]``): skip it with
    the cached residual (a cached step with a residual of these shapes), record it (a full step before a
    cached one), or run it (None); counts the call."""
    to[_CALL] = None
    uuids = to.get("uuids") or []
    first = args[streams[0]]
    if uuids and first.shape[0] % len(uuids) == 0:
        entry = {k: args[k] for k in streams}
        shapes = _shapes(entry, len(uuids))
        if run.is_cached_step():
            res = run.lookup(uuids, shapes)
            if res is not None:
                to[_CALL] = ("skip", res)
            else:
                run.fallback_calls += 1
        if to[_CALL] is None and run.caching_ahead():
            to[_CALL] = ("record", uuids, shapes, _dit.exit_form(
                {k: v.clone() for k, v in entry.items()}, entry_kind, exit_kind))
    if to[_CALL] is not None and to[_CALL][0] == "skip":
        run.cached_calls += 1
    else:
        run.full_calls += 1


def _store_residual(run, state, out, streams) -> None:
    """At the last middle block of a recording call: store what the middle added to each stream."""
    _, uuids, shapes, entry = state
    res = {k: (out[k] - entry[k] if out.get(k) is not None and k in entry
               and out[k].shape == entry[k].shape else None) for k in streams}
    run.store(uuids, shapes, res)


def _apply_dit(model, arch, settings, leading, trailing):
    plan = dit_block_plan(arch.n_blocks, leading, trailing)
    settings = dict(settings, dit_leading_blocks=plan.leading, dit_trailing_blocks=plan.trailing)
    entry_kind = arch.blocks[plan.first_cached][0]
    exit_kind = arch.blocks[plan.last_cached][0]

    def make(i, kind):
        role = plan.role(i)
        streams = arch.streams[kind]

        def impl(args, extra, call_next):
            to = args.get("transformer_options") or {}
            run = to.get(RUN_KEY)
            if run is None:
                return call_next(args)
            if role == "run":
                run.block_runs[i] += 1
                return call_next(args)
            if role in ("entry", "entry+exit"):
                _enter_middle(run, to, args, streams, entry_kind, exit_kind)
            state = to.get(_CALL)
            if state is not None and state[0] == "skip":
                run.block_skips[i] += 1
                if role in ("exit", "entry+exit"):
                    to.pop(_CALL, None)
                    res = state[1]
                    return {k: (args[k] + res[k] if res.get(k) is not None else args[k]) for k in streams}
                return {k: args[k] for k in streams}
            run.block_runs[i] += 1
            out = call_next(args)
            if role in ("exit", "entry+exit"):
                to.pop(_CALL, None)
                if state is not None and state[0] == "record":
                    _store_residual(run, state, out, streams)
            return out
        return impl

    m = model.clone()
    m.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY)  # a UNet DeepCache of ours never stays
    _dit.remove_block_replaces(m, KEY)
    for i, key in enumerate(arch.blocks):
        _dit.set_block_replace(m, key, KEY, make(i, key[0]))
    _run.install(m, KEY, RUN_KEY, lambda sigmas, ms: DiTDeepCacheRun(settings, arch, plan, sigmas, ms),
                 "FewStepDeepCache")
    return m
