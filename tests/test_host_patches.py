"""Host tests of FewStep's model patches on a tiny random-weight SD1.5-layout UNet in real ComfyUI."""
from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; tiny models run faster single-threaded
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(comfy):
    import unet_factory as uf

    class Env:
        pass

    e = Env()
    e.uf = uf
    e.model = uf.make_unet_patcher("tiny", seed=0)
    e.pos = uf.conditioning(64, seed=1)
    e.neg = uf.conditioning(64, seed=2)
    e.pos_b = uf.conditioning(64, seed=3)
    return e


def sample(model, pos, neg, steps=6, cfg=7.0, sampler="dpmpp_2m", scheduler="karras", size=8, batch=1, seed=0,
           denoise=1.0, latent=None):
    import comfy.sample

    lat = torch.zeros(batch, 4, size, size) if latent is None else latent
    noise = comfy.sample.prepare_noise(lat, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, pos, neg, lat, denoise=denoise,
                                   seed=seed, disable_pbar=True)


def fewstep_logs(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "FewStep"]


# ------------------------------------------------------------------------------------------------
# DeepCache
def test_deepcache_interval_1_equals_uncached_exactly(env):
    from fewstep.patches.deepcache import apply_deepcache

    ref = sample(env.model, env.pos, env.neg)
    for depth in (0, 5):
        out = sample(apply_deepcache(env.model, cache_interval=1, cache_depth=depth), env.pos, env.neg)
        assert torch.equal(out, ref)


def test_deepcache_caches_and_logs(env, caplog):
    from fewstep.patches.deepcache import apply_deepcache

    caplog.set_level(logging.INFO, logger="FewStep")
    ref = sample(env.model, env.pos, env.neg, steps=7)
    out = sample(apply_deepcache(env.model, cache_interval=3), env.pos, env.neg, steps=7)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # cached steps really reuse an older feature
    msgs = [m for m in fewstep_logs(caplog) if "DeepCache" in m]
    assert msgs and "3 full and 4 cached UNet calls over 7 steps" in msgs[-1], msgs


def _capture_patch(store, block):
    def patch(h, hsp, to):
        if to.get("block") == ("output", block):
            store.append(h.clone())
        return h, hsp
    return patch


def _control_for(unet, x):
    """A synthetic ControlNet result (a residual for every skip connection and the middle block), in
    ComfyUI's layout: ``output[i]`` belongs to input block i's skip and is popped from the end."""
    shapes = []

    def probe(h, to):
        shapes.append(tuple(h.shape))
        return h
    with torch.inference_mode():
        unet(x, torch.full((x.shape[0],), 500.0), context=torch.zeros(x.shape[0], 77, 64),
             transformer_options={"patches": {"input_block_patch": [probe]}})

    def make():
        g = torch.Generator().manual_seed(11)
        return {"output": [torch.randn(s, generator=g) * 0.1 for s in shapes],
                "middle": [torch.randn(shapes[-1], generator=g) * 0.1], "input": []}
    return make


@pytest.mark.parametrize("depth", [0, 3, 7, 11])
def test_shallow_pass_reproduces_full_pass_with_controlnet(env, depth):
    """Given the deep feature of the same step, DeepCache's shallow pass must give exactly the full
    UNet's output: same blocks, same skip features, ControlNet residuals at the same places."""
    from fewstep.patches._unet import UNetLayout, forward_shallow

    unet = env.model.model.diffusion_model
    layout = UNetLayout(unet)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([700.0, 300.0])
    ctx = torch.randn(2, 77, 64, generator=g)
    make_control = _control_for(unet, x)
    store = []
    with torch.inference_mode():
        full = unet(x, t, context=ctx, control=make_control(),
                    transformer_options={"patches": {"output_block_patch": [_capture_patch(store, layout.entry_block(depth))]}})
        shallow = forward_shallow(unet, layout, depth, store[0], x, t, ctx, None, make_control(), {}, {})
        no_ctrl = forward_shallow(unet, layout, depth, store[0], x, t, ctx, None, None, {}, {})
    assert torch.allclose(shallow, full, rtol=0, atol=1e-5), (shallow - full).abs().max()
    if depth < 11:
        assert not torch.allclose(no_ctrl, full, atol=1e-4)  # the residuals do matter on the shallow path


