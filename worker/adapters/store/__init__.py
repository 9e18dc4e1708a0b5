"""The Redis store: the one owner of the Redis layout.

Every key name and prefix lives in :mod:`worker.adapters.store.keys`; the scripts in
``lua/`` receive them as KEYS or ARGV and never build one from a literal.
"""
