"""The Align-Your-Steps optimizer (Sabour, Fidler, Kreis 2024, arXiv 2404.14507): a sampling
schedule computed for a given model (its own denoiser, its own data) by minimising the KL-divergence
upper bound (KLUB) between the continuous reverse SDE and its discretisation on the schedule.

torch/numpy only; the model enters as a k-diffusion denoiser ``D(x, sigma) -> x0`` (CFG applied).

The bound
---------
Write every family in its scaled (variance-exploding) form ``y = x / alpha = x0 + s * eps`` with
``s = sigma / alpha = exp(-lambda)``. The reverse SDE ``dy = -2 (D - y)/s ds + sqrt(2 s) dw`` and its
discretisation on ``s_0 > s_1 > ... > s_n`` -- the same SDE with the denoiser frozen at the start of
each step, which every first-order stochastic solver integrates exactly -- differ only in the drift,
by ``2 (D(y_s, s) - D(y_i, s_i)) / s``. Girsanov gives the path-space KL bound (the paper's KLUB)

    KLUB = sum_i  int_{s_{i+1}}^{s_i}  E || D(y_s, s) - D(y_{s_i}, s_i) ||^2  ds / s^3
         = sum_i  int_{lambda_i}^{lambda_{i+1}}  e^{2 lambda}  E || D(x_lambda) - D(x_{lambda_i}) ||^2  d lambda,

where the expectation is over the forward process: x0 from the data, x at the interior point, and
x at the step's start obtained by noising that point further. It is invariant under the per-time
scaling y = x / alpha and the change of time variable, so the one estimator serves eps and flow
models alike; it works in lambda (the logSNR).

Monte-Carlo estimate (``KLUBEstimator``): for every data latent n, one forward-noised pair per
interval, with the interior point drawn from the density proportional to ``e^{2 lambda}`` on the
interval (importance sampling: the weight is then a constant, ``(SNR_lo - SNR_hi)/2``). The uniform
numbers (stratified over n) and the Gaussian noises are drawn once and shared by every interval and
candidate (common random numbers), so candidate schedules are compared on the same randomness and
the estimate is a deterministic function of the schedule.

Search (``optimize_ays``)
-------------------------
As the paper: start from a hand-crafted schedule and refine one interior point at a time with its
neighbours (and the endpoints) fixed: only the two intervals next to the point depend on it, so
each candidate costs two interval estimates. Several candidates per point on a window in lambda
between the neighbours that shrinks every sweep; a candidate counts only when its improvement of the
bound is statistically significant (paired over the samples, ``z`` standard errors).

Early stopping. The bound is loose: it upper-bounds the KL of the *stochastic* sampler, and its
e^{2 lambda} weight puts most of its mass at low noise, where an ODE solver's error is not. Minimised
to the end it crowds the steps towards sigma_min and samples worse (tested: on a single Gaussian it
reaches the exact minimiser of the closed-form bound, which takes one step from sigma_max to 0.06 sigma_max).
The paper stops early for this reason. Here the stopping is measured rather than fixed: with
``validation`` teacher pairs (noise and its fine-solver endpoint, made by the model), each move the
bound proposes is kept only when it also lowers the sampling error of those pairs significantly
(paired, ``z`` standard errors; ``accept="move"``; ``"sweep"`` checks once per sweep and keeps the best
sweep), and the sweeps stop when a sweep keeps no move. Without validation they stop when a sweep
lowers the bound by less than ``tol``. ``init="auto"`` with validation refines from each of
``auto_init`` (Karras and the published SD1.5 AYS table remapped through logSNR) and keeps the result
with the lowest validation error; without validation it starts from the first.

Then the schedule is subdivided (10 -> 20 -> 40: a new point at the lambda-midpoint of every step)
and refined again; other step counts are log-linear interpolations of the next finer level
(``fewstep.schedules.ays.loglinear_interp``, the paper's rule).

Stage 2: alignment to the solver (FewStep's extension, ``align``)
------------------------------------------------------------------
Early stopping keeps the bound from doing harm, but the bound cannot find what an ODE solver needs
(measured on the analytic model: the kept schedules sample only 1-14% better than their start). With
``align`` the level then goes through coordinate sweeps on the teacher pairs' sampling error itself,
with the solver the schedule is for (``_align``): each interior point tries candidates on the same
lambda windows and takes the one that lowers the pairs' error most, when that is significant (paired,
``z`` standard errors); endpoints stay fixed, eps points stay on the model's grid. This is the
teacher-matching idea of learned-timestep methods (e.g. LD3, Tong et al. 2025), done with the same
derivative-free coordinate search as the paper's stage. ``TeacherError`` makes it cheap: a candidate
that first differs from the incumbent at point i replays the incumbent's first i denoiser outputs.
More teacher pairs hold for more noises: on the analytic model 32 pairs fit a few of the heavy-tailed
per-noise errors, 512 generalise (bench/ays.py).

Discrete EPS models (SD1.x, SDXL) evaluate their network at integer timesteps: there every candidate
point is rounded to the model's own sigma grid (as the published AYS schedules are integer
timesteps), so the bound is minimised over schedules the model can actually take.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..core import families
from ..core.model_sigmas import ModelSigmas
from .ays import loglinear_interp

#: the step counts the optimizer refines (10, then subdivided); others are interpolated
LEVELS = (10, 20, 40)
MIN_SAMPLES = 2
MAX_SAMPLES = 4096
#: steps of the fine teacher solve (DPM-Solver++(2M), logSNR-uniform) that makes data latents and
#: validation pairs
TEACHER_STEPS = 100
#: at most this many teacher pairs validate the early stopping
VALIDATION_PAIRS = 32


class AYSInterrupted(Exception):
    """Raised through ``interrupt`` hooks that do not raise themselves (they return True)."""


# --- family helpers -------------------------------------------------------------------------------
def snr(sigma, family: str) -> torch.Tensor:
    """(alpha/sigma)^2 = e^{2 lambda}; exactly 0 at a flow sigma of 1."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if family == families.EPS:
        return 1.0 / (s * s)
    return ((1.0 - s) / s) ** 2


def sigma_from_snr(q, family: str) -> torch.Tensor:
    q = torch.as_tensor(q, dtype=torch.float64)
    if family == families.EPS:
        return q.rsqrt()
    return 1.0 / (1.0 + q.sqrt())


def levels_for(steps: int) -> tuple:
    """The subdivision levels needed for ``steps``: 10, then 20, then 40 as steps grow."""
    out = [LEVELS[0]]
    for lv in LEVELS[1:]:
        if steps > out[-1]:
            out.append(lv)
    return tuple(out)


