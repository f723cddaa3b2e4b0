"""FewStepAYSOptimize in real ComfyUI (in-process, CPU) on the analytic MODEL: the schedule, the saved
file read back by FewStepAYSScheduler's dropdown, determinism, progress, interrupts and bad input."""
import pytest
import torch

pytestmark = pytest.mark.host

LIGHT = dict(cfg=3.0, steps=10, iterations=2, samples=4, seed=3, align_to="none (the paper's bound only)")


def _analytic(comfy, family="eps", size=8):
    return comfy.NODES["FewStepAnalyticModel"]().build(family, 3.0, 8, 0, size)


def _optimize(comfy, model, pos, neg, latent=None, name="", **kw):
    with torch.inference_mode():
        out = comfy.NODES["FewStepAYSOptimize"]().optimize(model, pos, neg, name=name, latent_image=latent,
                                                            **(LIGHT | kw))
    assert out["ui"]["fewstep_sigmas"] == [float(v) for v in out["result"][0]]
    return out["result"][0]


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_optimise_save_and_load_through_the_ays_scheduler(comfy, ays_dir, family):
    model, pos, neg, latent = _analytic(comfy, family)
    sig = _optimize(comfy, model, pos, neg, latent, name="mine")
    ms = model.get_model_object("model_sampling")
    assert sig.dtype == torch.float32 and sig.device.type == "cpu" and len(sig) == 11
    assert float(sig[0]) == pytest.approx(float(ms.sigma_max), rel=1e-6) and float(sig[-1]) == 0
    assert bool((sig[1:] < sig[:-1]).all())
    assert (ays_dir / "mine.safetensors").is_file()
    from fewstep.core.io import load_checked
    tensors, meta = load_checked(ays_dir / "mine.safetensors", "AYS schedule")
    if meta["kept"].startswith("fixed:"):   # the final guard kept a fixed schedule: the output is that schedule
        from fewstep.comfy_adapter import model_sigmas_of_sampling
        from fewstep.schedules import ays_optimize as core
        want = core.fixed_schedule(meta["kept"][6:], 10, model_sigmas_of_sampling(ms))
        assert torch.allclose(sig.double(), want, rtol=1e-5)
    elif family == "eps":  # discrete timesteps: every optimised sigma is one of the model's own
        table = ms.sigmas.double()
        for v in sig[1:-1]:
            assert float(((table - float(v)).abs() / table).min()) < 1e-6
    assert meta["family"] == family and meta["steps"] == 10 and meta["cfg"] == 3.0
    assert meta["fewstep_format"] == "ays_schedule/1" and "level_10" in tensors
    sched = comfy.NODES["FewStepAYSScheduler"]()
    again = sched.get_sigmas("SD1", 10, 1.0, model=model, saved_schedule="mine.safetensors")[0]
    assert torch.allclose(again, sig, rtol=1e-6)
    five = sched.get_sigmas("SD1", 5, 1.0, model=model, saved_schedule="mine.safetensors")[0]
    assert len(five) == 6 and float(five[-1]) == 0 and torch.allclose(five[:-1], sig[0:10:2], rtol=1e-5)
    # the saved schedule of one family refuses a model of the other
    other, *_ = _analytic(comfy, "flow" if family == "eps" else "eps")
    with pytest.raises(ValueError, match="saved_schedule"):
        sched.get_sigmas("SD1", 10, 1.0, model=other, saved_schedule="mine.safetensors")


def test_deterministic_and_sampling_with_it(comfy, ays_dir):
    model, pos, neg, latent = _analytic(comfy, "flow")
    a = _optimize(comfy, model, pos, neg, latent)
    b = _optimize(comfy, model, pos, neg, latent)
    assert torch.equal(a, b)
    assert not list(ays_dir.iterdir())  # name "" saves nothing
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    sampler = comfy.NODES["FewStepDPMSolverPP"]().get_sampler("2m", 1.0, 1.0, "brownian", True)[0]
    with torch.inference_mode():
        out = SamplerCustom().sample(model, True, 1, 3.0, pos, neg, sampler, a, latent)[0]["samples"]
    assert out.shape == latent["samples"].shape and bool(torch.isfinite(out).all())


