"""tools/make_workflows.py on hand-written node definitions (no ComfyUI needed): the UI JSON it
writes, the widget rules of the frontend it mirrors, and the checks the host tests rely on."""
import copy
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
mw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mw)

INFOS = {
    "Src": {"input": {"required": {"seed": ["INT", {"default": 0, "min": 0, "max": 100}],
                                   "kind": [["a", "b"], {"default": "a"}]}},
            "input_order": {"required": ["seed", "kind"]},
            "output": ["MODEL", "LATENT"], "output_name": ["model", "latent"], "display_name": "Source"},
    "Mid": {"input": {"required": {"model": ["MODEL", {}], "steps": ["INT", {"default": 10, "min": 1, "max": 50}],
                                   "x": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}]},
                      "optional": {"extra": ["MODEL", {}], "name": ["COMBO", {"options": ["none", "f1"]}]}},
            "input_order": {"required": ["model", "steps", "x"], "optional": ["extra", "name"]},
            "output": ["SIGMAS"], "output_name": ["SIGMAS"], "display_name": "Mid"},
    "Sink": {"input": {"required": {"sigmas": ["SIGMAS", {}], "latent": ["LATENT", {}],
                                    "noise_seed": ["INT", {"default": 0, "min": 0, "max": 10}],
                                    "flag": ["BOOLEAN", {"default": True}],
                                    "text": ["STRING", {"default": "t", "forceInput": True}],
                                    "pick": [["p", "q"], {"control_after_generate": True}],
                                    "n": ["INT", {"default": 1, "control_after_generate": False, "min": 0, "max": 9}]},
                       "hidden": {"prompt": "PROMPT"}},
             "input_order": {"required": ["sigmas", "latent", "noise_seed", "flag", "text", "pick", "n"]},
             "output": [], "output_name": [], "output_node": True, "display_name": "Sink"},
    "Txt": {"input": {"required": {}}, "output": ["STRING"], "output_name": ["STRING"], "display_name": "Txt"},
}

PROMPT = {
    "1": {"class_type": "Src", "inputs": {"seed": 5, "kind": "b"}},
    "2": {"class_type": "Mid", "inputs": {"model": ["1", 0], "steps": 7, "x": 0.5}, "_meta": {"title": "My mid"}},
    "4": {"class_type": "Txt", "inputs": {}},
    "3": {"class_type": "Sink", "inputs": {"sigmas": ["2", 0], "latent": ["1", 1], "noise_seed": 3, "flag": False,
                                           "text": ["4", 0], "pick": "q", "n": 2}},
}


def ui():
    return mw.api_to_ui("t", copy.deepcopy(PROMPT), INFOS)


def node(w, nid):
    return next(n for n in w["nodes"] if n["id"] == nid)


def test_widgets_values_follow_frontend_rules():
    w = ui()
    # seed-named INT gets a control value; combo keeps its value
    assert node(w, 1)["widgets_values"] == [5, "fixed", "b"]
    # omitted optional combo -> its first option; optional socket not a widget
    assert node(w, 2)["widgets_values"] == [7, 0.5, "none"]
    # noise_seed -> control; forceInput STRING is a socket; combo asking for control gets one;
    # an INT explicitly refusing control gets none
    assert node(w, 3)["widgets_values"] == [3, "fixed", False, "q", "fixed", 2]
    assert node(w, 2)["title"] == "My mid" and "title" not in node(w, 1)


def test_sockets_links_and_ids():
    w = ui()
    assert w["version"] == 0.4 and w["last_node_id"] == 4 and w["last_link_id"] == len(w["links"]) == 4
    links = {l[0]: l for l in w["links"]}
    mid = node(w, 2)
    assert [i["name"] for i in mid["inputs"]] == ["model", "extra"]
    assert mid["inputs"][1] == {"name": "extra", "type": "MODEL", "shape": 7, "link": None}
    sink = node(w, 3)
    assert [i["name"] for i in sink["inputs"]] == ["sigmas", "latent", "text"]
    for slot, inp in enumerate(sink["inputs"]):
        l = links[inp["link"]]
        assert l[3] == 3 and l[4] == slot and l[5] == inp["type"]
    src_out = node(w, 1)["outputs"]
    assert [o["type"] for o in src_out] == ["MODEL", "LATENT"]
    assert all(links[lid][1] == 1 and links[lid][2] == o["slot_index"] for o in src_out for lid in o["links"])
    assert "inputs" not in node(w, 1) or node(w, 1)["inputs"] == []


