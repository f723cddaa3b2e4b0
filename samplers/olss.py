"""OLSS — Optimal Linear Subspace Search (Duan et al., CIKM 2023, arXiv 2305.14677).

Every linear solver's next state lies in the span of the initial state and the model outputs so far.
OLSS records a fine *teacher* trajectory of the user's own model (states ``x_0..x_n`` at the teacher
sigmas and the CFG-combined outputs ``e_0..e_{n-1}`` at those states), picks ``k`` of the teacher
sigmas (``path = i_0 = 0 < i_1 < ... < i_{k-1}``) and fits, for each student step ``j``,

    x_{i_{j+1}}  ~  wx[j] * x_{i_0} + sum_{m <= j} we[j, m] * e_{i_m}          (i_k = n)

by least squares over every element of every recorded sample (one scalar per coefficient). The step
subset is found as the paper does: an outer bisection on the largest per-step fit error and, for a
given error bound, an inner greedy search that takes the farthest teacher step whose fit stays within
the bound. Without planning (OLSS-P) the path is uniform in the teacher's step index.

Streaming and numerics. The fit never holds the design matrix. Column ``c`` of the (elements x (2n+1))
matrix ``V = [x_0 .. x_n, e_0 .. e_{n-1}]`` is one recorded vector; rows arrive one trajectory (one
chunk of elements) at a time and are folded into the upper-triangular factor ``R`` of a running QR
(``V = Q R``, a tall-skinny "TSQR" update: ``R <- qr_r([R; V_chunk])``, float64). Because ``Q`` has
orthonormal columns, any least-squares problem on a column subset of ``V`` equals the same problem on
the columns of ``R``: ``||V[:, a] c - V[:, t]|| = ||R[:, a] c - R[:, t]||``. Each per-step fit is then
a small QR solve on ``R``'s columns (with optional ridge rows). Memory is ``(2n+1)^2`` float64 plus
one chunk, independent of the number of samples: 16 samples of 4x128x128 latents at 200 teacher
steps need one trajectory (~105 MB in float32) at a time and a 401x401 factor.

Torch/numpy only; no ComfyUI import.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..core import families
from ..core.io import FLOAT_DTYPES, FORMAT_KEY, INT_DTYPES, FileCheck, ProfileError, atomic_save

FORMAT_VERSION = 1
KIND = "OLSS profile"
#: elements folded into the running QR per update (bounds the float64 chunk: rows x (2n+1) x 8 bytes)
CHUNK_ROWS = 16384
MIN_STEPS, MAX_STEPS = 1, 50
#: strength of the pull of the closed-loop refit towards the paper's coefficients (relative ridge)
CLOSED_LOOP_ANCHOR = 1e-8
REQUIRED_TENSORS = ("sigmas", "wx", "we", "step_error", "teacher_sigmas", "path", "r_factor")
REQUIRED_META = (FORMAT_KEY, "kind", "format_version", "family", "sigma_min", "sigma_max", "teacher",
                 "teacher_steps", "steps", "selected_sigmas", "step_error", "cfg", "model_fingerprint",
                 "path_planning", "rows")
#: the most teacher steps a profile file may hold (r_factor is (2n+1)^2 float64)
MAX_TEACHER_STEPS = 10000


# ------------------------------------------------------------------------------------------------
# streaming least squares
class TrajectoryQR:
    """The running R factor of ``V = [x_0 .. x_n, e_0 .. e_{n-1}]`` over every recorded element."""

    def __init__(self, teacher_steps: int, chunk_rows: int = CHUNK_ROWS):
        if int(teacher_steps) < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {teacher_steps}")
        self.n = int(teacher_steps)
        self.ncols = 2 * self.n + 1
        self.chunk_rows = int(chunk_rows)
        self.R = torch.zeros(0, self.ncols, dtype=torch.float64)
        self.rows = 0
        self.trajectories = 0

    def add(self, states: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
            check_interrupt: Callable[[], None] | None = None):
        """Fold one recorded trajectory (``n+1`` states, ``n`` outputs, any equal shapes: a batch of
        samples is just more rows) into R."""
        if len(states) != self.n + 1 or len(outputs) != self.n:
            raise ValueError(f"a trajectory of {self.n} teacher steps needs {self.n + 1} states and {self.n} "
                             f"outputs, got {len(states)} and {len(outputs)}")
        vecs = [v.detach().reshape(-1) for v in list(states) + list(outputs)]
        d = vecs[0].numel()
        if any(v.numel() != d for v in vecs):
            raise ValueError("all states and outputs of a trajectory must have the same number of elements")
        for v in vecs:
            if not torch.isfinite(v).all():
                raise ValueError("the recorded trajectory contains NaN or inf (the teacher diverged)")
        for start in range(0, d, self.chunk_rows):
            if check_interrupt is not None:
                check_interrupt()
            chunk = torch.stack([v[start:start + self.chunk_rows].to("cpu", torch.float64) for v in vecs], dim=1)
            self.R = torch.linalg.qr(torch.cat([self.R, chunk], dim=0), mode="r")[1]
        self.rows += d
        self.trajectories += 1

    def finalize(self) -> torch.Tensor:
        """The square (2n+1) x (2n+1) factor (zero-padded when fewer rows than columns were seen)."""
        r = self.R
        if r.shape[0] < self.ncols:
            r = torch.cat([r, r.new_zeros(self.ncols - r.shape[0], self.ncols)], dim=0)
        return r[: self.ncols].contiguous()


class SubspaceFitter:
    """Least-squares fits of one recorded vector on a set of others, from the R factor."""

    def __init__(self, r_factor: torch.Tensor, n: int, rows: int, ridge: float = 0.0):
        self.R = r_factor.to(torch.float64)
        self.n = int(n)
        self.rows = int(rows)
        if self.rows < 1:
            raise ValueError("no recorded data to fit (rows = 0)")
        if not (ridge >= 0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
        self.ridge = float(ridge)

    def fit(self, start: int, out_idx: Sequence[int], target: int):
        """Coefficients (wx, we[...]) and the mean squared error per element of
        ``x_target ~ wx * x_start + sum_m we[m] * e_{out_idx[m]}``."""
        cols = [start] + [self.n + 1 + int(i) for i in out_idx]
        tcol = int(target)
        top = max(cols + [tcol]) + 1
        return solve_columns(self.R[:top, cols], self.R[:top, tcol], self.rows, self.ridge)


def solve_columns(a: torch.Tensor, y: torch.Tensor, rows: int, ridge: float = 0.0):
    """min ||a c - y||^2 (+ ridge * mean column energy * ||c||^2) by QR, where ``a``/``y`` are columns of
    an R factor (so norms equal those of the original rows). Returns (c, mean squared error per row)."""
    p = a.shape[1]
    if ridge > 0:
        # ridge relative to the mean column energy, so one value fits any latent scale
        scale = (a * a).sum(0).mean() * ridge
        a_aug = torch.cat([a, math.sqrt(float(scale)) * torch.eye(p, dtype=torch.float64)], 0)
        y_aug = torch.cat([y, y.new_zeros(p)])
    else:
        a_aug, y_aug = a, y
    q, r = torch.linalg.qr(a_aug, mode="reduced")
    qty = q.T @ y_aug
    diag = r.diagonal().abs()
    if diag.numel() and (diag <= diag.max() * 1e-13).any():
        # rank-deficient (e.g. duplicate vectors): minimum-norm solution
        coef = torch.linalg.lstsq(a_aug, y_aug.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    else:
        coef = torch.linalg.solve_triangular(r, qty.unsqueeze(1), upper=True).squeeze(1)
    resid = a @ coef - y
    return coef, float(resid @ resid) / rows


class ColumnQR:
    """A running R factor of a few columns (streamed like TrajectoryQR)."""

    def __init__(self, ncols: int, chunk_rows: int = CHUNK_ROWS):
        self.ncols = ncols
        self.chunk_rows = chunk_rows
        self.R = torch.zeros(0, ncols, dtype=torch.float64)
        self.rows = 0

    def add(self, vecs: Sequence[torch.Tensor]):
        vecs = [v.detach().reshape(-1) for v in vecs]
        d = vecs[0].numel()
        for start in range(0, d, self.chunk_rows):
            chunk = torch.stack([v[start:start + self.chunk_rows].to("cpu", torch.float64) for v in vecs], dim=1)
            self.R = torch.linalg.qr(torch.cat([self.R, chunk], dim=0), mode="r")[1]
        self.rows += d


# ------------------------------------------------------------------------------------------------
# path planning
def uniform_path(n: int, steps: int) -> list[int]:
    """OLSS-P: student steps at teacher indices uniform in the teacher's step index."""
    idx = torch.linspace(0, n, steps + 1, dtype=torch.float64).round().long().tolist()
    return [int(i) for i in idx[:-1]]


