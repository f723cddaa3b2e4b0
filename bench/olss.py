"""Benchmark: does FewStepOLSSTrain hold on models it was not developed on?

    python bench/olss.py [--models core m2 m16 m32 m4] [--families eps flow] [--budgets 5 10]
                         [--eval-batch 16] [--no-write]
    python bench/olss.py --memory          # peak memory of the streamed fit at 16 x 4x128x128, 200 steps

The five analytic mixtures of bench/ays.py (core/analytic.py's and four others: other component counts,
dimensions, variances, weights, flow shifts and cfg), both families, each at two cfg values, inside a
real in-process ComfyUI (CPU). OLSS is trained by the FewStepOLSSTrain node at its default widgets
(teacher deis_3, 100 Karras steps, 8 samples from seed 0, path planning on, select_on_heldout on with 4
held-out runs: the node itself picks OLSS, OLSS-P or the teacher's solver on a fixed schedule) for each
NFE, and sampled through FewStepOLSSSampler's SAMPLER and SIGMAS. The competitor is ComfyUI's best
built-in: every deterministic KSampler sampler x every built-in scheduler whose schedule starts at the
model's sigma_max, at the largest step count whose model calls fit the NFE (bench/solvers.py's search).
Error = ||x_N - x_exact|| / ||x_exact|| over a batch of --eval-batch seeds (generator seed 1234, not the
training seeds), x_exact from a float64 RK4 solve from the same initial state.

Prints every case's ratio (worst first) and writes the table into docs/olss.md between the bench markers.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from _doc import write_block  # noqa: E402

MARK_START = "<!-- bench:olss:start -->"
MARK_END = "<!-- bench:olss:end -->"
#: ComfyUI's deterministic ODE samplers (the stochastic ones do not solve the ODE and lose on this metric)
BUILTIN_SAMPLERS = ("euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "deis",
                    "res_multistep", "gradient_estimation", "uni_pc", "uni_pc_bh2")


def load_module(name):
    spec = importlib.util.spec_from_file_location(f"fewstep_bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_case(sb, models, model_name, family, cfg, eval_batch):
    """bench/solvers.py's Case on another mixture."""
    import comfy.samplers as cs
    from fewstep.core.analytic import AnalyticModel, GaussianMixture
    from fewstep.nodes.analytic import make_analytic_patcher
    m = models[model_name]
    mix = GaussianMixture(m["components"], m["seed"], m["std_range"], m["radius_range"], m["cond_mass"])
    case = sb.Case.__new__(sb.Case)
    case.family, case.cfg = family, cfg
    case.patcher, case.pos, case.neg = make_analytic_patcher(family, m["shift"], mixture=mix)
    case.ms = case.patcher.get_model_object("model_sampling")
    case.guider = cs.CFGGuider(case.patcher)
    case.guider.set_conds(case.pos, case.neg)
    case.guider.set_cfg(cfg)
    shape = (eval_batch, 4) + tuple(m["hw"])
    case.noise = torch.randn(shape, generator=torch.Generator().manual_seed(sb.NOISE_SEED))
    case.core = AnalyticModel(family, m["shift"], mixture=mix)
    case._exact = {}
    case.hw = tuple(m["hw"])
    return case


def from_sigma_max(case, make_sigmas):
    """Only schedules that start at the model's sigma_max (pure noise) solve the same problem."""
    smax = float(case.ms.sigma_max)

    def make(n):
        s = make_sigmas(n)
        if float(s[0]) < smax * (1 - 1e-3):
            raise ValueError(f"schedule starts at {float(s[0]):.4g} < sigma_max {smax:.4g}")
        return s
    return make


def best_builtin(sb, case, budget):
    import comfy.samplers as cs
    scheds = [n for n in cs.SCHEDULER_NAMES if not n.startswith("fewstep")]
    best = (math.inf, None)
    for sname in BUILTIN_SAMPLERS:
        for sch in scheds:
            r = sb.within_budget(case, lambda: cs.sampler_object(sname),
                                 from_sigma_max(case, lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu()), budget)
            if r and r[0] < best[0]:
                best = (r[0], f"{sname} + {sch} ({r[1]} steps)")
    return best


def train_profile(host, case, steps, name, teacher):
    latent = {"samples": torch.zeros((1, 4) + case.hw)}
    with torch.inference_mode():
        prof, _ = host.NODES["FewStepOLSSTrain"]().train(
            case.patcher, case.pos, case.neg, latent, cfg=case.cfg, teacher=teacher, teacher_steps=100,
            teacher_schedule="karras", steps=steps, samples=8, seed=0, path_planning=True, name=name)["result"]
    return prof


def run_olss(host, case, prof):
    sampler, sigmas = host.NODES["FewStepOLSSSampler"]().build("(use the linked profile)", 1.0, profile=prof)
    err, calls = case.run(sampler, sigmas)
    assert calls == prof.steps, (calls, prof.steps)
    return err


