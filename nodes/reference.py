"""FewStep's trained reference model as ComfyUI nodes: the model itself (MODEL, conditioning, VAE,
an empty latent) and the quality score of its images (class accuracy, Fréchet distance).

The weights are the three files in ``reference/weights`` (trained by ``tools/train_reference.py``;
docs/reference-model.md). They are loaded once per process, checked (format, every tensor, the
fingerprint), and shared by every node that uses them.
"""
from __future__ import annotations

import os
import threading

import torch

import comfy.model_management
import comfy.patcher_extension

from ..core.io import ProfileError
from ..core.validate import check_choice, check_int
from ..reference import autoencoder as ae_spec
from ..reference import classifier as clf_mod
from ..reference import data, files, quality, spec
from . import _reference_models as rm
from .common import outputs

MODELS = ("unet_eps",)
MODEL_FILES = {"unet_eps": spec.UNET_FILE}
SHAPE_WRAPPER_KEY = "fewstep_reference_latent_shape"
LATENT_HW = data.DEFAULT_SPEC.size // ae_spec.DOWNSCALE

_lock = threading.Lock()
_cache: dict = {}


def _stamp(folder, names):
    out = []
    for n in names:
        p = os.path.join(folder, n)
        try:
            st = os.stat(p)
            out.append((n, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((n, None, None))
    return tuple(out)


def _load(kind: str, where: str):
    """The loaded, checked objects of one part ("unet_eps", "vae", "classifier"), cached by the
    files' size and mtime (a retrained file is picked up without a restart)."""
    folder = str(spec.WEIGHTS_DIR)
    name = {"vae": spec.VAE_FILE, "classifier": spec.CLASSIFIER_FILE}.get(kind) or MODEL_FILES[kind]
    key = (kind, folder, _stamp(folder, [name]))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ValueError(f"{where}: the reference weights {path} are missing; they ship with FewStep "
                             "(restore the file from the repository) or can be re-created with "
                             "`python tools/train_reference.py`")
        required = {"unet_eps": (spec.TOKENS_KEY,), "classifier": (spec.STATS_MU_KEY, spec.STATS_COV_KEY)}.get(kind, ())
        try:
            tensors, meta = files.load_weights(path, required=required)
            obj = _build(kind, tensors, meta)
        except ProfileError as e:
            raise ValueError(f"{where}: {e}") from None
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{where}: {name} does not fit the reference model ({e}); restore it from the "
                             "repository or re-create it with `python tools/train_reference.py`") from None
        for k in [k for k in _cache if k[0] == kind]:
            del _cache[k]
        _cache[key] = obj
        return obj


def _check_latent_shape(executor, x, *args, **kwargs):
    if tuple(x.shape[1:]) != (ae_spec.LATENT_CHANNELS, LATENT_HW, LATENT_HW):
        raise ValueError(
            f"FewStep Reference Model: the model was trained on {ae_spec.LATENT_CHANNELS}x{LATENT_HW}x{LATENT_HW} "
            f"latents (32x32 images); the sampler gave it {'x'.join(str(s) for s in x.shape[1:])}. Use the "
            f"node's latent output, or Empty Latent Image at width = height = {LATENT_HW * 8}.")
    return executor(x, *args, **kwargs)


def _build(kind, tensors, meta):
    if kind == "vae":
        return rm.make_vae(tensors), meta
    if kind == "classifier":
        clf = clf_mod.Classifier()
        clf.load_state_dict({k: v.float() for k, v in tensors.items() if not k.startswith("fewstep.")})
        clf.eval()
        stats = (tensors[spec.STATS_MU_KEY].float(), tensors[spec.STATS_COV_KEY].float())
        return (clf, stats), meta
    tokens = tensors[spec.TOKENS_KEY].float()
    if tuple(tokens.shape) != (data.NUM_CLASSES + 1, spec.TOKENS, spec.CONTEXT_DIM):
        raise ValueError(f"{spec.TOKENS_KEY} has shape {tuple(tokens.shape)}, expected "
                         f"{(data.NUM_CLASSES + 1, spec.TOKENS, spec.CONTEXT_DIM)}")
    cfg = rm.model_config()
    dtype = comfy.model_management.unet_dtype(model_params=sum(t.numel() for t in tensors.values()),
                                              supported_dtypes=cfg.supported_inference_dtypes)
    base = rm.build_base_model({k: v for k, v in tensors.items() if k != spec.TOKENS_KEY}, dtype=dtype,
                               device=comfy.model_management.unet_offload_device())
    patcher = rm.make_patcher(base)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, SHAPE_WRAPPER_KEY,
                                 _check_latent_shape)
    return (patcher, tokens), meta


def _eval_summary(meta) -> str:
    ev = meta.get("eval") or {}
    parts = [f"cfg {k[3:]}: {100 * v['accuracy']:.0f}%" for k, v in ev.items()
             if isinstance(v, dict) and "accuracy" in v]
    return ("; trained-run accuracy (dpmpp_2m, karras, 20 steps) " + ", ".join(parts)) if parts else ""


