"""FrameWire: a self-hostable realtime inference edge for generative media.

Everything lives in this one import namespace: ``framewire.gateway`` (the ASGI server and
its protocols; never imports torch), ``framewire.engine`` (apps, batching, model runners),
``framewire.kernels`` (fused Triton kernels with torch references) and ``framewire.bench``
(the latency harness). ``framewire.cli`` is the composition root that wires them together.
"""
