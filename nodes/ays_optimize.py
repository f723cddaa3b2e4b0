"""FewStepAYSOptimize: an Align-Your-Steps schedule computed for the connected model.

The optimiser is ``schedules/ays_optimize.py`` (torch only). This node only gives it ComfyUI's real
denoiser: everything runs inside ``comfy.sample.sample_custom`` with a SAMPLER whose function is the
optimisation, so the model is loaded, the conditioning prepared and CFG, LoRA, ControlNet and model
patches applied exactly as when sampling. The "sampling" result is discarded; the schedule is the output.
"""
from __future__ import annotations

import logging
import math
import os

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from ..core.io import atomic_save, check_file_stem, check_save_target
from ..core.seeds import fold_seed
from ..schedules import ays_optimize as core
from . import ays_align
from ..core.validate import check_int
from ..comfy_adapter import family_of_k_model, is_discrete as _is_discrete_sampling, model_sampling_of, model_sigmas_of
from .common import StageText, model_fingerprint, outputs, sigmas_out
from ..schedules.ays_file import AYS_FORMAT
from .schedulers import AYS_FOLDER, register_folder

log = logging.getLogger("FewStep")

NODE = "FewStepAYSOptimize"
STEPS_RANGE = (2, 200)
ITERATIONS_RANGE = (1, 50)
SAMPLES_RANGE = (core.MIN_SAMPLES, 1024)
TEACHER_STEPS = core.TEACHER_STEPS
VALIDATION_PAIRS = core.VALIDATION_PAIRS
#: align_to: FewStep's solvers by their old names (a saved workflow's "dpmpp_2m" still means FewStep's
#: DPM-Solver++(2M)), the paper's method alone, then every sampler of ComfyUI's KSampler list as
#: "KSampler: <name>" (appended; ays_align.align_choices), ComfyUI's dpmpp_2m the default
ALIGN_NONE = "none (the paper's bound only)"
ALIGN_CHOICES = core.ALIGN_SOLVERS + (ALIGN_NONE,)
DEFAULT_ALIGN = ays_align.DEFAULT_ALIGN
#: teacher pairs held out of every fit: they choose the start and guard the result
HOLDOUT_PAIRS = 32
#: the held-out teacher noise is drawn with seed + this (the fitted pairs use seed)
HOLDOUT_SEED_OFFSET = 0x9E3779B1
#: the best starts (on the held-out pairs) that are refined
REFINE_STARTS = 2


def align_choices() -> list:
    return ays_align.align_choices(core.ALIGN_SOLVERS, ALIGN_NONE)
#: latents per model call
BATCH = 8
#: latent size (H, W) of the teacher samples when no latent_image gives one (512 x 512 px)
DEFAULT_LATENT_HW = (64, 64)


def _int(value, lo, hi, widget):
    return check_int(value, lo, hi, widget, NODE)


def check_name(name) -> str:
    """'' (do not save) or a safe file stem (core/io.py's check_file_stem: no folders, no Windows device
    names, no trailing '.')."""
    return check_file_stem(name, f"{NODE}: name", empty_means="do not save")


def latent_channels(model) -> int:
    return int(model.model.latent_format.latent_channels)


def latent_dims(model) -> int:
    return int(getattr(model.model.latent_format, "latent_dimensions", 2))