# --- the estimator --------------------------------------------------------------------------------
class KLUBEstimator:
    """Monte-Carlo estimate of the KLUB of single steps ``[sigma_hi -> sigma_lo]`` of a model.

    ``denoiser(x, sigma_batch) -> x0`` (k-diffusion convention, CFG applied), ``x0``: (N, ...) data
    latents. Interval values are per-sample vectors (N,) of the per-element mean squared denoiser
    change times the importance weight; their mean is the interval's KLUB per latent element.
    Results are cached per interval: the randomness is fixed, so an interval always gets the same value.
    """

    def __init__(self, denoiser: Callable, x0: torch.Tensor, family: str, seed: int = 0,
                 batch_size: int | None = None, interrupt: Callable | None = None,
                 dtype: torch.dtype | None = None):
        self.denoiser = denoiser
        self.family = families.check_family(family)
        if x0.ndim < 2 or x0.shape[0] < MIN_SAMPLES:
            raise ValueError(f"samples must be at least {MIN_SAMPLES} data latents, got {tuple(x0.shape)}")
        self.dtype = dtype or (x0.dtype if x0.is_floating_point() else torch.float32)
        self.x0 = x0.to(self.dtype)
        n = x0.shape[0]
        self.n = n
        self.batch_size = int(batch_size) if batch_size else n
        self.interrupt = interrupt
        g = torch.Generator().manual_seed(int(seed) * 2 + 1)
        perm = torch.randperm(n, generator=g).to(torch.float64)
        self.u = (perm + torch.rand(n, generator=g, dtype=torch.float64)) / n  # stratified in (0, 1)
        self.eps_t = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(x0.device, self.dtype)
        self.eps_up = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(x0.device, self.dtype)
        self.cache: dict = {}
        self.evaluations = 0  # denoiser calls on single latents (a CFG model counts its own)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        outs = []
        for a in range(0, x.shape[0], self.batch_size):
            if self.interrupt is not None and self.interrupt():
                raise AYSInterrupted("AYS optimisation interrupted")
            xb = x[a:a + self.batch_size]
            sb = sigma[a:a + self.batch_size].to(x.device, x.dtype)
            outs.append(self.denoiser(xb, sb).to(self.dtype))
            self.evaluations += xb.shape[0]
        return torch.cat(outs)

    def interval(self, sigma_hi: float, sigma_lo: float) -> torch.Tensor:
        """Per-sample KLUB terms (N,) of the step sigma_hi -> sigma_lo (sigma_hi > sigma_lo), the solver's
        denoiser frozen on the step at D(x_hi) (first order: stochastic DDIM / Euler, the paper's bound)."""
        key = (round(float(sigma_hi), 12), round(float(sigma_lo), 12))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        fam = self.family
        q_hi = snr(sigma_hi, fam)
        q_lo = snr(sigma_lo, fam)
        if not (q_lo > q_hi):
            raise ValueError(f"internal: interval [{sigma_hi}, {sigma_lo}] is not decreasing in sigma")
        # interior point with density ~ e^{2 lambda} = SNR: uniform in SNR
        q_t = q_hi + self.u * (q_lo - q_hi)
        sig_t = sigma_from_snr(q_t, fam)
        r = (q_hi / q_t).sqrt()                     # s_t / s_hi (0 when s_hi is infinite)
        view = (-1,) + (1,) * (self.x0.ndim - 1)
        dev, dt = self.x0.device, self.dtype

        def col(v):
            return v.view(view).to(dev, dt)

        a_t = families.alpha(sig_t, fam)
        x_t = col(a_t) * self.x0 + col(sig_t) * self.eps_t
        noise_hi = col(r) * self.eps_t + col((1 - r * r).clamp_min(0).sqrt()) * self.eps_up
        d_t = self._denoise(x_t, sig_t)
        d_hi = self._denoise(self._at(sigma_hi, noise_hi), torch.full((self.n,), float(sigma_hi), dtype=torch.float64))
        msd = (d_t - d_hi).to(torch.float64).pow(2).flatten(1).mean(1).cpu()
        out = msd * float(q_lo - q_hi) / 2.0
        self.cache[key] = out
        return out

    def _at(self, sigma: float, noise: torch.Tensor) -> torch.Tensor:
        a = float(families.alpha(torch.tensor(float(sigma), dtype=torch.float64), self.family))
        return a * self.x0 + float(sigma) * noise

    def schedule(self, sigmas) -> torch.Tensor:
        """Per-sample KLUB (N,) of a whole schedule (descending, positive: sigma_max .. sigma_min)."""
        s = [float(v) for v in sigmas]
        return sum(self.interval(s[j], s[j + 1]) for j in range(len(s) - 1))


# --- search ---------------------------------------------------------------------------------------
@dataclass
class AYSResult:
    sigmas: torch.Tensor                 # steps+1 values, descending, ending in 0 (ready to sample)
    steps: int
    family: str
    sigma_min: float
    sigma_max: float
    levels: dict = field(default_factory=dict)       # n -> n+1 sigmas (sigma_max .. sigma_min), optimised
    klub: dict = field(default_factory=dict)         # n -> (initial, final) total KLUB per element
    sweeps: dict = field(default_factory=dict)       # n -> sweeps run
    stop_reason: dict = field(default_factory=dict)  # n -> why the sweeps stopped
    validation: dict = field(default_factory=dict)   # n -> (initial, kept) sampling error vs teacher
    evaluations: int = 0
    init: str = ""                                   # the starting schedule (auto: the one kept)
    starts: dict = field(default_factory=dict)       # auto: start -> (its, its refined) validation error
    align: str | None = None                         # stage 2's solver (None: the paper's bound only)
    klub_only: dict = field(default_factory=dict)    # align: n -> the level after stage 1 (the bound)
    aligned: dict = field(default_factory=dict)      # align: n -> (error before, after, sweeps, why it stopped)
    # with held-out pairs:
    start_errors: dict = field(default_factory=dict)  # every fixed start -> its held-out error
    start_error: float | None = None                  # the kept start's held-out error
    final_error: float | None = None                  # the returned schedule's held-out error
    fixed_errors: dict = field(default_factory=dict)  # every fixed schedule at `steps` -> its held-out error
    best_fixed: str = ""                              # the lowest of them
    safety: dict = field(default_factory=dict)       # check solver -> optimised / its best fixed (held out)
    kept: str = ""                                    # "optimised", "stage1" or "fixed:<name>"
    guard: str = ""                                   # what the final guard kept, and why


def _snap(sig: float, table: torch.Tensor | None) -> float:
    if table is None:
        return sig
    lt = table.log()
    i = int(torch.argmin((lt - math.log(sig)).abs()))
    return float(table[i])


def _lam_eff(sig: float, family: str, ms: ModelSigmas) -> float:
    """lambda for the search, with a flow sigma_max of 1 at families.schedule_lambda_top."""
    if family == families.FLOW and sig >= 1.0 - 1e-9:
        return families.schedule_lambda_top(sig, family)
    return families.lam(sig, family)