def _greedy_path(fitter: SubspaceFitter, n: int, steps: int, max_error: float):
    """The paper's inner search: from each student point, the farthest teacher index whose fit error
    stays within ``max_error`` (binary search, assuming the error grows with the distance). Each step
    is capped so that the remaining steps keep one teacher step each, so the path always has exactly
    ``steps`` steps; the last one must reach the final state ``n``. None when infeasible."""
    path = [0]
    for j in range(steps - 1):
        lo = path[-1] + 1
        hi = n - (steps - 1 - j)
        if lo > hi:
            return None
        _, err = fitter.fit(0, path, lo)
        if err > max_error:
            return None
        while hi > lo:
            mid = (lo + hi + 1) // 2
            _, err = fitter.fit(0, path, mid)
            if err > max_error:
                hi = mid - 1
            else:
                lo = mid
        path.append(lo)
    _, err = fitter.fit(0, path, n)
    if err > max_error:
        return None
    return path


def plan_path(fitter: SubspaceFitter, n: int, steps: int, rel_tol: float = 1e-3, max_iter: int = 200,
              check_interrupt: Callable[[], None] | None = None) -> list[int]:
    """The paper's outer search: the smallest bound on the per-step error (bisection, here geometric
    since errors span decades) for which the greedy search finds a path of ``steps`` steps."""
    if steps >= n:
        return list(range(n))
    # with all coefficients zero the error is the target's energy: this bound is always feasible
    energy = [float(fitter.R[: i + 1, i] @ fitter.R[: i + 1, i]) / fitter.rows for i in range(n + 1)]
    hi = max(energy) * 1.0001 + 1e-300
    best = _greedy_path(fitter, n, steps, hi)
    if best is None:  # cannot happen with exact arithmetic; keep a valid answer anyway
        return uniform_path(n, steps)
    lo = hi * 1e-16
    it = 0
    while hi > lo * (1 + rel_tol) and it < max_iter:
        if check_interrupt is not None:
            check_interrupt()
        mid = math.sqrt(hi * lo)
        p = _greedy_path(fitter, n, steps, mid)
        if p is None:
            lo = mid
        else:
            hi, best = mid, p
        it += 1
    return best


