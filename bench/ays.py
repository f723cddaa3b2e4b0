"""Benchmark: the AYS optimizer's 10-step schedule against the fixed schedules, and against the
published SD1.5 table.

    python bench/ays.py [--samples 32 512] [--seeds 4] [--iterations 4] [--ceiling] [--no-write]

On the analytic model (exact denoiser, exact ODE endpoint; no ComfyUI needed): eps (SD1.5's discrete
sigmas) and flow (shift 3), each at cfg 1 and cfg 5. The optimizer runs as FewStepAYSOptimize runs it
with its default align_to (dpmpp_2m): ``--samples`` teacher samples of shape (4, 16, 16) from the model,
stage 1 (the paper's bound, with early stopping on the teacher pairs, discrete rounding for eps), then
stage 2 (alignment: the schedule refined on the DPM-Solver++(2M) error of the teacher pairs). Both
stages are reported, for the node's seed 0 in full and, for the aligned schedule, the spread over
``--seeds`` seeds. Error: DPM-Solver++(2M) on each 10-step schedule, ||x_N - x_exact|| / ||x_exact||
over 2048 evaluation noises (seed 777, none of them seen by the optimizer; the first 512 are the set of
earlier versions of this table), x_exact from a float64 RK4 solve. Fixed schedules: Karras (rho 7),
logSNR-uniform, time-uniform, and the published AYS table (SD1.5's, remapped through logSNR for flow).

"ceiling" (``--ceiling``; needs scipy): a schedule fitted to the evaluation noises themselves (Powell, then
Nelder-Mead, on the 9 interior points in lambda, not rounded to the eps grid), started from the best of the
fixed schedules, the published table and the optimised schedule -- a yardstick for what a 10-step schedule
can reach on these noises. No optimiser that never sees them can be expected to beat it.

Each ratio comes with a 90% bootstrap interval over the evaluation noises (the same resampled noises for
both schedules): per-sample errors on this model are heavy-tailed (at cfg 5 the worst 5% of the noises
carry 40-65% of the squared error), so with few noises the ratios move by up to 0.13 between draws, and
few teacher samples fit the schedule to few of the noises that matter.

Writes the table into docs/ays-optimizer.md between the bench markers and the plot docs/img/ays_sd15.png
(sigma against step: published SD1.5 table, the optimised eps schedules, Karras).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _doc import write_block  # noqa: E402

from fewstep.core.analytic import AnalyticModel, reference_solve  # noqa: E402
from fewstep.samplers.dpm_solver_pp import sample_dpmpp_multistep  # noqa: E402
from fewstep.schedules import ays_optimize as ays  # noqa: E402
from fewstep.schedules import ays_sigmas, get_schedule  # noqa: E402

MARK_START = "<!-- bench:ays:start -->"
MARK_END = "<!-- bench:ays:end -->"
CASES = [("eps", 1.0), ("eps", 5.0), ("flow", 1.0), ("flow", 5.0)]
SHAPE = (4, 16, 16)
EVAL_N, EVAL_SEED = 2048, 777
#: teacher samples of the default run: the node's default, and a large set
DEFAULT_SAMPLES = (32, 512)
DEFAULT_SEEDS = 4
BOOT = 2000
FIXED = ("karras", "logsnr_uniform", "time_uniform")


def evaluator(am, D):
    """err(sigmas) -> ||x_N - x_exact|| / ||x_exact|| over the evaluation noises; err.per(sigmas) -> the
    per-noise squared errors (for the bootstrap)."""
    ms = am.model_sigmas
    xT = am.noise((EVAL_N,) + SHAPE, seed=EVAL_SEED) * ms.sigma_max
    ref = reference_solve(D, xT, ms.sigma_max, steps=500)
    ref_sq = float(ref.pow(2).sum())

    def per(sig) -> torch.Tensor:
        sig = torch.as_tensor(sig, dtype=torch.float64)
        out = sample_dpmpp_multistep(D, xT.clone(), sig, family=am.family, order=2)
        return (out - ref).pow(2).flatten(1).sum(1)

    def err(sig) -> float:
        return float(per(sig).sum() / ref_sq) ** 0.5
    err.per = per
    return err


def ratio_interval(a: torch.Tensor, b: torch.Tensor, level: float = 0.9) -> tuple:
    """Bootstrap interval of sqrt(sum a / sum b) over the evaluation noises (paired resampling)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, a.numel(), (BOOT, a.numel()), generator=g)
    r = (a[idx].sum(1) / b[idx].sum(1)).sqrt()
    q = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=r.dtype))
    return float(q[0]), float(q[1])


