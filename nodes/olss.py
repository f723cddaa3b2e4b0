"""OLSS nodes: train a solver on the user's own model (FewStepOLSSTrain) and use it (FewStepOLSSSampler).

The teacher trajectory is recorded through ComfyUI's real sampling path (``comfy.sample.sample_custom``
with the CFG guider, so LoRA, ControlNet, model patches and wrappers on the MODEL are all included):
the SAMPLER passed to it is a recording function that runs the chosen FewStep teacher solver and keeps,
from its per-step callback, each state and the CFG-combined denoised output the solver saw. Each
trajectory is folded into the running QR factor right away (samplers/olss.py), so memory does not grow
with ``samples``. Fitting and path planning are samplers/olss.py; profiles are safetensors files in
ComfyUI's ``fewstep_olss`` models folder.

Mismatch policy (also in docs/olss.md):
* a profile used on a model of the other noise family (eps vs flow): error;
* SIGMAS whose step count or values differ from the profile's selected sigmas: error;
* a different model fingerprint (another checkpoint, other LoRA strengths) or another cfg: warning in
  the log, sampling goes on (the coefficients are usually still close; retrain for best results).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from ..core.io import ProfileError, check_file_stem, check_save_target
from ..core.seeds import fold_seed
from ..samplers import olss as core
from ..schedules import SCHEDULE_NAMES, get_schedule
from ..core.model_sigmas import within_range
from ..core.validate import check_int
from ..comfy_adapter import (register_models_folder, family_of_k_model, guider_of_k_model, model_sampling_of_k_model,
                             patcher_of_k_model, model_sigmas_of, model_sigmas_of_sampling)
from .common import StageText, file_stamp, model_fingerprint, outputs, send_node_text, sigmas_out

log = logging.getLogger("FewStep")

FOLDER = "fewstep_olss"
CATEGORY = "sampling/fewstep/olss"
LINKED = "(use the linked profile)"

def teacher_names() -> list[str]:
    """Every deterministic FewStep solver (samplers/registry.py), DPM-Solver++(2M) first."""
    from ..samplers.registry import SOLVERS
    names = [n for n, spec in SOLVERS.items() if not spec.stochastic]
    return sorted(names, key=lambda n: (n != "dpmpp_2m", names.index(n)))


#: the teacher of a new node (saved workflows keep theirs): bench/olss.py, DEIS-3 at 100 Karras steps ends
#: 1e-4 from the exact solution on five analytic mixtures, DPM-Solver++(2M) 2e-4 to 9e-3 (its final jump)
DEFAULT_TEACHER = "deis_3"
TEACHER_STEPS_RANGE = (20, 1000)
SAMPLES_RANGE = (1, 256)
HELDOUT_RANGE = (1, 64)
#: held-out teacher runs use seeds seed + HELDOUT_SEED_OFFSET + i (the training runs: seed .. seed + 255)
HELDOUT_SEED_OFFSET = 1 << 20


def fixed_schedule_names() -> list:
    """The fixed schedules the teacher's own solver is compared on (FewStep's and ComfyUI's)."""
    from ..schedules.comfy_like import COMFY_SCHEDULES
    return [n for n in SCHEDULE_NAMES if n != "polyexponential"] + list(COMFY_SCHEDULES)


def fixed_schedule(name: str, steps: int, ms) -> torch.Tensor:
    from ..schedules.comfy_like import COMFY_SCHEDULES, comfy_schedule
    return comfy_schedule(name, steps, ms) if name in COMFY_SCHEDULES else get_schedule(name, steps, ms)
#: closed_loop keeps the teacher states in RAM until the refit; refuse beyond this
MAX_KEEP_BYTES = 8 * 2**30


def register_with_comfyui():
    """Register the ``fewstep_olss`` models folder (only if no one has, e.g. extra_model_paths.yaml)."""
    register_models_folder(FOLDER)


def profile_dir() -> str:
    register_with_comfyui()
    return folder_paths.get_folder_paths(FOLDER)[0]


