"""Benchmark: FewStep at real model sizes on one GPU, in one short command (docs/gpu.md).

    python bench/gpu.py [--device cuda] [--dtype fp16,bf16] [--out DIR] [--budget-s 420] [--comfyui PATH]
    python bench/gpu.py --device cpu --tiny --out DIR        # the same code at toy sizes (tests/test_bench_gpu.py)

ComfyUI runs in-process: every model is built from ComfyUI's own classes (``comfy.supported_models`` SD15,
SDXL and Flux configs, ``model_base`` + ``openaimodel.UNetModel`` / ``comfy.ldm.flux.model.Flux``) with
random weights initialised explicitly (ComfyUI's layers skip initialisation); sampling goes through
``comfy.sample.sample_custom`` (the CFG guider) with FewStep's nodes. One table, four sections:

* ``sizes``: SD1.5 UNet at 512x512 (latent 64x64), SDXL UNet at 1024x1024 (latent 128x128), and a
  Flux-width transformer stack (hidden 3072, 24 heads, 2 double + 4 single blocks, 64x64 = 4096 image
  tokens + 512 text tokens at 1024x1024), in every --dtype: parameters, weights, one network call.
* ``patches``: seconds per step of the sampling loop (FewStep DPM-Solver++(2M), karras/simple, CFG on)
  for uncached, DeepCache (interval 3, depth 0), T-GATE (gate 40%), both, FreeU (v2, the model's preset),
  batch 1 and 4; the ratio uncached/this; and the bound of each speedup from the measured cost of the
  parts a patched step still runs (see ``patch_bounds``). DiT patches do not exist yet: one row says so.
* ``solvers``: every solver of ``samplers/registry.py`` with a model stub (a fixed tensor): its own time per
  step, as a share of one UNet call (batch 1, no CFG), and the host syncs the torch profiler sees inside
  the sampling loop (between the first and the last step callback), which must be 0.
* ``trainers``: FewStepOLSSTrain and FewStepAYSOptimize at their node defaults for SD1.5 at 512x512 and
  SDXL at 1024x1024: a shortened run (OLSS: 1 sample; AYS: stopped after a few model calls), the model
  calls counted with a CALC_COND_BATCH wrapper, and the wall time at the defaults extrapolated from the
  measured time per call and the call count stated in the row. Peak VRAM of the shortened run.

Timing: CUDA events around the sampler loop (recorded inside the KSAMPLER function, no sync in between),
``torch.cuda.synchronize()`` only before and after a run; warm-up runs first; rounds interleave the
configurations and each keeps its fastest round. ``--budget-s`` skips the rows that would not fit (the
table says which). Needs torch, numpy, safetensors and a ComfyUI source tree (torchsde for ComfyUI's
imports: see docs/gpu.md); nothing is written into the ComfyUI tree.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SECTIONS = ("sizes", "patches", "solvers", "trainers")
MODELS = ("sd15", "sdxl", "flux")
UNETS = ("sd15", "sdxl")
PATCHES = ("uncached", "deepcache", "tgate", "both", "freeu")
TRAINERS = ("FewStepOLSSTrain", "FewStepAYSOptimize")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LABEL = {"sd15": "SD1.5 UNet 512x512", "sdxl": "SDXL UNet 1024x1024", "flux": "Flux-width DiT 1024x1024"}
PATCH_LABEL = {"uncached": "uncached", "deepcache": "DeepCache N=3 depth 0", "tgate": "T-GATE gate 40%",
               "both": "DeepCache + T-GATE", "freeu": "FreeU v2"}
DIT_NOTE = "DiT patches: not implemented yet"
#: goals (seconds at the node defaults on one H100-class GPU)
GOALS = {("FewStepAYSOptimize", "sdxl"): 600.0, ("FewStepOLSSTrain", "sd15"): 120.0,
         ("FewStepOLSSTrain", "sdxl"): 120.0}
#: what the profiler must not see inside a sampling loop
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
SCALAR_READ = "aten::_local_scalar_dense"     # .item() / float(t) / bool(t) of a tensor
STEP_MARK = "fewstep_bench_step"
BENCH_KEY = "fewstep_gpu_bench"


class StopBench(Exception):
    """Raised by the call counter to end a shortened trainer run after its measured calls."""


# ------------------------------------------------------------------------------------------------
# model configurations (ComfyUI's detection dicts for SD1.5 / SDXL; Flux's, fewer blocks)
SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
        "use_temporal_resblock": False}
FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 2, "depth_single_blocks": 4,
        "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}


def model_spec(kind: str, tiny: bool) -> dict:
    """Config, latent shape (C, H, W), text tokens and widths of one benchmark model."""
    if kind == "sd15":
        cfg = dict(SD15)
        if tiny:  # three levels, so that FreeU's 2x/4x stages have at least 2x2 features at an 8x8 latent
            cfg.update(model_channels=32, context_dim=64, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
                       transformer_depth=[1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0, 0])
        return dict(cfg=cfg, latent=(4, 8, 8) if tiny else (4, 64, 64), tokens=4 if tiny else 77,
                    ctx=cfg["context_dim"], pooled=None, schedule="karras", freeu="SD1.5")
    if kind == "sdxl":
        cfg = dict(SDXL)
        if tiny:
            cfg.update(model_channels=32, context_dim=64, num_head_channels=16, transformer_depth=[0, 0, 1, 1, 1, 1],
                       transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])
        return dict(cfg=cfg, latent=(4, 8, 8) if tiny else (4, 128, 128), tokens=4 if tiny else 77,
                    ctx=cfg["context_dim"], pooled=1280, schedule="karras", freeu="SDXL")
    if kind == "flux":
        cfg = dict(FLUX)
        if tiny:
            cfg.update(hidden_size=64, num_heads=2, axes_dim=[8, 12, 12], depth=1, depth_single_blocks=1,
                       context_in_dim=64, vec_in_dim=32)
        return dict(cfg=cfg, latent=(16, 8, 8) if tiny else (16, 128, 128), tokens=4 if tiny else 512,
                    ctx=cfg["context_in_dim"], pooled=cfg["vec_in_dim"], schedule="simple", freeu=None)
    raise ValueError(f"model must be one of {MODELS}, got {kind!r}")


def init_weights_(module: torch.nn.Module, seed: int, gain: float = 1.0) -> torch.nn.Module:
    """Explicit random weights, drawn on the weights' device: fan-in scaled normal for matrices and
    kernels, 1 for norm weights/scales, small normal biases."""
    with torch.no_grad():
        gens = {}
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            g = gens.get(p.device)
            if g is None:
                g = gens[p.device] = torch.Generator(device=p.device).manual_seed(int(seed))
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2:
                p.normal_(0.0, gain / math.sqrt(p[0].numel()), generator=g)
            elif leaf in ("weight", "scale"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.01, generator=g)
    return module


def build_model(kind: str, tiny: bool, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A ComfyUI ModelPatcher around a random-weight SD1.5 / SDXL / Flux model on ``device``."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    spec = model_spec(kind, tiny)
    config = {"sd15": sm.SD15, "sdxl": sm.SDXL, "flux": sm.Flux}[kind](dict(spec["cfg"]))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    init_weights_(model.diffusion_model, seed)
    model.diffusion_model.to(device=device, dtype=dtype)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())


def conditioning(kind: str, tiny: bool, seed: int):
    """A CONDITIONING list with random prompt embeddings of the model's widths."""
    spec = model_spec(kind, tiny)
    g = torch.Generator().manual_seed(int(seed))
    extra = {}
    if spec["pooled"]:
        extra["pooled_output"] = torch.randn(1, spec["pooled"], generator=g)
    if kind == "sdxl":
        side = spec["latent"][1] * 8
        extra.update(width=side, height=side)
    if kind == "flux":
        extra["guidance"] = 3.5
    return [[torch.randn(1, spec["tokens"], spec["ctx"], generator=g), extra]]