def data_from_latent(model, latent_image, samples: int):
    """(data latents or None, the per-latent size after the channels) from the optional LATENT.

    An all-zero latent (Empty Latent Image, or a video model's empty latent) only gives the size of the
    teacher samples; any other latent (VAE-encoded images) is the data: its first ``samples``
    latents, in the model's space."""
    want = latent_channels(model)
    dims = latent_dims(model)
    if latent_image is None:
        if dims != 2:
            raise ValueError(f"{NODE}: this model's latents have {dims} dimensions after the channels (video or "
                             "audio): connect latent_image (an empty latent of the size you sample at)")
        return None, DEFAULT_LATENT_HW
    if not isinstance(latent_image, dict) or "samples" not in latent_image:
        raise ValueError(f"{NODE}: latent_image is not a LATENT")
    lat = latent_image["samples"]
    if lat.ndim != dims + 2:
        raise ValueError(f"{NODE}: latent_image must have shape (batch, channels, {dims} sizes) for this model, got "
                         f"shape {tuple(lat.shape)}")
    size = tuple(int(v) for v in lat.shape[2:])
    if not bool(lat.any()):
        return None, size
    if lat.shape[1] != want:
        raise ValueError(f"{NODE}: latent_image has {lat.shape[1]} channels, but this model's latents have {want} "
                         "(encode the images with this model's VAE)")
    if not torch.isfinite(lat).all():
        raise ValueError(f"{NODE}: latent_image contains NaN or inf")
    if lat.shape[0] < samples:
        raise ValueError(f"{NODE}: samples is {samples}, but latent_image holds only {lat.shape[0]} latents: lower "
                         f"samples to at most {lat.shape[0]} (at least {core.MIN_SAMPLES}) or encode more images")
    x0 = model.model.process_latent_in(lat[:samples].float())
    return x0, size


def is_discrete(model) -> bool:
    """Networks of discrete EPS models (SD1.x, SDXL) take integer timesteps: round to their grid."""
    return _is_discrete_sampling(model_sampling_of(model))