def initial_schedule(n: int, ms: ModelSigmas, init: str = "time_uniform") -> list:
    """The starting point: n+1 positive values from sigma_max to sigma_min, as the published AYS tables
    are. A fixed schedule: the first n+1 values of its (n+1)-step ``get_schedule(init, ...)``, which
    end at sigma_min. "ays": the published SD1.5 table (remapped onto the model through logSNR when its
    range differs), log-linearly interpolated to n+1 values."""
    from . import SCHEDULE_NAMES, get_schedule
    from .ays import ays_full
    if init not in SCHEDULE_NAMES:
        raise ValueError(f"init must be one of {SCHEDULE_NAMES}, got {init!r}")
    if init == "ays":
        full = ays_full("SD1", n, ms)
    else:
        full = get_schedule(init, n + 1, ms)[:-1]  # n+1 positive values, sigma_max .. sigma_min
    s = [float(v) for v in full]
    s[0], s[-1] = ms.sigma_max, ms.sigma_min
    return s


#: the hand-crafted schedules ``init="auto"`` chooses from when no held-out pairs are given
AUTO_INIT = ("karras", "ays")
#: with held-out pairs (``holdout``), ``init="auto"`` starts from every fixed schedule FewStep and ComfyUI
#: offer, each exactly as it samples at the level's step count: FewStep's Karras (rho 7), logSNR-uniform,
#: time-uniform, time-quadratic and beta; ComfyUI's exponential, simple, normal, sgm_uniform and
#: kl_optimal (schedules/comfy_like.py); and the published SD1.5 AYS table remapped onto the model
START_SCHEDULES = ("karras", "logsnr_uniform", "exponential", "time_uniform", "time_quadratic", "beta",
                   "kl_optimal", "simple", "normal", "sgm_uniform", "ays")
#: how far below the last positive sigma a level ends when that sigma is sigma_min already (the level's
#: last value only stands for the final jump to 0)
FLOOR_RATIO = 0.5
#: the final schedule is kept only when, with every check solver, its held-out error is at most this
#: many times that solver's best fixed schedule (the issue's bound is 1.5x; a margin for 32 pairs)
SAFE_RATIO = 1.4
#: stage 2 on an unsafe schedule: the most a move towards safety may raise the pairs' rms error
RESTORE_LOSS = 1.05
#: fitted pairs the in-loop safety check of stage 2 samples (the final guard uses every held-out pair)
SAFETY_FIT_PAIRS = 16


def fixed_schedule(name: str, n: int, ms: ModelSigmas) -> torch.Tensor:
    """The n-step sampling schedule (n+1 sigmas ending in 0) of a START_SCHEDULES entry."""
    from . import get_schedule
    from .ays import ays_full
    from .comfy_like import COMFY_SCHEDULES, comfy_schedule
    if name in COMFY_SCHEDULES:
        return comfy_schedule(name, n, ms)
    if name == "ays":
        return ays_full("SD1", n, ms)
    return get_schedule(name, n, ms)


def level_of(sampling, ms: ModelSigmas) -> list:
    """A sampling schedule (n+1 sigmas ending in 0) as a level: n+1 positive values from sigma_max whose
    last, a floor of FLOOR_RATIO times the smaller of the last positive sigma and sigma_min, only stands
    for the final 0, so that ``schedule_for_steps`` gives the sampling schedule back exactly and the last
    positive sigma can move down to sigma_min itself (the searches keep every sampled sigma >= sigma_min)."""
    s = [float(v) for v in sampling[:-1]]
    s[0] = ms.sigma_max
    return s + [min(s[-1], ms.sigma_min) * FLOOR_RATIO]


def start_levels(n: int, ms: ModelSigmas, names=START_SCHEDULES) -> dict:
    """name -> level of every fixed schedule at n steps that is a valid, distinct schedule (duplicates,
    e.g. exponential = logSNR-uniform on eps models, are kept under the first name)."""
    out = {}
    for name in names:
        try:
            lv = level_of(fixed_schedule(name, n, ms), ms)
        except ValueError:
            continue
        if any(b >= a for a, b in zip(lv[:-1], lv[1:])):
            continue
        t = torch.tensor(lv, dtype=torch.float64)
        if any(float(((t - torch.tensor(o, dtype=torch.float64)).abs() / t).max()) < 1e-6 for o in out.values()):
            continue
        out[name] = lv
    return out


def subdivide(sigmas, ms: ModelSigmas) -> list:
    """Insert the lambda-midpoint of every step (the paper's 10 -> 20 -> 40 subdivision)."""
    fam = ms.family
    if float(sigmas[-1]) < ms.sigma_min * (1 - 1e-9):
        # a floor-ended level (level_of): subdivide the sampled sigmas, the last step to the floor at
        # its midpoint clamped to sigma_min, or, when the last sampled sigma is sigma_min already, the
        # step before it in thirds
        pos = [float(v) for v in sigmas[:-1]]
        lam = [_lam_eff(v, fam, ms) for v in pos]
        out = [pos[0]]
        for j in range(1, len(pos)):
            out.append(float(families.sigma_from_lam(0.5 * (lam[j - 1] + lam[j]), fam)))
            out.append(pos[j])
        low = families.lam(ms.sigma_min, fam)
        last_mid = 0.5 * (lam[-1] + families.lam(float(sigmas[-1]), fam))
        if pos[-1] > ms.sigma_min * (1 + 1e-6):
            out.append(max(ms.sigma_min, float(families.sigma_from_lam(min(last_mid, low), fam))))
        else:
            a, b = lam[-2], lam[-1]
            out[-2:-1] = [float(families.sigma_from_lam(a + (b - a) / 3, fam)),
                          float(families.sigma_from_lam(a + 2 * (b - a) / 3, fam))]
        return out + [min(out[-1], ms.sigma_min) * FLOOR_RATIO]
    out = [float(sigmas[0])]
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        la, lb = _lam_eff(float(a), fam, ms), _lam_eff(float(b), fam, ms)
        out.append(float(families.sigma_from_lam(0.5 * (la + lb), fam)))
        out.append(float(b))
    return out


def _local(est: KLUBEstimator, s: list, i: int) -> torch.Tensor:
    """The part of the schedule's KLUB that depends on point i: the steps that start or end at it."""
    return sum(est.interval(s[j], s[j + 1]) for j in range(max(0, i - 1), min(len(s) - 1, i + 1)))


def _with(sched: list, i: int, value: float) -> list:
    trial = list(sched)
    trial[i] = value
    return trial