def profile_names() -> list[str]:
    register_with_comfyui()
    try:
        return [n for n in folder_paths.get_filename_list(FOLDER) if n.endswith(".safetensors")]
    except Exception:  # a folder that does not exist yet
        return []


def teacher_function(name: str):
    """The registry's solver (called with family=...); the trajectory is recorded from its per-step
    callback (state at each teacher sigma and the output there)."""
    from ..samplers.registry import SOLVERS
    if name not in teacher_names():
        raise ValueError(f"FewStepOLSSTrain: teacher must be one of {tuple(teacher_names())}, got {name!r}")
    return SOLVERS[name]


def _check_int(value, lo, hi, widget):
    return check_int(value, lo, hi, widget, "FewStepOLSSTrain")


# ------------------------------------------------------------------------------------------------
class FewStepOLSSTrain:
    DESCRIPTION = ("Trains an OLSS solver (Optimal Linear Subspace Search, Duan et al. 2023) for this MODEL: "
                   "records fine teacher trajectories through ComfyUI's sampling (LoRA, ControlNet and patches "
                   "included), fits per-step linear coefficients by least squares and picks the step subset by "
                   "path planning. Saves the profile to models/fewstep_olss/<name>.safetensors.")
    CATEGORY = CATEGORY
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("OLSS_PROFILE", "profile", "The trained OLSS profile: connect to FewStep OLSS Sampler."),
        ("STRING", "report", "The selected sigmas and the fit error of every step."))
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to fit the solver to (with its LoRAs and patches)."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning used while recording the teacher."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning used while recording the teacher."}),
            "latent_image": ("LATENT", {"tooltip": "Latent of the size (and batch) to train on; empty latents "
                                                   "train text-to-image sampling."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                    "CFG scale of the teacher. Use the cfg you will sample with: the profile is fitted to it."}),
            "teacher": (teacher_names(), {"default": DEFAULT_TEACHER, "tooltip":
                        "Teacher ODE solver whose fine trajectory OLSS learns to shortcut (FewStep's deterministic "
                        "solvers). Default deis_3 (DEIS tAB3): its last step to sigma 0 is a multistep one, so its "
                        "endpoint is ~1e-4 from the exact ODE solution on the analytic models, where DPM-Solver++(2M)'s "
                        "first-order final jump leaves up to 9e-3, a floor no student can go below."}),
            "teacher_steps": ("INT", {"default": 100, "min": TEACHER_STEPS_RANGE[0], "max": TEACHER_STEPS_RANGE[1],
                              "tooltip": "Steps of the teacher trajectory; the student's sigmas are chosen among "
                                         "these. More is more accurate and slower (one model call per step "
                                         "per sample)."}),
            "teacher_schedule": (list(SCHEDULE_NAMES), {"default": "karras", "tooltip":
                                 "Sigma schedule of the teacher trajectory (FewStep schedules)."}),
            "steps": ("INT", {"default": 8, "min": 4, "max": 20, "tooltip":
                      "Steps of the trained solver (= model calls at sampling)."}),
            "samples": ("INT", {"default": 8, "min": SAMPLES_RANGE[0], "max": SAMPLES_RANGE[1], "tooltip":
                        "Number of teacher runs (seeds seed, seed+1, ...), each over the whole latent batch."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "tooltip":
                     "First noise seed of the teacher runs (use other seeds when sampling)."}),
            "path_planning": ("BOOLEAN", {"default": True, "tooltip":
                              "On: OLSS, the paper's path planning picks the step subset. Off: OLSS-P, "
                              "steps uniform in the teacher's step index."}),
            "name": ("STRING", {"default": "olss_profile", "tooltip":
                     "File name of the profile in models/fewstep_olss (letters, digits, _ - . and spaces; "
                     "an existing file of that name is replaced)."}),
            "ridge": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001, "tooltip":
                      "Optional ridge regularisation of the least-squares fit, relative to the mean energy of "
                      "the regressors (0 = plain least squares, as the paper). Try 1e-4..1e-2 when few samples "
                      "give a profile that is worse on new seeds than OLSS-P."}),
            "closed_loop": ("BOOLEAN", {"default": False, "tooltip":
                            "Off: the paper's fit on the teacher's states. On (FewStep's extension): after "
                            "planning, refit each step on the student's own states and outputs (steps x samples "
                            "extra model calls; keeps the teacher states in RAM until then). On the analytic "
                            "benchmark it was better in half the cases and worse in the other half."}),
        }, "optional": {   # optional: API workflows saved before they existed still validate
            "select_on_heldout": ("BOOLEAN", {"default": True, "tooltip":
                                  "On: held-out teacher runs (other seeds, never fitted) decide between OLSS, "
                                  "OLSS-P and the teacher's own solver on every fixed schedule (FewStep's and "
                                  "ComfyUI's, on the teacher grid) at the same steps; the profile is the winner, "
                                  "so it is never worse on them than the best fixed solver + schedule it was "
                                  "compared with, and says which won. Off: path_planning decides, as before."}),
            "heldout_runs": ("INT", {"default": 4, "min": HELDOUT_RANGE[0], "max": HELDOUT_RANGE[1], "tooltip":
                             "Held-out teacher runs for select_on_heldout (each one teacher trajectory over the "
                             "latent batch, plus steps model calls per candidate)."}),
        }}

    def train(self, model, positive, negative, latent_image, cfg, teacher, teacher_steps, teacher_schedule, steps,
              samples, seed, path_planning, name, ridge=0.0, closed_loop=False, select_on_heldout=True,
              heldout_runs=4):
        name, save_path, seed, teacher_steps, steps, samples, heldout_runs = _train_inputs(
            name, seed, teacher_steps, steps, samples, cfg, teacher_schedule, ridge, select_on_heldout, heldout_runs)
        teacher_fn = teacher_function(teacher)
        ms = model_sigmas_of(model)
        teacher_sigmas = get_schedule(teacher_schedule, teacher_steps, ms,
                                      check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        sigmas_c = sigmas_out(teacher_sigmas)

        latent = latent_image["samples"]
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise_mask = latent_image.get("noise_mask")
        keep_bytes = samples * (teacher_steps + 1) * latent.numel() * 4
        if closed_loop and keep_bytes > MAX_KEEP_BYTES:
            raise ValueError(f"FewStepOLSSTrain: closed_loop keeps every teacher state in RAM "
                             f"({keep_bytes / 2**30:.1f} GiB here, limit {MAX_KEEP_BYTES / 2**30:.0f} GiB): lower "
                             "samples or teacher_steps, or turn closed_loop off")
        pbar = comfy.utils.ProgressBar(samples * (teacher_steps + 1) + 1 + (samples * steps if closed_loop else 0)
                                       + (heldout_runs * (teacher_steps + 1) if select_on_heldout else 0))
        interrupt = comfy.model_management.throw_exception_if_processing_interrupted
        # stage text on the node (teacher / fit / refine / held-out selection, k of n, ETA): ComfyUI's
        # progress text; the summary goes on the node as ui text when done
        stage, say = _stage_text(pbar)

        def on_step(_d):
            interrupt()
            pbar.update(1)
            stage.show(stage.where, pbar.current, pbar.total)

        qr, kept = _record_teacher(model, positive, negative, latent, noise_mask, cfg, sigmas_c, teacher_fn,
                                   teacher_steps, samples, seed, closed_loop, on_step, interrupt, pbar,
                                   lambda s: say(f"teacher: run {s + 1} of {samples} ({teacher_steps} steps of {teacher})"))
        family = ms.family
        say("fit: least squares" + (" and path planning" if path_planning else " (OLSS-P, uniform path)"))
        prof = core.fit_profile(qr, sigmas_c.to(torch.float64), steps, family, bool(path_planning),
                                ridge=float(ridge), check_interrupt=interrupt, teacher=f"{teacher} x{teacher_steps} {teacher_schedule}",
                                cfg=float(cfg), model_fingerprint=model_fingerprint(model), name=name)
        pbar.update(1)
        if closed_loop:
            prof = _closed_loop(prof, kept, model, positive, negative, latent, noise_mask, cfg, seed, ridge,
                                interrupt, pbar, stage, say, samples * steps)
            del kept
        selection, kept_text = "", ""
        if select_on_heldout:
            prof, selection, kept_text = self._select(prof, model, positive, negative, latent, noise_mask, cfg, teacher,
                                                      teacher_fn, sigmas_c, ms, steps, seed, heldout_runs, on_step,
                                                      interrupt, path_planning, ridge, say)
        path = str(save_path)
        prof.save(path)
        report = core.olss_error_report(prof) + (f"\n{selection}" if selection else "") + f"\nsaved to {path}"
        log.info(report)
        summary = summary_text(prof, kept_text, name)
        send_node_text(summary)
        # "ui": the summary drawn on the node (js/fewstep_results.js); the full report is the second output
        return {"ui": {"text": [summary]}, "result": (prof, report)}


    def _select(self, prof, model, positive, negative, latent, noise_mask, cfg, teacher, teacher_fn, sigmas_c, ms,
                steps, seed, runs, on_step, interrupt, path_planning, ridge, say=lambda text: None):
        """Held-out selection: (the winning profile, the comparison's text, one line on what was kept)."""
        primary = "olss" if path_planning else "olss_p"
        cands = {primary: prof}
        qr_prof = dataclasses.replace(prof, closed_loop=False)
        other = core.fit_profile_from(qr_prof, not path_planning, ridge)
        cands["olss_p" if path_planning else "olss"] = other
        solver = functools.partial(teacher_fn)
        seen = set()
        for sname in fixed_schedule_names():
            try:
                sched = fixed_schedule(sname, steps, ms)
            except ValueError:
                continue
            p = core.snap_path(sched, prof.teacher_sigmas)
            if p is None or tuple(p) in seen:
                continue
            seen.add(tuple(p))
            sp = core.solver_profile(prof, solver, p, f"{teacher} + {sname}")
            if sp is not None:
                cands[f"solver:{teacher} + {sname}"] = sp
        sq = {k: 0.0 for k in cands}
        ref_sq = [0.0]

        def evaluate(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
            fam = family_of_k_model(model_k)
            st, _ = core.record_trajectory(model_k, x, sigmas, functools.partial(teacher_fn, family=fam),
                                           extra_args, callback=on_step)
            target = st[-1].to(torch.float64)
            ref_sq[0] += float(target.pow(2).sum())
            for key, c in cands.items():
                interrupt()
                y = core.sample_olss(model_k, st[0].to(x.device, x.dtype).clone(), c.sigmas.to(x.device, x.dtype),
                                     extra_args, profile=c)
                sq[key] += float((y.to(torch.float64) - target.to(y.device)).pow(2).sum())
            return st[-1].to(x.device, x.dtype)

        for r in range(runs):
            interrupt()
            say(f"held-out selection: run {r + 1} of {runs} ({len(cands)} candidates)")
            s = seed + HELDOUT_SEED_OFFSET + r
            noise = comfy.sample.prepare_noise(latent, s)
            comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(evaluate), sigmas_c, positive,
                                       negative, latent, noise_mask=noise_mask, disable_pbar=True, seed=s)
            on_step(None)   # the run's last tick (its teacher steps ticked one each)
        err = {k: math.sqrt(v / max(ref_sq[0], 1e-300)) for k, v in sq.items()}
        win = min(err, key=err.get)
        fixed = {k: v for k, v in err.items() if k.startswith("solver:")}
        best_fixed = min(fixed, key=fixed.get) if fixed else None
        text = (f"held-out selection ({runs} teacher runs, seeds {seed + HELDOUT_SEED_OFFSET}..; error of the final "
                f"state vs the teacher's): " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(err.items(), key=lambda kv: kv[1]))
                + f"; kept {win}" + (f" ({err[win] / fixed[best_fixed]:.2f}x the best fixed solver + schedule, "
                                     f"{best_fixed[7:]})" if best_fixed else ""))
        chosen = cands[win]
        method = "solver" if win.startswith("solver:") else win
        chosen = dataclasses.replace(chosen, extra={**chosen.extra, "method": method, "selection": text[:4000]})
        chosen.validate()
        log.info("FewStep OLSS: %s", text)
        return chosen, text, _kept_line(win, err, fixed, best_fixed)


