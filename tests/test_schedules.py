"""Schedules: the contract (length, strictly decreasing, finite, ends in 0), the denoise rule,
published AYS tables, model awareness, and bad input."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fewstep.core import families
from fewstep.core.model_sigmas import ModelSigmas
from fewstep.schedules import SCHEDULE_NAMES, ays_sigmas, ays_table, basic, get_schedule, loglinear_interp
from fewstep.schedules.ays import AYS_PUBLISHED_SIGMAS, AYS_TIMESTEPS, remap_to_model

SD = ModelSigmas.discrete_vp()


def check_contract(s, steps):
    assert s.dtype == torch.float64
    assert s.shape == (steps + 1,)
    assert torch.isfinite(s).all()
    assert s[-1] == 0
    assert (s[1:] < s[:-1]).all()


def model_sigmas_strategy():
    eps = st.tuples(st.floats(1e-3, 1.0), st.floats(1.5, 1000.0)).map(
        lambda r: ModelSigmas.from_range("eps", r[0], r[0] * r[1]))
    flow = st.floats(0.1, 20.0).map(ModelSigmas.flow)
    grid = st.sampled_from([SD, ModelSigmas.flow(3.0), ModelSigmas.flow(1.0)])
    return st.one_of(eps, flow, grid)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SCHEDULE_NAMES), steps=st.integers(1, 1000), denoise=st.floats(0.05, 1.0),
       rho=st.floats(0.5, 12.0), ms=model_sigmas_strategy())
def test_every_schedule_keeps_the_contract(name, steps, denoise, rho, ms):
    try:
        s = get_schedule(name, steps, ms, denoise=denoise, rho=rho)
    except ValueError as e:
        # the only allowed refusal: the schedule really has coinciding neighbours (many steps on a
        # short range, or a steep rho), checked on the raw schedule
        assert "strictly decreasing" in str(e)
        from fewstep.schedules import basic
        from fewstep.schedules._common import total_steps_for
        n = total_steps_for(steps, denoise)
        raw = {"karras": lambda: basic.karras(n, ms, rho), "polyexponential": lambda: basic.polyexponential(n, ms, rho),
               "logsnr_uniform": lambda: basic.logsnr_uniform(n, ms), "time_uniform": lambda: basic.time_uniform(n, ms),
               "time_quadratic": lambda: basic.time_quadratic(n, ms)}.get(name)
        assert raw is not None, f"{name} refused {steps} steps at denoise {denoise}: {e}"  # ays and beta never do
        r = raw()
        assert not (r[1:] < r[:-1]).all()
        return
    check_contract(s, steps)
    assert s[0] <= ms.sigma_max * (1 + 1e-9)
    if denoise == 1.0:
        assert s[0] == pytest.approx(ms.sigma_max, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(SCHEDULE_NAMES), steps=st.integers(1, 200), denoise=st.floats(0.05, 0.999))
def test_denoise_rule_is_the_tail_of_a_longer_schedule(name, steps, denoise):
    """steps = steps actually run, taken from the tail of a schedule of int(steps/denoise) steps."""
    s = get_schedule(name, steps, SD, denoise=denoise)
    total = max(steps, int(steps / denoise))
    full = get_schedule(name, total, SD)
    check_contract(s, steps)
    assert torch.equal(s, full[-(steps + 1):])


def test_published_ays_tables():
    """The published sigmas; and the published timesteps read off SD1.5's grid agree with them to
    within the page's rounding (5e-4) and its own inconsistency (SD1.5 0.33% at 0.399 vs 0.3977, SDXL 1.5% at 0.113 vs 0.1114). SVD is
    published as sigmas only."""
    # SD1.5's sigma grid from its published training schedule (scaled-linear betas 0.00085..0.012 over
    # 1000 steps), computed here and not by FewStep's ModelSigmas
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    grid = ((1 - ac) / ac).sqrt()
    for mt in ("SD1", "SDXL"):
        from_timesteps = grid[torch.tensor(AYS_TIMESTEPS[mt])]
        pub = torch.tensor(AYS_PUBLISHED_SIGMAS[mt], dtype=torch.float64)
        assert torch.allclose(from_timesteps, pub, rtol={'SD1': 4e-3, 'SDXL': 1.6e-2}[mt], atol=5e-4), mt
        assert torch.allclose(ays_table(mt), from_timesteps, rtol=1e-12, atol=0), mt
    for mt in ("SD1", "SDXL"):
        t = ays_table(mt)
        pub = torch.tensor(AYS_PUBLISHED_SIGMAS[mt], dtype=torch.float64)
        assert torch.allclose(t, pub, rtol={'SD1': 4e-3, 'SDXL': 1.6e-2}[mt], atol=5e-4), (mt, t, pub)
        assert len(AYS_TIMESTEPS[mt]) == 11
    assert torch.allclose(ays_table("SVD"), torch.tensor(AYS_PUBLISHED_SIGMAS["SVD"], dtype=torch.float64),
                          atol=1e-4, rtol=0)


def test_sd15_grid_matches_known_sigmas():
    assert SD.sigma_min == pytest.approx(0.0291672, rel=1e-5)
    assert SD.sigma_max == pytest.approx(14.6146, rel=1e-5)


def test_ays_ten_steps_is_the_table_and_interpolation_is_loglinear():
    s = ays_sigmas("SD1", 10)
    t = ays_table("SD1")
    assert torch.equal(s[:-1], t[:-1]) and s[-1] == 0
    s20 = loglinear_interp(t, 21)
    # every other point of the 20-step interpolation is a table point; midpoints are geometric means
    assert torch.allclose(s20[::2], t, rtol=1e-12)
    assert torch.allclose(s20[1::2], (t[:-1] * t[1:]).sqrt(), rtol=1e-12)


def test_ays_remap_onto_flow_keeps_relative_logsnr_positions():
    ms = ModelSigmas.flow(3.0)
    t = ays_table("SD1")
    r = remap_to_model(t, "eps", ms)
    assert r[0] == ms.sigma_max and r[-1] == pytest.approx(ms.sigma_min)
    lt = families.lam(t, "eps")
    lr = families.lam(r[1:], "flow")
    pos_t = (lt[1:] - lt[0]) / (lt[-1] - lt[0])
    top = families.schedule_lambda_top(ms.sigma_max, "flow")
    pos_r = (lr - top) / (lr[-1] - top)
    assert torch.allclose(pos_t, pos_r, atol=1e-9)
    check_contract(ays_sigmas("SD1", 10, model_sigmas=ms), 10)


def test_ays_on_sd_range_is_not_remapped():
    assert torch.equal(ays_sigmas("SD1", 7, model_sigmas=SD), ays_sigmas("SD1", 7))


def test_logsnr_uniform_is_uniform_in_lambda_for_both_families():
    for ms in (SD, ModelSigmas.flow(3.0)):
        s = get_schedule("logsnr_uniform", 12, ms)
        lmb = families.lam(s[1:-1], ms.family)
        d = lmb[1:] - lmb[:-1]
        assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9), ms.family
    # for flow it is not uniform in log sigma
    s = get_schedule("logsnr_uniform", 12, ModelSigmas.flow(3.0))
    d = torch.diff(torch.log(s[1:-1]))
    assert d.std() > 0.05 * d.abs().mean()


def test_time_uniform_follows_the_model_timesteps():
    s = get_schedule("time_uniform", 1000, SD)
    assert torch.allclose(s[:-1], SD.table.flip(0), rtol=1e-9)
    fl = ModelSigmas.flow(3.0)
    s = get_schedule("time_uniform", 10, fl)
    t = torch.linspace(1, 0.001, 10, dtype=torch.float64)
    assert torch.allclose(s[:-1], 3 * t / (1 + 2 * t), rtol=1e-9)


def test_karras_matches_edm_formula():
    s = get_schedule("karras", 5, SD, rho=7.0)
    i = torch.arange(5, dtype=torch.float64)
    ref = (SD.sigma_max ** (1 / 7) + i / 4 * (SD.sigma_min ** (1 / 7) - SD.sigma_max ** (1 / 7))) ** 7
    assert torch.allclose(s[:-1], ref, rtol=1e-12)


def test_time_quadratic_is_quadratic_in_model_time():
    s = get_schedule("time_quadratic", 8, SD)
    u = SD.time_of(s[:-1])
    r = u.sqrt()
    assert torch.allclose(torch.diff(r), torch.full((7,), -1 / 7, dtype=torch.float64), atol=1e-6)


def test_polyexponential_rho1_is_log_uniform():
    s = get_schedule("polyexponential", 6, SD, rho=1.0)
    d = torch.diff(torch.log(s[:-1]))
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps must be in"),
    (dict(steps=-3), "steps must be in"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(denoise=0.0), "denoise must be in"),
    (dict(denoise=float("nan")), "denoise must be in"),
    (dict(denoise=1.5), "denoise must be in"),
    (dict(rho=-1.0), "rho must be in"),
    (dict(rho=0.0), "rho must be in"),
    (dict(name="bogus"), "schedule must be one of"),
])
def test_bad_input_gets_clear_errors(kwargs, match):
    args = dict(name="karras", steps=10, denoise=1.0, rho=7.0) | kwargs
    with pytest.raises(ValueError, match=match):
        get_schedule(args["name"], args["steps"], SD, denoise=args["denoise"], rho=args["rho"])


@pytest.mark.parametrize("lo, hi", [(float("nan"), 10.0), (1.0, float("nan")), (10.0, 1.0), (-1.0, 1.0),
                                    (1.0, float("inf"))])
def test_nan_or_inverted_sigma_range_is_refused(lo, hi):
    with pytest.raises(ValueError, match="sigma"):
        ModelSigmas.from_range("eps", lo, hi)


def test_flow_range_above_one_is_refused():
    with pytest.raises(ValueError, match="flow models have sigma_max <= 1"):
        ModelSigmas.from_range("flow", 0.01, 2.0)


def test_ays_is_remapped_when_only_one_end_of_the_range_differs():
    """A model with SD1.5's sigma_max but a larger sigma_min (or the reverse) gets the table remapped onto
    its range (the published table is for SD1.5's whole range)."""
    from fewstep.schedules.ays import needs_remap
    t = ays_table("SD1")
    assert not needs_remap(t, SD)
    low_end = ModelSigmas.from_range("eps", 0.1, float(t[0]))
    top_end = ModelSigmas.from_range("eps", float(t[-1]), 20.0)
    assert needs_remap(t, low_end) and needs_remap(t, top_end)
    assert not torch.allclose(ays_sigmas("SD1", 10, model_sigmas=low_end), ays_sigmas("SD1", 10, model_sigmas=SD))


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.25])
def test_karras_below_rho_1_is_the_edm_formula(rho):
    """The log-space branch (rho < 1) against EDM eq. 5 written out directly (safe at these rho)."""
    n = 9
    got = basic.karras(n, SD, rho)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    hi, lo = SD.sigma_max ** (1 / rho), SD.sigma_min ** (1 / rho)
    want = (hi + i * (lo - hi)) ** rho
    assert got[-1] == 0
    # the direct form cancels at the last point (smax^(1/rho) - smax^(1/rho) + smin^(1/rho)): sigma_min there
    assert torch.allclose(got[:-2], want[:-1], rtol=1e-9, atol=0)
    assert got[-2] == pytest.approx(SD.sigma_min, rel=1e-12)


