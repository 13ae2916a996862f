"""FrameWire's gateway: the ASGI app speaking fal's realtime, queue and storage protocols.

Never imports torch; it reaches the engine only through ``framewire.engine.api``.
"""
