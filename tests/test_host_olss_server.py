"""OLSS through a real headless ComfyUI server: the train-then-sample example workflow runs, writes its
profile into the server's models/fewstep_olss, and the saved profile then shows up in the sampler's
dropdown and samples from it."""
import copy
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.host, pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "example_workflows" / "api" / "olss_train_then_sample.json"


def test_train_then_sample_workflow_runs_headless(comfy_server):
    prompt = json.loads(WORKFLOW.read_text())
    entry = comfy_server.run(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success"
    profile = comfy_server.base / "models" / "fewstep_olss" / "olss_example.safetensors"
    assert profile.is_file()
    info = comfy_server.get("/object_info/FewStepOLSSSampler")
    choices = info["FewStepOLSSSampler"]["input"]["required"]["profile_name"][0]
    assert "olss_example.safetensors" in choices
    # the saved profile from the dropdown, without the train node
    p2 = copy.deepcopy(prompt)
    del p2["2"]
    p2["3"]["inputs"] = {"profile_name": "olss_example.safetensors", "denoise": 1.0}
    p2["5"]["inputs"]["filename_prefix"] = "fewstep/olss_from_file"
    assert comfy_server.run(p2, timeout=600)["status"]["status_str"] == "success"
    outs = list((comfy_server.base / "output" / "fewstep").glob("olss_*.latent"))
    assert len(outs) >= 2


def test_broken_profile_is_a_clear_error(comfy_server):
    d = comfy_server.base / "models" / "fewstep_olss"
    d.mkdir(parents=True, exist_ok=True)
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    prompt = json.loads(WORKFLOW.read_text())
    del prompt["2"]
    prompt["3"]["inputs"] = {"profile_name": "broken.safetensors", "denoise": 1.0}
    with pytest.raises(AssertionError, match="broken.safetensors is corrupt or truncated"):
        comfy_server.run(prompt, timeout=300)
