"""FewStep solvers: pure torch functions with the k-diffusion sampler contract
``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, *, family="eps", **options) -> x``
(no ComfyUI import). See ``registry.SOLVERS`` for the named defaults."""
from .ddim import sample_ddim
from .deis import sample_deis
from .dpm_solver import sample_dpm_solver
from .dpm_solver_pp import sample_dpmpp_2s, sample_dpmpp_multistep, sample_dpmpp_sde
from .edm import sample_edm
from .euler import sample_euler
from .noise import BrownianNoiseSampler, GaussianNoiseSampler, make_noise_sampler
from .pndm import sample_pndm
from .registry import SOLVERS, SolverSpec
from .tcd import sample_tcd
from .unipc import sample_unipc

__all__ = ["sample_euler", "sample_ddim", "sample_dpmpp_multistep", "sample_dpmpp_2s", "sample_dpmpp_sde",
           "sample_dpm_solver", "sample_unipc", "sample_deis", "sample_pndm",
           "sample_edm", "sample_tcd",
           "BrownianNoiseSampler", "GaussianNoiseSampler", "make_noise_sampler", "SOLVERS", "SolverSpec"]
