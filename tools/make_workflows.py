#!/usr/bin/env python
"""Generate FewStep's UI-format example workflows from their API-format twins.

Every ``example_workflows/api/<name>.json`` (a ComfyUI ``/prompt`` body's ``prompt``) becomes
``example_workflows/<name>.json``, a LiteGraph workflow (version 0.4) that ComfyUI's editor and
template browser load: nodes laid out left to right by graph depth, typed input/output sockets and
links, and ``widgets_values`` in widget order as the frontend builds them from the node definitions
(including the ``control_after_generate`` value the frontend adds after seed-like widgets, set to
"fixed" so the example reproduces).

Node definitions come from ComfyUI itself: imported in-process (default; ComfyUI found as the host
tests find it, see tests/comfy_host.py) or read from a running server's ``/object_info`` (``--url``).

    python tools/make_workflows.py            # regenerate every UI workflow
    python tools/make_workflows.py --check    # exit 1 when a UI workflow is stale, missing or orphaned
    python tools/make_workflows.py --url http://127.0.0.1:8188 [--check]

The module also holds the checks the host tests use: ``check_ui_workflow`` (widgets line up with the
current definitions) and ``ui_to_api`` (the prompt the UI workflow queues, to compare with the twin).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import math
import sys
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "example_workflows"
API_DIR = WORKFLOWS / "api"

#: widget types the frontend builds from an input spec (a list type is a combo too)
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
CONTROL_DEFAULT = "fixed"
#: extra height the schedule preview (js/fewstep_preview.js) draws under these nodes' widgets
PREVIEW_HEIGHT = {"FewStepAYSScheduler": 170, "FewStepScheduler": 170, "FewStepAYSOptimize": 170}

SLOT_H, WIDGET_H, PAD_H, TITLE_H = 20, 24, 14, 30
MIN_W, COL_GAP, ROW_GAP, X0, Y0 = 280, 70, 50, 40, 40


class WorkflowError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------
# node definitions
def _node_info(name, cls, display_names) -> dict:
    """What ComfyUI's /object_info answers for one node class (classic or V3 API)."""
    try:
        from comfy_api.internal import _ComfyNodeInternal
        is_v3 = isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal)
    except ImportError:
        is_v3 = False
    if is_v3:
        info = cls.GET_NODE_INFO_V1()
    else:
        inputs = cls.INPUT_TYPES()
        info = {
            "input": inputs,
            "input_order": {k: list(v.keys()) for k, v in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "name": name,
            "display_name": display_names.get(name, name),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return json.loads(json.dumps(info, default=str))


def _ensure_comfy_utils(comfy_path: Path):
    """ComfyUI's ``utils`` package must win over ``comfy/utils.py`` (comfy_extras import it)."""
    mod = sys.modules.get("utils")
    if mod is not None and hasattr(mod, "__path__"):
        return
    init = comfy_path / "utils" / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location("utils", init, submodule_search_locations=[str(init.parent)])
    m = importlib.util.module_from_spec(spec)
    sys.modules["utils"] = m
    spec.loader.exec_module(m)


def host_node_classes():
    """(node classes, display names) of ComfyUI (core + comfy_extras) and FewStep, in-process."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import comfy_host

    path = comfy_host.find_comfyui()
    if path is None:
        raise WorkflowError("no ComfyUI found ($COMFYUI_PATH, an enclosing ComfyUI, ~/comfy/ComfyUI); "
                            "use --url with a running server")
    _ensure_comfy_utils(path)
    host = comfy_host.import_comfyui(path)
    _ensure_comfy_utils(path)
    nodes = host.nodes
    if not getattr(nodes, "_fewstep_extras_loaded", False):
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # optional extras (audio, ...) log their import errors
        try:
            asyncio.run(nodes.init_builtin_extra_nodes())
        finally:
            logging.getLogger().setLevel(level)
        nodes._fewstep_extras_loaded = True
    classes = dict(nodes.NODE_CLASS_MAPPINGS)
    classes.update(host.NODES)
    names = dict(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    names.update(host.fewstep.NODE_DISPLAY_NAME_MAPPINGS)
    return classes, names


def object_info_for(types, url: str | None = None) -> dict:
    """/object_info entries for the node types given (from ``url`` or in-process)."""
    types = sorted(set(types))
    if url:
        with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as r:
            info = json.loads(r.read())
        missing = [t for t in types if t not in info]
        if missing:
            raise WorkflowError(f"node type(s) {missing} unknown to the server at {url}")
        return {t: info[t] for t in types}
    classes, names = host_node_classes()
    missing = [t for t in types if t not in classes]
    if missing:
        raise WorkflowError(f"node type(s) {missing} unknown to ComfyUI + FewStep")
    return {t: _node_info(t, classes[t], names) for t in types}


# ------------------------------------------------------------------------------------------------
# widgets as the frontend builds them
def _spec(raw):
    typ = raw[0]
    opts = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
    return typ, opts


def combo_values(typ, opts):
    if isinstance(typ, list):
        return typ
    if typ == "COMBO":
        return list(opts.get("options") or [])
    return None


def is_widget(typ, opts) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def has_control(name, typ, opts) -> bool:
    """The frontend adds a control_after_generate combo after INT widgets that ask for it (or are
    named seed/noise_seed, the legacy convention) and after combos that ask for it."""
    c = opts.get("control_after_generate")
    if typ == "INT":
        return bool(c) if c is not None else name in ("seed", "noise_seed")
    if combo_values(typ, opts) is not None:
        return bool(c)
    return False


def node_inputs(info):
    """[(name, type, opts, optional)] in the frontend's order: required, then optional."""
    out = []
    for section in ("required", "optional"):
        spec = info["input"].get(section) or {}
        order = (info.get("input_order") or {}).get(section) or list(spec)
        for name in order:
            typ, opts = _spec(spec[name])
            out.append((name, typ, opts, section == "optional"))
    return out


def widget_slots(info):
    """[(widget name, type, opts, is_control)] in widgets_values order."""
    slots = []
    for name, typ, opts, _ in node_inputs(info):
        if is_widget(typ, opts):
            slots.append((name, typ, opts, False))
            if has_control(name, typ, opts):
                slots.append((name, typ, opts, True))
    return slots


def default_value(typ, opts):
    values = combo_values(typ, opts)
    if "default" in opts:
        return opts["default"]
    if values is not None:
        return values[0] if values else None
    return {"INT": opts.get("min", 0), "FLOAT": opts.get("min", 0.0), "STRING": "", "BOOLEAN": False}.get(typ)


def _socket_type(typ):
    return "COMBO" if isinstance(typ, list) else typ


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int)


# ------------------------------------------------------------------------------------------------
# API -> UI
def id_map(prompt: dict) -> dict:
    """API node id (str) -> UI node id (int): numeric ids keep their number, others follow."""
    ids = {}
    numeric = [k for k in prompt if str(k).isdigit()]
    for k in numeric:
        ids[str(k)] = int(k)
    nxt = max(ids.values(), default=0) + 1
    for k in prompt:
        if str(k) not in ids:
            ids[str(k)] = nxt
            nxt += 1
    return ids


def _check_prompt(name, prompt, infos):
    if not isinstance(prompt, dict) or not prompt:
        raise WorkflowError(f"{name}: an API workflow is a non-empty object of node id -> node")
    for nid, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{name}: node {nid} needs class_type and an inputs object")
        known = {n for n, *_ in node_inputs(infos[node["class_type"]])}
        for k, v in node.get("inputs", {}).items():
            if k not in known:
                raise WorkflowError(f"{name}: node {nid} ({node['class_type']}) has no input {k!r}; it has {sorted(known)}")
            if _is_link(v) and str(v[0]) not in prompt:
                raise WorkflowError(f"{name}: node {nid} input {k} links to missing node {v[0]}")


def _depths(prompt):
    memo = {}

    def depth(nid, seen=()):
        if nid in memo:
            return memo[nid]
        if nid in seen:
            raise WorkflowError(f"cycle through node {nid}")
        d = 0
        for v in prompt[nid].get("inputs", {}).values():
            if _is_link(v):
                d = max(d, depth(str(v[0]), seen + (nid,)) + 1)
        memo[nid] = d
        return d

    return {nid: depth(nid) for nid in prompt}


def node_size(info, n_sockets_in, n_widgets, type_name, title):
    n_out = len(info.get("output") or [])
    rows = max(n_sockets_in, n_out, 1)
    h = rows * SLOT_H + n_widgets * WIDGET_H + PAD_H + PREVIEW_HEIGHT.get(type_name, 0)
    w = max(MIN_W, int(7.5 * len(title)) + 50)
    return [w, h]


def api_to_ui(name: str, prompt: dict, infos: dict) -> dict:
    prompt = {str(k): v for k, v in prompt.items()}
    _check_prompt(name, prompt, infos)
    ids = id_map(prompt)
    order_keys = sorted(prompt, key=lambda k: ids[k])
    depth = _depths(prompt)

    # links, in target-node order then input order
    links, node_in, node_out = [], {}, {k: {} for k in prompt}
    for k in order_keys:
        node = prompt[k]
        info = infos[node["class_type"]]
        ins = []
        given = node.get("inputs", {})
        for iname, typ, opts, optional in node_inputs(info):
            v = given.get(iname)
            widget = is_widget(typ, opts)
            if widget and not _is_link(v):
                continue
            entry = {"name": iname, "type": _socket_type(typ)}
            if optional:
                entry["shape"] = 7
            if widget:
                entry["widget"] = {"name": iname}
            entry["link"] = None
            if _is_link(v):
                src, slot = str(v[0]), int(v[1])
                src_info = infos[prompt[src]["class_type"]]
                outs = src_info.get("output") or []
                if not 0 <= slot < len(outs):
                    raise WorkflowError(f"{name}: node {k} input {iname} links to output {slot} of node {src}, "
                                        f"which has {len(outs)} outputs")
                lid = len(links) + 1
                ltype = _socket_type(outs[slot])
                links.append([lid, ids[src], slot, ids[k], len(ins), ltype])
                entry["link"] = lid
                node_out[src].setdefault(slot, []).append(lid)
            ins.append(entry)
        node_in[k] = ins

    # topological execution order (Kahn, lowest id first)
    deps = {k: {str(v[0]) for v in prompt[k].get("inputs", {}).values() if _is_link(v)} for k in prompt}
    order, done = {}, set()
    while len(done) < len(prompt):
        ready = [k for k in order_keys if k not in done and deps[k] <= done]
        k = ready[0]
        order[k] = len(order)
        done.add(k)

    # nodes
    nodes_ui = {}
    for k in order_keys:
        node = prompt[k]
        ctype = node["class_type"]
        info = infos[ctype]
        given = node.get("inputs", {})
        values = []
        for wname, typ, opts, control in widget_slots(info):
            if control:
                values.append(CONTROL_DEFAULT)
                continue
            v = given.get(wname)
            values.append(default_value(typ, opts) if v is None or _is_link(v) else v)
        outs = []
        for slot, otype in enumerate(info.get("output") or []):
            onames = info.get("output_name") or []
            outs.append({"name": onames[slot] if slot < len(onames) else _socket_type(otype),
                         "type": _socket_type(otype), "links": node_out[k].get(slot, []), "slot_index": slot})
        display = info.get("display_name") or ctype
        title = (node.get("_meta") or {}).get("title") or display
        n_widgets = len(widget_slots(info))
        ui = {"id": ids[k], "type": ctype, "pos": [0, 0],
              "size": node_size(info, len([i for i in node_in[k] if "widget" not in i]), n_widgets, ctype, title),
              "flags": {}, "order": order[k], "mode": 0}
        if node_in[k]:
            ui["inputs"] = node_in[k]
        ui["outputs"] = outs
        ui["properties"] = {"Node name for S&R": ctype}
        ui["widgets_values"] = values
        if title != display:
            ui["title"] = title
        nodes_ui[k] = ui

    # layout: one column per depth, left to right; within a column by id
    x = X0
    for d in range(max(depth.values()) + 1):
        col = [k for k in order_keys if depth[k] == d]
        if not col:
            continue
        y = Y0
        for k in col:
            nodes_ui[k]["pos"] = [x, y]
            y += nodes_ui[k]["size"][1] + TITLE_H + ROW_GAP
        x += max(nodes_ui[k]["size"][0] for k in col) + COL_GAP

    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/fewstep/comfyui-fewstep/{name}")),
        "revision": 0,
        "last_node_id": max(ids.values()),
        "last_link_id": len(links),
        "nodes": [nodes_ui[k] for k in order_keys],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.9, "offset": [10, 50]}},
        "version": 0.4,
    }


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------
# checks used by the tests
def _number_ok(v, typ, opts):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"is {v!r}, not a number"
    if typ == "INT" and not (isinstance(v, int) or float(v).is_integer()):
        return f"is {v!r}, not a whole number"
    if not math.isfinite(v):
        return f"is {v!r}"
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and v < lo or hi is not None and v > hi:
        return f"is {v}, outside [{lo}, {hi}]"
    return None