def fit_path(fitter: SubspaceFitter, n: int, path: Sequence[int]):
    """(wx (k,), we (k, k) lower-triangular, per-step MSE (k,)) for a student path."""
    k = len(path)
    wx = torch.zeros(k, dtype=torch.float64)
    we = torch.zeros(k, k, dtype=torch.float64)
    err = torch.zeros(k, dtype=torch.float64)
    start = int(path[0])
    for j in range(k):
        target = int(path[j + 1]) if j + 1 < k else n
        coef, e = fitter.fit(start, path[: j + 1], target)
        wx[j] = coef[0]
        we[j, : j + 1] = coef[1:]
        err[j] = e
    return wx, we, err


def closed_loop_refit(wx: torch.Tensor, we: torch.Tensor, initial_states: Sequence[torch.Tensor],
                      targets: Sequence[Sequence[torch.Tensor]], denoise: Callable, ridge: float = 0.0,
                      check_interrupt: Callable[[], None] | None = None, on_call: Callable[[], None] | None = None,
                      anchor: float = CLOSED_LOOP_ANCHOR):
    """Refit the coefficients on the student's own states (an extension of the paper, on by default in
    FewStep): step j is fitted with the outputs the *student* sees, ``e'_m = D(x'_m, sigma_m)`` at the
    student's states ``x'_m`` (produced by the already refitted steps 0..j-1), against the same teacher
    targets. The paper's fit uses the teacher's outputs at the teacher's states, which the student never
    sees at sampling time; fitting on the student's rollout removes that mismatch.

    ``initial_states[r]``: x_0 of run r; ``targets[r][j]``: the teacher state at the end of student
    step j; ``denoise(r, x, j)``: the model output for run r at state x and the student's j-th sigma.
    Streams each step's rows through a QR factor. Returns (wx, we, per-step MSE of the rollout)."""
    k = wx.numel()
    runs = len(initial_states)
    wx, we = wx.clone(), we.clone()
    err = torch.zeros(k, dtype=torch.float64)
    states = [x.detach().to("cpu") for x in initial_states]
    outs = [[] for _ in range(runs)]
    for j in range(k):
        qr = ColumnQR(j + 3)
        for r in range(runs):
            if check_interrupt is not None:
                check_interrupt()
            e = denoise(r, states[r], j).detach().to("cpu")
            if not torch.isfinite(e).all():
                raise ValueError("the model returned NaN or inf during the closed-loop refit")
            outs[r].append(e)
            qr.add([initial_states[r]] + outs[r] + [targets[r][j]])
            if on_call is not None:
                on_call()
        rr = qr.R
        if rr.shape[0] < j + 3:
            rr = torch.cat([rr, rr.new_zeros(j + 3 - rr.shape[0], j + 3)], 0)
        a, y = rr[:, : j + 2], rr[:, j + 2]
        # regularised towards the teacher-state (paper) coefficients, so that directions the rollout
        # data cannot pin down keep the paper's values instead of blowing up
        c_open = torch.cat([wx[j:j + 1], we[j, : j + 1]])
        d, _ = solve_columns(a, y - a @ c_open, qr.rows, max(anchor, ridge))
        coef = c_open + d
        resid = a @ coef - y
        mse = float(resid @ resid) / qr.rows
        wx[j] = coef[0]
        we[j, : j + 1] = coef[1:]
        we[j, j + 1:] = 0
        err[j] = mse
        cf = [float(c) for c in coef]
        for r in range(runs):
            x0 = initial_states[r].to(torch.float64)
            nxt = x0 * cf[0]
            for m in range(j + 1):
                nxt = nxt + outs[r][m].to(torch.float64) * cf[m + 1]
            states[r] = nxt.to(initial_states[r].dtype)
    return wx, we, err


