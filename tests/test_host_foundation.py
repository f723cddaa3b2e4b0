"""Foundation in real ComfyUI: the pack loads, its nodes and KSampler scheduler names are there, the
AYS node equals ComfyUI's built-in one, bad input gets clear errors, and a plain KSampler graph on the
analytic model runs headless."""
import pytest
import torch

pytestmark = pytest.mark.host

FEWSTEP_SCHEDULERS = ["fewstep_ays", "fewstep_ays_sdxl", "fewstep_logsnr", "fewstep_time_uniform",
                      "fewstep_time_quadratic", "fewstep_beta"]


def test_scheduler_names_registered_in_place(comfy):
    import comfy.samplers as cs
    for name in FEWSTEP_SCHEDULERS:
        assert name in cs.KSampler.SCHEDULERS
        assert name in cs.SCHEDULER_HANDLERS
    # the same list objects, appended to in place, built-ins untouched and first
    assert cs.KSampler.SCHEDULERS is cs.SCHEDULER_NAMES
    assert cs.SCHEDULER_NAMES[:3] == ["simple", "sgm_uniform", "karras"]
    before = list(cs.SCHEDULER_NAMES)
    comfy.fewstep.nodes.register_with_comfyui()  # idempotent
    assert cs.SCHEDULER_NAMES == before


@pytest.mark.parametrize("model_type", ["SD1", "SDXL", "SVD"])
def test_ays_node_equals_comfyui_builtin(comfy, model_type):
    from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler
    node = comfy.NODES["FewStepAYSScheduler"]()
    for steps in range(2, 51):
        ours = node.get_sigmas(model_type, steps, 1.0)[0]
        theirs = AlignYourStepsScheduler.execute(model_type, steps, 1.0).result[0]
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=0), (model_type, steps)


def test_ays_auto_and_remap(comfy):
    node = comfy.NODES["FewStepAYSScheduler"]()
    eps, _, _, _ = comfy.NODES["FewStepAnalyticModel"]().build("eps", 3.0, 8, 0, 8)
    flow, _, _, _ = comfy.NODES["FewStepAnalyticModel"]().build("flow", 3.0, 8, 0, 8)
    assert torch.equal(node.get_sigmas("auto", 10, 1.0, model=eps)[0], node.get_sigmas("SD1", 10, 1.0)[0])
    s = node.get_sigmas("SD1", 10, 1.0, model=flow)[0]
    assert s[0] == 1.0 and s[-1] == 0 and (s[1:] < s[:-1]).all()
    with pytest.raises(ValueError, match="auto.*needs a model"):
        node.get_sigmas("auto", 10, 1.0)


def test_scheduler_node_and_ksampler_entry_agree(comfy):
    import comfy.samplers as cs
    model, _, _, _ = comfy.NODES["FewStepAnalyticModel"]().build("flow", 3.0, 8, 0, 8)
    node = comfy.NODES["FewStepScheduler"]()
    ms = model.get_model_object("model_sampling")
    for sched, kname in [("logsnr_uniform", "fewstep_logsnr"), ("time_quadratic", "fewstep_time_quadratic"),
                         ("time_uniform", "fewstep_time_uniform"), ("beta", "fewstep_beta")]:
        a = node.get_sigmas(model, sched, 9, 1.0, 7.0)[0]
        b = cs.calculate_sigmas(ms, kname, 9)
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_beta_schedule_is_comfyuis_beta_before_rounding(comfy, family):
    """FewStep's beta schedule takes the Beta(0.6, 0.6) quantiles in continuous model time; ComfyUI's
    `beta` scheduler rounds them to the model's integer timesteps. Each of our times is within half a
    timestep of ComfyUI's."""
    import comfy.samplers as cs
    from fewstep.comfy_adapter import model_sigmas_of_sampling
    model, _, _, _ = comfy.NODES["FewStepAnalyticModel"]().build(family, 3.0, 8, 0, 8)
    node = comfy.NODES["FewStepScheduler"]()
    ms_c = model.get_model_object("model_sampling")
    ms = model_sigmas_of_sampling(ms_c)
    last = ms.table.numel() - 1
    for steps in (4, 10, 25):
        ours = node.get_sigmas(model, "beta", steps, 1.0, 7.0)[0].double()
        theirs = cs.calculate_sigmas(ms_c, "beta", steps).double()
        assert ours.shape == theirs.shape and ours[-1] == 0 and theirs[-1] == 0
        gap = (ms.time_of(ours[:-1]) - ms.time_of(theirs[:-1])).abs() * last
        assert float(gap.max()) <= 0.5 + 1e-3, (family, steps, gap)
        assert float(gap.max()) > 0  # not rounded: a real difference from the built-in


