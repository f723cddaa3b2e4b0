"""FewStep Reference Model and FewStep Quality in a real ComfyUI: the shipped model through KSampler
(20 steps dpmpp_2m + karras), VAE Decode and FewStep Quality, in-process and headless through the HTTP
API, and clear errors on bad input.

Issue 16 asks for a class accuracy >= 90% on 64 samples. The shipped model (second version,
2026-12-02) reaches 53-61% at cfg 5 (two noise seeds; docs/reference-model.md): the test asserts what
holds -- the images are read as their label at least four times as often as chance, and more often
than the same model's unconditional samples -- so a regression shows, and the 90% gate stays open in
the issue."""
import shutil

import pytest
import torch

pytestmark = pytest.mark.host

CFG = 5.0          # the cfg docs/reference-model.md recommends for this model
MIN_ACCURACY = 0.4  # chance is 0.1; measured 0.53-0.61; the gate is 0.9 (not met, see the module doc)
SAMPLES = 64


@pytest.fixture(scope="module")
def nodes(comfy):
    import nodes as comfy_nodes

    from fewstep.nodes import reference
    return comfy_nodes, reference


def _pipeline(comfy_nodes, ref, label, batch, cfg=CFG, seed=0, steps=20):
    out = ref.FewStepReferenceModel().load("unet_eps", label, batch)
    model, pos, neg, vae, latent = out["result"]
    (s,) = comfy_nodes.KSampler().sample(model, seed, steps, cfg, "dpmpp_2m", "karras", pos, neg, latent)
    (img,) = comfy_nodes.VAEDecode().decode(vae, s)
    return out, img, ref.FewStepQuality().score(img, label)


