"""Benchmark: OLSS (and OLSS-P) against DPM-Solver++(2M) and the best FewStep / ComfyUI solver + schedule.

    python bench/olss.py [--quick] [--no-write] [--budgets 5 10]
    python bench/olss.py --memory          # peak memory of the streamed fit at 16 x 4x128x128, 200 steps

On the analytic model (exact denoiser, exact ODE endpoint), inside a real in-process ComfyUI (CPU), with
the same cases, noise, metric and competitor search as bench/solvers.py (imported from it): eps (SD1.5
sigmas) and flow (shift 3), each at cfg 1 and cfg 5; error = ||x_N - x_exact|| / ||x_exact|| over a batch
of --eval-batch seeds (default 32) drawn from generator seed 1234, x_exact from a float64 RK4 solve from the same initial state.

OLSS is trained with the FewStepOLSSTrain node (teacher recorded through ComfyUI's sampling path:
DPM-Solver++(2M), 200 steps, Karras) on 16 noise seeds 0..15 — drawn by ComfyUI's prepare_noise, so
disjoint from the evaluation noise — and sampled through FewStepOLSSSampler's SAMPLER and SIGMAS.
Competitors at each NFE budget (largest step count with model calls <= NFE):
* DPM-Solver++(2M): FewStep's (lower_order_final on and off) on every FewStep schedule and ComfyUI's
  dpmpp_2m on every built-in scheduler, best of all;
* best FewStep solver + schedule and best ComfyUI sampler + scheduler: bench/solvers.py's full search.

Writes the table into docs/olss.md between the bench markers and the plot to docs/img/olss.png.
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
TRAIN = dict(teacher="dpmpp_2m", teacher_steps=200, teacher_schedule="karras", samples=16, seed=0)
TRAIN_LATENT = (1, 4, 16, 16)


def load_solver_bench():
    spec = importlib.util.spec_from_file_location("fewstep_bench_solvers", REPO / "bench" / "solvers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def from_sigma_max(case, make_sigmas):
    """Only schedules that start at the model's sigma_max (pure noise) solve the same problem as the
    others: ComfyUI's ddim_uniform, for one, starts lower (at 1 step: sigma 0.006 on flow), and an exact
    solve from there is a different, easier task. Such schedules are skipped (within_budget sees an
    error and scores them inf)."""
    smax = float(case.ms.sigma_max)

    def make(n):
        s = make_sigmas(n)
        if float(s[0]) < smax * (1 - 1e-3):
            raise ValueError(f"schedule starts at {float(s[0]):.4g} < sigma_max {smax:.4g}")
        return s
    return make


def best_others(sb, host, case, budget, quick):
    """bench/solvers.py's competitor search (every built-in sampler x scheduler, every FewStep solver
    configuration x schedule), restricted to schedules that start at sigma_max."""
    import comfy.samplers as cs
    samplers, scheds = sb.builtin_combinations(host)
    fs_solvers, fs_scheds = sb.FEWSTEP_SOLVERS, sb.FEWSTEP_SCHEDULES
    if quick:
        samplers = ["euler", "dpmpp_2m", "uni_pc_bh2", "deis", "ipndm", "ipndm_v", "res_multistep"]
        scheds = ["karras", "simple", "sgm_uniform", "beta", "kl_optimal"]
        fs_solvers = [c for c in fs_solvers if c[2] in ("dpmpp_3m", "unipc_bh2_o3", "deis_3", "unipc_bh1_o3")]
        fs_scheds = [s for s in fs_scheds if s[0] in ("logsnr_uniform", "karras", "time_quadratic")]
    sched_node = host.NODES["FewStepScheduler"]()
    b_best = (math.inf, None)
    for sname in samplers:
        for sch in scheds:
            r = sb.within_budget(case, lambda: cs.sampler_object(sname),
                                 from_sigma_max(case, lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu()), budget)
            if r and r[0] < b_best[0]:
                b_best = (r[0], f"{sname} + {sch} ({r[1]} steps)")
    f_best = (math.inf, None)
    for node, kw, label in fs_solvers:
        for sch, rho in fs_scheds:
            r = sb.within_budget(case, lambda: host.NODES[node]().get_sampler(**kw)[0],
                                 from_sigma_max(case, lambda n: sched_node.get_sigmas(case.patcher, sch, n, 1.0, rho)[0]),
                                 budget)
            if r and r[0] < f_best[0]:
                sl = f"{sch} rho {rho:g}" if sch in ("karras", "polyexponential") else sch
                f_best = (r[0], f"{label} + {sl} ({r[1]} steps)")
    return f_best, b_best


def dpmpp_2m_best(sb, host, case, budget, quick):
    import comfy.samplers as cs
    best = (math.inf, None)
    sched_node = host.NODES["FewStepScheduler"]()
    fs_scheds = sb.FEWSTEP_SCHEDULES if not quick else [s for s in sb.FEWSTEP_SCHEDULES if s[0] in ("karras",
                                                                                                  "logsnr_uniform")]
    for lof in (True, False):
        for sch, rho in fs_scheds:
            r = sb.within_budget(case, lambda: host.NODES["FewStepDPMSolverPP"]().get_sampler(
                mode="2m", lower_order_final=lof, **sb._PP)[0],
                from_sigma_max(case, lambda n: sched_node.get_sigmas(case.patcher, sch, n, 1.0, rho)[0]), budget)
            if r and r[0] < best[0]:
                best = (r[0], f"FewStep dpmpp_2m{'' if lof else '_nolof'} + {sch} ({r[1]} steps)")
    scheds = [n for n in cs.SCHEDULER_NAMES if not n.startswith("fewstep")]
    if quick:
        scheds = ["karras", "simple"]
    for sch in scheds:
        r = sb.within_budget(case, lambda: cs.sampler_object("dpmpp_2m"),
                             from_sigma_max(case, lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu()), budget)
        if r and r[0] < best[0]:
            best = (r[0], f"ComfyUI dpmpp_2m + {sch} ({r[1]} steps)")
    return best


def train_profile(host, family, cfg, steps, planning, folder, train):
    from fewstep.nodes.analytic import make_analytic_patcher
    import comfy.samplers  # noqa: F401
    sb_shift, comps, mix_seed = 3.0, 8, 0
    patcher, pos, neg = make_analytic_patcher(family, sb_shift, comps, mix_seed)
    latent = {"samples": torch.zeros(TRAIN_LATENT)}
    with torch.inference_mode():
        prof, _ = host.NODES["FewStepOLSSTrain"]().train(
            patcher, pos, neg, latent, cfg=cfg, steps=steps, path_planning=planning,
            name=f"bench_{family}_{cfg:g}_{steps}_{'olss' if planning else 'olssp'}", **train)
    return prof


def run_olss(host, case, prof):
    sampler, sigmas = host.NODES["FewStepOLSSSampler"]().build("(use the linked profile)", 1.0, profile=prof)
    err, calls = case.run(sampler, sigmas)
    assert calls == prof.steps, (calls, prof.steps)
    return err


def plot(results, budgets, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 2 if len(results) > 1 else 1
    rows_ = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.9 * rows_), sharey=False, squeeze=False)
    axes = list(axes.flat)
    styles = [("olss", "OLSS", "o-", "C3"), ("olss_cl", "OLSS + closed-loop refit", "o--", "C5"),
              ("olssp", "OLSS-P (uniform)", "s--", "C1"),
              ("dpm2m", "DPM-Solver++(2M), best schedule", "^-", "C0"),
              ("fewstep", "best FewStep solver+schedule", "v:", "C2"),
              ("comfy", "best ComfyUI sampler+scheduler", "d:", "C7")]
    for ax, ((family, cfg), rows) in zip(axes, results.items()):
        for key, label, st, color in styles:
            ax.plot(budgets, [rows[b][key][0] for b in budgets], st, color=color, label=label)
        ax.set_yscale("log")
        ax.set_xticks(budgets)
        ax.set_xlabel("NFE (model calls)")
        ax.set_title(f"{'eps (SD1.5 sigmas)' if family == 'eps' else 'flow (shift 3)'}, cfg {cfg:g}")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[::cols]:
        ax.set_ylabel("relative error vs exact ODE endpoint")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def table(results, budgets):
    lines = ["| case | NFE | OLSS | OLSS + closed-loop refit | OLSS-P | DPM-Solver++(2M) best | OLSS / DPM++(2M) | best FewStep "
             "| best ComfyUI | OLSS / best other |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (family, cfg), rows in results.items():
        name = "eps (SD1.5 sigmas)" if family == "eps" else "flow (shift 3)"
        for b in budgets:
            r = rows[b]
            o, q, p, d, f, c = (r[k][0] for k in ("olss", "olss_cl", "olssp", "dpm2m", "fewstep", "comfy"))
            lines.append(f"| {name}, cfg {cfg:g} | {b} | {o:.2e} | {q:.2e} | {p:.2e} | {d:.2e} ({r['dpm2m'][1]}) | {o / d:.3f} "
                         f"| {f:.2e} ({r['fewstep'][1]}) | {c:.2e} ({r['comfy'][1]}) | {o / min(f, c):.3f} |")
    return "\n".join(lines)


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
    ap.add_argument("--quick", action="store_true", help="smaller competitor search and training (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/olss.md or the plot")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--memory", action="store_true", help="measure peak memory of the streamed fit and exit")
    ap.add_argument("--eval-batch", type=int, default=32,
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
    sb = load_solver_bench()
    # the evaluation batch: with few seeds the ranking of methods whose errors are within ~2x of each
    # other flips with the draw (see docs/solvers.md)
    sb.SHAPE = (args.eval_batch,) + tuple(sb.SHAPE[1:])
    host = sb.import_host()
    import folder_paths
    tmpdir = tempfile.mkdtemp(prefix="fewstep-olss-bench-")
    folder_paths.folder_names_and_paths["fewstep_olss"] = ([tmpdir], {".safetensors"})
    train = dict(TRAIN)
    if args.quick:
        train.update(teacher_steps=100, samples=4)
    t0 = time.time()
    results = {}
    for family, cfg in sb.CASES:
        case = sb.Case(host, family, cfg)
        rows = {}
        for b in args.budgets:
            olss_err = run_olss(host, case, train_profile(host, family, cfg, b, True, tmpdir, train))
            olssp_err = run_olss(host, case, train_profile(host, family, cfg, b, False, tmpdir, train))
            olss_cl = run_olss(host, case, train_profile(host, family, cfg, b, True, tmpdir,
                                                         dict(train, closed_loop=True)))
            dpm = dpmpp_2m_best(sb, host, case, b, args.quick)
            (fe, fl), (be, bl) = best_others(sb, host, case, b, args.quick)
            rows[b] = {"olss": (olss_err, ""), "olssp": (olssp_err, ""), "olss_cl": (olss_cl, ""), "dpm2m": dpm, "fewstep": (fe, fl),
                       "comfy": (be, bl)}
            print(f"  {family} cfg {cfg:g} NFE {b}: OLSS {olss_err:.3e} | OLSS closed-loop {olss_cl:.3e} | "
                  f"OLSS-P {olssp_err:.3e} | "
                  f"DPM++2M {dpm[0]:.3e} ({dpm[1]}) | FewStep {fe:.3e} ({fl}) | ComfyUI {be:.3e} ({bl})", flush=True)
        results[(family, cfg)] = rows
    ok_dpm = all(r[b]["olss"][0] <= 0.5 * r[b]["dpm2m"][0] for r in results.values() for b in args.budgets)
    ok_best = all(r[b]["olss"][0] <= 0.7 * min(r[b]["fewstep"][0], r[b]["comfy"][0])
                  for r in results.values() for b in args.budgets)
    text = table(results, args.budgets)
    summary = (f"\nGoals: OLSS <= 0.5 x DPM-Solver++(2M) at every NFE: {'met' if ok_dpm else 'NOT met'}; "
               f"OLSS <= 0.7 x best FewStep/ComfyUI solver + schedule: {'met' if ok_best else 'NOT met'}. "
               f"Training: {train['samples']} seeds x latent {TRAIN_LATENT[1:]}, teacher {train['teacher']} "
               f"{train['teacher_steps']} steps {train['teacher_schedule']}; evaluation latent {tuple(sb.SHAPE)} "
               f"({args.eval_batch} seeds from noise seed {sb.NOISE_SEED}), float32 through ComfyUI; {time.time() - t0:.0f} s on "
               f"{torch.get_num_threads()} CPU thread.")
    print(text)
    print(summary)
    if not args.no_write and not args.quick:
        cmd = "python bench/olss.py" + ("" if args.budgets == [5, 10] else " --budgets " +
                                        " ".join(map(str, args.budgets)))
        cmd += "" if args.eval_batch == 32 else f" --eval-batch {args.eval_batch}"
        write_doc(f"Produced by `{cmd}`:\n\n" + text + "\n" + summary + "\n\n![OLSS benchmark](img/olss.png)")
        plot(results, args.budgets, REPO / "docs" / "img" / "olss.png")
    return 0 if (ok_dpm and ok_best) else 1


if __name__ == "__main__":
    sys.exit(main())
