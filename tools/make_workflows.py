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
    python tools/make_workflows.py --relayout  # search every layout anew (slow), not only new/changed ones

Layouts: a UI file whose graph is unchanged and whose layout is clean keeps its node places (so a layout
arranged by hand in the editor stays); otherwise columns by graph depth, then ``untangle`` moves nodes
until no wire runs behind a node (``layout_problems`` models the wires as the editor draws them).

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

#: extra height for what nodes show after a run (the saved picture, a report line)
RESULT_HEIGHT = {"SaveImage": 270, "PreviewImage": 270, "FewStepExactError": 54, "FewStepOLSSTrain": 110,
                 "FewStepReferenceModel": 70, "FewStepQuality": 70}
SLOT_H, WIDGET_H, PAD_H, TITLE_H = 20, 24, 14, 30
MIN_W, COL_GAP, ROW_GAP = 220, 40, 30
#: the widest gap left between columns where the view has room
MAX_COL_GAP = 120
#: the view every example must fit at 100% zoom (node boxes, title bars included), and the margin kept
#: free for the editor's side bar and top menu
VIEW_W, VIEW_H = 1600, 900
#: where the editor's canvas starts in the window (its side bar and top menu take the rest): canvas
#: coordinates at 100% zoom and offset 0 are window coordinates minus this
CANVAS_X, CANVAS_Y = 40, 40
X0, Y0 = 20, 40 + TITLE_H
#: frontend-only nodes: not in /object_info, never queued
VIRTUAL_TYPES = ("Note", "MarkdownNote")
NOTE_W, NOTE_H = 220, 200
#: how much taller than a one-line widget the editor draws a multiline text box (measured on CLIP Text
#: Encode in ComfyUI's frontend 1.27: ~118 px with its title, against 88 for one line)
MULTILINE_EXTRA_H = 50
#: columns given by hand where graph depth makes too many: {workflow: {API node id: column}}
COLUMNS = {"patch_all": {"9": 1, "10": 1, "3": 2, "4": 2, "5": 2, "6": 3, "7": 4, "8": 5},
           # the reference-model patch workflows: unpatched branch (3-6) above, patched (2, 7-10) below
           **{name: {"2": 1, "3": 1, "4": 2, "7": 2, "5": 3, "6": 3, "8": 3, "9": 4, "10": 4}
              for name in ("patch_deepcache", "patch_freeu", "patch_tgate")}}
#: how tall a column may grow before a source node stays in the first column instead
COLUMN_ROOM = 520


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
    # a multiline text box (CLIP Text Encode's prompt) is taller in the editor than a one-line widget
    multiline = sum(1 for _, typ, opts, _ in node_inputs(info) if typ == "STRING" and isinstance(opts, dict)
                    and opts.get("multiline"))
    h = (rows * SLOT_H + n_widgets * WIDGET_H + PAD_H + PREVIEW_HEIGHT.get(type_name, 0) + RESULT_HEIGHT.get(type_name, 0)
         + multiline * MULTILINE_EXTRA_H)
    w = max(MIN_W if type_name not in PREVIEW_HEIGHT else 260, int(7.5 * len(title)) + 50)
    return [w, h]


