"""Redis key names that modules read without importing the module that writes them.

A reader of a key (the metrics' state collector, the CLI) must not import its writer
only for the name: ``worker.metrics`` did so for the ingress's dead letters, and that
one import closed an import cycle through the ingress, the producer and the Celery
app (issue 13). This module imports nothing, so anyone may import it; the store's key
module grows from it. The values are a contract with deployed Redis data: never
change one.
"""

from __future__ import annotations

#: The ingress's dead letters: stream entries it could not turn into a job (a list,
#: newest first; ``cashreceipt dead`` lists them).
DEAD_KEY = "cash_receipt:dead:ingress"
