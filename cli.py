"""FewStep's command line: ``python -m fewstep compare``.

Samples the analytic Gaussian-mixture model with FewStep's deterministic solvers and schedules,
measures the error against the exact ODE endpoint from the same noise, and writes a markdown table
(every row says how to get it in ComfyUI), a PNG plot of error vs NFE and the plot's metadata as
JSON. Nothing is downloaded; ComfyUI is not needed.

By default a quick grid runs (both families, cfg 1 and 5, NFE 4-20 coarse, every deterministic solver
and schedule); --full runs every NFE from 4 to 20.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .core.analytic import AnalyticModel, reference_solve
from .recipes import SCHEDULE_RECIPES, SCHEDULER_NODE, SOLVER_RECIPES, node_call, recipe, recipe_text
from .schedules import SCHEDULE_NAMES, get_schedule

#: RK4 steps (in log sigma) of the exact reference: 500 steps are within 6e-8 RMS of a 2000-step solve
#: on every case of the grid, four orders of magnitude below the smallest error the table shows
REFERENCE_STEPS = 500
#: two solvers are the same solver here when every run gives the same sample to this relative tolerance
#: (first-order solvers agree to 1e-13; the closest distinct pair, deis_3 / deis_4, differs by 5e-2)
IDENTICAL_RTOL = 1e-9


@dataclass(frozen=True)
class Grid:
    name: str
    families: tuple
    cfgs: tuple
    nfes: tuple
    schedules: tuple = SCHEDULE_NAMES
    solvers: tuple | None = None          # None: every deterministic solver of the registry
    samples: int = 8
    latent: tuple = (4, 8, 8)


QUICK = Grid("quick", ("eps", "flow"), (1.0, 5.0), (4, 5, 6, 8, 10, 12, 15, 20))
FULL = Grid("full", ("eps", "flow"), (1.0, 5.0), tuple(range(4, 21)))
GRIDS = {"quick": QUICK, "full": FULL}


def solver_table(include_stochastic=False):
    from .samplers.registry import SOLVERS
    return {k: v for k, v in SOLVERS.items() if include_stochastic or not v.stochastic}


def check_names(solvers, schedules):
    """The solver spec table for ``solvers`` (None: all deterministic) after checking both lists."""
    table = solver_table()
    if solvers:
        unknown = [s for s in solvers if s not in table]
        if unknown:
            raise SystemExit(f"unknown solver(s) {unknown}; available: {list(table)}")
        table = {k: table[k] for k in dict.fromkeys(solvers)}
    bad = [s for s in schedules if s not in SCHEDULE_NAMES]
    if bad:
        raise SystemExit(f"unknown schedule(s) {bad}; available: {list(SCHEDULE_NAMES)}")
    if not table or not schedules:
        raise SystemExit("nothing to compare: give at least one solver and one schedule")
    return table


@dataclass(frozen=True)
class Case:
    """One unit of progress: a solver on a schedule for one family and cfg, run at every NFE."""
    family: str
    cfg: float
    solver: str
    schedule: str
    nfes: tuple


def plan(families, cfgs, solvers, schedules, nfes):
    """Every case the compare will run, in order."""
    return [Case(f, float(c), s, sch, tuple(nfes)) for f in families for c in cfgs for s in solvers
            for sch in schedules]


# ------------------------------------------------------------------------------------------------
# running
def guided_denoiser(model: AnalyticModel, cfg: float):
    """``model.denoiser(cfg)`` with the conditional and unconditional mixtures in one batched call
    (half the small-tensor calls, which are most of the compare's time); the same values to float64
    rounding (tests/test_cli.py)."""
    mix, fam = model.mixture, model.family
    if cfg == 1.0:
        return model.denoiser(cfg)
    lw = torch.stack([mix.log_weights(True), mix.log_weights(False)])   # (2, K)

    def fn(x, sigma, **_):
        b = x.shape[0]
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(b)
        both = mix.denoise(torch.cat([x, x]), torch.cat([sig, sig]), lw.repeat_interleave(b, dim=0), fam)
        dc, du = both[:b], both[b:]
        return du + cfg * (dc - du)

    return fn


def run_solver(spec, model_fn, x, sigmas, family):
    counter = [0]

    def counted(xx, s, **kw):
        counter[0] += 1
        return model_fn(xx, s, **kw)

    out = spec.fn(counted, x.clone(), sigmas, extra_args={}, callback=None, disable=True, family=family, **spec.kwargs)
    return out, counter[0]


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def best_run_within(spec, model_fn, x, ref, schedule, ms, family, nfe, rho=None, calls_by_steps=None,
                    schedule_cache=None):
    """Run with the most steps whose model calls fit in ``nfe``: (error, steps, calls, sample) or None.

    ``calls_by_steps`` (steps -> calls measured before for this solver and schedule, updated here) lets
    a case's later NFEs start at the right step count instead of trying ``nfe`` steps first. Model
    calls never fall as steps grow, so the answer is the same either way: the largest fitting count.
    ``schedule_cache`` (a dict) keeps the schedules of ``ms`` by (name, steps, rho) across calls."""
    known = {} if calls_by_steps is None else calls_by_steps

    def run(steps):
        key = (schedule, steps, rho)
        if schedule_cache is not None and key in schedule_cache:
            sig = schedule_cache[key].clone()
        else:
            sig = get_schedule(schedule, steps, ms, rho=rho)
            if schedule_cache is not None:
                schedule_cache[key] = sig.clone()
        try:
            out, calls = run_solver(spec, model_fn, x, sig, family)
        except ValueError:
            return None
        known[steps] = calls
        return rms(out, ref), steps, calls, out

    ratio = known[max(known)] / max(known) if known else 1.0   # calls per step at the most steps run
    steps = max(1, min(nfe, int(nfe / ratio)))
    fitting = [s for s, c in known.items() if c <= nfe]
    if fitting:
        steps = max(steps, max(fitting))
    while steps > 1 and known.get(steps, 0) > nfe:
        steps -= 1
    best = None
    while steps >= 1:                       # down until one fits
        r = run(steps)
        if r is None:
            return None
        if r[2] <= nfe:
            best = r
            break
        # too many calls: shrink steps by the measured calls-per-step ratio
        steps = min(steps - 1, int(steps * nfe / r[2]))
    while best is not None and best[1] < nfe:   # then up while one more step still fits
        s = best[1] + 1
        if s in known and known[s] > nfe:
            break
        r = run(s)
        if r is None or r[2] > nfe:
            break
        best = r
    return best


class _Collect(logging.Handler):
    def __init__(self, counts):
        super().__init__(logging.WARNING)
        self.counts = counts

    def emit(self, record):
        self.counts[f"{record.name}: {record.getMessage()}"] += 1


class collected_warnings:
    """Collects FewStep's log warnings and Python warnings (message -> count) instead of printing them,
    so that a long run shows each once at the end, not in the middle of the progress line."""

    def __init__(self):
        self.counts = Counter()

    def __enter__(self):
        self._log = logging.getLogger("FewStep")
        self._handler = _Collect(self.counts)
        self._saved = self._log.propagate
        self._log.addHandler(self._handler)
        self._log.propagate = False
        self._warn = warnings.catch_warnings(record=True)
        self._records = self._warn.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._warn.__exit__(*exc)
        for w in self._records:
            self.counts[f"{w.category.__name__}: {w.message}"] += 1
        self._log.removeHandler(self._handler)
        self._log.propagate = self._saved
        return False


class Progress:
    """One line, redrawn per case on a terminal (a line per 10% of the cases elsewhere): the case count
    and an ETA from measured work. Each case's work is predicted as its NFE budget times the measured
    time of one model call of its family and cfg (timed on the exact reference solves, which run
    first); the ETA scales the predicted rest by how long the finished cases took against their
    prediction."""

    def __init__(self, cases, stream=None, enabled=True):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.cases, self.done = cases, 0
        self.predicted_left = None
        self.predicted_done = self.actual_done = 0.0
        self.t0 = time.perf_counter()
        self._last_decile = -1
        self._width = 0

    def eta(self):
        if self.predicted_left is None or self.predicted_done <= 0:
            return None
        return self.predicted_left * self.actual_done / self.predicted_done

    def case_done(self, predicted, actual, label):
        self.done += 1
        self.predicted_done += predicted
        self.actual_done += actual
        self.predicted_left = max(0.0, self.predicted_left - predicted)
        self.show(label)

    def show(self, label):
        if not self.enabled:
            return
        eta = self.eta()
        elapsed = time.perf_counter() - self.t0
        width = 24
        full = int(width * self.done / max(self.cases, 1))
        line = (f"[{'#' * full}{'.' * (width - full)}] case {self.done}/{self.cases}  {label[:40]:<40} "
                f"{elapsed:4.0f} s, eta {'?' if eta is None else f'{eta:4.0f}'} s")
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
        else:
            decile = (10 * self.done) // max(self.cases, 1)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(line.rstrip() + "\n")
                self.stream.flush()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Comparison:
    """What ``compare`` measured: results (dicts: family, cfg, solver, schedule, nfe, steps, calls,
    error), the groups of solvers that gave identical samples on every run (each solver in one group,
    registry order), the largest relative difference inside each group, and the warnings raised."""
    results: list
    groups: list
    group_diff: dict
    warnings: list
    cases_planned: int
    cases_done: int
    families: tuple
    cfgs: tuple
    nfes: tuple
    solvers: tuple
    schedules: tuple
    samples: int
    latent: tuple
    grid: str = "custom"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    orders: dict = field(default_factory=dict)

    def group_of(self, solver):
        return next(g for g in self.groups if solver in g)


def _identical_groups(names, diffs):
    """Connected groups of solvers whose pairwise difference is within IDENTICAL_RTOL (registry order)."""
    parent = {n: n for n in names}

    def root(n):
        while parent[n] != n:
            n = parent[n]
        return n

    for (a, b), d in diffs.items():
        if d <= IDENTICAL_RTOL:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb, key=names.index)] = min(ra, rb, key=names.index)
    groups = {}
    for n in names:
        groups.setdefault(root(n), []).append(n)
    out = [tuple(g) for g in groups.values()]
    for g in out:                     # connected must mean identical pairwise, not only chained
        for i, a in enumerate(g):
            for b in g[i + 1:]:
                assert diffs[(a, b) if names.index(a) < names.index(b) else (b, a)] <= IDENTICAL_RTOL, (a, b)
    return out


def _references(jobs, bar, shift, components, seed, samples, latent):
    """The exact references of every (family, cfg), computed first: they time a model call.
    Returns ({job: (model, model_fn, x, ref)}, {job: seconds per model call})."""
    setups, call_secs = {}, {}
    for j, (fam, cfg) in enumerate(jobs):
        bar.show(f"exact reference {j + 1}/{len(jobs)}: {fam} cfg {cfg:g}")
        m = AnalyticModel(fam, shift=shift, components=components, seed=seed)
        model_fn = guided_denoiser(m, cfg)
        x = m.initial_state(m.noise((samples,) + tuple(latent), seed + 1000), m.sigma_max)
        t = time.perf_counter()
        ref = reference_solve(model_fn, x, m.sigma_max, steps=REFERENCE_STEPS)
        call_secs[(fam, cfg)] = (time.perf_counter() - t) / (4 * REFERENCE_STEPS + 1)
        setups[(fam, cfg)] = (m, model_fn, x, ref)
    return setups, call_secs


def _fold_pair_diffs(pair_diff: dict, names, outs: dict) -> None:
    """The largest relative difference of every pair of solvers' samples so far (inf when they ran other
    step counts), for grouping identical solvers."""
    for ia, a in enumerate(names):
        for b in names[ia + 1:]:
            oa, ob = outs.get(a, {}), outs.get(b, {})
            if oa.keys() != ob.keys() or any(oa[k][0] != ob[k][0] for k in oa):
                d = math.inf
            else:
                d = max((float((oa[k][1] - ob[k][1]).abs().max() / ob[k][1].abs().max().clamp_min(1e-30))
                         for k in oa), default=math.inf)
            pair_diff[(a, b)] = max(pair_diff.get((a, b), 0.0), d)


def compare(families=QUICK.families, cfgs=QUICK.cfgs, nfes=QUICK.nfes, samples=QUICK.samples,
            latent=QUICK.latent, components=8, seed=0, shift=3.0, solvers=None, schedules=SCHEDULE_NAMES,
            progress=True, grid="custom", stream=None) -> Comparison:
    """Runs every case of the grid; see Comparison."""
    table = check_names(solvers, schedules)
    names = list(table)
    nfes = tuple(sorted(set(int(n) for n in nfes)))
    schedules = tuple(schedules)
    cases = plan(families, cfgs, names, schedules, nfes)
    jobs = [(f, float(c)) for f in families for c in cfgs]
    bar = Progress(len(cases), stream, progress)
    results, pair_diff, sched_cache = [], {}, {}
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    with collected_warnings() as caught:
        setups, call_secs = _references(jobs, bar, shift, components, seed, samples, latent)
        bar.predicted_left = sum(sum(c.nfes) * call_secs[(c.family, c.cfg)] for c in cases)
        i = 0
        for fam, cfg in jobs:
            m, model_fn, x, ref = setups.pop((fam, cfg))
            outs = {}                                   # solver -> {(schedule, nfe): (steps, sample)}
            for name in names:
                spec = table[name]
                for sched in schedules:
                    case = cases[i]
                    i += 1
                    assert (case.family, case.cfg, case.solver, case.schedule) == (fam, cfg, name, sched)
                    t = time.perf_counter()
                    known = {}
                    for nfe in nfes:
                        r = best_run_within(spec, model_fn, x, ref, sched, m.model_sigmas, fam, nfe,
                                            calls_by_steps=known, schedule_cache=sched_cache.setdefault(fam, {}))
                        if r is None:
                            continue
                        err, steps, calls, out = r
                        outs.setdefault(name, {})[(sched, nfe)] = (steps, out)
                        results.append(dict(family=fam, cfg=cfg, solver=name, schedule=sched, nfe=nfe,
                                            steps=steps, calls=calls, error=err))
                    bar.case_done(sum(nfes) * call_secs[(fam, cfg)], time.perf_counter() - t,
                                  f"{fam} cfg {cfg:g} {name} {sched}")
            _fold_pair_diffs(pair_diff, names, outs)
            del outs
    bar.close()
    groups = _identical_groups(names, pair_diff)
    gdiff = {g: max((pair_diff[(a, b)] for ia, a in enumerate(g) for b in g[ia + 1:]), default=0.0) for g in groups}
    return Comparison(results=results, groups=groups, group_diff=gdiff, warnings=sorted(caught.counts.items()),
                      cases_planned=len(cases), cases_done=bar.done, families=tuple(families),
                      cfgs=tuple(float(c) for c in cfgs), nfes=nfes, solvers=tuple(names), schedules=schedules,
                      samples=samples, latent=tuple(latent), grid=grid, seconds=time.perf_counter() - t_wall,
                      cpu_seconds=time.process_time() - t_cpu, orders={n: table[n].order for n in names})


# ------------------------------------------------------------------------------------------------
# reading the results
def best_by(results, key_fields):
    best = {}
    for r in results:
        k = tuple(r[f] for f in key_fields)
        if k not in best or r["error"] < best[k]["error"]:
            best[k] = r
    return best


def group_label(group) -> str:
    return " = ".join(group)


def rows_for(comp: Comparison, family, cfg):
    """One row per solver group, on the schedule that is best for it over the grid's NFEs (the geometric
    mean of its errors; schedules that ran at fewer NFEs than another are not candidates). Sorted by the
    error at NFE 10 (or the largest NFE). Each row: group, schedule, {nfe: result}."""
    rs = [r for r in comp.results if r["family"] == family and r["cfg"] == cfg]
    ref_nfe = 10 if 10 in comp.nfes else max(comp.nfes)
    rows = []
    for g in comp.groups:
        by_sched = {}
        for r in rs:
            if r["solver"] == g[0]:
                by_sched.setdefault(r["schedule"], {})[r["nfe"]] = r
        if not by_sched:
            continue
        most = max(len(v) for v in by_sched.values())

        def score(s):
            errs = [max(r["error"], 1e-300) for r in by_sched[s].values()]
            return sum(math.log(e) for e in errs) / len(errs)

        sched = min((s for s in comp.schedules if len(by_sched.get(s, {})) == most), key=score)
        rows.append((g, sched, by_sched[sched]))
    rows.sort(key=lambda row: row[2].get(ref_nfe, {"error": math.inf})["error"])
    return rows


def row_recipe(group, schedule) -> str:
    """The recipe of a group of identical solvers: a member with KSampler entries if there is one."""
    for s in group:
        if recipe(s, schedule)["kind"] == "ksampler":
            return recipe_text(s, schedule)
    return recipe_text(group[0], schedule)


FIRST_ORDER_NOTE = (
    "on this ODE they are one and the same step, x_next = (σ_next/σ)·x + (1 − σ_next/σ)·D(x, σ), in both "
    "families: Euler in σ on dx/dσ = (x − D)/σ is exactly DDIM, the first-order exponential integrator "
    "(DEIS tAB1, and EDM Euler without churn), because x = α·x0 + σ·ε with α = 1 (eps) or 1 − σ (flow) "
    "makes the integrating factor linear in σ. ComfyUI's built-in `euler` is the same step too.")


def group_notes(comp: Comparison):
    """{group: (mark, note)} for every group of more than one solver."""
    notes = {}
    marks = "¹²³⁴⁵⁶⁷⁸⁹"
    for g in comp.groups:
        if len(g) < 2:
            continue
        mark = marks[len(notes) % len(marks)]
        d = comp.group_diff[g]
        head = (f"{', '.join(g[:-1])} and {g[-1]} gave the same sample on every run of this grid (largest "
                f"relative difference {d:.0e}, float64 rounding), so they are one row")
        if all(comp.orders.get(s) == 1 for s in g):
            notes[g] = (mark, f"{head}: {FIRST_ORDER_NOTE}")
        else:
            notes[g] = (mark, f"{head}. They are different methods that coincide on these step counts "
                        "(try more NFEs to tell them apart).")
    return notes


def _fmt_nfes(nfes):
    nfes = list(nfes)
    if len(nfes) > 2 and nfes == list(range(nfes[0], nfes[-1] + 1)):
        return f"{nfes[0]}-{nfes[-1]}"
    return ", ".join(str(n) for n in nfes)


def _cell(r):
    if r is None:
        return "—"
    s = f"{r['error']:.2e}"
    return s if r["steps"] == r["nfe"] else f"{s} ({r['steps']} step{'s' if r['steps'] != 1 else ''})"


def markdown(comp: Comparison) -> str:
    notes = group_notes(comp)

    def label(g, sched):
        mark = notes[g][0] if g in notes else ""
        return f"{group_label(g)}{mark} · {sched}"

    grid = ("the quick grid, the default (`--full`: every NFE from 4 to 20)" if comp.grid == "quick" else
            "the full grid (`--full`)" if comp.grid == "full" else "a custom grid")
    lines = [
        "# FewStep compare: error vs NFE on the analytic model", "",
        f"Grid: {grid}. Families {', '.join(comp.families)}; cfg {', '.join(f'{c:g}' for c in comp.cfgs)}; "
        f"NFE {_fmt_nfes(comp.nfes)}; {len(comp.solvers)} solvers × {len(comp.schedules)} schedules; "
        f"{comp.samples} noise samples of {'×'.join(str(v) for v in comp.latent)}. "
        f"{comp.cases_done} cases (family × cfg × solver × schedule, each at every NFE) in "
        f"{comp.seconds:.0f} s ({comp.cpu_seconds:.0f} s of CPU).", "",
        "How to read it:",
        "- Error: RMS difference between the final sample and the exact ODE endpoint from the same noise "
        f"(RK4 with {REFERENCE_STEPS} steps in log σ). NFE: model calls (one CFG'd denoiser evaluation). Each "
        "run takes the most steps whose model calls fit the NFE; a cell says so where that is not the NFE.",
        "- A row is one solver on one schedule: the schedule that is best for that solver over these NFEs "
        "(geometric mean of its errors).",
        "- *In ComfyUI* says how to get that row: KSampler's `sampler_name` and `scheduler` entries "
        "(set `steps` to the NFE, or to the steps a cell names), or else FewStep's nodes for "
        "SamplerCustomAdvanced (or SamplerCustom), with the widget values shown (steps likewise, denoise 1).",
        "",
    ]
    for g, (mark, note) in notes.items():
        lines += [f"{mark} {note}", ""]
    shown = comp.nfes
    for fam in comp.families:
        for cfg in comp.cfgs:
            rs = [r for r in comp.results if r["family"] == fam and r["cfg"] == cfg]
            if not rs:
                continue
            rows = rows_for(comp, fam, cfg)
            lines += [f"## {fam}, cfg {cfg:g}", "", "Best at each NFE:", "",
                      "| NFE | solver · schedule | error | steps | in ComfyUI |", "|---|---|---|---|---|"]
            reps = {g[0]: g for g in comp.groups}
            best = best_by([r for r in rs if r["solver"] in reps], ("nfe",))
            for n in shown:
                b = best.get((n,))
                if b is None:
                    continue
                g = reps[b["solver"]]
                lines.append(f"| {n} | {label(g, b['schedule'])} | {b['error']:.2e} | {b['steps']} | "
                             f"{row_recipe(g, b['schedule'])} |")
            lines += ["", "Every solver on its best schedule:", "",
                      "| solver · schedule | " + " | ".join(f"NFE {n}" for n in shown) + " | in ComfyUI |",
                      "|---|" + "---|" * len(shown) + "---|"]
            for g, sched, by_nfe in rows:
                lines.append(f"| {label(g, sched)} | " + " | ".join(_cell(by_nfe.get(n)) for n in shown)
                             + f" | {row_recipe(g, sched)} |")
            lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# the plot
#: one colour and one marker per solver row (20 of each; tab10 and 10 more that differ from them)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#000000", "#00ff7f", "#8b0000", "#ff00ff", "#000080", "#808000", "#ffd700", "#00bfff",
          "#a0522d", "#4b0082")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "8", "H", "1", "2", "3", "4", "+")


def _style(i):
    n = len(COLORS)
    return COLORS[i % n], MARKERS[(i + i // n) % len(MARKERS)]


def _plot_metadata(fig, path: Path, panels) -> dict:
    """What the drawn figure shows, read back from it: image size, every solver's colour and marker, and
    per panel the axes and legend boxes (figure pixels, origin top-left, as in the PNG) and every point."""
    from matplotlib.colors import to_hex
    h = fig.bbox.height

    def box(artist):
        b = artist.get_window_extent()
        return [round(b.x0, 1), round(h - b.y1, 1), round(b.x1, 1), round(h - b.y0, 1)]

    meta = {"image": path.name, "size_px": [round(fig.bbox.width), round(h)], "solvers": {}, "panels": []}
    for fam, cfg, ax, leg, lines in panels:
        entry = {"family": fam, "cfg": cfg, "axes_px": box(ax), "legend_px": box(leg), "lines": []}
        for (ln, g, sched, by_nfe), text in zip(lines, leg.get_texts()):
            label = group_label(g)
            info = {"color": to_hex(ln.get_color()), "marker": ln.get_marker(), "members": list(g)}
            prev = meta["solvers"].setdefault(label, info)
            assert prev == info, (label, prev, info)          # the same style in every panel
            entry["lines"].append({
                "solver": label, "schedule": sched, "legend": text.get_text(),
                "color": info["color"], "marker": info["marker"],
                "points": [{"nfe": int(xv), "error": float(yv), "schedule": sched, "steps": by_nfe[int(xv)]["steps"]}
                           for xv, yv in ln.get_xydata()]})
        meta["panels"].append(entry)
    return meta


def plot(comp: Comparison, path: Path):
    """The PNG (one panel per family × cfg, a line per solver row on its best schedule, the legend of
    each panel outside it) and ``<name>.json`` beside it, read back from the drawn figure: solver ->
    colour and marker, and per panel the axes and legend boxes and every point with its schedule."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib, or the README's set-up command)",
              file=sys.stderr)
        return None
    cases = [(f, c) for f in comp.families for c in comp.cfgs
             if any(r["family"] == f and r["cfg"] == c for r in comp.results)]
    if not cases:
        return None
    style = {g: _style(i) for i, g in enumerate(comp.groups)}
    notes = group_notes(comp)
    nrows, ncols = len(comp.families), len(comp.cfgs)
    fig, axes = plt.subplots(nrows, ncols, figsize=(8.6 * ncols, 4.0 * nrows), dpi=100,
                             squeeze=False)
    panels = []
    for ri, fam in enumerate(comp.families):
        for ci, cfg in enumerate(comp.cfgs):
            ax = axes[ri][ci]
            if (fam, cfg) not in cases:
                ax.set_visible(False)
                continue
            lines = []
            for g, sched, by_nfe in rows_for(comp, fam, cfg):
                pts = sorted(by_nfe.items())
                color, marker = style[g]
                mark = notes[g][0] if g in notes else ""
                (ln,) = ax.semilogy([n for n, _ in pts], [r["error"] for _, r in pts], color=color, marker=marker,
                                    markersize=5, linewidth=1.2, label=f"{group_label(g)}{mark} · {sched}")
                lines.append((ln, g, sched, by_nfe))
            ax.set_title(f"{fam}, cfg {cfg:g}: each solver on its best schedule")
            ax.set_xlabel("NFE (model calls)")
            ax.set_ylabel("RMS error vs exact endpoint")
            ax.grid(True, which="both", alpha=0.3)
            leg = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7,
                            title="solver · schedule", title_fontsize=7)
            panels.append((fam, cfg, ax, leg, lines))
    if notes:
        fig.text(0.01, 0.005, "  ".join(f"{m} {', '.join(g)}: identical results, one line" for g, (m, _) in notes.items()),
                 fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    fig.canvas.draw()
    meta = _plot_metadata(fig, path, panels)
    plt.close(fig)
    side = path.with_suffix(".json")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, side)
    return path