# ------------------------------------------------------------------------------------------------
# timing
class Timer:
    """CUDA events on a GPU (no sync between start and stop), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def start(self):
        if self.cuda:
            self.e0 = torch.cuda.Event(enable_timing=True)
            self.e0.record()
        self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.e1 = torch.cuda.Event(enable_timing=True)
            self.e1.record()
        self.t1 = time.perf_counter()

    def seconds(self) -> float:
        self.sync()
        return self.e0.elapsed_time(self.e1) / 1e3 if self.cuda else self.t1 - self.t0


def time_call(fn, device, reps: int, warm: int = 1) -> float:
    """Median seconds of ``fn()`` over ``reps`` timed calls after ``warm`` untimed ones."""
    timer = Timer(device)
    for _ in range(warm):
        fn()
    out = []
    for _ in range(reps):
        timer.sync()
        timer.start()
        fn()
        timer.stop()
        out.append(timer.seconds())
    return statistics.median(out)


class Budget:
    def __init__(self, seconds: float):
        self.limit = float(seconds)
        self.t0 = time.perf_counter()
        self.skipped = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, estimate: float, what: str) -> bool:
        if self.elapsed() + max(0.0, estimate) <= self.limit:
            return True
        self.skipped.append(f"{what} (estimated {estimate:.0f} s at {self.elapsed():.0f} s of --budget-s {self.limit:.0f})")
        print(f"  skipped: {what} (budget)", flush=True)
        return False


# ------------------------------------------------------------------------------------------------
# ComfyUI in-process
def ensure_fewstep_importable():
    """``import fewstep`` must mean this checkout (a temporary folder with one link, as the tests do)."""
    try:
        import fewstep  # noqa: F401
        if Path(fewstep.__file__).resolve().parent == REPO:
            return
        raise RuntimeError(f"fewstep is imported from {fewstep.__file__}, not from {REPO}")
    except ImportError:
        pass
    holder = tempfile.mkdtemp(prefix="fewstep-path-")
    os.symlink(REPO, os.path.join(holder, "fewstep"), target_is_directory=True)
    sys.path.insert(0, holder)


def find_comfyui(explicit: str | None) -> Path:
    """--comfyui, else the tests' search order ($COMFYUI_PATH, an enclosing ComfyUI, ~/comfy/ComfyUI), else
    ../shared/comfyui beside the checkout."""
    sys.path.insert(0, str(REPO / "tests"))
    import comfy_host
    if explicit:
        p = Path(explicit).expanduser().resolve()
        if not comfy_host._is_comfyui(p):
            raise SystemExit(f"--comfyui {explicit}: not a ComfyUI source tree (no main.py / comfy/samplers.py / nodes.py)")
        return p
    p = comfy_host.find_comfyui()
    if p is None:
        shared = REPO.parent / "shared" / "comfyui"
        if comfy_host._is_comfyui(shared):
            p = shared.resolve()
    if p is None:
        raise SystemExit("no ComfyUI found: pass --comfyui PATH (or set COMFYUI_PATH)")
    return p


def import_comfyui(path: Path, device: torch.device, scratch: Path):
    """ComfyUI's modules for ``device`` (not nodes.py, whose imports the GPU image lacks) and FewStep's
    nodes, with FewStep's model folders in ``scratch``. Nothing is written into ``path``."""
    sys.dont_write_bytecode = True        # the tree may be read-only (a shared snapshot)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != str(REPO)]
    sys.path.insert(0, str(path))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    if device.type == "cpu":
        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.disable_smart_memory = True
    else:
        comfy.cli_args.args.gpu_only = True  # weights and latents stay on the GPU between runs
    import comfy.model_management  # noqa: F401  (after the args)
    import comfy.k_diffusion.sampling  # noqa: F401
    import comfy.model_base  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.patcher_extension  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.supported_models  # noqa: F401
    import folder_paths
    for name in ("fewstep_olss", "fewstep_ays"):
        folder_paths.folder_names_and_paths[name] = ([str(scratch / name)], {".safetensors"})
    import fewstep.nodes as fs_nodes
    fs_nodes.register_with_comfyui()
    version = "?"
    try:
        version = (path / "comfyui_version.py").read_text().split('"')[1]
    except Exception:
        pass
    return types.SimpleNamespace(NODES=fs_nodes.NODE_CLASS_MAPPINGS, version=version)


def node_defaults(node_cls) -> dict:
    """The default of every widget of a node (inputs without a default are connections)."""
    spec = node_cls.INPUT_TYPES()
    out = {}
    for group in ("required", "optional"):
        for name, val in spec.get(group, {}).items():
            opts = val[1] if len(val) > 1 and isinstance(val[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(val[0], (list, tuple)) and val[0]:
                out[name] = val[0][0]
    return out


class CallCounter:
    """Counts denoiser calls (CALC_COND_BATCH: one per CFG-combined model evaluation) and network
    passes (DIFFUSION_MODEL) of a cloned model, times the span from the first call's start to the last
    call's end (CUDA events, no sync), and raises StopBench at call ``limit + 1``."""

    def __init__(self, device, limit=None):
        self.device = device
        self.limit = limit
        self.calls = 0
        self.latents = 0
        self.passes = 0
        self.first = None
        self.last = None

    def _mark(self):
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def span(self) -> float:
        if self.first is None:
            return float("nan")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return self.first.elapsed_time(self.last) / 1e3
        return self.last - self.first

    def attach(self, model):
        import comfy.patcher_extension as pe

        def calc_cond_batch(executor, model_base, conds, x_in, timestep, model_options):
            if self.limit is not None and self.calls >= self.limit:
                raise StopBench()
            if self.first is None:
                self.first = self._mark()
            out = executor(model_base, conds, x_in, timestep, model_options)
            self.calls += 1
            self.latents += int(x_in.shape[0])
            self.last = self._mark()
            return out

        def diffusion_model(executor, *args, **kwargs):
            self.passes += 1
            return executor(*args, **kwargs)

        m = model.clone()
        m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, BENCH_KEY, calc_cond_batch)
        m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, BENCH_KEY, diffusion_model)
        return m


