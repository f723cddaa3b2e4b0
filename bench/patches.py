"""Benchmark: wall time of FewStep's model patches on an SD1.5-sized UNet, side by side in one run.

    python bench/patches.py [--repeats R] [--steps S] [--no-write]

Setup (issue 6): an SD1.5-sized UNet with random weights built through ComfyUI
(tests/unet_factory.py, 860M parameters, float32), CPU, batch 1, CFG 7, a 32x32 latent (256x256),
10 steps of ComfyUI's dpmpp_2m (DPM-Solver++(2M)) on the karras schedule, through
comfy.sample.sample. Configurations: uncached, DeepCache (N=3, depth 0), T-GATE (gate 40%),
DeepCache + T-GATE, FreeU (v2, SD1.5 preset). Runs are interleaved (R rounds of every
configuration) and each configuration's time is its fastest round, so load from other processes
hits all of them alike.

Also reported:
* the upper bound of each speedup from the measured cost of the pieces that still run: a shallow
  DeepCache pass relative to a full UNet pass (``r``), and T-GATE's single-batch calls after the
  gate -- e.g. DeepCache bound = T / (F + C*r) for F full and C cached steps;
* DeepCache's added peak memory: the cached features (one per cond chunk) as the patch reports it;
* the deviation of the final latent from the uncached run, ||x - x_ref|| / ||x_ref|| (random weights:
  this checks the mechanism, not image quality).

Writes the table into docs/patches.md between the bench markers (atomically).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import comfy_host  # noqa: E402

MARK_START = "<!-- bench:patches:start -->"
MARK_END = "<!-- bench:patches:end -->"
GOALS = {"deepcache": 2.0, "tgate": 1.3, "both": 2.5}


class _Grab(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="rounds of every configuration (default 2)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/patches.md")
    a = ap.parse_args(argv)

    host = comfy_host.import_comfyui(comfy_host.find_comfyui())
    import comfy.sample
    import unet_factory

    from fewstep.patches._unet import UNetLayout, forward_shallow
    from fewstep.patches.deepcache import apply_deepcache, full_steps
    from fewstep.patches.freeu import PRESETS, apply_freeu
    from fewstep.patches.tgate import apply_tgate

    grab = _Grab()
    logging.getLogger("FewStep").addHandler(grab)
    logging.getLogger("FewStep").setLevel(logging.INFO)

    t0 = time.time()
    base = unet_factory.make_unet_patcher("sd15", seed=0)
    n_params = sum(p.numel() for p in base.model.diffusion_model.parameters())
    pos = unet_factory.conditioning(768, seed=1)
    neg = unet_factory.conditioning(768, seed=2)
    lat = torch.zeros(1, 4, 32, 32)
    noise = comfy.sample.prepare_noise(lat, 0)
    print(f"built SD1.5-sized UNet ({n_params / 1e6:.0f}M params) in {time.time() - t0:.0f}s; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    configs = {
        "uncached": base,
        "deepcache": apply_deepcache(base, cache_interval=3, cache_depth=0),
        "tgate": apply_tgate(base, gate_percent=0.4),
        "both": apply_tgate(apply_deepcache(base, cache_interval=3, cache_depth=0), gate_percent=0.4),
        "freeu": apply_freeu(base, 2, *PRESETS["SD1.5"]),
    }

    def run(model):
        with torch.inference_mode():
            t = time.perf_counter()
            out = comfy.sample.sample(model, noise, a.steps, 7.0, "dpmpp_2m", "karras", pos, neg, lat,
                                      seed=0, disable_pbar=True)
            return time.perf_counter() - t, out

    # warm-up: allocator, kernels
    run_short = lambda m: comfy.sample.sample(m, noise, 1, 7.0, "euler", "karras", pos, neg, lat,  # noqa: E731
                                              seed=0, disable_pbar=True)
    with torch.inference_mode():
        run_short(base)

    times = {k: [] for k in configs}
    outs = {}
    logs = {}
    for r in range(a.repeats):
        for name, model in configs.items():
            grab.messages.clear()
            dt, out = run(model)
            times[name].append(dt)
            outs[name] = out
            logs[name] = list(grab.messages)
            print(f"round {r + 1}: {name:10s} {dt:7.1f}s", flush=True)
    best = {k: min(v) for k, v in times.items()}

    # shallow-branch share: one full UNet pass vs one DeepCache shallow pass on the CFG batch
    unet = base.model.diffusion_model
    layout = UNetLayout(unet)
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    tt = torch.tensor([500.0, 500.0])
    ctx = torch.cat([pos[0][0], neg[0][0]])
    store = []

    mc = unet.model_channels
    freeu_inputs = []

    def grab_deep(h, hsp, to):
        if to.get("block") == ("output", layout.entry_block(0)):
            store.append(h)
        if int(h.shape[1]) in (2 * mc, 4 * mc):
            freeu_inputs.append((h.clone(), hsp.clone(), 1.5 if h.shape[1] == 4 * mc else 1.6,
                                 0.9 if h.shape[1] == 4 * mc else 0.2))
        return h, hsp

    from fewstep.patches.freeu import backbone_scale, skip_filter

    def freeu_ops():
        for hh, ss, b, sc in freeu_inputs:
            backbone_scale(hh, b, 2)
            skip_filter(ss, sc)

    def timed(fn, n=3):
        best_t = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            fn()
            best_t = min(best_t, time.perf_counter() - t)
        return best_t

    with torch.inference_mode():
        unet(x, tt, context=ctx, transformer_options={"patches": {"output_block_patch": [grab_deep]}})
        t_full = timed(lambda: unet(x, tt, context=ctx, transformer_options={}))
        t_shallow = timed(lambda: forward_shallow(unet, layout, 0, store[-1], x, tt, ctx, None, None, {}, {}))
        t_half = timed(lambda: unet(x[:1], tt[:1], context=ctx[:1], transformer_options={}))
        t_freeu = timed(freeu_ops, n=20)
    r = t_shallow / t_full
    h = t_half / t_full
    steps = a.steps
    n_full = len(full_steps(steps, 3))
    n_cached = steps - n_full
    gate = int(0.4 * steps + 0.5)
    bound_dc = steps / (n_full + n_cached * r)
    bound_tg = steps / (gate + (steps - gate) * h)
    # combined: before the gate full or shallow CFG passes; after it, the same on half the batch
    dc_steps = set(full_steps(steps, 3))
    cost_both = sum((1.0 if i in dc_steps else r) * (1.0 if i < gate else h) for i in range(steps))
    bound_both = steps / cost_both

    def dev(name):
        ref = outs["uncached"].double()
        return float((outs[name].double() - ref).norm() / ref.norm())

    peak = None
    for m in logs["deepcache"]:
        mm = re.search(r"cache peak ([0-9.]+) MiB", m)
        if mm:
            peak = float(mm.group(1))
    dc_log = next((m for m in logs["deepcache"] if "DeepCache" in m), "")
    tg_log = next((m for m in logs["tgate"] if "T-GATE" in m), "")

    rows = [
        ("uncached", "-", best["uncached"], 1.0, "-", "-", 0.0),
        ("DeepCache N=3, depth 0", f">= {GOALS['deepcache']}", best["deepcache"], best["uncached"] / best["deepcache"],
         f"{bound_dc:.2f}", "", dev("deepcache")),
        ("T-GATE gate 40%", f">= {GOALS['tgate']}", best["tgate"], best["uncached"] / best["tgate"],
         f"{bound_tg:.2f}", "", dev("tgate")),
        ("DeepCache + T-GATE", f">= {GOALS['both']}", best["both"], best["uncached"] / best["both"],
         f"{bound_both:.2f}", "", dev("both")),
        ("FreeU v2 (SD1.5 preset)", "overhead <= 3%", best["freeu"], best["uncached"] / best["freeu"], "-",
         f"{(best['freeu'] / best['uncached'] - 1) * 100:+.1f}%", dev("freeu")),
    ]
    cmd = "python bench/patches.py" + (f" --repeats {a.repeats}" if a.repeats != 2 else "") + \
          (f" --steps {a.steps}" if a.steps != 10 else "")
    lines = [
        f"Command: `{cmd}` (CPU, {torch.get_num_threads()} torch threads, {time.strftime('%Y-%m-%d')}; "
        f"best of {a.repeats} interleaved rounds).",
        "",
        f"SD1.5-sized UNet ({n_params / 1e6:.0f}M parameters, random weights, float32), batch 1, CFG 7, "
        f"32x32 latent, {steps} steps dpmpp_2m/karras.",
        "",
        "| configuration | goal | time (s) | uncached / this | upper bound | overhead | final-latent deviation |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, goal, t, ratio, bound, over, d in rows:
        lines.append(f"| {name} | {goal} | {t:.1f} | {ratio:.2f} | {bound} | {over} | {d:.3g} |")
    lines += [
        "",
        f"- Shallow DeepCache pass (depth 0) / full UNet pass, CFG batch: r = {r:.3f} "
        f"({t_shallow * 1e3:.0f} ms / {t_full * 1e3:.0f} ms); one half-batch pass / full pass: {h:.3f}.",
        f"- Upper bounds: DeepCache = T/(F + C*r) with F={n_full} full and C={n_cached} cached steps; T-GATE = "
        f"T/(G + (T-G)*{h:.2f}) with G={gate} steps before the gate (cross-attention savings not counted); "
        "both = T / sum of the per-step costs.",
        f"- FreeU's own work per UNet pass (the {len(freeu_inputs)} re-weighted decoder features, FFT included), timed "
        f"alone: {t_freeu * 1e3:.1f} ms = {t_freeu / t_full * 100:.2f}% of a full pass ({t_full * 1e3:.0f} ms); "
        "the end-to-end FreeU row above is within the timing noise of this shared machine.",
        f"- DeepCache's added peak memory (cached features, one per cond chunk): {peak:.2f} MiB."
        if peak is not None else "- DeepCache's added peak memory: not reported.",
        f"- Patch logs: `{dc_log}`; `{tg_log}`.",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if not a.no_write:
        write_doc(table)
    return 0


def write_doc(table: str):
    path = REPO / "docs" / "patches.md"
    text = path.read_text() if path.exists() else ""
    block = f"{MARK_START}\n{table}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        pre, rest = text.split(MARK_START, 1)
        _, post = rest.split(MARK_END, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n## Benchmark\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
