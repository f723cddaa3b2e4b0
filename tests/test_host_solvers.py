"""FewStep's solver nodes inside a real ComfyUI, on the analytic model.

* Where ComfyUI has the same algorithm, FewStep's node gives ComfyUI's output for the same model,
  noise, seed and sigmas to 1e-4 relative: euler (FewStepEDM euler, FewStepDDIM eta 0), heun
  (FewStepEDM heun), dpmpp_2m (eps), dpmpp_2m_sde (same Brownian tree from the same seed),
  dpmpp_3m_sde (up to its third-order term), uni_pc and uni_pc_bh2 (eps), euler_ancestral
  (FewStepDDIM eta 1, same per-step noise, eps), lcm (FewStepTCD gamma 1, flow).
* Where FewStep deliberately differs, a test shows the difference is real and explained (see the
  ``test_deliberate_difference_*`` docstrings).
* Every node configuration: the callback fires once per step with i, denoised and x; sigmas are never
  mutated; deterministic ones are at least as close to the exact ODE endpoint as Euler, in both
  families; a batch of 4 equals 4 single runs (deterministic solvers); the same seed gives the same
  output. Every registered name runs through KSampler and every node through SamplerCustomAdvanced.
"""
import math

import pytest
import torch

pytestmark = pytest.mark.host

SHAPE = (1, 4, 8, 8)
COMPONENTS = 8
MIX_SEED = 0

# (node id, widget values, deterministic)
NODE_CASES = [
    ("FewStepDDIM", dict(eta=0.0, s_noise=1.0), True),
    ("FewStepDDIM", dict(eta=1.0, s_noise=1.0), False),
    ("FewStepDPMSolver", dict(order=1), True),
    ("FewStepDPMSolver", dict(order=2), True),
    ("FewStepDPMSolver", dict(order=3), True),
    ("FewStepDPMSolverPP", dict(mode="2m", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True), True),
    ("FewStepDPMSolverPP", dict(mode="3m", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=False), True),
    ("FewStepDPMSolverPP", dict(mode="2s", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True), True),
    ("FewStepDPMSolverPP", dict(mode="sde_2m", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True), False),
    ("FewStepDPMSolverPP", dict(mode="sde_3m", eta=0.7, s_noise=1.0, noise_type="gaussian", lower_order_final=True), False),
    ("FewStepUniPC", dict(variant="bh1", order=3, corrector=True, lower_order_final=True), True),
    ("FewStepUniPC", dict(variant="bh2", order=2, corrector=False, lower_order_final=True), True),
    ("FewStepDEIS", dict(order=1), True),
    ("FewStepDEIS", dict(order=3), True),
    ("FewStepPNDM", dict(warmup="lower"), True),
    ("FewStepPNDM", dict(warmup="rk"), True),
    ("FewStepEDM", dict(method="heun", s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0), True),
    ("FewStepEDM", dict(method="euler", s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0), True),
    ("FewStepEDM", dict(method="heun", s_churn=2.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0), False),
    ("FewStepTCD", dict(gamma=0.0), True),
    ("FewStepTCD", dict(gamma=0.3), False),
]
CASE_IDS = [f"{n}-" + "-".join(str(v) for v in kw.values()) for n, kw, _ in NODE_CASES]

KSAMPLER_NAMES = ["fewstep_dpmpp_2m", "fewstep_dpmpp_3m", "fewstep_dpmpp_2s", "fewstep_unipc_bh1",
                  "fewstep_unipc_bh2", "fewstep_deis_3", "fewstep_pndm", "fewstep_ddim", "fewstep_edm_heun",
                  "fewstep_deis_4"]


# ------------------------------------------------------------------------------------------------
def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


_MODELS = {}


def setup(comfy, family):
    """(patcher, positive, negative) of the analytic model, made once per family."""
    if family not in _MODELS:
        from fewstep.nodes.analytic import make_analytic_patcher
        _MODELS[family] = make_analytic_patcher(family, 3.0, COMPONENTS, MIX_SEED)
    return _MODELS[family]


def guider(comfy, family, cfg=1.0):
    import comfy.samplers as cs
    patcher, pos, neg = setup(comfy, family)
    g = cs.CFGGuider(patcher)
    g.set_conds(pos, neg)
    g.set_cfg(cfg)
    return g


