"""The compare command (``python -m fewstep compare``, ``./run compare``).

* It runs on the analytic model, respects the NFE budget (the most steps whose calls fit), and ranks a
  second-order solver above Euler.
* Default is the quick grid, ``--full`` the full sweep (planned, not run here).
* Its output is something a user can act on, read back from the files it writes: every row has a
  ComfyUI recipe naming an entry or node FewStep really defines, with widget names the node has;
  identical first-order solvers are one row with a note, found by the numbers; every solver has its
  own colour and marker, the legends sit outside the axes and each point's schedule is in the plot's
  metadata; ``--help`` lists every solver and schedule.
* Progress counts the cases it runs; warnings are shown once each, after the progress.
"""
import inspect
import io
import json
import re
import subprocess
import sys

import pytest
import torch

from fewstep import cli, recipes
from fewstep.core.analytic import AnalyticModel
from fewstep.samplers.registry import SOLVERS
from fewstep.schedules import SCHEDULE_NAMES, get_schedule

import compare_output as co

DETERMINISTIC = [n for n, s in SOLVERS.items() if not s.stochastic]
FIRST_ORDER = ["euler", "ddim", "deis_1", "edm_euler"]

#: every deterministic solver (more rows than tab10 has colours), four schedules (KSampler entries of
#: FewStep and of ComfyUI, and beta), two NFEs, tiny latents
SMALL = ["--families", "eps,flow", "--cfg", "1,5", "--nfe", "4,8", "--samples", "1", "--latent", "4x2x2",
         "--schedules", "karras,beta,logsnr_uniform,polyexponential"]