# ------------------------------------------------------------------------------------------------
# the profile
@dataclass
class OLSSProfile:
    family: str
    sigmas: torch.Tensor          # (k+1,) float64 student sigmas (a subset of the teacher's, + its last)
    wx: torch.Tensor              # (k,)
    we: torch.Tensor              # (k, k) lower triangular
    step_error: torch.Tensor      # (k,) mean squared fit error per element of each step
    teacher_sigmas: torch.Tensor  # (n+1,)
    path: torch.Tensor            # (k,) teacher indices of the student points
    r_factor: torch.Tensor        # (2n+1, 2n+1) running QR factor (allows refits, e.g. denoise < 1)
    rows: int
    teacher: str = "unknown"
    cfg: float = 1.0
    model_fingerprint: str = ""
    path_planning: bool = True
    ridge: float = 0.0
    samples: int = 0
    name: str = ""
    closed_loop: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.wx.numel())

    @property
    def teacher_steps(self) -> int:
        return int(self.teacher_sigmas.numel()) - 1

    def metadata(self) -> dict:
        ts = self.teacher_sigmas
        positive = ts[ts > 0]
        return {
            FORMAT_KEY: FORMAT_VERSION,
            "kind": "olss_profile",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "family": self.family,
            "sigma_min": float(positive.min()) if positive.numel() else 0.0,
            "sigma_max": float(ts.max()),
            "teacher": self.teacher,
            "teacher_steps": self.teacher_steps,
            "steps": self.steps,
            "selected_sigmas": [float(s) for s in self.sigmas],
            "path": [int(i) for i in self.path],
            "step_error": [float(e) for e in self.step_error],
            "cfg": float(self.cfg),
            "model_fingerprint": self.model_fingerprint,
            "path_planning": bool(self.path_planning),
            "ridge": float(self.ridge),
            "closed_loop": bool(self.closed_loop),
            "samples": int(self.samples),
            "rows": int(self.rows),
            **{k: v for k, v in self.extra.items()},
        }

    def tensors(self) -> dict:
        return {"sigmas": self.sigmas, "wx": self.wx, "we": self.we, "step_error": self.step_error,
                "teacher_sigmas": self.teacher_sigmas, "path": self.path.to(torch.int64),
                "r_factor": self.r_factor}

    def save(self, path) -> Path:
        return atomic_save(path, {k: v.to(torch.float64) if v.is_floating_point() else v
                                  for k, v in self.tensors().items()}, self.metadata())

    @staticmethod
    def load(path) -> "OLSSProfile":
        """Read a profile (safetensors only: nothing is unpickled). Raises ProfileError naming the file
        and the field when it is corrupt, truncated, not an OLSS profile, missing a key, or any field's
        type, range, dtype or shape is not the format's (see :func:`_load_fields`)."""
        f = FileCheck(path, KIND, REQUIRED_TENSORS, REQUIRED_META)
        prof = _load_fields(f)
        try:
            prof.validate()
        except ValueError as e:
            raise ProfileError(f"{KIND} file {f.path.name} is inconsistent: {e}") from None
        return prof

    def validate(self):
        families.check_family(self.family)
        k = self.steps
        n = self.teacher_steps
        if not (MIN_STEPS <= k <= MAX_STEPS):
            raise ValueError(f"{k} student steps (allowed {MIN_STEPS}..{MAX_STEPS})")
        if self.sigmas.shape != (k + 1,) or self.we.shape != (k, k) or self.step_error.shape != (k,) \
                or self.path.shape != (k,):
            raise ValueError("tensor shapes do not agree with the number of steps")
        if self.r_factor.shape != (2 * n + 1, 2 * n + 1):
            raise ValueError("r_factor does not match the teacher steps")
        p = self.path
        if int(p[0]) < 0 or int(p[-1]) >= n or (k > 1 and not (p[1:] > p[:-1]).all()):
            raise ValueError("path is not increasing inside the teacher's steps")
        if not torch.allclose(self.sigmas[:-1], self.teacher_sigmas[p], rtol=1e-9, atol=0) \
                or float(self.sigmas[-1]) != float(self.teacher_sigmas[-1]):
            raise ValueError("selected sigmas do not match the teacher sigmas on the path")
        if self.rows < 1:
            raise ValueError("rows must be >= 1")

    # --------------------------------------------------------------------------------------------
    def check_sigmas(self, sigmas: torch.Tensor):
        """Raise a clear error when the SIGMAS a sampler was given are not the ones this profile
        was fitted for (its coefficients mean nothing on any other schedule)."""
        s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten()
        mine = self.sigmas
        label = f"OLSS profile {self.name!r}" if self.name else "this OLSS profile"
        if s.numel() != mine.numel():
            raise ValueError(
                f"{label} was fitted for {self.steps} steps, but the sampler got {s.numel() - 1} steps of SIGMAS. "
                "Connect the SIGMAS output of FewStep OLSS Sampler (the learned step subset) to the sampler.")
        if not torch.allclose(s, mine, rtol=2e-4, atol=1e-6):
            raise ValueError(
                f"{label} was fitted for the sigmas {[round(float(v), 5) for v in mine]}, but the sampler got "
                f"{[round(float(v), 5) for v in s]}. Connect the SIGMAS output of FewStep OLSS Sampler.")

    def truncated(self, denoise: float) -> "OLSSProfile":
        """The profile for denoise < 1: the last ``max(1, round(k * denoise))`` learned steps, with
        their coefficients refitted (from the stored QR factor, with the paper's teacher-state fit) so
        that the state at the first kept sigma plays the role of the initial state. denoise = 1 returns
        the profile unchanged."""
        if not (isinstance(denoise, (int, float)) and math.isfinite(denoise) and 0 < denoise <= 1):
            raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")
        k = self.steps
        keep = max(1, int(round(k * float(denoise))))
        if keep >= k:
            return self
        j0 = k - keep
        path = [int(i) for i in self.path[j0:]]
        fitter = SubspaceFitter(self.r_factor, self.teacher_steps, self.rows, self.ridge)
        wx, we, err = fit_path(fitter, self.teacher_steps, path)
        return replace(self, sigmas=self.sigmas[j0:].clone(), wx=wx, we=we, step_error=err,
                       path=torch.tensor(path, dtype=torch.int64), closed_loop=False,
                       extra={**self.extra, "denoise": float(denoise)})


