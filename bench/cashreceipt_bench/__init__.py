"""The benchmark: ``cashreceipt bench`` (see the README's Performance section).

Nothing here runs in a worker that serves receipts; the worker apps in this
package (:mod:`cashreceipt_bench.bare`, :mod:`cashreceipt_bench.prefork`) exist only as
baselines the benchmark measures our worker against, in the same run.
"""
