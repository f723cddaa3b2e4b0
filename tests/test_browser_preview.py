"""The schedule preview in ComfyUI's real graph editor, driven in Debian's Chromium with Playwright:
add FewStepAYSScheduler through the node search, change steps through the widget, and check that the
preview's data and its pixels follow. Also loads a generated UI workflow in the editor and checks the
prompt the editor would queue is the API twin's. Screenshots go to artifacts/ (gitignored)."""
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
DOCS_IMG = REPO / "docs" / "img"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]

pytestmark = [pytest.mark.host, pytest.mark.server]

sync_api = pytest.importorskip("playwright.sync_api", reason="python package playwright absent: browser test skipped")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"Chromium not found at {CHROMIUM}: browser test skipped", allow_module_level=True)
Image = pytest.importorskip("PIL.Image", reason="Pillow absent: browser test skipped")

APP = "window.comfyAPI.app.app"
NODE_GEOM = """([type, widget]) => {
  const app = window.comfyAPI.app.app;
  const n = app.graph.nodes.find((n) => n.type === type);
  const ds = app.canvas.ds;
  const r = app.canvas.canvas.getBoundingClientRect();
  const at = (x, y) => { const p = ds.convertOffsetToCanvas([n.pos[0] + x, n.pos[1] + y]); return [r.left + p[0], r.top + p[1]]; };
  const out = { node: [...at(0, -LiteGraph.NODE_TITLE_HEIGHT), n.size[0] * ds.scale, (n.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * ds.scale],
                plot: [...at(0, n.size[1] - 160), n.size[0] * ds.scale, 160 * ds.scale] };
  if (widget) {
    const w = n.widgets.find((w) => w.name === widget);
    const y = (w.y ?? w.last_y) + 10;
    out.center = at(n.size[0] / 2, y);
    out.increment = at(n.size[0] - 22, y);
    out.value = w.value;
  }
  return out;
}"""
PREVIEW_STATE = """(type) => {
  const n = window.comfyAPI.app.app.graph.nodes.find((n) => n.type === type);
  const s = n?.fewstepPreview;
  return s ? { url: s.url, sigmas: s.sigmas, error: s.error, note: s.note, updated: s.updated ?? 0, loading: s.loading } : null;
}"""


@pytest.fixture(scope="module")
def page(comfy_server):
    # no first-run template dialog, no minimap over the canvas, no missing-model dialog (the patch
    # examples name SD1.5's checkpoint)
    comfy_server.request("POST", "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                                  "Comfy.Workflow.ShowMissingModelsWarning": False})
    ARTIFACTS.mkdir(exist_ok=True)
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack or ''}"))
        pg.goto(comfy_server.url, wait_until="domcontentloaded")
        pg.wait_for_function("() => window.comfyAPI?.app?.app?.graph && window.LiteGraph", timeout=90000)
        pg.wait_for_function(f"() => ({APP}.extensions ?? []).some((e) => e.name === 'FewStep.SchedulePreview')",
                             timeout=30000)
        try:  # the editor opens its default workflow once ready; clearing before that is undone
            pg.wait_for_function(f"() => {APP}.graph.nodes.length > 0", timeout=20000)
        except sync_api.TimeoutError:
            pass
        pg.wait_for_timeout(500)
        pg.fewstep_errors = errors
        yield pg
        browser.close()


def _clear(page):
    page.evaluate(f"() => {{ const app = {APP}; app.graph.clear(); app.canvas.ds.offset = [0, 0]; "
                  "app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true); }")


def _wait_state(page, type_, pred, what, timeout=20):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        st = page.evaluate(PREVIEW_STATE, type_)
        if st and not st["loading"] and pred(st):
            return st
        page.wait_for_timeout(100)
    raise AssertionError(f"preview of {type_} never showed {what}; last state {json.dumps(st)[:600]}")


def _shot(page, box):
    x, y, w, h = box
    return Image.open(io.BytesIO(page.screenshot(clip={"x": x, "y": y, "width": w, "height": h}))).convert("RGB")


