"""FewStep's reference model, the parts that need no ComfyUI: procedural data (``data``), the
autoencoder's configuration and latent normalisation (``autoencoder``), the UNet configuration and
file layout (``spec``), the quality metric (``classifier``: classifier + Fréchet distance),
training helpers (``training``) and checked weight files (``files``). Imports torch, numpy and
safetensors only; the networks are built from ComfyUI's classes in ``nodes/_reference_models.py``.
"""
