"""OLSS core (samplers/olss.py) without ComfyUI: the streamed least squares, path planning, the trained
solver on the exact analytic model, the sampler contract and the profile file format."""
import functools
import math
import pickle

import pytest
import torch
from safetensors.torch import save_file

from fewstep.core.analytic import AnalyticModel, reference_solve
from fewstep.core.io import ProfileError, atomic_save
from fewstep.samplers import olss
from fewstep.samplers.dpm_solver_pp import sample_dpmpp_multistep
from fewstep.schedules import get_schedule




def _random_traj(n, shape, gen):
    states = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(n + 1)]
    outputs = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(n)]
    return states, outputs


# ------------------------------------------------------------------------------------------------
# least squares
def test_exactly_linear_data_recovers_coefficients_to_1e8():
    """Targets built as exact linear combinations of x_0 and the outputs on a path: the fit from the
    streamed QR factor (several trajectories, small chunks) recovers every coefficient to 1e-8."""
    gen = torch.Generator().manual_seed(0)
    n, path = 9, [0, 2, 5, 7]
    k = len(path)
    true_wx = torch.randn(k, generator=gen, dtype=torch.float64) * 3
    true_we = torch.randn(k, k, generator=gen, dtype=torch.float64).tril() * 2
    qr = olss.TrajectoryQR(n, chunk_rows=37)
    for _ in range(3):
        states, outputs = _random_traj(n, (2, 3, 5, 5), gen)
        for j in range(k):
            target = path[j + 1] if j + 1 < k else n
            states[target] = true_wx[j] * states[0] + sum(true_we[j, m] * outputs[path[m]] for m in range(j + 1))
        qr.add(states, outputs)
    fitter = olss.SubspaceFitter(qr.finalize(), n, qr.rows)
    wx, we, err = olss.fit_path(fitter, n, path)
    assert (wx - true_wx).abs().max() < 1e-8
    assert (we - true_we).abs().max() < 1e-8
    assert err.max() < 1e-20


def test_streamed_qr_equals_full_least_squares():
    """Folding rows chunk by chunk gives the same fit and error as lstsq on the whole design matrix."""
    gen = torch.Generator().manual_seed(1)
    n = 6
    qr = olss.TrajectoryQR(n, chunk_rows=50)
    trajs = [_random_traj(n, (1, 4, 7, 9), gen) for _ in range(4)]
    for st, out in trajs:
        qr.add(st, out)
    fitter = olss.SubspaceFitter(qr.finalize(), n, qr.rows)
    start, outs, target = 0, [0, 3, 4], 6
    coef, mse = fitter.fit(start, outs, target)
    a = torch.stack([torch.cat([t[0][start].flatten() for t in trajs])]
                    + [torch.cat([t[1][i].flatten() for t in trajs]) for i in outs], 1)
    y = torch.cat([t[0][target].flatten() for t in trajs])
    ref = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(coef, ref, rtol=0, atol=1e-10)
    assert math.isclose(mse, float(((a @ ref - y) ** 2).mean()), rel_tol=1e-9)
    assert qr.rows == 4 * 4 * 7 * 9 and qr.finalize().shape == (2 * n + 1, 2 * n + 1)


def test_ridge_shrinks_and_zero_ridge_is_ordinary_least_squares():
    gen = torch.Generator().manual_seed(2)
    n = 4
    qr = olss.TrajectoryQR(n)
    qr.add(*_random_traj(n, (64,), gen))
    r = qr.finalize()
    c0, e0 = olss.SubspaceFitter(r, n, qr.rows).fit(0, [0, 1, 2], 4)
    c1, e1 = olss.SubspaceFitter(r, n, qr.rows, ridge=0.5).fit(0, [0, 1, 2], 4)
    assert c1.norm() < c0.norm() and e1 >= e0
    with pytest.raises(ValueError, match="ridge"):
        olss.SubspaceFitter(r, n, qr.rows, ridge=-1.0)


def test_trajectory_shape_errors():
    qr = olss.TrajectoryQR(3)
    with pytest.raises(ValueError, match="4 states and 3 outputs"):
        qr.add([torch.zeros(4)] * 3, [torch.zeros(4)] * 3)
    with pytest.raises(ValueError, match="NaN"):
        qr.add([torch.zeros(4)] * 3 + [torch.full((4,), float("nan"))], [torch.zeros(4)] * 3)