def _inconsistent(f: FileCheck, key, problem):
    return ProfileError(f"{KIND} file {f.path.name} is inconsistent: {key} {problem}")


def _check_kind_and_version(f: FileCheck) -> None:
    kind = f.text("kind")
    if kind != "olss_profile":
        raise ProfileError(f"{KIND} file {f.path.name}: kind is {kind!r}: a FewStep file, not an OLSS profile")
    if isinstance(f.meta.get("format_version"), int) and not isinstance(f.meta["format_version"], bool) \
            and f.meta["format_version"] > FORMAT_VERSION:
        raise ProfileError(f"{KIND} file {f.path.name} has format_version {f.meta['format_version']}; this FewStep "
                           f"reads up to {FORMAT_VERSION}: update FewStep")
    f.integer("format_version", 1, FORMAT_VERSION)
    f.integer(FORMAT_KEY, 1, FORMAT_VERSION)


def _teacher_grid(f: FileCheck, family: str):
    """(teacher sigmas, n, k): the sizes come from the tensors; the metadata must agree with them."""
    t_sig = f.tensor("teacher_sigmas", ndim=1, min_numel=2, max_numel=MAX_TEACHER_STEPS + 1).to(torch.float64)
    n = t_sig.numel() - 1
    k = f.tensor("wx", ndim=1, min_numel=MIN_STEPS, max_numel=min(MAX_STEPS, n)).numel()
    for key, want in (("teacher_steps", n), ("steps", k)):
        got = f.integer(key, 1, MAX_TEACHER_STEPS)
        if got != want:
            tname = "teacher_sigmas" if key == "teacher_steps" else "wx"
            raise _inconsistent(f, f"tensor '{tname}'", f"holds {want} steps, but metadata {key} is {got}")
    if float(t_sig[-1]) != 0.0 or float(t_sig[-2]) <= 0 or not bool((t_sig[1:] < t_sig[:-1]).all()):
        raise f.error("tensor 'teacher_sigmas'", "is not a strictly decreasing schedule ending in 0")
    if family == families.FLOW and float(t_sig[0]) > 1.0:
        raise f.error("tensor 'teacher_sigmas'", f"starts at {float(t_sig[0]):.6g}; flow sigmas are at most 1")
    return t_sig, n, k


def _coefficient_tensors(f: FileCheck, n: int, k: int):
    """(sigmas, wx, we, step_error, path, r_factor), shapes and structure checked."""
    sigmas = f.tensor("sigmas", shape=(k + 1,)).to(torch.float64)
    wx = f.tensor("wx", shape=(k,)).to(torch.float64)
    we = f.tensor("we", shape=(k, k)).to(torch.float64)
    if bool((torch.triu(we, diagonal=1) != 0).any()):
        raise f.error("tensor 'we'", "must be lower triangular (a step uses only the outputs so far)")
    step_error = f.tensor("step_error", shape=(k,)).to(torch.float64)
    if bool((step_error < 0).any()):
        raise f.error("tensor 'step_error'", "holds negative errors")
    path = f.tensor("path", dtypes=INT_DTYPES, shape=(k,)).to(torch.int64)
    r = f.tensor("r_factor", shape=(2 * n + 1, 2 * n + 1)).to(torch.float64)
    if bool((torch.tril(r, diagonal=-1) != 0).any()):
        raise f.error("tensor 'r_factor'", "must be upper triangular (a QR factor)")
    return sigmas, wx, we, step_error, path, r


def _check_metadata_agrees(f: FileCheck, t_sig, sigmas, step_error, path, k: int) -> None:
    positive = t_sig[t_sig > 0]
    for key, want in (("sigma_min", float(positive.min())), ("sigma_max", float(t_sig.max()))):
        got = f.number(key, 0.0, math.inf)
        if not math.isclose(got, want, rel_tol=1e-9):
            raise _inconsistent(f, key, f"is {got!r}, but the teacher sigmas give {want!r}")
    for key, tensor in (("selected_sigmas", sigmas), ("step_error", step_error)):
        got = torch.tensor(f.number_list(key, tensor.numel()), dtype=torch.float64)
        if not torch.allclose(got, tensor, rtol=1e-9, atol=0):
            raise _inconsistent(f, key, f"does not match tensor '{'sigmas' if key == 'selected_sigmas' else key}'")
    if f.int_list("path", k, default=None) not in (None, [int(i) for i in path]):
        raise _inconsistent(f, "path", "does not match tensor 'path'")


