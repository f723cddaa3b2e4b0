"""Solver nodes (SAMPLER) and FewStep's deterministic defaults in KSampler's sampler list.

Each node returns ``comfy.samplers.KSAMPLER(wrapper, options)``. The wrapper is the only ComfyUI-aware
part: it reads the noise family (eps / flow) from the model ComfyUI hands the sampler, turns the
sampling seed (``extra_args["seed"]``, the seed of RandomNoise / KSampler) into one of ComfyUI's own
noise samplers for the stochastic solvers, and calls the pure solver function in ``samplers/``.
The same seed therefore gives the same noise as ComfyUI's built-in samplers:

* ``brownian``: ``BrownianTreeNoiseSampler`` over [smallest positive sigma, largest sigma], seeded and
  on the CPU, as ComfyUI's dpmpp_2m_sde / dpmpp_3m_sde build it;
* ``gaussian``: fresh Gaussian noise per step from a generator seeded with the seed, as ComfyUI's
  ancestral samplers (euler_ancestral, lcm, ...) draw it.
"""
from __future__ import annotations

import logging

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers

from .. import samplers as S
from ..samplers._common import check_sigmas
from ..samplers.noise import NOISE_TYPES
from ..samplers.registry import KSAMPLER_ENTRIES
from ..comfy_adapter import family_of_k_model, register_sampler
from .common import Bool, Choice, Float, Int, checked_widgets, outputs

log = logging.getLogger("FewStep")

CATEGORY = "sampling/fewstep/samplers"


# ------------------------------------------------------------------------------------------------
# ComfyUI noise samplers from the sampling seed
def _seed_of(extra_args):
    seed = (extra_args or {}).get("seed")
    return None if seed is None else int(seed)


def comfy_noise_sampler(kind: str, x, sigmas, seed):
    """One of ComfyUI's own noise samplers, built the way its built-in samplers build them."""
    if kind == "brownian":
        pos = sigmas[sigmas > 0]
        if pos.numel() == 0:
            return None
        return k_sampling.BrownianTreeNoiseSampler(x, pos.min(), sigmas.max(), seed=seed, cpu=True)
    if kind == "gaussian":
        return k_sampling.default_noise_sampler(x, seed=seed)
    raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {kind!r}")


def make_sampler_function(fn, node: str, noise: str | None = None, **fixed):
    """A k-diffusion sampler function for KSAMPLER / KSampler's list, calling the pure solver ``fn``
    (samplers/) with the model's family and ``fixed`` + per-call options.

    ``noise``: None for deterministic solvers; otherwise the default noise kind ("brownian" /
    "gaussian"), overridable per call with the ``noise_type`` option. Stochastic solvers get
    ``seed`` and ``noise_sampler`` (ComfyUI's, see the module doc) unless the caller passes its own.
    """

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra_args = {} if extra_args is None else extra_args
        opts = dict(fixed)
        opts.update(options)
        family = opts.pop("family", None) or family_of_k_model(model)
        kind = opts.pop("noise_type", noise)
        if noise is not None:
            check_sigmas(sigmas)  # the solver's own clear error, before a noise sampler sees bad sigmas
            seed = _seed_of(extra_args)
            opts.setdefault("seed", seed)
            if opts.get("noise_sampler") is None and len(sigmas) > 1:
                opts["noise_sampler"] = comfy_noise_sampler(kind, x, sigmas, seed)
        return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                  family=family, **opts)

    sample.__name__ = f"fewstep_{fn.__name__}"
    sample.__qualname__ = sample.__name__
    sample.__doc__ = f"FewStep {node} ({fn.__module__}.{fn.__name__}) for ComfyUI."
    return sample


def _ksampler(fn, node, noise=None, **options):
    fn = make_sampler_function(fn, node, noise=noise)
    return (comfy.samplers.KSAMPLER(fn, options),)


_S_NOISE = Float(1.0, 0.0, 10.0, "Scale of the fresh noise added at each stochastic step (1 = the exact SDE). "
                                 "Slightly above 1 can offset the detail lost by few steps.")


# ------------------------------------------------------------------------------------------------
class _SolverNode:
    """What every solver node shares: its WIDGETS, declared once (the editor's inputs and the checks of
    every value come from them), and one SAMPLER out, built by ``sampler`` from the checked values."""
    CATEGORY = CATEGORY
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("SAMPLER", "sampler", "This solver as a SAMPLER: connect to SamplerCustom or SamplerCustomAdvanced."))
    FUNCTION = "get_sampler"
    WIDGETS: dict = {}
    SOLVER = None   # the pure solver (samplers/); ``sampler`` passes it the checked widget values
    NOISE = None    # None: deterministic; else the noise kind ("gaussian" / "brownian") it draws

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {name: w.input() for name, w in cls.WIDGETS.items()}}

    def get_sampler(self, *args, **kwargs):
        node = type(self).__name__
        return self.sampler(node, **checked_widgets(self.WIDGETS, args, kwargs, node))

    def sampler(self, n, **values):
        return _ksampler(self.SOLVER, n, noise=self.NOISE, **values)