def _candidates(sched: list, i: int, w: float, ms: ModelSigmas, table, count: int) -> list:
    """Point i's candidate values (both stages): ``count`` points on a lambda window of ``w`` times the
    distance to each neighbour, snapped to the grid, strictly between the neighbours, other than the
    current value and not below sigma_min."""
    fam = ms.family
    hi, cur, lo = sched[i - 1], sched[i], sched[i + 1]
    l_hi, l_cur, l_lo = _lam_eff(hi, fam, ms), _lam_eff(cur, fam, ms), _lam_eff(lo, fam, ms)
    out = []
    for lv in np.linspace(l_cur - w * (l_cur - l_hi), l_cur + w * (l_lo - l_cur), count):
        s = _snap(float(families.sigma_from_lam(float(lv), fam)), table)
        if lo < s < hi and s not in out and s != cur and s >= ms.sigma_min * (1 - 1e-12):
            out.append(s)
    return out


def _bound_proposal(est: KLUBEstimator, sched: list, i: int, cands: list, z: float):
    """The candidate for point i that lowers the bound the most, significantly (paired over the samples,
    ``z`` standard errors), or None."""
    base = _local(est, sched, i)
    proposals = []
    for s in cands:
        d = _local(est, _with(sched, i, s), i) - base
        if _significant(d, z):
            proposals.append((-float(d.mean()), s))
    proposals.sort(reverse=True)
    return proposals[0][1] if proposals else None


def _sweep(est: KLUBEstimator, sched: list, w: float, ms: ModelSigmas, table, candidates: int, z: float,
           validate: Callable | None, cur_val, tick: Callable):
    """One stage-1 sweep over the interior points (in place): each takes the bound's best proposal, and
    with ``validate`` only when that also lowers the pairs' sampling error significantly.
    Returns (points moved, proposals the pairs rejected, the pairs' current errors)."""
    moved = rejected = 0
    for i in range(1, len(sched) - 1):
        best = _bound_proposal(est, sched, i, _candidates(sched, i, w, ms, table, candidates), z)
        if best is not None and validate is not None:
            v = validate(_with(sched, i, best))
            if _significant(v - cur_val, z):
                cur_val = v
            else:
                best = None
                rejected += 1
        if best is not None:
            sched[i] = best
            moved += 1
        tick()
    return moved, rejected, cur_val


def _refine(est: KLUBEstimator, sched: list, ms: ModelSigmas, iterations: int, candidates: int,
            table: torch.Tensor | None, z: float, tol: float, window: float, shrink: float, tick: Callable,
            validate: Callable | None):
    """Stage 1 on one level: coordinate sweeps on the bound, the window shrinking by ``shrink`` a sweep.
    Stops when no point moves, when every proposal of a sweep was rejected by the pairs, or (without
    pairs) when a sweep lowers the bound by less than ``tol``.
    Returns (schedule, klub0, klub1, sweeps, reason, val0, val1)."""
    total0 = prev = float(est.schedule(sched).mean())
    val0 = cur_val = validate(sched) if validate is not None else None
    best_val, best_sched, best_klub, best_sweep = val0, list(sched), total0, 0
    reason = f"iterations ({iterations}) done"
    sweeps = 0
    for k in range(iterations):
        sweeps += 1
        moved, rejected, cur_val = _sweep(est, sched, window * (shrink ** k), ms, table, candidates, z, validate,
                                          cur_val, tick)
        total = float(est.schedule(sched).mean())
        if validate is not None and moved:
            best_val, best_sched, best_klub, best_sweep = cur_val, list(sched), total, sweeps
        elif validate is not None and rejected:
            reason = (f"early stop: in sweep {sweeps} every move the bound proposed ({rejected}) would have "
                      "raised the sampling error")
            break
        if moved == 0:
            reason = f"converged: no significant move in sweep {sweeps}"
            break
        if validate is None and prev - total < tol * prev:
            reason = f"early stop: sweep {sweeps} lowered the bound by {(prev - total) / prev:.2%} < {tol:.2%}"
            prev = total
            break
        prev = total
    if validate is None:
        return sched, total0, prev, sweeps, reason, None, None
    if best_sweep != sweeps:
        reason += f"; kept sweep {best_sweep} (lowest sampling error)"
    return best_sched, total0, best_klub, sweeps, reason, _rms(val0), _rms(best_val)


# --- stage 2: alignment to the solver (FewStep's extension) -----------------------------------------
#: solvers stage 2 can align to: deterministic, one model call per step at the step's start sigma, so
#: call k depends only on sigmas[0..k] (what the prefix cache relies on; tested against no cache)
ALIGN_SOLVERS = ("dpmpp_2m", "dpmpp_3m", "euler", "ddim", "deis_3", "unipc_bh2")
#: the fewest teacher pairs stage 2 may refine on: with fewer, moves that lower those pairs' error raise
#: it on other noises (analytic eps model, 8 pairs: 1.4x the stage-1 error on held-out noises)
ALIGN_MIN_PAIRS = 32
#: device memory the prefix cache may hold (denoiser outputs of the incumbent and of the best candidate)
CACHE_BYTES = 1 << 30


def _solver_fn(name: str, family: str) -> Callable:
    from ..samplers.registry import SOLVERS
    spec = SOLVERS[name]

    def solve(model, x, sigmas):
        return spec(model, x, sigmas, family=family)
    return solve