def spy(sampler, record):
    """The same KSAMPLER with its function wrapped: records the initial x and every callback dict."""
    import comfy.samplers as cs
    fn = sampler.sampler_function

    def wrapped(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
        record["x_init"] = x.clone()
        record.setdefault("steps", [])

        def cb(d):
            record["steps"].append(d)
            if callback is not None:
                callback(d)
        return fn(model, x, sigmas, extra_args=extra_args, callback=cb, disable=disable, **kw)

    return cs.KSAMPLER(wrapped, dict(sampler.extra_options), dict(sampler.inpaint_options))


def run(comfy, family, sampler, sigmas, noise, cfg=1.0, seed=0, callback=None):
    g = guider(comfy, family, cfg)
    with torch.inference_mode():
        return g.sample(noise.clone(), torch.zeros_like(noise), sampler, sigmas, callback=callback,
                        disable_pbar=True, seed=seed)


def node_sampler(comfy, node, **kw):
    return comfy.NODES[node]().get_sampler(**kw)[0]


def comfy_sampler(comfy, name, **extra):
    import comfy.samplers as cs
    if extra:
        return cs.ksampler(name, extra)
    return cs.sampler_object(name)


def sigmas_for(comfy, family, scheduler, steps):
    import comfy.samplers as cs
    patcher, _, _ = setup(comfy, family)
    return cs.calculate_sigmas(patcher.get_model_object("model_sampling"), scheduler, steps).cpu()


def noise_of(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


_EXACT = {}


def exact_endpoint(family, x_init, sigma0, cfg=1.0):
    """The exact ODE endpoint from x_init at sigma0 (float64 RK4; cached: tests share initial states)."""
    from fewstep.core.analytic import AnalyticModel, reference_solve
    key = (family, float(cfg), float(sigma0), x_init.detach().cpu().numpy().tobytes())
    if key not in _EXACT:
        m = AnalyticModel(family, 3.0, COMPONENTS, MIX_SEED)
        _EXACT[key] = reference_solve(m.denoiser(cfg), x_init.double(), float(sigma0), steps=400)
    return _EXACT[key]


# ------------------------------------------------------------------------------------------------
# nodes: ids, widgets, bad input
def test_nodes_registered_with_tooltips(comfy):
    from fewstep.nodes import solvers
    for node in ("FewStepDDIM", "FewStepDPMSolver", "FewStepDPMSolverPP", "FewStepUniPC", "FewStepDEIS",
                 "FewStepPNDM", "FewStepEDM", "FewStepTCD"):
        cls = comfy.NODES[node]
        assert cls is solvers.NODE_CLASS_MAPPINGS[node]
        assert cls.CATEGORY == "sampling/fewstep/samplers"
        assert cls.RETURN_TYPES == ("SAMPLER",)
        assert cls.DESCRIPTION
        for name, spec in cls.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_widget_order_is_stable(comfy):
    """UI workflows store widget values by position: this order may only be appended to."""
    want = {
        "FewStepDDIM": ["eta", "s_noise"],
        "FewStepDPMSolver": ["order"],
        "FewStepDPMSolverPP": ["mode", "eta", "s_noise", "noise_type", "lower_order_final"],
        "FewStepUniPC": ["variant", "order", "corrector", "lower_order_final"],
        "FewStepDEIS": ["order"],
        "FewStepPNDM": ["warmup"],
        "FewStepEDM": ["method", "s_churn", "s_tmin", "s_tmax", "s_noise"],
        "FewStepTCD": ["gamma"],
    }
    for node, names in want.items():
        assert list(comfy.NODES[node].INPUT_TYPES()["required"])[:len(names)] == names


@pytest.mark.parametrize("node, kw, match", [
    ("FewStepDDIM", dict(eta=1.5, s_noise=1.0), r"FewStepDDIM: eta must be a number in \[0.0, 1.0\]"),
    ("FewStepDDIM", dict(eta=0.5, s_noise=-1.0), r"s_noise must be a number in \[0.0, 10.0\]"),
    ("FewStepDPMSolver", dict(order=4), r"FewStepDPMSolver: order must be a whole number in \[1, 3\]"),
    ("FewStepDPMSolver", dict(order=0), r"order must be a whole number in \[1, 3\]"),
    ("FewStepDPMSolverPP", dict(mode="4m", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True),
     r"mode must be one of \['2m', '3m', '2s', 'sde_2m', 'sde_3m'\]"),
    ("FewStepDPMSolverPP", dict(mode="sde_2m", eta=1.0, s_noise=1.0, noise_type="pink", lower_order_final=True),
     r"noise_type must be one of \['brownian', 'gaussian'\]"),
    ("FewStepDPMSolverPP", dict(mode="sde_2m", eta=-0.1, s_noise=1.0, noise_type="brownian", lower_order_final=True),
     r"eta must be a number in \[0.0, 1.0\]"),
    ("FewStepUniPC", dict(variant="bh3", order=3, corrector=True, lower_order_final=True), r"variant must be one of"),
    ("FewStepUniPC", dict(variant="bh2", order=5, corrector=True, lower_order_final=True), r"order must be a whole number in \[1, 3\]"),
    ("FewStepDEIS", dict(order=5), r"FewStepDEIS: order must be a whole number in \[1, 4\]"),
    ("FewStepPNDM", dict(warmup="none"), r"warmup must be one of \['lower', 'rk'\]"),
    ("FewStepEDM", dict(method="rk4", s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0), r"method must be one of"),
    ("FewStepEDM", dict(method="heun", s_churn=0.0, s_tmin=5.0, s_tmax=1.0, s_noise=1.0), r"s_tmin .* must not exceed s_tmax"),
    ("FewStepEDM", dict(method="heun", s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=11.0), r"s_noise must be a number in \[0.0, 10.0\]"),
    ("FewStepEDM", dict(method="heun", s_churn=-1.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0), r"s_churn must be a number in \[0.0, 100.0\]"),
    ("FewStepTCD", dict(gamma=1.2), r"FewStepTCD: gamma must be a number in \[0.0, 1.0\]"),
    ("FewStepTCD", dict(gamma=-0.1), r"gamma must be a number in \[0.0, 1.0\]"),
])
def test_bad_widget_values_are_named(comfy, node, kw, match):
    with pytest.raises(ValueError, match=match):
        comfy.NODES[node]().get_sampler(**kw)


@pytest.mark.parametrize("args,kw,match", [
    ((), dict(order=2, eta=0.5), r"FewStepDPMSolver has no widget 'eta'; its widgets are \['order'\]"),
    ((), {}, r"FewStepDPMSolver: missing widget values \['order'\]"),
    ((2,), dict(order=2), r"FewStepDPMSolver: widget 'order' given twice"),
    ((2, 3), {}, r"FewStepDPMSolver takes 1 widget values, got 2"),
])
def test_widget_values_are_matched_to_the_declared_widgets(comfy, args, kw, match):
    """Positional values follow the widget order; an unknown, missing or doubled value is a clear error."""
    with pytest.raises(TypeError, match=match):
        comfy.NODES["FewStepDPMSolver"]().get_sampler(*args, **kw)
    sampler = comfy.NODES["FewStepDPMSolverPP"]().get_sampler("sde_3m", 0.5, 0.8, "gaussian", False)[0]
    assert sampler.extra_options == {"order": 3, "eta": 0.5, "s_noise": 0.8, "noise": "gaussian",
                                     "noise_type": "gaussian", "lower_order_final": False}


def test_bad_sigmas_raise_through_comfyui(comfy):
    """Increasing or NaN sigmas get the solver's clear error, also from inside ComfyUI."""
    noise = noise_of(0)
    for mode in ("2m", "sde_2m"):
        s = node_sampler(comfy, "FewStepDPMSolverPP", mode=mode, eta=1.0, s_noise=1.0, noise_type="brownian",
                         lower_order_final=True)
        for bad in (torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, float("nan"), 0.0])):
            with pytest.raises(ValueError, match="sigmas"):
                run(comfy, "eps", s, bad, noise)


