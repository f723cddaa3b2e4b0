"""FewStep's model patches (DeepCache, T-GATE, FreeU) on ComfyUI's ModelPatcher: the one part of the
pack that knows ComfyUI's UNet internals. Importing this package needs ComfyUI."""