def test_linked_widget_becomes_widget_socket():
    p = copy.deepcopy(PROMPT)
    p["5"] = {"class_type": "Src", "inputs": {"seed": 1, "kind": "a"}}
    p["2"]["inputs"]["steps"] = ["5", 0]  # a MODEL into an INT widget is caught by the check below
    w = mw.api_to_ui("t", p, INFOS)
    mid = node(w, 2)
    steps = next(i for i in mid["inputs"] if i["name"] == "steps")
    assert steps["widget"] == {"name": "steps"} and steps["link"] is not None
    assert node(w, 2)["widgets_values"][0] == 10  # the widget keeps its default under the link
    assert any("steps (INT) is fed MODEL" in p for p in mw.check_ui_workflow(w, INFOS))


def test_layout_left_to_right_and_order():
    w = ui()
    x = {n["id"]: n["pos"][0] for n in w["nodes"]}
    # a source node (4: no inputs) sits just left of its consumer, not in the first column
    assert x[1] < x[2] < x[3] and x[1] < x[4] < x[3]
    order = {n["id"]: n["order"] for n in w["nodes"]}
    for l in w["links"]:
        assert order[l[1]] < order[l[3]]
    # no two nodes overlap (the layout search may move a node off its column's x)
    assert not [p for p in mw.layout_problems(w["nodes"], w["links"], infos=INFOS) if "overlap" in p]


def test_check_accepts_generated_and_round_trips():
    w = ui()
    assert mw.check_ui_workflow(w, INFOS) == []
    assert mw.ui_to_api(w, INFOS) == mw.normalized_api(PROMPT, INFOS)


@pytest.mark.parametrize("mutate, needle", [
    (lambda w: node(w, 2)["widgets_values"].pop(), "2 widgets_values, the node has 3"),
    (lambda w: node(w, 2)["widgets_values"].__setitem__(0, 51), "widget steps is 51, outside [1, 50]"),
    (lambda w: node(w, 2)["widgets_values"].__setitem__(0, 2.5), "not a whole number"),
    (lambda w: node(w, 1)["widgets_values"].__setitem__(2, "c"), "widget kind is 'c', not one of"),
    (lambda w: node(w, 1)["widgets_values"].__setitem__(1, "sometimes"), "control_after_generate is 'sometimes'"),
    (lambda w: node(w, 3)["widgets_values"].__setitem__(2, "yes"), "not true/false"),
    (lambda w: node(w, 3)["inputs"].pop(0), "required input sigmas is not connected"),
    (lambda w: w["nodes"].append({"id": 9, "type": "Gone", "widgets_values": []}), "unknown node type"),
])
def test_check_catches_drift(mutate, needle):
    w = ui()
    mutate(w)
    problems = mw.check_ui_workflow(w, INFOS)
    assert any(needle in p for p in problems), problems


def test_definition_change_is_caught():
    """A workflow saved today against a node that later gains a widget in the middle is reported."""
    w = ui()
    infos = copy.deepcopy(INFOS)
    infos["Mid"]["input"]["required"]["y"] = ["FLOAT", {"default": 0.0}]
    infos["Mid"]["input_order"]["required"].insert(1, "y")
    assert any("node 2 (Mid): 3 widgets_values, the node has 4" in p for p in mw.check_ui_workflow(w, infos))


