"""Adapters: the core's ports and rules made real against the outside world.

``iamport`` speaks i'mport's V1 HTTP API, ``store`` owns the Redis layout (key
names, record fields, the Lua scripts, and the read views the CLI, the operator
commands and the metrics use), ``privacy`` seals personal data with Fernet (the
core's Sealing port), ``observe`` the logs and the Prometheus metrics.
They import the core and the config rules, never Celery.
"""