_EVALUATORS: dict = {}


def case_model(family, cfg):
    """(analytic model, its CFG denoiser, evaluator), the evaluator's reference solve made once per case."""
    key = (family, cfg)
    if key not in _EVALUATORS:
        am = AnalyticModel(family, 3.0, 8, 0)
        D = am.denoiser(cfg)
        _EVALUATORS[key] = (am, D, evaluator(am, D))
    return _EVALUATORS[key]


def optimise(family, cfg, samples, iterations, seed=0):
    """The optimizer as FewStepAYSOptimize runs it with its default align_to (dpmpp_2m): ``samples``
    teacher pairs, the paper's bound (stage 1) then alignment to DPM-Solver++(2M) on every pair (stage 2).
    ``seed``: the node's seed widget (teacher noise and the estimator's random numbers). -> (AYSResult,
    seconds)."""
    torch.manual_seed(0)
    am, D, _ = case_model(family, cfg)
    ms = am.model_sigmas
    t0 = time.perf_counter()
    x_T, x0 = ays.teacher_samples(D, ms, samples, SHAPE, seed=seed, dtype=torch.float64)
    res = ays.optimize_ays(D, x0, ms, steps=10, iterations=iterations, seed=seed, validation=(x_T, x0),
                           align="dpmpp_2m")
    return res, time.perf_counter() - t0


def run_case(family, cfg, samples, iterations, with_ceiling=False):
    """One case in full for the node's seed 0: the fixed schedules, both stages, intervals, the start."""
    am, D, err = case_model(family, cfg)
    ms = am.model_sigmas
    row = {name: err(get_schedule(name, 10, ms)) for name in FIXED}
    row["ays_published"] = err(ays_sigmas("SD1", 10, 1.0, ms))
    res, row["seconds"] = optimise(family, cfg, samples, iterations)
    row["calls"] = res.evaluations + samples * ays.TEACHER_STEPS
    row["optimised"] = err(res.sigmas)
    row["sigmas"] = res.sigmas
    stage1 = res.klub_only[10].clone()
    stage1[-1] = 0.0
    row["stage1"] = err(stage1)
    row["init"] = res.init
    start = torch.tensor(ays.initial_schedule(10, ms, res.init)[:-1] + [0.0], dtype=torch.float64)
    row["start"] = err(start)
    row["stop"] = res.stop_reason[10]
    row["align_stop"] = res.aligned[10][3]
    best = min(FIXED, key=lambda n: row[n])
    row["best_fixed"] = best
    best_per = err.per(get_schedule(best, 10, ms))
    row["interval"] = ratio_interval(err.per(res.sigmas), best_per)
    row["interval1"] = ratio_interval(err.per(stage1), best_per)
    if with_ceiling:
        row["ceiling"], row["ceiling_sigmas"] = ceiling(err, family, ms, [res.sigmas])
    return row


def ceiling(err, family, ms, extra=(), maxfev=(2000, 1500)):
    """The lowest error a local search finds when it fits the 9 interior sigmas of a 10-step schedule to the
    evaluation noises themselves: Powell, then Nelder-Mead, on log-increments of lambda (so the points stay
    ordered), from the best of the fixed schedules, the published table and ``extra``. A yardstick no
    honest optimiser, which never sees these noises, can be expected to beat. Returns (error, sigmas)."""
    try:
        from scipy.optimize import minimize
    except ImportError as e:  # a bench-only tool
        raise SystemExit("bench/ays.py --ceiling needs scipy (pip install scipy)") from e
    import numpy as np
    from fewstep.core import families
    top = ays._lam_eff(ms.sigma_max, family, ms)

    def to_sig(p):
        lv = top + np.cumsum(np.exp(p))
        return [ms.sigma_max] + [float(families.sigma_from_lam(float(v), family)) for v in lv] + [0.0]

    def to_p(s):
        lv = [top] + [ays._lam_eff(float(v), family, ms) for v in s[1:-1]]
        return np.log(np.maximum(np.diff(lv), 1e-6))

    def f(p):
        s = to_sig(p)
        return err(s) if s[-2] > 1e-5 else 1e3
    starts = [get_schedule(n, 10, ms) for n in FIXED] + [ays_sigmas("SD1", 10, 1.0, ms)] + list(extra)
    p = to_p([float(v) for v in min(starts, key=err)])
    p = minimize(f, p, method="Powell", options=dict(maxfev=maxfev[0], xtol=1e-3, ftol=1e-5)).x
    r = minimize(f, p, method="Nelder-Mead", options=dict(maxfev=maxfev[1], xatol=1e-4, fatol=1e-7, adaptive=True))
    return float(r.fun), to_sig(r.x)