# ------------------------------------------------------------------------------------------------
# the command
def _csv_list(cast):
    return lambda s: [cast(v) for v in s.split(",") if v]


def _nfe_list(s):
    try:
        if "-" in s:
            lo, hi = (int(v) for v in s.split("-"))
            nfes = list(range(lo, hi + 1))
        else:
            nfes = [int(v) for v in s.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe: {s!r} is not lo-hi or a comma list of integers") from None
    if not nfes or min(nfes) < 1:
        raise argparse.ArgumentTypeError(f"--nfe: {s!r}: give NFEs >= 1")
    return nfes


def _names_epilog():
    from .samplers.registry import SOLVERS
    det = [n for n, s in SOLVERS.items() if not s.stochastic]
    sto = [n for n, s in SOLVERS.items() if s.stochastic]
    w = lambda text: textwrap.fill(text, 100, subsequent_indent="    ")  # noqa: E731
    lines = ["solvers (--solvers; default: all):"]
    for n in det:
        sr = SOLVER_RECIPES[n]
        where = node_call(sr.node, sr.widgets) + (f" or KSampler sampler {sr.ksampler}" if sr.ksampler else "")
        lines.append(w(f"  {n}: {SOLVERS[n].description} [in ComfyUI: {where}]"))
    lines.append(w("stochastic solvers, not compared (they do not solve the ODE this measures): " + ", ".join(sto)))
    lines += ["", "schedules (--schedules; default: all):"]
    for s in SCHEDULE_NAMES:
        sc = SCHEDULE_RECIPES[s]
        where = node_call(SCHEDULER_NODE, sc.widgets) + (f" or KSampler scheduler {sc.ksampler}" if sc.ksampler else "")
        lines.append(w(f"  {s} [in ComfyUI: {where}]"))
    q, f = QUICK, FULL
    lines += ["", "grids:",
              w(f"  quick (default): families {','.join(q.families)}, cfg {','.join(f'{c:g}' for c in q.cfgs)}, "
                f"NFE {','.join(map(str, q.nfes))}, every solver and schedule "
                f"({len(det) * len(q.schedules) * len(q.families) * len(q.cfgs)} cases)"),
              w(f"  --full: the same at NFE {_fmt_nfes(f.nfes)}"),
              "  --families, --cfg, --nfe, --solvers and --schedules narrow either grid."]
    return "\n".join(lines)


def parser():
    p = argparse.ArgumentParser(prog="python -m fewstep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare solvers x schedules on the analytic model (error vs NFE)",
                       description=__doc__, epilog=_names_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--full", action="store_true",
                   help=f"the full sweep: NFE {_fmt_nfes(FULL.nfes)} (default: the quick grid, NFE "
                        f"{','.join(map(str, QUICK.nfes))})")
    c.add_argument("--families", type=_csv_list(str), default=None, help="eps,flow (default both)")
    c.add_argument("--cfg", type=_csv_list(float), default=None, help="CFG scales, e.g. 1,5 (default 1,5)")
    c.add_argument("--nfe", type=_nfe_list, default=None,
                   help="NFE range lo-hi or a list, e.g. 4-20 or 5,10,20 (default: the grid's)")
    c.add_argument("--samples", type=int, default=QUICK.samples, help="noise samples per case")
    c.add_argument("--latent", type=str, default="x".join(map(str, QUICK.latent)), help="latent shape CxHxW")
    c.add_argument("--components", type=int, default=8, help="Gaussian mixture components")
    c.add_argument("--shift", type=float, default=3.0, help="flow shift")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--solvers", type=_csv_list(str), default=None,
                   help="subset of the solvers listed below (default: all deterministic)")
    c.add_argument("--schedules", type=_csv_list(str), default=None,
                   help="subset of: " + ", ".join(SCHEDULE_NAMES) + " (default: all)")
    c.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tensors are small, more threads only contend)")
    c.add_argument("--out", type=Path, default=Path("out/compare"), help="output folder")
    c.add_argument("--quiet", action="store_true", help="no progress line")
    return p


