"""Every Redis key name and prefix the package writes or reads: the store's layout.

The values are a contract with deployed Redis data: never change one. Scripts
(worker/adapters/store/lua/) never build a key name themselves: each key reaches them as KEYS, or,
for a key they can only name once they read the record (a waiter's marker), as a
prefix in ARGV.

A reader of a key (the metrics' state collector, the CLI) imports its name from here,
not from the module that writes it: ``worker.adapters.observe.metrics`` once imported the
ingress only for its dead letters' key, and that one import closed an import cycle through the
ingress, the producer and the Celery app (issue 13). So this module imports nothing
of the package, and anyone may import it: the i'mport adapter does, for its token's key.
"""

from __future__ import annotations

import hashlib

#: Ledger records (hashes), one per payment: ``cash_receipt:ledger:<imp_uid>``, and
#: beside each its history (``:history``) and its waiters (``:waiters``).
LEDGER_PREFIX = "cash_receipt:ledger:"
#: When the sweeper should look at each non-terminal job again (a sorted set).
DUE_KEY = "cash_receipt:ledger:due"
#: Jobs that failed for good, by when: the ledger's dead letters (a sorted set).
DEAD_JOBS_KEY = "cash_receipt:ledger:failed"
#: Once-only markers of terminal events, one per task id (strings: the event's id).
TERMINAL_PREFIX = "cash_receipt:terminal:"
#: The latest terminal event of each payment (strings: the event's id).
LAST_EVENT_PREFIX = "cash_receipt:last_event:"
#: Messages the workers could not run, set aside: dead messages (a list, newest first;
#: ``cashreceipt parked`` lists them).
DEAD_MESSAGES_KEY = "cash_receipt:parked"
#: One sweep at a time across the fleet (a string: the holder's token).
SWEEPER_LOCK_KEY = "cash_receipt:sweeper:lock"
#: The ingress's dead letters: stream entries it could not turn into a job (a list,
#: newest first; ``cashreceipt dead`` lists them).
DEAD_ENTRIES_KEY = "cash_receipt:dead:ingress"
#: The i'mport access token shared by every worker, one per merchant account (strings
#: with a TTL: ``iamport:token:<16 hex digits of the key's SHA-256>``).
TOKEN_PREFIX = "iamport:token:"  # noqa: S105 (a key name, not a secret)


def ledger_key(imp_uid: str) -> str:
    """The ledger record of one payment."""
    return f"{LEDGER_PREFIX}{imp_uid}"


def history_key(imp_uid: str) -> str:
    """The last attempts and outcomes of a payment's jobs, newest first.

    As many as ``worker.config.defaults.JOB_HISTORY_LENGTH`` (50).
    """
    return f"{LEDGER_PREFIX}{imp_uid}:history"


def waiters_key(imp_uid: str) -> str:
    """The task ids of other messages waiting on a payment's job in flight."""
    return f"{LEDGER_PREFIX}{imp_uid}:waiters"


def terminal_key(task_id: str) -> str:
    """The marker that makes a task's terminal event happen once."""
    return f"{TERMINAL_PREFIX}{task_id}"


def second_terminal_key(task_id: str) -> str:
    """The marker of a task's second terminal event: a partial refund's new receipt."""
    return terminal_key(f"{task_id}:2")


def status_key(imp_uid: str) -> str:
    """Points at the latest terminal event of a payment, for ``cashreceipt status``."""
    return f"{LAST_EVENT_PREFIX}{imp_uid}"


def token_key(imp_key: str) -> str:
    """The cached access token of one merchant account, named without its key in Redis."""
    return TOKEN_PREFIX + hashlib.sha256(imp_key.encode()).hexdigest()[:16]
