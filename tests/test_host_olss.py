"""OLSS in real ComfyUI (in-process, CPU): train -> save -> load -> sample through SamplerCustom on the
analytic MODEL, the teacher recorded through ComfyUI's sampling path (CFG and model patches included),
mismatch and file errors, interrupts."""
import functools

import pytest
import torch

pytestmark = pytest.mark.host

#: the fit's mechanics, as path_planning chooses (the held-out selection has its own tests below)
TEACH = dict(cfg=3.0, teacher="dpmpp_2m", teacher_steps=40, teacher_schedule="karras", steps=5, samples=2,
             seed=100, path_planning=True, select_on_heldout=False)




def _analytic(comfy, family="eps", size=8):
    return comfy.NODES["FewStepAnalyticModel"]().build(family, 3.0, 8, 0, size)


def _train(comfy, model, pos, neg, latent, name, **kw):
    with torch.inference_mode():
        out = comfy.NODES["FewStepOLSSTrain"]().train(model, pos, neg, latent, name=name, **(TEACH | kw))
    assert out["ui"]["text"][0].startswith(("OLSS profile", "OLSS-P profile")), out["ui"]
    return out["result"]


def _sampler_custom(comfy, model, pos, neg, latent, sampler, sigmas, seed, cfg=3.0):
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    with torch.inference_mode():
        out = SamplerCustom().sample(model, True, seed, cfg, pos, neg, sampler, sigmas, latent)
    return out[0]["samples"]


def _exact_endpoint(family, cfg, latent_shape, seed, sigma0):
    """The exact ODE endpoint from ComfyUI's own initial state (its noise scaling of seed's noise)."""
    import comfy.sample
    from fewstep.core.analytic import AnalyticModel, reference_solve
    noise = comfy.sample.prepare_noise(torch.zeros(latent_shape), seed).to(torch.float64)
    am = AnalyticModel(family, 3.0, 8, 0)
    # eps at sigma_max: ComfyUI scales noise by sqrt(1 + sigma^2); flow: sigma * noise (sigma = 1)
    x = noise * (1 + sigma0 ** 2) ** 0.5 if family == "eps" else noise * sigma0
    return reference_solve(am.denoiser(3.0), x, sigma0, steps=120)


def _rel(a, b):
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_train_save_load_sample_through_sampler_custom(comfy, olss_dir, family):
    model, pos, neg, latent = _analytic(comfy, family)
    prof, report = _train(comfy, model, pos, neg, latent, f"t_{family}")
    f = olss_dir / f"t_{family}.safetensors"
    assert f.is_file() and "fit RMSE" in report
    node = comfy.NODES["FewStepOLSSSampler"]
    choices = node.INPUT_TYPES()["required"]["profile_name"][0]
    assert f.name in choices
    sampler, sigmas = node().build(f.name, 1.0)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 6 and torch.allclose(sigmas.double(), prof.sigmas)
    sampler2, sigmas2 = node().build("(use the linked profile)", 1.0, profile=prof)
    assert torch.equal(sigmas, sigmas2)
    seed = 7  # not a training seed
    out = _sampler_custom(comfy, model, pos, neg, latent, sampler, sigmas, seed)
    ref = _exact_endpoint(family, 3.0, tuple(latent["samples"].shape), seed, float(sigmas[0]))
    err = _rel(out, ref)
    # the same budget with ComfyUI's own dpmpp_2m on karras and on the FewStep logSNR schedule
    import comfy.samplers as cs
    ms = model.get_model_object("model_sampling")
    base = []
    for sched in ("karras", "simple", "sgm_uniform"):
        s = cs.calculate_sigmas(ms, sched, 5).cpu()
        base.append(_rel(_sampler_custom(comfy, model, pos, neg, latent, cs.sampler_object("dpmpp_2m"), s, seed), ref))
    assert err <= 0.5 * min(base), (err, base)