def test_data_latents_are_used_and_checked(comfy, ays_dir):
    model, pos, neg, latent = _analytic(comfy, "eps")
    from fewstep.core.analytic import GaussianMixture
    mix = GaussianMixture(8, 0)
    data = mix.sample(6, (4, 8, 8), mix.log_weights(True), torch.Generator().manual_seed(0)).float()
    sig = _optimize(comfy, model, pos, neg, {"samples": data}, samples=6)
    assert len(sig) == 11 and float(sig[-1]) == 0
    with pytest.raises(ValueError, match="channels"):
        _optimize(comfy, model, pos, neg, {"samples": torch.randn(4, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"must have shape \(batch, channels, 2 sizes\)"):
        _optimize(comfy, model, pos, neg, {"samples": torch.randn(4, 4, 2, 8, 8)})
    with pytest.raises(ValueError, match=r"samples is 8, but latent_image holds only 6"):
        _optimize(comfy, model, pos, neg, {"samples": data}, samples=8)
    nan = data.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _optimize(comfy, model, pos, neg, {"samples": nan}, samples=6)


@pytest.mark.parametrize("widget,value,match", [
    ("samples", 1, r"samples is 1: too few"), ("steps", 1, r"steps must be a whole number in \[2, 200\]"),
    ("iterations", 0, r"iterations must be"), ("cfg", float("nan"), "cfg must be"),
])
def test_bad_widgets(comfy, ays_dir, widget, value, match):
    model, pos, neg, latent = _analytic(comfy, "eps")
    with pytest.raises(ValueError, match=match):
        _optimize(comfy, model, pos, neg, latent, **{widget: value})


def test_bad_name(comfy, ays_dir):
    model, pos, neg, latent = _analytic(comfy, "eps")
    with pytest.raises(ValueError, match="name must be"):
        _optimize(comfy, model, pos, neg, latent, name="../escape")


def test_progress_bar_and_interrupt(comfy, ays_dir, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils as cu
    seen = []
    monkeypatch.setattr(cu, "PROGRESS_BAR_HOOK", lambda v, t, preview=None, node_id=None: seen.append((v, t)))
    model, pos, neg, latent = _analytic(comfy, "flow")
    _optimize(comfy, model, pos, neg, latent)
    assert len(seen) >= 5 and seen[-1][0] == seen[-1][1]
    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) > 3:
            raise mm.InterruptProcessingException()

    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", interrupted)
    with pytest.raises(mm.InterruptProcessingException):
        _optimize(comfy, model, pos, neg, latent, name="never")
    assert not (ays_dir / "never.safetensors").exists()


def test_preview_route_draws_a_saved_schedule(comfy, ays_dir):
    """GET /fewstep/sigmas (the graph editor's preview) answers the saved schedule as the node outputs it."""
    from fewstep.nodes import routes
    model, pos, neg, latent = _analytic(comfy, "eps")
    sig = _optimize(comfy, model, pos, neg, latent, name="preview me")
    got = routes.sigmas_for_query({"schedule": "ays", "steps": "10", "saved_schedule": "preview me.safetensors"})
    assert got == pytest.approx([float(v) for v in sig], rel=1e-6)
    with pytest.raises(routes.QueryError, match="not in models/fewstep_ays"):
        routes.sigmas_for_query({"schedule": "ays", "steps": "10", "saved_schedule": "absent.safetensors"})


def _spy_optimize(monkeypatch):
    import fewstep.nodes.ays_optimize as node
    seen = []
    real = node.core.optimize_ays

    def spy(*a, **kw):
        res = real(*a, **kw)
        seen.append((kw, res))
        return res
    monkeypatch.setattr(node.core, "optimize_ays", spy)
    return seen


def test_align_to_a_builtin_sampler_runs_comfyuis_own_sampler(comfy, ays_dir, monkeypatch):
    """align_to "KSampler: ipndm" refines with ComfyUI's own ipndm (its k-diffusion function is called, through
    comfy.samplers.sampler_object) and the saved file records it; the node reports the start and the guard."""
    import comfy.k_diffusion.sampling as ks
    from fewstep.core.io import load_checked
    calls = []
    real = ks.sample_ipndm

    def ipndm(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(ks, "sample_ipndm", ipndm)
    seen = _spy_optimize(monkeypatch)
    model, pos, neg, latent = _analytic(comfy, "flow")
    with torch.inference_mode():
        out = comfy.NODES["FewStepAYSOptimize"]().optimize(model, pos, neg, 3.0, 10, 1, 32, 3, "ipndm",
                                                            latent_image=latent, align_to="KSampler: ipndm")
    assert len(calls) > 50                      # the teacher pairs were sampled with it, candidate after candidate
    kw, res = seen[-1]
    assert kw["align"] == "KSampler: ipndm" and kw["solver"].__name__ == "comfyui_ipndm" and kw["align_cache"]
    assert set(kw["check_solvers"]) == {"ComfyUI euler", "ComfyUI dpmpp_2m", "ComfyUI uni_pc", "FewStep dpmpp_2m"}
    _, meta = load_checked(ays_dir / "ipndm.safetensors", "AYS schedule")
    assert meta["aligned_sampler"] == "comfyui:ipndm" and meta["align_to"] == "KSampler: ipndm"
    assert meta["start"] == res.init and meta["kept"] == res.kept
    summary, report = out["ui"]["text"][0], out["result"][1]
    assert f"start {res.init}" in summary and "ComfyUI's ipndm" in summary
    assert "fixed starts, held-out error" in report and "final guard" in report


def test_old_align_values_keep_meaning_fewsteps_solver_and_the_default_is_comfyuis_dpmpp_2m(comfy, ays_dir,
                                                                                            monkeypatch):
    import inspect
    import comfy.samplers as cs
    from fewstep.core.io import load_checked
    from fewstep.nodes.ays_optimize import ALIGN_CHOICES, ALIGN_NONE, FewStepAYSOptimize, align_choices
    seen = _spy_optimize(monkeypatch)
    model, pos, neg, latent = _analytic(comfy, "eps")
    _optimize(comfy, model, pos, neg, latent, name="old", align_to="dpmpp_2m", samples=32, iterations=1)
    kw, _ = seen[-1]
    assert kw["align"] == "dpmpp_2m" and kw["solver"] is None      # FewStep's DPM-Solver++(2M), as before
    _, meta = load_checked(ays_dir / "old.safetensors", "AYS schedule")
    assert meta["aligned_sampler"] == "fewstep:dpmpp_2m"
    _optimize(comfy, model, pos, neg, latent, name="paper", align_to=ALIGN_NONE)
    _, meta = load_checked(ays_dir / "paper.safetensors", "AYS schedule")
    assert meta["aligned_sampler"] == "" and meta["align_to"] == ALIGN_NONE
    # the old values first and in their old order, ComfyUI's samplers appended
    choices = align_choices()
    assert tuple(choices[:len(ALIGN_CHOICES)]) == ALIGN_CHOICES
    assert choices[len(ALIGN_CHOICES):] == ["KSampler: " + n for n in cs.SAMPLER_NAMES]
    assert any(c == "KSampler: fewstep_dpmpp_2m" for c in choices)        # FewStep's KSampler entries too
    spec = FewStepAYSOptimize.INPUT_TYPES()["optional"]["align_to"]
    assert spec[0] == choices and spec[1]["default"] == "KSampler: dpmpp_2m"
    assert inspect.signature(FewStepAYSOptimize.optimize).parameters["align_to"].default == "KSampler: dpmpp_2m"
    with pytest.raises(ValueError, match=r"align_to must be one of \['dpmpp_2m'"):
        _optimize(comfy, model, pos, neg, latent, align_to="heun")
    with pytest.raises(ValueError, match=r"samples is 31, but align_to KSampler: euler needs at least 32"):
        _optimize(comfy, model, pos, neg, latent, align_to="KSampler: euler", samples=31)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "uni_pc"])
def test_prefix_cache_is_exact_for_comfyuis_samplers(comfy, name):
    """ays_align.CACHE_SAFE: replaying the first i model outputs gives exactly the errors of sampling anew."""
    import comfy.sample as csample
    import comfy.samplers as cs
    from fewstep.comfy_adapter import model_sigmas_of_sampling
    from fewstep.nodes import ays_align
    from fewstep.schedules import ays_optimize as core
    assert name in ays_align.CACHE_SAFE
    model, pos, neg, latent = _analytic(comfy, "eps")
    got = {}

    def run(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        extra = dict(extra_args or {}, denoise_mask=None)
        ms = model_sigmas_of_sampling(model.get_model_object("model_sampling"))

        def D(xb, sig, **kw):
            return model_k(xb, sig.to(xb.device, xb.dtype), **(kw or extra))
        x_T, x_ref = core.teacher_samples(D, ms, 4, (4, 8, 8), seed=1, teacher_steps=30)
        solve = ays_align.comfy_solver(name, model_k, extra)
        cached = core.TeacherError(D, (x_T, x_ref), "eps", solve, None, None, lambda k: None, cache=True)
        plain = core.TeacherError(D, (x_T, x_ref), "eps", solve, None, None, lambda k: None)
        base = core.level_of(core.fixed_schedule("karras", 8, ms), ms)
        cached.adopt(cached.trial(base, 0)[1])
        for i in (5, 2):
            trial = list(base)
            trial[i] = (base[i] * base[i + 1]) ** 0.5
            got[i] = (cached.trial(trial, i)[0], plain(trial))
        return x
    start = torch.tensor([14.6146, 0.0])
    with torch.inference_mode():
        csample.sample_custom(model, torch.zeros(1, 4, 8, 8), 3.0, cs.KSAMPLER(run), start, pos, neg,
                              torch.zeros(1, 4, 8, 8), disable_pbar=True, seed=0)
    for i, (c, p) in got.items():
        assert torch.equal(c, p), i


def test_saved_schedule_warns_once_when_sampled_with_another_sampler(comfy, ays_dir, monkeypatch, caplog):
    """Point 3: FewStepAYSScheduler with a connected SAMPLER, and KSampler's fewstep_ays_optimized entry, warn
    once (log and node) when the saved schedule was aligned to another sampler; not with the right one."""
    import logging
    import shutil
    import comfy.samplers as cs
    from fewstep.nodes import ays_align
    shown = []
    monkeypatch.setattr(ays_align, "show_on_node", lambda text: shown.append(text))
    monkeypatch.setattr(ays_align, "_warned", set())
    model, pos, neg, latent = _analytic(comfy, "eps")
    _optimize(comfy, model, pos, neg, latent, name="for euler", align_to="KSampler: euler", samples=32, iterations=1)
    node = comfy.NODES["FewStepAYSScheduler"]()
    shown.clear()
    caplog.set_level(logging.WARNING, logger="FewStep")

    def warnings():
        return [r.getMessage() for r in caplog.records if "was aligned to" in r.getMessage()]
    node.get_sigmas("SD1", 10, 1.0, model=model, saved_schedule="for euler.safetensors",
                    sampler=cs.sampler_object("euler"))
    assert warnings() == [] and shown and "aligned to ComfyUI's euler" in shown[-1]   # the right one: info only
    for _ in range(2):
        node.get_sigmas("SD1", 10, 1.0, model=model, saved_schedule="for euler.safetensors",
                        sampler=cs.sampler_object("dpmpp_2m"))
    assert len(warnings()) == 1                                                      # once
    w = warnings()[0]
    assert "aligned to ComfyUI's euler" in w and "samples it with ComfyUI's dpmpp_2m" in w
    assert any(t == w for t in shown)                                                 # on the node too
    fs = comfy.NODES["FewStepDPMSolverPP"]().get_sampler("2m", 1.0, 1.0, "brownian", True)[0]
    node.get_sigmas("SD1", 10, 1.0, model=model, saved_schedule="for euler.safetensors", sampler=fs)
    assert len(warnings()) == 2 and "FewStep's dpmpp_2m" in warnings()[-1]
    # KSampler's entry for the optimizer's default file name
    shutil.copy(ays_dir / "for euler.safetensors", ays_dir / "ays_optimized.safetensors")
    ks = cs.KSampler(model, steps=10, device="cpu", sampler="uni_pc", scheduler="fewstep_ays_optimized", denoise=1.0)
    assert len(ks.sigmas) == 11 and float(ks.sigmas[-1]) == 0
    assert len(warnings()) == 3 and "KSampler samples it with ComfyUI's uni_pc" in warnings()[-1]
    cs.KSampler(model, steps=10, device="cpu", sampler="euler", scheduler="fewstep_ays_optimized", denoise=1.0)
    assert len(warnings()) == 3


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_comfy_like_schedules_equal_comfyuis_own(comfy, family):
    import comfy.samplers as cs
    from fewstep.comfy_adapter import model_sigmas_of_sampling
    from fewstep.schedules.comfy_like import COMFY_SCHEDULES, comfy_schedule
    model, *_ = _analytic(comfy, family)
    msc = model.get_model_object("model_sampling")
    ms = model_sigmas_of_sampling(msc)
    for steps in (2, 3, 5, 10, 17, 40):
        for name in COMFY_SCHEDULES:
            want = cs.calculate_sigmas(msc, name, steps).double()
            got = comfy_schedule(name, steps, ms)
            assert got.shape == want.shape, (name, steps)
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-6), (name, steps)   # ComfyUI: float32


def test_optimize_tells_its_stages_and_shows_its_summary(comfy, ays_dir, node_texts):
    """Issue 20: AYS Optimize says where it is (teacher samples, each start's refinement and the
    alignment with their sweep k of n, the final check; share of the work done and an ETA) through
    ComfyUI's progress text, and its summary is the ui text and the last progress text."""
    texts, run = node_texts
    model, pos, neg, latent = _analytic(comfy, "eps")
    node = comfy.NODES["FewStepAYSOptimize"]()
    with torch.inference_mode():
        out = run(lambda: node.optimize(model, pos, neg, name="", latent_image=latent,
                                        **(LIGHT | dict(samples=32, iterations=2, align_to="KSampler: euler"))))
    joined = "\n".join(texts)
    for want in ("AYS Optimize - teacher samples: ", "of 32", "held-out teacher samples", "teacher samples: done",
                 "score the fixed starts on the held-out pairs", "refine 10 steps from ", "(1 of 2): sweep 1 of 2",
                 "align 10 steps to the sampler: sweep 1 of 2", "final check on the held-out pairs",
                 "% of the work", "ETA "):
        assert want in joined, (want, texts)
    order = [next(i for i, t in enumerate(texts) if w in t) for w in
             ("teacher samples: ", "held-out teacher", "score the fixed", "(1 of 2): sweep 1", "align 10 steps",
              "final check")]
    assert order == sorted(order), texts
    summary = out["ui"]["text"][0]
    assert texts[-1] == summary and summary.startswith("Aligned to ComfyUI's euler")
