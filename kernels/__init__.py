"""FrameWire's fused pre/post-processing kernels (Triton), each with a torch reference."""
