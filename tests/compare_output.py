"""Reading what ``python -m fewstep compare`` wrote (compare.md, compare.json), and the KSampler entries
and nodes FewStep's sources define, read from nodes/*.py without importing ComfyUI (ast)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

KSAMPLER_RECIPE = re.compile(r"^KSampler: sampler_name `([^`]+)`, scheduler `([^`]+)`$")
NODES_RECIPE = re.compile(r"^SamplerCustomAdvanced: sampler `(\w+)\(([^)]*)\)`, sigmas `(\w+)\(([^)]*)\)`$")
SECTION = re.compile(r"^## (\w+), cfg ([0-9.]+)$")
MARKS = "¹²³⁴⁵⁶⁷⁸⁹"


def parse_widgets(text):
    """``a=1, b=x`` -> {"a": "1", "b": "x"} (values as the markdown prints them)."""
    out = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        k, v = part.split("=", 1)
        out[k] = v
    return out


def parse_recipe(cell):
    """The recipe cell of a row: a dict (kind ksampler / nodes), or None if it is not one."""
    m = KSAMPLER_RECIPE.match(cell)
    if m:
        return {"kind": "ksampler", "sampler_name": m.group(1), "scheduler": m.group(2)}
    m = NODES_RECIPE.match(cell)
    if m:
        return {"kind": "nodes", "sampler_node": m.group(1), "sampler_widgets": parse_widgets(m.group(2)),
                "sigmas_node": m.group(3), "sigmas_widgets": parse_widgets(m.group(4))}
    return None


def split_label(label):
    """``euler = ddim¹ · ays`` -> (["euler", "ddim"], "¹", "ays")."""
    solvers, schedule = label.rsplit(" · ", 1)
    mark = "".join(c for c in solvers if c in MARKS)
    solvers = "".join(c for c in solvers if c not in MARKS)
    return [s.strip() for s in solvers.split(" = ")], mark, schedule.strip()


def parse_markdown(text):
    """{"notes": {mark: text}, "sections": {(family, cfg): {"best": [...], "rows": [...], "nfes": [...]}}}.
    best rows: nfe, solvers, mark, schedule, error (text), steps, recipe (cell text). Solver rows: solvers,
    mark, schedule, cells ({nfe: cell text}), recipe (cell text)."""
    notes, sections, cur, table = {}, {}, None, None
    for line in text.splitlines():
        if line[:1] in MARKS and line[1:2] == " ":
            notes[line[0]] = line[2:]
            continue
        m = SECTION.match(line)
        if m:
            cur = sections.setdefault((m.group(1), float(m.group(2))), {"best": [], "rows": [], "nfes": []})
            table = None
            continue
        if cur is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|---"):
            continue
        if cells[0] == "NFE":
            table = "best"
            continue
        if cells[0] == "solver · schedule":
            table = "rows"
            cur["nfes"] = [int(c.split()[1]) for c in cells[1:-1]]
            continue
        if table == "best":
            solvers, mark, sched = split_label(cells[1])
            cur["best"].append(dict(nfe=int(cells[0]), solvers=solvers, mark=mark, schedule=sched, error=cells[2],
                                    steps=int(cells[3]), recipe=cells[4], ncells=len(cells)))
        elif table == "rows":
            solvers, mark, sched = split_label(cells[0])
            cur["rows"].append(dict(solvers=solvers, mark=mark, schedule=sched,
                                    cells=dict(zip(cur["nfes"], cells[1:-1])), recipe=cells[-1], ncells=len(cells)))
    return {"notes": notes, "sections": sections}


# ------------------------------------------------------------------------------------------------
# FewStep's sources, read without ComfyUI
def _tree(rel):
    return ast.parse((REPO / rel).read_text())


def _assigned(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise KeyError(name)


def ksampler_samplers():
    """samplers/registry.py KSAMPLER_ENTRIES: KSampler name -> (solver function, options)."""
    from fewstep.samplers.registry import KSAMPLER_ENTRIES
    return {k: (spec.fn, dict(spec.kwargs)) for k, spec in KSAMPLER_ENTRIES.items()}


def ksampler_schedulers():
    """nodes/schedulers.py KSAMPLER_SCHEDULERS: name -> (handler function name, its literal arguments);
    a handler given by name alone (no call) has no arguments."""
    d = _assigned(_tree("nodes/schedulers.py"), "KSAMPLER_SCHEDULERS")
    return {ast.literal_eval(k): (v.id, ()) if isinstance(v, ast.Name)
            else (v.func.id, tuple(ast.literal_eval(a) for a in v.args)) for k, v in zip(d.keys, d.values)}


def node_ids(rel):
    d = _assigned(_tree(rel), "NODE_CLASS_MAPPINGS")
    return {ast.literal_eval(k): v.id for k, v in zip(d.keys, d.values)}


def required_widgets(rel):
    """class name -> the keys of INPUT_TYPES()["required"], in order (from the returned dict literal, or
    from the class's WIDGETS dict literal where a base class builds INPUT_TYPES from it)."""
    out = {}
    for cls in _tree(rel).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if isinstance(fn, ast.Assign) and [getattr(t, "id", None) for t in fn.targets] == ["WIDGETS"] \
                    and isinstance(fn.value, ast.Dict) and fn.value.keys:
                out[cls.name] = [ast.literal_eval(k) for k in fn.value.keys]
            if isinstance(fn, ast.FunctionDef) and fn.name == "INPUT_TYPES" and cls.name not in out:
                ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
                top = ret.value
                req = next(v for k, v in zip(top.keys, top.values) if ast.literal_eval(k) == "required")
                if isinstance(req, ast.Dict):   # a base class building it from WIDGETS has none of its own
                    out[cls.name] = [ast.literal_eval(k) for k in req.keys]
    return out


def comfyui_builtin_schedulers(comfy_root):
    """The scheduler names of a ComfyUI checkout's comfy/samplers.py SCHEDULER_HANDLERS (ast)."""
    d = _assigned(ast.parse((Path(comfy_root) / "comfy" / "samplers.py").read_text()), "SCHEDULER_HANDLERS")
    return [ast.literal_eval(k) for k in d.keys]


def png_size(path):
    data = Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
