"""The benchmark: ``cashreceipt bench`` (see the README's Performance section).

Nothing here runs in a worker that serves receipts; the worker apps in this
package (:mod:`worker.bench.bare`, :mod:`worker.bench.prefork`) exist only as
baselines the benchmark measures our worker against, in the same run.
"""
