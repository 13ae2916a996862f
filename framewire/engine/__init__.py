"""FrameWire's engine: apps, batch scheduling and model runners.

``framewire.engine.api`` is the torch-free contract the gateway uses; the rest may use torch.
"""