#: file names a combo may hold although this machine lacks the file (the editor keeps the value and
#: offers the download; e.g. the patch examples name SD1.5's checkpoint)
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def check_value(typ, opts, v):
    """None when ``v`` is a valid value of the widget, else the reason."""
    values = combo_values(typ, opts)
    if values is not None:
        if v in values or (isinstance(v, str) and v.endswith(MODEL_FILE_SUFFIXES) and ".." not in v):
            return None
        return f"is {v!r}, not one of {values[:12]}{' ...' if len(values) > 12 else ''}"
    if typ in ("INT", "FLOAT"):
        return _number_ok(v, typ, opts)
    if typ == "STRING":
        return None if isinstance(v, str) else f"is {v!r}, not a string"
    if typ == "BOOLEAN":
        return None if isinstance(v, bool) else f"is {v!r}, not true/false"
    return None


def check_ui_workflow(ui: dict, infos: dict) -> list:
    """Problems that would make the workflow load wrongly with the current node definitions."""
    problems = []
    if ui.get("version") != 0.4:
        problems.append(f"version is {ui.get('version')!r}, expected 0.4")
    links = {l[0]: l for l in ui.get("links", [])}
    nodes = {n["id"]: n for n in ui.get("nodes", [])}
    for n in ui.get("nodes", []):
        where = f"node {n['id']} ({n['type']})"
        info = infos.get(n["type"])
        if info is None:
            problems.append(f"{where}: unknown node type")
            continue
        slots = widget_slots(info)
        vals = n.get("widgets_values", [])
        if len(vals) != len(slots):
            problems.append(f"{where}: {len(vals)} widgets_values, the node has {len(slots)} widgets "
                            f"{[s[0] + (' (control)' if s[3] else '') for s in slots]}")
            continue
        for (wname, typ, opts, control), v in zip(slots, vals):
            why = (None if v in CONTROL_VALUES else f"is {v!r}, not one of {CONTROL_VALUES}") if control \
                else check_value(typ, opts, v)
            if why:
                problems.append(f"{where}: widget {wname}{' control_after_generate' if control else ''} {why}")
        sockets = {name: (typ, opts) for name, typ, opts, _ in node_inputs(info)}
        for slot, inp in enumerate(n.get("inputs", [])):
            if inp["name"] not in sockets:
                problems.append(f"{where}: input {inp['name']!r} is not an input of the node")
                continue
            if inp.get("link") is not None:
                l = links.get(inp["link"])
                if l is None or l[3] != n["id"] or l[4] != slot:
                    problems.append(f"{where}: input {inp['name']} link {inp['link']} does not point here")
                    continue
                src = nodes.get(l[1])
                src_info = infos.get(src["type"]) if src else None
                if src_info is None or l[2] >= len(src_info.get("output") or []):
                    problems.append(f"{where}: input {inp['name']} comes from a missing node or output")
                    continue
                otype = _socket_type(src_info["output"][l[2]])
                ttyp = _socket_type(sockets[inp["name"]][0])
                if otype != ttyp and "*" not in (otype, ttyp) and not set(otype.split(",")) & set(ttyp.split(",")):
                    problems.append(f"{where}: input {inp['name']} ({ttyp}) is fed {otype}")
        for name, typ, opts, optional in node_inputs(info):
            if optional or is_widget(typ, opts):
                continue
            if not any(i["name"] == name and i.get("link") is not None for i in n.get("inputs", [])):
                problems.append(f"{where}: required input {name} is not connected")
    return problems


