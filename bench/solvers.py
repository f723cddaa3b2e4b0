"""Benchmark: FewStep's best solver + schedule vs ComfyUI's best built-in sampler + scheduler.

    python bench/solvers.py [--quick] [--no-write] [--seeds N]

On the analytic model (exact denoiser, exact ODE endpoint), inside a real in-process ComfyUI (CPU):
cases eps and flow (shift 3), each at cfg 1 and cfg 5; budgets NFE 5, 10 and 20. Every run goes
through ComfyUI's CFGGuider.sample with the same model, noise (a batch of 64 seeds) and the sigmas of
the schedule; NFE is counted as calls of the sampler's model (one call = one CFG'd denoiser
evaluation). For each budget and combination the largest step count whose calls are <= NFE is used.

Error = ||x_N - x_exact|| / ||x_exact|| over the batch, x_exact from a float64 RK4 solve (500 steps in
log sigma) from the same initial state. Built-in: every KSampler sampler (but dpm_adaptive, whose
NFE is adaptive, and the *_gpu copies of CPU samplers) x every built-in scheduler, stochastic ones
included (they do not solve the ODE, so they lose on this metric). FewStep: every deterministic
FewStep solver node configuration (first-order ones once: DDIM = DPM-Solver-1 = DEIS-1 = Euler) x every FewStepScheduler schedule (karras rho 7, polyexponential
rho 1, ays, beta), and, reported apart, the same solvers on ComfyUI's built-in schedulers (a FewStep solver
node takes any SIGMAS). On both sides a schedule counts only if it starts at the model's sigma_max,
i.e. from pure noise (Case.run).

The last column is a 90% bootstrap interval of the ratio over the noise seeds (paired: the same
resampled seeds for both entries).

Writes the table into docs/solvers.md between the bench markers (atomically).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from _doc import write_block  # noqa: E402

import comfy_host  # noqa: E402

CASES = [("eps", 1.0), ("eps", 5.0), ("flow", 1.0), ("flow", 5.0)]
BUDGETS = (5, 10, 20)
SHIFT = 3.0
COMPONENTS = 8
MIX_SEED = 0
#: 64 noise seeds: the error is dominated by the few seeds whose trajectories pass near a boundary
#: between mixture modes, so with 4 or 16 seeds which method wins a close cell depends on the draw
#: (the table's last column shows the remaining spread)
SHAPE = (64, 4, 16, 16)
BOOT = 2000          # bootstrap resamples of the seeds
NOISE_SEED = 1234
MARK_START = "<!-- bench:solvers:start -->"
MARK_END = "<!-- bench:solvers:end -->"

# FewStep node configurations (node id, widgets, short label)
_PP = dict(eta=1.0, s_noise=1.0, noise_type="brownian")
_EDM = dict(s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0)
FEWSTEP_SOLVERS = (
    [("FewStepDDIM", dict(eta=0.0, s_noise=1.0), "ddim")]
    + [("FewStepDPMSolver", dict(order=o), f"dpm_solver_{o}") for o in (2, 3)]
    + [("FewStepDPMSolverPP", dict(mode=m, lower_order_final=lof, **_PP), f"dpmpp_{m}{'' if lof else '_nolof'}")
       for m in ("2m", "3m") for lof in (True, False)]
    + [("FewStepDPMSolverPP", dict(mode="2s", lower_order_final=True, **_PP), "dpmpp_2s")]
    + [("FewStepUniPC", dict(variant=v, order=o, corrector=True, lower_order_final=lof),
        f"unipc_{v}_o{o}{'' if lof else '_nolof'}")
       for v in ("bh1", "bh2") for o in (2, 3) for lof in (True, False)]
    + [("FewStepDEIS", dict(order=o), f"deis_{o}") for o in (2, 3, 4)]
    + [("FewStepPNDM", dict(warmup=w), f"pndm_{w}") for w in ("lower", "rk")]
    + [("FewStepEDM", dict(method="heun", **_EDM), "edm_heun")]
)
FEWSTEP_SCHEDULES = [("karras", 7.0), ("logsnr_uniform", 7.0), ("time_uniform", 7.0), ("time_quadratic", 7.0),
                     ("polyexponential", 1.0), ("ays", 7.0), ("beta", 7.0)]
#: FewStep's solver nodes also run on ComfyUI's schedulers (BasicScheduler): searched too, reported apart
COMFY_SCHEDULE_PREFIX = "comfy:"


def import_host():
    path = comfy_host.find_comfyui()
    if path is None:
        raise SystemExit("no ComfyUI found ($COMFYUI_PATH or ~/comfy/ComfyUI)")
    return comfy_host.import_comfyui(path)


class Counted:
    """The sampler's model with a call counter; every other attribute is the model's own."""

    def __init__(self, model, counter):
        self._model = model
        self._counter = counter

    def __call__(self, *args, **kwargs):
        self._counter[0] += 1
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def counting(sampler, counter, record):
    import comfy.samplers as cs
    fn = sampler.sampler_function

    def wrapped(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
        record["x_init"] = x.detach().clone()
        return fn(Counted(model, counter), x, sigmas, extra_args=extra_args, callback=callback,
                  disable=disable, **kw)

    return cs.KSAMPLER(wrapped, dict(sampler.extra_options), dict(sampler.inpaint_options))


class Case:
    def __init__(self, host, family, cfg):
        import comfy.samplers as cs
        from fewstep.core.analytic import AnalyticModel
        from fewstep.nodes.analytic import make_analytic_patcher
        self.family, self.cfg = family, cfg
        self.patcher, pos, neg = make_analytic_patcher(family, SHIFT, COMPONENTS, MIX_SEED)
        self.ms = self.patcher.get_model_object("model_sampling")
        self.guider = cs.CFGGuider(self.patcher)
        self.guider.set_conds(pos, neg)
        self.guider.set_cfg(cfg)
        self.noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(NOISE_SEED))
        self.core = AnalyticModel(family, SHIFT, COMPONENTS, MIX_SEED)
        self._exact = {}

    def exact(self, x_init, sigma0):
        key = round(float(sigma0), 9)
        if key not in self._exact:
            from fewstep.core.analytic import reference_solve
            self._exact[key] = reference_solve(self.core.denoiser(self.cfg), x_init.double(), float(sigma0), steps=500)
        return self._exact[key]

    def run(self, sampler, sigmas):
        """(relative error, model calls). A schedule that does not start from the model's largest
        sigma (ComfyUI's ddim_uniform does not at some step counts) does not sample from pure noise:
        it is not a valid entry (infinite error)."""
        if float(sigmas[0]) < 0.999 * float(self.ms.sigma_max):
            return math.inf, 0
        counter, record = [0], {}
        s = counting(sampler, counter, record)
        with torch.inference_mode():
            out = self.guider.sample(self.noise.clone(), torch.zeros_like(self.noise), s, sigmas.clone(),
                                     disable_pbar=True, seed=NOISE_SEED)
        self.last_per_seed = None
        if not torch.isfinite(out).all():
            return math.inf, counter[0]
        want = self.exact(record["x_init"], sigmas[0])
        # per seed: squared error and squared norm of the exact endpoint (for the seed bootstrap)
        self.last_per_seed = (((out.double() - want) ** 2).flatten(1).sum(1), (want ** 2).flatten(1).sum(1))
        err = float((out.double() - want).norm() / want.norm())
        return err, counter[0]


def within_budget(case, make_sampler, make_sigmas, budget):
    """(error, steps, calls, per-seed (squared errors, squared exact norms)) at the largest step count
    whose model calls are <= budget (None if even 1 step is over)."""
    steps, tried = budget, set()
    best = None
    while steps >= 1 and steps not in tried:
        tried.add(steps)
        case.last_per_seed = None
        try:
            err, calls = case.run(make_sampler(), make_sigmas(steps))
        except Exception as e:  # a combination that ComfyUI itself cannot run (e.g. too few steps)
            err, calls = math.inf, 0
            if os.environ.get("FEWSTEP_BENCH_DEBUG"):
                print("   failed:", e)
        if calls <= budget:
            best = (err, steps, calls, case.last_per_seed)
            break
        steps = max(1, min(steps - 1, int(steps * budget / calls)))
    return best


def builtin_combinations(host):
    import comfy.samplers as cs
    samplers = [n for n in cs.SAMPLER_NAMES if not n.startswith("fewstep") and n != "dpm_adaptive"
                and not n.endswith("_gpu")]
    scheds = [n for n in cs.SCHEDULER_NAMES if not n.startswith("fewstep")]
    return samplers, scheds


def bench_case(host, case, budgets, quick=False, log=print):
    import comfy.samplers as cs
    samplers, scheds = builtin_combinations(host)
    fs_solvers = FEWSTEP_SOLVERS
    fs_scheds = FEWSTEP_SCHEDULES
    if quick:
        samplers = ["euler", "dpmpp_2m", "uni_pc_bh2", "deis", "ipndm", "res_multistep"]
        scheds = ["karras", "simple", "sgm_uniform", "beta"]
        fs_solvers = [c for c in FEWSTEP_SOLVERS if c[2] in ("dpmpp_3m", "unipc_bh2_o3", "deis_3", "unipc_bh1_o3")]
        fs_scheds = [s for s in FEWSTEP_SCHEDULES if s[0] in ("logsnr_uniform", "karras", "time_quadratic")]
    sched_node = host.NODES["FewStepScheduler"]()
    rows = {}
    for budget in budgets:
        b_best = (math.inf, None, None)
        for sname in samplers:
            for sch in scheds:
                r = within_budget(case, lambda: cs.sampler_object(sname),
                                  lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu(), budget)
                if r and r[0] < b_best[0]:
                    b_best = (r[0], f"{sname} + {sch} ({r[1]} steps, {r[2]} calls)", r[3])
        f_best = (math.inf, None, None)   # FewStep solver + FewStep schedule
        m_best = (math.inf, None, None)   # FewStep solver + ComfyUI scheduler
        for node, kw, label in fs_solvers:
            for sch, rho in fs_scheds:
                r = within_budget(case, lambda: host.NODES[node]().get_sampler(**kw)[0],
                                  lambda n: sched_node.get_sigmas(case.patcher, sch, n, 1.0, rho)[0], budget)
                if r and r[0] < f_best[0]:
                    sl = f"{sch} rho {rho:g}" if sch in ("karras", "polyexponential") else sch
                    f_best = (r[0], f"{label} + {sl} ({r[1]} steps, {r[2]} calls)", r[3])
            for sch in scheds:
                r = within_budget(case, lambda: host.NODES[node]().get_sampler(**kw)[0],
                                  lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu(), budget)
                if r and r[0] < m_best[0]:
                    m_best = (r[0], f"{label} + ComfyUI {sch} ({r[1]} steps, {r[2]} calls)", r[3])
        rows[budget] = (f_best, m_best, b_best)
        log(f"  {case.family} cfg {case.cfg:g} NFE {budget}: FewStep {f_best[0]:.3e} {f_best[1]} | "
            f"FewStep solver on ComfyUI scheduler {m_best[0]:.3e} {m_best[1]} | ComfyUI {b_best[0]:.3e} {b_best[1]}")
    return rows


def best_of(rows_b):
    """FewStep's best over both schedule sources."""
    f, m, _ = rows_b
    return f if f[0] <= m[0] else m


def ratio_interval(ours, theirs, n_boot=BOOT, level=0.9):
    """Seed-bootstrap interval of error(ours) / error(theirs): the same resampled seeds for both
    (paired), each error recomputed as ||x - x_exact|| / ||x_exact|| over the resampled batch. How much
    the ratio depends on which noise seeds were drawn (the best entries are chosen on all seeds)."""
    if ours is None or theirs is None:
        return math.nan, math.nan
    (eo, ro), (et, rt) = ours, theirs
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, eo.numel(), (n_boot, eo.numel()), generator=g)
    r = ((eo[idx].sum(1) / ro[idx].sum(1)) / (et[idx].sum(1) / rt[idx].sum(1))).sqrt()
    lo, hi = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=r.dtype)).tolist()
    return lo, hi