# ------------------------------------------------------------------------------------------------
# the analytic model
N_TEACH = 60
SHAPE_TRAIN = (2, 4, 8, 8)
SHAPE_EVAL = (3, 4, 8, 8)


@functools.lru_cache(maxsize=None)
def _trained(family, cfg, steps, planning):
    am = AnalyticModel(family)
    model = am.denoiser(cfg)
    ts = get_schedule("karras", N_TEACH, am.model_sigmas)
    teacher = functools.partial(sample_dpmpp_multistep, family=family, order=2)
    train = [am.initial_state(am.noise(SHAPE_TRAIN, 100 + s), float(ts[0])) for s in range(3)]
    prof = olss.train_olss(model, train, ts, teacher, steps, family, path_planning=planning,
                           teacher_name="dpmpp_2m", cfg=cfg, name=f"{family}-{cfg}")
    return am, model, prof


@functools.lru_cache(maxsize=None)
def _eval(family, cfg):
    am = AnalyticModel(family)
    model = am.denoiser(cfg)
    x = am.initial_state(am.noise(SHAPE_EVAL, 7), am.sigma_max)  # seed 7: not a training seed
    return x, reference_solve(model, x, am.sigma_max, steps=120)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family,cfg", [("eps", 1.0), ("flow", 3.0)])
def test_trained_olss_beats_dpmpp_2m_at_same_nfe(family, cfg):
    """Trained on seeds 100..102, evaluated on seed 7 against the exact ODE endpoint: OLSS (5 steps)
    has at most half the error of DPM-Solver++(2M) with 5 steps on any FewStep schedule; OLSS-P also
    beats DPM++(2M) on the same teacher grid."""
    am, model, prof = _trained(family, cfg, 5, True)
    _, _, prof_p = _trained(family, cfg, 5, False)
    x, ref = _eval(family, cfg)
    counter = [0]
    out = olss.sample_olss(am.denoiser(cfg, counter), x, prof.sigmas, profile=prof)
    assert counter[0] == 5
    err = _rel(out, ref)
    err_p = _rel(olss.sample_olss(model, x, prof_p.sigmas, profile=prof_p), ref)
    dpm = {s: _rel(sample_dpmpp_multistep(model, x, get_schedule(s, 5, am.model_sigmas), family=family), ref)
           for s in ("karras", "logsnr_uniform", "time_uniform", "time_quadratic")}
    assert err <= 0.5 * min(dpm.values()), (err, dpm)
    assert err_p < min(dpm.values()), (err_p, dpm)
    # planning: the planned path's worst fitted step is no worse than the uniform path's
    assert float(prof.step_error.max()) <= float(prof_p.step_error.max()) * (1 + 1e-9)


def test_closed_loop_refit_beats_the_teacher_state_fit():
    """FewStep's closed-loop refit (each step fitted on the student's own states) generalises better
    than the paper's teacher-state fit on new seeds; its step errors are the rollout's."""
    am = AnalyticModel("eps")
    model = am.denoiser(5.0)
    ts = get_schedule("karras", N_TEACH, am.model_sigmas)
    teacher = functools.partial(sample_dpmpp_multistep, family="eps", order=2)
    train = [am.initial_state(am.noise((1, 4, 8, 8), 200 + s), float(ts[0])) for s in range(8)]
    x = am.initial_state(am.noise((4, 4, 8, 8), 9), am.sigma_max)
    ref = reference_solve(model, x, am.sigma_max, steps=120)
    errs = {}
    for cl in (False, True):
        prof = olss.train_olss(model, train, ts, teacher, 8, "eps", closed_loop=cl)
        assert prof.closed_loop == cl
        errs[cl] = _rel(olss.sample_olss(model, x, prof.sigmas, profile=prof), ref)
    assert errs[True] < 0.9 * errs[False], errs


def test_path_planning_is_the_smallest_feasible_bound():
    """The outer bisection returns a path whose worst step error is (up to the bisection tolerance)
    the smallest bound for which the greedy search succeeds."""
    am, model, prof = _trained("eps", 1.0, 6, True)
    fitter = olss.SubspaceFitter(prof.r_factor, prof.teacher_steps, prof.rows)
    worst = float(prof.step_error.max())
    path = olss._greedy_path(fitter, prof.teacher_steps, 6, worst * (1 + 1e-9))
    assert path is not None
    assert olss._greedy_path(fitter, prof.teacher_steps, 6, worst * (1 - 5e-3)) is None
    p = prof.path.tolist()
    assert p[0] == 0 and len(p) == 6 and all(b > a for a, b in zip(p, p[1:])) and p[-1] < N_TEACH
    assert float(prof.sigmas[0]) == pytest.approx(am.sigma_max) and float(prof.sigmas[-1]) == 0.0


