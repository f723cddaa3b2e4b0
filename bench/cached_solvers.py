"""Measurement (issue 17, item 4): do FewStep's multistep solvers lose accuracy when some steps'
model outputs are cached? Report only; no solver behaviour is changed.

    python bench/cached_solvers.py [--steps 10 20] [--cfg 3.0]

Model: FewStep's analytic flow model (core/analytic.py: Gaussian mixture with an exact denoiser,
shift 3, 8 components, 4x16x16 latent, CFG), so the exact ODE solution is known (RK4, 2000 steps).
Schedule: flow "simple" (t uniform in [1, 0], sigma = s t / (1 + (s-1) t)). A cached step here
reuses the whole denoised output of the last full step (what FORA/DeepCache approximate from
above; block caching errs less), with DeepCache's uniform schedule (full steps 0, N, 2N, ...;
core/cache_schedule.full_steps). Error: RMS of the final latent vs the exact solution, averaged over
4 seeds. Columns: uncached; cached at N=2 and N=3; uncached with the same number of model calls
as N=2/N=3 (fewer steps: the equal-compute alternative). Pure torch, no ComfyUI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO.parent))
try:
    import fewstep  # noqa: F401
except ImportError:  # run from a checkout not named fewstep: tests/conftest.py's trick
    import atexit
    import os
    import shutil
    import tempfile
    holder = tempfile.mkdtemp(prefix="fewstep-path-")
    atexit.register(shutil.rmtree, holder, True)
    os.symlink(REPO, os.path.join(holder, "fewstep"), target_is_directory=True)
    sys.path.insert(0, holder)

from fewstep.core.analytic import AnalyticModel, reference_solve  # noqa: E402
from fewstep.core.cache_schedule import full_steps  # noqa: E402
from fewstep.samplers.deis import sample_deis  # noqa: E402
from fewstep.samplers.dpm_solver_pp import sample_dpmpp_multistep  # noqa: E402
from fewstep.samplers.euler import sample_euler  # noqa: E402
from fewstep.samplers.unipc import sample_unipc  # noqa: E402

SOLVERS = {
    "Euler": lambda m, x, s: sample_euler(m, x, s, family="flow"),
    "DPM-Solver++(2M)": lambda m, x, s: sample_dpmpp_multistep(m, x, s, family="flow", order=2),
    "DPM-Solver++(3M)": lambda m, x, s: sample_dpmpp_multistep(m, x, s, family="flow", order=3),
    "UniPC-3 bh2": lambda m, x, s: sample_unipc(m, x, s, family="flow", variant="bh2", order=3),
    "DEIS tAB3": lambda m, x, s: sample_deis(m, x, s, family="flow", order=3),
}


def flow_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def cached_model(model, sigmas, interval):
    full = set(full_steps(len(sigmas) - 1, interval))
    last = {}

    def m(x, sigma, **kw):
        i = int(torch.argmin((sigmas - float(sigma.flatten()[0])).abs()))
        if i in full or "out" not in last:
            last["out"] = model(x, sigma, **kw)
            return last["out"]
        return last["out"].clone()
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--cfg", type=float, default=3.0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    am = AnalyticModel("flow", 3.0, 8, 0)
    model = am.denoiser(cfg=a.cfg)
    shape = (1, 4, 16, 16)
    seeds = range(4)
    starts = {s: am.initial_state(am.noise(shape, s), 1.0) for s in seeds}
    refs = {s: reference_solve(model, starts[s], 1.0, 0.0) for s in seeds}

    def err(fn, steps, interval=1):
        e = 0.0
        sig = flow_sigmas(steps)
        for s in seeds:
            m = model if interval == 1 else cached_model(model, sig, interval)
            out = fn(m, starts[s].clone(), sig)
            e += float(((out - refs[s]) ** 2).mean().sqrt())
        return e / len(seeds)

    print(f"analytic flow model, CFG {a.cfg}, RMS error of the final latent vs the exact ODE solution "
          f"(mean of {len(seeds)} seeds)\n")
    for steps in a.steps:
        n2, n3 = len(full_steps(steps, 2)), len(full_steps(steps, 3))
        print(f"{steps} steps | uncached | cached N=2 ({n2} calls) | uncached {n2} steps | cached N=3 ({n3} calls) "
              f"| uncached {n3} steps")
        print("|---|---|---|---|---|---|")
        for name, fn in SOLVERS.items():
            row = [err(fn, steps), err(fn, steps, 2), err(fn, n2), err(fn, steps, 3), err(fn, n3)]
            print(f"| {name} | " + " | ".join(f"{v:.2e}" for v in row) + " |", flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
