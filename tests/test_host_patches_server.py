"""The patch example workflows (example_workflows/api/patch_*.json) run headless on a real server.

They load a standard SD1.5 checkpoint by name, as users' graphs do. Here the checkpoint is replaced
by a small random-weight checkpoint in SD1.5 layout that ComfyUI's loader detects as SD1.5
(tests/unet_factory.py: a shallow 320-channel UNet, a CLIP-L text encoder with random weights and a
TAESD VAE), written into the server's temporary models folder and deleted afterwards. That UNet is
shallow but 320 channels wide (the detector's key), so to keep the CPU run short the image is cut to
32x32 and KSampler to 6 steps. Everything else runs as written."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API_DIR = REPO / "example_workflows" / "api"
PATCH_FILES = sorted(API_DIR.glob("patch_*.json"))
CKPT = "fewstep-tiny-sd15-random.safetensors"

pytestmark = [pytest.mark.host, pytest.mark.server]


@pytest.fixture(scope="module")
def tiny_checkpoint(comfy, comfy_server):
    import unet_factory

    path = comfy_server.base / "models" / "checkpoints" / CKPT
    unet_factory.write_tiny_checkpoint(path, seed=0)
    yield CKPT
    path.unlink(missing_ok=True)


def test_all_patch_workflows_exist():
    assert {p.stem for p in PATCH_FILES} == {"patch_deepcache", "patch_tgate", "patch_freeu", "patch_all"}
    # every example that loads a checkpoint is a patch workflow, so this file runs them all (but the
    # real-model starters, which tests/test_host_workflows.py validates with placeholder files)
    loads = {p.stem for p in API_DIR.glob("*.json") if "CheckpointLoaderSimple" in p.read_text()
             and not p.stem.startswith("starter_")}
    assert loads == {"patch_all"}  # the SD1.5 starter; the single-patch ones use the reference model


@pytest.mark.parametrize("path", PATCH_FILES, ids=[p.stem for p in PATCH_FILES])
def test_patch_workflow_runs_headless(path, comfy_server, tiny_checkpoint):
    prompt = json.loads(path.read_text())
    loaders = [n for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple"]
    refs = [n for n in prompt.values() if n["class_type"] == "FewStepReferenceModel"]
    assert bool(loaders) != bool(refs), "a patch workflow loads an SD1.5 checkpoint or uses the reference model"
    assert all(n["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly-fp16.safetensors" for n in loaders)
    for n in loaders:
        n["inputs"]["ckpt_name"] = tiny_checkpoint
    for n in prompt.values():
        if n["class_type"] == "EmptyLatentImage":
            n["inputs"].update(width=32, height=32)
        if n["class_type"] == "KSampler":
            n["inputs"].update(steps=6)
    log_before = len(comfy_server.log())
    entry = comfy_server.run(prompt, timeout=600)
    saved = [o for o in entry["outputs"].values() if o.get("images")]
    assert saved, entry["outputs"]
    if refs:  # unpatched and patched images, each scored on the node
        scores = [o["text"][0] for o in entry["outputs"].values() if o.get("text")]
        assert len(saved) == 2 and len([t for t in scores if "class accuracy" in t]) == 2, entry["outputs"]
    log = comfy_server.log()[log_before:]
    kinds = {n["class_type"] for n in prompt.values()}
    if "FewStepDeepCache" in kinds:
        assert "2 full and 4 cached UNet calls over 6 steps" in log, log[-3000:]
    if "FewStepTGate" in kinds:
        assert "T-GATE (gate at step 2/6" in log and "unconditional batch dropped on 4 model evaluations" in log, \
            log[-3000:]
    if "FewStepFreeU" in kinds:
        assert "FreeU v2" in log, log[-3000:]