def test_uniform_path():
    assert olss.uniform_path(100, 4) == [0, 25, 50, 75]
    assert olss.uniform_path(10, 10) == list(range(10))


def test_sampler_contract():
    am, model, prof = _trained("eps", 1.0, 5, True)
    x, _ = _eval("eps", 1.0)
    x = x.float()
    sig = prof.sigmas.float()
    sig_copy = sig.clone()
    seen, kw = [], []

    def m(xx, s, **extra):
        kw.append(extra)
        return model(xx, s)

    out = olss.sample_olss(m, x, sig, extra_args={"seed": 3}, callback=lambda d: seen.append(d), profile=prof)
    assert out.dtype == torch.float32
    assert [d["i"] for d in seen] == list(range(5)) and all({"x", "denoised", "sigma", "sigma_hat"} <= set(d)
                                                             for d in seen)
    assert all(k == {"seed": 3} for k in kw)
    assert torch.equal(sig, sig_copy)
    with pytest.raises(ValueError, match="fitted for 5 steps"):
        olss.sample_olss(model, x, get_schedule("karras", 6, am.model_sigmas), profile=prof)
    with pytest.raises(ValueError, match="fitted for the sigmas"):
        olss.sample_olss(model, x, get_schedule("karras", 5, am.model_sigmas), profile=prof)


def test_truncated_profile_for_denoise():
    """denoise < 1 keeps the tail of the learned path, refitted so the start state replaces the
    initial noise; from a fresh state at that sigma it lands near the exact endpoint."""
    am, model, prof = _trained("eps", 1.0, 6, True)
    half = prof.truncated(0.5)
    assert half.steps == 3 and torch.equal(half.sigmas, prof.sigmas[3:])
    assert prof.truncated(1.0) is prof
    s0 = float(half.sigmas[0])
    x0 = am.mixture.sample(3, SHAPE_EVAL[1:], am.mixture.log_weights(True), torch.Generator().manual_seed(5))
    x = x0 + s0 * am.noise(x0.shape, 11)       # an img2img start: data + noise at sigma s0
    ref = reference_solve(model, x, s0, steps=80)
    err = _rel(olss.sample_olss(model, x, half.sigmas, profile=half), ref)
    dpm = _rel(sample_dpmpp_multistep(model, x, half.sigmas, family="eps"), ref)
    assert err < dpm, (err, dpm)
    with pytest.raises(ValueError, match="denoise"):
        prof.truncated(0.0)


# ------------------------------------------------------------------------------------------------
# files
def test_profile_round_trip(tmp_path):
    _, _, prof = _trained("flow", 3.0, 5, True)
    p = prof.save(tmp_path / "p.safetensors")
    back = olss.OLSSProfile.load(p)
    for k, v in prof.tensors().items():
        assert torch.equal(getattr(back, k), v), k
    meta = back.metadata()
    for key in olss.REQUIRED_META:
        assert key in meta
    assert back.family == "flow" and back.cfg == 3.0 and back.teacher == "dpmpp_2m" and back.steps == 5
    assert meta["selected_sigmas"] == [float(s) for s in prof.sigmas]
    assert len(meta["step_error"]) == 5 and meta["teacher_steps"] == N_TEACH


