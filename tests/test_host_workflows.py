"""Every example workflow in a real ComfyUI: the API prompts run headless, the UI workflows are
current (regenerated from their API twins), line up with the node definitions the server publishes,
queue the same prompt as their twin, and are served in the template browser."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API_DIR = REPO / "example_workflows" / "api"
UI_DIR = REPO / "example_workflows"
API_FILES = sorted(API_DIR.glob("*.json"))
#: the loaders of downloadable model files and the models/ folder each reads
MODEL_LOADERS = {"CheckpointLoaderSimple": "checkpoints", "UNETLoader": "diffusion_models",
                 "CLIPLoader": "text_encoders", "VAELoader": "vae"}
UI_FILES = sorted(UI_DIR.glob("*.json"))

_spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
mw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mw)

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info", timeout=120)


def _missing_files(prompt, object_info):
    """(node, widget, value) of file-choosing combo widgets whose value the server does not list."""
    out = []
    for nid, node in prompt.items():
        info = object_info.get(node["class_type"])
        if info is None:
            continue
        for name, typ, opts, _ in mw.node_inputs(info):
            values = mw.combo_values(typ, opts)
            v = node.get("inputs", {}).get(name)
            if values is not None and isinstance(v, str) and v not in values and v.endswith(mw.MODEL_FILE_SUFFIXES):
                out.append((nid, name, v))
    return out


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_has_a_note_and_fits_the_view(path, object_info):
    """A Note saying what the workflow shows (the text of api/<name>.md); every node box, title bar
    included, inside 1600x900 at the saved 100% zoom; no two nodes overlap; no wire behind a node (the
    wires as the editor draws them: splines from output slot to input slot, a widget's input on its
    widget's row, tools/make_workflows.py's link_points)."""
    ui = json.loads(path.read_text())
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, f"{path.name}: {len(notes)} notes"
    assert notes[0]["widgets_values"] == [mw.load_note(API_DIR / path.name)]
    assert "Shows:" in notes[0]["widgets_values"][0]
    assert ui["extra"]["ds"] == {"scale": 1.0, "offset": [0, 0]}
    problems = mw.layout_problems(ui["nodes"], ui["links"], infos=object_info)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", API_FILES, ids=[p.stem for p in API_FILES])
def test_every_workflow_ends_in_a_saved_image(path):
    """Something to look at: a SaveImage (SaveAnimatedWEBP for a video model) fed by a node (VAE
    Decode, FewStep Latent View); analytic workflows also put their error against the exact solution
    on a node."""
    prompt = mw.load_api(path)
    saves = [n for n in prompt.values() if n["class_type"] in ("SaveImage", "SaveAnimatedWEBP")]
    assert saves and all(mw._is_link(n["inputs"].get("images")) for n in saves), path.name
    feeders = {prompt[n["inputs"]["images"][0]]["class_type"] for n in saves}
    assert feeders <= {"VAEDecode", "FewStepLatentView"}, feeders
    if any(n["class_type"] == "FewStepAnalyticModel" for n in prompt.values()):
        errs = [n for n in prompt.values() if n["class_type"] == "FewStepExactError"]
        assert len(errs) == 1, path.name
        # the error node measures the sampler the picture shows, from the sampler's noise seed
        view = next(n for n in prompt.values() if n["class_type"] == "FewStepLatentView")
        assert errs[0]["inputs"]["samples"] == view["inputs"]["samples"]
        sampler = prompt[view["inputs"]["samples"][0]]
        seed = sampler["inputs"].get("seed", sampler["inputs"].get("noise_seed"))
        if seed is None:
            seed = prompt[sampler["inputs"]["noise"][0]]["inputs"]["noise_seed"]
        assert errs[0]["inputs"]["noise_seed"] == seed, path.name


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_model_files_carry_their_download(path):
    """A workflow that loads a model file (checkpoint, diffusion model, text encoder, VAE) carries the
    ``models`` metadata (name, url, directory) that makes the editor offer the download, and its Note
    names the file."""
    ui = json.loads(path.read_text())
    loaders = [n for n in ui["nodes"] if n["type"] in MODEL_LOADERS]
    if not loaders:
        assert "models" not in ui
        return
    for n in loaders:
        name = n["widgets_values"][0]
        entry = [m for m in ui["models"] if m["name"] == name]
        assert entry and entry[0]["directory"] == MODEL_LOADERS[n["type"]], ui.get("models")
        assert entry[0]["url"].startswith("https://huggingface.co/") and entry[0]["url"].endswith("/" + name)
        assert n["properties"]["models"] == entry
        assert name in next(x for x in ui["nodes"] if x["type"] == "Note")["widgets_values"][0]


def test_there_are_example_workflows():
    names = {p.stem for p in API_FILES}
    assert {"basic_ksampler", "scheduler_ays", "scheduler_fewstep"} <= names


def test_ui_workflows_are_regenerated():
    """`python tools/make_workflows.py --check` passes: every UI file equals what the generator writes
    from its API twin with today's node definitions, and none is orphaned. (A subprocess: the
    generator loads all of ComfyUI's extra nodes, which the in-process host of other tests need not.)"""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_workflows.py"), "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-3000:]}"
    assert f"{len(API_FILES)} UI workflows up to date" in r.stdout