class FewStepAYSOptimize:
    DESCRIPTION = ("Align Your Steps for THIS model (Sabour, Fidler, Kreis 2024): refines a schedule to minimise "
                   "the KL upper bound between the reverse SDE and its discretisation, estimated with the model's "
                   "own denoiser (CFG, LoRA and patches included), at 10 steps, then 20 and 40 as needed; early "
                   "stopping on the sampling error of teacher samples; then (align_to, FewStep's extension) "
                   "refines it on that sampling error itself with your solver. Outputs SIGMAS for `steps` and saves "
                   "the schedule for FewStep Align Your Steps' saved_schedule dropdown.")
    CATEGORY = "sampling/fewstep/schedulers"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("SIGMAS", "sigmas", "The optimised schedule: steps+1 sigmas from the model's sigma_max, ending in 0. It "
                             "is aligned to the align_to sampler: sample with that one."),
        ("STRING", "report", "What was done: every fixed start's held-out error, which start won, how much the "
                             "schedule improved on it, and the final guard's check with other samplers."))
    FUNCTION = "optimize"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to compute the schedule for (with its LoRAs and patches)."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning: the bound is estimated on what you "
                                                     "will sample."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning (used when cfg is not 1)."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                    "CFG scale of the denoiser the schedule is made for: use the cfg you will sample with."}),
            "steps": ("INT", {"default": 10, "min": STEPS_RANGE[0], "max": STEPS_RANGE[1], "tooltip":
                      "Steps of the output SIGMAS. The optimiser refines 10 steps, then 20 and 40 when steps is "
                      "larger; other counts are log-linear interpolations (the paper's rule)."}),
            "iterations": ("INT", {"default": 4, "min": ITERATIONS_RANGE[0], "max": ITERATIONS_RANGE[1], "tooltip":
                           "The most refinement sweeps per level (each visits every interior sigma once). It often "
                           "stops earlier: the bound is looser than the real error, so a move is kept only when it "
                           "also lowers the sampling error of the teacher samples, and the sweeps stop when none "
                           "is kept."}),
            "samples": ("INT", {"default": 32, "min": SAMPLES_RANGE[0], "max": SAMPLES_RANGE[1], "tooltip":
                        "Teacher samples generated by the model "
                        f"({TEACHER_STEPS}-step DPM-Solver++(2M)): the data latents of the Monte-Carlo estimate "
                        "(unless a non-empty latent_image gives them) and the pairs align_to refines on. More "
                        "samples: a schedule that holds for more seeds; the cost grows linearly. 32 is quick; "
                        "128-512 when the schedule will be used a lot. align_to needs at least "
                        f"{core.ALIGN_MIN_PAIRS}."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip":
                     "Seed of the teacher noise and of the estimator's random numbers: the same seed gives the "
                     "same schedule."}),
            "name": ("STRING", {"default": "ays_optimized", "tooltip":
                     f"File name in models/{AYS_FOLDER} (letters, digits, _ - . and spaces; an existing file is "
                     "replaced). Empty: do not save."}),
        }, "optional": {
            "latent_image": ("LATENT", {"tooltip":
                             "Optional. VAE-encoded images: the data latents of the estimate (no teacher needed "
                             "for them). An Empty Latent: only sets the size of the teacher samples. Not "
                             f"connected: teacher samples at {DEFAULT_LATENT_HW[0] * 8}x{DEFAULT_LATENT_HW[1] * 8} "
                             "pixels."}),
            "align_to": (align_choices(), {"default": DEFAULT_ALIGN, "tooltip":
                         "Stage 2 (FewStep's extension of the paper): after the bound's refinement, refine the "
                         "schedule on the sampling error of the teacher samples with this sampler, one sigma at a "
                         "time, keeping significant improvements only. Pick the sampler you will sample with: "
                         "\"KSampler: <name>\" is that sampler of ComfyUI's KSampler list, run through ComfyUI's "
                         "own KSAMPLER (default: KSampler: dpmpp_2m); the plain names (dpmpp_2m, euler, ...) are "
                         "FewStep's solvers, as in workflows saved before. The result is then checked on held-out "
                         "teacher samples with ComfyUI's euler, dpmpp_2m and uni_pc and FewStep's 2M, and replaced "
                         "by a safer candidate if it is far worse with any of them. Needs samples >= "
                         f"{core.ALIGN_MIN_PAIRS}. \"{ALIGN_NONE}\": the paper's method alone."}),
        }}

    def optimize(self, model, positive, negative, cfg, steps, iterations, samples, seed, name, latent_image=None,
                 align_to=DEFAULT_ALIGN):
        steps, iterations, samples, seed, name, align, comfy_name = _checked_inputs(
            cfg, steps, iterations, samples, seed, name, align_to)
        x0_data, size = data_from_latent(model, latent_image, samples)
        ms = model_sigmas_of(model)
        shape = (latent_channels(model),) + tuple(size)
        if align is not None:       # stage 2 refines on every teacher pair
            n_val = n_teacher = samples
        else:                       # the paper's method: the pairs only check the bound's moves
            n_val = min(samples, VALIDATION_PAIRS) if x0_data is None else min(max(2, samples // 4), VALIDATION_PAIRS)
            n_teacher = samples if x0_data is None else n_val
        levels = core.levels_for(steps)
        opt_ticks = sum(iterations * (n - 1) * (REFINE_STARTS + (align is not None) if k == 0 else
                                                1 + (align is not None)) for k, n in enumerate(levels))
        teacher_ticks = -(-n_teacher // BATCH) + -(-HOLDOUT_PAIRS // BATCH)
        pbar = comfy.utils.ProgressBar(teacher_ticks + opt_ticks)
        interrupt = comfy.model_management.throw_exception_if_processing_interrupted
        got = {}
        # stage text on the node (teacher / refine / align, sweep k of n, ETA): ComfyUI's progress text
        stage = StageText("AYS Optimize")

        def say(text):
            stage.show(text, pbar.current, pbar.total)

        def run(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
            extra = dict(extra_args or {})
            extra["denoise_mask"] = None  # no inpainting mask: the bound is taken on the whole latent
            fam = family_of_k_model(model_k)

            def denoiser(xb, sig, **kw):
                # a ComfyUI sampler passes its extra_args (a cfg_pp one its own model_options): use them
                return model_k(xb, sig.to(xb.device, xb.dtype), **(kw or extra))

            x_T, x_teacher, h_T, h_teacher = _teacher_pairs(denoiser, ms, n_teacher, shape, seed, x.device,
                                                            interrupt, pbar, say)
            x0 = x_teacher if x0_data is None else x0_data.to(x.device, torch.float32)
            validation = (x_T[:n_val], x_teacher[:n_val])
            solver, cache, checks = _solvers(comfy_name, model_k, extra, fam)
            got["result"] = core.optimize_ays(
                denoiser, x0, ms, steps=steps, iterations=iterations, seed=seed, discrete=is_discrete(model),
                batch_size=BATCH, validation=validation,
                progress=lambda d, t: pbar.update_absolute(teacher_ticks + d, teacher_ticks + t),
                stage=say, interrupt=lambda: interrupt(), align=align, solver=solver, align_cache=cache,
                holdout=(h_T, h_teacher), check_solvers=checks, refine_starts=REFINE_STARTS)
            if fam != ms.family:
                raise RuntimeError(f"{NODE}: the sampling model is {fam}, its model_sampling says {ms.family}")
            return x

        start = sigmas_out(torch.tensor([ms.sigma_max, 0.0], dtype=torch.float64))
        latent = torch.zeros((1,) + shape)
        noise = torch.zeros_like(latent)
        comfy.sample.sample_custom(model, noise, float(cfg), comfy.samplers.KSAMPLER(run), start, positive,
                                   negative, latent, disable_pbar=True, seed=seed)
        aligned = None if align is None else ays_align.align_id(align_to)
        return _finish(got["result"], aligned, name, model, float(cfg), seed, samples, iterations, align_to,
                       "latent_image" if x0_data is not None else "teacher")


def _checked_inputs(cfg, steps, iterations, samples, seed, name, align_to):
    """The node's widgets, checked (errors name the widget and its range), before the long run:
    (steps, iterations, samples, seed, name, align, comfy_name)."""
    steps = _int(steps, *STEPS_RANGE, "steps")
    iterations = _int(iterations, *ITERATIONS_RANGE, "iterations")
    if isinstance(samples, int) and not isinstance(samples, bool) and samples < SAMPLES_RANGE[0]:
        raise ValueError(f"{NODE}: samples is {samples}: too few for a Monte-Carlo estimate (and its standard "
                         f"error); use at least {SAMPLES_RANGE[0]} (16-64 is typical)")
    samples = _int(samples, *SAMPLES_RANGE, "samples")
    if not (isinstance(cfg, (int, float)) and math.isfinite(cfg) and 0 <= cfg <= 100):
        raise ValueError(f"{NODE}: cfg must be in [0, 100], got {cfg!r}")
    seed = fold_seed(_int(seed, 0, 0xffffffffffffffff, "seed"))  # every stage gets this one value
    name = check_name(name)
    if name:  # before the long run: a folder of that name cannot be replaced
        check_save_target(os.path.join(schedule_dir(), name + ".safetensors"), f"{NODE}: name")
    choices = align_choices()
    if not isinstance(align_to, str) or align_to not in choices:
        raise ValueError(f"{NODE}: align_to must be one of {choices}, got {align_to!r}")
    align = None if align_to == ALIGN_NONE else align_to
    comfy_name = align_to[len(ays_align.KSAMPLER_PREFIX):] if align_to.startswith(ays_align.KSAMPLER_PREFIX) \
        else None
    if align is not None and samples < core.ALIGN_MIN_PAIRS:
        raise ValueError(f"{NODE}: samples is {samples}, but align_to {align_to} needs at least "
                         f"{core.ALIGN_MIN_PAIRS} teacher samples (with fewer it fits them and samples other "
                         f"seeds worse): raise samples to {core.ALIGN_MIN_PAIRS} or more, or set align_to to "
                         f"\"{ALIGN_NONE}\"")
    return steps, iterations, samples, seed, name, align, comfy_name


def _teacher_pairs(denoiser, ms, n_teacher, shape, seed, dev, interrupt, pbar, say=lambda text: None):
    """(x_T, x_teacher) of the fitted pairs and (h_T, h_teacher) of the held-out pairs."""
    first = -(-n_teacher // BATCH)

    def tick(value, text):
        pbar.update_absolute(value)
        say(text)

    x_T, x_teacher = core.teacher_samples(
        denoiser, ms, n_teacher, shape, seed=seed, teacher_steps=TEACHER_STEPS, batch_size=BATCH,
        device=dev, dtype=torch.float32, interrupt=lambda: interrupt(),
        progress=lambda done, total: tick(-(-done // BATCH), f"teacher samples: {done} of {total}"))
    h_T, h_teacher = core.teacher_samples(
        denoiser, ms, HOLDOUT_PAIRS, shape, seed=holdout_seed(seed), teacher_steps=TEACHER_STEPS,
        batch_size=BATCH, device=dev, dtype=torch.float32, interrupt=lambda: interrupt(),
        progress=lambda done, total: tick(first + -(-done // BATCH), f"held-out teacher samples: {done} of {total}"))
    say("teacher samples: done")
    return x_T, x_teacher, h_T, h_teacher


def _solvers(comfy_name, model_k, extra, fam):
    """(the solver to align to or None for FewStep's, whether its prefix cache is exact, the check solvers)."""
    if comfy_name is not None:
        solver = ays_align.comfy_solver(comfy_name, model_k, extra)
        cache = comfy_name in ays_align.CACHE_SAFE
    else:
        solver, cache = None, None
    checks = {f"ComfyUI {n}": ays_align.comfy_solver(n, model_k, extra) for n in ays_align.CHECK_COMFY}
    checks.update({f"FewStep {n}": core._solver_fn(n, fam) for n in ays_align.CHECK_FEWSTEP})
    return solver, cache, checks


def _finish(res, aligned, name, model, cfg, seed, samples, iterations, align_to, data):
    """Report, save (with a name) and the node's output."""
    report = report_text(res, aligned)
    summary = summary_text(res, aligned)
    log.info("FewStep AYS optimise: %s\n%s", summary, report)
    if name:
        path = save_schedule(res, name, model, cfg=cfg, seed=seed, samples=samples, iterations=iterations,
                             align_to=align_to, aligned_sampler=aligned or "", data=data)
        log.info("FewStep: saved the AYS schedule to %s", path)
        report += f"\nsaved to {path}"
    ays_align.show_on_node(summary)
    out = sigmas_out(res.sigmas)
    # "ui": the graph editor draws the optimised schedule on the node (js/fewstep_preview.js); "text":
    # the summary (also shown on the node as progress text)
    return {"ui": {"fewstep_sigmas": [float(v) for v in out], "text": [summary]}, "result": (out, report)}


def holdout_seed(seed: int) -> int:
    return fold_seed((int(seed) + HOLDOUT_SEED_OFFSET) % (1 << 64))


def summary_text(res: core.AYSResult, aligned: str | None) -> str:
    """One paragraph for the node: which start won and by how much the schedule improved on it."""
    who = ays_align.describe(aligned) if aligned else "FewStep's DPM-Solver++(2M) (the paper's bound only)"
    if res.final_error is None:
        return f"AYS schedule for {who}"
    start = (f"start {res.init} (held-out error {res.start_error:.4g}, best of {len(res.start_errors)} fixed "
             "schedules)" if res.start_error is not None else f"start {res.init}")
    if res.kept.startswith("fixed:"):
        return (f"Aligned to {who}: {start}; no optimised schedule beat the best fixed schedule safely, so the "
                f"output IS the fixed schedule {res.kept[6:]} (held-out error {res.final_error:.4g}). {res.guard}")
    gain = res.start_error / res.final_error if res.start_error and res.final_error else float("nan")
    best = res.fixed_errors.get(res.best_fixed)
    return (f"Aligned to {who}: {start} -> {res.final_error:.4g} on the held-out teacher samples, {gain:.2f}x better "
            f"than its start" + (f", {res.final_error / best:.2f}x the best fixed schedule ({res.best_fixed})"
                                 if best else "") + f". Kept: {res.kept}. Sample with {who}.")


def report_text(res: core.AYSResult, aligned: str | None = None) -> str:
    lines = []
    if res.start_errors:
        lines.append("fixed starts, held-out error: " + ", ".join(
            f"{k} {v:.4g}" for k, v in sorted(res.start_errors.items(), key=lambda kv: kv[1])))
        lines.append(f"kept start: {res.init} ({res.start_error:.4g}); refined: " + ", ".join(
            f"{k} {v[0]:.4g} -> {v[1]:.4g}" for k, v in res.starts.items()))
    for n in sorted(res.levels):
        k0, k1 = res.klub[n]
        line = f"{n} steps: KLUB {k0:.4g} -> {k1:.4g} in {res.sweeps[n]} sweep(s); {res.stop_reason[n]}"
        if n in res.validation:
            v0, v1 = res.validation[n]
            line += f"; sampling error on teacher samples {v0:.4g} -> {v1:.4g}"
        if n in res.aligned:
            a0, a1, sw, why = res.aligned[n]
            line += f"\n  aligned to {res.align}: sampling error {a0:.4g} -> {a1:.4g} in {sw} sweep(s); {why}"
        lines.append(line)
    if res.guard:
        lines.append("final guard (held-out teacher samples): " + res.guard)
    if aligned:
        lines.append(f"aligned to {ays_align.describe(aligned)}")
    lines.append("sigmas: " + ", ".join(f"{float(v):.4g}" for v in res.sigmas))
    lines.append(f"model calls: {res.evaluations} latents")
    return "\n".join(lines)


def table_min(level) -> float:
    """The value a saved table ends at instead of 0: the level's last value (sigma_min, or below the last
    positive sigma when a fixed start already ends at sigma_min; schedules/ays_optimize.py:level_of)."""
    return float(level[-1])


def schedule_dir() -> str:
    import folder_paths
    register_folder(AYS_FOLDER)
    return folder_paths.get_folder_paths(AYS_FOLDER)[0]


def save_schedule(res: core.AYSResult, name: str, model, **meta) -> str:
    """Atomically write the schedule in FewStepAYSScheduler's format: ``sigmas`` = the optimised level
    that gives ``steps`` (its last value, sigma_min, replaced by 0), every level as ``level_<n>``."""
    n = next((m for m in sorted(res.levels) if m >= res.steps), max(res.levels))
    table = res.levels[n].clone()
    table[-1] = 0.0
    tensors = {"sigmas": table.float()}
    tensors.update({f"level_{m}": lv.float() for m, lv in res.levels.items()})
    metadata = {"fewstep_format": AYS_FORMAT, "family": res.family, "sigma_min": float(table_min(res.levels[n])),
                "sigma_max": res.sigma_max, "steps": res.steps, "model_fingerprint": model_fingerprint(model),
                "klub": {str(k): v for k, v in res.klub.items()}, "stop_reason": {str(k): v for k, v in
                                                                              res.stop_reason.items()}}
    if res.final_error is not None:
        metadata.update({"start": res.init, "start_error": res.start_error, "final_error": res.final_error,
                         "kept": res.kept, "guard": res.guard[:1000]})
    metadata.update(meta)
    path = os.path.join(schedule_dir(), name + ".safetensors")
    atomic_save(path, tensors, metadata)
    return path


NODE_CLASS_MAPPINGS = {NODE: FewStepAYSOptimize}
NODE_DISPLAY_NAME_MAPPINGS = {NODE: "FewStep AYS Optimize"}
