"""Small helpers shared by the node modules (ComfyUI's internals: ../comfy_adapter.py)."""
import torch

from ..comfy_adapter import family_of_model_sampling, model_sampling_of, prompt_server


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
