"""The behaviour lock: outputs of every named solver and every KSampler entry FewStep registers, on the
analytic model (core/analytic.py), both families, a few step counts.

    nice -n 15 python3 -m fewstep.tools.behaviour_lock      # rewrites tests/data/behaviour_lock.safetensors

(with a folder holding a ``fewstep`` link to the checkout on PYTHONPATH). ``tests/test_behaviour_lock.py``
recomputes every case and asserts bit-identical outputs. The fixture pins behaviour across refactors
only: it was written from the code as it was, so it says nothing about correctness (other tests do).
Regenerate it only for a deliberate change of a solver's output, and say so in the commit message.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "behaviour_lock.safetensors"
FAMILIES = ("eps", "flow")
STEPS = (3, 5, 8)
SHAPE = (2, 3, 4, 4)
SEED = 7


def sigmas_for(family: str, steps: int) -> torch.Tensor:
    """A fixed, non-uniform grid ending at 0: log-uniform in eps, a shifted linear grid from 1 in flow."""
    if family == "eps":
        s = torch.exp(torch.linspace(math.log(14.6146), math.log(0.0292), steps, dtype=torch.float64))
    else:
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
        s = 3.0 * t / (1.0 + 2.0 * t)
    return torch.cat([s, s.new_zeros(1)]).to(torch.float32)


def solver_cases():
    """name -> callable(model, x, sigmas, extra_args, family) for every entry of the registry."""
    from ..samplers.registry import SOLVERS

    return {f"solver/{n}": (lambda spec: lambda m, x, s, e, f: spec(m, x, s, e, family=f))(spec)
            for n, spec in SOLVERS.items()}


def ksampler_cases():
    """name -> callable for every sampler FewStep adds to KSampler's list (the pure call it makes)."""
    from ..samplers.registry import KSAMPLER_ENTRIES

    return {f"ksampler/{n}": (lambda spec: lambda m, x, s, e, f: spec(m, x, s, e, family=f))(spec)
            for n, spec in KSAMPLER_ENTRIES.items()}


def all_cases():
    cases = {}
    cases.update(solver_cases())
    cases.update(ksampler_cases())
    return cases


def compute(cases=None) -> dict:
    from ..core.analytic import AnalyticModel

    torch.set_num_threads(1)
    out = {}
    for family in FAMILIES:
        am = AnalyticModel(family)
        model = am.denoiser()
        for steps in STEPS:
            sig = sigmas_for(family, steps)
            noise = am.noise(SHAPE, SEED, dtype=torch.float32)
            for name, fn in (cases or all_cases()).items():
                x = am.initial_state(noise, float(sig[0]))
                y = fn(model, x.clone(), sig.clone(), {"seed": SEED}, family)
                out[f"{name}/{family}/{steps}"] = y.detach().to("cpu").contiguous()
    return out


def main():
    from safetensors.torch import save_file

    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    tmp = FIXTURE.with_suffix(".tmp")
    save_file(compute(), str(tmp))
    tmp.replace(FIXTURE)
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