def _pixels(img):
    return list(img.get_flattened_data()) if hasattr(img, "get_flattened_data") else list(img.getdata())


def _curve_pixels(img):
    """Pixels of the preview's curve colour (#58a6ff, anti-aliased)."""
    return sum(1 for r, g, b in _pixels(img) if b > 200 and 120 < g < 200 and r < 140)


def _no_pack_errors(page):
    ours = [e for e in page.fewstep_errors if "fewstep" in e.lower()]
    assert not ours, "\n".join(ours)


def test_preview_follows_steps(page, comfy_server):
    _clear(page)
    # 1-2. add the node as a user does: double-click the canvas, search, Enter
    search = page.locator("input[placeholder='Search Nodes...']")
    for _ in range(3):
        page.mouse.dblclick(500, 300)
        try:
            search.wait_for(state="visible", timeout=5000)
            break
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")
    search.type("FewStep Align Your Steps")
    page.locator("[role=option]").filter(has_text="FewStep Align Your Steps").first.wait_for(timeout=10000)
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.comfyAPI.app.app.graph.nodes.some((n) => n.type === 'FewStepAYSScheduler')",
                           timeout=10000)
    st = _wait_state(page, "FewStepAYSScheduler", lambda s: s["sigmas"] and len(s["sigmas"]) == 11, "10 steps")
    status, want = comfy_server.request("GET", "/fewstep/sigmas?schedule=ays&steps=10&model_type=SD1")
    assert status == 200 and st["sigmas"] == want and st["error"] is None
    page.mouse.move(1000, 650)
    page.wait_for_timeout(200)
    geom = page.evaluate(NODE_GEOM, ["FewStepAYSScheduler", "steps"])
    before = _shot(page, geom["plot"])
    assert _curve_pixels(before) > 60, "the preview draws no curve"

    # 3. change steps through the widget: its increment arrow, then typing a value into its prompt
    page.mouse.click(*geom["increment"])
    _wait_state(page, "FewStepAYSScheduler", lambda s: len(s["sigmas"] or []) == 12, "11 steps after the arrow")
    page.mouse.click(*geom["center"])
    page.wait_for_timeout(300)
    page.keyboard.press("Control+A")
    page.keyboard.type("20")
    page.keyboard.press("Enter")
    # 4. the preview updates: its data (the route's 20-step schedule) ...
    st = _wait_state(page, "FewStepAYSScheduler", lambda s: len(s["sigmas"] or []) == 21, "20 steps")
    assert page.evaluate(NODE_GEOM, ["FewStepAYSScheduler", "steps"])["value"] == 20
    status, want = comfy_server.request("GET", "/fewstep/sigmas?schedule=ays&steps=20&model_type=SD1")
    assert st["sigmas"] == want and "steps=20" in st["url"]
    # ... and its pixels
    page.mouse.move(1000, 650)
    page.wait_for_timeout(300)
    after = _shot(page, geom["plot"])
    changed = sum(1 for a, b in zip(_pixels(before), _pixels(after)) if a != b)
    assert changed > 300, f"only {changed} preview pixels changed after steps 10 -> 20"
    assert _curve_pixels(after) > 60

    # a workflow from another machine naming a saved schedule this one lacks: the preview shows the
    # route's reason instead of a stale curve
    set_saved = """(v) => { const n = window.comfyAPI.app.app.graph.nodes.find((n) => n.type === 'FewStepAYSScheduler');
        const w = n.widgets.find((w) => w.name === 'saved_schedule'); w.value = v; w.callback?.(v); }"""
    page.evaluate(set_saved, "gone.safetensors")
    st = _wait_state(page, "FewStepAYSScheduler", lambda s: s["error"], "an error")
    assert "saved_schedule 'gone.safetensors' is not in models/fewstep_ays" in st["error"] and st["sigmas"] is None
    page.evaluate(set_saved, "none")
    _wait_state(page, "FewStepAYSScheduler", lambda s: len(s["sigmas"] or []) == 21, "the curve again")

    # 5. screenshots as artifacts (and the README's picture when asked for, or when it is missing)
    page.mouse.move(1000, 650)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "preview_editor.png"))
    x, y, w, h = geom["node"]
    node_png = ARTIFACTS / "preview.png"
    page.screenshot(path=str(node_png), clip={"x": x - 12, "y": y - 30, "width": w + 24, "height": h + 42})
    if os.environ.get("FEWSTEP_UPDATE_DOCS_IMG") or not (DOCS_IMG / "preview.png").exists():
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(node_png, DOCS_IMG / "preview.png")
    _no_pack_errors(page)