@pytest.mark.parametrize("node, kw", [
    ("FewStepDPMSolverPP", dict(mode="3m", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=False)),
    ("FewStepDEIS", dict(order=3)),
])
def test_schedule_too_short_for_the_order_is_logged(comfy, node, kw, caplog):
    """Two steps cannot carry a third-order multistep solver: it runs at a lower order and says so."""
    import logging
    sigmas = torch.tensor([3.0, 1.0, 0.3])
    with caplog.at_level(logging.WARNING, logger="FewStep"):
        out = run(comfy, "eps", node_sampler(comfy, node, **kw), sigmas, noise_of(0))
    assert torch.isfinite(out).all()
    assert any("too short for order 3" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


# ------------------------------------------------------------------------------------------------
# KSampler's list
def test_ksampler_names_registered_in_place(comfy):
    import comfy.k_diffusion.sampling as ks
    import comfy.samplers as cs
    from fewstep.nodes import solvers
    assert cs.KSampler.SAMPLERS is cs.SAMPLER_NAMES
    for name in KSAMPLER_NAMES:
        assert name in cs.SAMPLER_NAMES, f"{name} not registered"
        assert hasattr(ks, f"sample_{name}")
    assert cs.SAMPLER_NAMES[0] == "euler"  # built-ins untouched, first
    before = list(cs.SAMPLER_NAMES)
    solvers.register_with_comfyui()  # idempotent
    assert cs.SAMPLER_NAMES == before


@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("name", KSAMPLER_NAMES)
def test_registered_name_runs_through_ksampler_node(comfy, name, family):
    """ComfyUI's own KSampler node with the registered name: close to the exact ODE endpoint."""
    from comfy.sample import prepare_noise
    patcher, pos, neg = setup(comfy, family)
    steps = 12
    latent = {"samples": torch.zeros(SHAPE)}
    with torch.inference_mode():
        out = comfy.nodes.KSampler().sample(patcher, 7, steps, 1.0, name, "karras" if family == "eps" else "simple",
                                            pos, neg, latent, denoise=1.0)[0]["samples"]
    sigmas = sigmas_for(comfy, family, "karras" if family == "eps" else "simple", steps)
    noise = prepare_noise(latent["samples"], 7)
    ms = patcher.get_model_object("model_sampling")
    x_init = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise=True)
    want = exact_endpoint(family, x_init, sigmas[0])
    with torch.inference_mode():
        euler = comfy.nodes.KSampler().sample(patcher, 7, steps, 1.0, "euler", "karras" if family == "eps" else "simple",
                                              pos, neg, latent, denoise=1.0)[0]["samples"]
    assert torch.isfinite(out).all()
    # every registered solver is at least first order on the same ODE: no worse than Euler
    assert rel(out, want) <= 1.02 * rel(euler, want), (name, family, rel(out, want), rel(euler, want))