LABEL = {"karras": "Karras", "logsnr_uniform": "logSNR-uniform", "time_uniform": "time-uniform", "ays": "AYS table"}


def table(rows, iterations) -> str:
    ceil = all("ceiling" in r for r in rows.values())
    head = ("| case | samples | Karras | logSNR-uniform | time-uniform | AYS SD1.5 table | kept start "
            "| stage 1: the paper's bound (/ best fixed, 90% interval) | **stage 2: aligned to DPM++(2M)** "
            "| **aligned / best fixed** (90% interval) "
            + "| aligned / best fixed over seeds: mean (min–max) "
            + ("| ceiling (fitted to the evaluation noises) / best fixed " if ceil else "")
            + "| model calls | seconds (CPU) | why stage 1 / stage 2 stopped |")
    sep = "|" + "---|" * (head.count("|") - 1)
    out = [head, sep]
    for (family, cfg, samples), r in rows.items():
        best = min(r[n] for n in FIXED)
        cells = ([f"{family} cfg {cfg:g}", f"{samples}"] + [f"{r[n]:.4f}" for n in FIXED]
                 + [f"{r['ays_published']:.4f}", f"{LABEL[r['init']]} {r['start']:.4f}",
                    f"{r['stage1']:.4f} ({r['stage1'] / best:.2f}, {r['interval1'][0]:.2f}–{r['interval1'][1]:.2f})",
                    f"**{r['optimised']:.4f}**",
                    f"**{r['optimised'] / best:.2f}** ({r['interval'][0]:.2f}–{r['interval'][1]:.2f})",
                    f"{sum(r['seed_ratios']) / len(r['seed_ratios']):.2f} ({min(r['seed_ratios']):.2f}–"
                    f"{max(r['seed_ratios']):.2f}), {len(r['seed_ratios'])} seeds"]
                 + ([f"{r['ceiling'] / best:.2f}"] if ceil else [])
                 + [f"{r['calls']:,}", f"{r['seconds']:.0f}", f"{r['stop']} / {r['align_stop']}"])
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for samples in sorted({k[2] for k in rows}):
        sub = {k: r for k, r in rows.items() if k[2] == samples}
        met = [f"{f} cfg {c:g}" for (f, c, _), r in sub.items() if r["optimised"] <= 0.75 * min(r[n] for n in FIXED)]
        mean = [f"{f} cfg {c:g}" for (f, c, _), r in sub.items() if sum(r["seed_ratios"]) / len(r["seed_ratios"]) <= 0.75]
        every = [f"{f} cfg {c:g}" for (f, c, _), r in sub.items() if max(r["seed_ratios"]) <= 0.75]
        n_seeds = len(next(iter(sub.values()))["seed_ratios"])
        out.append(f"- Goal (optimised <= 0.75 x best fixed, in both families), {samples} samples: seed 0 meets it in "
                   f"{len(met)} of {len(sub)} cases" + (f" ({', '.join(met)})" if met else "")
                   + f"; the mean over {n_seeds} seeds in {len(mean)}" + (f" ({', '.join(mean)})" if mean else "")
                   + f"; every seed in {len(every)}" + (f" ({', '.join(every)})" if every else "") + ".")
    out.append("")
    sams = sorted({k[2] for k in rows})
    n_seeds = len(next(iter(rows.values()))["seed_ratios"])
    out.append(f"DPM-Solver++(2M), 10 steps; error = ||x - x_exact|| / ||x_exact|| over {EVAL_N} evaluation noises "
               f"no optimiser saw. Optimizer as FewStepAYSOptimize runs it (align_to dpmpp_2m): `samples` teacher "
               f"samples ({ays.TEACHER_STEPS}-step DPM-Solver++(2M)), at most {iterations} sweeps per stage; the columns "
               f"before the seeds column are seed 0; "
               f"model calls include the teacher. Command: `python bench/ays.py"
               + (f" --samples {' '.join(map(str, sams))}" if sams != list(DEFAULT_SAMPLES) else "")
               + (f" --iterations {iterations}" if iterations != 4 else "")
               + (f" --seeds {n_seeds}" if n_seeds != DEFAULT_SEEDS else "") + (" --ceiling" if ceil else "") + "`.")
    out.append("")
    out.append("Optimised 10-step schedules (sigmas), and how far each lies from the published SD1.5 table "
               "(remapped through logSNR for flow), as |log(sigma / sigma_table)| over the 9 interior sigmas:")
    out.append("")
    from fewstep.core.model_sigmas import ModelSigmas
    for (family, cfg, samples), r in rows.items():
        ms = ModelSigmas.discrete_vp() if family == "eps" else ModelSigmas.flow(3.0)
        pub = ays_sigmas("SD1", 10, 1.0, ms)
        d = (r["sigmas"][1:-1].log() - pub[1:-1].log()).abs()
        out.append(f"- {family} cfg {cfg:g}, {samples} samples: " + ", ".join(f"{float(v):.4g}" for v in r["sigmas"])
                   + f" (mean {float(d.mean()):.2f}, max {float(d.max()):.2f})")
        if "ceiling_sigmas" in r:
            out.append("  - ceiling: " + ", ".join(f"{float(v):.4g}" for v in r["ceiling_sigmas"]))
    return "\n".join(out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fewstep.core.model_sigmas import ModelSigmas
    ms = ModelSigmas.discrete_vp()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    pub = ays_sigmas("SD1", 10, 1.0, ms)[:-1]
    ax.semilogy(range(10), pub.numpy(), "o-", label="AYS published SD1.5 table")
    top = max(k[2] for k in rows)
    for (family, cfg, samples), r in rows.items():
        if family == "eps" and samples == top:
            ax.semilogy(range(10), r["sigmas"][:-1].numpy(), "s--",
                        label=f"optimised (analytic eps, cfg {cfg:g}, {samples} samples)")
    kar = get_schedule("karras", 10, ms)[:-1]
    ax.semilogy(range(10), kar.numpy(), "^:", label="Karras (rho 7)")
    ax.set_xlabel("step")
    ax.set_ylabel("sigma (log)")
    ax.set_title("10-step schedules on SD1.5's sigma range")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, nargs="+", default=list(DEFAULT_SAMPLES),
                    help="teacher samples, one run per value (the node's default is 32)")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                    help="optimizer seeds 0..N-1 per case (the figures of seed 0 in full, the spread over all)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--ceiling", action="store_true", help="also fit a schedule to the evaluation noises (slow)")
    a = ap.parse_args()
    if a.seeds < 1:
        ap.error("--seeds must be >= 1")
    least = max(ays.MIN_SAMPLES, ays.ALIGN_MIN_PAIRS)  # stage 2 runs on every pair
    if any(n < least for n in a.samples):
        ap.error(f"--samples must be >= {least} (alignment needs {ays.ALIGN_MIN_PAIRS} teacher pairs)")
    torch.set_num_threads(1)
    rows = {}
    for samples in a.samples:
        for family, cfg in CASES:
            rows[(family, cfg, samples)] = r = run_case(family, cfg, samples, a.iterations, a.ceiling)
            best = min(r[n] for n in FIXED)
            err = case_model(family, cfg)[2]
            r["seed_ratios"] = [r["optimised"] / best] + [
                err(optimise(family, cfg, samples, a.iterations, seed=sd)[0].sigmas) / best
                for sd in range(1, a.seeds)]
            print(f"{family} cfg {cfg:g}, {samples} samples: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)), flush=True)
    text = table(rows, a.iterations)
    print(text)
    if not a.no_write:
        write_block("ays-optimizer.md", text, MARK_START, MARK_END)
        plot(rows, REPO / "docs" / "img" / "ays_sd15.png")
        print("wrote docs/ays-optimizer.md and docs/img/ays_sd15.png")


if __name__ == "__main__":
    main()