def test_generated_workflow_loads_and_queues_its_twin(page, comfy_server):
    """The UI workflow written by tools/make_workflows.py loads in the editor, its FewStepScheduler
    preview reads the analytic model's family upstream, and the editor's prompt equals the API twin."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    ui = json.loads((REPO / "example_workflows" / "scheduler_fewstep.json").read_text())
    api = mw.load_api(REPO / "example_workflows" / "api" / "scheduler_fewstep.json")
    infos = comfy_server.get("/object_info", timeout=120)
    page.evaluate(f"async (wf) => {{ await {APP}.loadGraphData(wf); }}", ui)
    st = _wait_state(page, "FewStepScheduler", lambda s: s["sigmas"] and len(s["sigmas"]) == 9, "8 steps")
    assert st["note"] == "analytic eps" and "family=eps" in st["url"] and "schedule=logsnr_uniform" in st["url"]
    queued = page.evaluate(f"async () => (await {APP}.graphToPrompt()).output")
    for node in queued.values():
        node.pop("_meta", None)
    assert queued == mw.normalized_api(api, infos)
    # the model upstream changes family: the preview follows (flow grid, the model's shift)
    page.evaluate("""() => { const n = window.comfyAPI.app.app.graph.nodes.find((n) => n.type === 'FewStepAnalyticModel');
        const w = n.widgets.find((w) => w.name === 'family'); w.value = 'flow'; w.callback?.('flow');
        n.setDirtyCanvas(true, true); }""")
    st = _wait_state(page, "FewStepScheduler", lambda s: s["note"] == "analytic flow", "the flow model")
    assert "family=flow" in st["url"] and "shift=3" in st["url"] and st["sigmas"][0] == 1.0
    status, want = comfy_server.request("GET", "/fewstep/sigmas?schedule=logsnr_uniform&steps=8&denoise=1&rho=7"
                                               "&family=flow&shift=3")
    assert status == 200 and st["sigmas"] == want
    page.set_viewport_size({"width": 1600, "height": 720})
    page.mouse.move(1000, 650)
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "preview_workflow.png"))
    page.set_viewport_size({"width": 1280, "height": 800})
    if os.environ.get("FEWSTEP_UPDATE_DOCS_IMG") or not (DOCS_IMG / "preview_workflow.png").exists():
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "preview_workflow.png", DOCS_IMG / "preview_workflow.png")
    _no_pack_errors(page)


def test_every_ui_workflow_queues_its_twin_in_the_editor(page, comfy_server):
    """Each generated UI workflow, loaded in the real editor, queues exactly its API twin: the
    frontend reads the widgets_values the generator wrote the way the generator meant them."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    infos = comfy_server.get("/object_info", timeout=120)
    problems = []
    files = sorted((REPO / "example_workflows").glob("*.json"))
    assert files
    for path in files:
        twin = REPO / "example_workflows" / "api" / path.name
        if not twin.exists():
            problems.append(f"{path.name}: no API twin")
            continue
        ui = json.loads(path.read_text())
        page.evaluate(f"async (wf) => {{ await {APP}.loadGraphData(wf); }}", ui)
        queued = page.evaluate(f"async () => (await {APP}.graphToPrompt()).output")
        for node in queued.values():
            node.pop("_meta", None)
        want = mw.normalized_api(mw.load_api(twin), infos)
        if queued != want:
            diff = {k: (queued.get(k), want.get(k)) for k in set(queued) | set(want) if queued.get(k) != want.get(k)}
            problems.append(f"{path.name}: editor queues something else: {json.dumps(diff)[:800]}")
    assert not problems, "\n".join(problems)
    _no_pack_errors(page)