# ------------------------------------------------------------------------------------------------
# every node configuration
@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("node, kw, deterministic", NODE_CASES, ids=CASE_IDS)
def test_node_contract(comfy, node, kw, deterministic, family):
    """Callback every step with i/denoised/x, sigmas untouched, near the exact endpoint (deterministic)."""
    sampler = node_sampler(comfy, node, **kw)
    steps = 12
    sigmas = sigmas_for(comfy, family, "karras" if family == "eps" else "simple", steps)
    before = sigmas.clone()
    record = {}
    calls = []
    out = run(comfy, family, spy(sampler, record), sigmas, noise_of(1), seed=5,
              callback=lambda i, den, x, total: calls.append((i, total)))
    assert torch.equal(sigmas, before), "sigmas were mutated"
    assert [d["i"] for d in record["steps"]] == list(range(steps))
    assert calls == [(i, steps) for i in range(steps)]
    for d in record["steps"]:
        assert d["denoised"].shape == SHAPE and d["x"].shape == SHAPE
        assert torch.isfinite(d["denoised"]).all() and torch.isfinite(d["x"]).all()
    assert torch.isfinite(out).all()
    if deterministic:  # solves the same ODE at least as well as Euler with the same steps
        want = exact_endpoint(family, record["x_init"], sigmas[0])
        euler = run(comfy, family, comfy_sampler(comfy, "euler"), sigmas, noise_of(1), seed=5)
        assert rel(out, want) <= 1.02 * rel(euler, want), (rel(out, want), rel(euler, want))


@pytest.mark.parametrize("node, kw", [
    ("FewStepDPMSolverPP", dict(mode="3m", eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True)),
    ("FewStepDEIS", dict(order=3)),
    ("FewStepUniPC", dict(variant="bh2", order=3, corrector=True, lower_order_final=True)),
])
def test_family_comes_from_the_model(comfy, node, kw):
    """On a flow model the node passes family="flow": forcing "flow" changes nothing, forcing "eps"
    (the wrong family) changes the result of a higher-order solver."""
    import comfy.samplers as cs
    s = node_sampler(comfy, node, **kw)
    sigmas = sigmas_for(comfy, "flow", "simple", 8)
    forced = {f: cs.KSAMPLER(s.sampler_function, dict(s.extra_options, family=f)) for f in ("flow", "eps")}
    out = run(comfy, "flow", s, sigmas, noise_of(10), cfg=2.0)
    assert torch.equal(out, run(comfy, "flow", forced["flow"], sigmas, noise_of(10), cfg=2.0))
    assert rel(run(comfy, "flow", forced["eps"], sigmas, noise_of(10), cfg=2.0), out) > 1e-3


