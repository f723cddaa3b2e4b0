"""What FewStep's patches need to know about ComfyUI's transformer (DiT) models.

Every supported DiT's forward looks up ``transformer_options["patches_replace"]["dit"][(kind, i)]``
for each block and, when present, calls it as ``fn(args, {"original_block": block_wrap})`` with the
block's inputs in ``args`` (``img``, ``txt``, ``vec``, ``pe``, ``transformer_options``...) and uses
the dict it returns as the block's output (ComfyUI 0.3.64: ``flux/model.py``,
``modules/diffusionmodules/mmdit.py``, ``wan/model.py``, ``qwen_image/model.py``). A replacement
that does not call ``original_block`` skips that block's work.

* ``describe(model)`` -> ``DiTArch`` (block keys in execution order, the streams each block returns,
  whether text cross-attention goes through ComfyUI's attention override) or None for a non-DiT.
* PixArt (``pixart/pixartms.py``) is recognised but has no block hook: its ``forward_orig`` calls
  ``self.blocks`` directly and ``PixArtMS.forward`` runs no DIFFUSION_MODEL wrappers, and its
  cross-attention calls ``optimized_attention`` without ``transformer_options`` (no override). So
  DeepCache refuses it (skipping blocks would mean re-implementing its forward) and T-GATE applies
  only the uncond drop there.
* ``set_block_replace(model, key, tag, impl)``: installs ``impl`` for one block on the clone,
  chained in front of whatever replacement another patch (or an earlier FewStep patch with a
  different tag) put there; an earlier one with the same tag is removed (applying twice = once).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DiTArch:
    name: str                     # e.g. "Flux"
    blocks: tuple                 # ((kind, index), ...) in execution order
    streams: dict                 # kind -> tuple of the stream names that block returns
    block_hook: bool              # patches_replace["dit"] is honoured
    cross_attention: str          # "override" (Wan), "none" (joint attention), "no hook" (PixArt),
                                  # "other blocks" (a Wan variant whose blocks are not the plain Wan block)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


def _cls(module_name, attr):
    try:
        import importlib
        return getattr(importlib.import_module(module_name), attr)
    except Exception:  # an architecture this ComfyUI does not have
        return None


def describe(model) -> DiTArch | None:
    """The DiT facts of a MODEL (ModelPatcher), or None when it is not a supported/known DiT."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if dm is None:
        return None
    Flux = _cls("comfy.ldm.flux.model", "Flux")
    MMDiT = _cls("comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT")
    Wan = _cls("comfy.ldm.wan.model", "WanModel")
    Qwen = _cls("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel")
    PixArt = _cls("comfy.ldm.pixart.pixartms", "PixArtMS")
    if Flux is not None and isinstance(dm, Flux):
        blocks = tuple(("double_block", i) for i in range(len(dm.double_blocks))) + \
            tuple(("single_block", i) for i in range(len(dm.single_blocks)))
        return DiTArch("Flux", blocks, {"double_block": ("img", "txt"), "single_block": ("img",)}, True, "none")
    if MMDiT is not None and isinstance(dm, MMDiT):
        return DiTArch("SD3 MMDiT", tuple(("double_block", i) for i in range(len(dm.joint_blocks))),
                       {"double_block": ("img", "txt")}, True, "none")
    if Wan is not None and isinstance(dm, Wan):
        # cross-attention caching relies on the plain Wan block's attention order (self, then text
        # cross-attention); blocks with extra attention (e.g. Humo's audio block) get the uncond drop only
        WanBlock = _cls("comfy.ldm.wan.model", "WanAttentionBlock")
        plain = all(type(b) is WanBlock for b in dm.blocks)
        return DiTArch("Wan", tuple(("double_block", i) for i in range(len(dm.blocks))),
                       {"double_block": ("img",)}, True, "override" if plain else "other blocks")
    if Qwen is not None and isinstance(dm, Qwen):
        return DiTArch("Qwen-Image", tuple(("double_block", i) for i in range(len(dm.transformer_blocks))),
                       {"double_block": ("img", "txt")}, True, "none")
    if PixArt is not None and isinstance(dm, PixArt):
        return DiTArch("PixArt", tuple(("block", i) for i in range(len(dm.blocks))), {"block": ("img",)}, False,
                       "no hook")
    return None


def exit_form(entry: dict, entry_kind: str, exit_kind: str) -> dict:
    """The entry state of the cached middle blocks in the form the exit block returns. Only Flux
    changes form inside its stack: after the double blocks ``img = cat(txt, img)`` feeds the single
    blocks."""
    if entry_kind == exit_kind or exit_kind != "single_block":
        return entry
    return {"img": torch.cat((entry["txt"], entry["img"]), dim=1)}


class _Link:
    """One FewStep block replacement in a chain: ``impl(args, extra, call_next)``. Holds only plain
    data and functions (ModelPatcher.clone deep-copies model_options)."""

    def __init__(self, tag, impl, prev):
        self.tag = tag
        self.impl = impl
        self.prev = prev

    def __call__(self, args, extra):
        prev = self.prev

        def call_next(a):
            if prev is not None:
                return prev(a, extra)
            return extra["original_block"](a)
        return self.impl(args, extra, call_next)


def _strip(fn, tag):
    if isinstance(fn, _Link):
        rest = _strip(fn.prev, tag)
        return rest if fn.tag == tag else _Link(fn.tag, fn.impl, rest)
    return fn


def set_block_replace(model, key, tag: str, impl):
    """Put ``impl`` in front of the clone's replacement for block ``key`` (see module doc)."""
    to = model.model_options.setdefault("transformer_options", {})
    pr = to.setdefault("patches_replace", {})
    dit = dict(pr.get("dit", {}))  # never edit a dict another clone may share
    dit[key] = _Link(tag, impl, _strip(dit.get(key), tag))
    pr["dit"] = dit


def remove_block_replaces(model, tag: str):
    pr = model.model_options.get("transformer_options", {}).get("patches_replace", {})
    if "dit" not in pr:
        return
    dit = {}
    for k, fn in pr["dit"].items():
        s = _strip(fn, tag)
        if s is not None:
            dit[k] = s
    pr["dit"] = dit
