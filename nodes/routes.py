"""HTTP routes of the pack: ``GET /fewstep/sigmas`` for the schedule preview in the graph editor.

The route answers the very sigmas FewStep's scheduler nodes output (same schedule code, same float32
SIGMAS rounding) as a JSON list, for a model described by its family and shift, or by a sigma range,
since the editor has no model object. Every parameter is checked: unknown names, numbers that do not
parse (ASCII digits only: no other scripts' digits, no ``_`` separators) or are out of the widgets'
ranges, values longer than ``MAX_VALUE_CHARS``, and unknown schedule names answer 400 with the reason.

The work is bounded and never runs on the server's event loop: the steps are capped at the widgets'
maximum, a schedule costs at most about that many values (beta computes only the tail that denoise
keeps), and the computation runs on a small thread pool of its own with a deadline
(``TIME_LIMIT_S``, checked inside the schedule code), answered with 503 and the reason when passed;
so are requests beyond ``MAX_PENDING`` in flight. ``/system_stats`` and the rest of ComfyUI keep
answering while previews run.

Query parameters
    schedule        one of ``SCHEDULE_NAMES`` (``ays`` included); required
    steps           whole number in [1, 10000]; required
    denoise         number in [0.01, 1]; default 1
    rho             number in (0, 100]; default: the schedule's (karras 7, polyexponential 1)
    model_type      ays only: SD1, SDXL or SVD (default SD1)
    saved_schedule  ays only: a file saved by FewStepAYSOptimize in models/fewstep_ays (or ``none``)
    family          eps or flow: the model's noise family (eps: SD1.5's discrete sigmas)
    shift           flow only: timestep shift in [0.01, 100] (default 1)
    sigma_min, sigma_max   the model's sigma range instead of a family's grid (log-uniform grid)

Without any model parameter, ``ays`` gives the published table unchanged and the other schedules use
SD1.5's sigmas (what FewStepScheduler does with an SD1.5 model).
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..comfy_adapter import prompt_server
from ..core import families
from ..core.model_sigmas import ModelSigmas, check_sigma_range
from ..schedules import AYS_MODEL_TYPES, SCHEDULE_NAMES, ays_sigmas, get_schedule
from .common import sigmas_out

log = logging.getLogger("FewStep")

ROUTE = "/fewstep/sigmas"
MAX_STEPS = 10000
PARAMS = ("schedule", "steps", "denoise", "rho", "model_type", "saved_schedule", "family", "shift",
          "sigma_min", "sigma_max")
NONE = "none"
#: the longest value a parameter may have (a number or a file name)
MAX_VALUE_CHARS = 200
#: seconds a preview may compute before it is stopped and answered with 503
TIME_LIMIT_S = 10.0
#: worker threads of the preview pool, and requests in flight beyond which the route answers 503
WORKERS = 2
MAX_PENDING = 8
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
                       re.ASCII | re.IGNORECASE)


class QueryError(ValueError):
    """A bad query: the message is the reason given back with the 400."""


class PreviewTimeout(RuntimeError):
    """The preview passed its deadline; the message is the reason given back with the 503."""


def deadline_check(seconds: float):
    """A ``check_interrupt`` callable for the schedule code that raises PreviewTimeout once
    ``seconds`` have passed since it was made."""
    end = time.monotonic() + seconds

    def check():
        if time.monotonic() > end:
            raise PreviewTimeout(f"the preview took longer than {seconds:g} s and was stopped; lower steps "
                                 "or raise denoise")
    return check


def _one(query, name):
    v = query.get(name)
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise QueryError(f"{name} is given {len(v)} times; give it once")
        v = v[0]
    v = str(v).strip()
    if len(v) > MAX_VALUE_CHARS:
        raise QueryError(f"{name} is {len(v)} characters long; at most {MAX_VALUE_CHARS}")
    return v


def _number(query, name, lo, hi, default=None, whole=False, lo_open=False):
    """A query value: a whole number (``whole``) or a number, in [lo, hi] ((lo, hi] with ``lo_open``)."""
    what = "a whole number" if whole else "a number"
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    raw = _one(query, name)
    if raw is None or raw == "":
        if default is None:
            raise QueryError(f"{name} is required: {what} in {rng}")
        return default
    if not (_INT_RE if whole else _FLOAT_RE).fullmatch(raw):  # int() / float() also take other scripts' digits and '1_0'
        raise QueryError(f"{name} must be {what} in {rng} (ASCII digits), got {raw!r}")
    v = int(raw, 10) if whole else float(raw)
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        raise QueryError(f"{name} must be in {rng}, got {raw}")
    return v


def _choice(query, name, allowed, default=None):
    raw = _one(query, name)
    if raw is None or raw == "":
        if default is None:
            raise QueryError(f"{name} is required: one of {', '.join(allowed)}")
        return default
    if raw not in allowed:
        raise QueryError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _eps_grid() -> ModelSigmas:
    # SD1.5's discrete sigmas as ComfyUI holds them (a float32 buffer), so the preview matches what
    # the nodes compute from a real SD1.5 / analytic eps model
    vp = ModelSigmas.discrete_vp()
    return ModelSigmas(families.EPS, vp.table.float().double(), "sd15")


def _flow_grid(shift: float) -> ModelSigmas:
    fl = ModelSigmas.flow(shift)
    return ModelSigmas(families.FLOW, fl.table.float().double(), fl.name)


def model_sigmas_for(query):
    """The ModelSigmas the query describes, or None when it describes no model."""
    family = _one(query, "family")
    has_range = _one(query, "sigma_min") is not None or _one(query, "sigma_max") is not None
    has_shift = _one(query, "shift") is not None
    if family is None and not has_range:
        if has_shift:
            raise QueryError("shift needs family=flow")
        return None
    family = _choice(query, "family", families.FAMILIES, default=families.EPS)
    if has_range:
        if has_shift:
            raise QueryError("give either shift or sigma_min/sigma_max, not both")
        smin = _number(query, "sigma_min", 0.0, 1e4, lo_open=True)
        smax = _number(query, "sigma_max", 0.0, 1e4, lo_open=True)
        try:
            check_sigma_range(smin, smax, family)
        except ValueError as e:
            raise QueryError(str(e)) from None
        return ModelSigmas.from_range(family, smin, smax)
    if family == families.FLOW:
        return _flow_grid(_number(query, "shift", 0.01, 100.0, default=1.0))
    if has_shift:
        raise QueryError("shift applies to family=flow only")
    return _eps_grid()


def sigmas_for_query(query, check_interrupt=None) -> list:
    """The sigma list for a query mapping (name -> str or [str]). Raises QueryError with the reason.
    ``check_interrupt`` (a callable that raises to stop, e.g. :func:`deadline_check`) is handed to the
    schedule code."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise QueryError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    schedule = _choice(query, "schedule", SCHEDULE_NAMES)
    steps = _number(query, "steps", 1, MAX_STEPS, whole=True)
    denoise = _number(query, "denoise", 0.01, 1.0, default=1.0)
    rho_raw = _one(query, "rho")
    rho = None if rho_raw in (None, "") else _number(query, "rho", 0.0, 100.0, lo_open=True)
    ms = model_sigmas_for(query)
    model_type = _one(query, "model_type")
    saved = _one(query, "saved_schedule")
    if schedule != "ays":
        for name, v in (("model_type", model_type), ("saved_schedule", saved)):
            if v not in (None, "", NONE):
                raise QueryError(f"{name} applies to schedule=ays only")
    try:
        if schedule == "ays":
            if model_type == "auto":
                raise QueryError("model_type auto is decided by the connected model; ask for one of "
                                 + ", ".join(AYS_MODEL_TYPES))
            model_type = _choice(query, "model_type", AYS_MODEL_TYPES, default="SD1")
            if saved not in (None, "", NONE):
                from .schedulers import load_saved_ays, saved_ays_names
                if saved not in saved_ays_names():
                    raise QueryError(f"saved_schedule {saved!r} is not in models/fewstep_ays")
                table, _, _ = load_saved_ays(saved, model_sigmas=ms)
                s = ays_sigmas(model_type, steps, denoise, ms, table=table, check_interrupt=check_interrupt)
            else:
                s = ays_sigmas(model_type, steps, denoise, ms, check_interrupt=check_interrupt)
        else:
            s = get_schedule(schedule, steps, ms if ms is not None else _eps_grid(), denoise, rho,
                             check_interrupt=check_interrupt)
    except QueryError:
        raise
    except ValueError as e:  # the schedule code's own range checks (e.g. too many steps for the range)
        raise QueryError(str(e)) from None
    return [float(v) for v in sigmas_out(s).tolist()]


