"""The gateway's stores on the state plane's Redis (``--redis-url``).

Each implements the interface its embedded (SQLite) counterpart implements, and the
same contract tests run against both: jobs (:mod:`.redis_jobs`), API keys
(:mod:`.redis_keys`), per-key request rates (:mod:`.redis_limits`) and usage
(:mod:`.redis_usage`). The connection itself is :mod:`framewire.state.connection`.
"""
