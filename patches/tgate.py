"""T-GATE (Zhang, Liu et al., "Cross-Attention Makes Inference Cumbersome in Text-to-Image Diffusion
Models", 2024): cross-attention matters in the early, semantics-planning steps and converges after;
from the gate step on, its output is cached and reused and the unconditional batch is dropped.

* Steps before the gate (``gate_percent`` of the steps, rounded) run unchanged. While they run, the
  latest cross-attention output of every transformer block is kept per cond/uncond chunk.
* From the gate step on, every cross-attention returns the cache: the average of the cond and uncond
  outputs of that block (the paper's choice). The attention itself is cut to a single query and key
  token (so whatever ComfyUI attention backend runs, the skipped work is gone) and its result
  replaced by the cache.
* From the gate step on, the model is called on the conditional batch only: with cross-attention
  no longer depending on the prompt, CFG's two predictions would coincide, so the unconditional one
  is set equal to the conditional one (``uncond + (cond - uncond) * cfg = cond`` exactly).
* ``self_attn_cache``: after the gate, self-attention is also recomputed only on every other step and
  its output reused in between (T-GATE v2's reuse in the fidelity-improving phase). Before the gate
  nothing changes either way.

Works with DeepCache on the same model: on DeepCache's cached steps only the shallow blocks run, and
their attention goes through the same gate.

On DiTs (see ``_dit.py``):
* Wan 2.x has text cross-attention that goes through ComfyUI's ``optimized_attention_override``:
  its blocks are tagged through the ``patches_replace["dit"]`` block hook, and inside a block the
  first attention call is the self-attention and the later ones the cross-attention (Wan's block
  order; I2V has two, image and text). After the gate every cross-attention call returns the mean
  of the cond and uncond outputs it gave on the last step before the gate (before Wan's output
  projection, which is linear, so this is the mean of the projected outputs too) and the attention
  kernel is not run.
* Flux, SD3/SD3.5 MMDiT and Qwen-Image have joint attention (text and image tokens in one
  attention), so only the uncond drop applies there; PixArt has cross-attention but calls its
  attention without ``transformer_options`` (no override hook), so there too only the uncond drop
  applies. ``self_attn_cache`` is UNet-only and ignored on DiTs (the log says so).
"""
from __future__ import annotations

import torch

import comfy.patcher_extension as pe

from ..core.cache_schedule import gate_step, self_attn_reuse
from . import _dit, _run
from ._unet import UnsupportedModelError, architecture_name
import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel

KEY = "fewstep_tgate"
RUN_KEY = "fewstep_tgate_run"


class TGateRun(_run.RunState):
    def __init__(self, settings, sigmas, model_sampling):
        super().__init__(sigmas, model_sampling)
        self.settings = settings
        self.gate = gate_step(self.total_steps, settings["gate_percent"])
        self.ca_seen = {}    # block key -> {0: cond output, 1: uncond output}, latest before the gate
        self.ca_cache = {}   # block key -> averaged output used after the gate
        self.sa_cache = {}   # block key -> self-attention output (after the gate)
        self.ca_skipped = 0
        self.ca_computed_after = 0
        self.sa_skipped = 0
        self.uncond_dropped = 0
        self.calls_before = 0
        self._last_counted = None

    def gated(self) -> bool:
        return self.step >= self.gate

    def recording(self) -> bool:
        return self.gate < self.total_steps and self.step < self.gate

    def sa_reuse_step(self) -> bool:
        return self.settings["self_attn_cache"] and self_attn_reuse(self.step, self.gate)

    def summary(self):
        s = self.settings
        arch = s.get("arch")
        msg = (f"T-GATE{' on ' + arch if arch else ''} (gate at step {self.gate}/{self.total_steps}, "
               f"{s['gate_percent']:.0%}): ")
        if s.get("ca_note"):
            msg += s["ca_note"]
        else:
            msg += f"{self.ca_skipped} cross-attention calls reused the cache"
        if self.ca_computed_after:
            msg += f", {self.ca_computed_after} computed after the gate (no cache of that shape)"
        msg += f"; unconditional batch dropped on {self.uncond_dropped} model evaluations"
        if s["self_attn_cache"] and arch:
            msg += "; self_attn_cache is UNet-only and was ignored"
        elif s["self_attn_cache"]:
            msg += f"; {self.sa_skipped} self-attention calls reused"
        if self.gate < self.total_steps and self.steps_seen == 0 and self.total_steps > 1:
            msg += "; the sampler reported no steps (no callback), so the gate was never reached"
        self.ca_seen.clear()
        self.ca_cache.clear()
        self.sa_cache.clear()
        return msg


def _block_key(extra_options):
    block = extra_options.get("block")
    return (block[0], block[1], extra_options.get("block_index", 0)) if block is not None else None


def _chunks_by_kind(n, cond_or_uncond):
    k = len(cond_or_uncond)
    if not k or n.shape[0] % k:
        return {}
    parts = n.chunk(k, dim=0)
    out = {}
    for kind, part in zip(cond_or_uncond, parts):
        out.setdefault(kind, []).append(part)
    return {kind: (ps[0] if len(ps) == 1 else torch.stack(ps).mean(0)) for kind, ps in out.items()}


