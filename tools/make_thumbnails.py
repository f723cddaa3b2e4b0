#!/usr/bin/env python
"""Render the template browser's thumbnails: ``example_workflows/<name>.jpg`` next to each UI workflow
(the name and format ComfyUI's editor requests: /api/workflow_templates/<pack>/<name>.jpg).

Each thumbnail is made from the workflow itself, never by hand: the graph as laid out in the UI file
(node boxes, wires, FewStep nodes highlighted) on top, and below it the picture the workflow saved
when run on a real ComfyUI server (headless, from its API twin) with the number its Error vs Exact
node showed. Workflows that need a downloaded model (the patch examples) show the graph and say which
model; they are not run.

    python tools/make_thumbnails.py                 # start a ComfyUI (as the host tests find it), run, render
    python tools/make_thumbnails.py --url http://127.0.0.1:8188
    python tools/make_thumbnails.py --only solver_deis basic_ksampler

Needs Pillow (a tool dependency, not a runtime one).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "example_workflows"
API_DIR = WORKFLOWS / "api"
SIZE = (512, 384)
GRAPH_H = 228
BG, PANEL, TEXT, DIM = (24, 26, 30), (44, 47, 54), (230, 232, 236), (150, 154, 162)
FEWSTEP, OTHER, WIRE = (70, 120, 200), (78, 82, 92), (120, 170, 120)


def _mw():
    import importlib.util
    spec = importlib.util.spec_from_file_location("fewstep_make_workflows", REPO / "tools" / "make_workflows.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    return mw


def _plain(text: str) -> str:
    """``text`` with accents dropped (Fréchet -> Frechet): Pillow's built-in font has no glyph for them."""
    import unicodedata
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def title_of(name: str) -> str:
    return name.replace("_", " ")


def draw_graph(draw, ui, mw, box):
    """The UI workflow's nodes and wires, scaled into ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    nodes = {n["id"]: n for n in ui["nodes"]}
    boxes = {i: mw.node_box(n) for i, n in nodes.items()}
    gx0 = min(b[0] for b in boxes.values()) - 10
    gy0 = min(b[1] for b in boxes.values()) - 10
    gx1 = max(b[2] for b in boxes.values()) + 10
    gy1 = max(b[3] for b in boxes.values()) + 10
    s = min((x1 - x0) / (gx1 - gx0), (y1 - y0) / (gy1 - gy0))
    ox = x0 + ((x1 - x0) - (gx1 - gx0) * s) / 2
    oy = y0 + ((y1 - y0) - (gy1 - gy0) * s) / 2

    def t(x, y):
        return ox + (x - gx0) * s, oy + (y - gy0) * s

    for l in ui["links"]:
        pts = [t(*p) for p in mw.link_points(l, nodes, 24)]
        draw.line(pts, fill=WIRE, width=1)
    small = _font(9)
    for i, n in nodes.items():
        b = boxes[i]
        a, c = t(b[0], b[1]), t(b[2], b[3])
        fill = (101, 85, 51) if n["type"] == "Note" else FEWSTEP if n["type"].startswith("FewStep") else OTHER
        draw.rectangle([a, c], fill=fill, outline=(20, 20, 20))
        label = n.get("title") or n["type"]
        label = label.replace("FewStep", "").strip() or label
        if n["type"] != "Note":
            draw.text((a[0] + 3, a[1] + 2), label[:int((c[0] - a[0]) / 5)], fill=TEXT, font=small)


def render(name, ui, mw, picture=None, caption=""):
    from PIL import Image, ImageDraw
    im = Image.new("RGB", SIZE, BG)
    d = ImageDraw.Draw(im)
    d.rectangle([6, 6, SIZE[0] - 7, GRAPH_H], fill=PANEL)
    draw_graph(d, ui, mw, (12, 12, SIZE[0] - 13, GRAPH_H - 6))
    side = SIZE[1] - GRAPH_H - 16
    tx = 12
    if picture is not None:
        pic = picture.convert("RGB").resize((side, side), Image.NEAREST)
        im.paste(pic, (10, GRAPH_H + 8))
        tx = side + 22
    d.text((tx, GRAPH_H + 12), title_of(name), fill=TEXT, font=_font(20))
    y = GRAPH_H + 42
    for line in caption.splitlines():
        d.text((tx, y), _plain(line), fill=DIM, font=_font(13))
        y += 18
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _wrap(text, width):
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


#: the nodes whose text is the workflow's number (shown under the picture)
NUMBER_NODES = ("FewStepExactError", "FewStepQuality")


def run_one(server, prompt):
    """(PIL image the workflow saved, text its number node -- Error vs Exact, FewStep Quality -- showed,
    else the last text any node showed) from a headless run."""
    from PIL import Image
    entry = server.run(prompt, timeout=1200)
    picture, text, number = None, "", ""
    for nid, out in sorted(entry["outputs"].items()):
        for item in out.get("images", []):
            status, raw = server.request("GET", "/view?" + urllib.parse.urlencode(item))
            if status == 200 and picture is None:
                picture = Image.open(io.BytesIO(raw))
                picture.load()
        if out.get("text"):
            text = out["text"][0]
            if prompt.get(nid, {}).get("class_type") in NUMBER_NODES and not number:
                number = text
    text = number or text
    if picture is None:
        raise RuntimeError("the workflow saved no image")
    return picture, text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running ComfyUI with this pack (default: start one)")
    ap.add_argument("--only", nargs="*", help="workflow names to render (default: all)")
    a = ap.parse_args(argv)
    mw = _mw()
    names = [p.stem for p in sorted(WORKFLOWS.glob("*.json"))]
    if a.only:
        unknown = sorted(set(a.only) - set(names))
        if unknown:
            print(f"make_thumbnails: no workflow named {unknown}; have {names}", file=sys.stderr)
            return 2
        names = [n for n in names if n in a.only]
    sys.path.insert(0, str(REPO / "tests"))
    import comfy_host
    server = None
    if a.url:
        server = comfy_host.ComfyServer.__new__(comfy_host.ComfyServer)
        server.url = a.url.rstrip("/")
    try:
        for name in names:
            ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
            prompt = mw.load_api(API_DIR / f"{name}.json")
            models = ui.get("models") or []  # the downloads the workflow needs (make_workflows.MODELS)
            picture, caption = None, ""
            if models:
                first = models[0]
                more = f" (+{len(models) - 1} more)" if len(models) > 1 else ""
                caption = f"needs {first['name']}{more}\nin models/{first['directory']} (see the Note)"
            else:
                if server is None:
                    path = comfy_host.find_comfyui()
                    if path is None:
                        print("make_thumbnails: no ComfyUI found; use --url", file=sys.stderr)
                        return 2
                    server = comfy_host.ComfyServer(path).start()
                picture, text = run_one(server, prompt)
                caption = "\n".join(_wrap(text.replace("RMS error vs exact:", "error vs exact:"), 38))
            data = render(name, ui, mw, picture, caption)
            out = WORKFLOWS / f"{name}.jpg"
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(out)
            print(f"wrote {out.relative_to(REPO)}: {caption.splitlines()[0] if caption else ''}")
    finally:
        if server is not None and not a.url:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
