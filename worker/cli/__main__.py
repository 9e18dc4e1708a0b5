"""``python -m worker.cli``: the ``cashreceipt`` command."""

import sys

from worker.cli import main

sys.exit(main())
