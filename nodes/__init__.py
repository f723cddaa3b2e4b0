"""FewStep's ComfyUI nodes.

Every module in this folder (but the helpers ``common`` and ``registry``) defines
``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``, and may define ``register_with_comfyui()``
to add entries to KSampler's scheduler and sampler lists. Modules are imported here by name; an
import error propagates so ComfyUI shows IMPORT FAILED for the pack.
"""
import importlib
import pkgutil

_HELPERS = {"common", "registry"}

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
_MODULES = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name in _HELPERS or _info.name.startswith("_"):
        continue
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    _MODULES.append(_mod)
    for _k, _v in getattr(_mod, "NODE_CLASS_MAPPINGS", {}).items():
        if _k in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"FewStep node id {_k!r} is defined twice ({_mod.__name__})")
        NODE_CLASS_MAPPINGS[_k] = _v
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))


def register_with_comfyui():
    """Run every module's registration (KSampler lists, folder paths, routes). Idempotent."""
    for mod in _MODULES:
        fn = getattr(mod, "register_with_comfyui", None)
        if fn is not None:
            fn()
