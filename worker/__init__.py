"""The cash-receipt worker: one receipt per cash payment, issued exactly once.

Layers, imported downward only (pyproject.toml's import-linter contracts):
``cli``, ``ingress``, ``demo`` and ``health`` (entry points) → ``celery`` and the
top-level ``tasks`` (Celery glue) → ``adapters`` (i'mport, the Redis store,
observability) → ``config`` (the settings' rules) → ``core`` (pure: the rules,
the ports, the job runner). README, "Layout", draws the tree and one receipt's path.
"""
