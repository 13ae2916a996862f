"""The storage wing: the file store (``store``) and its HTTP endpoints (``routes``)."""
