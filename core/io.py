"""Profiles and schedules on disk: safetensors only (never pickle), written atomically (mode 0644,
as ComfyUI's outputs), read with clear errors for corrupt, truncated or incomplete files.

:class:`FileCheck` is what each file kind's loader checks its fields with: every metadata field's
type and range and every tensor's dtype, shape and finiteness, each error naming the file and the
field. :func:`check_file_stem` is the one rule for the names nodes save under.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import torch
try:
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # older safetensors
    SafetensorsError = Exception
from safetensors.torch import load_file, save_file

FORMAT_KEY = "fewstep_format"


#: mode of saved files (ComfyUI's outputs are created 0644 under the usual umask)
FILE_MODE = 0o644
STEM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}", re.ASCII)
#: device names Windows reserves, with or without an extension ("con.safetensors" is the console)
WINDOWS_RESERVED = frozenset(["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)])


class ProfileError(ValueError):
    """A FewStep file that cannot be used; the message says which file and why."""


def check_file_stem(name, what: str = "name", empty_means: str | None = None) -> str:
    """The file stem a node saves under: '' (do not save) or 1-100 ASCII letters, digits, '_', '-',
    '.' and spaces, starting with a letter or digit, without '..', not ending in '.' or a space, and
    not a name Windows reserves (CON, NUL, COM1, ...: also with an extension). A trailing
    '.safetensors' is dropped. Raises ValueError that starts with ``what``; ``empty_means`` says in it
    what an empty name does, where a node allows one."""
    name = str(name).strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")].rstrip()
    if not name:
        return ""
    rule = ("1-100 characters of letters, digits, '_', '-', '.' or spaces, starting with a letter or digit "
            "(no folders)")
    if empty_means:
        rule = f"empty ({empty_means}) or {rule}"
    if not STEM_RE.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} must be {rule}, got {name!r}")
    if name.endswith("."):
        raise ValueError(f"{what} must not end in '.' (Windows drops it; the file would be "
                         f"{name}.safetensors), got {name!r}")
    if name.split(".")[0].rstrip().upper() in WINDOWS_RESERVED:
        raise ValueError(f"{what} {name!r} is a device name reserved on Windows (CON, PRN, AUX, NUL, COM1-9, "
                         "LPT1-9): choose another name")
    return name


def check_save_target(path, what: str = "name") -> Path:
    """Refuse, before any long run, a target that cannot be replaced by a file (a folder of that
    name, or something that is not a regular file)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder; choose another name")
    if path.exists() and not path.is_file():
        raise ValueError(f"{what}: {path} exists and is not a regular file; choose another name")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{what}: {path.parent} is not a folder")
    return path


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
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600
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
    tensors, meta, _ = _read(path, kind, required_tensors, required_meta)
    return tensors, meta


def _read(path, kind, required_tensors, required_meta):
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
    return tensors, meta, raw_meta


_NO = object()
FLOAT_DTYPES = (torch.float32, torch.float64)
INT_DTYPES = (torch.int64, torch.int32)


