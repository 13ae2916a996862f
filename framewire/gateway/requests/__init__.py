"""The requests wing: sync runs, the durable queue and its dispatcher, input fetching,
output finalising and webhooks."""