def _kept_line(win, err, fixed, best_fixed) -> str:
    return f"held-out: kept {win} (error {err[win]:.4g}" + (
        f", {err[win] / fixed[best_fixed]:.2f}x the best fixed, {best_fixed[7:]})" if best_fixed else ")")


def summary_text(prof, kept: str, name: str) -> str:
    """One paragraph for the node: what was trained, the worst step's fit, what the held-out runs kept."""
    worst = max(math.sqrt(float(e)) for e in prof.step_error) if len(prof.step_error) else float("nan")
    what = "OLSS" if prof.path_planning else "OLSS-P"
    return (f"{what} profile {name}: {prof.steps} steps from {prof.teacher_steps} teacher steps, worst step fit "
            f"RMSE {worst:.3g}" + (f"; {kept}" if kept else "") + f". Saved as {name}.safetensors.")


def _stage_text(pbar):
    """(StageText, say): ``say(text)`` sets the current stage and shows it; ``stage.where`` is the last."""
    stage = StageText("OLSS Train")
    stage.where = "start"

    def say(text):
        stage.where = text
        stage.show(text, pbar.current, pbar.total)

    return stage, say


# ------------------------------------------------------------------------------------------------
def check_profile_for_model(model_k, profile: core.OLSSProfile):
    """Called by the sampler with ComfyUI's k-diffusion model: error on a family mismatch, warnings
    on another model fingerprint or cfg (see the module doc)."""
    fam = family_of_k_model(model_k)
    label = f"OLSS profile {profile.name!r}" if profile.name else "OLSS profile"
    if fam != profile.family:
        raise ValueError(f"{label} was trained on a {profile.family} model, but this model is {fam}: "
                         "train a profile on this model (FewStep OLSS Train)")
    ms = model_sigmas_of_sampling(model_sampling_of_k_model(model_k))
    positive = profile.sigmas[profile.sigmas > 0]
    top, bottom = float(profile.sigmas[0]), float(positive.min())
    if not within_range(bottom, top, ms):
        raise ValueError(f"{label} steps through sigmas [{bottom:.6g}, {top:.6g}], outside this model's range "
                         f"[{ms.sigma_min:.6g}, {ms.sigma_max:.6g}]: it was trained on another model; train a "
                         "profile on this model (FewStep OLSS Train)")
    guider, patcher = guider_of_k_model(model_k), patcher_of_k_model(model_k)
    fp = None
    if patcher is not None and profile.model_fingerprint:
        try:
            fp = model_fingerprint(patcher)
        except Exception as e:  # a model the fingerprint cannot read: skip the check, say so
            log.warning("FewStep OLSS: could not fingerprint the model (%s); not checking it against the profile", e)
        if fp is not None and fp != profile.model_fingerprint:
            log.warning("FewStep OLSS: %s was trained on model %s, this model is %s (another checkpoint or "
                        "other LoRA/patches); the coefficients may not fit it — retrain for best results",
                        label, profile.model_fingerprint, fp)
    cfg = getattr(guider, "cfg", None)
    if cfg is not None and abs(float(cfg) - profile.cfg) > 1e-6:
        log.warning("FewStep OLSS: %s was trained at cfg %g, sampling at cfg %g; retrain at this cfg for best "
                    "results", label, profile.cfg, float(cfg))