@pytest.mark.parametrize("depth", [0, 4, 8])
def test_shallow_pass_reproduces_full_pass_sdxl_layout(comfy, depth):
    """The same on an SDXL-layout UNet (3 levels, linear projections, transformer depth 2, class
    embedding ``y`` for the pooled-text/size vector)."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
    import comfy.ops
    import unet_factory as uf

    from fewstep.patches._unet import UNetLayout, forward_shallow

    unet = om.UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2],
        channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 1, 1], transformer_depth_output=[0, 0, 0, 2, 2, 2, 1, 1, 1],
        transformer_depth_middle=1, context_dim=64, num_head_channels=8, use_linear_in_transformer=True,
        num_classes="sequential", adm_in_channels=48, use_spatial_transformer=True, legacy=False,
        device="cpu", operations=comfy.ops.disable_weight_init)
    uf.init_weights_(unet, 4)
    layout = UNetLayout(unet)
    assert layout.max_depth == 8
    g = torch.Generator().manual_seed(6)
    x, ctx, y = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g), torch.randn(2, 48, generator=g)
    t = torch.tensor([900.0, 100.0])
    store = []
    with torch.inference_mode():
        full = unet(x, t, context=ctx, y=y, transformer_options={
            "patches": {"output_block_patch": [_capture_patch(store, layout.entry_block(depth))]}})
        shallow = forward_shallow(unet, layout, depth, store[0], x, t, ctx, y, None, {}, {})
    assert torch.allclose(shallow, full, rtol=0, atol=1e-5), (shallow - full).abs().max()


def test_deepcache_batch_items_independent(env):
    """batch 2 == each latent alone: every batch item and cond chunk keeps its own cached feature."""
    from fewstep.patches.deepcache import apply_deepcache

    dc = apply_deepcache(env.model, cache_interval=2)
    import comfy.sample
    lat = torch.zeros(2, 4, 8, 8)
    both = sample(dc, env.pos, env.neg, latent=lat, seed=3)
    noise = comfy.sample.prepare_noise(lat, 3)
    for i in range(2):
        with torch.inference_mode():
            one = comfy.sample.sample(dc, noise[i:i + 1], 6, 7.0, "dpmpp_2m", "karras", env.pos, env.neg,
                                      lat[i:i + 1], seed=3, disable_pbar=True)
        # equal up to float reassociation of batched kernels (the model amplifies it; values ~1e2)
        assert (one[0] - both[i]).abs().max() <= 1e-5 * both.abs().max()


def test_deepcache_cache_is_per_cond_chunk(env, caplog):
    """Each cond chunk (uuid) has its own cached feature; lookups follow the chunk order of the call."""
    from fewstep.patches.deepcache import DeepCacheRun, apply_deepcache

    import comfy.model_sampling  # noqa: F401
    run = DeepCacheRun(dict(cache_interval=2, cache_depth=0, mode="uniform", center=0.3, power=1.4,
                            start_percent=0.0, end_percent=1.0), torch.linspace(10, 0, 5),
                       env.model.get_model_object("model_sampling"))
    x = torch.zeros(4, 4, 8, 8)
    deep = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 3, 2, 2)
    run.store(["c", "u"], x, deep)
    assert torch.equal(run.lookup(["u", "c"], x), torch.cat([deep[2:], deep[:2]]))
    assert torch.equal(run.lookup(["u"], x[:2]), deep[2:])
    assert run.lookup(["u"], torch.zeros(2, 4, 16, 16)) is None  # another latent size: no reuse
    assert run.lookup(["other"], x[:2]) is None

    # in a real run with cond and uncond in separate model calls (a negative prompt that cannot be
    # batched with the positive one), every call on a cached step uses its own chunk's feature
    caplog.set_level(logging.INFO, logger="FewStep")
    neg78 = env.uf.conditioning(64, seed=2, tokens=78)
    out = sample(apply_deepcache(env.model, cache_interval=2), env.pos, neg78, steps=6)
    assert torch.isfinite(out).all()
    msg = [m for m in fewstep_logs(caplog) if "DeepCache" in m][-1]
    assert "6 full and 6 cached UNet calls over 6 steps" in msg, msg


def test_no_cache_leak_across_prompts(env):
    from fewstep.patches.deepcache import apply_deepcache
    from fewstep.patches.tgate import apply_tgate

    for patched in (apply_deepcache(env.model, cache_interval=3), apply_tgate(env.model, 0.4),
                    apply_tgate(apply_deepcache(env.model, cache_interval=2), 0.5)):
        a_alone = sample(patched, env.pos, env.neg)
        b_alone = sample(patched, env.pos_b, env.neg, size=12, sampler="euler")
        a2 = sample(patched, env.pos, env.neg)
        b2 = sample(patched, env.pos_b, env.neg, size=12, sampler="euler")
        assert torch.equal(a_alone, a2) and torch.equal(b_alone, b2)


def test_several_samplers_sizes_denoise_and_vpred(env, comfy):
    from fewstep.patches.deepcache import apply_deepcache

    dc = apply_deepcache(env.model, cache_interval=2)
    for sampler in ("euler", "heun", "dpmpp_2m", "dpmpp_3m_sde", "uni_pc"):
        out = sample(dc, env.pos, env.neg, sampler=sampler, size=8 if sampler != "heun" else 16, steps=5)
        assert torch.isfinite(out).all(), sampler
    ref = sample(env.model, env.pos, env.neg, denoise=0.5, latent=torch.ones(1, 4, 8, 8) * 0.3)
    assert torch.equal(sample(apply_deepcache(env.model, 1), env.pos, env.neg, denoise=0.5,
                              latent=torch.ones(1, 4, 8, 8) * 0.3), ref)
    v = env.uf.make_unet_patcher("tiny_v", seed=1)
    ref = sample(v, env.pos, env.neg)
    assert torch.equal(sample(apply_deepcache(v, 1, 2), env.pos, env.neg), ref)
    assert torch.isfinite(sample(apply_deepcache(v, 3), env.pos, env.neg)).all()


# ------------------------------------------------------------------------------------------------
# FreeU
FREEU_PARAMS = [(1.1, 1.2, 0.9, 0.2), (1.3, 1.4, 0.9, 0.2), (1.5, 1.6, 0.9, 0.2), (0.0, 0.0, 0.0, 0.0),
                (10.0, 10.0, 10.0, 10.0), (0.5, 2.5, 1.7, 3.3), (1.0, 1.0, 1.0, 1.0)]


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_equals_comfyui_builtin(env, version):
    from comfy_extras.nodes_freelunch import FreeU, FreeU_V2

    from fewstep.patches.freeu import apply_freeu

    builtin = FreeU if version == 1 else FreeU_V2
    # 16x16 latent: the deepest FreeU stage is then 2x2 (at 1x1 FreeU v2's min-max normalisation is 0/0)
    base = sample(env.model, env.pos, env.neg, steps=2, size=16)
    for params in FREEU_PARAMS:
        ref = sample(builtin().patch(env.model, *params)[0], env.pos, env.neg, steps=2, size=16)
        ours = sample(apply_freeu(env.model, version, *params), env.pos, env.neg, steps=2, size=16)
        assert torch.isfinite(ours).all()
        assert torch.equal(ours, ref), (version, params, (ours - ref).abs().max())
        if params != (1.0, 1.0, 1.0, 1.0):
            assert not torch.equal(ours, base), params


def test_freeu_window_and_presets(env, comfy):
    from fewstep.patches.freeu import PRESETS, apply_freeu

    base = sample(env.model, env.pos, env.neg, steps=4)
    full = sample(apply_freeu(env.model, 2, 1.5, 1.6, 0.9, 0.2), env.pos, env.neg, steps=4)
    # a window that excludes every step == no FreeU
    none = sample(apply_freeu(env.model, 2, 1.5, 1.6, 0.9, 0.2, 0.0, 0.0), env.pos, env.neg, steps=4)
    half = sample(apply_freeu(env.model, 2, 1.5, 1.6, 0.9, 0.2, 0.5, 1.0), env.pos, env.neg, steps=4)
    assert torch.equal(none, base)
    assert not torch.equal(half, base) and not torch.equal(half, full)
    node = env_node(comfy, "FewStepFreeU")
    m = node.patch(env.model, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, "SD1.5")[0]
    assert torch.equal(sample(m, env.pos, env.neg, steps=2),
                       sample(apply_freeu(env.model, 1, *PRESETS["SD1.5"]), env.pos, env.neg, steps=2))


def test_freeu_fft_falls_back_to_cpu(monkeypatch):
    from fewstep.patches import freeu

    x = torch.randn(2, 8, 6, 5)
    ref = freeu.skip_filter(x, 0.3)
    real_fftn = torch.fft.fftn
    calls = []

    def failing_fftn(t, *a, **k):
        calls.append(t.device)
        if len(calls) == 1:
            raise RuntimeError("fft not implemented on this device")
        return real_fftn(t, *a, **k)

    monkeypatch.setattr(torch.fft, "fftn", failing_fftn)
    fake = torch.device("cpu")
    freeu._NO_FFT_DEVICES.discard(fake)
    try:
        assert torch.equal(freeu.skip_filter(x, 0.3), ref)
        assert fake in freeu._NO_FFT_DEVICES
    finally:
        freeu._NO_FFT_DEVICES.discard(fake)


# ------------------------------------------------------------------------------------------------
# T-GATE
def test_tgate_gate_100_equals_uncached_exactly(env):
    from fewstep.patches.tgate import apply_tgate

    ref = sample(env.model, env.pos, env.neg)
    for sa in (False, True):
        assert torch.equal(sample(apply_tgate(env.model, 1.0, sa), env.pos, env.neg), ref)


def _batch_spy(model):
    import comfy.patcher_extension as pe

    sizes = []

    def spy(executor, *args, **kwargs):
        sizes.append(args[0].shape[0])
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    return m, sizes


def test_tgate_drops_uncond_after_gate_and_reuses_attention(env, caplog):
    from fewstep.patches.tgate import apply_tgate

    caplog.set_level(logging.INFO, logger="FewStep")
    spied, sizes = _batch_spy(env.model)
    out = sample(apply_tgate(spied, 0.4), env.pos, env.neg, steps=10)
    assert torch.isfinite(out).all()
    assert sizes == [2] * 4 + [1] * 6
    msg = [m for m in fewstep_logs(caplog) if "T-GATE" in m][-1]
    assert "gate at step 4/10" in msg and "96 cross-attention calls reused" in msg and "dropped on 6" in msg, msg
    caplog.clear()
    sa = sample(apply_tgate(env.model, 0.4, True), env.pos, env.neg, steps=10)
    msg = [m for m in fewstep_logs(caplog) if "T-GATE" in m][-1]
    assert "48 self-attention calls reused" in msg, msg
    assert not torch.equal(sa, out)


def test_tgate_cache_is_mean_of_cond_and_uncond(env):
    """After the gate every cross-attention returns the mean of the cond and uncond outputs of the
    same block at the last step before the gate (observed by a patch that runs after T-GATE's)."""
    from fewstep.patches.tgate import apply_tgate

    m = apply_tgate(env.model, 0.5)
    seen = []

    def spy(n, extra):
        b = extra["block"]
        seen.append(((b[0], b[1], extra.get("block_index", 0)), list(extra["cond_or_uncond"]), n.clone()))
        return n

    m.set_model_attn2_output_patch(spy)
    sample(m, env.pos, env.neg, steps=4, sampler="euler")
    per_step = len(seen) // 4
    assert per_step == 16 and len(seen) == 64
    before, after = seen[per_step:2 * per_step], seen[2 * per_step:3 * per_step]
    for (kb, cu, nb), (ka, cua, na) in zip(before, after):
        assert kb == ka and len(cu) == 2 and cua == [0]
        halves = dict(zip(cu, nb.chunk(2)))
        assert torch.allclose(na, (halves[0] + halves[1]) / 2, atol=1e-6, rtol=0)
        assert not torch.allclose(halves[0], halves[1])
    for (_, _, n2), (_, _, n3) in zip(after, seen[3 * per_step:]):
        assert torch.equal(n2, n3)  # reused unchanged on every later step


def test_tgate_composes_with_deepcache(env, caplog):
    from fewstep.patches.deepcache import apply_deepcache
    from fewstep.patches.tgate import apply_tgate

    caplog.set_level(logging.INFO, logger="FewStep")
    for m in (apply_tgate(apply_deepcache(env.model, 3), 0.4), apply_deepcache(apply_tgate(env.model, 0.4), 3)):
        caplog.clear()
        out = sample(m, env.pos, env.neg, steps=10)
        assert torch.isfinite(out).all()
        logs = fewstep_logs(caplog)
        assert any("4 full and 6 cached" in x for x in logs), logs
        assert any("dropped on 6" in x for x in logs), logs


# ------------------------------------------------------------------------------------------------
# every patch
def _all_patches(model):
    from fewstep.patches.deepcache import apply_deepcache
    from fewstep.patches.freeu import apply_freeu
    from fewstep.patches.tgate import apply_tgate

    return {
        "deepcache": lambda m: apply_deepcache(m, 3),
        "tgate": lambda m: apply_tgate(m, 0.4, True),
        "freeu": lambda m: apply_freeu(m, 2, 1.3, 1.4, 0.9, 0.2),
    }


def test_bypass_leaves_model_bit_identical_and_twice_is_once(env):
    ref = sample(env.model, env.pos, env.neg, size=16)
    opts_before = repr(sorted(env.model.model_options.get("transformer_options", {}).keys()))
    for name, patch in _all_patches(env.model).items():
        once = sample(patch(env.model), env.pos, env.neg, size=16)
        twice = sample(patch(patch(env.model)), env.pos, env.neg, size=16)
        assert torch.isfinite(once).all(), name
        assert torch.equal(once, twice), name
        assert not torch.equal(once, ref), name
        assert torch.equal(sample(env.model, env.pos, env.neg, size=16), ref), name
    assert repr(sorted(env.model.model_options.get("transformer_options", {}).keys())) == opts_before
    assert not env.model.wrappers or not any("fewstep" in str(k) for w in env.model.wrappers.values() for k in w)


def test_unsupported_models_error_at_patch_time(comfy):
    """The analytic model has no network: every patch refuses it, naming it. FreeU is UNet-only and
    refuses a DiT (Flux); DeepCache and T-GATE on DiTs are tested in test_host_patches_dit.py."""
    from fewstep.nodes.analytic import make_analytic_patcher
    from fewstep.patches._unet import UnsupportedModelError
    from fewstep.patches.deepcache import apply_deepcache
    from fewstep.patches.freeu import apply_freeu
    from fewstep.patches.tgate import apply_tgate

    analytic, _, _ = make_analytic_patcher("flow")
    for patch in (lambda m: apply_deepcache(m, 3), lambda m: apply_tgate(m, 0.4),
                  lambda m: apply_freeu(m, 1, 1.1, 1.2, 0.9, 0.2)):
        with pytest.raises(UnsupportedModelError, match="AnalyticBaseModel"):
            patch(analytic)
    with pytest.raises(UnsupportedModelError, match="Flux"):
        apply_freeu(_tiny_flux_patcher(), 1, 1.1, 1.2, 0.9, 0.2)


def _tiny_flux_patcher():
    import dit_factory
    return dit_factory.make_dit_patcher("flux", seed=0)


def env_node(comfy, name):
    return comfy.NODES[name]()


def test_nodes_widgets_and_errors(env, comfy):
    for name in ("FewStepDeepCache", "FewStepTGate", "FewStepFreeU"):
        cls = comfy.NODES[name]
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for w, (typ, opts) in group.items():
                assert opts.get("tooltip"), (name, w)
    dc = env_node(comfy, "FewStepDeepCache")
    with pytest.raises(ValueError, match=r"cache_depth must be in \[0, 11\]"):
        dc.patch(env.model, 3, 12, "uniform", 0.0, 1.0)
    with pytest.raises(ValueError, match="start_percent"):
        dc.patch(env.model, 3, 0, "uniform", 0.8, 0.2)
    with pytest.raises(ValueError, match="gate_percent"):
        env_node(comfy, "FewStepTGate").patch(env.model, 1.5, False)
    with pytest.raises(ValueError, match="version"):
        env_node(comfy, "FewStepFreeU").patch(env.model, 3, 1, 1, 1, 1, 0.0, 1.0, "custom")


def test_nonuniform_schedule_follows_the_paper():
    from fewstep.patches.deepcache import full_steps  # re-exported from core.cache_schedule

    assert full_steps(10, 3) == [0, 3, 6, 9]
    assert full_steps(10, 1) == list(range(10))
    s = full_steps(50, 5, "non-uniform", 0.3, 1.4)
    assert len(s) == 10 and s[0] == 0 and len(set(s)) == 10
    gaps = [b - a for a, b in zip(s, s[1:])]
    centre = min(range(len(s) - 1), key=lambda i: gaps[i])
    assert abs(s[centre] - 15) <= 5  # densest around the centre step (30% of 50)
    assert gaps[-1] > min(gaps)
