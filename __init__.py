"""FewStep — few-step diffusion sampling for ComfyUI.

Inside ComfyUI (``comfy`` already imported by the host) this registers the nodes, the web extension
and FewStep's entries in KSampler's scheduler and sampler lists. Any error doing so is raised, so
ComfyUI reports IMPORT FAILED instead of silently loading nothing. Outside ComfyUI (tests, the
``python -m fewstep`` command line) only the torch/numpy core is imported.
"""
import sys

__version__ = "0.1.0"

WEB_DIRECTORY = "./js"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _inside_comfyui() -> bool:
    return "comfy" in sys.modules and "comfy.samplers" in sys.modules


if _inside_comfyui():
    from .nodes import NODE_CLASS_MAPPINGS as _N, NODE_DISPLAY_NAME_MAPPINGS as _D, register_with_comfyui

    NODE_CLASS_MAPPINGS.update(_N)
    NODE_DISPLAY_NAME_MAPPINGS.update(_D)
    register_with_comfyui()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
