"""Script calls that are safe to re-run: each carries an id of its own (issue 14, finding 8).

redis-py (8.x) re-sends a command after a connection error or a timeout, up to ten
times, even when the server already ran it and only the reply was lost. A re-run
claim answered busy (the fence it had just bumped was not the message's) and stalled
the job for a whole lease; a re-run finish answered "fenced out"; a re-run park,
sweep hand-out or parked message answered or wrote differently.

Decision: every call of a script that changes the ledger carries a new call id (a
random UUID), and the script keeps its reply under that id (``once.lua``), for
:data:`CALL_REPLY_SECONDS`. A re-run of the same call finds the reply and answers it
again, changing nothing. A duplicate message's claim is another call with another id:
it is answered as what it is (busy), never taken for the caller's own.

Who re-sends: :class:`OnceScript` itself, after a connection error or a timeout, up to
:data:`CALL_RETRIES` times, with the same id: a blip between a worker and Redis no
longer fails the task or stalls its job. The clients are built with ``from_url``, whose
connections redis-py 8.2 makes with no retries of their own; should a client retry
anyway (another release's default, a ``retry=`` given), the id covers that re-send too.
Other commands are not re-sent.

What is not covered: a call whose re-sends all fail raises (``redis.ConnectionError``),
and the task's next attempt is a new call: it finds the job as the lost call left it
(a claim it made: busy until its lease passes, then resumed; never two owners at once).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from worker.adapters.store import lua
from worker.adapters.store.keys import call_key

log = logging.getLogger(__name__)

#: How long a call's reply is kept (s): far past the re-sends of one call (a few seconds,
#: plus each attempt's socket timeout), or a client's own (redis-py's: ten at the most,
#: a second apart).
CALL_REPLY_SECONDS = 600
#: How often a call whose reply was lost is sent again, and the first pause between (s),
#: doubled each time.
CALL_RETRIES = 3
CALL_RETRY_PAUSE = 0.1


class OnceScript:
    """A script whose calls each carry an id: its reply key last in KEYS, its TTL last in ARGV."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self._script = client.register_script(lua.source(name))

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script once for this call; sent again while its reply is lost."""
        call_keys = [*keys, call_key(uuid.uuid4().hex)]
        call_args = [*args, CALL_REPLY_SECONDS]
        for attempt in range(CALL_RETRIES):
            try:
                return self._script(keys=call_keys, args=call_args)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                # Info, not a warning: a re-send that succeeds lost nothing, and one that
                # fails raises to the caller, who reports it once.
                log.info("a script call lost its reply (%s); sending it again", error)
                time.sleep(CALL_RETRY_PAUSE * 2**attempt)
        return self._script(keys=call_keys, args=call_args)