def test_bad_prompts_are_refused():
    p = copy.deepcopy(PROMPT)
    p["2"]["inputs"]["nope"] = 1
    with pytest.raises(mw.WorkflowError, match="has no input 'nope'"):
        mw.api_to_ui("t", p, INFOS)
    p = copy.deepcopy(PROMPT)
    p["2"]["inputs"]["model"] = ["1", 5]
    with pytest.raises(mw.WorkflowError, match="which has 2 outputs"):
        mw.api_to_ui("t", p, INFOS)
    p = copy.deepcopy(PROMPT)
    p["2"]["inputs"]["model"] = ["8", 0]
    with pytest.raises(mw.WorkflowError, match="missing node 8"):
        mw.api_to_ui("t", p, INFOS)


def test_non_numeric_ids_are_mapped():
    p = {"src": PROMPT["1"], "9": {"class_type": "Mid", "inputs": {"model": ["src", 0], "steps": 3, "x": 1.0}}}
    w = mw.api_to_ui("t", p, INFOS)
    assert sorted(n["id"] for n in w["nodes"]) == [9, 10]
    assert mw.ui_to_api(w, INFOS) == mw.normalized_api(p, INFOS)


def test_deterministic():
    assert mw.dumps(ui()) == mw.dumps(ui())


def test_layout_fits_the_view_without_overlaps_and_wires_behind_nodes():
    w = mw.api_to_ui("t", copy.deepcopy(PROMPT), INFOS, note="Shows: a test.")
    assert mw.layout_problems(w["nodes"], w["links"]) == []
    note = next(n for n in w["nodes"] if n["type"] == "Note")
    assert note["widgets_values"] == ["Shows: a test."] and note["id"] == 5 and w["last_node_id"] == 5
    # the note is frontend-only: checks accept it and the queued prompt leaves it out
    assert mw.check_ui_workflow(w, INFOS) == []
    assert mw.ui_to_api(w, INFOS) == mw.normalized_api(PROMPT, INFOS)


def test_layout_problems_are_found():
    w = ui()
    nodes = {n["id"]: n for n in w["nodes"]}
    # a node dropped across the wire 1 -> 3 (latent): the wire runs behind it
    src, dst = nodes[1], nodes[3]
    y = (src["pos"][1] + dst["pos"][1]) / 2
    blocker = {"id": 99, "type": "Mid", "pos": [(src["pos"][0] + src["size"][0] + dst["pos"][0]) / 2 - 20, y - 40],
               "size": [40, 200]}
    probs = mw.layout_problems(w["nodes"] + [blocker], w["links"])
    assert any("runs behind node 99" in p for p in probs), probs
    # outside the view and overlapping
    far = dict(nodes[2], id=98, pos=[1500, 100])
    probs = mw.layout_problems(w["nodes"] + [far], w["links"])
    assert any("node 98 (Mid) box" in p and "outside the 1600x900 view" in p for p in probs), probs
    twin = dict(nodes[2], id=97)
    assert any("overlap" in p for p in mw.layout_problems(w["nodes"] + [twin], w["links"]))


def test_layout_is_inside_the_view_for_a_long_chain():
    """Eight nodes in a chain do not fit eight columns in 1600 px: the generator reports it rather
    than writing a workflow that falls off the screen (the example chains use COLUMNS)."""
    infos = {"A": {"input": {"required": {"x": ["MODEL", {}]}}, "input_order": {"required": ["x"]},
                   "output": ["MODEL"], "output_name": ["model"], "display_name": "A"},
             "S": {"input": {"required": {}}, "output": ["MODEL"], "output_name": ["model"], "display_name": "S"}}
    prompt = {"1": {"class_type": "S", "inputs": {}}}
    for i in range(2, 9):
        prompt[str(i)] = {"class_type": "A", "inputs": {"x": [str(i - 1), 0]}}
    w = mw.api_to_ui("chain", prompt, infos, note="n")
    assert any("outside the 1600x900 view" in p for p in mw.layout_problems(w["nodes"], w["links"]))


