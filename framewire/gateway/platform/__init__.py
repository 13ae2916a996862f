"""The platform wing: auth, API keys, tokens, rate limits, usage metering, metrics, logs,
the admin API and the catalog."""
