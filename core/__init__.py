"""FewStep's shared core: noise families, model sigma tables, the analytic model and safe file I/O.

Imports only torch, numpy and safetensors, never ComfyUI.
"""