def free_models():
    import comfy.model_management as mm
    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# network passes (sizes; the parts a patched step runs)
def network_inputs(kind, patcher, spec, batch, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, h, w = spec["latent"]
    x = torch.randn(batch, c, h, w, generator=g).to(device, dtype)
    ctx = torch.randn(batch, spec["tokens"], spec["ctx"], generator=g).to(device, dtype)
    if kind == "flux":
        t = torch.full((batch,), 0.5, device=device, dtype=dtype)
        kw = dict(y=torch.randn(batch, spec["pooled"], generator=g).to(device, dtype),
                  guidance=torch.full((batch,), 3.5, device=device, dtype=dtype))
    else:
        t = torch.full((batch,), 500.0, device=device)
        kw = {}
        if kind == "sdxl":
            kw["y"] = torch.randn(batch, spec["cfg"]["adm_in_channels"], generator=g).to(device, dtype)
    return x, t, ctx, kw


def one_call(kind, patcher, spec, batch, device, dtype):
    net = patcher.model.diffusion_model
    x, t, ctx, kw = network_inputs(kind, patcher, spec, batch, device, dtype)
    return lambda: net(x, t, context=ctx, transformer_options={}, **kw)


def _shrink(n, context, value, extra_options):
    """T-GATE's mechanism after the gate, for the bound: cross-attention on one token..."""
    extra_options["_bench_n"] = n
    return n[:, :1], (context[:, :1] if context is not None else None), (value[:, :1] if value is not None else None)


def _restore(n, extra_options):
    """...and a tensor of the full shape in place of its output (T-GATE returns its cache)."""
    return extra_options.pop("_bench_n", n)


def patch_passes(kind, patcher, spec, batch, device, dtype, reps):
    """Seconds of the network passes a step runs, at CFG batch 2*batch:
    full (uncached), shallow (DeepCache cached step: depth 0, the deep feature given), gated (T-GATE
    after the gate: cond batch only, cross-attention cut to one token) and shallow_gated (both)."""
    from fewstep.patches._unet import UNetLayout, forward_shallow

    unet = patcher.model.diffusion_model
    layout = UNetLayout(unet)
    entry = layout.entry_block(0)
    x, t, ctx, kw = network_inputs(kind, patcher, spec, 2 * batch, device, dtype)
    y = kw.get("y")
    grabbed = []

    def grab(h, hsp, to):
        if to.get("block") == ("output", entry):
            grabbed.append(h)
        return h, hsp

    unet(x, t, context=ctx, y=y, transformer_options={"patches": {"output_block_patch": [grab]}})
    deep = grabbed[-1]
    gate = {"patches": {"attn2_patch": [_shrink], "attn2_output_patch": [_restore]}}

    def full():
        unet(x, t, context=ctx, y=y, transformer_options={})

    def shallow():
        forward_shallow(unet, layout, 0, deep, x, t, ctx, y, None, {}, {})

    hb = slice(0, batch)
    yb = None if y is None else y[hb]

    def gated():
        unet(x[hb], t[hb], context=ctx[hb], y=yb, transformer_options={"patches": dict(gate["patches"])})

    def shallow_gated():
        forward_shallow(unet, layout, 0, deep[hb], x[hb], t[hb], ctx[hb], yb, None,
                        {"patches": dict(gate["patches"])}, {})

    return {k: time_call(f, device, reps) for k, f in
            (("full", full), ("shallow", shallow), ("gated", gated), ("shallow_gated", shallow_gated))}


def patch_bounds(passes: dict, steps: int) -> dict:
    """Bounds of the speedups from the pass costs (relative to a full pass): T / sum of per-step costs.

    DeepCache (uniform, interval 3): full steps cost 1, the others ``shallow``; T-GATE (40%): steps
    before the gate cost 1, the others ``gated``; both: before the gate 1 or shallow, after it gated
    or shallow_gated. Overheads (caching, the sampler, ComfyUI's CFG code) are not counted, so a
    measured ratio is at most about this."""
    from fewstep.patches.deepcache import full_steps

    f = passes["full"]
    r, g, rg = passes["shallow"] / f, passes["gated"] / f, passes["shallow_gated"] / f
    full = set(full_steps(steps, 3))
    gate = int(math.floor(0.4 * steps + 0.5))
    dc = sum(1.0 if i in full else r for i in range(steps))
    tg = sum(1.0 if i < gate else g for i in range(steps))
    both = sum((1.0 if i in full else r) if i < gate else (g if i in full else rg) for i in range(steps))
    return {"shares": {"shallow": r, "gated": g, "shallow_gated": rg},
            "deepcache": steps / dc, "tgate": steps / tg, "both": steps / both, "freeu": None}


# ------------------------------------------------------------------------------------------------
# sampling loop timings through ComfyUI
def patched_models(host, base, freeu_preset):
    N = host.NODES
    dc = N["FewStepDeepCache"]().patch(base, 3, 0, "uniform", 0.0, 1.0)[0]
    b1, b2, s1, s2 = 1.3, 1.4, 0.9, 0.2
    return {
        "uncached": base,
        "deepcache": dc,
        "tgate": N["FewStepTGate"]().patch(base, 0.4, False)[0],
        "both": N["FewStepTGate"]().patch(dc, 0.4, False)[0],
        "freeu": N["FewStepFreeU"]().patch(base, 2, b1, b2, s1, s2, 0.0, 1.0, freeu_preset)[0],
    }


def sampler(host):
    """FewStep DPM-Solver++(2M) as its node makes it."""
    return host.NODES["FewStepDPMSolverPP"]().get_sampler("2m", 1.0, 1.0, "brownian", True)[0]


def sample_seconds(model, ks, kind, tiny, batch, steps, cfg, device, pos, neg) -> tuple[float, bool]:
    """(seconds of the sampler loop, final latent finite) of one run through comfy.sample.sample_custom."""
    import comfy.sample
    import comfy.samplers

    spec = model_spec(kind, tiny)
    timer = Timer(device)
    fn = ks.sampler_function

    def timed(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **opts):
        timer.start()
        out = fn(model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **opts)
        timer.stop()
        return out

    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, spec["schedule"], steps).cpu()
    latent = torch.zeros((batch,) + tuple(spec["latent"]))
    noise = comfy.sample.prepare_noise(latent, 0)
    timer.sync()
    with torch.inference_mode():
        out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(timed, ks.extra_options,
                                         ks.inpaint_options), sigmas, pos, neg, latent, disable_pbar=True, seed=0)
    sec = timer.seconds()
    return sec, bool(torch.isfinite(out).all())