class FewStepDDIM(_SolverNode):
    DESCRIPTION = ("DDIM (Song et al. 2021): the first-order exponential integrator in x0. eta 0 is the "
                   "deterministic ODE step, eta 1 the ancestral, DDPM-like step. The noise comes from the "
                   "sampling seed (RandomNoise / KSampler). Exact for eps and flow models.")
    SOLVER = staticmethod(S.sample_ddim)
    NOISE = "gaussian"
    WIDGETS = {
        "eta": Float(0.0, 0.0, 1.0, "Stochasticity: 0 = deterministic DDIM (an ODE solver), 1 = ancestral sampling "
                                    "(DDPM-like). In between mixes the two."),
        "s_noise": _S_NOISE,
    }


class FewStepDPMSolver(_SolverNode):
    DESCRIPTION = ("DPM-Solver (Lu et al. 2022), noise prediction, singlestep: each step of order k uses k "
                   "model calls (order 1 = DDIM). Best with a logSNR-uniform schedule.")
    SOLVER = staticmethod(S.sample_dpm_solver)
    WIDGETS = {"order": Int(2, 1, 3, "Solver order 1-3. A step of order k costs k model calls, so with the same "
                                     "number of model calls, order 3 takes a third of the steps.")}


DPMPP_MODES = ("2m", "3m", "2s", "sde_2m", "sde_3m")


class FewStepDPMSolverPP(_SolverNode):
    DESCRIPTION = ("DPM-Solver++ (Lu et al. 2022), data prediction: multistep 2M / 3M (one model call per "
                   "step), singlestep 2S (two calls per step), and the SDE variants 2M / 3M with eta and "
                   "seeded noise. The final step to sigma 0 is first order, as in the paper.")
    WIDGETS = {
        "mode": Choice(DPMPP_MODES, "2m", "2m / 3m: deterministic multistep of order 2 / 3. 2s: deterministic "
                                          "singlestep order 2 (2 model calls per step). sde_2m / sde_3m: the "
                                          "stochastic multistep solvers (use eta, s_noise and noise_type)."),
        "eta": Float(1.0, 0.0, 1.0, "SDE modes only: amount of noise; 0 turns the SDE solver into the ODE solver, "
                                    "1 is the exact SDE. Ignored by 2m / 3m / 2s."),
        "s_noise": _S_NOISE,
        "noise_type": Choice(NOISE_TYPES, "brownian",
                             "SDE modes only: brownian = a Brownian tree seeded with the sampling seed (the same "
                             "noise as ComfyUI's dpmpp_2m_sde for the same seed; consistent across step counts); "
                             "gaussian = independent Gaussian noise per step."),
        "lower_order_final": Bool(True, "Use lower orders for the last steps (more stable with few steps). Multistep "
                                        "modes (2m, 3m, sde_2m, sde_3m) only."),
    }

    def sampler(self, n, mode, eta, s_noise, noise_type, lower_order_final):
        if mode in ("2m", "3m"):
            return _ksampler(S.sample_dpmpp_multistep, n, order=int(mode[0]), lower_order_final=lower_order_final)
        if mode == "2s":
            return _ksampler(S.sample_dpmpp_2s, n)
        return _sde_sampler(n, int(mode[4]), eta, s_noise, noise_type, lower_order_final)


def _sde_sampler(node, order, eta, s_noise, noise_type, lof):
    fn = make_sampler_function(S.sample_dpmpp_sde, node, noise=noise_type)
    opts = {"order": order, "eta": eta, "s_noise": s_noise, "noise": noise_type, "noise_type": noise_type,
            "lower_order_final": lof}
    return (comfy.samplers.KSAMPLER(fn, opts),)


UNIPC_VARIANTS = ("bh1", "bh2")


class FewStepUniPC(_SolverNode):
    DESCRIPTION = ("UniPC (Zhao et al. 2023): a multistep predictor (UniP) with a corrector (UniC) that reuses "
                   "the next model call, so the corrector raises the order at no extra cost.")
    WIDGETS = {
        "variant": Choice(UNIPC_VARIANTS, "bh2",
                          "The UniPC coefficient B(h): bh1 = h (the paper's choice for unconditional sampling with "
                          "very few steps), bh2 = e^h - 1 (the paper's choice for guided sampling)."),
        "order": Int(3, 1, 3, "Order of the predictor, 1-3 (the corrector adds one)."),
        "corrector": Bool(True, "Apply the UniC corrector after each step (not after the last one). No extra model "
                                "calls."),
        "lower_order_final": Bool(True, "Use lower orders for the last steps (more stable with few steps)."),
    }

    def sampler(self, n, variant, order, corrector, lower_order_final):
        return _ksampler(S.sample_unipc, n, variant=variant, order=order, use_corrector=corrector,
                         lower_order_final=lower_order_final)


