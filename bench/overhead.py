"""Benchmark: solver overhead per step as a ratio to one SD1.5-sized UNet call.

    python bench/overhead.py [--steps 20] [--unet-calls 3] [--no-write]

Denominator: one call of an SD1.5-sized UNet (random weights, 860M parameters, built through ComfyUI by
tests/unet_factory.py) on a 1x4x64x64 latent with a 1x77x768 context, through ComfyUI's
``BaseModel.apply_model`` (median of a few calls).

Numerator: everything a FewStep sampler does per step except the model call — the node's wrapper
(family lookup, ComfyUI noise sampler), sigma-grid set-up, coefficients, tensor updates, callback —
measured per step by running each sampler function as ComfyUI calls it, on the same 1x4x64x64 latent, with a
model stub that returns a precomputed tensor (its own cost is measured and subtracted). ComfyUI's
euler and dpmpp_2m / dpmpp_2m_sde are measured the same way for reference.

Both sides are timed in the same process with the same torch thread setting (one thread: the machine
has 2 shared cores). On a GPU the UNet call is ~100x faster while per-step Python overhead is not, so
the CPU ratio is a lower bound; the absolute per-step overhead is printed too.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import comfy_host  # noqa: E402

SHAPE = (1, 4, 64, 64)
_PP = dict(eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True)
_EDM = dict(s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0)
CONFIGS = [
    ("FewStepDDIM", dict(eta=0.0, s_noise=1.0), "DDIM"),
    ("FewStepDDIM", dict(eta=1.0, s_noise=1.0), "DDIM eta 1"),
    ("FewStepDPMSolver", dict(order=3), "DPM-Solver-3"),
    ("FewStepDPMSolverPP", dict(mode="2m", **_PP), "DPM-Solver++ 2M"),
    ("FewStepDPMSolverPP", dict(mode="3m", **_PP), "DPM-Solver++ 3M"),
    ("FewStepDPMSolverPP", dict(mode="2s", **_PP), "DPM-Solver++ 2S"),
    ("FewStepDPMSolverPP", dict(mode="sde_2m", **_PP), "DPM-Solver++ SDE 2M (brownian)"),
    ("FewStepDPMSolverPP", dict(mode="sde_3m", **dict(_PP, noise_type="gaussian")), "DPM-Solver++ SDE 3M (gaussian)"),
    ("FewStepUniPC", dict(variant="bh2", order=3, corrector=True, lower_order_final=True), "UniPC bh2-3"),
    ("FewStepDEIS", dict(order=3), "DEIS tAB3"),
    ("FewStepPNDM", dict(warmup="lower"), "PNDM (lower warm-up)"),
    ("FewStepEDM", dict(method="heun", **_EDM), "EDM Heun"),
    ("FewStepTCD", dict(gamma=0.3), "TCD gamma 0.3"),
]
COMFY_BUILTINS = ["euler", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc_bh2"]


class StubModel:
    """The k-diffusion model a sampler gets, minus the network: returns a fixed tensor. Carries the
    attributes FewStep's wrapper and ComfyUI's samplers read (model_patcher, model_sampling)."""

    def __init__(self, patcher, out):
        self.out = out
        self.calls = 0
        self.inner_model = types.SimpleNamespace(
            model_patcher=patcher, inner_model=types.SimpleNamespace(model_sampling=patcher.get_model_object("model_sampling")))

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.out


def time_sampler(fn, extra, patcher, sigmas, x, repeats=3):
    """(seconds per step of everything but the model calls, model calls per run)."""
    out = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * 0.5
    best = float("inf")
    calls = 0
    for _ in range(repeats):
        stub = StubModel(patcher, out)
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(stub, x.clone(), sigmas.clone(), extra_args={"seed": 7, "model_options": {}},
               callback=lambda d: None, disable=True, **extra)
        best = min(best, time.perf_counter() - t0)
        calls = stub.calls
    # subtract the stub's own cost
    stub = StubModel(patcher, out)
    t0 = time.perf_counter()
    for _ in range(calls):
        stub(x, sigmas[0])
    stub_time = time.perf_counter() - t0
    return max(0.0, best - stub_time) / (len(sigmas) - 1), calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--unet-calls", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/solvers.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    host = comfy_host.import_comfyui(comfy_host.find_comfyui())
    import comfy.samplers as cs
    import unet_factory

    patcher = unet_factory.make_unet_patcher("sd15", seed=0)
    ms = patcher.get_model_object("model_sampling")
    sigmas = cs.calculate_sigmas(ms, "karras", args.steps).cpu()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])

    # denominator: the UNet through ComfyUI's BaseModel.apply_model
    base = patcher.model
    ctx = unet_factory.conditioning(768, seed=0)[0][0]
    t = torch.full((1,), float(sigmas[len(sigmas) // 2]))
    times = []
    with torch.inference_mode():
        base.apply_model(x, t, c_crossattn=ctx)  # warm-up
        for _ in range(args.unet_calls):
            t0 = time.perf_counter()
            base.apply_model(x, t, c_crossattn=ctx)
            times.append(time.perf_counter() - t0)
    unet = statistics.median(times)
    n_params = sum(p.numel() for p in base.diffusion_model.parameters())

    rows = []
    for node, kw, label in CONFIGS:
        sampler = host.NODES[node]().get_sampler(**kw)[0]
        try:
            per_step, calls = time_sampler(sampler.sampler_function, sampler.extra_options, patcher, sigmas, x)
        except RuntimeError as e:  # a solver missing from this install
            print(f"skipped {label}: {e}")
            continue
        rows.append((f"FewStep {label}", per_step, calls))
    for name in COMFY_BUILTINS:
        sampler = cs.sampler_object(name)
        per_step, calls = time_sampler(sampler.sampler_function, sampler.extra_options, patcher, sigmas, x)
        rows.append((f"ComfyUI {name}", per_step, calls))

    lines = [f"SD1.5-sized UNet ({n_params / 1e6:.0f}M parameters), 1x4x64x64 latent, one call through "
             f"ComfyUI: {unet * 1e3:.0f} ms (median of {args.unet_calls}, CPU, {torch.get_num_threads()} thread).",
             "", f"| sampler ({args.steps} karras steps) | model calls | overhead per step (ms) | ratio to one UNet call |",
             "|---|---|---|---|"]
    worst = 0.0
    for label, per_step, calls in rows:
        ratio = per_step / unet
        if label.startswith("FewStep"):
            worst = max(worst, ratio)
        lines.append(f"| {label} | {calls} | {per_step * 1e3:.3f} | {ratio * 100:.4f}% |")
    lines.append("")
    lines.append(f"Worst FewStep overhead: {worst * 100:.4f}% of a UNet call (goal <= 2%: "
                 f"{'met' if worst <= 0.02 else 'NOT met'}).")
    print("\n".join(lines))
    if not args.no_write:
        from solvers import write_doc  # bench/solvers.py
        cmd = " ".join(["python bench/overhead.py"] + list(sys.argv[1:] if argv is None else argv))
        write_doc(f"Produced by `{cmd}`:\n\n" + "\n".join(lines),
                  "<!-- bench:overhead:start -->", "<!-- bench:overhead:end -->")
    return 0 if worst <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