SMALL_SOLVERS = len(DETERMINISTIC)
SMALL_SCHEDULES = 4


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fewstep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    r = run_cli("compare", *SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr
    md = (out / "compare.md").read_text()
    meta = json.loads((out / "compare.json").read_text())
    return dict(out=out, stderr=r.stderr, stdout=r.stdout, md=md, parsed=co.parse_markdown(md), meta=meta)


# ------------------------------------------------------------------------------------------------
# the numbers
def test_compare_results_respect_budget_and_rank_solvers():
    comp = cli.compare(families=("eps",), cfgs=(1.0,), nfes=[4, 8, 16], samples=2, latent=(4, 4, 4),
                       solvers=["euler", "dpmpp_2m", "dpmpp_2s"], schedules=["karras", "logsnr_uniform"],
                       progress=False)
    res = comp.results
    assert res
    for r in res:
        assert r["calls"] <= r["nfe"]
        assert r["error"] > 0
    best = cli.best_by(res, ("solver", "nfe"))
    # a 2-call-per-step solver (1 call on the last step) fits (nfe + 1) // 2 steps into the budget
    assert best[("dpmpp_2s", 8)]["steps"] == 4
    assert best[("dpmpp_2m", 8)]["steps"] == 8
    # second order beats first order at the same NFE, and errors fall as NFE grows
    assert best[("dpmpp_2m", 16)]["error"] < 0.5 * best[("euler", 16)]["error"]
    assert best[("dpmpp_2m", 16)]["error"] < best[("dpmpp_2m", 4)]["error"]
    assert comp.cases_done == comp.cases_planned == 1 * 1 * 3 * 2
    assert {(r["solver"], r["schedule"]) for r in res} == {(s, k) for s in ("euler", "dpmpp_2m", "dpmpp_2s")
                                                          for k in ("karras", "logsnr_uniform")}


@pytest.mark.parametrize("solver", ["dpm_solver_2", "dpm_solver_3", "edm_heun", "pndm", "dpmpp_2s", "deis_3"])
def test_best_run_within_takes_the_most_steps_that_fit(solver):
    """Against brute force: every step count's calls measured, the largest that fits each NFE; with the
    calls remembered across NFEs as compare does."""
    m = AnalyticModel("flow")
    fn = m.denoiser(1.0)
    x = m.initial_state(m.noise((1, 4, 2, 2), 3), m.sigma_max)
    ref = torch.zeros_like(x)
    spec = SOLVERS[solver]
    calls = {s: cli.run_solver(spec, fn, x, get_schedule("karras", s, m.model_sigmas), "flow")[1] for s in range(1, 21)}
    known = {}
    for nfe in range(1, 21):
        want = max((s for s, c in calls.items() if c <= nfe and s <= nfe), default=None)
        r = cli.best_run_within(spec, fn, x, ref, "karras", m.model_sigmas, "flow", nfe, calls_by_steps=known)
        assert (r is None and want is None) or r[1] == want, (solver, nfe, r and r[1], want)
        assert r is None or r[2] == calls[r[1]] <= nfe


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_guided_denoiser_is_the_models_denoiser(family):
    m = AnalyticModel(family)
    x = m.noise((3, 4, 2, 2), 5) * 2
    for cfg in (1.0, 5.0):
        a, b = m.denoiser(cfg), cli.guided_denoiser(m, cfg)
        for s in (0.03, 0.5, 0.99, m.sigma_max):
            sig = torch.full((3,), s, dtype=torch.float64)
            assert torch.allclose(a(x, sig), b(x, sig), rtol=0, atol=1e-12)
    assert not torch.allclose(cli.guided_denoiser(m, 5.0)(x, sig), m.denoiser(1.0)(x, sig))


def test_identical_solvers_are_found_by_the_numbers():
    comp = cli.compare(families=("eps", "flow"), cfgs=(5.0,), nfes=[4, 7], samples=1, latent=(4, 2, 2),
                       solvers=["euler", "dpmpp_2m", "ddim", "edm_euler", "deis_2"], schedules=["karras", "ays"],
                       progress=False)
    assert comp.groups == [("euler", "ddim", "edm_euler"), ("dpmpp_2m",), ("deis_2",)]
    assert comp.group_diff[("euler", "ddim", "edm_euler")] < 1e-12
    by = {(r["family"], r["solver"], r["schedule"], r["nfe"]): r["error"] for r in comp.results}
    for (fam, s, k, n), e in by.items():
        if s in ("ddim", "edm_euler"):
            assert e == pytest.approx(by[(fam, "euler", k, n)], rel=1e-10)
    assert by[("eps", "deis_2", "karras", 7)] != pytest.approx(by[("eps", "dpmpp_2m", "karras", 7)], rel=1e-3)
    # groups are cliques: a chain of near-equal pairs is not one group
    with pytest.raises(AssertionError):
        cli._identical_groups(["a", "b", "c"], {("a", "b"): 0.0, ("b", "c"): 0.0, ("a", "c"): 1.0})


def test_compare_rejects_unknown_names():
    with pytest.raises(SystemExit, match="unknown solver"):
        cli.compare(solvers=["nope"], progress=False)
    with pytest.raises(SystemExit, match="unknown schedule"):
        cli.compare(schedules=["nope"], progress=False)
    with pytest.raises(SystemExit, match="unknown solver"):
        cli.compare(solvers=["tcd"], progress=False)        # stochastic: not an ODE solver to compare


# ------------------------------------------------------------------------------------------------
# the grids
def test_default_is_the_quick_grid_and_full_the_full_one():
    n_det = len(DETERMINISTIC)
    quick = cli.plan_from_args(["compare"])
    full = cli.plan_from_args(["compare", "--full"])
    assert quick.grid == "quick" and full.grid == "full"
    assert quick.nfes == [4, 5, 6, 8, 10, 12, 15, 20]
    assert full.nfes == list(range(4, 21))
    for p in (quick, full):
        assert p.families == ["eps", "flow"] and p.cfgs == [1.0, 5.0]
        assert p.solvers == DETERMINISTIC and p.schedules == list(SCHEDULE_NAMES)
        assert len(p.cases) == 2 * 2 * n_det * len(SCHEDULE_NAMES)
        assert all(c.nfes == tuple(p.nfes) for c in p.cases)
        assert len(set((c.family, c.cfg, c.solver, c.schedule) for c in p.cases)) == len(p.cases)
    # the quick grid's work (model-call budget) is well under half of the full sweep's
    work = lambda p: sum(sum(c.nfes) for c in p.cases)  # noqa: E731
    assert work(quick) < 0.45 * work(full)
    narrowed = cli.plan_from_args(["compare", "--full", "--families", "flow", "--solvers", "euler,deis_4"])
    assert narrowed.grid == "custom" and narrowed.nfes == list(range(4, 21))
    assert len(narrowed.cases) == 1 * 2 * 2 * len(SCHEDULE_NAMES)


def test_help_lists_every_solver_and_schedule():
    r = run_cli("compare", "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    for name in list(SOLVERS) + list(SCHEDULE_NAMES):
        assert re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", r.stdout), name
    assert "--full" in r.stdout and "quick" in r.stdout


# ------------------------------------------------------------------------------------------------
# the written output, read back
def test_progress_counts_the_cases_and_warnings_come_once_after_it(small_run):
    err = small_run["stderr"].splitlines()
    n = 2 * 2 * SMALL_SOLVERS * SMALL_SCHEDULES
    assert err[0].startswith(f"fewstep compare: custom grid, {n} cases")
    progress = [i for i, line in enumerate(err) if re.match(r"^\[[#.]+\] case \d+/\d+ ", line)]
    assert progress
    counts = [tuple(map(int, re.search(r"case (\d+)/(\d+)", err[i]).groups())) for i in progress]
    assert counts[-1] == (n, n)
    assert all(t == n for _, t in counts) and [d for d, _ in counts] == sorted(d for d, _ in counts)
    assert f"{n} cases (family × cfg × solver × schedule" in small_run["md"]
    # deis_4 at NFE 4 falls back to order 3 on every schedule of every case: one line, with its count
    warn = [i for i, line in enumerate(err) if "too short for order 4" in line]
    assert len(warn) == 1, err
    assert err[warn[0]].startswith(f"warning ({2 * 2 * SMALL_SCHEDULES} runs): FewStep: DEIS")
    assert warn[0] > progress[-1]


def test_every_row_has_a_comfyui_recipe_that_exists(small_run):
    parsed = small_run["parsed"]
    ks_samplers, ks_schedulers = co.ksampler_samplers(), co.ksampler_schedulers()
    solver_nodes = co.node_ids("nodes/solvers.py")
    sched_nodes = co.node_ids("nodes/schedulers.py")
    widgets = {**co.required_widgets("nodes/solvers.py"), **co.required_widgets("nodes/schedulers.py")}
    import comfy_host
    root = comfy_host.find_comfyui()
    builtin = co.comfyui_builtin_schedulers(root) if root else list(recipes.COMFYUI_SCHEDULERS)
    assert set(parsed["sections"]) == {(f, c) for f in ("eps", "flow") for c in (1.0, 5.0)}
    kinds = set()
    for sec in parsed["sections"].values():
        assert sec["rows"] and len(sec["best"]) == 2
        for row in sec["best"] + sec["rows"]:
            rec = co.parse_recipe(row["recipe"])
            assert rec is not None, row
            kinds.add(rec["kind"])
            if rec["kind"] == "ksampler":
                assert rec["sampler_name"] in ks_samplers, rec
                # the entry runs one of the row's solvers with that solver's options
                fn, opts = ks_samplers[rec["sampler_name"]]
                assert any(_same_solver(s, fn, opts) for s in row["solvers"]), (row, rec)
                if rec["scheduler"].startswith("fewstep_"):
                    handler, args = ks_schedulers[rec["scheduler"]]
                    assert (handler, args) in [("_ksampler_handler", (row["schedule"],)),
                                               ("_ays_handler", ("SD1",))], (row, rec)
                    assert handler == "_ksampler_handler" or row["schedule"] == "ays"
                else:
                    assert rec["scheduler"] in builtin, rec
                    assert {"karras": "karras", "exponential": "polyexponential"}[rec["scheduler"]] == row["schedule"]
            else:
                node = rec["sampler_node"]
                assert node in solver_nodes, rec
                assert list(rec["sampler_widgets"]) == widgets[solver_nodes[node]], rec   # every widget, in order
                assert rec["sigmas_node"] in sched_nodes and rec["sigmas_node"] == "FewStepScheduler"
                assert set(rec["sigmas_widgets"]) <= set(widgets["FewStepScheduler"]) - {"model"}
                assert rec["sigmas_widgets"]["schedule"] == row["schedule"]
                assert any(_node_gives(s, node, rec["sampler_widgets"]) for s in row["solvers"]), (row, rec)
    assert kinds == {"ksampler", "nodes"}     # the small grid has rows of both kinds


def _effective(fn, options):
    sig = inspect.signature(fn)
    eff = {k: p.default for k, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and k != "family"}
    eff.update(options)
    return eff


def _same_solver(name, fn, options):
    spec = SOLVERS[name]
    return spec.fn is fn and _effective(fn, options) == _effective(spec.fn, spec.kwargs)


def _node_gives(name, node, widgets):
    """The recipe table's node and widget values for ``name``, as printed (no ComfyUI here: the host test
    runs the node and compares samples)."""
    r = recipes.SOLVER_RECIPES[name]
    return r.node == node and {k: recipes._fmt(v) for k, v in r.widgets.items()} == widgets


def test_recipe_table_matches_the_registry_and_nodes():
    assert set(recipes.SOLVER_RECIPES) == set(DETERMINISTIC)
    assert set(recipes.SCHEDULE_RECIPES) == set(SCHEDULE_NAMES)
    ks, widgets = co.ksampler_samplers(), co.required_widgets("nodes/solvers.py")
    nodes = co.node_ids("nodes/solvers.py")
    for name, r in recipes.SOLVER_RECIPES.items():
        assert list(r.widgets) == widgets[nodes[r.node]], name
        if r.ksampler:
            assert _same_solver(name, *ks[r.ksampler]), (name, r.ksampler)
    # every FewStep KSampler entry that is one of the compared solvers is named by its recipe
    for entry, (fn, opts) in ks.items():
        for name in DETERMINISTIC:
            if _same_solver(name, fn, opts):
                assert recipes.SOLVER_RECIPES[name].ksampler is not None, (name, entry)
    # one pndm everywhere: KSampler's fewstep_pndm, the node's default and the registry's pndm are PLMS with
    # the lower-order warm-up; the paper's pseudo Runge-Kutta warm-up is pndm_rk (the node's warmup=rk)
    assert _same_solver("pndm", *ks["fewstep_pndm"]) and not _same_solver("pndm_rk", *ks["fewstep_pndm"])
    sched = co.ksampler_schedulers()
    for s, r in recipes.SCHEDULE_RECIPES.items():
        assert r.widgets["schedule"] == s
        if r.ksampler and r.ksampler.startswith("fewstep_"):
            assert sched[r.ksampler] in [("_ksampler_handler", (s,)), ("_ays_handler", ("SD1",))]
    assert recipes.recipe("deis_4", "time_quadratic") == {"kind": "ksampler", "sampler_name": "fewstep_deis_4",
                                                          "scheduler": "fewstep_time_quadratic"}


def test_identical_first_order_solvers_are_one_row_with_a_note(small_run):
    parsed = small_run["parsed"]
    assert len(parsed["notes"]) == 1
    (mark, note), = parsed["notes"].items()
    assert "euler, ddim, deis_1 and edm_euler" in note and "first-order" in note
    for sec in parsed["sections"].values():
        merged = [r for r in sec["rows"] if len(r["solvers"]) > 1]
        assert len(merged) == 1 and merged[0]["solvers"] == FIRST_ORDER and merged[0]["mark"] == mark
        names = [s for r in sec["rows"] for s in r["solvers"]]
        assert sorted(names) == sorted(set(names)) and len(names) == SMALL_SOLVERS   # each solver in one row
        # the merged row's recipe is a KSampler one (fewstep_ddim is a member) when its schedule has an entry
        if merged[0]["schedule"] != "beta":
            assert co.parse_recipe(merged[0]["recipe"])["sampler_name"] == "fewstep_ddim"


def test_plot_metadata_styles_legend_and_schedules(small_run):
    meta, parsed = small_run["meta"], small_run["parsed"]
    w, h = co.png_size(small_run["out"] / "compare.png")
    assert [w, h] == meta["size_px"]
    styles = meta["solvers"]
    assert len(styles) == SMALL_SOLVERS - len(FIRST_ORDER) + 1
    colors = [s["color"] for s in styles.values()]
    markers = [s["marker"] for s in styles.values()]
    assert len(set(colors)) == len(colors), colors           # every solver its own colour
    assert len(set(markers)) == len(markers), markers        # ... and its own marker
    assert styles[" = ".join(FIRST_ORDER)]["members"] == FIRST_ORDER
    assert {(p["family"], p["cfg"]) for p in meta["panels"]} == set(parsed["sections"])
    for p in meta["panels"]:
        ax, lg = p["axes_px"], p["legend_px"]
        # the legend does not overlap the axes, and lies inside the image
        assert lg[0] >= ax[2] or lg[2] <= ax[0] or lg[1] >= ax[3] or lg[3] <= ax[1], (ax, lg)
        assert 0 <= lg[0] and lg[2] <= w and 0 <= lg[1] and lg[3] <= h, (lg, w, h)
        rows = {" = ".join(r["solvers"]): r for r in parsed["sections"][(p["family"], p["cfg"])]["rows"]}
        assert {ln["solver"] for ln in p["lines"]} == set(rows)
        for ln in p["lines"]:
            assert (ln["color"], ln["marker"]) == (styles[ln["solver"]]["color"], styles[ln["solver"]]["marker"])
            row = rows[ln["solver"]]
            assert ln["schedule"] == row["schedule"] and ln["schedule"] in ln["legend"]
            assert [pt["nfe"] for pt in ln["points"]] == [4, 8]
            for pt in ln["points"]:
                assert pt["schedule"] == row["schedule"]
                assert row["cells"][pt["nfe"]].split()[0] == f"{pt['error']:.2e}"


def test_progress_eta_from_measured_work():
    """The ETA scales the predicted rest by the measured/predicted ratio of the finished cases."""
    s = io.StringIO()
    bar = cli.Progress(4, stream=s)
    bar.predicted_left = 8.0
    assert bar.eta() is None
    bar.case_done(2.0, 4.0, "a")                 # took twice its prediction
    assert bar.eta() == pytest.approx(12.0)
    bar.case_done(2.0, 2.0, "b")
    assert bar.eta() == pytest.approx(4.0 * 6.0 / 4.0)
    assert "case 2/4" in s.getvalue().splitlines()[-1]