@pytest.mark.parametrize("node, kw, deterministic", NODE_CASES, ids=CASE_IDS)
def test_same_seed_same_output(comfy, node, kw, deterministic):
    sampler = node_sampler(comfy, node, **kw)
    sigmas = sigmas_for(comfy, "eps", "karras", 6)
    noise = noise_of(2)
    a = run(comfy, "eps", sampler, sigmas, noise, seed=11)
    b = run(comfy, "eps", sampler, sigmas, noise, seed=11)
    assert torch.equal(a, b)
    c = run(comfy, "eps", sampler, sigmas, noise, seed=12)
    if deterministic:
        assert torch.equal(a, c)
    else:
        assert rel(a, c) > 1e-3, "the sampling seed does not reach the solver's noise"


@pytest.mark.parametrize("node, kw, deterministic", [c for c in NODE_CASES if c[2]],
                         ids=[i for i, c in zip(CASE_IDS, NODE_CASES) if c[2]])
def test_batch_of_four_equals_four_single_runs(comfy, node, kw, deterministic):
    """Deterministic solvers treat batch items independently. (Stochastic ones draw the batch's noise
    from one seed, as ComfyUI's samplers do, so a batch item is not a single run with that seed.)"""
    sampler = node_sampler(comfy, node, **kw)
    sigmas = sigmas_for(comfy, "flow", "simple", 7)
    noise = noise_of(3, (4,) + SHAPE[1:])
    batch = run(comfy, "flow", sampler, sigmas, noise, cfg=3.0)
    for i in range(4):
        single = run(comfy, "flow", sampler, sigmas, noise[i:i + 1], cfg=3.0)
        assert rel(batch[i:i + 1], single) < 1e-5, i


# ------------------------------------------------------------------------------------------------
# equal to ComfyUI's implementation of the same algorithm
DPMPP = dict(eta=1.0, s_noise=1.0, noise_type="brownian", lower_order_final=True)
EDM0 = dict(s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0)

SAME_ALGORITHM = [
    # (ComfyUI sampler, its options, FewStep node, widgets, families, cfg)
    ("euler", {}, "FewStepEDM", dict(method="euler", **EDM0), ("eps", "flow")),
    ("euler", {}, "FewStepDDIM", dict(eta=0.0, s_noise=1.0), ("eps", "flow")),
    ("heun", {}, "FewStepEDM", dict(method="heun", **EDM0), ("eps", "flow")),
    ("dpmpp_2m", {}, "FewStepDPMSolverPP", dict(mode="2m", **DPMPP), ("eps",)),
    ("dpmpp_2m_sde", {}, "FewStepDPMSolverPP", dict(mode="sde_2m", **DPMPP), ("eps", "flow")),
    ("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.8}, "FewStepDPMSolverPP",
     dict(mode="sde_2m", eta=0.5, s_noise=0.8, noise_type="brownian", lower_order_final=True), ("eps", "flow")),
    ("euler_ancestral", {}, "FewStepDDIM", dict(eta=1.0, s_noise=1.0), ("eps",)),
    # eps: TCD's gamma 1 goes to the model's time 0 (sigma_min, as the TCD reference scheduler does),
    # LCM to sigma 0 -- see test_deliberate_difference_tcd_gamma_1_eps
    ("lcm", {}, "FewStepTCD", dict(gamma=1.0), ("flow",)),
]
SAME_IDS = [f"{c[0]}{'-' + '-'.join(map(str, c[1].values())) if c[1] else ''}=={c[2]}-{c[3].get('mode', c[3].get('method', ''))}"
            for c in SAME_ALGORITHM]


# ComfyUI's SDE samplers move a first flow sigma of 1 to model_sampling.percent_to_sigma(1e-4)
OFFSET_AT_FLOW_SIGMA_1 = {"dpmpp_2m_sde", "dpmpp_3m_sde"}


@pytest.mark.parametrize("cfg", [1.0, 4.0])
@pytest.mark.parametrize("theirs, their_opts, node, kw, families, ours_opts",
                         [c if len(c) == 6 else c + ({},) for c in SAME_ALGORITHM], ids=SAME_IDS)