def api_to_ui(name: str, prompt: dict, infos: dict, note: str | None = None, models=None, previous=None) -> dict:
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
        file_models = [m for m in (models or []) if m["name"] in given.values()]
        if file_models:  # the editor offers these downloads when the file is missing
            ui["properties"]["models"] = file_models
        ui["widgets_values"] = values
        if title != display:
            ui["title"] = title
        nodes_ui[k] = ui

    note_node = None
    if note is not None:
        nid = max(ids.values()) + 1
        note_node = {"id": nid, "type": "Note", "pos": [0, 0], "size": [NOTE_W, NOTE_H], "flags": {},
                     "order": len(order), "mode": 0, "inputs": [], "outputs": [], "title": "About this workflow",
                     "properties": {}, "widgets_values": [note], "color": "#432", "bgcolor": "#653"}
    cols = {ids[k]: COLUMNS.get(name, {}).get(k, depth[k]) for k in prompt}
    placed = kept_layout([nodes_ui[k] for k in order_keys] + ([note_node] if note_node else []), links, previous)
    if placed is not None and layout_problems(placed, links, infos=infos):
        placed = untangle(placed, links, infos)   # the same graph, not clean yet: the search goes on from there
    elif placed is None:
        placed = layout([nodes_ui[k] for k in order_keys], links, depth_of=cols, note=note_node,
                        fixed=set(ids[k] for k in COLUMNS.get(name, {})), infos=infos)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/fewstep/comfyui-fewstep/{name}")),
        "revision": 0,
        "last_node_id": max(n["id"] for n in placed),
        "last_link_id": len(links),
        "nodes": placed,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        **({"models": models} if models else {}),
        "version": 0.4,
    }


def forward_gap(a, b):
    """Whether a wire from node ``a`` to node ``b`` runs forward: ``b`` starts COL_GAP right of ``a``'s
    right edge, or ``b`` sits under ``a`` in the same column (from its left edge on: the wire loops back
    into it, as between stacked patch nodes)."""
    ax, ay = a["pos"]
    bx, by = b["pos"]
    return ax + a["size"][0] + COL_GAP <= bx or (ax <= bx < ax + a["size"][0] and ay + a["size"][1] < by)


def kept_layout(nodes_list, links, previous):
    """The node places of ``previous`` (the UI workflow written before, perhaps arranged by hand in the
    editor) when it holds the same graph (node ids, types and sizes, the same links); else None and the
    layout is searched anew. Clean places (``layout_problems`` finds nothing) are kept as they are, and
    the search (``untangle``) goes on from places that are not: regeneration stays quick and stable, and
    the search runs only for a new, changed or not yet clean workflow."""
    if not previous:
        return None
    old = {n.get("id"): n for n in previous.get("nodes", [])}
    if set(old) != {n["id"] for n in nodes_list} or previous.get("links") != links:
        return None
    out = []
    for n in nodes_list:
        o = old[n["id"]]
        if o.get("type") != n["type"] or list(o.get("size", [])) != list(n["size"]) or len(o.get("pos", [])) != 2:
            return None
        out.append(dict(n, pos=list(o["pos"])))
    return out


# ------------------------------------------------------------------------------------------------
# layout: columns by graph depth, sources pulled next to their first consumer, columns arranged so
# that no wire runs behind a node and everything fits VIEW_W x VIEW_H at 100% zoom
def node_box(n):
    """[x0, y0, x1, y1] of a node on the canvas, title bar included."""
    x, y = n["pos"]
    w, h = n["size"]
    return [x, y - TITLE_H, x + w, y + h]


def _slot_y(n, slot):
    return n["pos"][1] + (slot + 0.7) * SLOT_H


def slot_point(n, slot, is_input, infos=None):
    """Where LiteGraph (ComfyUI frontend 1.27) puts a link's end on node ``n``: outputs at the right
    edge (x + width + 1 - 10), inputs at the left edge (x + 10), both at row (index + 0.7) * 20 counted
    among the plain sockets; an input that feeds a widget sits on that widget's row instead (found with
    the node definitions ``infos``; without them it is taken as a plain socket)."""
    x, y = n["pos"]
    if not is_input:
        return x + n["size"][0] + 1 - SLOT_H / 2, y + (slot + 0.7) * SLOT_H
    inputs = n.get("inputs") or []
    inp = inputs[slot] if slot < len(inputs) else {}
    plain = [i for i in inputs if "widget" not in i]
    info = (infos or {}).get(n["type"])
    if "widget" in inp and info is not None:
        names = [w[0] for w in widget_slots(info)]
        if inp["widget"]["name"] in names:
            rows = max(len(plain), len(n.get("outputs") or []))
            wi = names.index(inp["widget"]["name"])
            return x + SLOT_H / 2, y + rows * SLOT_H + 2 + wi * WIDGET_H + SLOT_H / 2
    row = plain.index(inp) if inp in plain else slot
    return x + SLOT_H / 2, y + (row + 0.7) * SLOT_H


