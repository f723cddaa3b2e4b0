"""FewStep's command line: ``python -m fewstep compare``.

Samples the analytic Gaussian-mixture model with every schedule and every deterministic solver at
NFE 4..20, measures the error against the exact ODE endpoint from the same noise, and writes a
markdown table and a PNG plot of error vs NFE. Nothing is downloaded; ComfyUI is not needed.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path


from .core.analytic import AnalyticModel, reference_solve
from .schedules import SCHEDULE_NAMES, get_schedule


def _progress(i, n, msg, t0, stream=sys.stderr):
    width = 28
    done = int(width * i / max(n, 1))
    eta = (time.time() - t0) / max(i, 1) * (n - i)
    stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {msg[:48]:<48} eta {eta:5.0f}s")
    stream.flush()
    if i == n:
        stream.write("\n")


def solver_table(include_stochastic=False):
    from .samplers.registry import SOLVERS
    return {k: v for k, v in SOLVERS.items() if include_stochastic or not v.stochastic}


def run_solver(spec, model_fn, x, sigmas, family):
    counter = [0]

    def counted(xx, s, **kw):
        counter[0] += 1
        return model_fn(xx, s, **kw)

    out = spec.fn(counted, x.clone(), sigmas, extra_args={}, callback=None, disable=True, family=family, **spec.kwargs)
    return out, counter[0]


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def best_run_within(spec, model_fn, x, ref, schedule, ms, family, nfe, rho=None):
    """Run with the most steps whose model calls fit in ``nfe``; (error, steps, calls) or None."""
    steps = nfe
    while steps >= 1:
        sig = get_schedule(schedule, steps, ms, rho=rho)
        try:
            out, calls = run_solver(spec, model_fn, x, sig, family)
        except ValueError:
            return None
        if calls <= nfe:
            return rms(out, ref), steps, calls
        # too many calls: shrink steps by the measured calls-per-step ratio
        steps = min(steps - 1, int(steps * nfe / calls))
    return None


def compare(families=("eps", "flow"), cfgs=(1.0, 5.0), nfes=range(4, 21), samples=8, latent=(4, 8, 8),
            components=8, seed=0, shift=3.0, solvers=None, schedules=SCHEDULE_NAMES, progress=True):
    """Returns a list of result dicts: family, cfg, solver, schedule, nfe, steps, calls, error."""
    table = solver_table()
    if solvers:
        unknown = [s for s in solvers if s not in table]
        if unknown:
            raise SystemExit(f"unknown solver(s) {unknown}; available: {sorted(table)}")
        table = {k: table[k] for k in solvers}
    bad = [s for s in schedules if s not in SCHEDULE_NAMES]
    if bad:
        raise SystemExit(f"unknown schedule(s) {bad}; available: {list(SCHEDULE_NAMES)}")
    nfes = list(nfes)
    jobs = [(f, c) for f in families for c in cfgs]
    total = len(jobs) * len(table) * len(schedules)
    results, k, t0 = [], 0, time.time()
    for fam, cfg in jobs:
        m = AnalyticModel(fam, shift=shift, components=components, seed=seed)
        model_fn = m.denoiser(cfg)
        x = m.initial_state(m.noise((samples,) + tuple(latent), seed + 1000), m.sigma_max)
        ref = reference_solve(model_fn, x, m.sigma_max)
        for name, spec in table.items():
            for sched in schedules:
                k += 1
                if progress:
                    _progress(k, total, f"{fam} cfg{cfg:g} {name} {sched}", t0)
                for nfe in nfes:
                    r = best_run_within(spec, model_fn, x, ref, sched, m.model_sigmas, fam, nfe)
                    if r is None:
                        continue
                    err, steps, calls = r
                    results.append(dict(family=fam, cfg=cfg, solver=name, schedule=sched, nfe=nfe,
                                        steps=steps, calls=calls, error=err))
    return results


def best_by(results, key_fields):
    best = {}
    for r in results:
        k = tuple(r[f] for f in key_fields)
        if k not in best or r["error"] < best[k]["error"]:
            best[k] = r
    return best


def markdown(results, nfes_shown=(4, 5, 6, 8, 10, 12, 15, 20)) -> str:
    lines = ["# FewStep compare: error vs NFE on the analytic model", "",
             "RMS error of the final sample against the exact ODE endpoint (same noise); NFE counts model "
             "calls. For each case, the best schedule per solver.", ""]
    cases = sorted({(r["family"], r["cfg"]) for r in results})
    for fam, cfg in cases:
        rs = [r for r in results if r["family"] == fam and r["cfg"] == cfg]
        present = sorted({r["nfe"] for r in rs})
        nfes = [n for n in nfes_shown if n in present] or present
        ref_nfe = 10 if 10 in present else present[-1]
        lines += [f"## {fam}, cfg {cfg:g}", "", f"| solver (best schedule at NFE {ref_nfe}) | " +
                  " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
        best = best_by(rs, ("solver", "nfe"))
        solvers = sorted({r["solver"] for r in rs}, key=lambda s: best.get((s, ref_nfe), {"error": math.inf})["error"])
        for s in solvers:
            b10 = best.get((s, ref_nfe))
            label = f"{s} ({b10['schedule']})" if b10 else s
            cells = [f"{best[(s, n)]['error']:.2e}" if (s, n) in best else "—" for n in nfes]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        overall = best_by(rs, ("nfe",))
        lines += ["", "Best overall: " + ", ".join(
            f"NFE {n}: {overall[(n,)]['solver']}+{overall[(n,)]['schedule']} {overall[(n,)]['error']:.2e}"
            for n in nfes if (n,) in overall), ""]
    return "\n".join(lines) + "\n"


def plot(results, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib, or the README's set-up command)",
              file=sys.stderr)
        return None
    cases = sorted({(r["family"], r["cfg"]) for r in results})
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4.2), squeeze=False)
    for ax, (fam, cfg) in zip(axes[0], cases):
        rs = [r for r in results if r["family"] == fam and r["cfg"] == cfg]
        best = best_by(rs, ("solver", "nfe"))
        solvers = sorted({r["solver"] for r in rs})
        for s in solvers:
            pts = sorted((n, best[(s, n)]["error"]) for (ss, n) in best if ss == s)
            if pts:
                ax.semilogy([p[0] for p in pts], [p[1] for p in pts], marker=".", label=s)
        ax.set_title(f"{fam}, cfg {cfg:g}")
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel("RMS error vs exact endpoint")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _csv_list(cast):
    return lambda s: [cast(v) for v in s.split(",") if v]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fewstep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare solvers x schedules on the analytic model (error vs NFE)")
    c.add_argument("--families", type=_csv_list(str), default=["eps", "flow"], help="eps,flow")
    c.add_argument("--cfg", type=_csv_list(float), default=[1.0, 5.0], help="CFG scales, e.g. 1,5")
    c.add_argument("--nfe", type=str, default="4-20", help="NFE range lo-hi or a list, e.g. 4-20 or 5,10,20")
    c.add_argument("--samples", type=int, default=8, help="noise samples per case")
    c.add_argument("--latent", type=str, default="4x8x8", help="latent shape CxHxW")
    c.add_argument("--components", type=int, default=8)
    c.add_argument("--shift", type=float, default=3.0, help="flow shift")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--solvers", type=_csv_list(str), default=None, help="subset of solvers (default: all deterministic)")
    c.add_argument("--schedules", type=_csv_list(str), default=list(SCHEDULE_NAMES))
    c.add_argument("--out", type=Path, default=Path("out/compare"), help="output folder")
    c.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "compare":
        if "-" in a.nfe:
            lo, hi = (int(v) for v in a.nfe.split("-"))
            nfes = range(lo, hi + 1)
        else:
            nfes = [int(v) for v in a.nfe.split(",")]
        if min(nfes) < 1:
            raise SystemExit("--nfe must be >= 1")
        latent = tuple(int(v) for v in a.latent.lower().split("x"))
        for f in a.families:
            if f not in ("eps", "flow"):
                raise SystemExit(f"--families: {f!r} is not eps or flow")
        res = compare(a.families, a.cfg, nfes, a.samples, latent, a.components, a.seed, a.shift,
                      a.solvers, a.schedules, progress=not a.quiet)
        a.out.mkdir(parents=True, exist_ok=True)
        md = markdown(res)
        (a.out / "compare.md").write_text(md)
        png = plot(res, a.out / "compare.png")
        print(md)
        print(f"wrote {a.out / 'compare.md'}" + (f" and {png}" if png else ""))
    return 0
