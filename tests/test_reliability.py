"""Issue 18 without ComfyUI: karras at small rho, the cost and interrupts of long schedules, the
checked loaders of both file kinds (fixed regressions and random malformed files), seed folding,
the save-name rule and the mode of saved files."""
import json
import math
import os
import stat
import time

import mpmath
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fewstep.core.io import ProfileError, atomic_save
from fewstep.core.model_sigmas import ModelSigmas
from fewstep.samplers import olss
from fewstep.schedules import get_schedule

MAX_SIGMA = 1e4  # schedules/ays_file.py's bound for eps schedules


# the APIs issue 18 added, imported where used (so that on a checkout without them only the tests
# that need them fail)
def fold_seed(seed):
    from fewstep.core.seeds import fold_seed
    return fold_seed(seed)


def check_file_stem(name):
    from fewstep.core.io import check_file_stem
    return check_file_stem(name)


def check_save_target(*a):
    from fewstep.core.io import check_save_target
    return check_save_target(*a)


def load_ays_schedule(*a):
    from fewstep.schedules.ays_file import load_ays_schedule
    return load_ays_schedule(*a)

SD15 = ModelSigmas.discrete_vp()


# ------------------------------------------------------------------------------------------------
# karras at small rho (issue: OverflowError at rho 0.003, 0.001, 1e-300)
def _karras_exact(n, smin, smax, rho):
    """EDM eq. 5 evaluated with enough digits that neither the powers overflow nor the last point cancels."""
    mpmath.mp.dps = 40 + int(math.log10(smax / smin) / rho)
    rho = mpmath.mpf(rho)
    hi, lo = mpmath.mpf(smax) ** (1 / rho), mpmath.mpf(smin) ** (1 / rho)
    return [float((hi + mpmath.mpf(i) / (n - 1) * (lo - hi)) ** rho) for i in range(n)]


@pytest.mark.parametrize("rho", [0.003, 0.001, 0.05, 0.5, 0.99])
def test_karras_small_rho_is_the_formula(rho):
    s = get_schedule("karras", 10, SD15, rho=rho)
    want = torch.tensor(_karras_exact(10, SD15.sigma_min, SD15.sigma_max, rho) + [0.0], dtype=torch.float64)
    torch.testing.assert_close(s, want, rtol=1e-12, atol=0)
    assert bool((s[1:] < s[:-1]).all())