def test_reference_model_through_ksampler_vae_decode_and_quality_reaches_90_percent(nodes):
    comfy_nodes, ref = nodes
    out, img, q = _pipeline(comfy_nodes, ref, ref.quality.ALL_CLASSES, SAMPLES)
    assert img.shape == (SAMPLES, 32, 32, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    report, acc, fd = q["result"]
    assert acc >= MIN_ACCURACY, report
    assert q["ui"]["text"] == [report] and "class accuracy" in report
    assert "unet_eps" in out["ui"]["text"][0]
    # the guidance matters: without the class (the negative as positive) the classes are not drawn
    model, pos, neg, vae, latent = out["result"]
    (s0,) = comfy_nodes.KSampler().sample(model, 0, 20, 1.0, "dpmpp_2m", "karras", neg, neg, latent)
    (img0,) = comfy_nodes.VAEDecode().decode(vae, s0)
    acc0 = ref.FewStepQuality().score(img0, ref.quality.ALL_CLASSES)["result"][1]
    assert acc0 < acc  # unconditional samples match the cycled labels about 1 time in 10


def test_one_label_conditions_on_that_class_tokens(nodes):
    _, ref = nodes
    from fewstep.reference import data, spec
    out = ref.FewStepReferenceModel().load("unet_eps", "star", 2)["result"]
    (_, tokens), _ = ref._load("unet_eps", "test")
    torch.testing.assert_close(out[1][0][0][0], tokens[data.CLASS_NAMES.index("star")])
    torch.testing.assert_close(out[2][0][0][0], tokens[spec.NULL_INDEX])
    every = ref.FewStepReferenceModel().load("unet_eps", ref.quality.ALL_CLASSES, 2)["result"][1][0][0]
    torch.testing.assert_close(every, tokens[:data.NUM_CLASSES])


def test_outputs_are_what_comfyui_expects(nodes, comfy):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd
    comfy_nodes, ref = nodes
    model, pos, neg, vae, latent = ref.FewStepReferenceModel().load("unet_eps", "ring", 3)["result"]
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert type(model.model) is comfy.model_base.BaseModel
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(vae, comfy.sd.VAE)
    assert latent["samples"].shape == (3, 4, 8, 8)
    assert pos[0][0].shape == neg[0][0].shape == (1, 4, 64)
    assert not torch.equal(pos[0][0], neg[0][0])
    # ComfyUI's VAEEncode takes 32x32 images and gives the 4x8x8 latent the UNet was trained on
    (enc,) = comfy_nodes.VAEEncode().encode(vae, torch.rand(2, 32, 32, 3))
    assert enc["samples"].shape == (2, 4, 8, 8)
    # the same objects on a second call (loaded once per process)
    again = ref.FewStepReferenceModel().load("unet_eps", "disc", 1)["result"]
    assert again[0] is model and again[3] is vae


def test_bad_input_gets_a_clear_error(nodes, tmp_path, monkeypatch):
    comfy_nodes, ref = nodes
    with pytest.raises(ValueError, match=r"FewStep Reference Model.*label must be one of \['disc', 'ring'.*got 'dog'"):
        ref.FewStepReferenceModel().load("unet_eps", "dog", 1)
    with pytest.raises(ValueError, match=r"model must be one of \['unet_eps'\]"):
        ref.FewStepReferenceModel().load("unet_flow", "disc", 1)
    with pytest.raises(ValueError, match=r"batch_size must be a whole number in \[1, 4096\]"):
        ref.FewStepReferenceModel().load("unet_eps", "disc", 0)
    with pytest.raises(ValueError, match=r"FewStep Quality: images must be 32x32"):
        ref.FewStepQuality().score(torch.rand(1, 64, 64, 3), "disc")
    with pytest.raises(ValueError, match=r"FewStep Quality.*label must be one of"):
        ref.FewStepQuality().score(torch.rand(1, 32, 32, 3), "dog")
    # a latent of the wrong size (Empty Latent Image at 512x512): the model says what it takes
    model, pos, neg, vae, _ = ref.FewStepReferenceModel().load("unet_eps", "disc", 1)["result"]
    (big,) = comfy_nodes.EmptyLatentImage().generate(512, 512, 1)
    with pytest.raises(Exception, match=r"trained on 4x8x8 latents.*gave it 4x64x64.*width = height = 64"):
        comfy_nodes.KSampler().sample(model, 0, 2, 3.0, "euler", "karras", pos, neg, big)


def test_a_corrupted_or_missing_weight_file_gets_a_clear_error(nodes, tmp_path, monkeypatch):
    _, ref = nodes
    from fewstep.reference import spec
    for name in spec.FILES:
        shutil.copy(spec.WEIGHTS_DIR / name, tmp_path / name)
    raw = bytearray((tmp_path / spec.UNET_FILE).read_bytes())
    raw[-100] ^= 0x55  # one byte of a tensor
    (tmp_path / spec.UNET_FILE).write_bytes(bytes(raw))
    monkeypatch.setattr(spec, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"FewStep Reference Model: unet_eps\.safetensors: its tensors do not match its fingerprint"):
        ref.FewStepReferenceModel().load("unet_eps", "disc", 1)
    (tmp_path / spec.CLASSIFIER_FILE).unlink()
    with pytest.raises(ValueError, match=r"FewStep Quality: the reference weights .*classifier\.safetensors are missing.*train_reference"):
        ref.FewStepQuality().score(torch.rand(2, 32, 32, 3), "disc")


@pytest.mark.server
def test_the_check_runs_headless_through_the_http_api(comfy_server):
    prompt = {
        "1": {"class_type": "FewStepReferenceModel",
              "inputs": {"model": "unet_eps", "label": "all classes (cycled over the batch)", "batch_size": SAMPLES}},
        "2": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": 20, "cfg": CFG, "sampler_name": "dpmpp_2m",
            "scheduler": "karras", "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 4],
            "denoise": 1.0}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 3]}},
        "4": {"class_type": "FewStepQuality", "inputs": {"images": ["3", 0], "label": "all classes (cycled over the batch)"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "fewstep/reference_check"}},
    }
    entry = comfy_server.run(prompt)
    text = entry["outputs"]["4"]["text"][0]
    acc = float(text.split("class accuracy ")[1].split("%")[0]) / 100
    assert acc >= MIN_ACCURACY, text
    assert entry["outputs"]["5"]["images"]