def _shrink(n, context, value):
    """One query and one key token: the attention still runs (every backend handles it) but costs nothing."""
    return n[:, :1], (context[:, :1] if context is not None else None), (value[:, :1] if value is not None else None)


# UNet attention patches: cross-attention reused after the gate, self-attention every other step
def _attn2_patch(n, context, value, extra_options):
    run = extra_options.get(RUN_KEY)
    if run is None or not run.gated():
        return n, context, value
    key = _block_key(extra_options)
    cached = run.ca_cache.get(key)
    if cached is None:
        cached = _average(run.ca_seen.get(key))
        if cached is not None:
            run.ca_cache[key] = cached
    if cached is not None and cached.shape[1:] == n.shape[1:] and n.shape[0] % cached.shape[0] == 0:
        reps = n.shape[0] // cached.shape[0]
        extra_options["_fewstep_tgate_out"] = cached.repeat(reps, 1, 1) if reps > 1 else cached
        return _shrink(n, context, value)
    extra_options["_fewstep_tgate_out"] = None
    return n, context, value

def _attn2_output_patch(n, extra_options):
    run = extra_options.get(RUN_KEY)
    if run is None:
        return n
    if run.gated():
        cached = extra_options.pop("_fewstep_tgate_out", None)
        if cached is None:
            run.ca_computed_after += 1
            return n
        run.ca_skipped += 1
        return cached
    if run.recording():
        kinds = _chunks_by_kind(n, extra_options.get("cond_or_uncond") or [])
        if kinds:
            seen = run.ca_seen.setdefault(_block_key(extra_options), {})
            seen.update({k: v.detach() for k, v in kinds.items()})
    return n

def _attn1_patch(n, context, value, extra_options):
    run = extra_options.get(RUN_KEY)
    if run is None or not run.sa_reuse_step():
        return n, context, value
    cached = run.sa_cache.get(_block_key(extra_options))
    if cached is not None and cached.shape == n.shape:
        extra_options["_fewstep_tgate_sa"] = cached
        return _shrink(n, context, value)
    extra_options["_fewstep_tgate_sa"] = None
    return n, context, value

def _attn1_output_patch(n, extra_options):
    run = extra_options.get(RUN_KEY)
    if run is None or not (run.settings["self_attn_cache"] and run.gated()):
        return n
    if run.sa_reuse_step():
        cached = extra_options.pop("_fewstep_tgate_sa", None)
        if cached is not None:
            run.sa_skipped += 1
            return cached
    run.sa_cache[_block_key(extra_options)] = n
    return n


def apply_tgate(model, gate_percent: float = 0.4, self_attn_cache: bool = False):
    """A clone of ``model`` with T-GATE (replacing an earlier T-GATE of ours)."""
    if not (0.0 <= gate_percent <= 1.0):
        raise ValueError(f"FewStepTGate: gate_percent must be in [0, 1], got {gate_percent}")
    settings = dict(gate_percent=float(gate_percent), self_attn_cache=bool(self_attn_cache))
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(dm, openaimodel.UNetModel):
        arch = _dit.describe(model)
        if arch is None:
            raise UnsupportedModelError(
                f"FewStepTGate: this model is {architecture_name(model)}; FewStepTGate works on UNet models "
                f"(SD1.x, SD2.x, SDXL) and on the DiTs {DIT_SUPPORTED} only.")
        return _apply_dit(model, arch, settings)

    m = model.clone()
    _drop_dit_parts(m)
    _run.replace_patch(m, "attn2_patch", KEY, _attn2_patch)
    _run.replace_patch(m, "attn2_output_patch", KEY, _attn2_output_patch)
    if self_attn_cache:
        _run.replace_patch(m, "attn1_patch", KEY, _attn1_patch)
        _run.replace_patch(m, "attn1_output_patch", KEY, _attn1_output_patch)
    else:  # a second T-GATE without self_attn_cache must not keep the first one's
        for name in ("attn1_patch", "attn1_output_patch"):
            lst = m.model_options.get("transformer_options", {}).get("patches", {}).get(name)
            if lst:
                lst[:] = [p for p in lst if getattr(p, "_fewstep_patch", None) != KEY]
    _run.add_wrapper(m, pe.WrappersMP.CALC_COND_BATCH, KEY, calc_cond_batch)
    _run.install(m, KEY, RUN_KEY, lambda sigmas, ms: TGateRun(settings, sigmas, ms), "FewStepTGate")
    return m


def _average(seen):
    """The paper's cache: mean of the conditional and unconditional outputs (whichever exist)."""
    if not seen:
        return None
    parts = [seen[k] for k in sorted(seen)]
    if len(parts) == 1:
        return parts[0]
    if any(p.shape != parts[0].shape for p in parts):
        return None
    return sum(parts) / len(parts)