def ui_to_api(ui: dict, infos: dict) -> dict:
    """The prompt the editor queues for a UI workflow (widget values by name, links as [id, slot])."""
    links = {l[0]: l for l in ui.get("links", [])}
    out = {}
    for n in ui["nodes"]:
        info = infos[n["type"]]
        inputs = {}
        vals = n.get("widgets_values", [])
        linked = {i["name"]: links[i["link"]] for i in n.get("inputs", []) if i.get("link") is not None}
        for (wname, typ, opts, control), v in zip(widget_slots(info), vals):
            if not control and wname not in linked:
                inputs[wname] = v
        for name, l in linked.items():
            inputs[name] = [str(l[1]), l[2]]
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


def normalized_api(prompt: dict, infos: dict) -> dict:
    """An API prompt with UI ids, every widget filled (defaults for omitted optional widgets) and no _meta,
    for comparing with ``ui_to_api``."""
    prompt = {str(k): v for k, v in prompt.items()}
    ids = id_map(prompt)
    out = {}
    for k, node in prompt.items():
        info = infos[node["class_type"]]
        inputs = {}
        given = node.get("inputs", {})
        for name, typ, opts, _ in node_inputs(info):
            v = given.get(name)
            if _is_link(v):
                inputs[name] = [str(ids[str(v[0])]), int(v[1])]
            elif v is not None:
                inputs[name] = v
            elif is_widget(typ, opts):
                inputs[name] = default_value(typ, opts)
        out[str(ids[k])] = {"class_type": node["class_type"], "inputs": inputs}
    return out


