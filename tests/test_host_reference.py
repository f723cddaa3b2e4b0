"""The reference model inside a real ComfyUI: the UNet is ComfyUI's SD1.5-layout UNetModel with
cross-attention on three levels, its VAE works with ComfyUI's own VAEEncode/VAEDecode nodes, and a
``--smoke-test`` training run writes files that load back."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rm(comfy):
    from fewstep.nodes import _reference_models
    return _reference_models


def test_unet_is_comfyuis_sd15_layout_with_cross_attention(comfy, rm):
    import comfy.ldm.modules.diffusionmodules.openaimodel as om
    import comfy.model_base
    import comfy.model_detection
    import comfy.model_sampling
    import comfy.supported_models
    from comfy.ldm.modules.attention import SpatialTransformer

    from fewstep.patches._unet import UNetLayout, require_unet
    from fewstep.reference import spec

    base = rm.build_base_model(seed=0, device="cpu")
    assert type(base) is comfy.model_base.BaseModel and base.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(base.model_config, comfy.supported_models.SD15)
    assert isinstance(base.model_sampling, comfy.model_sampling.EPS)
    assert isinstance(base.model_sampling, comfy.model_sampling.ModelSamplingDiscrete)
    sd15 = comfy.model_sampling.ModelSamplingDiscrete(comfy.supported_models.SD15(spec.unet_config()))
    torch.testing.assert_close(base.model_sampling.sigmas, sd15.sigmas)
    assert float(base.model_sampling.sigma_max) == pytest.approx(14.6146, abs=1e-3)  # SD1's schedule

    unet = require_unet(rm.make_patcher(base), "test")
    assert isinstance(unet, om.UNetModel)
    mc = unet.model_channels
    assert len(spec.UNET_CONFIG["channel_mult"]) >= 3
    # every transformer cross-attends to a CONTEXT_DIM-wide context
    tfs = [m for m in unet.modules() if isinstance(m, SpatialTransformer)]
    assert len(tfs) == 2 * 3 + 1 + 3 * 3
    for tf in tfs:
        for blk in tf.transformer_blocks:
            assert blk.attn2.to_k.in_features == spec.CONTEXT_DIM
    # FreeU's stages: decoder blocks whose main-branch input is 4x and 2x the base width (seen
    # through the output_block_patch hook FreeU itself uses)
    seen = []

    def record(h, hsp, to):
        seen.append(h.shape[1])
        return h, hsp

    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), timesteps=torch.tensor([10.0]), context=torch.randn(1, spec.TOKENS, spec.CONTEXT_DIM),
             transformer_options={"patches": {"output_block_patch": [record]}})
    assert 4 * mc in seen and 2 * mc in seen
    lay = UNetLayout(unet)
    assert lay.n_in == lay.n_out == 9 and lay.max_depth == 8  # DeepCache's skip branches

    # ComfyUI's checkpoint detector reads the configuration back from the checkpoint-style keys
    sd = {spec.UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    det = comfy.model_detection.detect_unet_config(sd, spec.UNET_PREFIX)
    for k in ("model_channels", "channel_mult", "num_res_blocks", "transformer_depth", "context_dim",
              "in_channels", "out_channels", "use_linear_in_transformer", "transformer_depth_output"):
        assert list(det[k]) == list(spec.UNET_CONFIG[k]) if isinstance(det[k], (list, tuple)) else \
            det[k] == spec.UNET_CONFIG[k], k

    # runs on a batch with class tokens; the null tokens give a different prediction
    x = torch.randn(2, 4, 8, 8)
    torch.manual_seed(0)
    for p in unet.out.parameters():
        p.data.normal_(0, 0.1)
    ctx = torch.randn(2, spec.TOKENS, spec.CONTEXT_DIM)
    with torch.no_grad():
        a = unet(x, timesteps=torch.tensor([500.0, 500.0]), context=ctx)
        b = unet(x, timesteps=torch.tensor([500.0, 500.0]), context=torch.zeros_like(ctx))
    assert a.shape == x.shape and not torch.allclose(a, b)


def test_vae_works_with_comfyuis_vae_nodes_and_is_normalised(comfy, rm):
    from fewstep.reference import autoencoder, data

    ae = rm.build_autoencoder(seed=1)
    x, _ = data.make_dataset(64, 0)
    with torch.no_grad():
        z = ae.encode(x)
    assert z.shape == (64, 4, 8, 8)
    sd = autoencoder.fold_latent_normalisation(ae.state_dict(), z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3)))
    vae = rm.make_vae(sd)
    img = ((x + 1) / 2).movedim(1, -1)  # ComfyUI IMAGE: (N, H, W, 3) in [0, 1]
    (lat,) = comfy.nodes.VAEEncode().encode(vae, img)
    s = lat["samples"]
    assert s.shape == (64, 4, 8, 8)
    unit = s * autoencoder.SD15_SCALE_FACTOR  # what ComfyUI's SD15 latent format hands the UNet
    torch.testing.assert_close(unit.mean(dim=(0, 2, 3)), torch.zeros(4), atol=2e-3, rtol=0)
    torch.testing.assert_close(unit.std(dim=(0, 2, 3)), torch.ones(4), atol=2e-3, rtol=0)
    (out,) = comfy.nodes.VAEDecode().decode(vae, lat)
    assert out.shape == (64, 32, 32, 3) and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():  # the folded VAE decodes like the unfolded autoencoder
        ref = ((ae.decode(z).clamp(-1, 1) + 1) / 2).movedim(1, -1)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="missing"):
        rm.make_vae({k: v for k, v in sd.items() if k != "post_quant_conv.bias"})


def test_smoke_training_writes_files_that_load(comfy, rm, tmp_path):
    from fewstep.reference import files, spec

    env = dict(os.environ)
    env["COMFYUI_PATH"] = str(comfy.path)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train_reference.py"), "--smoke-test", "--threads", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ETA" in r.stdout
    summary = json.loads(r.stdout.split("train_reference: done ", 1)[1].splitlines()[0])
    unet_t, meta = files.load_weights(tmp_path / spec.UNET_FILE, required=(spec.TOKENS_KEY,))
    vae_t, _ = files.load_weights(tmp_path / spec.VAE_FILE, required=("post_quant_conv.weight",))
    clf_t, cmeta = files.load_weights(tmp_path / spec.CLASSIFIER_FILE, required=(spec.STATS_MU_KEY, spec.STATS_COV_KEY))
    assert summary["fingerprints"][spec.UNET_FILE] == meta["fingerprint"]
    assert meta["seed"] == 0 and meta["budget"] == "smoke" and meta["versions"]["comfyui"]
    assert meta["unet_config"] == spec.unet_config() and meta["data_spec"]["size"] == 32
    assert unet_t[spec.TOKENS_KEY].shape == (11, spec.TOKENS, spec.CONTEXT_DIM)
    assert sum((tmp_path / f).stat().st_size for f in spec.FILES) <= 25 * 2 ** 20
    base = rm.build_base_model({k: v.float() for k, v in unet_t.items()}, device="cpu")
    vae = rm.make_vae({k: v.float() for k, v in vae_t.items()})
    assert base.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32
    assert vae.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 32, 32, 3)
    assert clf_t[spec.STATS_COV_KEY].shape == (11, 128, 128)


def test_the_initialised_unet_learns(comfy, rm):
    """Regression: the UNet starts with only its output convolution at zero (as diffusion UNets do),
    not the GroupNorm before it, which left every weight but the output bias without a gradient
    (the loss stayed at 1.0 for 800 steps of a full run). One backward pass reaches every parameter,
    and a few steps on one batch lower the loss."""
    from fewstep.reference import spec
    base = rm.build_base_model(seed=3, device="cpu")
    unet = base.diffusion_model
    unet.train()
    params = list(unet.parameters())
    out_conv = unet.out[-1]
    assert float(out_conv.weight.abs().max()) == 0.0 and float(unet.out[0].weight.abs().min()) > 0
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 4, 8, 8, generator=g)
    t, ctx = torch.randint(0, 1000, (8,), generator=g).float(), torch.randn(8, spec.TOKENS, spec.CONTEXT_DIM, generator=g)
    opt = torch.optim.AdamW(params, lr=8e-4)
    losses = []
    for _ in range(8):
        loss = ((unet(x, timesteps=t, context=ctx, transformer_options=rm.pytorch_attention_options()) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if not losses:  # the output convolution's weight gets a gradient at once
            assert out_conv.weight.grad is not None and float(out_conv.weight.grad.abs().max()) > 0
        elif len(losses) == 1:  # once it is not zero, every parameter does
            dead = [n for n, p in unet.named_parameters() if p.grad is None or float(p.grad.abs().max()) == 0.0]
            assert not dead, dead[:10]
        losses.append(float(loss))
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_training_attention_is_comfyuis_attention(comfy):
    """tools/train_reference.py trains through a written-out softmax attention (faster here); it must
    be the function ComfyUI's own attention computes, forward and backward, for the UNet's self-
    attention (64 tokens) and its cross-attention to the class tokens (4), 8 heads."""
    import importlib.util

    import comfy.ldm.modules.attention as attention
    spec_ = importlib.util.spec_from_file_location("fewstep_train_reference", REPO / "tools" / "train_reference.py")
    tr = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(tr)
    g = torch.Generator().manual_seed(5)
    for lk in (64, 4):
        q = torch.randn(3, 64, 32, generator=g, dtype=torch.float64, requires_grad=True)
        k = torch.randn(3, lk, 32, generator=g, dtype=torch.float64, requires_grad=True)
        v = torch.randn(3, lk, 32, generator=g, dtype=torch.float64, requires_grad=True)
        got = tr._math_attention(attention.attention_basic, q, k, v, 8)
        want = attention.attention_basic(q, k, v, 8)
        torch.testing.assert_close(got, want)
        gw = torch.randn(want.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((got * gw).sum(), (q, k, v))
        ref = torch.autograd.grad((want * gw).sum(), (q, k, v))
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b)