@pytest.mark.server
def test_generator_reads_the_same_definitions_from_a_server(comfy_server):
    """`--url` (definitions from a running server's /object_info) writes the same files as in-process."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REPO / "tools" / "make_workflows.py"), "--url", comfy_server.url, "--check"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-3000:]}"


@pytest.mark.server
@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_lines_up_with_server_definitions(path, object_info):
    ui = json.loads(path.read_text())
    problems = mw.check_ui_workflow(ui, object_info)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
    twin = API_DIR / path.name
    assert twin.exists(), f"{path.name} has no API twin"
    api = mw.load_api(twin)
    assert mw.ui_to_api(ui, object_info) == mw.normalized_api(api, object_info), \
        f"{path.name} does not queue the prompt of its API twin"


#: the patch workflows load an SD1.5 checkpoint by name: tests/test_host_patches_server.py runs each of
#: them on a generated checkpoint in SD1.5 layout (and checks that it covers them all)
MODEL_FREE_API_FILES = [p for p in API_FILES
                        if not any(n["class_type"] in MODEL_LOADERS for n in mw.load_api(p).values())]
#: real-model starters: validated by the server with placeholder model files (not run)
STARTER_FILES = [p for p in API_FILES if p.stem.startswith("starter_")]


@pytest.mark.server
@pytest.mark.parametrize("path", MODEL_FREE_API_FILES, ids=[p.stem for p in MODEL_FREE_API_FILES])
def test_api_workflow_runs_headless(path, comfy_server, object_info):
    prompt = mw.load_api(path)
    missing = _missing_files(prompt, object_info)
    assert not missing, f"{path.name} names model files the server does not have: {missing}"
    status, body = comfy_server.queue(prompt)
    assert status == 200, body
    assert body.get("node_errors") == {}, json.dumps(body, indent=1)[:3000]
    entry = _wait(comfy_server, body["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    output_nodes = [nid for nid, n in prompt.items() if object_info[n["class_type"]].get("output_node")]
    assert output_nodes, f"{path.name} has no output node"
    for nid in output_nodes:
        assert entry["outputs"].get(str(nid)), f"{path.name}: output node {nid} produced nothing: {entry['outputs']}"
    images = [i for o in entry["outputs"].values() for i in o.get("images", [])]
    assert images and all(i["filename"].startswith(path.stem) for i in images), entry["outputs"]
    errs = [nid for nid, n in prompt.items() if n["class_type"] == "FewStepExactError"]
    quals = [nid for nid, n in prompt.items() if n["class_type"] == "FewStepQuality"]
    assert errs or quals, f"{path.name}: no node shows a number (Error vs Exact or FewStep Quality)"
    for err in errs:
        (text,) = entry["outputs"][err]["text"]
        assert text.startswith("RMS error vs exact: "), text
        assert float(text.split()[4]) < 1.0, text  # a real sampler lands near the exact solution
    for q in quals:  # the reference model: its score, on the node
        (text,) = entry["outputs"][q]["text"]
        assert text.startswith("class accuracy "), text


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_template_thumbnail_next_to_workflow(path):
    """The template browser asks /api/workflow_templates/<pack>/<name>.jpg for each template: a JPEG
    of that name sits next to the workflow (rendered by tools/make_thumbnails.py from a run)."""
    Image = pytest.importorskip("PIL.Image")
    jpg = path.with_suffix(".jpg")
    assert jpg.is_file(), f"{jpg.name} is missing: run python tools/make_thumbnails.py"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (512, 384), (im.format, im.size)


def _wait(server, pid, timeout=300):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = server.get(f"/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            return hist[pid]
        if pid in hist and hist[pid].get("status", {}).get("status_str") == "error":
            return hist[pid]
        time.sleep(0.25)
    raise AssertionError(f"prompt {pid} did not finish in {timeout}s")


@pytest.mark.server
def test_template_browser_serves_ui_workflows(comfy_server):
    listing = comfy_server.get("/workflow_templates")
    ours = next((v for k, v in listing.items() if k == "comfyui-fewstep"), None)
    assert ours is not None, listing
    assert sorted(ours) == sorted(p.stem for p in UI_FILES)
    served = comfy_server.get(f"/api/workflow_templates/comfyui-fewstep/{UI_FILES[0].name}")
    assert served == json.loads(UI_FILES[0].read_text())
    for p in UI_FILES:
        status, _ = comfy_server.request("GET", f"/api/workflow_templates/comfyui-fewstep/{p.stem}.jpg")
        assert status == 200, f"thumbnail of {p.stem}: HTTP {status}"


def test_every_fewstep_node_is_in_an_example_workflow(comfy):
    """The issue is done when every FewStep node is covered by an example workflow."""
    used = {n["class_type"] for p in API_FILES for n in mw.load_api(p).values()}
    missing = sorted(set(comfy.NODES) - used)
    assert not missing, f"FewStep nodes without an example workflow in example_workflows/api/: {missing}"


def test_fewstep_names_are_short_and_every_output_explained(comfy):
    """Display names fit the node library (the full story is in DESCRIPTION), output names are lower
    case, and every output has a tooltip."""
    problems = []
    for nid, cls in comfy.NODES.items():
        name = comfy.fewstep.NODE_DISPLAY_NAME_MAPPINGS.get(nid, nid)
        if len(name) > 24:
            problems.append(f"{nid}: display name {name!r} is longer than 24 characters")
        if not getattr(cls, "DESCRIPTION", ""):
            problems.append(f"{nid}: no DESCRIPTION")
        outs = list(cls.RETURN_TYPES)
        names = list(getattr(cls, "RETURN_NAMES", outs))
        tips = list(getattr(cls, "OUTPUT_TOOLTIPS", ()))
        if any(n != n.lower() for n in names):
            problems.append(f"{nid}: output names {names} are not lower case")
        if len(tips) != len(outs) or not all(isinstance(t, str) and t.strip() for t in tips):
            problems.append(f"{nid}: {len(tips)} output tooltips for {len(outs)} outputs")
    assert not problems, "\n".join(problems)


def test_real_model_starters_exist():
    assert {p.stem for p in STARTER_FILES} >= {"starter_sdxl", "starter_flux", "starter_sd35", "starter_wan"}


@pytest.mark.server
@pytest.mark.parametrize("path", STARTER_FILES, ids=[p.stem for p in STARTER_FILES])
def test_real_model_starter_validates_with_placeholder_models(path, comfy_server):
    """With an (empty) file of each model's name in the folder its ``models`` entry names, the server
    lists it in the loader's combo and accepts the prompt (node_errors empty); FewStep's KSampler
    entries are in the lists. The run itself stops at loading the empty file."""
    ui = json.loads((UI_DIR / path.name).read_text())
    prompt = mw.load_api(path)
    made = []
    for m in ui["models"]:
        folder = comfy_server.base / "models" / m["directory"]
        folder.mkdir(parents=True, exist_ok=True)
        f = folder / m["name"]
        if not f.exists():
            f.write_bytes(b"")
            made.append(f)
    try:
        info = comfy_server.get("/object_info", timeout=120)
        strict = []
        for nid, node in prompt.items():
            for name, typ, opts, _ in mw.node_inputs(info[node["class_type"]]):
                values = mw.combo_values(typ, opts)
                v = node["inputs"].get(name)
                if values is not None and not mw._is_link(v) and v not in values:
                    strict.append((nid, name, v))
        assert not strict, f"values the server does not list: {strict}"
        assert any(n["class_type"] == "KSampler" and n["inputs"]["sampler_name"].startswith("fewstep_")
                   for n in prompt.values())
        assert mw.check_ui_workflow(ui, info) == []
        status, body = comfy_server.queue(prompt)
        assert status == 200 and body.get("node_errors") == {}, body
        _wait(comfy_server, body["prompt_id"])
    finally:
        for f in made:
            f.unlink(missing_ok=True)