# ------------------------------------------------------------------------------------------------
def api_files():
    return sorted(API_DIR.glob("*.json"))


def load_api(path: Path) -> dict:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]  # a full /prompt body
    return data


def generate_all(url: str | None = None) -> dict:
    """{ui path: text} for every API workflow."""
    prompts = {p: load_api(p) for p in api_files()}
    types = {n.get("class_type") for pr in prompts.values() for n in pr.values() if isinstance(n, dict)}
    infos = object_info_for([t for t in types if t], url)
    return {WORKFLOWS / p.name: dumps(api_to_ui(p.stem, pr, infos)) for p, pr in prompts.items()}


def stale(generated: dict) -> list:
    """Reasons the UI files on disk differ from ``generated``."""
    out = []
    for path, text in generated.items():
        if not path.exists():
            out.append(f"{path.relative_to(REPO)} is missing")
        elif path.read_text() != text:
            out.append(f"{path.relative_to(REPO)} is stale")
    for path in sorted(WORKFLOWS.glob("*.json")):
        if path not in generated:
            out.append(f"{path.relative_to(REPO)} has no API twin in example_workflows/api/")
    return out


def _atomic_write(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when a UI workflow is stale")
    ap.add_argument("--url", help="read node definitions from this running ComfyUI instead of importing it")
    a = ap.parse_args(argv)
    try:
        generated = generate_all(a.url)
    except WorkflowError as e:
        print(f"make_workflows: {e}", file=sys.stderr)
        return 2
    if a.check:
        problems = stale(generated)
        for p in problems:
            print(p)
        if problems:
            print("run: python tools/make_workflows.py", file=sys.stderr)
            return 1
        print(f"{len(generated)} UI workflows up to date")
        return 0
    for path, text in generated.items():
        if not path.exists() or path.read_text() != text:
            _atomic_write(path, text)
            print(f"wrote {path.relative_to(REPO)}")
    for p in stale(generated):
        print(f"note: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