def sample_olss_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, profile=None):
    """KSAMPLER function: the profile checks, then the pure solver."""
    if profile is None:
        raise ValueError("FewStep OLSS sampler has no profile")
    check_profile_for_model(model, profile)
    return core.sample_olss(model, x, sigmas, extra_args, callback, disable, profile=profile)


class FewStepOLSSSampler:
    DESCRIPTION = ("Samples with a trained OLSS profile: outputs the SAMPLER and the learned SIGMAS (use both on "
                   "SamplerCustom / SamplerCustomAdvanced). The profile comes from the dropdown of saved profiles "
                   "(models/fewstep_olss) or from a linked FewStep OLSS Train node.")
    CATEGORY = CATEGORY
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("SAMPLER", "sampler", "The OLSS solver with this profile's coefficients."),
        ("SIGMAS", "sigmas", "The learned step subset; the sampler only accepts these sigmas."))
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "profile_name": ([LINKED] + profile_names(), {"tooltip":
                             "A saved profile in models/fewstep_olss, or '(use the linked profile)' to take the "
                             "'profile' input. A linked profile always wins."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                        "Below 1 (img2img): keeps the last round(steps*denoise) learned steps and refits their "
                        "coefficients from the stored data so the start state replaces the initial noise."}),
        }, "optional": {
            "profile": ("OLSS_PROFILE", {"tooltip": "A profile from FewStep OLSS Train (overrides the dropdown)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, profile_name=LINKED, denoise=1.0, profile=None, **_):
        return "" if profile_name == LINKED else file_stamp(FOLDER, profile_name)

    def build(self, profile_name, denoise, profile=None):
        if profile is None:
            if profile_name == LINKED:
                raise ValueError("FewStepOLSSSampler: profile_name is '(use the linked profile)' but no profile is "
                                 "linked: pick a saved profile or connect FewStep OLSS Train")
            path = folder_paths.get_full_path(FOLDER, profile_name)
            if path is None:
                raise ValueError(f"FewStepOLSSSampler: profile {profile_name!r} not found in models/{FOLDER}")
            profile = core.OLSSProfile.load(path)
        if not isinstance(profile, core.OLSSProfile):
            raise ValueError("FewStepOLSSSampler: the profile input is not an OLSS profile")
        if not (isinstance(denoise, (int, float)) and math.isfinite(denoise) and 0 < denoise <= 1):
            raise ValueError(f"FewStepOLSSSampler: denoise must be in (0, 1], got {denoise!r}")
        prof = profile.truncated(float(denoise))
        sampler = comfy.samplers.KSAMPLER(sample_olss_comfy, {"profile": prof})
        return (sampler, sigmas_out(prof.sigmas))


NODE_CLASS_MAPPINGS = {"FewStepOLSSTrain": FewStepOLSSTrain, "FewStepOLSSSampler": FewStepOLSSSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepOLSSTrain": "FewStep OLSS Train",
                              "FewStepOLSSSampler": "FewStep OLSS Sampler"}
__all__ = ["ProfileError"]


def _train_inputs(name, seed, teacher_steps, steps, samples, cfg, teacher_schedule, ridge, select_on_heldout,
                  heldout_runs):
    """FewStepOLSSTrain's widgets, checked before the long run (errors name the widget and its range)."""
    name = check_file_stem(name, "FewStepOLSSTrain: name")
    if not name:
        raise ValueError("FewStepOLSSTrain: name must be 1-100 characters of letters, digits, '_', '-', '.' "
                         "or spaces (no folders); it is empty")
    # before the long run: a folder of that name cannot be replaced by the profile
    save_path = check_save_target(os.path.join(profile_dir(), name + ".safetensors"), "FewStepOLSSTrain: name")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 0xffffffffffffffff:
        raise ValueError(f"FewStepOLSSTrain: seed must be a whole number in [0, {0xffffffffffffffff}], got {seed!r}")
    seed = fold_seed(seed)  # once, here: the teacher runs use seed, seed + 1, ... (at most 2^63 + 255)
    teacher_steps = _check_int(teacher_steps, *TEACHER_STEPS_RANGE, "teacher_steps")
    steps = _check_int(steps, 4, 20, "steps")
    samples = _check_int(samples, *SAMPLES_RANGE, "samples")
    if not (isinstance(cfg, (int, float)) and math.isfinite(cfg) and 0 <= cfg <= 100):
        raise ValueError(f"FewStepOLSSTrain: cfg must be in [0, 100], got {cfg!r}")
    if teacher_schedule not in SCHEDULE_NAMES:
        raise ValueError(f"FewStepOLSSTrain: teacher_schedule must be one of {SCHEDULE_NAMES}, got "
                         f"{teacher_schedule!r}")
    if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and 0 <= ridge <= 1):
        raise ValueError(f"FewStepOLSSTrain: ridge must be in [0, 1], got {ridge!r}")
    if not isinstance(select_on_heldout, bool):
        raise ValueError(f"FewStepOLSSTrain: select_on_heldout must be true or false, got {select_on_heldout!r}")
    heldout_runs = _check_int(heldout_runs, *HELDOUT_RANGE, "heldout_runs")
    return name, save_path, seed, teacher_steps, steps, samples, heldout_runs


def _record_teacher(model, positive, negative, latent, noise_mask, cfg, sigmas_c, teacher_fn, teacher_steps,
                    samples, seed, closed_loop, on_step, interrupt, pbar, announce=lambda s: None):
    """Every teacher trajectory, folded into a TrajectoryQR; (qr, the kept states for closed_loop)."""
    qr = core.TrajectoryQR(teacher_steps)
    kept = []
    for s in range(samples):
        interrupt()
        announce(s)
        record = {}

        def recorder(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
            fam = family_of_k_model(model_k)
            st, out = core.record_trajectory(model_k, x, sigmas, functools.partial(teacher_fn, family=fam),
                                             extra_args, callback=on_step)
            record["states"], record["outputs"] = st, out
            return st[-1].to(x.device, x.dtype)

        noise = comfy.sample.prepare_noise(latent, seed + s)
        comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(recorder), sigmas_c, positive,
                                   negative, latent, noise_mask=noise_mask, disable_pbar=True, seed=seed + s)
        qr.add(record["states"], record["outputs"], check_interrupt=interrupt)
        if closed_loop:
            kept.append(record["states"])
        del record
        pbar.update(1)
    return qr, kept


def _closed_loop(prof, kept, model, positive, negative, latent, noise_mask, cfg, seed, ridge, interrupt, pbar,
                 stage=None, say=lambda text: None, total_calls=0):
    """The closed-loop refit: the coefficients refitted on the student's own states."""
    def denoise(r, x, j):
        got = {}

        def one_call(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None):
            xx = x.to(x_in.device, x_in.dtype)
            got["d"] = model_k(xx, sigmas[0] * xx.new_ones([xx.shape[0]]), **(extra_args or {}))
            return x_in

        one = torch.stack([prof.sigmas[j], prof.sigmas.new_zeros(())]).float()
        noise = comfy.sample.prepare_noise(latent, seed + r)
        comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(one_call), one, positive,
                                   negative, latent, noise_mask=noise_mask, disable_pbar=True,
                                   seed=seed + r)
        return got["d"].detach().to("cpu")

    calls = [0]

    def tick():
        interrupt()
        pbar.update(1)
        calls[0] += 1
        if stage is not None:
            stage.show(f"refine (closed loop): model call {calls[0]} of {total_calls}", pbar.current, pbar.total)

    say(f"refine (closed loop): model call 0 of {total_calls}")
    wx, we, err = core.closed_loop_refit(prof.wx, prof.we, [st[0] for st in kept],
                                         [core.path_targets(prof, st) for st in kept], denoise,
                                         float(ridge), check_interrupt=interrupt, on_call=tick)
    prof = dataclasses.replace(prof, wx=wx, we=we, step_error=err, closed_loop=True)
    return prof
