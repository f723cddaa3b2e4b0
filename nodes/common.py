"""Small helpers shared by the node modules (ComfyUI's internals: ../comfy_adapter.py)."""
import os
from dataclasses import dataclass

import folder_paths
import torch

from ..comfy_adapter import family_of_model_sampling, model_sampling_of, prompt_server
from ..core.validate import check_bool, check_choice, check_float, check_int


def outputs(*spec):
    """RETURN_TYPES, RETURN_NAMES and OUTPUT_TOOLTIPS from one (type, name, tooltip) row per output, so the
    three cannot drift apart."""
    types, names, tips = zip(*spec)
    return tuple(types), tuple(names), tuple(tips)


@dataclass(frozen=True)
class Widget:
    """One widget, declared once: its INPUT_TYPES entry and its check come from the same range, so the
    editor's limits and the error a bad API value gets cannot drift apart. Build with Int / Float /
    Choice / Bool."""
    kind: str                   # "INT", "FLOAT", "BOOLEAN" or "CHOICE"
    default: object
    tooltip: str
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple = ()

    def input(self) -> tuple:
        """The widget's INPUT_TYPES entry."""
        if self.kind == "CHOICE":
            return (list(self.choices), {"default": self.default, "tooltip": self.tooltip})
        opts = {"default": self.default}
        if self.kind != "BOOLEAN":
            opts.update(min=self.lo, max=self.hi)
        if self.kind == "FLOAT":
            opts.update(step=self.step, round=False)
        opts["tooltip"] = self.tooltip
        return (self.kind, opts)

    def check(self, value, name: str, node: str):
        """The value, checked against the declared range: a clear error naming the node and the widget."""
        if self.kind == "INT":
            return check_int(value, self.lo, self.hi, name, node)
        if self.kind == "FLOAT":
            return check_float(value, self.lo, self.hi, name, node)
        if self.kind == "BOOLEAN":
            return check_bool(value, name, node)
        return check_choice(value, self.choices, name, node)


def Int(default: int, lo: int, hi: int, tooltip: str) -> Widget:  # noqa: N802 (a widget type)
    return Widget("INT", default, tooltip, lo, hi)


def Float(default: float, lo: float, hi: float, tooltip: str, step: float = 0.01) -> Widget:  # noqa: N802
    return Widget("FLOAT", default, tooltip, lo, hi, step)


def Choice(choices, default, tooltip: str) -> Widget:  # noqa: N802
    return Widget("CHOICE", default, tooltip, choices=tuple(choices))


def Bool(default: bool, tooltip: str) -> Widget:  # noqa: N802
    return Widget("BOOLEAN", default, tooltip)


def checked_widgets(widgets: dict, args: tuple, kwargs: dict, node: str) -> dict:
    """The node function's arguments (positional in widget order, or by name) as a dict, every one
    checked against its declaration."""
    if len(args) > len(widgets):
        raise TypeError(f"{node} takes {len(widgets)} widget values, got {len(args)}")
    values = dict(zip(widgets, args))
    for name, value in kwargs.items():
        if name not in widgets:
            raise TypeError(f"{node} has no widget {name!r}; its widgets are {list(widgets)}")
        if name in values:
            raise TypeError(f"{node}: widget {name!r} given twice")
        values[name] = value
    missing = [name for name in widgets if name not in values]
    if missing:
        raise TypeError(f"{node}: missing widget values {missing}")
    return {name: w.check(values[name], name, node) for name, w in widgets.items()}


def file_stamp(folder: str, name: str) -> str:
    """IS_CHANGED for a node that reads models/<folder>/<name>: changes when the file is rewritten."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        return "missing"
    st = os.stat(path)
    return f"{st.st_mtime_ns}:{st.st_size}"


def sigmas_out(sigmas) -> torch.Tensor:
    """SIGMAS as ComfyUI's own schedulers return them: a float32 CPU tensor."""
    return torch.as_tensor(sigmas).detach().to("cpu", torch.float32).clone()


def model_fingerprint(model) -> str:
    """A short, stable id of what a MODEL computes, for profiles and saved schedules: the model class,
    its sigma grid, a sample of every weight tensor (name, shape and a few values), and the patches
    (LoRA keys and strengths) on the patcher. Same checkpoint + same patches -> same fingerprint."""
    import hashlib

    h = hashlib.sha256()
    base = model.model
    h.update(type(base).__name__.encode())
    ms = model_sampling_of(model)
    h.update(family_of_model_sampling(ms).encode())
    h.update(torch.as_tensor(ms.sigmas).detach().to("cpu", torch.float64).numpy().tobytes())
    mixture = getattr(base, "mixture", None)
    if mixture is not None:  # the analytic model
        h.update(f"analytic:{mixture.components}:{mixture.seed}".encode())
    with torch.no_grad():
        for name, p in sorted(base.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            if p.numel():
                flat = p.detach().reshape(-1)
                idx = torch.linspace(0, flat.numel() - 1, steps=min(8, flat.numel())).long()
                h.update(flat[idx.to(flat.device)].to("cpu", torch.float64).numpy().tobytes())
    for key in sorted(getattr(model, "patches", {}) or {}):
        h.update(key.encode())
        for patch in model.patches[key]:
            h.update(str(patch[0]).encode())  # strength
    return h.hexdigest()[:16]


def send_node_text(text: str) -> bool:
    """Show ``text`` on the executing node: ComfyUI's progress text (``PromptServer.send_progress_text``,
    drawn by the editor under the node's title while it runs). False when there is no server or no
    executing node (scripts, unit tests): the caller's log line is then the message."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return False
    ctx = get_executing_context()
    inst = prompt_server()
    if ctx is None or inst is None:
        return False
    inst.send_progress_text(text, ctx.node_id)
    return True


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StageText:
    """Where a long node is: ``show(stage, done, total)`` sends "<title> - <stage> - <done>/<total> of the
    work, ETA <t>" to the executing node (``send_node_text``), the ETA from the rate so far over the
    node's whole work (``done``/``total`` in the node's own progress units, e.g. its ProgressBar's).
    Repeats of one stage are sent at most every ``interval`` seconds; a new stage at once. ``sent``
    keeps every text sent (what the tests read)."""

    def __init__(self, title: str, interval: float = 1.0, clock=None):
        import time
        self.title, self.interval = title, float(interval)
        self.clock = clock or time.monotonic
        self.t0 = self.clock()
        self._last_stage, self._last_t = None, None
        self.sent = []

    def text(self, stage: str, done=None, total=None) -> str:
        out = f"{self.title} - {stage}"
        if done is not None and total:
            frac = min(1.0, max(0.0, done / total))
            out += f" - {100 * frac:.0f}% of the work"
            el = self.clock() - self.t0
            if 0 < frac < 1 and el > 0:
                out += f", ETA {_duration(el * (1 - frac) / frac)}"
        return out

    def show(self, stage: str, done=None, total=None, force: bool = False) -> str | None:
        now = self.clock()
        if not force and stage == self._last_stage and self._last_t is not None \
                and now - self._last_t < self.interval:
            return None
        self._last_stage, self._last_t = stage, now
        t = self.text(stage, done, total)
        self.sent.append(t)
        send_node_text(t)
        return t