def test_recording_goes_through_comfyui_sampling_path(comfy, olss_dir):
    """The trajectory is the one ComfyUI's sampling computes: with a post-CFG patch on the MODEL that
    shrinks every denoised output, the recorded outputs (hence the fit) change."""
    model, pos, neg, latent = _analytic(comfy, "eps")
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(lambda args: args["denoised"] * 0.5)
    p0, _ = _train(comfy, model, pos, neg, latent, "plain", path_planning=False, closed_loop=False)
    p1, _ = _train(comfy, patched, pos, neg, latent, "patched", path_planning=False, closed_loop=False)
    assert torch.equal(p0.sigmas, p1.sigmas)
    assert not torch.allclose(p0.we, p1.we, rtol=1e-3)
    # and the recorded trajectory equals the core teacher on the core model (CFG-combined outputs)
    from fewstep.core.analytic import AnalyticModel
    from fewstep.samplers import olss
    from fewstep.samplers.dpm_solver_pp import sample_dpmpp_multistep
    from comfy.sample import prepare_noise
    am = AnalyticModel("eps", 3.0, 8, 0)
    qr = olss.TrajectoryQR(TEACH["teacher_steps"])
    for s in range(TEACH["samples"]):
        noise = prepare_noise(latent["samples"], TEACH["seed"] + s).to(torch.float64)
        x = noise * (1 + float(p0.teacher_sigmas[0]) ** 2) ** 0.5
        st, out = olss.record_trajectory(am.denoiser(3.0), x, p0.teacher_sigmas,
                                         functools.partial(sample_dpmpp_multistep, family="eps", order=2))
        qr.add(st, out)
    mine = olss.fit_profile(qr, p0.teacher_sigmas, 5, "eps", path_planning=False)
    assert torch.allclose(mine.wx, p0.wx, rtol=1e-3, atol=1e-4)
    assert torch.allclose(mine.we, p0.we, rtol=1e-3, atol=1e-4)
    # closed loop through ComfyUI equals the core's closed loop on the core model
    p2, _ = _train(comfy, model, pos, neg, latent, "closed", path_planning=False, closed_loop=True)
    assert p2.closed_loop and not p0.closed_loop
    xs = []
    for s in range(TEACH["samples"]):
        noise = prepare_noise(latent["samples"], TEACH["seed"] + s).to(torch.float64)
        xs.append(noise * (1 + float(p0.teacher_sigmas[0]) ** 2) ** 0.5)
    core_cl = olss.train_olss(am.denoiser(3.0), xs, p0.teacher_sigmas,
                              functools.partial(sample_dpmpp_multistep, family="eps", order=2), 5, "eps",
                              path_planning=False, closed_loop=True)
    assert torch.allclose(core_cl.we, p2.we, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(p2.we, p0.we, rtol=1e-3, atol=1e-4)


def test_mismatches(comfy, olss_dir, caplog):
    eps, pos, neg, latent = _analytic(comfy, "eps")
    flow, fpos, fneg, flatent = _analytic(comfy, "flow")
    prof, _ = _train(comfy, eps, pos, neg, latent, "mm", path_planning=False)
    node = comfy.NODES["FewStepOLSSSampler"]()
    sampler, sigmas = node.build("(use the linked profile)", 1.0, profile=prof)
    with pytest.raises(Exception, match="trained on a eps model, but this model is flow"):
        _sampler_custom(comfy, flow, fpos, fneg, flatent, sampler, sigmas, 1)
    import comfy.samplers as cs
    karras = cs.calculate_sigmas(eps.get_model_object("model_sampling"), "karras", 5).cpu()
    with pytest.raises(Exception, match="fitted for the sigmas"):
        _sampler_custom(comfy, eps, pos, neg, latent, sampler, karras, 1)
    with pytest.raises(Exception, match="fitted for 5 steps"):
        _sampler_custom(comfy, eps, pos, neg, latent, sampler, karras[:-2], 1)
    # another model (other mixture seed) and another cfg: warnings, sampling goes on
    other, opos, oneg, olat = comfy.NODES["FewStepAnalyticModel"]().build("eps", 3.0, 8, 1, 8)
    caplog.clear()
    with caplog.at_level("WARNING", logger="FewStep"):
        out = _sampler_custom(comfy, other, opos, oneg, olat, sampler, sigmas, 1, cfg=5.0)
    assert torch.isfinite(out).all()
    text = caplog.text
    assert "was trained on model" in text and "trained at cfg 3" in text


def test_denoise_truncates_the_learned_path(comfy, olss_dir):
    model, pos, neg, latent = _analytic(comfy, "eps")
    prof, _ = _train(comfy, model, pos, neg, latent, "dn", steps=6)
    node = comfy.NODES["FewStepOLSSSampler"]()
    sampler, sigmas = node.build("(use the linked profile)", 0.5, profile=prof)
    assert len(sigmas) == 4 and torch.allclose(sigmas.double(), prof.sigmas[3:].float().double())
    with pytest.raises(ValueError, match="denoise must be in"):
        node.build("(use the linked profile)", 0.0, profile=prof)


def test_file_errors_and_bad_widgets(comfy, olss_dir):
    from fewstep.core.io import ProfileError
    model, pos, neg, latent = _analytic(comfy, "eps")
    prof, _ = _train(comfy, model, pos, neg, latent, "good", path_planning=False)
    raw = (olss_dir / "good.safetensors").read_bytes()
    (olss_dir / "cut.safetensors").write_bytes(raw[: len(raw) // 3])
    node = comfy.NODES["FewStepOLSSSampler"]()
    with pytest.raises(ProfileError, match="cut.safetensors is corrupt or truncated"):
        node.build("cut.safetensors", 1.0)
    with pytest.raises(ValueError, match="no profile is linked"):
        node.build("(use the linked profile)", 1.0)
    with pytest.raises(ValueError, match="not found"):
        node.build("nope.safetensors", 1.0)
    for kw, match in [(dict(name="../evil"), "name must be"), (dict(steps=3), "steps must be"),
                      (dict(teacher_steps=5), "teacher_steps must be"), (dict(samples=0), "samples must be"),
                      (dict(teacher="heun"), "teacher must be one of"), (dict(ridge=-1.0), "ridge must be in")]:
        with pytest.raises(ValueError, match=match):
            _train(comfy, model, pos, neg, latent, **({"name": "x"} | kw))


def test_interrupt_stops_training_cleanly(comfy, olss_dir):
    import comfy.model_management as mm
    model, pos, neg, latent = _analytic(comfy, "eps")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _train(comfy, model, pos, neg, latent, "interrupted")
    finally:
        mm.interrupt_current_processing(False)
    assert not list(olss_dir.iterdir())


def test_nodes_have_tooltips(comfy):
    for nid in ("FewStepOLSSTrain", "FewStepOLSSSampler"):
        spec = comfy.NODES[nid].INPUT_TYPES()
        for group in spec.values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), (nid, name)


@pytest.mark.parametrize("teacher", ["unipc_bh2", "edm_heun", "deis_3"])
def test_other_teachers(comfy, olss_dir, teacher):
    """Any deterministic FewStep solver can be the teacher (singlestep ones included: the trajectory is
    the state at each teacher sigma and the output there, from the per-step callback)."""
    model, pos, neg, latent = _analytic(comfy, "eps")
    prof, _ = _train(comfy, model, pos, neg, latent, f"t_{teacher}", teacher=teacher)
    assert prof.teacher.startswith(teacher) and torch.isfinite(prof.we).all()
    assert float(prof.step_error.max()) < 1e-2
    assert teacher in comfy.NODES["FewStepOLSSTrain"].INPUT_TYPES()["required"]["teacher"][0]
    assert "dpmpp_sde_2m" not in comfy.NODES["FewStepOLSSTrain"].INPUT_TYPES()["required"]["teacher"][0]


# ------------------------------------------------------------------------------------------------
# issue 23: held-out runs decide between OLSS, OLSS-P and the teacher's own solver
@pytest.mark.parametrize("family", ["eps", "flow"])
def test_held_out_selection_keeps_the_best_candidate_and_says_which(comfy, olss_dir, family, monkeypatch):
    import re
    from fewstep.samplers import olss
    model, pos, neg, latent = _analytic(comfy, family)
    prof, report = _train(comfy, model, pos, neg, latent, "picked", select_on_heldout=True, heldout_runs=2)
    method = prof.extra["method"]
    assert method in olss.METHODS and "held-out selection" in report and "kept " in report
    # the reported errors: the kept candidate is the lowest of all, fixed solver + schedules included
    errs = dict(re.findall(r"(olss_p|olss|solver:[^,;]+?) ([0-9.e+-]+)(?=[,;])", prof.extra["selection"]))
    assert any(k.startswith("solver:") for k in errs) and {"olss", "olss_p"} <= set(errs)
    kept = prof.extra["selection"].split("; kept ")[1].split(" (")[0]
    assert float(errs[kept]) == min(float(v) for v in errs.values())
    assert (method == "solver") == kept.startswith("solver:")
    back = olss.OLSSProfile.load(olss_dir / "picked.safetensors")
    assert back.extra["method"] == method and back.extra["selection"] == prof.extra["selection"]
    # plant: a selection that always loses must not be kept -- make every OLSS fit useless, a fixed solver wins
    real = olss.fit_profile

    def useless(*a, **kw):
        p = real(*a, **kw)
        return olss.replace(p, we=p.we * 0.0)
    monkeypatch.setattr(olss, "fit_profile", useless)
    monkeypatch.setattr(olss, "fit_profile_from", lambda p, planning, ridge=None: olss.replace(p, we=p.we * 0.0,
                                                                                              path_planning=planning))
    bad, _ = _train(comfy, model, pos, neg, latent, "lost", select_on_heldout=True, heldout_runs=2)
    assert bad.extra["method"] == "solver" and bad.extra["solver"].startswith("dpmpp_2m + ")
    # the profile then IS the teacher's solver on that schedule: it samples like it through SamplerCustom
    sampler, sigmas = comfy.NODES["FewStepOLSSSampler"]().build("(use the linked profile)", 1.0, profile=bad)
    fs = comfy.NODES["FewStepDPMSolverPP"]().get_sampler("2m", 1.0, 1.0, "brownian", True)[0]
    a = _sampler_custom(comfy, model, pos, neg, latent, sampler, sigmas, 9)
    b = _sampler_custom(comfy, model, pos, neg, latent, fs, sigmas, 9)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_train_tells_its_stages_and_shows_its_summary(comfy, olss_dir, node_texts):
    """Issue 20: OLSS Train says where it is (teacher run k of n, fit, closed-loop refine, held-out
    selection, with the share of the work done and an ETA) through ComfyUI's progress text, and puts its
    summary on the node as ui text (and as the last progress text) when done."""
    texts, run = node_texts
    model, pos, neg, latent = _analytic(comfy, "eps")
    node = comfy.NODES["FewStepOLSSTrain"]()
    with torch.inference_mode():
        out = run(lambda: node.train(model, pos, neg, latent, name="staged",
                                     **(TEACH | dict(samples=3, closed_loop=True, select_on_heldout=True,
                                                     heldout_runs=2))))
    summary = out["ui"]["text"][0]
    prof, report = out["result"]
    joined = "\n".join(texts)
    for k in (1, 2, 3):
        assert f"OLSS Train - teacher: run {k} of 3 (40 steps of dpmpp_2m)" in joined
    for want in ("OLSS Train - fit: least squares and path planning", "refine (closed loop): model call",
                 "held-out selection: run 1 of 2", "held-out selection: run 2 of 2", "% of the work", "ETA "):
        assert want in joined, (want, texts)
    order = [next(i for i, t in enumerate(texts) if w in t) for w in
             ("teacher: run 1", "teacher: run 3", "fit:", "refine (closed loop)", "held-out selection: run 1")]
    assert order == sorted(order), texts
    # the summary: on the node as ui text and the last progress text; it names what was kept
    assert texts[-1] == summary and summary.startswith(("OLSS profile staged", "OLSS-P profile staged"))
    assert "held-out: kept " in summary and "Saved as staged.safetensors" in summary
    kept = prof.extra["selection"].split("; kept ")[1].split(" (")[0]
    assert f"kept {kept} " in summary
    assert "saved to" in report and report != summary
