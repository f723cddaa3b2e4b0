"""The ComfyUI recipes of ``python -m fewstep compare`` (recipes.py), inside a real ComfyUI.

* Every deterministic solver's node with the recipe's widget values, and its KSampler entry where the
  recipe names one, give the registry solver's sample (the same model, noise and sigmas through
  CFGGuider) to float32 rounding.
* Every schedule's FewStepScheduler widgets, and its KSampler scheduler entry (FewStep's or ComfyUI's
  own karras / exponential), give the schedule's sigmas.
* Every recipe the compare markdown prints names a KSampler entry, node, widget and value that this
  ComfyUI accepts.
"""
import pytest
import torch

pytestmark = pytest.mark.host

SHAPE = (2, 4, 8, 8)
FAMILIES = ["eps", "flow"]


def _deterministic():
    from fewstep.samplers.registry import SOLVERS
    return [n for n, s in SOLVERS.items() if not s.stochastic]


_MODELS = {}


def setup(family):
    if family not in _MODELS:
        from fewstep.nodes.analytic import make_analytic_patcher
        _MODELS[family] = make_analytic_patcher(family, 3.0, 8, 0)
    return _MODELS[family]


def run(family, sampler, sigmas, cfg=3.0):
    import comfy.samplers as cs
    patcher, pos, neg = setup(family)
    g = cs.CFGGuider(patcher)
    g.set_conds(pos, neg)
    g.set_cfg(cfg)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        return g.sample(noise, torch.zeros_like(noise), sampler, sigmas.clone(), disable_pbar=True, seed=11)


def registry_sampler(name):
    """The registry's solver as a KSAMPLER, family read from the model as the nodes do."""
    import comfy.samplers as cs
    from fewstep.comfy_adapter import family_of_k_model
    from fewstep.samplers.registry import SOLVERS
    spec = SOLVERS[name]

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        return spec(model, x, sigmas, extra_args, callback, disable, family=family_of_k_model(model))

    return cs.KSAMPLER(fn, {})


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def sigmas_of(comfy, family, schedule="karras", steps=9):
    patcher, _, _ = setup(family)
    return comfy.NODES["FewStepScheduler"]().get_sigmas(patcher, schedule, steps, 1.0, 7.0)[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", _deterministic())
def test_solver_recipe_runs_the_registry_solver(comfy, name, family):
    import comfy.samplers as cs
    from fewstep.recipes import SOLVER_RECIPES
    r = SOLVER_RECIPES[name]
    sig = sigmas_of(comfy, family)
    want = run(family, registry_sampler(name), sig)
    got = run(family, comfy.NODES[r.node]().get_sampler(**r.widgets)[0], sig)
    assert rel(got, want) < 1e-6, (name, family, r.node, r.widgets, rel(got, want))
    if r.ksampler:
        assert r.ksampler in cs.KSampler.SAMPLERS
        got = run(family, cs.sampler_object(r.ksampler), sig)
        assert rel(got, want) < 1e-6, (name, family, r.ksampler, rel(got, want))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tolerance_tells_solvers_apart(comfy, family):
    """Solvers that differ by a warm-up only (pndm: lower-order, pndm_rk: pseudo Runge-Kutta) or by one
    order are told apart: the check above would see a recipe that runs the wrong one."""
    import comfy.samplers as cs
    sig = sigmas_of(comfy, family)
    assert rel(run(family, cs.sampler_object("fewstep_pndm"), sig), run(family, registry_sampler("pndm_rk"), sig)) > 1e-3
    assert rel(run(family, cs.sampler_object("fewstep_deis_3"), sig), run(family, registry_sampler("deis_4"), sig)) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_schedule_recipe_gives_the_schedule(comfy, family):
    import comfy.samplers as cs
    from fewstep.comfy_adapter import model_sigmas_of_sampling
    from fewstep.recipes import SCHEDULE_RECIPES
    from fewstep.schedules import SCHEDULE_NAMES, get_schedule
    patcher, _, _ = setup(family)
    ms_c = patcher.get_model_object("model_sampling")
    ms = model_sigmas_of_sampling(ms_c)
    node = comfy.NODES["FewStepScheduler"]()
    for s in SCHEDULE_NAMES:
        r = SCHEDULE_RECIPES[s]
        for steps in (4, 10, 20):
            want = get_schedule(s, steps, ms).to(torch.float32)
            got = node.get_sigmas(patcher, steps=steps, denoise=1.0, **r.widgets)[0]
            assert torch.equal(got, want), (s, steps)
            if r.ksampler:
                assert r.ksampler in cs.KSampler.SCHEDULERS
                k = cs.calculate_sigmas(ms_c, r.ksampler, steps).cpu().to(torch.float32)
                assert k.shape == want.shape and k[-1] == 0
                assert torch.allclose(k, want, rtol=1e-5, atol=1e-7), (s, r.ksampler, steps, (k - want).abs().max())


def _value(spec, text, where):
    """A widget value as printed by compare, checked against the widget's spec and converted."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, (list, tuple)):
        assert text in kind, (where, text, kind)
        return text
    if kind == "BOOLEAN":
        assert text in ("true", "false"), (where, text)
        return text == "true"
    v = int(text) if kind == "INT" else float(text)
    assert opts.get("min", -float("inf")) <= v <= opts.get("max", float("inf")), (where, v, opts)
    return v


def test_compare_output_names_exist_in_comfyui(comfy):
    import comfy.samplers as cs
    import compare_output as co
    from fewstep import cli
    comp = cli.compare(families=("eps", "flow"), cfgs=(1.0,), nfes=[4, 8], samples=1, latent=(4, 2, 2), progress=False)
    parsed = co.parse_markdown(cli.markdown(comp))
    seen = set()
    for (family, _), sec in parsed["sections"].items():
        patcher, _, _ = setup(family)
        for row in sec["best"] + sec["rows"]:
            rec = co.parse_recipe(row["recipe"])
            assert rec is not None, row
            if rec["kind"] == "ksampler":
                assert rec["sampler_name"] in cs.KSampler.SAMPLERS, rec
                assert rec["scheduler"] in cs.KSampler.SCHEDULERS, rec
                seen.add(("ksampler", rec["sampler_name"], rec["scheduler"]))
                continue
            node = comfy.NODES[rec["sampler_node"]]
            req = node.INPUT_TYPES()["required"]
            assert list(rec["sampler_widgets"]) == list(req), rec
            kw = {k: _value(req[k], v, rec["sampler_node"]) for k, v in rec["sampler_widgets"].items()}
            node().get_sampler(**kw)
            sreq = comfy.NODES[rec["sigmas_node"]].INPUT_TYPES()["required"]
            skw = {k: _value(sreq[k], v, rec["sigmas_node"]) for k, v in rec["sigmas_widgets"].items()}
            sig = comfy.NODES[rec["sigmas_node"]]().get_sigmas(patcher, steps=8, denoise=1.0, **skw)[0]
            assert sig[-1] == 0 and sig.numel() == 9
            seen.add(("nodes", rec["sampler_node"], rec["sigmas_widgets"]["schedule"]))
    assert {k for k, *_ in seen} == {"ksampler", "nodes"}
