"""How to get each FewStep solver and schedule in ComfyUI (no ComfyUI import).

``python -m fewstep compare`` names its solvers and schedules by their ``samplers.registry`` /
``schedules`` names; a user picks KSampler entries and node widgets. This table maps one onto the
other:

* every deterministic solver of ``samplers.registry.SOLVERS``: the FewStep solver node and the widget
  values that give exactly that solver (the spec's ``node`` / ``widgets``), and the KSampler
  ``sampler_name`` entry when FewStep registers it (``samplers.registry.KSAMPLER``);
* every schedule of ``schedules.SCHEDULE_NAMES``: the FewStepScheduler widgets, and the KSampler
  ``scheduler`` entry that gives the same sigmas (FewStep's ``fewstep_*`` entries of
  ``nodes/schedulers.py`` KSAMPLER_SCHEDULERS, or ComfyUI's own ``karras`` / ``exponential``, equal to
  float32 rounding).

tests/test_cli.py checks the table against the registry and ``nodes/`` without ComfyUI;
tests/test_host_recipes.py checks in a real ComfyUI that every recipe gives the registry's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SolverRecipe:
    node: str                     # FewStep node id (a SAMPLER for SamplerCustom / SamplerCustomAdvanced)
    widgets: dict = field(default_factory=dict)   # every widget of the node, in the node's order
    ksampler: str | None = None   # KSampler sampler_name with the same options, if there is one


@dataclass(frozen=True)
class ScheduleRecipe:
    widgets: dict                 # FewStepScheduler widgets (steps and denoise aside)
    ksampler: str | None = None   # KSampler scheduler with the same sigmas, if there is one


SCHEDULER_NODE = "FewStepScheduler"
CUSTOM_SAMPLER_NODE = "SamplerCustomAdvanced"

def _solver_recipes() -> dict:
    from .samplers.registry import KSAMPLER, SOLVERS
    return {n: SolverRecipe(spec.node, dict(spec.widgets), f"fewstep_{n}" if n in KSAMPLER else None)
            for n, spec in SOLVERS.items() if not spec.stochastic}


#: every deterministic solver of the registry: its node, widgets and KSampler entry (samplers/registry.py)
SOLVER_RECIPES: dict[str, SolverRecipe] = _solver_recipes()

SCHEDULE_RECIPES: dict[str, ScheduleRecipe] = {
    "karras": ScheduleRecipe(dict(schedule="karras", rho=7.0), "karras"),
    "logsnr_uniform": ScheduleRecipe(dict(schedule="logsnr_uniform", rho=7.0), "fewstep_logsnr"),
    "time_uniform": ScheduleRecipe(dict(schedule="time_uniform", rho=7.0), "fewstep_time_uniform"),
    "time_quadratic": ScheduleRecipe(dict(schedule="time_quadratic", rho=7.0), "fewstep_time_quadratic"),
    "polyexponential": ScheduleRecipe(dict(schedule="polyexponential", rho=1.0), "exponential"),
    "ays": ScheduleRecipe(dict(schedule="ays", rho=7.0), "fewstep_ays"),
    "beta": ScheduleRecipe(dict(schedule="beta", rho=7.0), "fewstep_beta"),
}

#: KSampler entries the recipes use that are ComfyUI's own (not registered by FewStep)
COMFYUI_SCHEDULERS = ("karras", "exponential")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def node_call(node: str, widgets: dict) -> str:
    """``Node(widget=value, ...)``: a node and its widget values, as the compare output prints them."""
    return f"{node}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in widgets.items()) + ")"


def recipe(solver: str, schedule: str) -> dict:
    """How to run ``solver`` on ``schedule`` in ComfyUI: KSampler entries when both exist, otherwise
    the FewStep nodes for SamplerCustomAdvanced (or SamplerCustom). Keys: kind ("ksampler" or "nodes"),
    and sampler_name + scheduler, or sampler_node + sampler_widgets + sigmas_node + sigmas_widgets."""
    sv, sc = SOLVER_RECIPES[solver], SCHEDULE_RECIPES[schedule]
    if sv.ksampler and sc.ksampler:
        return {"kind": "ksampler", "sampler_name": sv.ksampler, "scheduler": sc.ksampler}
    return {"kind": "nodes", "sampler_node": sv.node, "sampler_widgets": dict(sv.widgets),
            "sigmas_node": SCHEDULER_NODE, "sigmas_widgets": dict(sc.widgets)}


def recipe_text(solver: str, schedule: str) -> str:
    r = recipe(solver, schedule)
    if r["kind"] == "ksampler":
        return f"KSampler: sampler_name `{r['sampler_name']}`, scheduler `{r['scheduler']}`"
    return (f"{CUSTOM_SAMPLER_NODE}: sampler `{node_call(r['sampler_node'], r['sampler_widgets'])}`, "
            f"sigmas `{node_call(r['sigmas_node'], r['sigmas_widgets'])}`")


__all__ = ["SolverRecipe", "ScheduleRecipe", "SOLVER_RECIPES", "SCHEDULE_RECIPES", "COMFYUI_SCHEDULERS",
           "SCHEDULER_NODE", "CUSTOM_SAMPLER_NODE", "node_call", "recipe", "recipe_text"]