class TeacherError:
    """Per-pair squared endpoint error (N,) of sampling teacher pairs ``(x_T, x_ref)`` on a schedule.

    ``__call__(sched)``: sample on ``sched`` (sigma_max .. sigma_min; the sampling sigmas end in 0).
    ``trial(sched, i)`` / ``adopt(...)``: with ``cache=True`` the denoiser outputs of the incumbent
    schedule (the last one adopted) are kept, and a trial that first differs from it at index ``i``
    replays the incumbent's first ``i`` outputs instead of calling the model (exact for the
    ALIGN_SOLVERS: their call k is at sigma_k on a state made from sigmas[0..k]). The cache keeps at
    most ``cache_bytes`` of outputs; calls past that are made again.
    """

    def __init__(self, denoiser: Callable, pairs: tuple, family: str, solver: Callable, batch_size: int | None,
                 interrupt: Callable | None, count: Callable, cache: bool = False, cache_bytes: int = CACHE_BYTES):
        x_T, x_ref = pairs
        if x_T.shape != x_ref.shape or x_T.shape[0] < 1:
            raise ValueError("validation must be (x_T, x_ref) of the same shape")
        self.x_T, self.x_ref = x_T, x_ref
        self.denoiser, self.solver, self.interrupt, self.count = denoiser, solver, interrupt, count
        self.bs = int(batch_size) if batch_size else x_T.shape[0]
        self.cache = cache
        per_call = x_T[0].numel() * x_T.element_size() * x_T.shape[0]
        self.max_calls = int(cache_bytes // max(1, 3 * per_call)) if cache else 0
        self.incumbent: list = []              # per batch: denoiser outputs of calls 0, 1, ...

    def _model(self, replay: list, reuse: int, record: list | None):
        calls = [0]

        def model(x, sigma, **kw):
            k = calls[0]
            calls[0] += 1
            if k < reuse:
                return replay[k]
            if self.interrupt is not None and self.interrupt():
                raise AYSInterrupted("AYS optimisation interrupted")
            self.count(x.shape[0])
            out = self.denoiser(x, sigma, **kw)
            if record is not None and k < self.max_calls:
                record.append(out)
            return out
        return model

    def trial(self, sched, first_diff: int = 0):
        """(per-pair errors, outputs to ``adopt``) of sampling on ``sched``, which equals the incumbent
        before index ``first_diff``."""
        sig = torch.tensor(list(sched[:-1]) + [0.0], dtype=torch.float64)
        errs, recs = [], []
        for b, a in enumerate(range(0, self.x_T.shape[0], self.bs)):
            cached = self.incumbent[b] if b < len(self.incumbent) else []
            reuse = min(int(first_diff), len(cached))
            rec = list(cached[:reuse]) if self.cache else None
            out = self.solver(self._model(cached, reuse, rec), self.x_T[a:a + self.bs].clone(), sig)
            ref = self.x_ref[a:a + self.bs]
            errs.append((out.to(torch.float64) - ref.to(torch.float64)).pow(2).flatten(1).mean(1).cpu())
            recs.append(rec)
        return torch.cat(errs), recs

    def adopt(self, recs) -> None:
        if self.cache:
            self.incumbent = recs

    def __call__(self, sched) -> torch.Tensor:
        return self.trial(sched, 0)[0]


def _significant(d: torch.Tensor, z: float) -> bool:
    """A paired improvement (d = new - old, per pair) larger than z standard errors."""
    se = float(d.std(unbiased=True)) / math.sqrt(d.numel()) if d.numel() > 1 else 0.0
    return float(d.mean()) < -z * se


def _align_point(errors: TeacherError, sched: list, i: int, cands: list, cur, cur_worst: float, z: float,
                 safety: "Safety | None", safe_tries: int):
    """Stage 2 at point i: (value, errors, outputs, worst check ratio) of the candidate to take, or None.
    Of the significant candidates the ``safe_tries`` best are tried, best first, and the first safe one
    is taken; while the schedule is unsafe, failing that, the candidate that lowers the worst check ratio
    most (by 2% at least) at a loss of at most RESTORE_LOSS."""
    top = []                                          # the best significant (mean change, value, errors, outputs)
    keep = 1 if safety is None else safe_tries
    unsafe = safety is not None and cur_worst > safety.ratio
    near = None                                       # unsafe: (worst ratio, value, errors, outputs), the lowest
    for s in cands:
        trial = _with(sched, i, s)
        e, r = errors.trial(trial, i)
        d = e - cur
        if _significant(d, z):
            top = sorted(top + [(float(d.mean()), s, e, r)], key=lambda t: t[0])[:keep]
        elif unsafe and _rms(e) <= RESTORE_LOSS * _rms(cur):  # a small loss: a step towards safety?
            w_ = safety.worst(trial)[1]
            if near is None or w_ < near[0]:
                near = (w_, s, e, r)
    for _, s, e, r in top:
        w_ = safety.worst(_with(sched, i, s))[1] if safety is not None else 0.0
        if safety is None or w_ <= max(safety.ratio, cur_worst if unsafe else 0.0):
            return s, e, r, w_
    if near is not None and near[0] < cur_worst * 0.98:
        return near[1], near[2], near[3], near[0]
    return None


def _align(errors: TeacherError, sched: list, ms: ModelSigmas, sweeps: int, candidates: int,
           table: torch.Tensor | None, z: float, window: float, shrink: float, tick: Callable,
           safety: "Safety | None" = None, safe_tries: int = 2):
    """Stage 2: coordinate sweeps on the sampling error of the teacher pairs itself. Every interior point
    in turn takes the candidate (on the same lambda window as stage 1) that lowers the pairs' error the
    most, when that is significant (paired, ``z`` standard errors) and, with ``safety`` (a Safety: no
    check solver far worse than with its best fixed schedule), safe (``_align_point``).
    Returns (schedule, error before, error after, sweeps run, why it stopped)."""
    sched = list(sched)
    cur, recs = errors.trial(sched, 0)
    errors.adopt(recs)
    err0 = _rms(cur)
    cur_worst = safety.worst(sched)[1] if safety is not None else 0.0
    reason = f"iterations ({sweeps}) done"
    run = 0
    for k in range(sweeps):
        run += 1
        moved = 0
        w = window * (shrink ** k)
        for i in range(1, len(sched) - 1):
            pick = _align_point(errors, sched, i, _candidates(sched, i, w, ms, table, candidates), cur, cur_worst,
                                z, safety, safe_tries)
            if pick is not None:
                sched[i], cur, recs, cur_worst = pick
                errors.adopt(recs)
                moved += 1
            tick()
        if moved == 0:
            reason = f"converged: no significant move in sweep {run}"
            break
    return sched, err0, _rms(cur), run, reason


def _check_options(x0, model_sigmas, steps, iterations, candidates, init, auto_init, align, solver, refine_starts,
                   holdout, align_candidates, validation):
    """optimize_ays's arguments, checked; returns (steps, iterations)."""
    from . import SCHEDULE_NAMES
    from ._common import check_steps
    steps = check_steps(steps, "steps", minimum=2)
    iterations = check_steps(iterations, "iterations", minimum=1)
    if not isinstance(candidates, int) or not (2 <= candidates <= 64):
        raise ValueError(f"candidates must be in [2, 64], got {candidates!r}")
    if not isinstance(model_sigmas, ModelSigmas):
        raise TypeError("model_sigmas must be a fewstep ModelSigmas")
    if x0.shape[0] < MIN_SAMPLES or x0.shape[0] > MAX_SAMPLES:
        raise ValueError(f"samples must be in [{MIN_SAMPLES}, {MAX_SAMPLES}] data latents, got {x0.shape[0]}")
    if not torch.isfinite(x0).all():
        raise ValueError("the data latents contain NaN or inf")
    inits = ("auto",) + tuple(SCHEDULE_NAMES)
    if init not in inits:
        raise ValueError(f"init must be one of {inits}, got {init!r}")
    if not auto_init or any(x not in inits[1:] for x in auto_init):
        raise ValueError(f"auto_init must be a non-empty tuple of {inits[1:]}, got {auto_init!r}")
    if align is not None and solver is None and align not in ALIGN_SOLVERS:
        raise ValueError(f"align must be None or one of {ALIGN_SOLVERS}, got {align!r}")
    if not isinstance(refine_starts, int) or refine_starts < 1:
        raise ValueError(f"refine_starts must be a whole number >= 1, got {refine_starts!r}")
    if holdout is not None and (holdout[0].shape != holdout[1].shape or holdout[0].shape[0] < 2):
        raise ValueError("holdout must be (x_T, x_ref) of the same shape, at least 2 pairs")
    if not isinstance(align_candidates, int) or not (2 <= align_candidates <= 64):
        raise ValueError(f"align_candidates must be in [2, 64], got {align_candidates!r}")
    if align is not None and validation is None:
        raise ValueError("align needs validation pairs (x_T, x_ref): stage 2 refines on their sampling error")
    if align is not None and validation[0].shape[0] < ALIGN_MIN_PAIRS:
        raise ValueError(f"align needs at least {ALIGN_MIN_PAIRS} validation pairs, got {validation[0].shape[0]}: "
                         "with fewer, stage 2 fits those pairs and samples other noises worse")
    return steps, iterations


def _teacher_errors(denoiser, validation, holdout, ms, solver, align, align_cache, check_solvers, safe_ratio,
                    batch_size, interrupt, count):
    """(validate, held, safety_fit, safety_held): the TeacherErrors of the validation and held-out pairs and
    the Safety checks on a few validation pairs and on the held-out ones (None where not asked for)."""
    fam = ms.family
    validate = held = safety_fit = safety_held = None
    if validation is not None:
        if align_cache is None:
            align_cache = solver is None
        if solver is None:
            solver = _solver_fn(align or "dpmpp_2m", fam)
        validate = TeacherError(denoiser, validation, fam, solver, batch_size, interrupt, count,
                                cache=align is not None and bool(align_cache))
        if holdout is not None:
            held = TeacherError(denoiser, holdout, fam, solver, batch_size, interrupt, count)
    if held is not None and check_solvers:
        k = min(SAFETY_FIT_PAIRS, validation[0].shape[0])
        safety_fit = Safety(denoiser, (validation[0][:k], validation[1][:k]), fam, ms, check_solvers, safe_ratio,
                            batch_size, interrupt, count)
        safety_held = Safety(denoiser, holdout, fam, ms, check_solvers, safe_ratio, batch_size, interrupt, count)
    return validate, held, safety_fit, safety_held


def _held_out_starts(held, safety_held, n: int, ms: ModelSigmas, table, safe_ratio: float, refine_starts: int):
    """(pool, held-out error of each start, the starts to refine): every START_SCHEDULES entry at ``n``
    steps that survives the grid rounding, scored on the held-out pairs; the best first, then (with
    safety checks) the best safe ones."""
    pool = start_levels(n, ms)
    if table is not None:       # a start must survive the grid rounding the search applies
        def on_grid(v):
            w = [v[0]] + [_snap(x, table) for x in v[1:-1]] + [v[-1]]
            return all(b < a for a, b in zip(w[:-1], w[1:]))
        pool = {k: v for k, v in pool.items() if on_grid(v)}
    start_err = {name: _rms(held(sched)) for name, sched in pool.items()}
    ranked = sorted(pool, key=lambda k: start_err[k])
    if safety_held is not None:   # the best start, and the best safe one (within safe_ratio of every check)
        worst = {k: safety_held.worst(pool[k])[1] for k in pool}
        safe_first = sorted(pool, key=lambda k: (worst[k] > safe_ratio, start_err[k]))
        ranked = [ranked[0]] + [k for k in safe_first if k != ranked[0]]
    return pool, start_err, ranked[:refine_starts]


class _Progress:
    """progress(done, total) after every point; sweeps a stage did not need count as done. With
    ``stage``, ``begin(text, n)`` names a refinement of an n-step level and every tick says its sweep
    ("<text>: sweep k of <iterations>")."""

    def __init__(self, total: int, progress: Callable | None, stage: Callable | None = None, iterations: int = 1):
        self.done, self.total, self.progress = 0, total, progress
        self.stage, self.iterations = stage, iterations
        self.phase = None

    def say(self, text: str):
        if self.stage is not None:
            self.stage(text)

    def end(self, text: str | None = None):
        self.phase = None
        if text is not None:
            self.say(text)

    def begin(self, text: str, n: int):
        self.phase = (text, self.done, n)
        self.say(f"{text}: sweep 1 of {self.iterations}")

    def tick(self):
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
        if self.phase is not None:
            text, base, n = self.phase
            k = (self.done - base) // max(1, n - 1) + 1
            if k <= self.iterations:
                self.say(f"{text}: sweep {k} of {self.iterations}")

    def skip(self, points: int):
        self.done += points
        if self.progress is not None:
            self.progress(self.done, self.total)


def _snapped(sched: list, table) -> list:
    if table is not None:
        sched = [sched[0]] + [_snap(v, table) for v in sched[1:-1]] + [sched[-1]]
    if any(b >= a for a, b in zip(sched[:-1], sched[1:])):
        raise ValueError(f"steps: the model's sigma grid is too coarse for a {len(sched) - 1}-step schedule")
    return sched


def _first_level(res: AYSResult, refine: Callable, n: int, ms: ModelSigmas, pool, starts: list, start_err: dict,
                 held, prog: _Progress) -> tuple:
    """Stage 1 of the coarsest level from each start; the kept one (res.init, res.starts)."""
    def each(make):
        runs = []
        for i, name in enumerate(starts):
            prog.begin(f"refine {n} steps from {name} ({i + 1} of {len(starts)})", n)
            runs.append((refine(make(name), n), name))
        return runs

    if pool is not None:
        # held-out pairs: refine the best starts on them, keep the one lowest on them after stage 1
        runs = each(lambda name: pool[name])
        scored = [(_rms(held(r[0])), r, name) for r, name in runs]
        _, out, res.init = min(scored, key=lambda t: t[0])
        res.starts = {name: (start_err[name], e) for e, _, name in scored}
        res.start_error = start_err[res.init]
        return out
    # one start, or init "auto" with validation pairs: refine from every start, keep the lowest sampling error
    runs = each(lambda name: initial_schedule(n, ms, name))
    out, res.init = min(runs, key=lambda r: r[0][6] if r[0][6] is not None else 0.0)
    res.starts = {name: (r[5], r[6]) for r, name in runs}
    return out

def optimize_ays(denoiser: Callable, x0: torch.Tensor, model_sigmas: ModelSigmas, steps: int = 10,
                 iterations: int = 8, candidates: int = 9, seed: int = 0, discrete: bool | None = None,
                 batch_size: int | None = None, validation: tuple | None = None, solver: Callable | None = None,
                 init: str = "auto", z: float = 1.0, tol: float = 0.005, window: float = 0.5, shrink: float = 0.85,
                 auto_init: tuple = AUTO_INIT, align: str | None = None, align_candidates: int = 17,
                 holdout: tuple | None = None, check_solvers: dict | None = None, refine_starts: int = 2,
                 align_cache: bool | None = None, safe_ratio: float = SAFE_RATIO,
                 progress: Callable | None = None, interrupt: Callable | None = None,
                 stage: Callable | None = None) -> AYSResult:
    """Optimise an AYS schedule of ``steps`` steps for ``denoiser`` on data latents ``x0`` (N, ...).

    ``model_sigmas``: the model's family and sigma grid (endpoints sigma_max, sigma_min stay fixed).
    ``discrete``: round candidates to the model's sigma grid (default: True for eps models, whose
    networks take integer timesteps; False for flow). ``iterations``: the most sweeps per level.
    ``candidates``: candidate values per point per sweep, on a window of ``window`` times the distance
    to each neighbour (in lambda), shrinking by ``shrink`` every sweep. ``init``: the hand-crafted
    starting schedule (a ``get_schedule`` name, or "auto": the one of AUTO_INIT with the lowest
    validation error). The bound is the paper's first-order one (stochastic DDIM).

    Stage 1 (``_refine``): a point moves on a statistically significant (``z`` paired standard errors)
    improvement of the bound. With ``validation = (x_T, x_ref)`` -- noisy states at sigma_max and their
    fine-solver endpoints (teacher pairs) -- the move must also lower the pairs' sampling error with
    ``solver`` (default DPM-Solver++(2M)) significantly, and the sweep with the lowest error is kept.
    Without validation the sweeps stop when one lowers the bound by less than ``tol`` (relative).

    ``stage(text)`` says where the run is: when the starts are scored, at every sweep of a level's
    refinement or alignment ("refine 10 steps from karras (1 of 2): sweep 1 of 4"; the sweep count is
    the most there may be, early stopping ends sooner), and at the final check.
    ``progress(done, total)`` is called after every point; ``interrupt()`` is called before every
    denoiser batch and may raise (ComfyUI's interrupt) or return True to stop (AYSInterrupted).
    ``align``: a solver of ALIGN_SOLVERS (needs ``validation``): after stage 1 on each level, stage 2
    (``_align``) refines the schedule on the sampling error of the validation pairs with that solver
    itself (at most ``iterations`` sweeps, ``align_candidates`` per point on the same windows, the same
    significance rule; 17 rather than 9: finer moves, at no loss on the held-out noises of bench/ays.py).
    The bound is the paper's; stage 2 is FewStep's: the KLUB bounds the stochastic sampler's error, not an
    ODE solver's, and its optimum crowds low noise. ``solver`` defaults to the ``align`` solver then; with
    another ``solver`` (e.g. one of ComfyUI's samplers, given by the node) ``align`` is only its label, and
    ``align_cache`` says whether its call k depends on sigmas[0..k] only (TeacherError's prefix cache).

    Held-out pairs (``holdout = (x_T, x_ref)``, teacher pairs no stage fits on): with ``init="auto"``
    every START_SCHEDULES entry, exactly as it samples, is scored on them with ``solver`` and the best
    ``refine_starts`` are refined; the refined start with the lowest held-out error is kept (``res.init``).
    At the end (``_guard``) the schedule for ``steps`` competes on the held-out pairs with the stage-1
    schedule and with every fixed schedule at ``steps``: it is kept only when it is not worse than the
    best of them with ``solver`` and, with every solver of ``check_solvers`` (name -> solve(model, x,
    sigmas)), within ``safe_ratio`` of that solver's best fixed schedule; otherwise the best candidate
    that is, or the best fixed schedule itself. ``res.guard`` says what was kept and why.
    Deterministic for a given ``seed``.
    """
    steps, iterations = _check_options(x0, model_sigmas, steps, iterations, candidates, init, auto_init, align,
                                       solver, refine_starts, holdout, align_candidates, validation)
    ms, fam = model_sigmas, model_sigmas.family
    table = ms.table if (fam == families.EPS if discrete is None else discrete) else None
    est = KLUBEstimator(denoiser, x0, fam, seed=seed, batch_size=batch_size, interrupt=interrupt)

    def count(k):
        est.evaluations += k
    validate, held, safety_fit, safety_held = _teacher_errors(
        denoiser, validation, holdout, ms, solver, align, align_cache, check_solvers, safe_ratio, batch_size,
        interrupt, count)
    lv = levels_for(steps)
    multi = init == "auto" and validate is not None
    pool, start_err = None, {}
    if multi and held is not None:
        (stage or (lambda text: None))("score the fixed starts on the held-out pairs")
        pool, start_err, starts = _held_out_starts(held, safety_held, lv[0], ms, table, safe_ratio, refine_starts)
    else:
        starts = list(auto_init) if multi else [init if init != "auto" else auto_init[0]]
    prog = _Progress(sum(iterations * (n - 1) * ((len(starts) if k == 0 else 1) + (align is not None))
                         for k, n in enumerate(lv)), progress, stage, iterations)

    def refine(sched, n):
        out = _refine(est, _snapped(sched, table), ms, iterations, candidates, table, z, tol, window, shrink,
                      prog.tick, validate)
        prog.skip((iterations - out[3]) * (n - 1))   # unused sweeps count as done for the progress bar
        return out

    res = AYSResult(sigmas=torch.empty(0), steps=steps, family=fam, sigma_min=ms.sigma_min, sigma_max=ms.sigma_max,
                    align=align)
    res.start_errors = start_err
    sched = None
    for n in lv:
        if sched is None:
            out = _first_level(res, refine, n, ms, pool, starts, start_err, held, prog)
        else:
            prog.begin(f"refine {n} steps", n)
            out = refine(subdivide(sched, ms), n)
        sched, k0, k1, res.sweeps[n], res.stop_reason[n], v0, v1 = out
        if align is not None:
            sched = _align_level(res, n, sched, prog, validate, ms, iterations, align_candidates, table, z, window,
                                 shrink, safety_fit)
        res.levels[n], res.klub[n] = torch.tensor(sched, dtype=torch.float64), (k0, k1)
        if v0 is not None:
            res.validation[n] = (v0, v1)
    prog.end("final check on the held-out pairs" if held is not None else None)
    res.sigmas = schedule_for_steps(res.levels, steps)
    if held is not None:
        _guard(res, held, safety_held, ms, steps, safe_ratio)
    res.evaluations = est.evaluations
    return res

def _align_level(res: AYSResult, n: int, sched: list, prog: _Progress, validate, ms, iterations, align_candidates,
                 table, z, window, shrink, safety_fit) -> list:
    """Stage 2 on one level: the schedule refined on the sampling error with the aligned solver."""
    res.klub_only[n] = torch.tensor(sched, dtype=torch.float64)
    prog.begin(f"align {n} steps to the sampler", n)
    sched, a0, a1, asw, awhy = _align(validate, sched, ms, iterations, align_candidates, table, z,
                                      window, shrink, prog.tick, safety=safety_fit)
    prog.skip((iterations - asw) * (n - 1))
    res.aligned[n] = (a0, a1, asw, awhy)
    return sched


class Safety:
    """Is a schedule safe with other solvers? Per check solver (name -> solve(model, x, sigmas)), its error
    on the pairs relative to that solver's best fixed schedule (START_SCHEDULES at the same step count)."""

    def __init__(self, denoiser, pairs, family, ms: ModelSigmas, check_solvers: dict, ratio: float, batch_size,
                 interrupt, count):
        self.ms, self.ratio = ms, float(ratio)
        self.te = {name: TeacherError(denoiser, pairs, family, fn, batch_size, interrupt, count)
                   for name, fn in check_solvers.items()}
        self._best: dict = {}

    def best(self, n: int) -> dict:
        if n not in self._best:
            fixed = list(start_levels(n, self.ms).values())
            self._best[n] = {name: min(_rms(te(v)) for v in fixed) for name, te in self.te.items()}
        return self._best[n]

    def ratios(self, sched) -> dict:
        ref = self.best(len(sched) - 1)
        return {name: _rms(te(sched)) / max(ref[name], 1e-300) for name, te in self.te.items()}

    def worst(self, sched) -> tuple:
        r = self.ratios(sched)
        return max(r.items(), key=lambda kv: kv[1]) if r else ("", 0.0)

    def ok(self, sched) -> bool:
        return self.worst(sched)[1] <= self.ratio


def _guard(res: AYSResult, held: "TeacherError", safety: Safety | None, ms: ModelSigmas, steps: int,
           safe_ratio: float) -> None:
    """The final guard on the held-out pairs (see optimize_ays): every candidate -- the optimised schedule,
    the stage-1 schedule, every fixed schedule at ``steps`` -- is scored with the aligned solver; the
    lowest that is safe (within ``safe_ratio`` of every check solver's best fixed schedule) is kept, or, when
    none is, the one whose worst ratio is lowest. Sets res.sigmas (and res.levels when a fixed schedule
    wins), res.guard, res.kept, res.final_error, res.best_fixed, res.fixed_errors, res.safety."""
    fixed = start_levels(steps, ms)
    e_fixed = {k: _rms(held(v)) for k, v in fixed.items()}
    best = min(e_fixed, key=e_fixed.get)
    res.fixed_errors, res.best_fixed = e_fixed, best

    def level_for_steps(levels):
        return list(schedule_for_steps(levels, steps)[:-1]) + [1.0]   # its last value only stands for 0
    cands = [("optimised", level_for_steps(res.levels), res.levels)]
    if res.klub_only:
        lv1 = {n: v.clone() for n, v in res.klub_only.items()}
        cands.append(("stage1", level_for_steps(lv1), lv1))
    cands += [(f"fixed:{k}", v, {steps: torch.tensor(v, dtype=torch.float64)}) for k, v in fixed.items()]
    scored = []
    for label, lv, levels in cands:
        e = e_fixed[label[6:]] if label.startswith("fixed:") else _rms(held(lv))
        worst = safety.worst(lv) if safety is not None else ("", 0.0)
        scored.append((label, e, worst, levels))
        if label == "optimised" and safety is not None:
            res.safety = safety.ratios(lv)
    safe = [t for t in scored if t[2][1] <= safe_ratio]
    label, e, worst, levels = min(safe, key=lambda t: t[1]) if safe else min(scored, key=lambda t: t[2][1])
    res.kept, res.final_error = label, e
    if label.startswith("fixed:"):
        res.levels = levels
    elif label == "stage1":
        res.levels = levels
    res.sigmas = schedule_for_steps(res.levels, steps)
    opt = scored[0]
    notes = [f"optimised {opt[1]:.4g} (best fixed {best} {e_fixed[best]:.4g}, {opt[1] / max(e_fixed[best], 1e-300):.2f}x)"]
    if safety is not None:
        notes.append(f"optimised with the check solvers (error / their best fixed schedule): "
                     + ", ".join(f"{k} {v:.2f}x" for k, v in res.safety.items()))
        if best != label[6:] and e_fixed[best] < e:
            b = next(t for t in scored if t[0] == f"fixed:{best}")
            if b[2][1] > safe_ratio:
                notes.append(f"the best fixed schedule {best} is {b[2][1]:.2f}x with {b[2][0]}: not safe")
    res.guard = (f"kept {label} (held-out error {e:.4g}" + (f", worst {worst[1]:.2f}x with {worst[0]}" if worst[0]
                                                              else "") + ("" if safe else
                                                                          "; no candidate was safe with every "
                                                                          "check solver: the least unsafe") +
                 "); " + "; ".join(notes))


def _rms(per_pair) -> float:
    """The validation figure: root mean squared endpoint error over the pairs."""
    return math.sqrt(float(per_pair.mean()))


def schedule_for_steps(levels: dict, steps: int) -> torch.Tensor:
    """The sampling schedule (steps+1 values ending in 0) from optimised levels: the level itself when
    it has ``steps`` steps, else the next finer level (or the finest) interpolated log-linearly; the
    last value (sigma_min) is replaced by 0, as for the published AYS tables."""
    ns = sorted(levels)
    n = next((m for m in ns if m >= steps), ns[-1])
    s = loglinear_interp(levels[n], steps + 1).clone()
    s[-1] = 0.0
    return s


# --- data ---------------------------------------------------------------------------------------
def teacher_samples(denoiser: Callable, model_sigmas: ModelSigmas, n: int, shape, seed: int = 0,
                    teacher_steps: int = TEACHER_STEPS, batch_size: int | None = None, device=None,
                    dtype=torch.float32, interrupt: Callable | None = None,
                    progress: Callable | None = None):
    """``n`` teacher pairs ``(x_T, x0)`` of per-sample ``shape`` made by the model itself: x_T is pure
    noise at sigma_max (``sigma_max * noise``, as ComfyUI scales an empty latent), x0 its solution at
    sigma 0 with a fine DPM-Solver++(2M) (``teacher_steps`` logSNR-uniform steps). The x0 are the data
    latents of the bound; the pairs validate the early stopping."""
    from ..samplers.dpm_solver_pp import sample_dpmpp_multistep
    from . import get_schedule
    if not (MIN_SAMPLES <= int(n) <= MAX_SAMPLES):
        raise ValueError(f"samples must be in [{MIN_SAMPLES}, {MAX_SAMPLES}], got {n}")
    sig = get_schedule("logsnr_uniform", int(teacher_steps), model_sigmas)
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((int(n),) + tuple(shape), generator=g, dtype=torch.float64).to(device, dtype)
    x_T = noise * float(sig[0])
    bs = int(batch_size) if batch_size else int(n)
    outs = []
    for a in range(0, int(n), bs):
        if interrupt is not None and interrupt():
            raise AYSInterrupted("AYS optimisation interrupted")
        outs.append(sample_dpmpp_multistep(denoiser, x_T[a:a + bs].clone(), sig,
                                           family=model_sigmas.family, order=2))
        if progress is not None:
            progress(min(a + bs, int(n)), int(n))
    return x_T, torch.cat(outs).to(dtype)