def _optional_fields(f: FileCheck) -> dict:
    extra = {}
    if "denoise" in f.meta:
        extra["denoise"] = f.number("denoise", 0.0, 1.0, lo_open=True)
    if "method" in f.meta:   # since the held-out selection: which candidate won, and the comparison
        extra["method"] = f.text("method", choices=METHODS)
    for key in ("solver", "selection"):
        if key in f.meta:
            extra[key] = f.text(key, max_len=4000)
    return extra


def _load_fields(f: FileCheck) -> "OLSSProfile":
    """Every field of an OLSS profile file checked against the format (format version 1):

    metadata  fewstep_format and format_version: whole numbers in [1, FORMAT_VERSION]; kind
              "olss_profile"; family eps or flow; teacher_steps n in [1, MAX_TEACHER_STEPS] and steps k
              in [MIN_STEPS, MAX_STEPS], both equal to the tensors'; sigma_min, sigma_max,
              selected_sigmas, path and step_error equal to the tensors'; cfg in [0, 100]; ridge in
              [0, 1]; rows >= 1; samples >= 0; path_planning and closed_loop true/false; name, teacher
              and model_fingerprint strings; denoise (a truncated profile) in (0, 1]; optional, since the
              held-out selection: method (olss, olss_p or solver: which candidate won), solver (the fixed
              solver + schedule when that won) and selection (the held-out comparison), strings.
    tensors   float32/float64: sigmas (k+1), wx (k), we (k, k) lower triangular, step_error (k) >= 0,
              teacher_sigmas (n+1) strictly decreasing and ending in 0, r_factor (2n+1, 2n+1) upper
              triangular; int64/int32: path (k); all finite.
    """
    _check_kind_and_version(f)
    family = f.text("family", choices=families.FAMILIES)
    t_sig, n, k = _teacher_grid(f, family)
    sigmas, wx, we, step_error, path, r = _coefficient_tensors(f, n, k)
    _check_metadata_agrees(f, t_sig, sigmas, step_error, path, k)
    extra = _optional_fields(f)
    return OLSSProfile(
        family=family, sigmas=sigmas, wx=wx, we=we, step_error=step_error, teacher_sigmas=t_sig, path=path,
        r_factor=r, rows=f.integer("rows", 1, 2 ** 62), teacher=f.text("teacher", max_len=200),
        cfg=f.number("cfg", 0.0, 100.0), model_fingerprint=f.text("model_fingerprint", max_len=200),
        path_planning=f.boolean("path_planning"), ridge=f.number("ridge", 0.0, 1.0, default=0.0),
        samples=f.integer("samples", 0, 2 ** 62, default=0), name=f.text("name", default="", max_len=200),
        closed_loop=f.boolean("closed_loop", default=False), extra=extra)


# ------------------------------------------------------------------------------------------------
# recording and training
def record_trajectory(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, teacher: Callable,
                      extra_args: dict | None = None, callback: Callable | None = None,
                      store_device="cpu", **teacher_options):
    """Run ``teacher`` (a k-diffusion sampler function) and record, from its per-step callback, the
    state ``x_i`` and the (CFG-combined) model output at it; the last state is the returned sample.
    Returns (states[n+1], outputs[n]). ``callback`` (if given) is called too, every step."""
    n = len(sigmas) - 1
    states, outputs = [], []

    def rec(d):
        i = int(d["i"])
        if i != len(outputs):
            raise RuntimeError(f"teacher solver called the step callback out of order (step {i} after "
                               f"{len(outputs)} steps); use a solver that reports every step once")
        states.append(d["x"].detach().to(store_device).clone())
        outputs.append(d["denoised"].detach().to(store_device).clone())
        if callback is not None:
            callback(d)

    final = teacher(model, x, sigmas, extra_args=extra_args or {}, callback=rec, disable=True, **teacher_options)
    if len(outputs) != n:
        raise RuntimeError(f"teacher solver reported {len(outputs)} steps through its callback for {n} sigmas; "
                           "OLSS needs a solver that calls the callback once per step")
    states.append(final.detach().to(store_device).clone())
    return states, outputs