def test_equals_comfyui_same_algorithm(comfy, theirs, their_opts, node, kw, families, ours_opts, cfg):
    import comfy.samplers as cs
    sampler = node_sampler(comfy, node, **kw)
    if ours_opts:
        sampler = cs.KSAMPLER(sampler.sampler_function, dict(sampler.extra_options, **ours_opts))
    for family in families:
        for steps, sched in ((8, "karras" if family == "eps" else "simple"), (5, "normal")):
            sigmas = sigmas_for(comfy, family, sched, steps)
            if family == "flow" and theirs in OFFSET_AT_FLOW_SIGMA_1:
                sigmas = sigmas[1:]  # start below 1: see test_deliberate_difference_flow_sigma_1
            noise = noise_of(4)
            ours = run(comfy, family, sampler, sigmas, noise, cfg=cfg, seed=21)
            ref = run(comfy, family, comfy_sampler(comfy, theirs, **their_opts), sigmas, noise, cfg=cfg, seed=21)
            assert rel(ours, ref) < 1e-4, (family, sched, steps, rel(ours, ref))


def test_dpmpp_3m_sde_same_up_to_the_third_order_term(comfy):
    """ComfyUI's 3M SDE warms up with the phi_2 ("heun") form of 2M and never lowers the final order;
    FewStep's node warms up with the paper's midpoint 2M and lowers the final order on short schedules.
    With ComfyUI's choices selected through the solver options, the two agree on every step that does
    not use the third-order term (here: schedules of 3 steps), with the same Brownian noise."""
    import comfy.samplers as cs
    s = node_sampler(comfy, "FewStepDPMSolverPP", mode="sde_3m", **DPMPP)
    s = cs.KSAMPLER(s.sampler_function, dict(s.extra_options, solver_type="heun", lower_order_final=False))
    for family in ("eps", "flow"):
        full = sigmas_for(comfy, family, "karras" if family == "eps" else "simple", 8)
        sigmas = torch.cat([full[1:4], full[-1:]])
        ours = run(comfy, family, s, sigmas, noise_of(4), cfg=3.0, seed=21)
        ref = run(comfy, family, comfy_sampler(comfy, "dpmpp_3m_sde"), sigmas, noise_of(4), cfg=3.0, seed=21)
        assert rel(ours, ref) < 1e-4, (family, rel(ours, ref))


def test_deliberate_difference_dpmpp_3m_third_order_term(comfy):
    """Where they differ: ComfyUI's (and the DPM-Solver reference code's) 3M update weights the second
    divided difference D2 ~ h^2 D''/2 by -phi_3 = h phi_3(-h), half of the exact integral h^3 phi_3(-h) D''.
    Test problem: a denoiser that depends only on sigma, D = (lambda - lambda_0)^4 (the exact solution
    is in closed form, and the low-order warm-up steps are accurate to O(h^5) because D and its first
    three derivatives vanish at the start). FewStep's 3M converges at order 3, ComfyUI's
    dpmpp_3m_sde (eta 0, the ODE) at order 2."""
    import types
    import comfy.k_diffusion.sampling as ks
    from fewstep.samplers import sample_dpmpp_multistep
    patcher, _, _ = setup(comfy, "eps")
    ms = patcher.get_model_object("model_sampling")
    fewstep_3m = sample_dpmpp_multistep
    s0, s1 = 10.0, 0.5
    l0, l1 = -math.log(s0), -math.log(s1)

    class Model:  # D(x, sigma) = (lambda - l0)^4, independent of x
        inner_model = types.SimpleNamespace(model_patcher=types.SimpleNamespace(get_model_object=lambda n: ms))

        def __call__(self, x, sigma, **kw):
            u = -torch.log(sigma.double()) - l0
            return (u ** 4).view(-1, 1) * torch.ones_like(x)

    def exact(x0):  # x / sigma = x0 / s0 + int_{l0}^{l1} e^lam D dlam
        def F(u):
            return math.exp(l0 + u) * (u ** 4 - 4 * u ** 3 + 12 * u ** 2 - 24 * u + 24)
        return s1 * (x0 / s0 + F(l1 - l0) - F(0.0))

    x0 = torch.ones(1, 1, dtype=torch.float64)
    errs = {"fewstep": [], "comfyui": []}
    for n in (20, 40, 80):
        sig = torch.exp(torch.linspace(math.log(s0), math.log(s1), n + 1, dtype=torch.float64))
        out = fewstep_3m(Model(), x0.clone(), sig, family="eps", order=3, lower_order_final=False)
        errs["fewstep"].append(float((out - exact(x0)).abs()))
        out = ks.sample_dpmpp_3m_sde(Model(), x0.clone(), sig, eta=0.0, disable=True)
        errs["comfyui"].append(float((out - exact(x0)).abs()))
    order = {k: math.log2(v[-2] / v[-1]) for k, v in errs.items()}
    assert abs(order["fewstep"] - 3) < 0.3, (order, errs)
    assert abs(order["comfyui"] - 2) < 0.3, (order, errs)
    assert errs["fewstep"][-1] < errs["comfyui"][-1] / 5