@pytest.mark.parametrize("args, match", [
    (dict(steps=0), "steps must be in"),
    (dict(denoise=0.0), "denoise must be in"),
    (dict(rho=-1.0), "rho must be in"),
    (dict(schedule="nope"), "schedule must be one of"),
])
def test_scheduler_node_bad_input(comfy, args, match):
    model, _, _, _ = comfy.NODES["FewStepAnalyticModel"]().build("eps", 3.0, 8, 0, 8)
    kw = dict(schedule="karras", steps=10, denoise=1.0, rho=7.0) | args
    with pytest.raises(ValueError, match=match):
        comfy.NODES["FewStepScheduler"]().get_sigmas(model, **kw)


def test_analytic_model_through_ksampler_matches_the_core_model(comfy):
    """The MODEL node computes the same exact denoiser as the core AnalyticModel (CFG through
    ComfyUI's own CFG code): one KSampler euler step to sigma 0 returns the CFG'd denoised."""
    from fewstep.core.analytic import AnalyticModel
    import comfy.samplers as cs
    model, pos, neg, latent = comfy.NODES["FewStepAnalyticModel"]().build("eps", 3.0, 6, 4, 4)
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([2.0, 0.0])
    guider = cs.CFGGuider(model)
    guider.set_conds(pos, neg)
    guider.set_cfg(4.0)
    out = guider.sample(noise, torch.zeros_like(noise), cs.sampler_object("euler"), sigmas, seed=0)
    core = AnalyticModel("eps", components=6, seed=4)
    x = noise.double() * 2.0
    want = core.denoiser(4.0)(x, torch.full((2,), 2.0, dtype=torch.float64))
    assert torch.allclose(out.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.server
def test_pack_loads_in_real_server(comfy_server):
    info = comfy_server.get("/object_info")
    for node in ("FewStepAnalyticModel", "FewStepAYSScheduler", "FewStepScheduler"):
        assert node in info, f"{node} missing from /object_info"
    schedulers = info["KSampler"]["input"]["required"]["scheduler"][0]
    for name in FEWSTEP_SCHEDULERS:
        assert name in schedulers
    log = comfy_server.log()
    ours = [ln for ln in log.splitlines() if "fewstep" in ln.lower() and "IMPORT FAILED" in ln]
    assert not ours, log[-3000:]
    # ComfyUI lists the pack among the custom nodes it imported
    assert any("comfyui-fewstep" in ln and "seconds" in ln for ln in log.splitlines()), log[-3000:]
    # every FewStep widget has a tooltip
    for node, spec in info.items():
        if not node.startswith("FewStep"):
            continue
        for section in ("required", "optional"):
            for name, inp in spec["input"].get(section, {}).items():
                opts = inp[1] if len(inp) > 1 else {}
                if inp[0] in ("MODEL", "CONDITIONING", "LATENT", "SIGMAS", "SAMPLER", "OLSS_PROFILE", "NOISE",
                              "GUIDER", "IMAGE", "CLIP", "VAE"):
                    continue
                assert opts.get("tooltip"), f"{node}.{name} has no tooltip"


@pytest.mark.server
def test_ksampler_with_fewstep_scheduler_runs_headless(comfy_server):
    import json
    from pathlib import Path
    prompt = json.loads((Path(__file__).parents[1] / "example_workflows/api/basic_ksampler.json").read_text())
    entry = comfy_server.run(prompt)
    outputs = entry["outputs"]
    assert outputs, "no outputs"
    files = [f for o in outputs.values() for f in o.get("latents", [])]
    assert files and all(f["filename"].endswith(".latent") for f in files)
