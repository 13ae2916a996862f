"""FrameWire's fused kernels for the frame path, each a Triton kernel with a torch reference.

``preprocess`` (decoded images → model input), ``postprocess`` (decoded images → uint8
pixels) and ``group_norm_silu`` (GroupNorm + SiLU, with a swap for diffusers models), each
registered as a ``torch.ops.framewire`` custom op; ``runtime`` holds the ``FRAMEWIRE_KERNELS``
switch and the fallback reports. Importing this package loads nothing but the standard library.
"""