def test_deliberate_difference_flow_sigma_1(comfy):
    """From a flow sigma of exactly 1, ComfyUI's dpmpp_2m_sde first moves sigma to 0.99997 (so that
    lambda is finite) and computes the whole first step there; FewStep takes the first-order
    coefficients from sigma and alpha themselves (alpha = 0 at sigma 1: the state is pure noise and the
    step is exact for a constant x0) and offsets sigma only inside step ratios. The outputs differ
    slightly; in the deterministic limit (eta 0) FewStep is no further from the exact endpoint."""
    sigmas = sigmas_for(comfy, "flow", "simple", 8)
    assert float(sigmas[0]) == 1.0
    ours = run(comfy, "flow", node_sampler(comfy, "FewStepDPMSolverPP", mode="sde_2m", **DPMPP), sigmas, noise_of(4), seed=3)
    ref = run(comfy, "flow", comfy_sampler(comfy, "dpmpp_2m_sde"), sigmas, noise_of(4), seed=3)
    assert 1e-5 < rel(ours, ref) < 1e-2
    record = {}
    ode = dict(DPMPP, eta=0.0)
    ours = run(comfy, "flow", spy(node_sampler(comfy, "FewStepDPMSolverPP", mode="sde_2m", **ode), record), sigmas, noise_of(4))
    ref = run(comfy, "flow", comfy_sampler(comfy, "dpmpp_2m_sde", eta=0.0), sigmas, noise_of(4))
    want = exact_endpoint("flow", record["x_init"], 1.0)
    assert rel(ours, want) <= rel(ref, want) * 1.001, (rel(ours, want), rel(ref, want))


@pytest.mark.parametrize("variant, theirs", [("bh1", "uni_pc"), ("bh2", "uni_pc_bh2")])
def test_unipc_equals_comfyui(comfy, variant, theirs):
    """UniPC, eps models (ComfyUI's UniPC is VP-only). Like the reference code and ComfyUI, FewStep
    stops a schedule ending in 0 at sigma 0.001 and returns x there; unlike ComfyUI it does not write
    0.001 into the caller's sigmas."""
    sampler = node_sampler(comfy, "FewStepUniPC", variant=variant, order=3, corrector=True, lower_order_final=True)
    for steps, cfg, last in ((6, 1.0, 0.0), (9, 4.0, 0.0), (7, 2.0, 0.001)):
        sigmas = sigmas_for(comfy, "eps", "karras", steps)
        sigmas[-1] = last
        theirs_sigmas = sigmas.clone()
        noise = noise_of(6)
        ours = run(comfy, "eps", sampler, sigmas, noise, cfg=cfg)
        ref = run(comfy, "eps", comfy_sampler(comfy, theirs), theirs_sigmas, noise, cfg=cfg)
        assert rel(ours, ref) < 1e-4, (steps, cfg, rel(ours, ref))
        assert float(sigmas[-1]) == pytest.approx(last)  # untouched by FewStep
        assert float(theirs_sigmas[-1]) == pytest.approx(0.001)  # ComfyUI writes into its sigmas


def test_deliberate_difference_unipc_in_ksampler(comfy):
    """In KSampler, ComfyUI's uni_pc / uni_pc_bh2 compute steps + 1 sigmas and drop the penultimate
    one; FewStep's fewstep_unipc_bh2 runs the steps' own sigmas. Same algorithm underneath: FewStep on
    ComfyUI's shortened schedule equals KSampler's uni_pc_bh2."""
    patcher, pos, neg = setup(comfy, "eps")
    latent = {"samples": torch.zeros(SHAPE)}
    steps = 8
    with torch.inference_mode():
        theirs = comfy.nodes.KSampler().sample(patcher, 5, steps, 2.0, "uni_pc_bh2", "karras", pos, neg, latent)[0]["samples"]
        ours = comfy.nodes.KSampler().sample(patcher, 5, steps, 2.0, "fewstep_unipc_bh2", "karras", pos, neg, latent)[0]["samples"]
    assert rel(ours, theirs) > 1e-3
    from comfy.sample import prepare_noise
    noise = prepare_noise(latent["samples"], 5)
    full = sigmas_for(comfy, "eps", "karras", steps + 1)
    dropped = torch.cat([full[:-2], full[-1:]])
    again = run(comfy, "eps", node_sampler(comfy, "FewStepUniPC", variant="bh2", order=3, corrector=True,
                                           lower_order_final=True), dropped, noise, cfg=2.0)
    assert rel(again, theirs) < 1e-4