def table(results, budgets):
    lines = ["| case | NFE | FewStep best: solver + FewStep schedule | error | FewStep solver + ComfyUI scheduler | error "
             "| ComfyUI best: sampler + scheduler | error | FewStep best / ComfyUI best | 90% seed interval |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (family, cfg), rows in results.items():
        name = "eps (SD1.5 sigmas)" if family == "eps" else f"flow (shift {SHIFT:g})"
        for b in budgets:
            (fe, fl, _), (me, ml, _), (be, bl, bp) = rows[b]
            best = best_of(rows[b])
            ratio = best[0] / be if be > 0 else math.inf
            lo, hi = ratio_interval(best[2], bp)
            lines.append(f"| {name}, cfg {cfg:g} | {b} | {fl} | {fe:.2e} | {ml} | {me:.2e} | {bl} | {be:.2e} "
                         f"| {ratio:.2f} | {lo:.2f}–{hi:.2f} |")
    return "\n".join(lines)


def write_doc(text, start=MARK_START, end=MARK_END):
    write_block("solvers.md", text, start, end)


def main(argv=None):
    global SHAPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (a smoke test of the script)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/solvers.md")
    ap.add_argument("--seeds", type=int, default=SHAPE[0],
                    help=f"noise seeds (batch size; default {SHAPE[0]}); the first N of a larger run are the same seeds")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    SHAPE = (args.seeds,) + tuple(SHAPE[1:])
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids contention (30x faster here)
    host = import_host()
    t0 = time.time()
    results = {}
    for family, cfg in CASES:
        case = Case(host, family, cfg)
        results[(family, cfg)] = bench_case(host, case, BUDGETS, quick=args.quick)
    goal_ok = all(best_of(rows[b])[0] <= rows[b][2][0] for rows in results.values() for b in BUDGETS if b <= 10)
    goal_fs = all(rows[b][0][0] <= rows[b][2][0] for rows in results.values() for b in BUDGETS if b <= 10)
    text = table(results, BUDGETS)
    missed = []
    for (family, cfg), rows in results.items():
        for b in BUDGETS:
            best = best_of(rows[b])
            if b <= 10 and best[0] > rows[b][2][0]:
                lo, hi = ratio_interval(best[2], rows[b][2][2])
                missed.append(f"{family} cfg {cfg:g} NFE {b}: {best[0] / rows[b][2][0]:.2f} ({lo:.2f}–{hi:.2f})")
    summary = (f"\nGoal (FewStep best <= ComfyUI best at every NFE <= 10): {'met' if goal_ok else 'NOT met'}"
               + (f" (missed: {'; '.join(missed)})" if missed else "") + "; "
               f"with FewStep's own schedules only: {'met' if goal_fs else 'NOT met'}. "
               f"Latent {tuple(SHAPE)} ({SHAPE[0]} noise seeds), float32 through ComfyUI; {time.time() - t0:.0f} s on "
               f"{torch.get_num_threads()} CPU threads.")
    print(text)
    print(summary)
    if not args.no_write and not args.quick:
        cmd = " ".join(["python bench/solvers.py"] + list(sys.argv[1:] if argv is None else argv))
        write_doc(f"Produced by `{cmd}`:\n\n" + text + "\n" + summary)
    return 0 if goal_ok else 1


if __name__ == "__main__":
    sys.exit(main())
