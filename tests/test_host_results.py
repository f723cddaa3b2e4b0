"""FewStep Latent View and FewStep Error vs Exact in a real ComfyUI, on the analytic model: the error
node rebuilds the sampler's start state from the seed exactly as ComfyUI does, so a near-exact sampler
scores ~0 and a coarse one scores its true error."""
import pytest
import torch

pytestmark = pytest.mark.host


def _sample(comfy, family, sampler, steps, seed=7, cfg=2.0):
    model, pos, neg, latent = comfy.NODES["FewStepAnalyticModel"]().build(family, 3.0, 8, 0, 6)
    out = comfy.nodes.KSampler().sample(model, seed, steps, cfg, sampler, "karras" if family == "eps" else "simple",
                                        pos, neg, latent)[0]
    return model, pos, neg, out


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_error_node_scores_samplers_against_the_exact_solution(comfy, family):
    node = comfy.NODES["FewStepExactError"]()
    model, pos, neg, fine = _sample(comfy, family, "dpmpp_2m", 200)
    res = node.measure(model, pos, neg, fine, 7, 2.0)
    report, rms = res["result"]
    # eps: 5.2e-4 measured; starting from noise*sigma instead of ComfyUI's noise*sqrt(1+sigma^2) gives 1.1e-3
    assert rms < {"eps": 8e-4, "flow": 1.5e-3}[family], report
    assert res["ui"]["text"] == [report] and "RMS error vs exact" in report
    _, _, _, coarse = _sample(comfy, family, "euler", 4)
    rms_coarse = node.measure(model, pos, neg, coarse, 7, 2.0)["result"][1]
    assert rms_coarse > 20 * max(rms, 1e-6)
    # another seed's noise is not this run's start: the number says so
    assert node.measure(model, pos, neg, fine, 8, 2.0)["result"][1] > 50 * max(rms, 1e-6)
    # given the sampler's sigmas (here the full KSampler schedule) it solves the same range
    import comfy.samplers as cs
    sig = cs.calculate_sigmas(model.get_model_object("model_sampling"), "karras" if family == "eps" else "simple", 200)
    assert node.measure(model, pos, neg, fine, 7, 2.0, sigmas=sig)["result"][1] == pytest.approx(rms, rel=0.2, abs=1e-4)


def test_error_node_refuses_other_models_and_conditioning(comfy):
    node = comfy.NODES["FewStepExactError"]()
    model, pos, neg, out = _sample(comfy, "eps", "euler", 3)
    other, pos3, neg3, _ = comfy.NODES["FewStepAnalyticModel"]().build("eps", 3.0, 3, 0, 6)
    with pytest.raises(ValueError, match="positive must be the positive output"):
        node.measure(model, pos3, neg, out, 7, 2.0)

    class NotAnalytic:
        model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="must come from FewStep Analytic Model"):
        node.measure(NotAnalytic(), pos, neg, out, 7, 2.0)


def test_latent_view_node_makes_a_comfy_image(comfy):
    node = comfy.NODES["FewStepLatentView"]()
    _, _, _, out = _sample(comfy, "eps", "euler", 4)
    (img,) = node.view(out, 8, 2.0)
    assert img.shape == (1, 48, 48, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert float(img.std()) > 0.01  # a sampled latent is not a flat picture
    with pytest.raises(ValueError, match="FewStep Latent View: samples"):
        node.view({"samples": torch.zeros(1, 16, 4, 4)}, 8, 2.0)