@pytest.mark.parametrize("table,reason", [([0.0, 0.5, 1.0], "finite and positive"),
                                          ([0.1, 0.5, 0.5, 1.0], "strictly ascending")])
def test_a_model_sigma_table_with_a_zero_or_a_repeat_is_refused(table, reason):
    with pytest.raises(ValueError, match=reason):
        ModelSigmas(table=torch.tensor(table, dtype=torch.float64), family="eps")


@pytest.mark.parametrize("rho", [0.5, 2.0, 3.0])
def test_polyexponential_is_k_diffusions_formula(rho):
    """log sigma_i = ((n-1-i)/(n-1))^rho (log smax - log smin) + log smin, from sigma_max down to sigma_min."""
    n = 7
    got = basic.polyexponential(n, SD, rho)
    lo, hi = math.log(SD.sigma_min), math.log(SD.sigma_max)
    want = [math.exp(((n - 1 - i) / (n - 1)) ** rho * (hi - lo) + lo) for i in range(n)]
    assert got[-1] == 0
    assert got[:-1].tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("n", [2, 3, 9])
def test_karras_below_rho_1_ends_exactly_at_sigma_min(rho, n):
    s = basic.karras(n, SD, rho)
    assert float(s[0]) == SD.sigma_max and float(s[-2]) == SD.sigma_min and float(s[-1]) == 0.0


def test_within_range_needs_both_ends_inside_the_models_range():
    from fewstep.core.model_sigmas import within_range
    lo, hi = SD.sigma_min, SD.sigma_max
    assert within_range(lo, hi, SD) and within_range(0.05, 10.0, SD)
    assert within_range(lo * (1 - 5e-4), hi * (1 + 5e-4), SD)          # float32 copies pass (rtol 1e-3)
    assert not within_range(lo / 2, 10.0, SD)                           # the bottom below the model's
    assert not within_range(0.05, hi * 2, SD)                           # the top above it
    assert not within_range(lo / 2, hi * 2, SD)