@dataclass
class Plan:
    """What a compare command line will run (checked, before anything runs)."""
    grid: str                     # quick, full or custom
    families: list
    cfgs: list
    nfes: list
    solvers: list
    schedules: list
    samples: int
    latent: tuple
    cases: list
    args: argparse.Namespace


def plan_from_args(argv=None) -> Plan:
    a = parser().parse_args(argv)
    grid = FULL if a.full else QUICK
    families = a.families or list(grid.families)
    for f in families:
        if f not in ("eps", "flow"):
            raise SystemExit(f"--families: {f!r} is not eps or flow")
    try:
        latent = tuple(int(v) for v in a.latent.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--latent: {a.latent!r} is not CxHxW, e.g. 4x8x8") from None
    if len(latent) != 3 or min(latent) < 1:
        raise SystemExit(f"--latent: {a.latent!r} is not CxHxW with sizes >= 1")
    if a.samples < 1:
        raise SystemExit("--samples must be >= 1")
    if a.threads < 1:
        raise SystemExit("--threads must be >= 1")
    custom = any(v is not None for v in (a.families, a.cfg, a.nfe, a.solvers, a.schedules)) or \
        a.samples != grid.samples or latent != grid.latent
    cfgs = a.cfg or list(grid.cfgs)
    nfes = sorted(set(a.nfe or grid.nfes))
    schedules = a.schedules or list(grid.schedules)
    solvers = list(check_names(a.solvers, schedules))
    return Plan("custom" if custom else grid.name, families, cfgs, nfes, solvers, schedules, a.samples, latent,
                plan(families, cfgs, solvers, schedules, nfes), a)


def main(argv=None):
    pl = plan_from_args(argv)
    a = pl.args
    torch.set_num_threads(a.threads)
    if not a.quiet:
        n = lambda k, one, many: f"{k} {one if k == 1 else many}"  # noqa: E731
        print(f"fewstep compare: {pl.grid} grid, {n(len(pl.cases), 'case', 'cases')} ("
              f"{n(len(pl.families), 'family', 'families')} × {len(pl.cfgs)} cfg × "
              f"{n(len(pl.solvers), 'solver', 'solvers')} × {n(len(pl.schedules), 'schedule', 'schedules')}), "
              f"each at NFE {_fmt_nfes(pl.nfes)}"
              + (f"; --full for NFE {_fmt_nfes(FULL.nfes)}" if pl.grid == "quick" else ""), file=sys.stderr)
    comp = compare(pl.families, pl.cfgs, pl.nfes, pl.samples, pl.latent, a.components, a.seed, a.shift, pl.solvers,
                   pl.schedules, progress=not a.quiet, grid=pl.grid)
    for msg, n in comp.warnings:
        print(f"warning ({n} run{'s' if n != 1 else ''}): {msg}", file=sys.stderr)
    a.out.mkdir(parents=True, exist_ok=True)
    md_path = a.out / "compare.md"
    tmp = md_path.with_name(md_path.name + ".tmp")
    tmp.write_text(markdown(comp))
    os.replace(tmp, md_path)
    png = plot(comp, a.out / "compare.png")
    print(summary(comp))
    print(f"wrote {md_path}" + (f", {png} and {png.with_suffix('.json')}" if png else ""))
    return 0


def summary(comp: Comparison) -> str:
    """The best combination at a few NFEs per family and cfg, with its ComfyUI recipe."""
    reps = {g[0]: g for g in comp.groups}
    want = [n for n in (5, 10, 20) if n in comp.nfes] or list(comp.nfes)
    out = [f"{comp.cases_done} cases in {comp.seconds:.0f} s ({comp.cpu_seconds:.0f} s CPU). Best per NFE:"]
    for fam in comp.families:
        for cfg in comp.cfgs:
            best = best_by([r for r in comp.results if r["family"] == fam and r["cfg"] == cfg
                            and r["solver"] in reps], ("nfe",))
            for n in want:
                b = best.get((n,))
                if b:
                    g = reps[b["solver"]]
                    out.append(f"  {fam} cfg {cfg:g} NFE {n}: {group_label(g)} · {b['schedule']} "
                               f"{b['error']:.2e} -> {row_recipe(g, b['schedule'])}")
    return "\n".join(out)
