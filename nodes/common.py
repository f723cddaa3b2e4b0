"""Small helpers shared by the node modules (ComfyUI's internals: ../comfy_adapter.py)."""
import torch

from ..comfy_adapter import family_of_model_sampling, model_sampling_of


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