# ------------------------------------------------------------------------------------------------
# solvers
def count_loop_syncs(fn, device) -> dict:
    """Run ``fn(callback)`` under the torch profiler; count host syncs inside the sampling loop: events
    between the first and the last step callback. On a GPU: CUDA_SYNCS (a read of a device tensor's
    value, ``.item()``/``float()``/``.cpu()``, or a blocking host-device copy, shows as one); on the CPU,
    where nothing syncs, the reads of tensor values (SCALAR_READ) stand in for them. Returns counts
    in the loop and in the whole run, and the number of step marks."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def mark(_d):
        with record_function(STEP_MARK):
            pass

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    names = CUDA_SYNCS if device.type == "cuda" else (SCALAR_READ,)
    with profile(activities=acts) as prof:
        fn(mark)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    marks = sorted(e.time_range.start for e in events if e.name == STEP_MARK)
    hits = [e for e in events if e.name in names]
    reads = [e for e in events if e.name == SCALAR_READ]
    lo, hi = (marks[0], marks[-1]) if marks else (0, -1)
    return {"in_loop": sum(1 for e in hits if lo <= e.time_range.start <= hi),
            "per_run": len(hits),
            "reads_in_loop": sum(1 for e in reads if lo <= e.time_range.start <= hi),
            "steps_marked": len(marks)}


def sync_selftest(device) -> int:
    """count_loop_syncs on a loop that reads a device value after each of its 5 step marks: 4 of the
    reads lie inside the loop, so a working counter sees at least 4 (0 would mean the profiler shows no
    runtime events here, and a 0 for the solvers would prove nothing)."""
    v = torch.ones(64, device=device)

    def loop(mark):
        for i in range(5):
            mark(None)
            float((v * i).sum())

    return count_loop_syncs(loop, device)["in_loop"]


class Stub:
    """The k-diffusion model a sampler gets, without the network: a fixed output tensor. Carries what
    FewStep's node wrapper reads (``inner_model.model_patcher`` -> model_sampling)."""

    def __init__(self, out, model_sampling=None):
        self.out = out
        self.calls = 0
        patcher = types.SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.inner_model = types.SimpleNamespace(model_patcher=patcher)

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.out


NODE_SDE = "dpmpp_sde_2m via node (ComfyUI Brownian tree)"


def solver_cases(host):
    """(row name, fn(model, x, sigmas, extra_args, callback)) for every solver of the registry, plus
    the node path of DPM-Solver++ SDE 2M with ComfyUI's Brownian tree noise (what KSampler users get)."""
    from fewstep.samplers.registry import SOLVERS

    cases = []
    for name, spec in SOLVERS.items():
        cases.append((name, lambda m, x, s, e, cb, spec=spec: spec(m, x, s, e, cb, family="eps")))
    if host is not None:
        ks = host.NODES["FewStepDPMSolverPP"]().get_sampler("sde_2m", 1.0, 1.0, "brownian", True)[0]
        cases.append((NODE_SDE, lambda m, x, s, e, cb, ks=ks: ks.sampler_function(m, x, s, extra_args=e, callback=cb,
                                                                                 disable=True, **ks.extra_options)))
    return cases


def solver_rows(host, device, shapes: dict, steps: int, reps: int, budget: Budget) -> list:
    import comfy.model_base
    import comfy.supported_models

    from fewstep.core.model_sigmas import ModelSigmas
    from fewstep.schedules import get_schedule

    ms_fs = ModelSigmas.discrete_vp()
    ms_comfy = comfy.model_base.model_sampling(comfy.supported_models.SD15(dict(SD15)), comfy.model_base.ModelType.EPS)
    timer = Timer(device)
    rows = []
    planted = sync_selftest(device)
    counter_ok = planted >= 4
    print(f"  sync counter self-test: {planted} syncs seen for 4 planted reads", flush=True)
    sig = {n: get_schedule("karras", n, ms_fs).to(device, torch.float32) for n in (steps, 2 * steps)}
    for kind, shape in shapes.items():
        g = torch.Generator().manual_seed(1)
        out = (torch.randn((1,) + shape, generator=g) * 0.5).to(device)
        x0 = (torch.randn((1,) + shape, generator=g) * float(sig[steps][0])).to(device)
        for name, fn in solver_cases(host):
            row = {"section": "solvers", "item": name, "model": kind, "dtype": "fp32", "batch": 1, "values": {},
                   "note": ""}
            if not budget.allows(1.0, f"solvers {name} {kind}"):
                row["note"] = "skipped (budget)"
                rows.append(row)
                continue
            try:
                def run(n, cb=None):
                    stub = Stub(out, ms_comfy)
                    fn(stub, x0.clone(), sig[n], {"seed": 0}, cb or (lambda d: None))
                    return stub.calls

                with torch.inference_mode():
                    run(steps)  # warm-up
                    t = {}
                    calls = {}
                    for n in (steps, 2 * steps):
                        best = float("inf")
                        for _ in range(reps):
                            timer.sync()
                            t0 = time.perf_counter()
                            calls[n] = run(n)
                            timer.sync()
                            best = min(best, time.perf_counter() - t0)
                        t[n] = best
                    syncs = count_loop_syncs(lambda cb: run(steps, cb), device)
                per_step = max(0.0, (t[2 * steps] - t[steps]) / steps)
                row["values"] = {"overhead_ms": per_step * 1e3, "calls_per_step": (calls[2 * steps] - calls[steps]) / steps,
                                 "syncs_in_loop": syncs["in_loop"], "syncs_per_run": syncs["per_run"],
                                 "reads_in_loop": syncs["reads_in_loop"], "share": None}
                if not counter_ok:
                    row["values"]["syncs_in_loop"] = None
                    row["note"] = f"host syncs not counted: the profiler saw {planted} of 4 planted syncs"
                elif name == NODE_SDE and device.type == "cpu":
                    # torchsde's tree reads its own CPU tensors: the CPU stand-in does not apply (no sync there)
                    row["values"]["syncs_in_loop"] = None
                    row["note"] = (f"CPU: {syncs['in_loop']} reads of torchsde's own CPU tensors, not syncs; "
                                   "host syncs are counted on a GPU only")
                elif syncs["in_loop"]:
                    row["note"] = f"FAIL: {syncs['in_loop']} host syncs inside the loop"
            except Exception as e:  # a broken solver is a row with its error, not a lost table
                row["note"] = f"error: {type(e).__name__}: {e}"
            rows.append(row)
    rows.append({"section": "solvers", "item": "sync counter self-test", "model": "-", "dtype": "-", "batch": None,
                 "values": {"planted": 4, "seen": planted},
                 "note": "ok" if counter_ok else "FAIL: the profiler does not show the planted syncs"})
    return rows


