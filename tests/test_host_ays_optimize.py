"""FewStepAYSOptimize in real ComfyUI (in-process, CPU) on the analytic MODEL: the schedule, the saved
file read back by FewStepAYSScheduler's dropdown, determinism, progress, interrupts and bad input."""
import pytest
import torch

pytestmark = pytest.mark.host

LIGHT = dict(cfg=3.0, steps=10, iterations=2, samples=4, seed=3, align_to="none (the paper's bound only)")


@pytest.fixture
def ays_dir(comfy, tmp_path, monkeypatch):
    """The fewstep_ays models folder redirected to a temp dir (the real one is never written)."""
    import folder_paths
    d = tmp_path / "fewstep_ays"
    d.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "fewstep_ays", ([str(d)], {".safetensors"}))
    return d


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
    if family == "eps":  # discrete timesteps: every sigma is one of the model's own
        table = ms.sigmas.double()
        for v in sig[1:-1]:
            assert float(((table - float(v)).abs() / table).min()) < 1e-6
    assert (ays_dir / "mine.safetensors").is_file()
    from fewstep.core.io import load_checked
    tensors, meta = load_checked(ays_dir / "mine.safetensors", "AYS schedule")
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


def test_align_to_refines_for_the_chosen_solver_and_none_is_the_papers_method(comfy, ays_dir):
    from fewstep.core.io import load_checked
    from fewstep.nodes.ays_optimize import ALIGN_NONE
    model, pos, neg, latent = _analytic(comfy, "flow")
    kw = dict(samples=32, iterations=3)
    paper = _optimize(comfy, model, pos, neg, latent, name="paper", align_to=ALIGN_NONE, **kw)
    aligned = _optimize(comfy, model, pos, neg, latent, name="aligned", align_to="dpmpp_2m", **kw)
    assert not torch.equal(paper, aligned)
    _, meta_p = load_checked(ays_dir / "paper.safetensors", "AYS schedule")
    _, meta_a = load_checked(ays_dir / "aligned.safetensors", "AYS schedule")
    assert meta_p["align_to"] == ALIGN_NONE and meta_a["align_to"] == "dpmpp_2m"
    with pytest.raises(ValueError, match=r"align_to must be one of \['dpmpp_2m'"):
        _optimize(comfy, model, pos, neg, latent, align_to="heun")
    with pytest.raises(ValueError, match=r"samples is 31, but align_to dpmpp_2m needs at least 32"):
        _optimize(comfy, model, pos, neg, latent, align_to="dpmpp_2m", samples=31)
    # a call without align_to (an API workflow saved before it existed) gets the default, dpmpp_2m
    import inspect
    from fewstep.nodes.ays_optimize import FewStepAYSOptimize
    assert inspect.signature(FewStepAYSOptimize.optimize).parameters["align_to"].default == "dpmpp_2m"