WF_GEOM = """() => {
  const app = window.comfyAPI.app.app;
  const ds = app.canvas.ds;
  const r = app.canvas.canvas.getBoundingClientRect();
  const reg = LiteGraph.registered_node_types;
  return app.graph.nodes.map((n) => {
    const a = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
    const b = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
    return { id: n.id, type: n.type, known: !!reg[n.type], box: [r.left + a[0], r.top + a[1], r.left + b[0], r.top + b[1]],
             widgets: (n.widgets ?? []).map((w) => w.value), disabled: (n.widgets ?? []).filter((w) => w.disabled).map((w) => w.name),
             names: (n.widgets ?? []).map((w) => w.name),
             linked: (n.inputs ?? []).filter((i) => i.link != null).map((i) => i.name),
             images: (n.imgs ?? []).length, text: n.fewstepText ?? null };
  });
}"""

#: wires behind nodes as the editor has them: every link's two ends from the live graph
#: (LGraphNode.getConnectionPos, which places a widget's input on its widget's row), the spline LiteGraph's
#: LinkRenderer draws between them (control points max(30, distance / 4) out to the right and left), sampled
#: at 48 points; a point more than 2 px inside another node's box (title bar included) is a wire behind it
WF_WIRES = """() => {
  const g = window.comfyAPI.app.app.graph;
  const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links ?? {});
  const out = [];
  for (const l of links) {
    if (!l) continue;
    const src = g.getNodeById(l.origin_id), dst = g.getNodeById(l.target_id);
    if (!src || !dst) continue;
    const a = src.getConnectionPos(false, l.origin_slot), b = dst.getConnectionPos(true, l.target_slot);
    const d = Math.max(30, Math.hypot(b[0] - a[0], b[1] - a[1]) * 0.25);
    for (const n of g.nodes) {
      if (n.id === src.id || n.id === dst.id) continue;
      const x0 = n.pos[0], y0 = n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, x1 = n.pos[0] + n.size[0], y1 = n.pos[1] + n.size[1];
      for (let i = 0; i <= 48; i++) {
        const t = i / 48, u = 1 - t;
        const x = u ** 3 * a[0] + 3 * u * u * t * (a[0] + d) + 3 * u * t * t * (b[0] - d) + t ** 3 * b[0];
        const y = u ** 3 * a[1] + 3 * u * u * t * a[1] + 3 * u * t * t * b[1] + t ** 3 * b[1];
        if (x > x0 + 2 && x < x1 - 2 && y > y0 + 2 && y < y1 - 2) {
          out.push(`link ${l.id} (${src.id} -> ${dst.id}) runs behind node ${n.id} (${n.type})`);
          break;
        }
      }
    }
  }
  return out;
}"""

#: what each widget greyed out by js/fewstep_results.js depends on: {node type: {widget: active(values, linked)}}
SDE = ("sde_2m", "sde_3m")
ACTIVE_WHEN = {
    "FewStepAnalyticModel": {"shift": lambda v, ln: v["family"] == "flow"},
    "FewStepDDIM": {"s_noise": lambda v, ln: v["eta"] > 0},
    "FewStepDPMSolverPP": {"eta": lambda v, ln: v["mode"] in SDE, "s_noise": lambda v, ln: v["mode"] in SDE,
                           "noise_type": lambda v, ln: v["mode"] in SDE,
                           "lower_order_final": lambda v, ln: v["mode"] != "2s"},
    "FewStepUniPC": {"lower_order_final": lambda v, ln: v["order"] > 1},
    "FewStepEDM": {k: (lambda v, ln: v["s_churn"] > 0) for k in ("s_tmin", "s_tmax", "s_noise")},
    "FewStepScheduler": {"rho": lambda v, ln: v["schedule"] in ("karras", "polyexponential")},
    "FewStepAYSScheduler": {"model_type": lambda v, ln: v.get("saved_schedule", "none") == "none"},
    "FewStepFreeU": {k: (lambda v, ln: v["preset"] == "custom") for k in ("b1", "b2", "s1", "s2")},
    "FewStepDeepCache": {k: (lambda v, ln: v["mode"] == "non-uniform") for k in ("center", "power")},
    "FewStepOLSSTrain": {"heldout_runs": lambda v, ln: v.get("select_on_heldout", True) is not False},
    "FewStepOLSSSampler": {"profile_name": lambda v, ln: "profile" not in ln},
}