def calc_cond_batch(executor, model_base, conds, x_in, timestep, model_options):
    """After the gate: the model runs on the conditional batch only and CFG's uncond = cond."""
    run = model_options.get("transformer_options", {}).get(RUN_KEY)
    if run is None or not run.gated() or len(conds) != 2 or conds[1] is None or conds[0] is None:
        return executor(model_base, conds, x_in, timestep, model_options)
    out = executor(model_base, [conds[0], None], x_in, timestep, model_options)
    run.uncond_dropped += 1
    out = list(out)
    out[1] = out[0]
    return out


# ------------------------------------------------------------------------------------------------
# DiTs
DIT_SUPPORTED = "Flux, SD3/SD3.5 MMDiT, Wan 2.x, PixArt and Qwen-Image"
_BLK = "_fewstep_tgate_block"
_NATTN = "_fewstep_tgate_attn_calls"
_OVERRIDE = "optimized_attention_override"


class _AttnOverride:
    """T-GATE's attention override, chained in front of one that was there before (plain data only:
    ModelPatcher.clone deep-copies model_options)."""

    def __init__(self, prev):
        self.prev = prev

    def __call__(self, func, *args, **kwargs):
        prev = self.prev

        def nxt():
            return prev(func, *args, **kwargs) if prev is not None else func(*args, **kwargs)

        to = kwargs.get("transformer_options") or {}
        run = to.get(RUN_KEY)
        blk = to.get(_BLK)
        if run is None or blk is None:
            return nxt()
        n = to.get(_NATTN, 0)
        to[_NATTN] = n + 1
        if n == 0:  # the block's self-attention
            return nxt()
        key = (blk, n)
        if run.gated():
            cached = run.ca_cache.get(key)
            if cached is None:
                cached = _average(run.ca_seen.get(key))
                if cached is not None:
                    run.ca_cache[key] = cached
            q = args[0] if args else kwargs.get("q")
            plain = not kwargs.get("skip_reshape") and not kwargs.get("skip_output_reshape")
            if (cached is not None and plain and q is not None and q.ndim == 3 and cached.shape[1:] == q.shape[1:]
                    and q.shape[0] % cached.shape[0] == 0):
                run.ca_skipped += 1
                reps = q.shape[0] // cached.shape[0]
                return cached.repeat(reps, 1, 1) if reps > 1 else cached
            run.ca_computed_after += 1
            return nxt()
        out = nxt()
        if run.recording():
            kinds = _chunks_by_kind(out, to.get("cond_or_uncond") or [])
            if kinds:
                run.ca_seen.setdefault(key, {}).update({k: v.detach() for k, v in kinds.items()})
        return out


def _tag_block(i):
    def impl(args, extra, call_next):
        to = args.get("transformer_options")
        if to is None or to.get(RUN_KEY) is None:
            return call_next(args)
        to[_BLK], to[_NATTN] = i, 0
        try:
            return call_next(args)
        finally:
            to[_BLK] = None
    return impl


def _drop_dit_parts(m):
    """Remove an earlier T-GATE's DiT parts from the clone ``m`` (its block tags and its override)."""
    _dit.remove_block_replaces(m, KEY)
    to = m.model_options.get("transformer_options", {})
    ov = to.get(_OVERRIDE)
    if isinstance(ov, _AttnOverride):
        if ov.prev is None:
            to.pop(_OVERRIDE)
        else:
            to[_OVERRIDE] = ov.prev


def _apply_dit(model, arch, settings):
    if arch.cross_attention == "override":
        note = None
    elif arch.cross_attention == "none":
        note = ("no cross-attention to cache (joint text-image attention: only the uncond drop applies)")
    elif arch.cross_attention == "no hook":
        note = ("cross-attention not cached (PixArt calls its attention without transformer_options, so no "
                "attention override can reach it: only the uncond drop applies)")
    else:
        note = (f"cross-attention not cached (this {arch.name} variant's blocks are not the plain Wan block whose "
                "attention order T-GATE relies on: only the uncond drop applies)")
    settings = dict(settings, arch=arch.name, ca_note=note)
    m = model.clone()
    _drop_dit_parts(m)
    for name in ("attn1_patch", "attn1_output_patch", "attn2_patch", "attn2_output_patch"):
        lst = m.model_options.get("transformer_options", {}).get("patches", {}).get(name)
        if lst:
            lst[:] = [p for p in lst if getattr(p, "_fewstep_patch", None) != KEY]
    if arch.cross_attention == "override":
        for i, key in enumerate(arch.blocks):
            _dit.set_block_replace(m, key, KEY, _tag_block(i))
        to = m.model_options.setdefault("transformer_options", {})
        to[_OVERRIDE] = _AttnOverride(to.get(_OVERRIDE))
    _run.add_wrapper(m, pe.WrappersMP.CALC_COND_BATCH, KEY, calc_cond_batch)
    _run.install(m, KEY, RUN_KEY, lambda sigmas, ms: TGateRun(settings, sigmas, ms), "FewStepTGate")
    return m