def link_points(link, nodes, samples=48, infos=None):
    """Points along a link as LiteGraph draws it (LinkRenderer's spline): a cubic bezier from the
    output slot to the input slot, leaving to the right and entering from the left, its control
    points max(30, distance / 4) out along those directions."""
    _, a, a_slot, b, b_slot, _ = link
    x0, y0 = slot_point(nodes[a], a_slot, False, infos)
    x3, y3 = slot_point(nodes[b], b_slot, True, infos)
    d = max(30.0, math.hypot(x3 - x0, y3 - y0) * 0.25)
    x1, y1, x2, y2 = x0 + d, y0, x3 - d, y3
    out = []
    for i in range(samples + 1):
        t = i / samples
        u = 1 - t
        out.append((u ** 3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t ** 3 * x3,
                    u ** 3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t ** 3 * y3))
    return out


def layout_problems(nodes_list, links, view=(VIEW_W, VIEW_H), infos=None):
    """Why a layout is not compact and clean: a node outside the view, two nodes overlapping, a wire
    running behind a node that is neither its source nor its target (the wire sampled at 48 points
    along LiteGraph's spline, ``link_points``; a point counts when it is more than 2 px inside the
    node's box, title bar included)."""
    nodes = {n["id"]: n for n in nodes_list}
    out = []
    for n in nodes_list:
        x0, y0, x1, y1 = node_box(n)
        if x0 < 0 or y0 < 0 or x1 > view[0] - CANVAS_X or y1 > view[1] - CANVAS_Y:
            out.append(f"node {n['id']} ({n['type']}) box {[round(v) for v in (x0, y0, x1, y1)]} is outside "
                       f"the {view[0]}x{view[1]} view")
    for i, a in enumerate(nodes_list):
        ba = node_box(a)
        for b in nodes_list[i + 1:]:
            bb = node_box(b)
            if ba[0] < bb[2] and bb[0] < ba[2] and ba[1] < bb[3] and bb[1] < ba[3]:
                out.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap")
    for l in links:
        pts = link_points(l, nodes, infos=infos)
        for n in nodes_list:
            if n["id"] in (l[1], l[3]):
                continue
            x0, y0, x1, y1 = node_box(n)
            if any(x0 + 2 < x < x1 - 2 and y0 + 2 < y < y1 - 2 for x, y in pts):
                out.append(f"link {l[0]} ({l[1]} -> {l[3]}) runs behind node {n['id']} ({n['type']})")
                break
    return out


def _hits(pts, box):
    x0, y0, x1, y1 = box
    return any(x0 + 2 < x < x1 - 2 and y0 + 2 < y < y1 - 2 for x, y in pts)


def _crossings(nodes_list, links, pending=(), samples=24):
    """Wires behind nodes (``pending``: horizontal stubs (y, x0, x1) of wires whose target is not
    placed yet, so a column leaves them a corridor)."""
    nodes = {n["id"]: n for n in nodes_list}
    boxes = [(n["id"], node_box(n)) for n in nodes_list]
    count = 0
    for l in links:
        pts = link_points(l, nodes, samples)
        lx0, lx1 = min(p[0] for p in pts), max(p[0] for p in pts)
        ly0, ly1 = min(p[1] for p in pts), max(p[1] for p in pts)
        for nid, bx in boxes:
            if nid in (l[1], l[3]) or bx[2] < lx0 or bx[0] > lx1 or bx[3] < ly0 or bx[1] > ly1:
                continue
            count += _hits(pts, bx)
    for y, x0, x1 in pending:
        for _, bx in boxes:
            if bx[0] < x1 and x0 < bx[2] and bx[1] - 4 < y < bx[3] + 4:
                count += 1
    return count