class FewStepDEIS(_SolverNode):
    DESCRIPTION = ("DEIS (Zhang & Chen 2023), time-Adams-Bashforth (tAB) orders 1-4: a multistep exponential "
                   "integrator whose coefficients are computed for the actual sigma grid and model family.")
    SOLVER = staticmethod(S.sample_deis)
    WIDGETS = {"order": Int(3, 1, 4, "tAB order 1-4 (number of past model outputs used; the first steps use the "
                                     "ones available). One model call per step.")}


PNDM_WARMUPS = ("lower", "rk")


class FewStepPNDM(_SolverNode):
    DESCRIPTION = ("PNDM / PLMS (Liu et al. 2022): the 4th-order linear multistep update "
                   "(55e_i - 59e_{i-1} + 37e_{i-2} - 9e_{i-3})/24 on the pseudo-numerical DDIM step.")
    SOLVER = staticmethod(S.sample_pndm)
    WIDGETS = {"warmup": Choice(PNDM_WARMUPS, "lower",
                                "How the first 3 steps are taken before 4 past outputs exist. lower: lower-order "
                                "linear multistep (one model call per step, the PLMS of Stable Diffusion). rk: the "
                                "paper's pseudo Runge-Kutta steps (4 model calls each).")}


EDM_METHODS = ("heun", "euler")


class FewStepEDM(_SolverNode):
    DESCRIPTION = ("EDM sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method with optional "
                   "churn (S_churn, S_tmin, S_tmax, S_noise), or plain Euler. The last step to sigma 0 is Euler.")
    WIDGETS = {
        "method": Choice(EDM_METHODS, "heun", "heun: 2nd order, 2 model calls per step (1 on the last). euler: 1st "
                                              "order, 1 call per step."),
        "s_churn": Float(0.0, 0.0, 100.0, "Total churn: each step in [s_tmin, s_tmax] first raises sigma by "
                                          "gamma = min(s_churn/steps, sqrt(2)-1) with fresh noise. 0 = deterministic."),
        "s_tmin": Float(0.0, 0.0, 1000.0, "Churn only at sigmas >= s_tmin."),
        "s_tmax": Float(1000.0, 0.0, 1000.0, "Churn only at sigmas <= s_tmax."),
        "s_noise": Float(1.0, 0.0, 10.0, "Scale of the churn noise (EDM uses 1.003-1.007 for some models; 1 = exact).",
                         step=0.001),
    }

    def sampler(self, n, method, s_churn, s_tmin, s_tmax, s_noise):
        if s_tmin > s_tmax:
            raise ValueError(f"{n}: s_tmin ({s_tmin}) must not exceed s_tmax ({s_tmax})")
        return _ksampler(S.sample_edm, n, noise="gaussian", method=method, s_churn=s_churn,
                         s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


class FewStepTCD(_SolverNode):
    DESCRIPTION = ("TCD (Zheng et al. 2024), strategic stochastic sampling: jump deterministically to "
                   "(1 - gamma) of the next sigma, then re-noise to it. gamma 0 is deterministic (DDIM), "
                   "gamma 1 is LCM-style multistep sampling. For TCD / LCM / consistency models.")
    SOLVER = staticmethod(S.sample_tcd)
    NOISE = "gaussian"
    WIDGETS = {"gamma": Float(0.3, 0.0, 1.0, "Stochasticity in [0, 1]: 0 = deterministic, 1 = full re-noising each "
                                             "step (LCM). The TCD paper uses 0.3; raise it if images look "
                                             "over-detailed.")}


# ------------------------------------------------------------------------------------------------
# KSampler's sampler list: samplers/registry.py KSAMPLER_ENTRIES
def ksampler_function(name: str):
    """The function FewStep registers (or would register) as KSampler sampler ``name``."""
    spec = KSAMPLER_ENTRIES[name]
    return make_sampler_function(spec.fn, name, **spec.kwargs)


def register_with_comfyui():
    for name in KSAMPLER_ENTRIES:
        register_sampler(name, ksampler_function(name))


NODE_CLASS_MAPPINGS = {
    "FewStepDDIM": FewStepDDIM,
    "FewStepDPMSolver": FewStepDPMSolver,
    "FewStepDPMSolverPP": FewStepDPMSolverPP,
    "FewStepUniPC": FewStepUniPC,
    "FewStepDEIS": FewStepDEIS,
    "FewStepPNDM": FewStepPNDM,
    "FewStepEDM": FewStepEDM,
    "FewStepTCD": FewStepTCD,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewStepDDIM": "FewStep DDIM",
    "FewStepDPMSolver": "FewStep DPM-Solver",
    "FewStepDPMSolverPP": "FewStep DPM-Solver++",
    "FewStepUniPC": "FewStep UniPC",
    "FewStepDEIS": "FewStep DEIS",
    "FewStepPNDM": "FewStep PNDM / PLMS",
    "FewStepEDM": "FewStep EDM",
    "FewStepTCD": "FewStep TCD",
}
