"""The compare command: runs on the analytic model, respects the NFE budget, writes the table and
plot, and ranks a second-order solver above Euler."""
import subprocess
import sys

import pytest

from fewstep import cli


def test_compare_results_respect_budget_and_rank_solvers():
    res = cli.compare(families=("eps",), cfgs=(1.0,), nfes=[4, 8, 16], samples=2, latent=(4, 4, 4),
                      solvers=["euler", "dpmpp_2m", "dpmpp_2s"], schedules=["karras", "logsnr_uniform"],
                      progress=False)
    assert res
    for r in res:
        assert r["calls"] <= r["nfe"]
        assert r["error"] > 0
    best = cli.best_by(res, ("solver", "nfe"))
    # a 2-call-per-step solver fits half the steps into the budget
    assert best[("dpmpp_2s", 8)]["steps"] == 4
    assert best[("dpmpp_2m", 8)]["steps"] == 8
    # second order beats first order at the same NFE, and errors fall as NFE grows
    assert best[("dpmpp_2m", 16)]["error"] < 0.5 * best[("euler", 16)]["error"]
    assert best[("dpmpp_2m", 16)]["error"] < best[("dpmpp_2m", 4)]["error"]
    md = cli.markdown(res)
    assert "| dpmpp_2m (" in md and "NFE 8" in md


def test_compare_command_writes_table_and_plot(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fewstep", "compare", "--families", "flow", "--cfg", "5",
                        "--nfe", "4,6", "--samples", "1", "--latent", "4x2x2", "--solvers", "euler,dpmpp_2m",
                        "--schedules", "karras", "--out", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "compare.md").read_text().startswith("# FewStep compare")
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_compare_rejects_unknown_names():
    with pytest.raises(SystemExit, match="unknown solver"):
        cli.compare(solvers=["nope"], progress=False)
    with pytest.raises(SystemExit, match="unknown schedule"):
        cli.compare(schedules=["nope"], progress=False)