def layout(nodes_list, links, depth_of, note=None, fixed=(), infos=None):
    import itertools

    nodes = {n["id"]: n for n in nodes_list}
    consumers = {n["id"]: [l[3] for l in links if l[1] == n["id"]] for n in nodes_list}
    col = dict(depth_of)
    # a node without inputs sits just left of its first consumer, where that column has room
    def height(c):
        return sum(nodes[m]["size"][1] + TITLE_H + ROW_GAP for m in col if col[m] == c)

    for nid in sorted(col, key=lambda m: -nodes[m]["size"][1]):
        if nid not in fixed and not any(l[3] == nid for l in links) and consumers[nid]:
            want = max(0, min(col[c] for c in consumers[nid]) - 1)
            if want != col[nid] and height(want) + nodes[nid]["size"][1] + TITLE_H <= COLUMN_ROOM:
                col[nid] = want
    n_cols = max(col.values()) + 1
    columns = [[nid for nid in sorted(col) if col[nid] == c] for c in range(n_cols)]
    x = X0
    # the columns spread over the view's width (wider gaps give wires room to bend between columns)
    widths = [max(nodes[m]["size"][0] for m in members) for members in columns]
    free = VIEW_W - CANVAS_X - X0 - sum(widths)
    col_gap = max(COL_GAP, min(MAX_COL_GAP, free // max(1, n_cols)))
    placed = []
    for c, members in enumerate(columns):
        width = max(nodes[m]["size"][0] for m in members)
        best = None
        orders = list(itertools.permutations(members)) if len(members) <= 4 else [tuple(members)]
        ids_prev = {n["id"] for n in placed}
        for order in orders:
            for top in (0, 100, 200, 300):
                for at in range(len(order)):
                    for gap in ((0,) if at == 0 else (0, 80, 160, 240)):
                        y = Y0 + top
                        trial = []
                        for i, m in enumerate(order):
                            if i == at:
                                y += gap
                            n = dict(nodes[m], pos=[x, y])
                            trial.append(n)
                            y += n["size"][1] + TITLE_H + ROW_GAP
                        cand = placed + trial
                        ids_in = ids_prev | set(order)
                        lk = [l for l in links if l[1] in ids_in and l[3] in ids_in]
                        pend = []
                        for l in links:
                            if l[1] in ids_prev and l[3] not in ids_in:
                                src = nodes[l[1]]
                                pend.append((_slot_y(src, l[2]), x, x + width))
                        bottom = max(node_box(n)[3] for n in trial)
                        score = (bottom > VIEW_H - CANVAS_Y, _crossings(cand, lk, pend), top + gap, bottom)
                        if best is None or score < best[0]:
                            best = (score, trial)
        for n in best[1]:
            nodes[n["id"]]["pos"] = n["pos"]
        placed += best[1]
        x += width + col_gap
    if note is not None:
        best = None
        xs = sorted({n["pos"][0] for n in placed}) + [x]
        for y in range(Y0, VIEW_H - CANVAS_Y - NOTE_H + 1, 20):
            for nx in xs:
                n = dict(note, pos=[nx, y])
                probs = layout_problems(placed + [n], links)
                fits = not any("outside" in p or "overlap" in p for p in probs)
                mine = sum(1 for p in probs if f"node {note['id']} " in p)
                score = (not fits, mine, len(probs))
                if fits and (best is None or score < best[0]):
                    best = (score, n)
        placed.append(best[1] if best else dict(note, pos=[x, Y0]))
    untangle(placed, links, infos)
    by_id = {n["id"]: n for n in placed}
    return [by_id[n["id"]] for n in nodes_list] + ([by_id[note["id"]]] if note is not None else [])


#: the grid the untangling pass moves nodes on, the room kept between neighbours, and the clearance
#: the annealing keeps between a wire and a node it passes
STEP, MARGIN, CLEAR = 10, 10, 4
#: annealing runs (seeds 1, 2, ...; each from the best layout so far) until no wire runs behind a node
ANNEAL_TRIES = 16


def _bezier(p0, p3, samples):
    import numpy as np
    d = max(30.0, math.hypot(p3[0] - p0[0], p3[1] - p0[1]) * 0.25)
    t = np.linspace(0.0, 1.0, samples + 1)[:, None]
    u = 1 - t
    c = np.array([p0, (p0[0] + d, p0[1]), (p3[0] - d, p3[1]), p3], dtype=float)
    return u ** 3 * c[0] + 3 * u * u * t * c[1] + 3 * u * t * t * c[2] + t ** 3 * c[3]


def _inside(pts, boxes):
    """(links, boxes) bool: which wires (``pts``, (L, k, 2)) come within CLEAR px of which boxes
    ((B, 4) x0, y0, x1, y1)."""
    import numpy as np
    x, y = pts[:, None, :, 0], pts[:, None, :, 1]
    b = np.asarray(boxes, dtype=float)[None, :, :, None]
    c = CLEAR   # clearance: layout_problems counts a point 2 px inside, the search keeps CLEAR px off
    return ((x > b[:, :, 0] - c) & (x < b[:, :, 2] + c) & (y > b[:, :, 1] - c) & (y < b[:, :, 3] + c)).any(-1)


def untangle(nodes_list, links, infos=None, passes=6, anneal_steps=40000, samples=24):
    """Move nodes, on a 20 px grid, to where no wire runs behind a node (the wires sampled as
    ``link_points`` draws them); among equally clean places the one with the straightest wires.
    A node keeps its sources to its left and its consumers to its right (``forward_gap``), stays
    inside the view and off other nodes. Single-node moves until none helps; where a wire still runs behind a node, the
    whole layout is annealed (``anneal``) and the single-node moves polish it. In place; deterministic."""
    import numpy as np
    nodes = {n["id"]: n for n in nodes_list}
    order = sorted(nodes)
    grid = 2 * STEP

    def ends(l):
        return slot_point(nodes[l[1]], l[2], False, infos), slot_point(nodes[l[3]], l[4], True, infos)

    def wires(ls):
        if not ls:
            return np.zeros((0, samples + 1, 2))
        return np.stack([_bezier(*ends(l), samples) for l in ls])

    def allowed(nid):
        x0, y0, x1, y1 = node_box(nodes[nid])
        if x0 < 0 or y0 < 0 or x1 > VIEW_W - CANVAS_X or y1 > VIEW_H - CANVAS_Y:
            return False
        for mid in order:
            if mid != nid:
                b = node_box(nodes[mid])
                if x0 < b[2] + MARGIN and b[0] < x1 + MARGIN and y0 < b[3] + MARGIN and b[1] < y1 + MARGIN:
                    return False
        for l in links:   # no wire runs right to left (a wire from a node to the one under it may loop)
            if l[3] == nid and not forward_gap(nodes[l[1]], nodes[nid]):
                return False
            if l[1] == nid and not forward_gap(nodes[nid], nodes[l[3]]):
                return False
        return True

    def stretch(ls):
        return sum(abs(ends(l)[1][1] - ends(l)[0][1]) for l in ls)

    def hits():
        """(link index, node id) of every wire behind a node."""
        if not links:
            return []
        boxes = np.array([node_box(nodes[m]) for m in order]).reshape(-1, 4)
        h = _inside(wires(links), boxes)
        return [(li, m) for li, l in enumerate(links) for mi, m in enumerate(order)
                if h[li, mi] and m not in (l[1], l[3])]

    def total():
        return len(hits()), stretch(links)

    def places(n):
        return [(x, y) for x in range(X0, VIEW_W - CANVAS_X - n["size"][0] + 1, grid)
                for y in range(Y0, VIEW_H - CANVAS_Y - n["size"][1] + 1, grid)]

    def settle():
        for _ in range(passes):
            moved = False
            for nid in order:
                n = nodes[nid]
                mine = [l for l in links if nid in (l[1], l[3])]
                others = wires([l for l in links if nid not in (l[1], l[3])])
                rest = [m for m in order if m != nid]
                rest_boxes = np.array([node_box(nodes[m]) for m in rest]).reshape(-1, 4)
                may = np.array([[m not in (l[1], l[3]) for m in rest] for l in mine],
                               dtype=bool).reshape(len(mine), len(rest))

                def score():
                    bad = int(_inside(others, [node_box(n)]).sum()) if len(others) else 0
                    if mine:
                        bad += int((_inside(wires(mine), rest_boxes) & may).sum())
                    return bad, stretch(mine)

                home = list(n["pos"])
                best, best_pos = score(), home
                if best[0] == 0 and not mine:
                    continue  # an unwired node (the Note) with nothing behind it stays
                for x, y in places(n):
                    n["pos"] = [x, y]
                    if allowed(nid):
                        sc = score()
                        if sc[0] < best[0] or (sc[0] == best[0] and sc[1] < best[1] - 1e-6):
                            best, best_pos = sc, [x, y]
                n["pos"] = best_pos
                moved |= best_pos != home
            if not moved:
                return

    settle()
    if total()[0]:
        start = {m: list(nodes[m]["pos"]) for m in order}
        best = None
        for seed in range(1, ANNEAL_TRIES + 1):   # each run reheats the best layout so far
            for m in order:
                nodes[m]["pos"] = list(best[1][m] if best else start[m])
            anneal(nodes_list, links, infos, iterations=anneal_steps, samples=samples, seed=seed)
            settle()
            sc = total()
            if best is None or sc < best[0]:
                best = (sc, {m: list(nodes[m]["pos"]) for m in order})
            if sc[0] == 0:
                break
        for m in order:
            nodes[m]["pos"] = best[1][m]
    return nodes_list


def anneal(nodes_list, links, infos=None, iterations=30000, samples=24, seed=20):
    """Simulated annealing of every node's place (20 px grid) on one cost: wires behind nodes, overlaps
    (with MARGIN), boxes outside the view and wires running right to left (sources keep COL_GAP to the
    left of their consumers) all weigh heavily; then the vertical run of the wires. Moves: one node
    nudged, or put anywhere. The best layout met without a hard fault is kept. In place; seeded."""
    import random
    import numpy as np
    rng = random.Random(seed)
    ids = [n["id"] for n in nodes_list]
    at = {nid: i for i, nid in enumerate(ids)}
    size = np.array([n["size"] for n in nodes_list], dtype=float)
    pos = np.array([n["pos"] for n in nodes_list], dtype=float)
    nodes = {n["id"]: n for n in nodes_list}
    L = len(links)
    src = np.array([at[l[1]] for l in links], dtype=int)
    dst = np.array([at[l[3]] for l in links], dtype=int)
    # slot offsets from the node's pos (fixed: they depend on the node's size and sockets only)
    off_a, off_b = np.zeros((L, 2)), np.zeros((L, 2))
    for k, l in enumerate(links):
        na, nb = nodes[l[1]], nodes[l[3]]
        pa, pb = slot_point(na, l[2], False, infos), slot_point(nb, l[4], True, infos)
        off_a[k] = (pa[0] - na["pos"][0], pa[1] - na["pos"][1])
        off_b[k] = (pb[0] - nb["pos"][0], pb[1] - nb["pos"][1])
    may = np.ones((L, len(ids)), dtype=bool)
    may[np.arange(L), src] = False
    may[np.arange(L), dst] = False
    t = np.linspace(0.0, 1.0, samples + 1)[None, :]
    u = 1 - t
    lo_x, lo_y = 0.0, float(TITLE_H)
    hi = np.stack([VIEW_W - CANVAS_X - size[:, 0], VIEW_H - CANVAS_Y - size[:, 1]], axis=1)

    def cost(P):
        a, b = P[src] + off_a, P[dst] + off_b
        d = np.maximum(30.0, np.hypot(*(b - a).T) * 0.25)[:, None]
        bx = u ** 3 * a[:, :1] + 3 * u * u * t * (a[:, :1] + d) + 3 * u * t * t * (b[:, :1] - d) + t ** 3 * b[:, :1]
        by = u ** 3 * a[:, 1:] + 3 * u * u * t * a[:, 1:] + 3 * u * t * t * b[:, 1:] + t ** 3 * b[:, 1:]
        x0, y0 = P[:, 0][None, :, None], (P[:, 1] - TITLE_H)[None, :, None]
        x1, y1 = (P[:, 0] + size[:, 0])[None, :, None], (P[:, 1] + size[:, 1])[None, :, None]
        X, Y = bx[:, None, :], by[:, None, :]
        # CLEAR px of clearance (layout_problems counts a point 2 px inside): no near misses
        inside = ((X > x0 - CLEAR) & (X < x1 + CLEAR) & (Y > y0 - CLEAR) & (Y < y1 + CLEAR)).any(-1) & may
        behind = int(inside.sum())
        bx0, by0, bx1, by1 = P[:, 0], P[:, 1] - TITLE_H, P[:, 0] + size[:, 0], P[:, 1] + size[:, 1]
        ov = ((bx0[:, None] < bx1[None, :] + MARGIN) & (bx0[None, :] < bx1[:, None] + MARGIN)
              & (by0[:, None] < by1[None, :] + MARGIN) & (by0[None, :] < by1[:, None] + MARGIN))
        overlaps = int((np.triu(ov, 1)).sum())
        outside = int(((P[:, 0] < lo_x) | (P[:, 1] - TITLE_H < lo_y - TITLE_H + 0) | (P[:, 0] > hi[:, 0])
                       | (P[:, 1] > hi[:, 1]) | (P[:, 1] < Y0)).sum())
        right = P[src, 0] + size[src, 0] + COL_GAP <= P[dst, 0]
        below = (P[src, 0] <= P[dst, 0]) & (P[src, 0] + size[src, 0] > P[dst, 0]) & (P[src, 1] + size[src, 1] < P[dst, 1])
        backward = int((~(right | below)).sum())
        hard = overlaps + outside + backward
        stretch = float(np.abs(b[:, 1] - a[:, 1]).sum())
        return 1000.0 * (hard + behind) + stretch, hard, behind

    cur = cost(pos)
    best = (cur[2], cur[0], pos.copy()) if cur[1] == 0 else None
    temp0, temp1 = 400.0, 5.0
    for it in range(iterations):
        temp = temp0 * (temp1 / temp0) ** (it / max(1, iterations - 1))
        i = rng.randrange(len(ids))
        old = pos[i].copy()
        r = rng.random()
        j = None
        if r < 0.15:
            pos[i] = (rng.randrange(X0, int(hi[i, 0]) + 1, 20) if hi[i, 0] >= X0 else X0,
                      rng.randrange(Y0, int(hi[i, 1]) + 1, 20) if hi[i, 1] >= Y0 else Y0)
        elif r < 0.3:   # two nodes trade places
            j = rng.randrange(len(ids))
            oldj = pos[j].copy()
            pos[i], pos[j] = oldj, old.copy()
        else:
            step = rng.choice((20, 40, 80, 160))
            pos[i] = (old[0] + rng.choice((-step, 0, step)), old[1] + rng.choice((-step, 0, step)))
        new = cost(pos)
        if new[1] <= cur[1] and (new[0] <= cur[0] or rng.random() < math.exp((cur[0] - new[0]) / temp)):
            cur = new
            if new[1] == 0 and (best is None or (new[2], new[0]) < (best[0], best[1])):
                best = (new[2], new[0], pos.copy())
        else:
            pos[i] = old
            if j is not None:
                pos[j] = oldj
    if best is not None:
        for i, n in enumerate(nodes_list):
            n["pos"] = [int(best[2][i, 0]), int(best[2][i, 1])]
    return nodes_list


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
        if n["type"] in VIRTUAL_TYPES:
            if not (isinstance(n.get("widgets_values"), list) and len(n["widgets_values"]) == 1
                    and isinstance(n["widgets_values"][0], str)):
                problems.append(f"{where}: a note holds one text")
            continue
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
        if n["type"] in VIRTUAL_TYPES:
            continue
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


def note_path(api_path: Path) -> Path:
    """The text of a workflow's Note: ``example_workflows/api/<name>.md`` (what it shows, what to change)."""
    return api_path.with_suffix(".md")


def load_note(api_path: Path) -> str:
    p = note_path(api_path)
    if not p.is_file():
        raise WorkflowError(f"{p.relative_to(REPO)} is missing: every example needs a note saying what it "
                            "shows and what to change")
    text = p.read_text().strip()
    if not text:
        raise WorkflowError(f"{p.relative_to(REPO)} is empty")
    return text


#: the ``models`` metadata ([{name, url, directory}]) of workflows that load a downloadable model: the
#: editor offers the download when the file is missing
SD15 = {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors"}
SDXL = {"name": "sd_xl_base_1.0.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"}
FLUX_SCHNELL = {"name": "flux1-schnell-fp8.safetensors", "directory": "checkpoints",
                "url": "https://huggingface.co/Comfy-Org/flux1-schnell/resolve/main/flux1-schnell-fp8.safetensors"}
SD35_MEDIUM = {"name": "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors", "directory": "checkpoints",
               "url": "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/"
                      "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"}
_WAN = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/"
WAN21 = [{"name": "wan2.1_t2v_1.3B_fp16.safetensors", "directory": "diffusion_models",
          "url": _WAN + "diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors"},
         {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders",
          "url": _WAN + "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"},
         {"name": "wan_2.1_vae.safetensors", "directory": "vae", "url": _WAN + "vae/wan_2.1_vae.safetensors"}]
MODELS = {"patch_all": [SD15], "starter_sdxl": [SDXL], "starter_flux": [FLUX_SCHNELL], "starter_sd35": [SD35_MEDIUM],
          "starter_wan": WAN21}


def load_models(api_path: Path):
    return MODELS.get(api_path.stem)


def generate_all(url: str | None = None, keep_layouts: bool = True) -> dict:
    """{ui path: text} for every API workflow. ``keep_layouts``: keep the node places of the UI file on
    disk where they still fit its graph and are clean (``kept_layout``); False: search every layout."""
    prompts = {p: load_api(p) for p in api_files()}
    types = {n.get("class_type") for pr in prompts.values() for n in pr.values() if isinstance(n, dict)}
    infos = object_info_for([t for t in types if t], url)
    out = {}
    for p, pr in prompts.items():
        ui_path = WORKFLOWS / p.name
        previous = None
        if keep_layouts and ui_path.is_file():
            try:
                previous = json.loads(ui_path.read_text())
            except ValueError:
                previous = None
        out[ui_path] = dumps(api_to_ui(p.stem, pr, infos, note=load_note(p), models=load_models(p),
                                       previous=previous))
    return out


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
    ap.add_argument("--relayout", action="store_true",
                    help="search every layout anew (default: keep the places of a UI file whose graph is unchanged "
                         "and whose layout is clean; the search takes up to a minute a workflow)")
    a = ap.parse_args(argv)
    try:
        generated = generate_all(a.url, keep_layouts=not a.relayout)
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
