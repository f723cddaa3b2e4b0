"""The solver example workflows (API format) and the KSampler names, run headless in a real ComfyUI server."""
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.host, pytest.mark.server]

API = Path(__file__).resolve().parents[1] / "example_workflows" / "api"
WORKFLOWS = sorted(API.glob("solver_*.json"))
SOLVER_NODES = ["FewStepDDIM", "FewStepDPMSolver", "FewStepDPMSolverPP", "FewStepUniPC", "FewStepDEIS",
                "FewStepPNDM", "FewStepEDM", "FewStepTCD"]


def test_every_solver_node_has_an_example_workflow():
    used = {n["class_type"] for wf in WORKFLOWS for n in json.loads(wf.read_text()).values()}
    for node in SOLVER_NODES:
        assert node in used, f"no example_workflows/api/solver_*.json uses {node}"


def test_solver_nodes_and_names_in_object_info(comfy_server):
    info = comfy_server.get("/object_info")
    for node in SOLVER_NODES:
        assert node in info, f"{node} missing from /object_info"
        assert info[node]["category"] == "sampling/fewstep/samplers"
        assert info[node]["output"] == ["SAMPLER"]
    names = info["KSampler"]["input"]["required"]["sampler_name"][0]
    for name in ("fewstep_dpmpp_2m", "fewstep_dpmpp_3m", "fewstep_unipc_bh2", "fewstep_deis_3", "fewstep_pndm",
                 "fewstep_ddim", "fewstep_edm_heun", "fewstep_deis_4"):
        assert name in names
    failed = [ln for ln in comfy_server.log().splitlines() if "IMPORT FAILED" in ln and "fewstep" in ln.lower()]
    assert not failed, failed


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_solver_workflow_runs_headless(comfy_server, path):
    prompt = json.loads(path.read_text())
    status, body = comfy_server.queue(prompt)
    assert status == 200, body
    assert not body.get("node_errors"), body
    entry = comfy_server.run(prompt)  # raises unless status_str == "success"
    files = [f for o in entry["outputs"].values() for f in o.get("latents", [])]
    assert files and all(f["filename"].startswith(path.stem) for f in files), entry["outputs"]


def test_ksampler_with_fewstep_sampler_name_runs_headless(comfy_server):
    prompt = {
        "1": {"class_type": "FewStepAnalyticModel",
              "inputs": {"family": "flow", "shift": 3.0, "components": 8, "seed": 0, "latent_size": 8}},
        "2": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 3, "steps": 8, "cfg": 3.0, "sampler_name": "fewstep_unipc_bh2",
            "scheduler": "simple", "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3],
            "denoise": 1.0}},
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "fewstep/ksampler_unipc"}},
    }
    entry = comfy_server.run(prompt)
    assert [f for o in entry["outputs"].values() for f in o.get("latents", [])]
