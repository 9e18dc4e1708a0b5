"""Observability: masked log lines, and the Prometheus metrics a worker serves."""