def fit_profile(qr: TrajectoryQR, teacher_sigmas: torch.Tensor, steps: int, family: str,
                path_planning: bool = True, ridge: float = 0.0,
                check_interrupt: Callable[[], None] | None = None, **info) -> OLSSProfile:
    """Plan the path (or take the uniform one) and fit the coefficients from the folded data."""
    families.check_family(family)
    n = qr.n
    ts = torch.as_tensor(teacher_sigmas, dtype=torch.float64).detach().cpu().flatten()
    if ts.numel() != n + 1:
        raise ValueError(f"teacher_sigmas has {ts.numel()} values for {n} teacher steps")
    steps = check_student_steps(steps, n)
    if qr.rows < 1:
        raise ValueError("no teacher trajectory was recorded")
    r = qr.finalize()
    fitter = SubspaceFitter(r, n, qr.rows, ridge)
    path = plan_path(fitter, n, steps, check_interrupt=check_interrupt) if path_planning else uniform_path(n, steps)
    wx, we, err = fit_path(fitter, n, path)
    p = torch.tensor(path, dtype=torch.int64)
    sig = torch.cat([ts[p], ts[-1:]])
    prof = OLSSProfile(family=family, sigmas=sig, wx=wx, we=we, step_error=err, teacher_sigmas=ts, path=p,
                       r_factor=r, rows=qr.rows, path_planning=bool(path_planning), ridge=float(ridge),
                       samples=qr.trajectories, **info)
    prof.validate()
    return prof


def fit_profile_from(profile: OLSSProfile, path_planning: bool, ridge: float | None = None) -> OLSSProfile:
    """Another fit (planned path or OLSS-P) from a profile's stored QR factor, with its other fields kept."""
    n = profile.teacher_steps
    fitter = SubspaceFitter(profile.r_factor, n, profile.rows, profile.ridge if ridge is None else ridge)
    k = profile.steps
    path = plan_path(fitter, n, k) if path_planning else uniform_path(n, k)
    wx, we, err = fit_path(fitter, n, path)
    p = torch.tensor(path, dtype=torch.int64)
    out = replace(profile, sigmas=torch.cat([profile.teacher_sigmas[p], profile.teacher_sigmas[-1:]]), wx=wx, we=we,
                  step_error=err, path=p, path_planning=bool(path_planning), closed_loop=False)
    out.validate()
    return out


