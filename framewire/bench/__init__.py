"""The latency benchmark harness behind ``framewire bench``: a realtime load generator,
baseline servers driven by the same load, results, plots and ``RESULTS.md``."""
