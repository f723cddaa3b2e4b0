"""Benchmark: does FewStepAYSOptimize hold on models it was not developed on?

    python bench/ays.py [--models core m2 m16 m32 m4] [--families eps flow] [--eval-n 512]
                        [--samples 32] [--iterations 4] [--ref-steps 500] [--no-write]

Five analytic mixtures (exact denoiser, exact ODE endpoint): core/analytic.py's (8 components, 4x16x16)
and four others that differ in component count, dimension, component spread (variance), distance
between components, conditional weights, flow shift and cfg (MODELS below), each in both families (eps:
SD1.5's discrete sigmas; flow: its shift) at two cfg values -- 20 cases. The optimizer runs as a user
runs it: the real FewStepAYSOptimize node inside an in-process ComfyUI (CPU), at its default widgets
(steps 10, iterations 4, samples 32, seed 0, align_to "KSampler: dpmpp_2m"), on the analytic MODEL
built from that mixture, with an empty latent of the model's size.

Error: ||x_N - x_exact|| / ||x_exact|| over ``--eval-n`` evaluation noises (seed 777; none of them seen
by the optimizer), x_exact from a float64 RK4 solve; sampling in float32, as in ComfyUI. Every schedule is sampled with ComfyUI's own
sampler functions (comfy.samplers.sampler_object(name)) -- dpmpp_2m (the one aligned to), euler and
uni_pc -- and with FewStep's DPM-Solver++(2M). "Best fixed" is, per solver, the lowest error of every
fixed schedule the optimizer starts from (schedules/ays_optimize.py START_SCHEDULES: FewStep's Karras,
logSNR-uniform, time-uniform, time-quadratic, beta; ComfyUI's exponential, simple, normal, sgm_uniform,
kl_optimal; the published SD1.5 AYS table remapped).

Prints every case's ratio (worst first) and writes the table into docs/ays-optimizer.md between the
bench markers.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from _doc import write_block  # noqa: E402

import comfy_host  # noqa: E402

MARK_START = "<!-- bench:ays:start -->"
MARK_END = "<!-- bench:ays:end -->"
EVAL_SEED = 777
#: name -> mixture, latent size (H, W), flow shift, the two cfg values
MODELS = {
    "core": dict(components=8, seed=0, std_range=(0.25, 0.7), radius_range=(1.5, 4.0), cond_mass=0.9,
                 hw=(16, 16), shift=3.0, cfgs=(1.0, 5.0)),
    "m2": dict(components=2, seed=11, std_range=(0.08, 0.15), radius_range=(1.0, 2.0), cond_mass=0.7,
               hw=(8, 8), shift=1.0, cfgs=(1.0, 3.0)),
    "m16": dict(components=16, seed=12, std_range=(0.6, 1.2), radius_range=(2.0, 5.0), cond_mass=0.95,
                hw=(12, 12), shift=5.0, cfgs=(1.0, 7.0)),
    "m32": dict(components=32, seed=13, std_range=(0.05, 0.3), radius_range=(0.5, 2.5), cond_mass=0.8,
                hw=(6, 6), shift=2.0, cfgs=(2.0, 5.0)),
    "m4": dict(components=4, seed=14, std_range=(0.3, 0.45), radius_range=(3.0, 6.0), cond_mass=0.99,
               hw=(20, 20), shift=3.0, cfgs=(1.0, 4.0)),
}
ALIGNED = "ComfyUI dpmpp_2m"
CHECKS = ("ComfyUI dpmpp_2m", "ComfyUI euler", "ComfyUI uni_pc", "FewStep dpmpp_2m")


def describe_model(name):
    m = MODELS[name]
    return (f"{name}: {m['components']} components, latent 4x{m['hw'][0]}x{m['hw'][1]}, std {m['std_range'][0]:g}-"
            f"{m['std_range'][1]:g}, radius {m['radius_range'][0]:g}-{m['radius_range'][1]:g}, conditional mass "
            f"{m['cond_mass']:g} on half the components, flow shift {m['shift']:g}, cfg {m['cfgs'][0]:g} and "
            f"{m['cfgs'][1]:g}")


def solvers(family):
    import comfy.samplers as cs
    from fewstep.samplers.registry import SOLVERS
    out = {}
    for name in ("dpmpp_2m", "euler", "uni_pc"):
        smp = cs.sampler_object(name)
        fn, opts = smp.sampler_function, dict(smp.extra_options)
        out[f"ComfyUI {name}"] = (lambda fn, opts: lambda D, x, s: fn(D, x, s, extra_args={}, callback=None,
                                                                      disable=True, **opts))(fn, opts)
    out["FewStep dpmpp_2m"] = lambda D, x, s: SOLVERS["dpmpp_2m"](D, x, s, family=family)
    return out


def run_case(host, model_name, family, cfg, a):
    from fewstep.core.analytic import AnalyticModel, GaussianMixture, reference_solve
    from fewstep.nodes.analytic import make_analytic_patcher
    from fewstep.schedules import ays_optimize as ays
    import fewstep.nodes.ays_optimize as node_mod
    m = MODELS[model_name]
    mix = GaussianMixture(m["components"], m["seed"], m["std_range"], m["radius_range"], m["cond_mass"])
    am = AnalyticModel(family, m["shift"], mixture=mix)
    ms = am.model_sigmas
    D = am.denoiser(cfg)
    shape = (4,) + tuple(m["hw"])
    # the optimizer, as the node runs it (its result object captured on the way out)
    patcher, pos, neg = make_analytic_patcher(family, m["shift"], mixture=mix)
    got = {}
    real = ays.optimize_ays

    def spy(*args, **kw):
        got["res"] = r = real(*args, **kw)
        return r
    node_mod.core.optimize_ays = spy
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out = host.NODES["FewStepAYSOptimize"]().optimize(
                patcher, pos, neg, cfg, 10, a.iterations, a.samples, 0, "",
                latent_image={"samples": torch.zeros((1,) + shape)})
    finally:
        node_mod.core.optimize_ays = real
    seconds = time.perf_counter() - t0
    res = got["res"]
    sig = out["result"][0].double()
    # evaluation
    xT = am.noise((a.eval_n,) + shape, seed=EVAL_SEED) * ms.sigma_max
    ref = reference_solve(D, xT, ms.sigma_max, steps=a.ref_steps)
    ref_n = float(ref.norm())
    sol = solvers(family)

    def err(name, s):
        with torch.inference_mode():
            x = sol[name](D, xT.float().clone(), torch.as_tensor(s, dtype=torch.float32))  # as ComfyUI samples
        e = float((x.double() - ref).norm()) / ref_n
        return e if math.isfinite(e) else math.inf
    fixed = {n: ays.fixed_schedule(n, 10, ms) for n in ays.START_SCHEDULES}
    row = {"model": model_name, "family": family, "cfg": cfg, "seconds": seconds, "kept": res.kept,
           "start": res.init, "sigmas": [float(v) for v in sig], "per": {}}
    for name in CHECKS:
        fe = {k: err(name, v) for k, v in fixed.items()}
        best = min(fe, key=fe.get)
        row["per"][name] = dict(opt=err(name, sig), best=fe[best], best_name=best)
    r = row["per"][ALIGNED]
    row["ratio"] = r["opt"] / r["best"]
    row["worst_check"] = max((v["opt"] / v["best"], k) for k, v in row["per"].items())
    return row


def table(rows, a):
    rows = sorted(rows, key=lambda r: -r["ratio"])
    head = ("| model | family | cfg | kept (start) | best fixed with ComfyUI dpmpp_2m | optimised | **optimised / best "
            "fixed** (dpmpp_2m, aligned) | / best fixed with ComfyUI euler | ComfyUI uni_pc | FewStep 2M | seconds |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        p = r["per"]
        cells = [r["model"], r["family"], f"{r['cfg']:g}", f"{r['kept']} ({r['start']})",
                 f"{p[ALIGNED]['best_name']} {p[ALIGNED]['best']:.4f}", f"{p[ALIGNED]['opt']:.4f}",
                 f"**{r['ratio']:.2f}**"] + [f"{p[k]['opt'] / p[k]['best']:.2f}" for k in CHECKS[1:]] \
            + [f"{r['seconds']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    n = len(rows)
    le1 = sum(r["ratio"] <= 1.0 + 1e-3 for r in rows)   # 1e-3: float32 copies of the same fixed schedule
    le75 = sum(r["ratio"] <= 0.75 for r in rows)
    worst = max(rows, key=lambda r: r["worst_check"][0])
    out += ["",
            f"- Worst case with the sampler it was aligned to: {rows[0]['model']} {rows[0]['family']} cfg "
            f"{rows[0]['cfg']:g}, {rows[0]['ratio']:.2f}x the best fixed schedule.",
            f"- <= 1.0x the best fixed schedule with ComfyUI's dpmpp_2m (the sampler it was aligned to): {le1} of {n} "
            f"cases; the 0.75x goal: {le75} of {n}.",
            f"- Worst case with any of the four solvers: {worst['worst_check'][0]:.2f}x ({worst['worst_check'][1]}, "
            f"{worst['model']} {worst['family']} cfg {worst['cfg']:g}); the bound is 1.5x.",
            f"- Kept: optimised {sum(r['kept'] == 'optimised' for r in rows)}, stage-1 "
            f"{sum(r['kept'] == 'stage1' for r in rows)}, a fixed schedule "
            f"{sum(r['kept'].startswith('fixed:') for r in rows)} (the final guard).",
            "",
            f"FewStepAYSOptimize at its default widgets (steps 10, iterations {a.iterations}, samples {a.samples}, "
            f"seed 0, align_to KSampler: dpmpp_2m) in an in-process ComfyUI on the CPU; error = ||x - x_exact|| / "
            f"||x_exact|| over {a.eval_n} evaluation noises (seed {EVAL_SEED}), x_exact by RK4 ({a.ref_steps} steps). "
            f"Models: " + "; ".join(describe_model(m) for m in a.models) + ". Command: `python bench/ays.py"
            + ("" if a.eval_n == 512 else f" --eval-n {a.eval_n}") + ("" if a.ref_steps == 500 else
                                                                       f" --ref-steps {a.ref_steps}")
            + ("" if a.cfgs == "both" else f" --cfgs {a.cfgs}") + "`."]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--families", nargs="+", default=["eps", "flow"], choices=["eps", "flow"])
    ap.add_argument("--eval-n", type=int, default=512, help="evaluation noises per case")
    ap.add_argument("--samples", type=int, default=32, help="the node's samples widget (its default: 32)")
    ap.add_argument("--iterations", type=int, default=4, help="the node's iterations widget (its default: 4)")
    ap.add_argument("--ref-steps", type=int, default=500, help="RK4 steps of the exact solve")
    ap.add_argument("--cfgs", choices=["both", "one"], default="both",
                    help="both: every model at both its cfg values in both families (20 cases); one: core.py's model "
                         "at both, the others at one per family (eps at the second, flow at the first: 12 cases)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    path = comfy_host.find_comfyui()
    if path is None:
        raise SystemExit("no ComfyUI found ($COMFYUI_PATH or ~/comfy/ComfyUI)")
    host = comfy_host.import_comfyui(path)
    import logging
    logging.getLogger("FewStep").setLevel(logging.WARNING)
    rows = []
    t0 = time.time()
    for mname in a.models:
        for family in a.families:
            cfgs = MODELS[mname]["cfgs"]
            if a.cfgs == "one" and mname != "core":
                cfgs = cfgs[1:] if family == "eps" else cfgs[:1]
            for cfg in cfgs:
                r = run_case(host, mname, family, cfg, a)
                rows.append(r)
                print(f"{mname} {family} cfg {cfg:g}: ratio {r['ratio']:.3f} (kept {r['kept']}, start {r['start']}); "
                      + ", ".join(f"{k} {v['opt']:.4f} / best {v['best_name']} {v['best']:.4f}"
                                  for k, v in r["per"].items()) + f"; {r['seconds']:.0f} s", flush=True)
    text = table(rows, a) + f"\n\nTotal {time.time() - t0:.0f} s on 1 CPU thread."
    print(text)
    if not a.no_write:
        write_block("ays-optimizer.md", text, MARK_START, MARK_END)
        print("wrote docs/ays-optimizer.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
