"""bench/gpu.py stays runnable: at toy sizes on the CPU (``--device cpu --tiny``) it writes a table with
every row and finite numbers; the table checker, the host-sync counter and the AYS call count it relies
on are each shown to catch what they are for."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import comfy_host

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("fewstep_bench_gpu", REPO / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench")
    cmd = [sys.executable, str(REPO / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--threads", "1",
           "--comfyui", str(comfy_host.find_comfyui()), "--out", str(out)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    data = json.loads((out / "gpu.json").read_text())
    return data, (out / "gpu.md").read_text(), proc.stdout, wall


@pytest.mark.host
def test_tiny_run_has_every_row_with_finite_numbers(tiny_run):
    data, md, stdout, wall = tiny_run
    assert bench.check_table(data, ["fp32"], [1, 4], "cpu") == []
    # 2 shared cores: the issue asks for <= 60 s; a loaded machine gets some slack before this fails
    assert wall < 120, f"bench/gpu.py --tiny took {wall:.0f} s"
    m = data["meta"]
    assert m["comfyui"] == str(comfy_host.find_comfyui()) and m["torch"] == torch.__version__
    assert m["tiny"] is True and m["elapsed_s"] <= m["budget_s"]
    # the markdown is the printed table: one line per row, under the header
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| section")]
    assert len(table) == len(data["rows"])
    assert md.strip() in stdout
    # every solver loop is free of host syncs, and the patch rows carry their bounds
    solvers = [r for r in data["rows"] if r["section"] == "solvers" and r["values"].get("syncs_in_loop") is not None]
    assert solvers and all(r["values"]["syncs_in_loop"] == 0 for r in solvers)
    dc = [r for r in data["rows"] if r["section"] == "patches" and r["item"] == bench.PATCH_LABEL["deepcache"]]
    assert dc and all(r["values"]["bound"] > 1.0 for r in dc)
    # the trainers' extrapolation is the stated call count times the measured time per call
    for r in (r for r in data["rows"] if r["section"] == "trainers"):
        v = r["values"]
        assert v["calls_measured"] > 0 and v["calls_default"] >= v["calls_default_min"] > v["calls_measured"]
        assert v["extrapolated_s"] >= v["s_per_call"] * v["calls_default"] - 1e-9
        assert str(v["calls_default"]) in r["note"] or r["item"] == "FewStepOLSSTrain"


@pytest.mark.host
def test_checker_finds_a_missing_row_or_number(tiny_run):
    data = tiny_run[0]
    assert bench.check_table(data, ["fp32"], [1, 4], "cpu") == []
    for section, item, model in (("patches", bench.PATCH_LABEL["tgate"], "sdxl"), ("solvers", "dpmpp_sde_2m", "sd15"),
                                 ("trainers", "FewStepAYSOptimize", "sdxl"), ("sizes", bench.LABEL["flux"], "flux"),
                                 ("patches", bench.DIT_NOTE, "flux")):
        broken = copy.deepcopy(data)
        broken["rows"] = [r for r in broken["rows"] if not (r["section"] == section and r["item"] == item
                                                            and r["model"] == model)]
        assert len(broken["rows"]) < len(data["rows"])
        problems = bench.check_table(broken, ["fp32"], [1, 4], "cpu")
        assert any(p.startswith(f"missing row: {section} / {item} / {model}") for p in problems), problems
    # a number that is not finite, a host sync in a loop, a dtype that was not run
    broken = copy.deepcopy(data)
    row = next(r for r in broken["rows"] if r["section"] == "patches" and r["item"] == bench.PATCH_LABEL["both"])
    row["values"]["bound"] = math.nan
    row2 = next(r for r in broken["rows"] if r["section"] == "solvers" and r["item"] == "unipc_bh2")
    row2["values"]["syncs_in_loop"] = 3
    problems = bench.check_table(broken, ["fp32"], [1, 4], "cpu")
    assert any("bound = nan" in p for p in problems) and any("unipc_bh2" in p and "host syncs" in p for p in problems)
    assert any("missing row: sizes" in p and "bf16" in p for p in bench.check_table(data, ["fp32", "bf16"], [1, 4], "cpu"))
    assert any("peak_vram_GiB" in p for p in bench.check_table(data, ["fp32"], [1, 4], "cuda"))


def test_sync_counter_sees_a_value_read_inside_the_loop():
    """The profiler count the script asserts on: 0 for FewStep's solvers, > 0 for a planted float()."""
    from fewstep.samplers import sample_dpmpp_sde, sample_euler
    from fewstep.samplers._common import setup

    device = torch.device("cpu")
    sig = torch.tensor([14.6, 5.0, 2.0, 0.8, 0.3, 0.0])
    x = torch.randn(1, 4, 8, 8)

    def model(xx, s, **k):
        return xx * 0.5

    def euler_reading_a_value(cb):
        run, grid = setup(model, x, sig, None, cb, "eps")
        xx = x
        for i in range(grid.n):
            d, s, t = run.start(i, xx, grid)
            if float(d.abs().max()) > 1e6:      # the planted per-step host read
                break
            xx = xx + (t - s) / s * (xx - d)
        return xx

    planted = bench.count_loop_syncs(euler_reading_a_value, device)
    assert planted["steps_marked"] == 5 and planted["in_loop"] >= 4
    for fn in (lambda cb: sample_euler(model, x, sig, None, cb),
               lambda cb: sample_dpmpp_sde(model, x, sig, {"seed": 1}, cb, order=2, eta=1.0)):
        got = bench.count_loop_syncs(fn, device)
        assert got["steps_marked"] == 5 and got["in_loop"] == 0, got
        assert got["per_run"] > 0  # set-up reads the sigmas once: counted, but outside the loop


@pytest.mark.host
@pytest.mark.parametrize("settings", [dict(samples=4, iterations=2, steps=10, align="none"),
                                      dict(samples=32, iterations=1, steps=10, align="dpmpp_2m")])
def test_ays_call_counts_bracket_a_real_run(comfy, settings):
    """The call count the AYS row extrapolates from: a real FewStepAYSOptimize run (the analytic model)
    makes at least the one-sweep count, the lower bound the AYS row reports. (It also makes more than
    the every-sweep count of the stages the formula models: the held-out starts, the safety check and
    the guard add calls, which is why the row gives a lower bound only.)"""
    from fewstep.nodes import ays_optimize as ays_node
    from fewstep.nodes.analytic import make_analytic_patcher

    model, pos, neg = make_analytic_patcher("eps")
    node = comfy.NODES["FewStepAYSOptimize"]
    kw = bench.node_defaults(node)
    kw.update(samples=settings["samples"], iterations=settings["iterations"], steps=settings["steps"], name="",
              align_to=ays_node.ALIGN_NONE if settings["align"] == "none" else settings["align"])
    counter = bench.CallCounter(torch.device("cpu"))
    node().optimize(counter.attach(model), pos, neg, latent_image={"samples": torch.zeros(1, 4, 8, 8)}, **kw)
    n = bench.ays_call_counts(kw, ays_node.BATCH)
    assert n["teacher"] < n["one_sweep"] <= n["max"] < counter.calls, (counter.calls, n)
