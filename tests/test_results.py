"""core/results.py without ComfyUI: the latent view's fixed channel map and the exact-error measure."""
import pytest
import torch

from fewstep.core import results
from fewstep.core.analytic import AnalyticModel, reference_solve


def test_latent_view_maps_channels_and_upsamples():
    x = torch.zeros(2, 4, 3, 5)
    x[0, 0, 1, 2] = 2.0     # red at full range
    x[1, 3, 0, 0] = -2.0    # channel 3 darkens all colours
    img = results.latent_to_image(x, scale=4, value_range=2.0)
    assert img.shape == (2, 12, 20, 3) and img.dtype == torch.float32
    assert torch.allclose(img[0, 4:8, 8:12], torch.tensor([1.0, 0.5, 0.5]).expand(4, 4, 3))
    assert torch.allclose(img[0, 0, 0], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.allclose(img[1, 0:4, 0:4], torch.tensor([0.25, 0.25, 0.25]).expand(4, 4, 3))
    assert float(img.min()) >= 0 and float(img.max()) <= 1
    # clipping, not wrapping
    assert torch.equal(results.latent_to_image(torch.full((1, 4, 1, 1), 50.0), 1)[0, 0, 0], torch.ones(3))


@pytest.mark.parametrize("bad, needle", [
    (torch.zeros(1, 3, 4, 4), "has 3"),
    (torch.zeros(4, 4, 4), "expected a [batch, 4, height, width]"),
])
def test_latent_view_refuses_other_shapes(bad, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        results.latent_to_image(bad)


def test_latent_view_refuses_bad_widgets():
    with pytest.raises(ValueError, match=r"scale must be in \[1, 64\]"):
        results.latent_to_image(torch.zeros(1, 4, 2, 2), scale=0)
    with pytest.raises(ValueError, match="value_range"):
        results.latent_to_image(torch.zeros(1, 4, 2, 2), value_range=0.0)
    with pytest.raises(ValueError, match="lower scale"):
        results.latent_to_image(torch.zeros(1, 4, 200, 200), scale=64)


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_exact_error_is_zero_for_the_exact_solution_and_shrinks_with_steps(family):
    m = AnalyticModel(family)
    den = results.cfg_denoiser(m.mixture, family, 2.0)
    x0 = m.noise((1, 4, 6, 6), seed=3) * m.sigma_max
    exact = reference_solve(m.denoiser(2.0), x0, m.sigma_max, 0.0, steps=2000)
    rms, rel, ours = results.exact_error(exact, x0, den, m.sigma_max)
    assert rms < 1e-5 and rel < 1e-5
    # plain Euler on a log-sigma grid: the error shrinks as the step count grows
    def euler(n):
        sig = torch.logspace(torch.log10(torch.tensor(m.sigma_max)), torch.log10(torch.tensor(m.sigma_min)), n)
        x = x0.clone()
        for a, b in zip(sig[:-1], sig[1:]):
            d = den(x, a.expand(1).double())
            x = d + (x - d) * (b / a)
        return den(x, sig[-1].expand(1).double())
    errs = [results.exact_error(euler(n), x0, den, m.sigma_max)[0] for n in (4, 16, 64)]
    assert errs[0] > errs[1] > errs[2] > 0, errs
    off = exact + 0.1
    assert results.exact_error(off, x0, den, m.sigma_max)[0] == pytest.approx(0.1, rel=1e-3)


def test_exact_error_checks_inputs():
    m = AnalyticModel("eps")
    den = results.cfg_denoiser(m.mixture, "eps", 1.0)
    with pytest.raises(ValueError, match="shape"):
        results.exact_error(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 3), den, 1.0)
    with pytest.raises(ValueError, match="last sigma"):
        results.exact_error(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), den, 1.0, 2.0)