def test_link_points_follow_litegraph_splines():
    """A wire as the editor (LiteGraph, ComfyUI frontend 1.27) draws it: from the output slot (x + width
    + 1 - 10, y + (slot + 0.7) * 20) to the input slot (x + 10, row among the plain sockets), a cubic
    bezier whose control points lie max(30, distance / 4) out to the right and to the left."""
    a = {"id": 1, "type": "Src", "pos": [0, 100], "size": [200, 80], "outputs": [{}, {}]}
    b = {"id": 2, "type": "Mid", "pos": [400, 300], "size": [200, 80],
         "inputs": [{"name": "model"}, {"name": "steps", "widget": {"name": "steps"}}, {"name": "extra"}]}
    nodes = {1: a, 2: b}
    pts = mw.link_points([1, 1, 1, 2, 2, "MODEL"], nodes, samples=4)
    x0, y0, x3, y3 = 191, 100 + 1.7 * 20, 410, 300 + 1.7 * 20   # "extra" is the 2nd plain socket
    assert pts[0] == pytest.approx((x0, y0)) and pts[-1] == pytest.approx((x3, y3))
    d = max(30, ((x3 - x0) ** 2 + (y3 - y0) ** 2) ** 0.5 / 4)
    t = 0.25
    u = 1 - t
    want_x = u ** 3 * x0 + 3 * u * u * t * (x0 + d) + 3 * u * t * t * (x3 - d) + t ** 3 * x3
    want_y = u ** 3 * y0 + 3 * u * u * t * y0 + 3 * u * t * t * y3 + t ** 3 * y3
    assert pts[1] == pytest.approx((want_x, want_y))
    # a short wire keeps the 30 px minimum of the control distance
    c = dict(b, pos=[215, 100])
    short = mw.link_points([1, 1, 0, 2, 0, "MODEL"], {1: a, 2: c}, samples=2)
    assert short[1][0] == pytest.approx(0.125 * 191 + 0.375 * 221 + 0.375 * 195 + 0.125 * 225)
    # an input that feeds a widget sits on its widget's row (with the node definitions)
    wy = mw.slot_point(b, 1, True, INFOS)[1]
    assert wy == pytest.approx(300 + 2 * 20 + 2 + 0 * mw.WIDGET_H + 10)   # 2 plain sockets; steps is widget 0


def test_untangle_moves_a_node_off_a_wire():
    """A node dropped across a wire: the layout search moves nodes until no wire runs behind one, inside
    the view and without overlaps."""
    w = ui()
    nodes = {n["id"]: n for n in w["nodes"]}
    src, dst = nodes[1], nodes[3]
    blocker = {"id": 99, "type": "Mid", "pos": [(src["pos"][0] + src["size"][0] + dst["pos"][0]) / 2 - 20,
                                                 (src["pos"][1] + dst["pos"][1]) / 2 - 40], "size": [40, 200]}
    placed = w["nodes"] + [blocker]
    assert any("runs behind node 99" in p for p in mw.layout_problems(placed, w["links"], infos=INFOS))
    mw.untangle(placed, w["links"], INFOS)
    assert mw.layout_problems(placed, w["links"], infos=INFOS) == []


def test_a_clean_layout_on_disk_is_kept_and_a_changed_graph_is_laid_out_anew():
    w = ui()
    moved = copy.deepcopy(w)
    for n in moved["nodes"]:
        n["pos"] = [n["pos"][0], n["pos"][1] + 20]   # arranged by hand, still clean
    assert mw.layout_problems(moved["nodes"], moved["links"], infos=INFOS) == []
    again = mw.api_to_ui("t", copy.deepcopy(PROMPT), INFOS, previous=moved)
    assert [n["pos"] for n in again["nodes"]] == [n["pos"] for n in moved["nodes"]]
    # another graph (a link less): the old places are not used
    p = copy.deepcopy(PROMPT)
    del p["3"]["inputs"]["text"]
    other = mw.api_to_ui("t", p, INFOS, previous=moved)
    assert other["links"] != moved["links"]
    assert [n["pos"] for n in other["nodes"]] != [n["pos"] for n in moved["nodes"]]