def test_deliberate_difference_deis(comfy):
    """ComfyUI's deis maps every schedule onto the time of a fixed EDM VP-SDE (sigma 0.002..80) and
    integrates the Lagrange polynomials there numerically; FewStep's tAB interpolates in the model's
    own time sigma and integrates against d(sigma/alpha) in closed form, for the model's family. The
    first (Euler/DDIM) step is the same; the multistep steps differ; both converge to the exact endpoint."""
    for family, sched in (("eps", "karras"), ("flow", "simple")):
        full = sigmas_for(comfy, family, sched, 8)
        first = torch.tensor([float(full[0]), float(full[1])])
        a = run(comfy, family, node_sampler(comfy, "FewStepDEIS", order=3), first, noise_of(8))
        b = run(comfy, family, comfy_sampler(comfy, "deis"), first, noise_of(8))
        assert rel(a, b) < 1e-5
        a = run(comfy, family, node_sampler(comfy, "FewStepDEIS", order=3), full, noise_of(8))
        b = run(comfy, family, comfy_sampler(comfy, "deis"), full, noise_of(8))
        assert rel(a, b) > 1e-3
        fine = sigmas_for(comfy, family, sched, 48)
        record = {}
        a = run(comfy, family, spy(node_sampler(comfy, "FewStepDEIS", order=3), record), fine, noise_of(8))
        b = run(comfy, family, comfy_sampler(comfy, "deis"), fine, noise_of(8))
        want = exact_endpoint(family, record["x_init"], fine[0])
        assert rel(a, want) < 0.01 and rel(b, want) < 0.01, (family, rel(a, want), rel(b, want))


def test_deliberate_difference_tcd_gamma_1_eps(comfy):
    """TCD's intermediate level is at model time (1 - gamma) * time(t); model time 0 of an eps model is
    its sigma_min (the TCD reference scheduler's timestep 0), so gamma 1 first moves to sigma_min and
    then re-noises, where ComfyUI's lcm moves to sigma 0. On flow models time 0 is sigma 0 and the two
    are equal (test_equals_comfyui_same_algorithm)."""
    sigmas = sigmas_for(comfy, "eps", "karras", 6)
    ours = run(comfy, "eps", node_sampler(comfy, "FewStepTCD", gamma=1.0), sigmas, noise_of(4), seed=3)
    ref = run(comfy, "eps", comfy_sampler(comfy, "lcm"), sigmas, noise_of(4), seed=3)
    assert 1e-3 < rel(ours, ref) < 0.5


# ------------------------------------------------------------------------------------------------
# SamplerCustomAdvanced with ComfyUI's own nodes
@pytest.mark.parametrize("node, kw, deterministic", NODE_CASES, ids=CASE_IDS)
def test_node_through_sampler_custom_advanced(comfy, node, kw, deterministic):
    from comfy_extras import nodes_custom_sampler as ncs
    patcher, pos, neg = setup(comfy, "flow")
    sampler = node_sampler(comfy, node, **kw)
    noise = ncs.RandomNoise().get_noise(9)[0]
    g = ncs.CFGGuider().get_guider(patcher, pos, neg, 2.5)[0]
    sigmas = ncs.BasicScheduler().get_sigmas(patcher, "simple", 10, 1.0)[0]
    latent = {"samples": torch.zeros(SHAPE)}
    with torch.inference_mode():
        out, den = ncs.SamplerCustomAdvanced().sample(noise, g, sampler, sigmas, latent)
    assert out["samples"].shape == SHAPE and torch.isfinite(out["samples"]).all()
    if deterministic:  # at least as close to the exact endpoint as ComfyUI's euler through the same nodes
        x_init = noise.generate_noise(latent)  # flow: x at sigma 1 is the noise itself
        want = exact_endpoint("flow", x_init, 1.0, cfg=2.5)
        with torch.inference_mode():
            euler = ncs.SamplerCustomAdvanced().sample(noise, g, ncs.KSamplerSelect().get_sampler("euler")[0],
                                                       sigmas, latent)[0]["samples"]
        assert rel(out["samples"], want) <= 1.02 * rel(euler, want)
