"""What FewStep's patches need to know about ComfyUI's UNet (``openaimodel.UNetModel``).

* ``require_unet(model, patch_name)``: the UNet inside a MODEL, or a clear error naming the
  architecture (SD3/Flux/... are DiTs and have no skip branches; the analytic model has no network).
* ``UNetLayout``: per-block facts (block counts, transformer counts) used to keep ComfyUI's
  ``transformer_options`` bookkeeping (``block``, ``transformer_index``) identical on a partial pass.
* ``forward_shallow``: the partial pass DeepCache runs on a cached step: time embedding, input blocks
  ``0..depth``, the cached deep feature in place of everything deeper, output blocks
  ``n-1-depth..n-1`` and the output head. Every per-block hook ComfyUI's own forward honours
  (input/output block patches, ControlNet/T2I residuals, attention patches through the blocks) is
  honoured here at the same places, so the shallow blocks compute exactly what they would compute in
  a full pass given the same deep feature.
"""
from __future__ import annotations

import logging

import torch

import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..core.cache_schedule import UNetBlocks

SUPPORTED = "UNet models (SD1.x, SD2.x, SDXL, SVD)"


class UnsupportedModelError(ValueError):
    pass


def architecture_name(model) -> str:
    base = getattr(model, "model", None)
    name = type(base).__name__ if base is not None else type(model).__name__
    dm = getattr(base, "diffusion_model", None)
    if dm is not None:
        name += f" ({type(dm).__module__}.{type(dm).__name__})"
    elif base is not None:
        name += " (no diffusion network)"
    return name


def require_unet(model, patch_name: str):
    """The ``UNetModel`` of a MODEL (ModelPatcher), or UnsupportedModelError naming what it is."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if not isinstance(dm, openaimodel.UNetModel):
        raise UnsupportedModelError(
            f"{patch_name}: this model is {architecture_name(model)}; {patch_name} works on {SUPPORTED} "
            "only. DiT models such as SD3, Flux or the FewStep analytic model have no UNet skip "
            "branches to patch.")
    return dm


def _count_transformers(block) -> int:
    return sum(1 for m in block if isinstance(m, SpatialTransformer))  # SpatialVideoTransformer subclasses it


def UNetLayout(unet) -> UNetBlocks:
    """The transformer counts of a ComfyUI UNet's blocks (the arithmetic: core/cache_schedule.UNetBlocks)."""
    return UNetBlocks(tuple(_count_transformers(b) for b in unet.input_blocks),
                      _count_transformers(unet.middle_block) if unet.middle_block is not None else 0,
                      tuple(_count_transformers(b) for b in unet.output_blocks))


def unpack_forward_args(args, kwargs):
    """(x, timesteps, context, y, control, transformer_options, extra kwargs) from the arguments
    ``UNetModel.forward`` hands to DIFFUSION_MODEL wrappers."""
    names = ("x", "timesteps", "context", "y", "control", "transformer_options")
    vals = dict(zip(names, args))
    extra = dict(kwargs)
    for n in names:
        if n in extra and n not in vals:
            vals[n] = extra.pop(n)
    if len(args) > len(names):
        raise TypeError("unexpected positional arguments to the UNet forward")
    return (vals.get("x"), vals.get("timesteps"), vals.get("context"), vals.get("y"), vals.get("control"),
            vals.get("transformer_options") if vals.get("transformer_options") is not None else {}, extra)


def _pop_control(control, name):
    if control is not None and name in control and len(control[name]) > 0:
        return control[name].pop()
    return None


def _add_control(h, ctrl):
    """ComfyUI's rule: the residual is added in place; one that does not fit is skipped with a warning."""
    if ctrl is not None:
        try:
            h += ctrl
        except RuntimeError:
            logging.getLogger("FewStep").warning("control residual %s does not fit %s; skipped",
                                                 tuple(ctrl.shape), tuple(h.shape))
    return h


def forward_shallow(unet, layout: UNetLayout, depth: int, deep, x, timesteps, context, y, control, to, extra):
    """The UNet's output with the main branch entering output block ``n_out-1-depth`` replaced by
    ``deep`` (the feature cached on the last full pass)."""
    to["original_shape"] = list(x.shape)
    to["transformer_index"] = 0
    patches = to.get("patches", {})
    nvf = extra.get("num_video_frames", unet.default_num_video_frames)
    ioi = extra.get("image_only_indicator", None)
    tctx = extra.get("time_context", None)

    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    for p in patches.get("emb_patch", []):
        emb = p(emb, unet.model_channels, to)
    if unet.num_classes is not None:
        emb = emb + unet.label_emb(y)

    run = lambda block, h, out_shape=None: openaimodel.forward_timestep_embed(  # noqa: E731
        block, h, emb, context, to, out_shape, time_context=tctx, num_video_frames=nvf, image_only_indicator=ioi)

    skips = []
    h = x
    for i in range(depth + 1):
        to["block"] = ("input", i)
        h = run(unet.input_blocks[i], h)
        h = _add_control(h, _pop_control(control, "input"))
        for p in patches.get("input_block_patch", []):
            h = p(h, to)
        skips.append(h)
        for p in patches.get("input_block_patch_after_skip", []):
            h = p(h, to)

    # the deep part is not run: keep ComfyUI's bookkeeping where a full pass would have left it
    to["transformer_index"] += layout.skipped_transformers(depth)
    first = layout.entry_block(depth)
    for _ in range(first):  # residuals of the skipped output blocks' skip connections
        _pop_control(control, "output")

    h = deep
    for j in range(first, layout.n_out):
        to["block"] = ("output", j)
        hsp = _add_control(skips.pop(), _pop_control(control, "output"))
        for p in patches.get("output_block_patch", []):
            h, hsp = p(h, hsp, to)
        h = torch.cat([h, hsp], dim=1)
        del hsp
        out_shape = skips[-1].shape if skips else None
        h = run(unet.output_blocks[j], h, out_shape)
    h = h.type(x.dtype)
    if unet.predict_codebook_ids:
        return unet.id_predictor(h)
    return unet.out(h)
