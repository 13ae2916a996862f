"""Engine workers in their own processes, reached by edges over a persistent link.

An *edge* is a ``framewire serve`` process: it speaks the public protocols and reaches
engines only through :class:`framewire.engine.api.EngineClient`. A *worker* is a
``framewire worker`` process: one engine (one device, a set of apps) that batches frames
from every edge connected to it. Between them runs one TCP connection per edge-worker
pair carrying msgpack messages (:mod:`framewire.cluster.wire`).

- :mod:`~framewire.cluster.wire`: the messages, their encoding and the handshake (pure).
- :mod:`~framewire.cluster.link`: one end of a connection: framing, write coalescing,
  back-pressure, liveness.
- :mod:`~framewire.cluster.worker`: the worker's server around an engine.
- :mod:`~framewire.cluster.edge`: the edge's engine client over links to workers.
- :mod:`~framewire.cluster.placement`: which worker a session or request goes to (pure).
- :mod:`~framewire.cluster.directory`: where the workers are (a static list, local children).
- :mod:`~framewire.cluster.spawn`: worker processes started and supervised by an edge.

Nothing here imports torch or the gateway.
"""