class FewStepReferenceModel:
    DESCRIPTION = (
        "FewStep's own small trained diffusion model, shipped with the pack (no download): an SD1.5-layout "
        "UNet in ComfyUI's own classes (eps, SD1's schedule, cross-attention on 3 levels, 6.2 M parameters) "
        "that draws one of 10 shapes (disc, ring, square, triangle, cross, star, hexagon, bar, crescent, "
        "heart) as a 32x32 image, with its VAE (4x8x8 latents). Every sampler, scheduler and patch treats "
        "it as an SD1.5 model, so it is the quick way to see what a FewStep method does to a trained "
        "network. positive draws the label, negative is the learned unconditional prompt (CFG). Score the "
        "decoded images with FewStep Quality.")
    CATEGORY = "sampling/fewstep/reference"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("MODEL", "model", "The diffusion model (eps, SD1.5 layout); connect it to KSampler or a FewStep patch."),
        ("CONDITIONING", "positive",
         "Conditioning that draws the label (for 'all classes': one class per image, cycling over the batch)."),
        ("CONDITIONING", "negative", "The unconditional conditioning (the learned null prompt), the negative for CFG."),
        ("VAE", "vae",
         "The model's VAE: VAE Decode turns the sampled latent into 32x32 images; VAE Encode takes 32x32 images."),
        ("LATENT", "latent", "An empty 4x8x8 latent batch of batch_size (the size the model was trained on)."))
    OUTPUT_NODE = True
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list(MODELS), {"tooltip": "Which reference model: unet_eps, the SD1.5-layout UNet (eps)."}),
            "label": (list(quality.LABEL_CHOICES), {"default": data.CLASS_NAMES[0], "tooltip":
                      "The shape to draw; 'all classes' draws class i % 10 for image i of the batch."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip":
                           "Images in the latent output (EmptyLatentImage at 64x64 does the same)."}),
        }}

    def load(self, model, label, batch_size):
        where = "FewStep Reference Model"
        check_choice(model, MODELS, "model", where)
        check_choice(label, quality.LABEL_CHOICES, "label", where)
        batch_size = check_int(batch_size, 1, 4096, "batch_size", where)
        (patcher, tokens), meta = _load(model, where)
        vae, _ = _load("vae", where)
        if label == quality.ALL_CLASSES:
            positive = [[tokens[:data.NUM_CLASSES].clone(), {}]]
        else:
            positive = rm.conditioning(tokens, data.label_index(label))
        negative = rm.conditioning(tokens, spec.NULL_INDEX)
        latent = {"samples": torch.zeros(batch_size, ae_spec.LATENT_CHANNELS, LATENT_HW, LATENT_HW)}
        text = (f"{model}: {label}, {batch_size} x {ae_spec.LATENT_CHANNELS}x{LATENT_HW}x{LATENT_HW} latent "
                f"-> 32x32 images; seed {meta.get('seed')}, {meta.get('budget')} training{_eval_summary(meta)}")
        return {"ui": {"text": [text]}, "result": (patcher, positive, negative, vae, latent)}


class FewStepQuality:
    DESCRIPTION = (
        "Scores images of FewStep Reference Model with the classifier shipped beside it: the class accuracy "
        "(the share of images the classifier reads as the label) and the Fréchet distance between the "
        "images' classifier features and the data's (like FID, in a 128-wide feature space of this data). "
        "The Fréchet distance falls as the sample count grows even for perfect images, so the node also "
        "shows what the same number of data images scores; compare runs at the same batch size.")
    CATEGORY = "sampling/fewstep/reference"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("STRING", "report",
         "One line: accuracy, Fréchet distance, the data's Fréchet distance at this N, the weakest class."),
        ("FLOAT", "accuracy", "Class accuracy, 0..1."),
        ("FLOAT", "frechet", "Fréchet distance to the data's features (lower is better; NaN below 2 images)."))
    OUTPUT_NODE = True
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "32x32 images: VAE Decode of the reference model's samples."}),
            "label": (list(quality.LABEL_CHOICES), {"default": data.CLASS_NAMES[0], "tooltip":
                      "The label the images were drawn with (the same as on FewStep Reference Model)."}),
        }}

    def score(self, images, label):
        where = "FewStep Quality"
        check_choice(label, quality.LABEL_CHOICES, "label", where)
        x = quality.check_images(images, where)
        (clf, stats), _ = _load("classifier", where)
        labels = quality.labels_for(label, len(x))
        s = quality.score(clf, stats, x, labels)
        floor = quality.data_floor(clf, stats, labels)
        report = quality.report_line(s, floor, label)
        return {"ui": {"text": [report]}, "result": (report, s["accuracy"], s["frechet"])}


NODE_CLASS_MAPPINGS = {"FewStepReferenceModel": FewStepReferenceModel, "FewStepQuality": FewStepQuality}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepReferenceModel": "FewStep Reference Model",
                              "FewStepQuality": "FewStep Quality"}