# ------------------------------------------------------------------------------------------------
# trainers
def ays_call_counts(settings: dict, batch: int) -> dict:
    """Denoiser calls of FewStepAYSOptimize at ``settings`` (its widgets), each of at most ``batch``
    latents, read off schedules/ays_optimize.py (every interval estimate = 2 passes over the samples;
    a validation trial = one solver run over the pairs, one call per step; stage 2 replays the calls
    before the first changed sigma):

    * teacher: ceil(teacher samples / batch) x TEACHER_STEPS;
    * stage 1 (the bound, per start and level n): n intervals + one validation run to start, then per
      sweep and interior point: ``candidates`` x 2 new intervals + one validation run of the best;
    * stage 2 (align_to): one run to start, then per sweep sum over points i of align_candidates x (n - i)
      calls.
    ``one_sweep``: every stage stops after its first sweep with no move kept (the fewest a run that
    sweeps at all makes, but for candidates that coincide on the model's sigma grid). ``max``: every
    sweep of those stages runs. Both leave out what the optimizer does beyond them (every fixed start
    scored on held-out pairs, the safety check with four samplers, the final guard), so a real run
    makes more: ``one_sweep`` is a lower bound, and the row reports only that (at the node's defaults
    on the analytic model a run made 42652 calls against one_sweep 6332 and max 26168)."""
    from fewstep.schedules import ays_optimize as core

    sig = inspect.signature(core.optimize_ays).parameters
    c1, c2 = sig["candidates"].default, sig["align_candidates"].default
    tries = 1                      # the bound's best proposal per point is checked on the pairs
    starts = len(core.AUTO_INIT)
    samples, it = int(settings["samples"]), int(settings["iterations"])
    align = settings.get("align_to") in core.ALIGN_SOLVERS
    n_val = samples if align else min(samples, core.VALIDATION_PAIRS)
    nb, nv = -(-samples // batch), -(-n_val // batch)
    teacher = nb * core.TEACHER_STEPS
    out = {"teacher": teacher, "max": teacher, "one_sweep": teacher}
    for k, n in enumerate(core.levels_for(int(settings["steps"]))):
        reps = starts if k == 0 else 1
        start = n * 2 * nb + n * nv
        sweep_bound = (n - 1) * (c1 * 2 * 2 * nb + tries * n * nv)
        sweep_min = (n - 1) * c1 * 2 * 2 * nb
        out["max"] += reps * (start + it * sweep_bound)
        out["one_sweep"] += reps * (start + sweep_min)
        if align:
            s2 = c2 * nv * n * (n - 1) // 2
            out["max"] += n * nv + it * s2
            out["one_sweep"] += n * nv + s2
    return out


def trainer_rows(host, patcher, kind, tiny, dtype_name, device, pos, neg, ays_calls: int, budget: Budget,
                 per_call_guess: float) -> list:
    from fewstep.nodes import ays_optimize as ays_node

    spec = model_spec(kind, tiny)
    rows = []
    latent = {"samples": torch.zeros((1,) + tuple(spec["latent"]))}
    timer = Timer(device)
    for trainer in TRAINERS:
        row = {"section": "trainers", "item": trainer, "model": kind, "dtype": dtype_name, "batch": 1, "values": {},
               "note": ""}
        rows.append(row)
        node_cls = host.NODES[trainer]
        defaults = node_defaults(node_cls)
        if trainer == "FewStepOLSSTrain":
            short = dict(defaults, samples=1, name=BENCH_KEY)
            est = per_call_guess * defaults["teacher_steps"] * 1.3 + 5
            limit = None
        else:
            short = dict(defaults, name="")      # "" = do not save
            est = per_call_guess * ays_node.BATCH * ays_calls + 5
            limit = ays_calls
        if not budget.allows(est, f"trainers {trainer} {kind}"):
            row["note"] = "skipped (budget)"
            continue
        counter = CallCounter(device, limit)
        m = counter.attach(patcher)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            timer.sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                try:
                    if trainer == "FewStepOLSSTrain":
                        node_cls().train(m, pos, neg, latent, **short)
                    else:
                        node_cls().optimize(m, pos, neg, latent_image=latent, **short)
                except StopBench:
                    pass
            timer.sync()
            wall = time.perf_counter() - t0
            span = counter.span()
            per_call = span / max(counter.calls, 1)
            v = {"calls_measured": counter.calls, "passes_measured": counter.passes,
                 "latents_per_call": counter.latents / max(counter.calls, 1), "measured_s": wall,
                 "s_per_call": per_call,
                 "peak_vram_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
            if trainer == "FewStepOLSSTrain":
                per_sample = counter.calls / short["samples"]
                calls = int(round(per_sample * defaults["samples"]))
                fixed = max(0.0, wall - span)  # set-up, the fit and saving: once per run
                v.update(calls_default=calls, calls_default_min=calls, extrapolated_s=fixed + per_call * calls,
                         extrapolated_min_s=fixed + per_call * calls)
                formula = (f"samples {defaults['samples']} x {per_sample:g} calls per teacher run "
                           f"(teacher {defaults['teacher']} x {defaults['teacher_steps']} steps)")
                if per_sample != defaults["teacher_steps"]:
                    formula += f"; NOTE: expected {defaults['teacher_steps']} calls per run"
                row["note"] = (f"{formula}; measured on 1 sample: {wall:.1f} s, of it {fixed:.1f} s set-up + fit "
                               f"(added once)")
            else:
                n = ays_call_counts(defaults, ays_node.BATCH)
                # a lower bound only (ays_call_counts): the extrapolation is "at least"
                v.update(calls_default=n["one_sweep"], calls_default_min=n["one_sweep"],
                         extrapolated_s=per_call * n["one_sweep"], extrapolated_min_s=per_call * n["one_sweep"],
                         lower_bound_only=True)
                row["note"] = (f"stopped after {counter.calls} teacher calls of {ays_node.BATCH} latents; calls at the "
                               f"defaults (samples {defaults['samples']}, steps {defaults['steps']}, iterations "
                               f"{defaults['iterations']}, align_to {defaults['align_to']}): teacher {n['teacher']}, "
                               f"AT LEAST {n['one_sweep']} in all (each stage one sweep; the held-out starts, safety "
                               f"check and guard add more), so the time is a lower bound")
            goal = GOALS.get((trainer, kind))
            v["goal_s"] = goal
            if goal is not None:
                lo, hi = v["extrapolated_min_s"], v["extrapolated_s"]
                if v.get("lower_bound_only"):
                    v["goal_met"] = "no" if lo > goal else "unknown (lower bound only)"
                else:
                    v["goal_met"] = "yes" if hi <= goal else ("no" if lo > goal else "only if it stops early")
            row["values"] = v
        except Exception as e:
            row["note"] = f"error: {type(e).__name__}: {e}"
        finally:
            del m
            gc.collect()
    return rows


# ------------------------------------------------------------------------------------------------
# one model in one dtype: sizes, patches, trainers
def model_rows(host, kind, dtype_name, args, device, budget: Budget, want_patches: bool, want_trainers: bool) -> list:
    tiny = args.tiny
    dtype = DTYPES[dtype_name]
    spec = model_spec(kind, tiny)
    rows = []
    size_row = {"section": "sizes", "item": LABEL[kind], "model": kind, "dtype": dtype_name, "batch": 1,
                "values": {}, "note": ""}
    rows.append(size_row)
    t0 = time.perf_counter()
    patcher = build_model(kind, tiny, dtype, device, seed=0)
    net = patcher.model.diffusion_model
    params = sum(p.numel() for p in net.parameters())
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    with torch.inference_mode():
        f1 = one_call(kind, patcher, spec, 1, device, dtype)
        out = f1()
        finite = bool(torch.isfinite(out).all())
        call_s = time_call(f1, device, args.reps_call)
        call2_s = time_call(one_call(kind, patcher, spec, 2, device, dtype), device, args.reps_call)
    size_row["values"] = {"params_M": params / 1e6, "weights_GiB": weights / 2**30, "call_s": call_s,
                          "cfg_call_s": call2_s, "finite": finite}
    size_row["note"] = f"built in {time.perf_counter() - t0:.1f} s" + ("" if finite else "; output NOT finite")
    print(f"  {kind} {dtype_name}: {params / 1e6:.0f}M params, one call {call_s * 1e3:.1f} ms", flush=True)

    pos, neg = conditioning(kind, tiny, 1), conditioning(kind, tiny, 2)
    ks = sampler(host)
    configs = patched_models(host, patcher, spec["freeu"]) if kind in UNETS else {"uncached": patcher}
    for batch in (args.batches if want_patches else ()):
        prow = {}
        for name in PATCHES if kind in UNETS else ("uncached",):
            prow[name] = {"section": "patches", "item": PATCH_LABEL[name], "model": kind, "dtype": dtype_name,
                          "batch": batch, "values": {}, "note": ""}
            rows.append(prow[name])
        est_step = call2_s * batch * 1.2
        est = est_step * len(configs) * (3 + args.steps * args.rounds)
        if not budget.allows(est, f"patches {kind} {dtype_name} batch {batch}"):
            for r in prow.values():
                r["note"] = "skipped (budget)"
            continue
        try:
            for name, m in configs.items():  # warm-up: every path (full, cached, gated steps) once
                sample_seconds(m, ks, kind, tiny, batch, 3, args.cfg, device, pos, neg)
            best = {k: float("inf") for k in configs}
            finite_out = {}
            for _ in range(args.rounds):
                for name, m in configs.items():
                    sec, fin = sample_seconds(m, ks, kind, tiny, batch, args.steps, args.cfg, device, pos, neg)
                    best[name] = min(best[name], sec)
                    finite_out[name] = fin
            bounds = {}
            if kind in UNETS:
                with torch.inference_mode():
                    passes = patch_passes(kind, patcher, spec, batch, device, dtype, args.reps_call)
                bounds = patch_bounds(passes, args.steps)
            for name in configs:
                v = {"s_per_step": best[name] / args.steps, "ratio": best["uncached"] / best[name]}
                if name == "uncached" and bounds:
                    v.update({f"share_{k}": s for k, s in bounds["shares"].items()})
                    v["full_pass_s"] = passes["full"]
                elif name == "freeu":
                    v["overhead_pct"] = (best["freeu"] / best["uncached"] - 1.0) * 100.0
                elif name in ("deepcache", "tgate", "both"):
                    v["bound"] = bounds[name]
                prow[name]["values"] = v
                if not finite_out[name]:
                    prow[name]["note"] = "final latent NOT finite (random weights)"
            print(f"  {kind} {dtype_name} b{batch}: " + ", ".join(
                f"{k} {best[k] / args.steps * 1e3:.1f} ms/step" for k in configs), flush=True)
        except Exception as e:
            for r in prow.values():
                r["note"] = f"error: {type(e).__name__}: {e}"
    if kind not in UNETS and want_patches:
        rows.append({"section": "patches", "item": DIT_NOTE, "model": kind, "dtype": dtype_name, "batch": None,
                     "values": {}, "note": "DeepCache / T-GATE / FreeU are UNet patches; no DiT block patches yet"})
    if want_trainers and kind in UNETS:
        rows += trainer_rows(host, patcher, kind, tiny, dtype_name, device, pos, neg, args.ays_calls, budget,
                             call2_s)
    del configs, patcher, net, f1, out
    free_models()
    return rows


# ------------------------------------------------------------------------------------------------
# the table
def _fmt(v, unit="", digits=3):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v}{unit}"
    if not math.isfinite(v):
        return "nan"
    return f"{v:.{digits}g}{unit}"


def _cells(r) -> list:
    v = r["values"]
    s = r["section"]
    if s == "sizes":
        return [_fmt(v.get("call_s"), " s"), "-", "-",
                f"{_fmt(v.get('params_M'), 'M', 4)} params, {_fmt(v.get('weights_GiB'), ' GiB')}, CFG pair "
                f"{_fmt(v.get('cfg_call_s'), ' s')}" if v else ""]
    if s == "patches":
        other = []
        if "share_shallow" in v:
            other.append(f"pass shares: shallow {v['share_shallow']:.3f}, gated {v['share_gated']:.3f}, "
                         f"shallow+gated {v['share_shallow_gated']:.3f}")
        if "overhead_pct" in v:
            other.append(f"overhead {v['overhead_pct']:+.1f}%")
        return [_fmt(v.get("s_per_step"), " s/step"), _fmt(v.get("ratio")), _fmt(v.get("bound")), "; ".join(other)]
    if s == "solvers" and "planted" in v:
        return ["-", "-", "-", f"{v['seen']} syncs seen for {v['planted']} planted reads"]
    if s == "solvers":
        share = v.get("share")
        return [_fmt(v.get("overhead_ms"), " ms/step"), "-" if share is None else f"{share * 100:.3g}% of a UNet call",
                "-", f"host syncs in loop {_fmt(v.get('syncs_in_loop'))} (run {_fmt(v.get('syncs_per_run'))}), "
                     f"calls/step {_fmt(v.get('calls_per_step'))}" if v else ""]
    if s == "trainers":
        if not v:
            return ["-", "-", "-", ""]
        ext = f"{_fmt(v['extrapolated_min_s'], ' s')}" if v["extrapolated_min_s"] == v["extrapolated_s"] else \
            f"{_fmt(v['extrapolated_min_s'], ' s')} to {_fmt(v['extrapolated_s'], ' s')}"
        goal = "-" if v.get("goal_s") is None else f"goal <= {v['goal_s']:.0f} s: {v['goal_met']}"
        mem = "-" if v.get("peak_vram_GiB") is None else f"{v['peak_vram_GiB']:.2f} GiB"
        return [ext, "-", goal, f"{v['calls_measured']} calls in {v['measured_s']:.1f} s "
                f"({v['s_per_call']:.3g} s/call); calls at defaults {v['calls_default_min']}"
                + ("" if v["calls_default_min"] == v["calls_default"] else f" to {v['calls_default']}")
                + f"; peak VRAM {mem}"]
    return ["-", "-", "-", ""]


def markdown(data: dict) -> str:
    m = data["meta"]
    lines = [f"FewStep GPU benchmark, {m['date']}: `{m['command']}`", "",
             f"- device: {m['device_name']} ({m['device']}); torch {m['torch']}, CUDA {m['cuda']}; "
             f"ComfyUI {m['comfyui_version']} at `{m['comfyui']}`",
             f"- sizes: {'--tiny (toy sizes, not a speed claim)' if m['tiny'] else 'full'}; dtypes {', '.join(m['dtypes'])}; "
             f"{m['steps']} steps FewStep DPM-Solver++(2M), CFG {m['cfg']}, batches {m['batches']}; best of "
             f"{m['rounds']} rounds; total {m['elapsed_s']:.0f} s (budget {m['budget_s']:.0f} s)", "",
             "| section | item | model | dtype | batch | time | ratio | bound / goal | other | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        c = _cells(r)
        lines.append(f"| {r['section']} | {r['item']} | {r['model']} | {r['dtype']} | {_fmt(r['batch'])} | "
                     + " | ".join(c) + f" | {r['note']} |")
    for n in data.get("notes", []):
        lines.append(f"\n- {n}")
    if data.get("skipped"):
        lines.append("\nSkipped for --budget-s: " + "; ".join(data["skipped"]))
    return "\n".join(lines) + "\n"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_table(data: dict, dtypes, batches=(1, 4), device="cpu") -> list:
    """Problems with a written table: a row missing, or a number that is missing or not finite.
    Every model x dtype (sizes), every patch configuration x batch for the UNets and uncached for the
    DiT plus the DiT-patches row, every registry solver x UNet latent with no host sync in its loop,
    both trainers x UNet with a finite extrapolation (and peak VRAM on a GPU)."""
    from fewstep.samplers.registry import SOLVERS

    rows = data.get("rows", [])
    problems = []

    def find(section, item, model, dtype=None, batch=None):
        for r in rows:
            if r["section"] == section and r["item"] == item and r["model"] == model and \
                    (dtype is None or r["dtype"] == dtype) and (batch is None or r["batch"] == batch):
                return r
        problems.append(f"missing row: {section} / {item} / {model} / {dtype} / batch {batch}")
        return None

    def need(r, keys, label):
        if r is None:
            return
        for k in keys:
            if not _finite(r["values"].get(k)):
                problems.append(f"{label}: {k} = {r['values'].get(k)!r} ({r['note'] or 'no note'})")

    for dt in dtypes:
        for kind in MODELS:
            need(find("sizes", LABEL[kind], kind, dt), ("params_M", "call_s", "cfg_call_s"), f"sizes {kind} {dt}")
            for b in batches:
                for p in (PATCHES if kind in UNETS else ("uncached",)):
                    keys = ["s_per_step", "ratio"] + (["bound"] if p in ("deepcache", "tgate", "both") else []) \
                        + (["overhead_pct"] if p == "freeu" else []) + \
                        (["share_shallow", "share_gated", "share_shallow_gated"] if p == "uncached" and kind in UNETS else [])
                    need(find("patches", PATCH_LABEL[p], kind, dt, b), keys, f"patches {kind} {dt} b{b} {p}")
        find("patches", DIT_NOTE, "flux", dt)
    st = find("solvers", "sync counter self-test", "-")
    if st is not None and not (st["values"].get("seen", 0) >= 4):
        problems.append(f"solvers: the sync counter saw {st['values'].get('seen')!r} of 4 planted syncs")
    for kind in UNETS:
        for name in SOLVERS:
            r = find("solvers", name, kind)
            need(r, ("overhead_ms", "share", "calls_per_step", "syncs_in_loop"), f"solvers {name} {kind}")
            if r is not None and r["values"].get("syncs_in_loop") not in (0, None):
                problems.append(f"solvers {name} {kind}: {r['values']['syncs_in_loop']} host syncs inside the loop")
        for t in TRAINERS:
            keys = ["calls_measured", "measured_s", "s_per_call", "calls_default", "extrapolated_s", "extrapolated_min_s"]
            if device == "cuda":
                keys.append("peak_vram_GiB")
            need(find("trainers", t, kind, dtypes[0]), keys, f"trainers {t} {kind}")
    return problems


# ------------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", help="ComfyUI source tree (default: $COMFYUI_PATH, an enclosing ComfyUI, "
                                      "~/comfy/ComfyUI, ../shared/comfyui); only read")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="toy sizes of every model (seconds on a CPU; the tests)")
    ap.add_argument("--dtype", help="comma-separated of fp16, bf16, fp32 (default fp16,bf16 on cuda, fp32 on cpu, "
                                    "where half precision is slow and says nothing); trainers run in the first")
    ap.add_argument("--out", help="folder for gpu.json and gpu.md (the printed table)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip rows that would end after this many "
                                                                 "seconds (default 420: the run ends within 8 min)")
    ap.add_argument("--steps", type=int, help="sampling steps of the patch rows (default 10; --tiny 4)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--rounds", type=int, help="timed rounds of every patch configuration, the fastest kept "
                                               "(default 2; --tiny 1)")
    ap.add_argument("--reps-call", type=int, help="timed repetitions of a single network pass (default 5; --tiny 2)")
    ap.add_argument("--solver-steps", type=int, help="solver rows: per-step time from N and 2N steps (default 10; "
                                                     "--tiny 4)")
    ap.add_argument("--ays-calls", type=int, help="model calls the shortened AYS Optimize run makes (default 6; "
                                                  "--tiny 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only", default="", help="comma-separated subset of sizes,patches,solvers,trainers "
                                               "(default all; a model's sizes row comes with its other rows)")
    a = ap.parse_args(argv)
    for name, full, tiny in (("steps", 10, 4), ("rounds", 2, 1), ("reps_call", 5, 2), ("solver_steps", 10, 4),
                             ("ays_calls", 6, 3)):
        if getattr(a, name) is None:
            setattr(a, name, tiny if a.tiny else full)
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.dtype is None:
        a.dtype = "fp16,bf16" if a.device == "cuda" else "fp32"
    a.dtypes = [d.strip() for d in a.dtype.split(",") if d.strip()]
    for d in a.dtypes:
        if d not in DTYPES:
            ap.error(f"--dtype: {d!r} is not one of {sorted(DTYPES)}")
    a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    if not a.batches or any(b < 1 for b in a.batches):
        ap.error("--batches: positive integers, e.g. 1,4")
    if a.steps < 3:
        ap.error("--steps must be at least 3 (DeepCache needs cached steps)")
    a.only = {s.strip() for s in a.only.split(",") if s.strip()} or set(SECTIONS)
    if a.only - set(SECTIONS):
        ap.error(f"--only: {sorted(a.only - set(SECTIONS))} not among {SECTIONS}")
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_fewstep_importable()
    comfy_path = find_comfyui(args.comfyui)
    scratch = Path(tempfile.mkdtemp(prefix="fewstep-gpu-bench-"))
    t = time.perf_counter()
    host = import_comfyui(comfy_path, device, scratch)
    print(f"ComfyUI {host.version} at {comfy_path} imported in {time.perf_counter() - t:.1f} s", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "device": args.device, "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else
            f"CPU ({torch.get_num_threads()} torch threads)", "torch": torch.__version__, "cuda": torch.version.cuda,
            "comfyui": str(comfy_path), "comfyui_version": host.version, "tiny": args.tiny, "dtypes": args.dtypes,
            "steps": args.steps, "cfg": args.cfg, "batches": args.batches, "rounds": args.rounds,
            "budget_s": args.budget_s}
    print(f"torch {meta['torch']}, CUDA {meta['cuda']}, device {meta['device_name']}", flush=True)
    rows = []
    sections_t = {}

    shapes = {k: model_spec(k, args.tiny)["latent"] for k in UNETS}
    if "solvers" in args.only:
        t = time.perf_counter()
        rows += solver_rows(host, device, shapes, args.solver_steps, 3, budget)
        sections_t["solvers"] = time.perf_counter() - t
        print(f"[solvers] {sections_t['solvers']:.1f} s (elapsed {budget.elapsed():.0f} s)", flush=True)

    call_s = {}
    for kind in MODELS:
        for i, dt in enumerate(args.dtypes):
            trainers = i == 0 and kind in UNETS and "trainers" in args.only
            if not ({"sizes", "patches"} & args.only or trainers):
                continue
            t = time.perf_counter()
            if not budget.allows(15.0 if device.type == "cuda" else 2.0, f"{kind} {dt}"):
                rows.append({"section": "sizes", "item": LABEL[kind], "model": kind, "dtype": dt, "batch": 1,
                             "values": {}, "note": "skipped (budget)"})
                continue
            try:
                got = model_rows(host, kind, dt, args, device, budget, "patches" in args.only, trainers)
            except Exception as e:
                got = [{"section": "sizes", "item": LABEL[kind], "model": kind, "dtype": dt, "batch": 1, "values": {},
                        "note": f"error: {type(e).__name__}: {e}"}]
                free_models()
            rows += got
            for r in got:
                if r["section"] == "sizes" and r["values"].get("call_s") and kind not in call_s:
                    call_s[kind] = r["values"]["call_s"]
            sections_t[f"{kind} {dt}"] = time.perf_counter() - t
            print(f"[{kind} {dt}] {sections_t[f'{kind} {dt}']:.1f} s (elapsed {budget.elapsed():.0f} s)", flush=True)

    for r in rows:  # solver shares of one UNet call (the first dtype's batch-1 call)
        if r["section"] == "solvers" and r["values"] and call_s.get(r["model"]):
            r["values"]["share"] = r["values"]["overhead_ms"] / 1e3 / call_s[r["model"]]

    notes = [
        "patches: time = the sampler loop (all steps, CFG included) / steps; ratio = uncached / this; bound = "
        "T / sum of per-step pass costs, each measured as one network pass relative to a full pass (shares "
        "in the uncached row): DeepCache steps run the shallow pass, T-GATE steps after the gate a cond-only "
        "pass with cross-attention cut to one token (patch_bounds)",
        "solvers: time per step of the solver alone (model stub), from runs of N and 2N steps; share of one "
        "UNet call at batch 1 without CFG in the first dtype; host syncs counted with the torch profiler "
        "between the first and last step callback (" + ("/".join(CUDA_SYNCS) if device.type == "cuda" else
                                                        f"{SCALAR_READ}, the CPU stand-in") + ")",
        "trainers: wall time extrapolated to the node defaults = per-call time x calls at the defaults "
        "(+ the measured set-up and fit for OLSS); AYS Optimize's calls depend on early stopping, so a range "
        "(ays_call_counts); peak VRAM of the shortened run, weights included",
        "sections (s): " + ", ".join(f"{k} {v:.0f}" for k, v in sections_t.items()),
    ]
    meta["elapsed_s"] = budget.elapsed()
    data = {"meta": meta, "rows": rows, "notes": notes, "skipped": budget.skipped}
    md = markdown(data)
    print("\n" + md, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.json", json.dumps(data, indent=1, default=str)), ("gpu.md", md)):
            tmp = out / f".{name}.tmp{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, out / name)
        print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    bad_sync = [r for r in rows if r["section"] == "solvers" and (r["values"].get("syncs_in_loop")
                                                                 or r["note"].startswith("FAIL"))]
    errors = [r for r in rows if r["note"].startswith("error")]
    if bad_sync:
        print("FAIL: host syncs inside the sampling loop: " + ", ".join(f"{r['item']} ({r['model']})" for r in bad_sync))
    if errors:
        print("FAIL: rows with errors: " + ", ".join(f"{r['section']} {r['item']} {r['model']} {r['dtype']}" for r in errors))
    print(f"done in {budget.elapsed():.0f} s")
    return 1 if (bad_sync or errors) else 0


if __name__ == "__main__":
    sys.exit(main())
