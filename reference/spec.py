"""What the reference model is: the UNet configuration, the conditioning tokens, the files.

The UNet is ComfyUI's ``openaimodel.UNetModel`` in SD1.5's layout (``comfy.supported_models.SD15``:
8 heads, conv in/out projections of the transformers, eps prediction, SD1's discrete schedule
``linear_start`` 0.00085, ``linear_end`` 0.012, 1000 steps), at a small width:

* ``model_channels`` 32, ``channel_mult`` (1, 2, 4): three resolution levels 8x8, 4x4, 2x2 of
  32, 64 and 128 channels. FreeU's stages (main-branch width 4x and 2x the base) and DeepCache's
  skip branches exist as in SD1.5.
* ``num_res_blocks`` 2 per level, a cross-attention ``SpatialTransformer`` (depth 1) after every
  res block, in the middle block and in every decoder block (SD1.5 has none on its 4th level,
  which this model does not have).
* ``context_dim`` 64: the cross-attention context is a learned sequence of ``TOKENS`` vectors per
  class, plus one learned "null" sequence: the unconditional (negative) prompt.
* 6.2 M parameters (12.4 MB in fp16).

ComfyUI's checkpoint detector (``comfy.model_detection``) reads this configuration back from the
state dict when the keys carry the checkpoint prefix ``model.diffusion_model.`` (they do in the
shipped file); it does not call it "SD15" because it keys SD1.5 on 320 channels and a 768-wide
context, so the model is built with ``comfy.supported_models.SD15(UNET_CONFIG)`` directly.
"""
from __future__ import annotations

from pathlib import Path

from .data import NUM_CLASSES

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

UNET_FILE = "unet_eps.safetensors"
VAE_FILE = "vae.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
FILES = (UNET_FILE, VAE_FILE, CLASSIFIER_FILE)
#: the sha256 fingerprints (training.fingerprint) of the shipped files, written by the full run of
#: tools/train_reference.py (seed 0); tests/test_reference_quality.py checks the files against them
SHIPPED_FINGERPRINTS = {
    UNET_FILE: "95cc3ada724e8625c72ee093f0b0d252b5bd59b3dad2aa5d4dfd47373ea82349",
    VAE_FILE: "818cbd2c33dc23b4c337e0ad61675dc5b5273ae2c15cecfd056c6cc75a22f28c",
    CLASSIFIER_FILE: "686ab6a3ceadcf2bb3095486b096d19b5270c90af450114761be18f0388e04c7",
}

FORMAT = {UNET_FILE: "fewstep-reference-unet/1", VAE_FILE: "fewstep-reference-vae/1",
          CLASSIFIER_FILE: "fewstep-reference-classifier/1"}

UNET_PREFIX = "model.diffusion_model."
TOKENS_KEY = "fewstep.class_tokens"  # (NUM_CLASSES + 1, TOKENS, CONTEXT_DIM); the last row is "null"
STATS_MU_KEY = "fewstep.feature_mu"  # (NUM_CLASSES + 1, FEATURES): per class, then all classes
STATS_COV_KEY = "fewstep.feature_cov"  # (NUM_CLASSES + 1, FEATURES, FEATURES)

CONTEXT_DIM = 64
TOKENS = 4
NULL_INDEX = NUM_CLASSES

LEVELS = 3
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 8, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [2] * LEVELS, "transformer_depth": [1] * (2 * LEVELS),
    "transformer_depth_output": [1] * (3 * LEVELS), "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": CONTEXT_DIM,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


def unet_config() -> dict:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in UNET_CONFIG.items()}
