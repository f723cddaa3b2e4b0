"""FewStep solvers: pure torch functions with the k-diffusion sampler contract
``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps", **options) -> x``
(no ComfyUI import). See ``registry.SOLVERS`` for the named defaults."""
from .ddim import sample_ddim
from .dpm_solver import sample_dpm_solver
from .dpm_solver_pp import sample_dpmpp_2s, sample_dpmpp_multistep, sample_dpmpp_sde
from .euler import sample_euler
from .noise import BrownianNoiseSampler, GaussianNoiseSampler, make_noise_sampler
from .registry import SOLVERS, SolverSpec
from .unipc import sample_unipc

__all__ = ["sample_euler", "sample_ddim", "sample_dpmpp_multistep", "sample_dpmpp_2s", "sample_dpmpp_sde",
           "sample_dpm_solver", "sample_unipc",
           "BrownianNoiseSampler", "GaussianNoiseSampler", "make_noise_sampler", "SOLVERS", "SolverSpec"]