# --- aiohttp ---------------------------------------------------------------------------------------
_POOL = None
_POOL_LOCK = threading.Lock()
_pending = 0


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="fewstep-preview")
        return _POOL


def _compute(query, check):
    check()  # a request that waited in the pool past its deadline does no work
    return sigmas_for_query(query, check_interrupt=check)


async def _handle_sigmas(request):
    """Parse and compute on the preview pool (never on the event loop), under the deadline."""
    from aiohttp import web
    global _pending

    query = {k: request.query.getall(k) for k in request.query.keys()}
    if _pending >= MAX_PENDING:
        return web.json_response({"error": f"{_pending} previews are being computed; try again shortly"},
                                 status=503, headers={"Retry-After": "1"})
    _pending += 1
    limit = TIME_LIMIT_S
    try:
        fut = asyncio.get_running_loop().run_in_executor(_pool(), _compute, query, deadline_check(limit))
        # the deadline is checked inside the schedule code; this outer limit only guards against a
        # computation that stops checking (the thread is left to finish, its answer dropped)
        body = await asyncio.wait_for(fut, limit + 5.0)
    except QueryError as e:
        return web.json_response({"error": str(e)}, status=400)
    except (PreviewTimeout, asyncio.TimeoutError) as e:
        reason = str(e) if isinstance(e, PreviewTimeout) else f"the preview took longer than {limit:g} s"
        return web.json_response({"error": reason}, status=503)
    except Exception as e:  # a bug in the schedule code: say what it was, keep the server up
        log.exception("FewStep: /fewstep/sigmas failed for %s", query)
        return web.json_response({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)
    finally:
        _pending -= 1
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def register_with_comfyui():
    """Add ``GET /fewstep/sigmas`` to ComfyUI's routes (only under a running PromptServer). Idempotent."""
    inst = prompt_server()
    if inst is None:
        return False
    routes = inst.routes
    for r in routes:
        if getattr(r, "method", None) == "GET" and getattr(r, "path", None) == ROUTE:
            return False
    routes.get(ROUTE)(_handle_sigmas)
    return True

