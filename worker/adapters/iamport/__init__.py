"""i'mport (PortOne V1): its HTTP API, envelope and statuses, and its token cache.

Nothing above the adapters knows an i'mport URL, envelope or status.
"""