def table(rows, a):
    rows = sorted(rows, key=lambda r: -r["ratio"])
    out = ["| model | family | cfg | NFE | OLSS profile (the node's held-out choice) | error | best ComfyUI built-in "
           "| **profile / best built-in** |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['family']} | {r['cfg']:g} | {r['nfe']} | {r['method']} | {r['err']:.2e} | "
                   f"{r['comfy'][0]:.2e} ({r['comfy'][1]}) | **{r['ratio']:.3f}** |")
    n = len(rows)
    ok = sum(r["ratio"] <= 0.7 for r in rows)
    methods = {}
    for r in rows:
        methods[r["method"].split(":")[0]] = methods.get(r["method"].split(":")[0], 0) + 1
    out += ["", f"- Worst case: {rows[0]['model']} {rows[0]['family']} cfg {rows[0]['cfg']:g} NFE {rows[0]['nfe']}, "
                f"{rows[0]['ratio']:.3f}x ComfyUI's best built-in.",
            f"- <= 0.7x ComfyUI's best built-in: {ok} of {n} cases.",
            "- The node's held-out choice: " + ", ".join(f"{k} {v}" for k, v in sorted(methods.items())) + ".",
            "", f"FewStepOLSSTrain at its default widgets (teacher {a.teacher}, 100 Karras steps, 8 samples, seed 0, path "
                f"planning, select_on_heldout with 4 held-out runs), training latent 1x4xHxW of each model; evaluation "
                f"batch {a.eval_batch} seeds (noise seed 1234), float32 through ComfyUI; built-ins: "
                + ", ".join(BUILTIN_SAMPLERS) + " x every built-in scheduler. Command: `python bench/olss.py"
                + ("" if a.eval_batch == 16 else f" --eval-batch {a.eval_batch}")
                + ("" if a.teacher == "deis_3" else f" --teacher {a.teacher}") + "`."]
    return "\n".join(out)


def write_doc(text, start=MARK_START, end=MARK_END):
    write_block("olss.md", text, start, end)


# ------------------------------------------------------------------------------------------------
def memory(samples: int, keep: bool, side: int = 128, teacher_steps: int = 200) -> int:
    """Peak RSS (bytes) of folding ``samples`` recorded trajectories (float32 4 x side x side, as the
    train node keeps them) into the running QR, one at a time as the train node does; ``keep`` also
    keeps every trajectory's states as the closed-loop refit does."""
    import resource
    from fewstep.samplers.olss import TrajectoryQR
    qr = TrajectoryQR(teacher_steps)
    g = torch.Generator().manual_seed(0)
    shape = (1, 4, side, side)
    kept = []
    for _ in range(samples):
        states = [torch.randn(shape, generator=g) for _ in range(teacher_steps + 1)]
        outputs = [torch.randn(shape, generator=g) for _ in range(teacher_steps)]
        qr.add(states, outputs)
        if keep:
            kept.append(states)
        del states, outputs
    qr.finalize()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["core", "m2", "m16", "m32", "m4"])
    ap.add_argument("--families", nargs="+", default=["eps", "flow"], choices=["eps", "flow"])
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/olss.md")
    ap.add_argument("--teacher", default=None, help="the teacher widget (default: the node's default)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--memory", action="store_true", help="measure peak memory of the streamed fit and exit")
    ap.add_argument("--eval-batch", type=int, default=16,
                    help="evaluation seeds (batch of the evaluation noise; bench/solvers.py defaults to 64)")
    ap.add_argument("--memory-samples", type=int, default=16)
    ap.add_argument("--memory-one", choices=["keep", "stream"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids contention
    if args.memory_one:
        t0 = time.time()
        peak = memory(args.memory_samples, args.memory_one == "keep")
        print(f"{peak / 2**30:.2f} {time.time() - t0:.0f}")
        return 0
    if args.memory:
        import subprocess
        res = {}
        for mode in ("stream", "keep"):
            out = subprocess.run([sys.executable, __file__, "--memory-one", mode, "--memory-samples",
                                  str(args.memory_samples)], capture_output=True, text=True, check=True).stdout
            res[mode] = out.split()
        line = (f"Produced by `python bench/olss.py --memory`: {args.memory_samples} samples of 4x128x128 at 200 "
                f"teacher steps (float32 trajectories folded one at a time), peak RSS of the whole Python process: "
                f"{res['stream'][0]} GiB with closed_loop off (only the QR factor and one trajectory live; "
                f"{res['stream'][1]} s), {res['keep'][0]} GiB with closed_loop on (teacher states kept for the "
                f"refit; {res['keep'][1]} s), 1 CPU thread.")
        print(line)
        if not args.no_write:
            write_doc(line, "<!-- bench:olss-memory:start -->", "<!-- bench:olss-memory:end -->")
        return 0
    sb = load_module("solvers")
    models = load_module("ays").MODELS
    host = sb.import_host()
    if args.teacher is None:
        from fewstep.nodes.olss import DEFAULT_TEACHER
        args.teacher = DEFAULT_TEACHER
    import logging
    logging.getLogger("FewStep").setLevel(logging.WARNING)
    import folder_paths
    tmpdir = tempfile.mkdtemp(prefix="fewstep-olss-bench-")
    folder_paths.folder_names_and_paths["fewstep_olss"] = ([tmpdir], {".safetensors"})
    t0 = time.time()
    rows = []
    for mname in args.models:
        for family in args.families:
            for cfg in models[mname]["cfgs"]:
                case = make_case(sb, models, mname, family, cfg, args.eval_batch)
                for b in args.budgets:
                    prof = train_profile(host, case, b, f"bench_{mname}_{family}_{cfg:g}_{b}", args.teacher)
                    err = run_olss(host, case, prof)
                    comfy_best = best_builtin(sb, case, b)
                    method = prof.extra.get("method", "?")
                    if method == "solver":
                        method = "solver: " + prof.extra.get("solver", "")
                    r = dict(model=mname, family=family, cfg=cfg, nfe=b, err=err, comfy=comfy_best, method=method,
                             ratio=err / comfy_best[0])
                    rows.append(r)
                    print(f"{mname} {family} cfg {cfg:g} NFE {b}: {method} {err:.3e} | ComfyUI {comfy_best[0]:.3e} "
                          f"({comfy_best[1]}) | ratio {r['ratio']:.3f}", flush=True)
    text = table(rows, args) + f"\n\nTotal {time.time() - t0:.0f} s on 1 CPU thread."
    print(text)
    if not args.no_write:
        write_doc(text)
    return 0 if all(r["ratio"] <= 0.7 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