def check_student_steps(steps, teacher_steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be a whole number in [{MIN_STEPS}, {MAX_STEPS}], got {steps!r}")
    if not (MIN_STEPS <= steps <= MAX_STEPS):
        raise ValueError(f"steps must be in [{MIN_STEPS}, {MAX_STEPS}], got {steps}")
    if steps > teacher_steps:
        raise ValueError(f"steps ({steps}) must not exceed teacher_steps ({teacher_steps})")
    return steps


def path_targets(profile: OLSSProfile, states: Sequence[torch.Tensor]) -> list:
    """The teacher states a profile's student steps aim at: x at path[1:], then the final state."""
    return [states[int(i)] for i in profile.path[1:]] + [states[-1]]


def train_olss(model: Callable, initial_states: Iterable[torch.Tensor], teacher_sigmas: torch.Tensor,
               teacher: Callable, steps: int, family: str, path_planning: bool = True, ridge: float = 0.0,
               closed_loop: bool = False, extra_args: dict | None = None, teacher_options: dict | None = None,
               teacher_name: str = "custom", **info) -> OLSSProfile:
    """Python API: record the teacher from each initial state (each may be a batch), stream it into
    the QR factor, plan and fit; ``closed_loop`` then refits on the student's own states (keeps every
    teacher state in memory until then). ``model`` follows the k-diffusion contract."""
    ts = torch.as_tensor(teacher_sigmas, dtype=torch.float64)
    n = ts.numel() - 1
    check_student_steps(steps, n)
    qr = TrajectoryQR(n)
    kept = []
    for x in initial_states:
        st, out = record_trajectory(model, x, ts.to(x.dtype) if x.dtype == torch.float64 else ts.float(),
                                    teacher, extra_args, **(teacher_options or {}))
        qr.add(st, out)
        if closed_loop:
            kept.append((x, st))
        del st, out
    prof = fit_profile(qr, ts, steps, family, path_planning, ridge, teacher=teacher_name, **info)
    if closed_loop:
        extra = extra_args or {}

        def denoise(r, xx, j):
            xx = xx.to(kept[r][0].dtype)
            return model(xx, prof.sigmas[j].to(xx.dtype) * xx.new_ones([xx.shape[0]]), **extra)

        wx, we, err = closed_loop_refit(prof.wx, prof.we, [x for x, _ in kept],
                                        [path_targets(prof, st) for _, st in kept], denoise, ridge)
        prof = replace(prof, wx=wx, we=we, step_error=err, closed_loop=True)
    return prof


# ------------------------------------------------------------------------------------------------
# sampling
def sample_olss(model, x, sigmas, extra_args=None, callback=None, disable=None, *, profile: OLSSProfile):
    """The learned solver (k-diffusion contract): one model call per step,
    ``x_{j+1} = wx[j] * x_0 + sum_{m<=j} we[j, m] * D(x_m, sigma_m)``, computed in x's dtype on x's
    device. ``sigmas`` must be the profile's selected sigmas (checked; never mutated)."""
    if profile is None:
        raise ValueError("sample_olss needs profile=<OLSSProfile>")
    extra_args = {} if extra_args is None else extra_args
    profile.check_sigmas(sigmas)
    k = profile.steps
    wx = [float(v) for v in profile.wx]
    we = [[float(v) for v in row] for row in profile.we]
    s_in = x.new_ones([x.shape[0]])
    x_start = x
    outs = []
    for j in range(k):
        denoised = model(x, sigmas[j] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": j, "sigma": sigmas[j], "sigma_hat": sigmas[j], "denoised": denoised})
        outs.append(denoised)
        nxt = x_start * wx[j]
        for m in range(j + 1):
            nxt = nxt + outs[m] * we[j][m]
        x = nxt
    return x


# ------------------------------------------------------------------------------------------------
# the fixed solvers a profile is compared with, as profiles
METHODS = ("olss", "olss_p", "solver")


class _ProbeOverrun(Exception):
    pass


def linear_solver_coefficients(solver: Callable, sigmas: torch.Tensor, family: str):
    """(wx (k,), we (k, k)) of a deterministic solver that is linear in the state and the model outputs and
    makes one model call per step, on ``sigmas`` (k+1 values): read off by running it on a probe, a state
    of k+1 coordinates (x_0 = e_0) and a "model" whose j-th output is e_{j+1}, so that every state is its
    own coefficient vector. None when the solver does not make exactly one call per step (e.g. Heun)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    k = sig.numel() - 1
    x0 = torch.zeros(1, k + 1, dtype=torch.float64)
    x0[0, 0] = 1.0
    calls = [0]

    def model(x, sigma, **_):
        j = calls[0]
        calls[0] += 1
        if j >= k:
            raise _ProbeOverrun()
        out = torch.zeros_like(x)
        out[0, j + 1] = 1.0
        return out
    states = []
    try:
        final = solver(model, x0.clone(), sig, extra_args={}, callback=lambda d: states.append(d["x"].clone()),
                       disable=True, family=family)
    except _ProbeOverrun:
        return None
    if calls[0] != k or len(states) != k:
        return None
    xs = states[1:] + [final]
    wx = torch.tensor([float(v[0, 0]) for v in xs], dtype=torch.float64)
    we = torch.stack([v[0, 1:] for v in xs]).to(torch.float64)
    if bool((torch.triu(we, diagonal=1).abs() > 1e-12).any()):
        return None        # a step used a later output: not a causal one-call-per-step solver
    return wx, torch.tril(we)


def solver_profile(base: OLSSProfile, solver: Callable, path: Sequence[int], label: str):
    """The fixed solver ``solver`` on the teacher sigmas at ``path`` (then 0) as a profile of ``base``'s
    teacher (its coefficients read by :func:`linear_solver_coefficients`, its step errors from the stored
    QR factor), or None when the solver is not linear with one call per step."""
    p = [int(i) for i in path]
    sig = torch.cat([base.teacher_sigmas[p], base.teacher_sigmas[-1:]])
    got = linear_solver_coefficients(solver, sig, base.family)
    if got is None:
        return None
    wx, we = got
    fitter = SubspaceFitter(base.r_factor, base.teacher_steps, base.rows, 0.0)
    n = base.teacher_steps
    err = torch.zeros(len(p), dtype=torch.float64)
    for j in range(len(p)):
        target = p[j + 1] if j + 1 < len(p) else n
        cols = [p[0]] + [n + 1 + i for i in p[: j + 1]]
        c = torch.cat([wx[j:j + 1], we[j, : j + 1]])
        r = fitter.R[:, cols] @ c - fitter.R[:, target]   # R is upper triangular: rows below are zero
        err[j] = float(r @ r) / base.rows
    prof = replace(base, sigmas=sig, wx=wx, we=we, step_error=err, path=torch.tensor(p, dtype=torch.int64),
                   path_planning=False, closed_loop=False, extra={**base.extra, "method": "solver", "solver": label})
    prof.validate()
    return prof


def snap_path(sigmas, teacher_sigmas: torch.Tensor) -> list | None:
    """The teacher indices nearest (in log sigma) to a schedule's positive sigmas, the first at 0; None when
    two fall on the same index or the first is not the teacher's first sigma."""
    ts = torch.as_tensor(teacher_sigmas, dtype=torch.float64)
    pos = ts[:-1].log()
    out = []
    for v in torch.as_tensor(sigmas, dtype=torch.float64)[:-1]:
        out.append(int(torch.argmin((pos - math.log(float(v))).abs())))
    if not out or out[0] != 0 or any(b <= a for a, b in zip(out[:-1], out[1:])):
        return None
    return out


def olss_error_report(profile: OLSSProfile) -> str:
    lines = [f"OLSS {'planned' if profile.path_planning else 'uniform (OLSS-P)'} path, {profile.steps} steps "
             f"from {profile.teacher_steps} teacher steps ({profile.teacher}), {profile.rows} elements:"]
    for j in range(profile.steps):
        lines.append(f"  step {j}: sigma {float(profile.sigmas[j]):.5g} -> {float(profile.sigmas[j + 1]):.5g}, "
                     f"fit RMSE {math.sqrt(float(profile.step_error[j])):.3e}")
    return "\n".join(lines)