def test_corrupt_truncated_and_incomplete_profiles_get_clear_errors(tmp_path):
    _, _, prof = _trained("flow", 3.0, 5, True)
    good = prof.save(tmp_path / "good.safetensors")
    raw = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ProfileError, match="trunc.safetensors is corrupt or truncated"):
        olss.OLSSProfile.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ProfileError, match="corrupt or truncated"):
        olss.OLSSProfile.load(tmp_path / "junk.safetensors")
    t = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in prof.tensors().items()}
    del t["we"]
    atomic_save(tmp_path / "nokey.safetensors", t, prof.metadata())
    with pytest.raises(ProfileError, match="missing we"):
        olss.OLSSProfile.load(tmp_path / "nokey.safetensors")
    meta = prof.metadata()
    del meta["family"]
    atomic_save(tmp_path / "nometa.safetensors", prof.tensors(), meta)
    with pytest.raises(ProfileError, match="missing family"):
        olss.OLSSProfile.load(tmp_path / "nometa.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ProfileError, match="not a FewStep"):
        olss.OLSSProfile.load(tmp_path / "foreign.safetensors")
    bad = dict(t, we=prof.we)
    bad["path"] = torch.tensor([0, 3, 2, 9, 10])
    atomic_save(tmp_path / "incons.safetensors", bad, prof.metadata())
    with pytest.raises(ProfileError, match="inconsistent"):
        olss.OLSSProfile.load(tmp_path / "incons.safetensors")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _, _, prof = _trained("flow", 3.0, 5, True)
    p = prof.save(tmp_path / "p.safetensors")

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    olss.OLSSProfile.load(p)
    # a pickle (torch.save) file under a profile's name is rejected as not safetensors, not executed
    with open(tmp_path / "evil.safetensors", "wb") as f:
        pickle.dump({"we": 1}, f)
    with pytest.raises(ProfileError, match="corrupt or truncated"):
        olss.OLSSProfile.load(tmp_path / "evil.safetensors")


def test_student_steps_validation():
    with pytest.raises(ValueError, match="steps must be in"):
        olss.check_student_steps(0, 100)
    with pytest.raises(ValueError, match="must not exceed teacher_steps"):
        olss.check_student_steps(20, 10)
    with pytest.raises(ValueError, match="whole number"):
        olss.check_student_steps(4.5, 100)


# ------------------------------------------------------------------------------------------------
# issue 23: the teacher's own solver on a fixed schedule as a profile (what the held-out selection compares)
@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("name", ["dpmpp_2m", "euler", "deis_3", "dpmpp_3m"])
def test_linear_solver_coefficients_reproduce_the_solver(family, name):
    """The probe's coefficients, replayed by sample_olss on a real model, give the solver's own result."""
    from fewstep.samplers.registry import SOLVERS
    am = AnalyticModel(family)
    model = am.denoiser(3.0)
    sig = get_schedule("karras", 7, am.model_sigmas)
    wx, we = olss.linear_solver_coefficients(SOLVERS[name], sig, family)
    assert bool((torch.triu(we, diagonal=1) == 0).all())
    x = am.noise((3, 4, 6, 6), seed=1) * am.sigma_max
    want = SOLVERS[name](model, x.clone(), sig, family=family)
    outs, cur = [], x
    for j in range(7):
        outs.append(model(cur, sig[j] * torch.ones(3)))
        cur = wx[j] * x + sum(we[j, m] * outs[m] for m in range(j + 1))
    assert float((cur - want).norm() / want.norm()) < 1e-6


def test_two_call_solvers_are_not_read_as_profiles():
    from fewstep.samplers.registry import SOLVERS
    sig = get_schedule("karras", 5, AnalyticModel("eps").model_sigmas)
    assert olss.linear_solver_coefficients(SOLVERS["edm_heun"], sig, "eps") is None
    assert olss.linear_solver_coefficients(SOLVERS["dpmpp_2s"], sig, "eps") is None


def test_solver_profile_samples_as_the_solver_on_the_snapped_schedule(tmp_path):
    from fewstep.samplers.registry import SOLVERS
    am, model, prof = _trained("eps", 3.0, 5, True)
    path = olss.snap_path(get_schedule("logsnr_uniform", 5, am.model_sigmas), prof.teacher_sigmas)
    assert path is not None and path[0] == 0 and path == sorted(set(path))
    sp = olss.solver_profile(prof, SOLVERS["dpmpp_2m"], path, "dpmpp_2m + logsnr_uniform")
    assert sp.extra["method"] == "solver" and not sp.path_planning
    assert torch.equal(sp.sigmas[:-1], prof.teacher_sigmas[torch.tensor(path)])
    x, _ = _eval("eps", 3.0)
    got = olss.sample_olss(model, x.clone(), sp.sigmas, profile=sp)
    want = SOLVERS["dpmpp_2m"](model, x.clone(), sp.sigmas, family="eps")
    assert float((got - want).norm() / want.norm()) < 1e-6
    # its step errors come from the same QR factor as OLSS's: the least-squares fit on the same path is no
    # worse per step, and not much better (the solver is a good linear step)
    fitter = olss.SubspaceFitter(prof.r_factor, prof.teacher_steps, prof.rows)
    _, _, ls_err = olss.fit_path(fitter, prof.teacher_steps, path)
    assert bool((ls_err <= sp.step_error * (1 + 1e-9)).all()) and bool((sp.step_error > 0).all())
    # the method and the selection survive the file; a bad method is refused naming the field
    sp = olss.replace(sp, extra={**sp.extra, "selection": "held-out: solver won"})
    back = olss.OLSSProfile.load(sp.save(tmp_path / "s.safetensors"))
    assert back.extra["method"] == "solver" and back.extra["selection"] == "held-out: solver won"
    assert back.extra["solver"] == "dpmpp_2m + logsnr_uniform"
    bad = olss.replace(sp, extra={**sp.extra, "method": "magic"})
    with pytest.raises(ProfileError, match="method must be one of"):
        olss.OLSSProfile.load(bad.save(tmp_path / "bad.safetensors"))


def test_snap_path_refuses_collisions():
    ts = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    assert olss.snap_path(torch.tensor([10.0, 2.1, 0.0]), ts) == [0, 2]
    assert olss.snap_path(torch.tensor([10.0, 2.1, 1.9, 0.0]), ts) is None
    assert olss.snap_path(torch.tensor([4.0, 2.0, 0.0]), ts) is None


def test_fit_profile_from_gives_both_paths_from_the_stored_factor():
    am, model, prof = _trained("flow", 3.0, 5, True)
    p = olss.fit_profile_from(prof, False)
    assert p.path.tolist() == olss.uniform_path(prof.teacher_steps, 5) and not p.path_planning
    q = olss.fit_profile_from(p, True)
    assert torch.equal(q.path, prof.path) and torch.allclose(q.wx, prof.wx) and torch.allclose(q.we, prof.we)


@pytest.mark.parametrize("anchor", [olss.CLOSED_LOOP_ANCHOR, 0.0])
def test_closed_loop_refit_with_fewer_data_rows_than_coefficients(anchor):
    """One run of a 1-element state gives each step fewer rows than unknowns (its R factor is padded
    to square; without the anchor's ridge that is what keeps the solve defined): the refit still returns
    finite coefficients of the right shape and a finite error per step."""
    k = 3
    wx = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    we = torch.tril(torch.full((k, k), 0.1, dtype=torch.float64))
    x0 = [torch.tensor([1.5], dtype=torch.float64)]
    targets = [[torch.tensor([1.0 - 0.3 * j], dtype=torch.float64) for j in range(k)]]
    wx2, we2, err = olss.closed_loop_refit(wx, we, x0, targets, lambda r, x, j: 0.5 * x, anchor=anchor)
    assert wx2.shape == wx.shape and we2.shape == we.shape and err.shape == (k,)
    assert torch.isfinite(wx2).all() and torch.isfinite(we2).all() and torch.isfinite(err).all()
    assert torch.equal(torch.triu(we2, 1), torch.zeros(k, k, dtype=torch.float64))


def test_a_one_step_profile_round_trips(tmp_path):
    """The smallest profile the limits allow (1 teacher step, 1 student step) saves and loads."""
    am = AnalyticModel("eps")
    model = am.denoiser(1.0)
    ts = get_schedule("karras", 1, am.model_sigmas)
    teacher = functools.partial(sample_dpmpp_multistep, family="eps", order=2)
    train = [am.initial_state(am.noise(SHAPE_TRAIN, 7), float(ts[0]))]
    prof = olss.train_olss(model, train, ts, teacher, 1, "eps", path_planning=False, teacher_name="dpmpp_2m")
    back = olss.OLSSProfile.load(prof.save(tmp_path / "one.safetensors"))
    assert back.teacher_steps == 1 and back.steps == 1
    assert torch.equal(back.teacher_sigmas, prof.teacher_sigmas)


@pytest.mark.parametrize("denoise", [0.0, 1.5, float("nan"), -0.2])
def test_a_profile_is_truncated_only_for_denoise_in_0_1(denoise):
    _, _, prof = _trained("eps", 3.0, 5, True)
    with pytest.raises(ValueError, match="denoise must be in"):
        prof.truncated(denoise)
