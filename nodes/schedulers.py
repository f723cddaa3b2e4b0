"""Schedule nodes (SIGMAS) and FewStep's entries in KSampler's scheduler list."""
import logging

import folder_paths

from ..core.io import ProfileError
from ..schedules import AYS_MODEL_TYPES, SCHEDULE_NAMES, ays_sigmas, get_schedule
from ..schedules.ays_file import load_ays_schedule
from ..comfy_adapter import interrupt_check, register_models_folder, model_sigmas_of, model_sigmas_of_sampling, register_scheduler
from .common import file_stamp, model_fingerprint, outputs, sigmas_out

log = logging.getLogger("FewStep")

AYS_FOLDER = "fewstep_ays"
NONE = "none"


register_folder = register_models_folder


def saved_ays_names():
    try:
        return folder_paths.get_filename_list(AYS_FOLDER)
    except KeyError:
        return []


def _ays_model_type_for(model) -> str:
    cls = type(model.model).__name__
    if cls.startswith("SDXL"):
        return "SDXL"
    if cls.startswith("SVD"):
        return "SVD"
    return "SD1"


def load_saved_ays(name: str, model=None, model_sigmas=None):
    """(positive 10-step-style table ending at sigma_min, family, metadata) of a saved AYS schedule,
    every field checked (schedules/ays_file.py); against the model (family, sigma range) when one is
    given (a MODEL, or the ModelSigmas the preview route describes)."""
    path = folder_paths.get_full_path(AYS_FOLDER, name)
    if path is None:
        raise ValueError(f"saved_schedule: {name!r} not found in models/{AYS_FOLDER}")
    ms = model_sigmas_of(model) if model is not None else model_sigmas
    try:
        saved = load_ays_schedule(path, ms)
    except ProfileError as e:
        raise ValueError(f"saved_schedule: {e}") from None
    if model is not None:
        fp = saved.meta.get("model_fingerprint")
        if fp and str(fp) != model_fingerprint(model):
            log.warning("FewStep: saved AYS schedule %s was optimised for another model (fingerprint %s); "
                        "using it anyway", name, fp)
    return saved.table, saved.family, saved.meta


class _ScheduleNode:
    """What both schedule nodes share: they output one SIGMAS."""
    CATEGORY = "sampling/fewstep/schedulers"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("SIGMAS", "sigmas", "steps+1 sigmas from high to low, ending in 0 at full denoise: connect to a custom sampler."))
    FUNCTION = "get_sigmas"


