"""Small helpers shared by the node modules: reading ComfyUI objects into FewStep's core types."""
import torch

from ..core import families
from ..core.model_sigmas import ModelSigmas


def model_sampling_of(model):
    """The ``model_sampling`` of a ComfyUI MODEL (ModelPatcher), honouring patches that replace it."""
    return model.get_model_object("model_sampling")


def model_sigmas_of(model) -> ModelSigmas:
    return ModelSigmas.from_model_sampling(model_sampling_of(model), name=type(model.model).__name__)


def family_of(model) -> str:
    return families.family_of_model_sampling(model_sampling_of(model))


def model_sampling_of_k_model(k_model):
    """The ``model_sampling`` inside a sampler function, from the k-diffusion model wrapper ComfyUI
    passes (``KSamplerX0Inpaint`` -> CFGGuider wrapper -> ``model_patcher``)."""
    inner = getattr(k_model, "inner_model", None)
    patcher = getattr(inner, "model_patcher", None)
    if patcher is not None:
        return patcher.get_model_object("model_sampling")
    ms = getattr(getattr(inner, "inner_model", None), "model_sampling", None)
    if ms is not None:
        return ms
    raise RuntimeError("FewStep: cannot find the model's model_sampling to tell eps from flow")


def family_of_k_model(k_model) -> str:
    """The family inside a sampler function (see :func:`model_sampling_of_k_model`)."""
    return families.family_of_model_sampling(model_sampling_of_k_model(k_model))


def interrupt_check():
    """ComfyUI's Cancel as a callable for long pure computations (schedules/ never imports ComfyUI):
    it raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    import comfy.model_management
    return comfy.model_management.throw_exception_if_processing_interrupted


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
    h.update(families.family_of_model_sampling(ms).encode())
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
        from server import PromptServer
    except ImportError:
        return False
    ctx = get_executing_context()
    inst = getattr(PromptServer, "instance", None)
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