def _greyed_problems(where, g):
    """Widgets greyed out where they should not be, or active where they do nothing (ACTIVE_WHEN)."""
    rules = ACTIVE_WHEN.get(g["type"], {})
    values = dict(zip(g["names"], g["widgets"]))
    out = []
    for name in g["names"]:
        want_grey = name in rules and not rules[name](values, g["linked"])
        if want_grey != (name in g["disabled"]):
            out.append(f"{where}: node {g['id']} ({g['type']}) widget {name} greyed is {name in g['disabled']} "
                       f"with {values} (linked {g['linked']})")
    return out
WORKFLOW_FILES = sorted((REPO / "example_workflows").glob("*.json"))


def _history_since(comfy_server, before):
    hist = comfy_server.get("/history")
    return {k: v for k, v in hist.items() if k not in before}


def test_every_workflow_in_the_editor_fits_runs_and_shows_its_picture(page, comfy_server):
    """Each example as a new user meets it, in a 1600x900 window at the saved 100% zoom: every node
    type known, every widget value kept, every node box inside the window, a Note; the runnable ones
    (all but those that need a downloaded model) run from the Run button and show their picture on Save
    Image and their number on FewStep Error vs Exact or FewStep Quality. Screenshots in
    artifacts/workflows/."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    infos = comfy_server.get("/object_info", timeout=120)
    shots = ARTIFACTS / "workflows"
    shots.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1600, "height": 900})
    problems = []
    try:
        for path in WORKFLOW_FILES:
            ui = json.loads(path.read_text())
            page.evaluate(f"async (wf) => {{ await {APP}.loadGraphData(wf); }}", ui)
            page.wait_for_timeout(300)
            geom = page.evaluate(WF_GEOM)
            name = path.stem
            want = {n["id"]: n for n in ui["nodes"]}
            if not any(g["type"] == "Note" for g in geom):
                problems.append(f"{name}: no Note")
            for g in geom:
                if not g["known"]:
                    problems.append(f"{name}: node {g['id']} type {g['type']} is missing")
                x0, y0, x1, y1 = g["box"]
                if x0 < 0 or y0 < 0 or x1 > 1600 or y1 > 900:
                    problems.append(f"{name}: node {g['id']} ({g['type']}) box {[round(v) for v in g['box']]} "
                                    "is outside the 1600x900 window")
                if g["widgets"][:len(want[g["id"]]["widgets_values"])] != want[g["id"]]["widgets_values"]:
                    problems.append(f"{name}: node {g['id']} ({g['type']}) widgets {g['widgets']} != "
                                    f"{want[g['id']]['widgets_values']}")
                problems += _greyed_problems(name, g)
            problems += [f"{name}: {w}" for w in page.evaluate(WF_WIRES)]
            page.mouse.move(1590, 890)
            page.screenshot(path=str(shots / f"{name}.png"))
            if ui.get("models"):  # needs a downloaded model (the real-model starters, patch_all)
                continue
            before = set(comfy_server.get("/history"))
            page.locator("button:has-text('Run')").first.click()
            deadline = time.time() + 900
            new = {}
            while time.time() < deadline:
                new = _history_since(comfy_server, before)
                if new and all(v.get("status", {}).get("completed") is not None or
                               v.get("status", {}).get("status_str") == "error" for v in new.values()):
                    break
                page.wait_for_timeout(500)
            if not new:
                problems.append(f"{name}: the Run button queued nothing")
                continue
            entry = next(iter(new.values()))
            if entry["status"].get("status_str") != "success":
                problems.append(f"{name}: run failed: {json.dumps(entry['status'])[:800]}")
                continue
            page.wait_for_timeout(800)
            geom = page.evaluate(WF_GEOM)
            saves = [g for g in geom if g["type"] == "SaveImage"]
            if not saves or not all(g["images"] > 0 for g in saves):
                problems.append(f"{name}: Save Image shows no picture after the run: {saves}")
            # the number on the node: Error vs Exact on the analytic model, FewStep Quality on the
            # reference model
            errs = [g for g in geom if g["type"] == "FewStepExactError"]
            quals = [g for g in geom if g["type"] == "FewStepQuality"]
            if not errs and not quals:
                problems.append(f"{name}: no node shows a number (Error vs Exact or FewStep Quality)")
            if not all((g["text"] or [""])[0].startswith("RMS error vs exact") for g in errs):
                problems.append(f"{name}: Error vs Exact shows no number: {errs}")
            if not all((g["text"] or [""])[0].startswith("class accuracy") for g in quals):
                problems.append(f"{name}: FewStep Quality shows no number: {quals}")
            page.mouse.move(1590, 890)
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / f"{name}_run.png"))
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})
    assert not problems, "\n".join(problems)
    _no_pack_errors(page)


def test_template_browser_shows_a_thumbnail_and_title_for_every_template(page, comfy_server):
    """The template browser (the editor's Templates dialog), FewStep's category: one card per UI
    workflow, each with its title and a thumbnail answered with HTTP 200."""
    answers = {}

    def on_response(r):
        if "/workflow_templates/comfyui-fewstep/" in r.url and r.url.endswith(".jpg"):
            answers[r.url.rsplit("/", 1)[1]] = r.status

    page.on("response", on_response)
    page.set_viewport_size({"width": 1600, "height": 900})
    try:
        page.evaluate(f"async () => {{ await {APP}.extensionManager.command.execute('Comfy.BrowseTemplates'); }}")
        nav = page.get_by_text("comfyui-fewstep", exact=True).first
        nav.wait_for(timeout=20000)
        nav.click()
        names = [p.stem for p in WORKFLOW_FILES]
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "templates.png"))
        search = page.get_by_placeholder("Search templates...")
        problems = []
        for n in names:  # the list loads as it scrolls: find each card by searching its name
            search.fill(n)
            card_title = page.get_by_text(n, exact=True).first
            try:
                card_title.wait_for(timeout=10000)
            except sync_api.TimeoutError:
                problems.append(f"{n}: no card titled {n}")
                continue
            deadline = time.time() + 10
            while time.time() < deadline and answers.get(f"{n}.jpg") is None:
                page.wait_for_timeout(100)
            if answers.get(f"{n}.jpg") != 200:
                problems.append(f"{n}: thumbnail answered {answers.get(f'{n}.jpg')}")
        search.fill("")
        assert not problems, "\n".join(problems) + f"\nseen {answers}"
        page.keyboard.press("Escape")
    finally:
        page.remove_listener("response", on_response)
        page.set_viewport_size({"width": 1280, "height": 800})


#: (node type, [(widget, value), ...]): values set one after the other, as a user would
WIDGET_STEPS = [
    ("FewStepAnalyticModel", [("family", "flow"), ("family", "eps")]),
    ("FewStepDDIM", [("eta", 0.5), ("eta", 0.0)]),
    ("FewStepDPMSolverPP", [("mode", "sde_2m"), ("mode", "2s"), ("mode", "3m")]),
    ("FewStepUniPC", [("order", 1), ("order", 2)]),
    ("FewStepEDM", [("s_churn", 1.0), ("s_churn", 0.0)]),
    ("FewStepScheduler", [("schedule", "karras"), ("schedule", "time_uniform"), ("schedule", "polyexponential")]),
    ("FewStepFreeU", [("preset", None), ("preset", "custom")]),
    ("FewStepDeepCache", [("mode", "non-uniform"), ("mode", "uniform")]),
    ("FewStepOLSSTrain", [("select_on_heldout", False), ("select_on_heldout", True)]),
]

WIDGET_STATE = """(type) => {
  const n = window.__fewstepNodes[type];
  return { id: n.id, type: n.type, names: n.widgets.map((w) => w.name), widgets: n.widgets.map((w) => w.value),
           disabled: n.widgets.filter((w) => w.disabled).map((w) => w.name),
           linked: (n.inputs ?? []).filter((i) => i.link != null).map((i) => i.name) };
}"""


def test_widgets_that_do_nothing_are_greyed_and_follow_their_mode(page, comfy_server):
    """Issue 20: a widget that does nothing in the node's current mode is greyed out in the editor (never
    silently ignored), and follows the mode as the user changes it; the rules of js/fewstep_results.js
    are the ones above (ACTIVE_WHEN), each names a widget the node has, and node ids and widget order stay
    those of /object_info."""
    infos = comfy_server.get("/object_info", timeout=120)
    rules = page.evaluate("() => window.fewstepWidgetRules")
    assert {k: sorted(v) for k, v in rules.items()} == {k: sorted(v) for k, v in ACTIVE_WHEN.items()}
    for typ, names in rules.items():
        spec = infos[typ]["input"]
        have = set(spec.get("required", {})) | set(spec.get("optional", {}))
        assert set(names) <= have, (typ, names)
    page.evaluate(f"""() => {{
      const g = {APP}.graph; g.clear(); window.__fewstepNodes = {{}};
      for (const t of {json.dumps([t for t, _ in WIDGET_STEPS] + ['FewStepOLSSSampler'])}) {{
        const n = LiteGraph.createNode(t); g.add(n); window.__fewstepNodes[t] = n;
      }}
    }}""")
    problems = []
    for typ, steps in WIDGET_STEPS:
        g = page.evaluate(WIDGET_STATE, typ)
        order = [("control_after_generate" if w[3] else w[0]) for w in mw_widget_names(infos[typ])]
        if g["names"][:len(order)] != order:
            problems.append(f"{typ}: widget order {g['names']} != {order}")
        problems += _greyed_problems(f"{typ} (new)", g)
        for widget, value in steps:
            if value is None:   # the first value of the combo other than the current one
                value = next(v for v in infos[typ]["input"]["required"][widget][0] if v != "custom")
            page.evaluate("""([t, name, v]) => {
              const n = window.__fewstepNodes[t]; const w = n.widgets.find((x) => x.name === name);
              w.value = v; w.callback?.(v, window.comfyAPI.app.app.canvas, n);
            }""", [typ, widget, value])
            g = page.evaluate(WIDGET_STATE, typ)
            problems += _greyed_problems(f"{typ} after {widget}={value!r}", g)
    # FewStep OLSS Sampler: the dropdown is greyed while a profile is linked
    g = page.evaluate(WIDGET_STATE, "FewStepOLSSSampler")
    problems += _greyed_problems("FewStepOLSSSampler (new)", g)
    assert "profile_name" not in g["disabled"]
    page.evaluate("""() => {
      const a = window.__fewstepNodes.FewStepOLSSTrain, b = window.__fewstepNodes.FewStepOLSSSampler;
      a.connect(0, b, b.inputs.findIndex((i) => i.name === "profile"));
    }""")
    g = page.evaluate(WIDGET_STATE, "FewStepOLSSSampler")
    assert "profile" in g["linked"] and "profile_name" in g["disabled"], g
    page.evaluate("""() => { const b = window.__fewstepNodes.FewStepOLSSSampler;
      b.disconnectInput(b.inputs.findIndex((i) => i.name === "profile")); }""")
    g = page.evaluate(WIDGET_STATE, "FewStepOLSSSampler")
    assert "profile_name" not in g["disabled"], g
    page.evaluate(f"() => {APP}.graph.clear()")
    assert not problems, "\n".join(problems)
    _no_pack_errors(page)


def mw_widget_names(info):
    import importlib.util
    spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    return mw.widget_slots(info)