class FewStepAYSScheduler(_ScheduleNode):
    DESCRIPTION = ("Align Your Steps: NVIDIA's optimised schedules (10-step tables for SD1.5, SDXL, SVD), "
                   "log-linearly interpolated to any step count; or a schedule saved by FewStepAYSOptimize.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_type": (list(AYS_MODEL_TYPES) + ["auto"], {"default": "SD1", "tooltip":
                               "Which published table. auto picks SD1/SDXL/SVD from the connected model. With a "
                               "model whose sigma range the table was not made for (SD3, Flux, EDM, ...), the "
                               "table is remapped onto the model's range through logSNR."}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000, "tooltip":
                          "Steps actually run (as KSampler). 10 is the published table; other counts are "
                          "interpolated log-linearly."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                            "Fraction of the schedule to run, for img2img: the last `steps` of a schedule "
                            "of steps/denoise steps (KSampler's rule)."}),
            },
            "optional": {
                "model": ("MODEL", {"tooltip": "Optional: remaps the table onto this model's sigma range "
                                    "(needed for auto and for non-SD models)."}),
                "saved_schedule": ([NONE] + saved_ays_names(), {"default": NONE, "tooltip":
                                   f"A schedule saved by FewStepAYSOptimize in models/{AYS_FOLDER}; overrides "
                                   "model_type and is interpolated to `steps`. It is aligned to one sampler (the "
                                   "optimizer's align_to, recorded in the file and shown on this node): sample it "
                                   "with that sampler."}),
                "sampler": ("SAMPLER", {"tooltip": "Optional: the SAMPLER you sample this schedule with (the "
                            "SIGMAS output cannot know it). With a saved_schedule aligned to another sampler, this "
                            "node warns once, here and in the log."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, model_type=None, steps=None, denoise=None, model=None, saved_schedule=NONE, **_):
        """A saved schedule re-optimised under the same name must not be served from the cache."""
        return "" if not saved_schedule or saved_schedule == NONE else file_stamp(AYS_FOLDER, saved_schedule)

    def get_sigmas(self, model_type, steps, denoise, model=None, saved_schedule=NONE, sampler=None):
        ms = model_sigmas_of(model) if model is not None else None
        if saved_schedule and saved_schedule != NONE:
            table, fam, meta = load_saved_ays(saved_schedule, model)
            out = sigmas_out(ays_sigmas("SD1", steps, denoise, ms, table=table, check_interrupt=interrupt_check()))
            from . import ays_align
            text = ays_align.aligned_text(meta, saved_schedule)
            used = ays_align.sampler_id_of_object(sampler) if sampler is not None else None
            warning = ays_align.check_sampler(meta, saved_schedule, used, "the connected SAMPLER")
            if warning is None:   # what it was aligned to, on the node (the warning shows itself)
                ays_align.show_on_node(text)
            return (out,)
        if model_type == "auto":
            if model is None:
                raise ValueError("FewStepAYSScheduler: model_type 'auto' needs a model connected")
            model_type = _ays_model_type_for(model)
        if model_type not in AYS_MODEL_TYPES:
            raise ValueError(f"FewStepAYSScheduler: model_type must be one of {AYS_MODEL_TYPES + ('auto',)}")
        return (sigmas_out(ays_sigmas(model_type, steps, denoise, ms, check_interrupt=interrupt_check())),)


class FewStepScheduler(_ScheduleNode):
    DESCRIPTION = "Model-aware sigma schedules: Karras, logSNR-uniform, time-uniform, time-quadratic, polyexponential, AYS."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model whose sigma range, family (eps/flow) and shift shape the schedule."}),
            "schedule": (list(SCHEDULE_NAMES), {"default": "logsnr_uniform", "tooltip":
                         "karras: EDM's rho-spaced sigmas. logsnr_uniform: uniform in log(alpha/sigma) of the "
                         "model's family. time_uniform: uniform in the model's timesteps. time_quadratic: "
                         "DPM-Solver's quadratic time steps. polyexponential: polynomial in log sigma (rho 1 = "
                         "log-uniform). ays: the SD1.5 Align-Your-Steps table remapped onto the model. beta: Beta Sampling "
                         "(Lee et al. 2024), timesteps at Beta(0.6, 0.6) quantiles: dense at both ends."}),
            "steps": ("INT", {"default": 10, "min": 1, "max": 10000, "tooltip": "Steps actually run (as KSampler)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                        "Fraction of the schedule to run (img2img): the last `steps` of a schedule of steps/denoise steps."}),
            "rho": ("FLOAT", {"default": 7.0, "min": 0.01, "max": 100.0, "step": 0.01, "tooltip":
                    "Spacing exponent: karras (7 = EDM's choice) and polyexponential (1 = log-uniform). "
                    "Ignored by the other schedules."}),
        }}

    def get_sigmas(self, model, schedule, steps, denoise, rho):
        if schedule not in SCHEDULE_NAMES:
            raise ValueError(f"FewStepScheduler: schedule must be one of {SCHEDULE_NAMES}, got {schedule!r}")
        ms = model_sigmas_of(model)
        if schedule == "polyexponential" and rho == 7.0:
            log.info("FewStep: polyexponential with rho 7 is very steep; rho 1 is log-uniform")
        return (sigmas_out(get_schedule(schedule, steps, ms, denoise, rho, check_interrupt=interrupt_check())),)


# --- KSampler scheduler list ---------------------------------------------------------------------
def _ksampler_handler(name, **kw):
    def handler(model_sampling, steps):
        ms = model_sigmas_of_sampling(model_sampling)
        return sigmas_out(get_schedule(name, steps, ms, 1.0, check_interrupt=interrupt_check(), **kw))
    return handler


def _ays_handler(model_type):
    def handler(model_sampling, steps):
        return sigmas_out(ays_sigmas(model_type, steps, 1.0, model_sigmas_of_sampling(model_sampling)))
    return handler


#: KSampler's entry for a saved optimised schedule: the optimizer's default file name
SAVED_KSAMPLER_FILE = "ays_optimized.safetensors"


def _saved_ays_handler(model_sampling, steps):
    """``fewstep_ays_optimized``: models/fewstep_ays/ays_optimized.safetensors (FewStepAYSOptimize's default
    name) in KSampler; warns once when KSampler's sampler is not the one it was aligned to."""
    from . import ays_align
    ms = model_sigmas_of_sampling(model_sampling)
    if folder_paths.get_full_path(AYS_FOLDER, SAVED_KSAMPLER_FILE) is None:
        raise ValueError(f"KSampler scheduler fewstep_ays_optimized: no {SAVED_KSAMPLER_FILE} in models/{AYS_FOLDER}; "
                         "run FewStep AYS Optimize with name ays_optimized first")
    table, _, meta = load_saved_ays(SAVED_KSAMPLER_FILE, model_sigmas=ms)
    name = ays_align.executing_ksampler_name()
    used = ays_align.sampler_id(name) if name else None
    ays_align.check_sampler(meta, SAVED_KSAMPLER_FILE, used, "KSampler")
    return sigmas_out(ays_sigmas("SD1", steps, 1.0, ms, table=table))


KSAMPLER_SCHEDULERS = {
    "fewstep_ays": _ays_handler("SD1"),
    "fewstep_ays_sdxl": _ays_handler("SDXL"),
    "fewstep_logsnr": _ksampler_handler("logsnr_uniform"),
    "fewstep_time_uniform": _ksampler_handler("time_uniform"),
    "fewstep_time_quadratic": _ksampler_handler("time_quadratic"),
    "fewstep_beta": _ksampler_handler("beta"),
    "fewstep_ays_optimized": _saved_ays_handler,
}


def register_with_comfyui():
    register_folder(AYS_FOLDER)
    for name, fn in KSAMPLER_SCHEDULERS.items():
        register_scheduler(name, fn)


NODE_CLASS_MAPPINGS = {"FewStepAYSScheduler": FewStepAYSScheduler, "FewStepScheduler": FewStepScheduler}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepAYSScheduler": "FewStep Align Your Steps", "FewStepScheduler": "FewStep Scheduler"}
