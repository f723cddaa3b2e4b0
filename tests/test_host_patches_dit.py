"""Host tests of FewStepDeepCache and FewStepTGate on random-weight tiny DiTs built through ComfyUI's
own model classes (tests/dit_factory.py): Flux, SD3 MMDiT, Wan 2.1, PixArt-Sigma, Qwen-Image."""
from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.host

KINDS = ("flux", "sd3", "wan21", "pixart", "qwen_image")
HOOKED = ("flux", "sd3", "wan21", "qwen_image")  # have ComfyUI's patches_replace["dit"] block hook


@pytest.fixture(scope="module")
def df(comfy):
    import dit_factory
    return dit_factory


_MODELS = {}


@pytest.fixture(scope="module", autouse=True)
def _drop_models():
    yield
    _MODELS.clear()  # before interpreter exit (a ModelPatcher deleted at exit warns)


def base(df, kind):
    if kind not in _MODELS:
        _MODELS[kind] = df.make_dit_patcher(kind, seed=0)
    return _MODELS[kind]


def sample(df, kind, model, steps=6, cfg=4.0, sampler="euler", seed=0, neg_tokens=8):
    import comfy.sample

    lat = df.latent(kind)
    noise = comfy.sample.prepare_noise(lat, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", df.conditioning(kind, 1),
                                   df.conditioning(kind, 2, tokens=neg_tokens), lat, seed=seed, disable_pbar=True)


def block_modules(model):
    dm = model.model.diffusion_model
    if hasattr(dm, "single_blocks"):
        return list(dm.double_blocks) + list(dm.single_blocks)
    for name in ("joint_blocks", "transformer_blocks", "blocks"):
        if hasattr(dm, name):
            return list(getattr(dm, name))
    raise AssertionError(type(dm))


class BlockCounter:
    """Counts real executions of each transformer block (forward pre-hooks on the test's modules)."""

    def __init__(self, model):
        self.mods = block_modules(model)
        self.counts = [0] * len(self.mods)
        self.handles = []

    def __enter__(self):
        for i, m in enumerate(self.mods):
            self.handles.append(m.register_forward_pre_hook(self._hook(i)))
        return self

    def _hook(self, i):
        def hook(module, args):
            self.counts[i] += 1
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def fewstep_logs(caplog, what):
    return [r.getMessage() for r in caplog.records if r.name == "FewStep" and what in r.getMessage()]


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", HOOKED)
def test_deepcache_interval_1_is_bit_identical(df, kind):
    from fewstep.patches.deepcache import apply_deepcache

    m = base(df, kind)
    ref = sample(df, kind, m)
    for lead, trail in ((1, 1), (0, 0), (0, 2)):
        assert torch.equal(sample(df, kind, apply_deepcache(m, 1, dit_leading_blocks=lead, dit_trailing_blocks=trail)),
                           ref), (lead, trail)


@pytest.mark.parametrize("kind", KINDS)
def test_tgate_gate_1_is_bit_identical(df, kind):
    from fewstep.patches.tgate import apply_tgate

    m = base(df, kind)
    ref = sample(df, kind, m)
    assert torch.equal(sample(df, kind, apply_tgate(m, 1.0)), ref)


@pytest.mark.parametrize("kind,lead,trail", [(k, 1, 1) for k in HOOKED] + [("flux", 0, 2), ("flux", 2, 0),
                                                                          ("sd3", 0, 3)])
