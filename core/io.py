"""Profiles and schedules on disk: safetensors only (never pickle), written atomically, read with
clear errors for corrupt, truncated or incomplete files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
try:
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # older safetensors
    SafetensorsError = Exception
from safetensors.torch import load_file, save_file

FORMAT_KEY = "fewstep_format"


class ProfileError(ValueError):
    """A FewStep file that cannot be used; the message says which file and why."""


def atomic_save(path, tensors: dict, metadata: dict) -> Path:
    """Write ``tensors`` with ``metadata`` (values JSON-encoded) to ``path`` atomically: a temp file
    in the same folder, fsync, then os.replace, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_checked(path, kind: str, required_tensors=(), required_meta=()):
    """(tensors, metadata) from a FewStep safetensors file, with metadata values JSON-decoded where
    they parse. Raises ProfileError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{kind} file not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorsError, OSError, ValueError, RuntimeError) as e:
        raise ProfileError(f"{kind} file {path.name} is corrupt or truncated (not a readable safetensors "
                           f"file): {e}") from None
    meta = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    if meta.get(FORMAT_KEY) is None:
        raise ProfileError(f"{path.name} is not a FewStep {kind} file (no '{FORMAT_KEY}' metadata)")
    missing = [k for k in required_tensors if k not in tensors] + [k for k in required_meta if k not in meta]
    if missing:
        raise ProfileError(f"{kind} file {path.name} is missing {', '.join(missing)}; re-create it")
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ProfileError(f"{kind} file {path.name}: tensor '{k}' contains NaN or inf")
    return tensors, meta
