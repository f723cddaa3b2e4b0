"""Writing and reading the reference model's weight files (safetensors, atomic, every field checked).

Each file carries ``fewstep_format`` (``spec.FORMAT``), ``fingerprint`` (sha256 over its tensors,
see ``training.fingerprint``) and the training metadata (seed, budget, iterations, versions, data
spec, configuration, timings, evaluation). ``load_weights`` raises ``ProfileError`` naming the file
when it is missing, unreadable, of another format, lacks a tensor, holds NaN/inf, or its tensors do
not match its fingerprint (a corrupted or edited file).
"""
from __future__ import annotations

from pathlib import Path

from ..core.io import FORMAT_KEY, ProfileError, atomic_save, load_checked
from . import spec
from .training import fingerprint

__all__ = ["ProfileError", "save_weights", "load_weights"]


def save_weights(path, tensors: dict, metadata: dict) -> str:
    """Write ``tensors`` atomically with ``metadata`` + format + fingerprint. Returns the fingerprint."""
    path = Path(path)
    fmt = spec.FORMAT.get(path.name)
    if fmt is None:
        raise ValueError(f"save_weights: {path.name} is not one of {', '.join(spec.FILES)}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fp = fingerprint(tensors)
    meta = dict(metadata)
    meta[FORMAT_KEY] = fmt
    meta["fingerprint"] = fp
    atomic_save(path, tensors, meta)
    return fp


def load_weights(path, required=()) -> tuple[dict, dict]:
    """(tensors, metadata) of a reference weight file, checked (see module doc)."""
    path = Path(path)
    fmt = spec.FORMAT.get(path.name)
    kind = f"FewStep reference weights ({path.name})"
    if fmt is None:
        raise ProfileError(f"{path}: not a FewStep reference weight file name ({', '.join(spec.FILES)})")
    tensors, meta = load_checked(path, kind, required_tensors=required, required_meta=("fingerprint",))
    if meta.get(FORMAT_KEY) != fmt:
        raise ProfileError(f"{path.name}: format {meta.get(FORMAT_KEY)!r}, expected {fmt!r}")
    if fingerprint(tensors) != meta["fingerprint"]:
        raise ProfileError(f"{path.name}: its tensors do not match its fingerprint (corrupted or edited); "
                           "restore it from the repository or re-create it with tools/train_reference.py")
    return tensors, meta
