"""The state plane: the Redis (or Valkey) server that edges and workers share (DESIGN §7).

Only used when ``--redis-url`` is given. :mod:`framewire.state.connection` is the one
place a process connects to it, checks it, watches its health and hears its notices;
the stores that keep their data there live with the code that owns the data (the
gateway's stores, the cluster's worker registry). Nothing here imports a web framework,
the gateway, the cluster or the engine, so both sides may use it. Frames never pass
through here.
"""
