"""FewStep's ComfyUI nodes.

Every module of ``NODE_MODULES`` defines ``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``, and
may define ``register_with_comfyui()`` (KSampler list entries, model folders). A new node module is one
name more on the import line below and in ``NODE_MODULES`` (tests/test_package.py fails when a module
of nodes/ with NODE_CLASS_MAPPINGS is left out). An import error propagates, so ComfyUI shows IMPORT
FAILED for the pack.
"""
from . import analytic, ays_optimize, olss, patches, reference, results, routes, schedulers, solvers

NODE_MODULES = (analytic, ays_optimize, olss, patches, reference, results, schedulers, solvers)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _mod in NODE_MODULES:
    for _k, _v in _mod.NODE_CLASS_MAPPINGS.items():
        if _k in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"FewStep node id {_k!r} is defined twice ({_mod.__name__})")
        NODE_CLASS_MAPPINGS[_k] = _v
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)


def register_with_comfyui():
    """Every module's registration (KSampler lists, folder paths) and the HTTP routes. Idempotent."""
    for mod in NODE_MODULES:
        fn = getattr(mod, "register_with_comfyui", None)
        if fn is not None:
            fn()
    routes.register_with_comfyui()