def test_karras_rho_at_or_above_1_is_unchanged():
    """The direct formula (ComfyUI's) is kept where it neither overflows nor cancels."""
    for rho in (1.0, 7.0, 100.0):
        i = torch.linspace(0, 1, 12, dtype=torch.float64)
        hi, lo = SD15.sigma_max ** (1 / rho), SD15.sigma_min ** (1 / rho)
        want = torch.cat([(hi + i * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])
        assert torch.equal(get_schedule("karras", 12, SD15, rho=rho), want)


@pytest.mark.parametrize("rho", [1e-300, 5e-324])
def test_karras_tiny_rho_gets_a_clear_error(rho):
    """Inside the documented range (0, 100], but every sigma but the last rounds to sigma_max."""
    with pytest.raises(ValueError, match="rho"):
        get_schedule("karras", 10, SD15, rho=rho)


# ------------------------------------------------------------------------------------------------
# cost and interrupts of long schedules (issue: beta, steps 10000, denoise 0.01 took 62-77 s)
@pytest.mark.parametrize("ms", [SD15, ModelSigmas.flow(100.0), ModelSigmas.from_range("eps", 1e-4, 1e4)],
                         ids=["sd15", "flow_shift100", "range"])
def test_beta_cost_grows_with_the_steps_kept(ms):
    t = time.perf_counter()
    s = get_schedule("beta", 10000, ms, denoise=0.01)
    took = time.perf_counter() - t
    assert took < 5.0, took
    assert s.shape == (10001,) and s[-1] == 0 and bool((s[1:] < s[:-1]).all())


def test_beta_tail_equals_the_whole_schedule():
    full = get_schedule("beta", 400, SD15)
    assert torch.equal(get_schedule("beta", 40, SD15, denoise=0.1), full[-41:])
    assert torch.equal(get_schedule("beta", 133, SD15, denoise=0.333), get_schedule("beta", 399, SD15)[-134:])


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", ["beta", "karras", "ays", "time_uniform"])
def test_check_interrupt_stops_schedule_construction(name):
    calls = []

    def check():
        calls.append(1)
        if name == "beta" and len(calls) > 3 or name != "beta":
            raise Stop

    t = time.perf_counter()
    with pytest.raises(Stop):
        get_schedule(name, 10000, SD15, denoise=0.01, check_interrupt=check)
    assert time.perf_counter() - t < 2.0
    ok = get_schedule(name, 20, SD15, check_interrupt=lambda: None)
    assert torch.equal(ok, get_schedule(name, 20, SD15))


# ------------------------------------------------------------------------------------------------
# seeds
def test_seed_folding():
    top = 2 ** 64 - 1
    assert fold_seed(0) == 0 and fold_seed(12345) == 12345 and fold_seed(2 ** 63 - 1) == 2 ** 63 - 1
    assert fold_seed(top) == 2 ** 63 - 1 and fold_seed(2 ** 63) == 0
    # what the stages derive from the folded seed stays inside torch's generator range
    torch.Generator().manual_seed(fold_seed(top) * 2 + 1)
    torch.Generator().manual_seed(fold_seed(top) + 255)
    for bad in (-1, top + 1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be"):
            fold_seed(bad)


# ------------------------------------------------------------------------------------------------
# names and saved files
@pytest.mark.parametrize("name", ["CON", "con", "Nul", "COM1", "lpt9", "aux.safetensors", "con.backup", "PRN .x"])
def test_windows_device_names_are_refused(name):
    with pytest.raises(ValueError, match="reserved on Windows"):
        check_file_stem(name)


@pytest.mark.parametrize("name", ["trailing.", "a.b.", "x..y", "../up", "a/b", "a\\b", ".hidden", "\u0661\u0660",
                                  "caf\u00e9", "x" * 101])
def test_bad_stems_are_refused(name):
    with pytest.raises(ValueError, match="name"):
        check_file_stem(name)


@pytest.mark.parametrize("name,stem", [("mine", "mine"), ("mine.safetensors", "mine"), (" a b ", "a b"),
                                       ("v1.2", "v1.2"), ("CONSOLE", "CONSOLE"), ("COM10", "COM10"),
                                       ("", ""), ("x.SAFETENSORS", "x")])
def test_good_stems(name, stem):
    assert check_file_stem(name) == stem


def test_save_target_refuses_a_folder(tmp_path):
    (tmp_path / "taken.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_save_target(tmp_path / "taken.safetensors", "node: name")
    assert check_save_target(tmp_path / "free.safetensors") == tmp_path / "free.safetensors"


def test_saved_files_are_0644(tmp_path):
    old = os.umask(0o077)  # even under a strict umask, as ComfyUI's outputs under the usual one
    try:
        p = atomic_save(tmp_path / "m.safetensors", {"x": torch.zeros(2)}, {"fewstep_format": "t/1"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------------
# saved AYS schedules
AYS_TABLE = torch.tensor([14.6146, 6.0, 3.0, 1.5, 0.8, 0.4, 0.15, 0.0], dtype=torch.float32)
AYS_META = {"fewstep_format": "ays_schedule/1", "family": "eps", "sigma_min": 0.0292, "sigma_max": 14.6146,
            "steps": 7, "model_fingerprint": "0123abcd", "klub": {"10": [1.5, 1.2]},
            "stop_reason": {"10": "no move kept"}, "cfg": 7.0, "seed": 3, "samples": 32, "iterations": 4,
            "align_to": "dpmpp_2m", "data": "teacher"}


def _ays_file(tmp_path, name="s.safetensors", tensors=None, **meta):
    m = dict(AYS_META)
    for k, v in meta.items():
        if v is DROP:
            m.pop(k)
        else:
            m[k] = v
    level = torch.cat([AYS_TABLE[:-1], torch.tensor([0.0292])])
    return atomic_save(tmp_path / name, tensors if tensors is not None else {"sigmas": AYS_TABLE.clone(),
                                                                            "level_7": level}, m)


DROP = object()


def test_a_good_ays_file_loads(tmp_path):
    got = load_ays_schedule(_ays_file(tmp_path))
    assert got.family == "eps" and got.table.dtype == torch.float64
    assert float(got.table[-1]) == pytest.approx(0.0292) and torch.equal(got.table[:-1], AYS_TABLE[:-1].double())
    assert load_ays_schedule(_ays_file(tmp_path, "min.safetensors", **{k: DROP for k in AYS_META
                                                                       if k not in ("fewstep_format", "family",
                                                                                    "sigma_min")}))


@pytest.mark.parametrize("field,value,reason", [
    ("sigma_min", [0.03], "sigma_min must be a number"),
    ("sigma_min", None, "sigma_min must be a number"),
    ("sigma_min", "abc", "sigma_min must be a number"),
    ("sigma_min", float("nan"), "sigma_min must be in"),
    ("sigma_min", -1, "sigma_min must be in"),
    ("sigma_min", 0, "sigma_min must be in"),
    ("sigma_min", 100, "sigma_min must be below"),
    ("family", "bogus", "family must be one of eps, flow"),
    ("family", None, "family must be a string"),
    ("steps", 2.5, "steps must be a whole number"),
    ("cfg", "high", "cfg must be a number"),
    ("sigma_max", 80.0, "sigma_max is 80.0"),
    ("fewstep_format", "ays_schedule/2", "fewstep_format must be one of ays_schedule/1"),
])
def test_bad_ays_metadata_names_the_file_and_the_field(tmp_path, field, value, reason):
    p = _ays_file(tmp_path, "bad.safetensors", **{field: value})
    with pytest.raises(ProfileError) as e:
        load_ays_schedule(p)
    assert "bad.safetensors" in str(e.value) and reason in str(e.value)


@pytest.mark.parametrize("tensors,reason", [
    ({"sigmas": torch.tensor([1e30, 1e10, 1.0, 0.0])}, "above the largest sigma of a eps model"),
    ({"sigmas": torch.tensor([5.0, 6.0, 1.0, 0.0])}, "not a strictly decreasing"),
    ({"sigmas": torch.tensor([5.0, 1.0, 0.5, 0.1])}, "not a strictly decreasing"),
    ({"sigmas": torch.tensor([5.0, 0.0])}, "needs at least 3"),
    ({"sigmas": torch.tensor([[5.0, 1.0, 0.0]])}, "dimensions"),
    ({"sigmas": torch.tensor([True, True, False])}, "dtype bool"),
    ({"sigmas": torch.tensor([5, 1, 0])}, "dtype int64"),
    ({"sigmas": AYS_TABLE, "level_10": AYS_TABLE.clone()}, "tensor 'level_10' has shape (8,), expected (11,)"),
    ({"sigmas": AYS_TABLE, "level_7": AYS_TABLE.clone()}, "tensor 'level_7' is not a strictly decreasing list"),
    ({"sigmas": AYS_TABLE, "extra": AYS_TABLE.clone()}, "tensor 'extra' is not part of the format"),
    ({"sigmas": torch.tensor([5.0, float("nan"), 0.0])}, "NaN or inf"),
])
def test_bad_ays_tensors_name_the_file_and_the_tensor(tmp_path, tensors, reason):
    p = _ays_file(tmp_path, "badt.safetensors", tensors=tensors, sigma_min=0.01, sigma_max=DROP)
    with pytest.raises(ProfileError) as e:
        load_ays_schedule(p)
    assert "badt.safetensors" in str(e.value) and reason in str(e.value)


def test_ays_file_against_the_model(tmp_path):
    p = _ays_file(tmp_path)
    assert load_ays_schedule(p, SD15).family == "eps"
    with pytest.raises(ProfileError, match="s.safetensors was made for a eps model, but this model is flow"):
        load_ays_schedule(p, ModelSigmas.flow(3.0))
    with pytest.raises(ProfileError, match=r"outside this model's range \[0.002, 1\]"):
        load_ays_schedule(p, ModelSigmas.from_range("eps", 0.002, 1.0))
    wide = _ays_file(tmp_path, "wide.safetensors", tensors={"sigmas": torch.tensor([80.0, 10.0, 1.0, 0.0])},
                     sigma_min=0.002, sigma_max=80.0)
    assert load_ays_schedule(wide, ModelSigmas.from_range("eps", 0.002, 80.0))
    with pytest.raises(ProfileError, match="outside this model's range"):
        load_ays_schedule(wide, SD15)


# random malformed AYS files ------------------------------------------------------------------------
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                 st.lists(st.floats(-1e3, 1e3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


def _assert_clear(err, fname, field=None):
    msg = str(err)
    assert fname in msg, msg
    if field is not None:
        assert field in msg, msg


def _check_loaded_ays(got):
    t = got.table
    assert got.family in ("eps", "flow")
    assert t.dtype == torch.float64 and t.ndim == 1 and t.numel() >= 3 and bool(torch.isfinite(t).all())
    assert bool((t > 0).all()) and bool((t[1:] < t[:-1]).all())
    assert float(t[0]) <= (MAX_SIGMA if got.family == "eps" else 1.0)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(AYS_META) + ["unknown_key"]), value=JUNK)
def test_random_ays_metadata(tmp_path, field, value):
    p = _ays_file(tmp_path, "rand.safetensors", **{field: value})
    try:
        got = load_ays_schedule(p)
    except ProfileError as e:
        _assert_clear(e, "rand.safetensors", field)
        return
    _check_loaded_ays(got)
    if field != "unknown_key":   # accepted: the value must be one the format allows for that field
        v = got.meta[field]
        if field in ("sigma_min", "sigma_max", "cfg"):
            assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if field in ("steps", "seed", "samples", "iterations"):
            assert isinstance(v, int) and not isinstance(v, bool) and v >= 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=8),
       dtype=st.sampled_from(DTYPES), twod=st.booleans(), level=st.none() | st.integers(0, 12),
       sigma_min=st.floats(1e-6, 20.0), family=st.sampled_from(["eps", "flow"]))
def test_random_ays_tensors(tmp_path, values, dtype, twod, level, sigma_min, family):
    t = torch.tensor(values, dtype=torch.float64).to(dtype) if values else torch.zeros(0, dtype=dtype)
    if twod and t.numel():
        t = t.reshape(1, -1)
    tensors = {"sigmas": t}
    if level is not None:
        tensors[f"level_{level}"] = t.clone()
    p = _ays_file(tmp_path, "randt.safetensors", tensors=tensors, sigma_min=sigma_min, family=family,
                  sigma_max=DROP)
    try:
        got = load_ays_schedule(p)
    except ProfileError as e:
        _assert_clear(e, "randt.safetensors")
        assert any(w in str(e) for w in ("tensor 'sigmas'", "tensor 'level_", "sigma_min", "corrupt")), str(e)
        return
    _check_loaded_ays(got)
    assert dtype in (torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------------
# OLSS profiles
def _profile(family="eps", n=12, k=4):
    gen = torch.Generator().manual_seed(0)
    qr = olss.TrajectoryQR(n)
    for _ in range(2):
        qr.add([torch.randn(40, generator=gen, dtype=torch.float64) for _ in range(n + 1)],
               [torch.randn(40, generator=gen, dtype=torch.float64) for _ in range(n)])
    ms = SD15 if family == "eps" else ModelSigmas.flow(3.0)
    ts = get_schedule("karras", n, ms)
    return olss.fit_profile(qr, ts, k, family, path_planning=False, teacher="dpmpp_2m x12 karras", cfg=3.0,
                            model_fingerprint="abc", name="p")


@pytest.fixture(scope="module")
def profile():
    return _profile()


def _save_profile(tmp_path, prof, fname="prof.safetensors", tensors=None, **meta):
    m = prof.metadata()
    for k, v in meta.items():
        if v is DROP:
            m.pop(k)
        else:
            m[k] = v
    t = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in prof.tensors().items()}
    t.update(tensors or {})
    return atomic_save(tmp_path / fname, t, m)


def test_a_good_profile_loads(tmp_path, profile):
    back = olss.OLSSProfile.load(_save_profile(tmp_path, profile))
    for k, v in profile.tensors().items():
        assert torch.equal(getattr(back, k), v), k
    assert back.rows == profile.rows and back.cfg == 3.0 and back.path_planning is False


@pytest.mark.parametrize("field,value,reason", [
    ("rows", "many", "rows must be a whole number"),
    ("rows", 2.5, "rows must be a whole number"),
    ("rows", 0, "rows must be in"),
    ("format_version", "one", "format_version must be a whole number"),
    ("format_version", 0, "format_version must be in"),
    ("cfg", "x", "cfg must be a number"),
    ("cfg", [3.0], "cfg must be a number"),
    ("cfg", float("inf"), "cfg must be in"),
    ("ridge", 2.0, "ridge must be in"),
    ("path_planning", 1, "path_planning must be true or false"),
    ("family", "bogus", "family must be one of eps, flow"),
    ("teacher_steps", 13, "inconsistent: tensor 'teacher_sigmas' holds 12 steps, but metadata teacher_steps is 13"),
    ("steps", 3, "inconsistent: tensor 'wx' holds 4 steps, but metadata steps is 3"),
    ("kind", "ays", "kind is 'ays'"),
    ("steps", "four", "steps must be a whole number"),
    ("selected_sigmas", [1.0, 2.0], "selected_sigmas must hold 5 numbers"),
    ("step_error", [0.1, 0.2, 0.3, 0.4], "inconsistent: step_error does not match"),
    ("sigma_max", 99.0, "inconsistent: sigma_max is 99.0"),
])
def test_bad_profile_metadata_names_the_file_and_the_field(tmp_path, profile, field, value, reason):
    p = _save_profile(tmp_path, profile, "badm.safetensors", **{field: value})
    with pytest.raises(ProfileError) as e:
        olss.OLSSProfile.load(p)
    assert "badm.safetensors" in str(e.value) and reason in str(e.value), str(e.value)


def test_bad_profile_tensors_name_the_file_and_the_tensor(tmp_path, profile):
    k, n = profile.steps, profile.teacher_steps
    cases = [
        ({"wx": profile.wx.bool()}, "tensor 'wx' has dtype bool"),
        ({"we": profile.we.bool()}, "tensor 'we' has dtype bool"),
        ({"r_factor": profile.r_factor.to(torch.bool)}, "tensor 'r_factor' has dtype bool"),
        ({"sigmas": profile.sigmas.to(torch.float16)}, "tensor 'sigmas' has dtype float16"),
        ({"wx": torch.ones(k + 1, dtype=torch.float64)}, f"tensor 'wx' holds {k + 1} steps, but metadata steps is {k}"),
        ({"wx": torch.ones(1, k, dtype=torch.float64)}, "tensor 'wx' has 2 dimensions"),
        ({"we": torch.ones(k + 1, k + 1, dtype=torch.float64).tril()}, f"tensor 'we' has shape ({k + 1}, {k + 1}), expected ({k}, {k})"),
        ({"we": torch.ones(k, k, dtype=torch.float64)}, "tensor 'we' must be lower triangular"),
        ({"path": profile.path.double()}, "tensor 'path' has dtype float64"),
        ({"path": profile.path.double() + 0.5}, "tensor 'path' has dtype float64"),
        ({"step_error": -profile.step_error - 1}, "tensor 'step_error' holds negative"),
        ({"r_factor": torch.ones(2 * n + 1, 2 * n + 1, dtype=torch.float64)}, "r_factor' must be upper triangular"),
        ({"teacher_sigmas": profile.teacher_sigmas.flip(0)}, "tensor 'teacher_sigmas' is not a strictly decreasing"),
    ]
    for tensors, reason in cases:
        p = _save_profile(tmp_path, profile, "badt.safetensors", tensors=tensors)
        with pytest.raises(ProfileError) as e:
            olss.OLSSProfile.load(p)
        assert "badt.safetensors" in str(e.value) and reason in str(e.value), (reason, str(e.value))


# random malformed profiles -------------------------------------------------------------------------
PROFILE_FIELDS = sorted(_profile().metadata()) + ["denoise", "unknown_key"]


def _check_loaded_profile(back):
    back.validate()
    assert back.family in ("eps", "flow") and isinstance(back.path_planning, bool)
    assert isinstance(back.closed_loop, bool) and isinstance(back.rows, int) and back.rows >= 1
    assert 0 <= back.cfg <= 100 and 0 <= back.ridge <= 1 and isinstance(back.teacher, str)
    for name in ("sigmas", "wx", "we", "step_error", "teacher_sigmas", "r_factor"):
        t = getattr(back, name)
        assert t.dtype == torch.float64 and bool(torch.isfinite(t).all()), name
    assert back.path.dtype == torch.int64


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(PROFILE_FIELDS), value=JUNK)
def test_random_profile_metadata(tmp_path, profile, field, value):
    p = _save_profile(tmp_path, profile, "randm.safetensors", **{field: value})
    try:
        back = olss.OLSSProfile.load(p)
    except ProfileError as e:
        _assert_clear(e, "randm.safetensors")
        assert field in str(e) or field in ("fewstep_format", "kind") and "file" in str(e), str(e)
        return
    _check_loaded_profile(back)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(olss.REQUIRED_TENSORS), dtype=st.sampled_from(DTYPES),
       change=st.sampled_from(["dtype", "grow", "shrink", "flatten", "nan", "scale", "transpose"]))
def test_random_profile_tensors(tmp_path, profile, key, dtype, change):
    t = profile.tensors()[key].clone()
    if change == "dtype":
        t = t.to(dtype)
    elif change == "grow":
        t = torch.cat([t, t[:1]])
    elif change == "shrink":
        t = t[:-1]
    elif change == "flatten":
        t = t.reshape(-1, 1)
    elif change == "nan" and t.is_floating_point():
        t = t.clone()
        t.view(-1)[0] = float("nan")
    elif change == "scale":
        t = t * 3
    elif change == "transpose" and t.ndim == 2:
        t = t.T.contiguous()
    p = _save_profile(tmp_path, profile, "randt.safetensors", tensors={key: t})
    try:
        back = olss.OLSSProfile.load(p)
    except ProfileError as e:
        _assert_clear(e, "randt.safetensors")
        return
    _check_loaded_profile(back)
    if key not in ("wx", "we", "step_error", "r_factor") or change not in ("scale", "dtype"):
        # anything else accepted must be the original data (or a lossless copy of it)
        assert torch.equal(getattr(back, key).to(torch.float64), profile.tensors()[key].to(torch.float64)), key


def test_random_junk_files_never_crash(tmp_path):
    gen = torch.Generator().manual_seed(0)
    raw = _save_profile(tmp_path, _profile()).read_bytes()
    for i in range(60):
        b = bytearray(raw)
        for _ in range(int(torch.randint(1, 8, (1,), generator=gen))):
            b[int(torch.randint(0, len(b), (1,), generator=gen))] = int(torch.randint(0, 256, (1,), generator=gen))
        p = tmp_path / f"j{i}.safetensors"
        p.write_bytes(bytes(b))
        for load in (olss.OLSSProfile.load, load_ays_schedule):
            try:
                load(p)
            except ProfileError as e:
                assert p.name in str(e)


def test_a_foreign_safetensors_file(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "f.safetensors"), metadata={"fewstep_format": json.dumps(1)})
    with pytest.raises(ProfileError, match="f.safetensors"):
        load_ays_schedule(tmp_path / "f.safetensors")
    with pytest.raises(ProfileError, match="f.safetensors"):
        olss.OLSSProfile.load(tmp_path / "f.safetensors")