def test_deepcache_skips_exactly_the_middle_blocks_on_cached_steps(df, kind, lead, trail, caplog):
    from fewstep.core.cache_schedule import dit_block_plan
    from fewstep.patches.deepcache import apply_deepcache

    caplog.set_level(logging.INFO, logger="FewStep")
    m = base(df, kind)
    ref = sample(df, kind, m)
    dc = apply_deepcache(m, 3, dit_leading_blocks=lead, dit_trailing_blocks=trail)
    with BlockCounter(m) as c:
        out = sample(df, kind, dc, steps=6)
    n = len(c.counts)
    plan = dit_block_plan(n, lead, trail)
    # 6 steps, CFG batched into one model call per step; full steps 0 and 3, cached 1, 2, 4, 5
    expected = [6 if i in plan.recomputed_blocks else 2 for i in range(n)]
    assert c.counts == expected
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # cached steps really reuse the residual
    msg = fewstep_logs(caplog, "DeepCache")[-1]
    assert "2 full and 4 cached model calls over 6 steps" in msg, msg
    assert f"block calls run {sum(expected)}, skipped {6 * n - sum(expected)}" in msg, msg


@pytest.mark.parametrize("kind", HOOKED)
def test_cached_step_output_equals_entry_plus_cached_residual(df, kind):
    """On the step right after a full one, with the latent and timestep of that full step, the
    cached pass must reproduce the full pass exactly up to float rounding: the middle blocks' output
    is entry + (exit - entry) of the same inputs."""
    from fewstep.patches.deepcache import RUN_KEY, DiTDeepCacheRun, apply_deepcache
    from fewstep.patches import _dit
    from fewstep.core.cache_schedule import dit_block_plan

    m = base(df, kind)
    dc = apply_deepcache(m, 2)
    arch = _dit.describe(m)
    plan = dit_block_plan(arch.n_blocks, 1, 1)
    settings = dict(cache_interval=2, cache_depth=0, mode="uniform", center=0.3, power=1.4, start_percent=0.0,
                    end_percent=1.0)
    run = DiTDeepCacheRun(settings, arch, plan, torch.linspace(1.0, 0.0, 4), m.get_model_object("model_sampling"))
    import comfy.samplers
    x = torch.randn(1, *df.INPUTS[kind][2], generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.7])
    to = dict(dc.model_options["transformer_options"])
    to[RUN_KEY] = run
    opts = dict(dc.model_options, transformer_options=to)
    cond = df.conditioning(kind, 1)
    import comfy.sampler_helpers
    conds = comfy.sampler_helpers.convert_cond(cond)
    conds = comfy.samplers.encode_model_conds(m.model.extra_conds, conds, x, torch.device("cpu"), "positive")
    prev = getattr(m.model, "current_patcher", None)
    m.model.current_patcher = dc  # what the sampler sets while the model is loaded
    try:
        with torch.inference_mode():
            full = comfy.samplers.calc_cond_batch(m.model, [conds], x, sigma, opts)[0]
            run.on_step(0)  # now on step 1: a cached step
            with BlockCounter(m) as c:
                cached = comfy.samplers.calc_cond_batch(m.model, [conds], x, sigma, opts)[0]
    finally:
        m.model.current_patcher = prev
    assert c.counts == [1 if i in plan.recomputed_blocks else 0 for i in range(arch.n_blocks)]
    assert run.cached_calls == 1 and run.full_calls == 1
    scale = full.abs().max()
    assert (cached - full).abs().max() <= 1e-5 * scale, (cached - full).abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_leaks_into_the_unpatched_model_and_bypass_removes_the_effect(df, kind):
    from fewstep.patches.deepcache import apply_deepcache
    from fewstep.patches.tgate import apply_tgate

    m = base(df, kind)
    ref = sample(df, kind, m)
    opts_before = repr(m.model_options)
    patches = [lambda x: apply_tgate(x, 0.4)]
    if kind in HOOKED:
        patches += [lambda x: apply_deepcache(x, 3), lambda x: apply_tgate(apply_deepcache(x, 2), 0.5)]
    for patch in patches:
        p = patch(m)
        once = sample(df, kind, p)
        assert torch.isfinite(once).all() and not torch.equal(once, ref)
        # the same patched model again: no state carried over from the previous run
        assert torch.equal(sample(df, kind, p), once)
        assert torch.equal(sample(df, kind, patch(patch(m))), once)  # applying twice = once
        # bypassing the node = sampling the input model: bit-identical to a fresh unpatched run
        assert torch.equal(sample(df, kind, m), ref)
    assert repr(m.model_options) == opts_before
    assert not any("fewstep" in str(k) for w in m.wrappers.values() for k in w)
    fresh = df.make_dit_patcher(kind, seed=0)
    assert torch.equal(sample(df, kind, fresh), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_tgate_drops_uncond_after_the_gate(df, kind, caplog):
    import comfy.patcher_extension as pe

    from fewstep.patches.tgate import apply_tgate

    caplog.set_level(logging.INFO, logger="FewStep")
    m = base(df, kind).clone()
    sizes = []

    def spy(executor, *args, **kwargs):
        sizes.append(args[0].shape[0])
        return executor(*args, **kwargs)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_spy", spy)
    out = sample(df, kind, apply_tgate(m, 0.4), steps=10)
    assert torch.isfinite(out).all()
    assert sizes == [2] * 4 + [1] * 6
    msg = fewstep_logs(caplog, "T-GATE")[-1]
    assert "gate at step 4/10" in msg and "dropped on 6" in msg, msg
    if kind == "wan21":
        assert "24 cross-attention calls reused" in msg, msg  # 6 gated steps x 4 blocks
    elif kind == "pixart":
        assert "PixArt calls its attention without transformer_options" in msg, msg
    else:
        assert "joint text-image attention: only the uncond drop applies" in msg, msg


def test_tgate_wan_cross_attention_is_the_cached_mean_and_not_computed(df, caplog):
    """Wan: an attention override put on the model before T-GATE sees every attention kernel call
    T-GATE lets through; one put after it sees what T-GATE returns. After the gate no cross-attention
    kernel runs, and every cross-attention returns the mean of the cond and uncond outputs of the same
    block at the last step before the gate."""
    m = base(df, "wan21").clone()
    from fewstep.patches.tgate import apply_tgate

    n_img = 16  # 8x8 latent, patch 2x2
    kernel = []

    def inner(func, *args, **kwargs):
        kernel.append(args[1].shape[1])
        return func(*args, **kwargs)
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = inner
    t = apply_tgate(m, 0.5)
    seen = []
    outer_prev = t.model_options["transformer_options"]["optimized_attention_override"]

    def outer(func, *args, **kwargs):
        out = outer_prev(func, *args, **kwargs)
        if args[1].shape[1] != n_img:
            seen.append((list(kwargs["transformer_options"]["cond_or_uncond"]), out.clone()))
        return out
    t.model_options["transformer_options"]["optimized_attention_override"] = outer
    sample(df, "wan21", t, steps=4)
    ctx_calls = [k for k in kernel if k != n_img]
    assert all(k == n_img for k in kernel[::2]) and len(set(kernel)) == 2  # self then cross, distinguishable
    assert len(ctx_calls) == 2 * 4  # cross-attention kernels ran only on the 2 steps before the gate
    assert len(kernel) - len(ctx_calls) == 4 * 4  # self-attention runs on every step
    assert len(seen) == 4 * 4
    before, after = seen[4:8], seen[8:12]
    for (cu, nb), (cua, na) in zip(before, after):
        assert len(cu) == 2 and cua == [0]
        halves = dict(zip(cu, nb.chunk(2)))
        assert not torch.allclose(halves[0], halves[1])
        assert torch.allclose(na, (halves[0] + halves[1]) / 2, atol=1e-6, rtol=0)
    for (_, a), (_, b) in zip(after, seen[12:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["wan21", "flux"])
def test_deepcache_and_tgate_compose_either_order(df, kind, caplog):
    from fewstep.patches.deepcache import apply_deepcache
    from fewstep.patches.tgate import apply_tgate

    caplog.set_level(logging.INFO, logger="FewStep")
    m = base(df, kind)
    outs = []
    for p in (apply_tgate(apply_deepcache(m, 3), 0.4), apply_deepcache(apply_tgate(m, 0.4), 3)):
        caplog.clear()
        outs.append(sample(df, kind, p, steps=10))
        assert torch.isfinite(outs[-1]).all()
        assert "4 full and 6 cached model calls" in fewstep_logs(caplog, "DeepCache")[-1]
        msg = fewstep_logs(caplog, "T-GATE")[-1]
        assert "dropped on 6" in msg
        if kind == "wan21":  # cross-attention of the 2 recomputed blocks on the 4 cached gated steps + 4 on 2 full
            assert "16 cross-attention calls reused" in msg, msg
    assert torch.equal(outs[0], outs[1])


def test_another_packs_block_replace_is_kept_and_chained(df):
    """A replacement another pack put on a block keeps running (FewStep's wraps it); on cached steps
    it is skipped along with the block."""
    from fewstep.patches.deepcache import apply_deepcache

    m = base(df, "flux").clone()
    calls = []

    def foreign(args, extra):
        calls.append(1)
        out = extra["original_block"](args)
        out["img"] = out["img"] * 1.0
        return out
    m.set_model_patch_replace(foreign, "dit", "double_block", 1)
    ref = sample(df, "flux", m)
    assert len(calls) == 6
    calls.clear()
    assert torch.equal(sample(df, "flux", apply_deepcache(m, 1)), ref)
    assert len(calls) == 6
    calls.clear()
    sample(df, "flux", apply_deepcache(m, 3))
    assert len(calls) == 2  # block 1 is a middle block: only the 2 full steps run it


def test_pixart_deepcache_refused_naming_the_model(df):
    from fewstep.patches._unet import UnsupportedModelError
    from fewstep.patches.deepcache import apply_deepcache

    with pytest.raises(UnsupportedModelError, match="PixArt.*no patches_replace block hook"):
        apply_deepcache(base(df, "pixart"), 3)


def test_nodes_dit_widgets(df, comfy):
    cls = comfy.NODES["FewStepDeepCache"]
    spec = cls.INPUT_TYPES()
    opt = list(spec["optional"])
    assert opt[-2:] == ["dit_leading_blocks", "dit_trailing_blocks"]
    for w in opt[-2:]:
        tip = spec["optional"][w][1]["tooltip"]
        assert "Ignored on UNets" in tip
    assert "ignored on DiTs" in spec["required"]["cache_depth"][1]["tooltip"]
    node = cls()
    m = base(df, "flux")  # 5 blocks
    with pytest.raises(ValueError, match=r"dit_leading_blocks \+ dit_trailing_blocks must be in \[0, 4\]"):
        node.patch(m, 3, 0, "uniform", 0.0, 1.0, 0.3, 1.4, 3, 2)
    out = node.patch(m, 3, 0, "uniform", 0.0, 1.0, 0.3, 1.4, 2, 2)[0]
    with BlockCounter(m) as c:
        sample(df, "flux", out)
    assert c.counts == [6, 6, 2, 6, 6]
    assert torch.equal(sample(df, "flux", comfy.NODES["FewStepTGate"]().patch(m, 1.0, True)[0]), sample(df, "flux", m))


@pytest.mark.parametrize("kind", ["flux", "wan21"])
def test_deepcache_separate_cond_and_uncond_calls_keep_their_own_residual(df, kind, caplog):
    """A negative prompt of another length (37 vs 8 tokens) cannot be batched with the positive one:
    cond and uncond run as separate model calls, each reusing its own chunk's residual (the text
    stream of Flux has another shape per chunk)."""
    from fewstep.patches.deepcache import apply_deepcache

    caplog.set_level(logging.INFO, logger="FewStep")
    m = base(df, kind)
    with BlockCounter(m) as c:
        out = sample(df, kind, apply_deepcache(m, 3), neg_tokens=37)
    n = len(c.counts)
    assert c.counts == [12] + [4] * (n - 2) + [12]
    assert torch.isfinite(out).all()
    msg = fewstep_logs(caplog, "DeepCache")[-1]
    assert "4 full and 8 cached model calls over 6 steps" in msg and "ran in full" not in msg, msg