class FileCheck:
    """A FewStep file read for one loader: ``tensors``, JSON-decoded ``meta`` and the ``raw`` strings,
    with checkers that return the field's value or raise ProfileError naming the file and the field."""

    def __init__(self, path, kind: str, required_tensors=(), required_meta=()):
        self.path = Path(path)
        self.kind = kind
        self.tensors, self.meta, self.raw = _read(path, kind, required_tensors, required_meta)

    def error(self, field: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.kind} file {self.path.name}: {field} {problem}")

    def _get(self, key, default):
        if key in self.meta:
            return self.meta[key]
        if default is _NO:
            raise self.error(key, "is missing; re-create the file")
        return default

    # --- metadata ----------------------------------------------------------------------------------
    def text(self, key, default=_NO, choices=None, max_len: int = 1000) -> str:
        """A string field. Its raw text is the value (a name "123" stays "123"); JSON null, booleans,
        lists and objects are refused."""
        if key not in self.meta:
            return self._get(key, default)
        if self.meta[key] is None or isinstance(self.meta[key], (bool, list, dict)):
            raise self.error(key, f"must be a string, got {self.raw[key]!r}")
        v = self.raw[key]
        if len(v) > max_len:
            raise self.error(key, f"is {len(v)} characters long (at most {max_len})")
        if choices is not None and v not in choices:
            raise self.error(key, f"must be one of {', '.join(map(str, choices))}, got {v!r}")
        return v

    def integer(self, key, lo: int, hi: int, default=_NO) -> int:
        v = self._get(key, default)
        if key not in self.meta:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be a whole number in [{lo}, {hi}], got {self.raw[key]!r}")
        if not lo <= v <= hi:
            raise self.error(key, f"must be in [{lo}, {hi}], got {v}")
        return v

    def number(self, key, lo: float, hi: float, default=_NO, lo_open: bool = False) -> float:
        v = self._get(key, default)
        if key not in self.meta:
            return v
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"must be a number in {rng}, got {self.raw[key]!r}")
        v = float(v)
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise self.error(key, f"must be in {rng}, got {v!r}")
        return v

    def boolean(self, key, default=_NO) -> bool:
        v = self._get(key, default)
        if key in self.meta and not isinstance(v, bool):
            raise self.error(key, f"must be true or false, got {self.raw[key]!r}")
        return v

    def number_list(self, key, length: int | None = None, default=_NO, finite: bool = True) -> list:
        v = self._get(key, default)
        if key not in self.meta:
            return v
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
            raise self.error(key, f"must be a list of numbers, got {self.raw[key][:80]!r}")
        if length is not None and len(v) != length:
            raise self.error(key, f"must hold {length} numbers, got {len(v)}")
        if finite and not all(math.isfinite(x) for x in v):
            raise self.error(key, "must hold finite numbers")
        return [float(x) for x in v]

    def int_list(self, key, length: int | None = None, default=_NO) -> list:
        v = self._get(key, default)
        if key not in self.meta:
            return v
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise self.error(key, f"must be a list of whole numbers, got {self.raw[key][:80]!r}")
        if length is not None and len(v) != length:
            raise self.error(key, f"must hold {length} numbers, got {len(v)}")
        return v

    def mapping(self, key, value_check, default=_NO) -> dict:
        """An object whose keys are whole numbers written as text and whose values pass ``value_check``."""
        v = self._get(key, default)
        if key not in self.meta:
            return v
        if not isinstance(v, dict) or not all(re.fullmatch(r"[0-9]{1,6}", k, re.ASCII) for k in v) \
                or not all(value_check(x) for x in v.values()):
            raise self.error(key, f"is not in the format's shape, got {self.raw[key][:80]!r}")
        return v

    # --- tensors -----------------------------------------------------------------------------------
    def tensor(self, key, dtypes=FLOAT_DTYPES, shape=None, ndim: int | None = None, min_numel: int = 1,
               max_numel: int | None = None) -> torch.Tensor:
        """A tensor of one of ``dtypes`` with ``shape`` (or ``ndim`` dimensions), finite."""
        if key not in self.tensors:
            raise self.error(f"tensor '{key}'", "is missing; re-create the file")
        t = self.tensors[key]
        if t.dtype not in dtypes:
            raise self.error(f"tensor '{key}'", f"has dtype {str(t.dtype).replace('torch.', '')}; the format "
                                               f"stores {' or '.join(str(d).replace('torch.', '') for d in dtypes)}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise self.error(f"tensor '{key}'", f"has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if ndim is not None and t.ndim != ndim:
            raise self.error(f"tensor '{key}'", f"has {t.ndim} dimensions, expected {ndim}")
        if t.numel() < min_numel or (max_numel is not None and t.numel() > max_numel):
            hi = "" if max_numel is None else f", at most {max_numel}"
            raise self.error(f"tensor '{key}'", f"has {t.numel()} values; needs at least {min_numel}{hi}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise self.error(f"tensor '{key}'", "contains NaN or inf")
        return t
