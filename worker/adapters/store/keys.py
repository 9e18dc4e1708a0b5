"""Every Redis key name and prefix the package writes or reads: the store's layout.

The values are a contract with deployed Redis data: change one only with a new
:data:`LAYOUT_VERSION` and its migration (:mod:`worker.adapters.store.layout`). Scripts
(worker/adapters/store/lua/) never build a key name themselves: each key reaches them as KEYS,
or, for a key they can only name once they read the record (a waiter's marker), as a
prefix in ARGV.

A reader of a key (the metrics' state collector, the CLI) imports its name from here,
not from the module that writes it: ``worker.adapters.observe.metrics`` once imported the
ingress only for its dead letters' key, and that one import closed an import cycle through the
ingress, the producer and the Celery app (issue 13). So this module imports nothing
of the package, and anyone may import it: the i'mport adapter does, for its token's key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: Which layout of these keys the data is in: set to :data:`LAYOUT_VERSION` by the
#: migration (:func:`worker.adapters.store.layout.migrate`) once it is (a string).
LAYOUT_KEY = "cash_receipt:layout"
#: The layout this code reads and writes. 1: before issue 14 (indexes and side keys
#: under the ledger's prefix); 2: every key but a V1 payment's record outside it.
LAYOUT_VERSION = 2

# The namespace scheme (layout 2). A key is ``cash_receipt:<namespace>:<rest>``, and
# no namespace is a prefix of another, so keys of two namespaces never meet:
#
# - ``ledger:<imp_uid>``: a V1 payment's record (a hash); any string may follow.
# - ``job:<receipt key>``: the records of every other kind of job
#   (``job:iamport-external:<merchant_uid>``; ``job:portone:<payment_id>`` next).
# - ``history:``, ``waiters:``, ``status:`` ``<receipt key>``: a job's side keys.
# - ``terminal:``, ``terminal_then:`` ``<task id>``: the once-only markers of a message.
# - ``index:due``, ``index:failed``: the ledger's indexes, whose members are receipt keys.
# - ``layout``, ``parked``, ``sweeper:lock``, ``dead:ingress``: one key each.
#
# A receipt key names one job across kinds: ``iamport:<imp_uid>`` for a V1 payment,
# then ``iamport-external:<merchant_uid>`` and ``portone:<payment_id>``. No kind's
# prefix is a prefix of another's, so two jobs of two kinds never share one.

#: The receipt key of a V1 payment is this prefix and its imp_uid.
PAYMENT_RECEIPT_PREFIX = "iamport:"
#: The receipt key of a V1 external receipt is this prefix and its merchant_uid.
EXTERNAL_RECEIPT_PREFIX = "iamport-external:"
#: A PortOne V2 job's receipt key starts so, whatever its kind (one job per paymentId).
PORTONE_RECEIPT_PREFIX = "portone:"
#: Ledger records (hashes), one per V1 payment: ``cash_receipt:ledger:<imp_uid>``.
LEDGER_PREFIX = "cash_receipt:ledger:"
#: The records of every other kind of job, by receipt key (:func:`record_key`).
JOB_PREFIX = "cash_receipt:job:"
#: When the sweeper should look at each non-terminal job again (a sorted set of
#: receipt keys).
DUE_KEY = "cash_receipt:index:due"
#: Jobs that failed for good, by when: the ledger's dead letters (a sorted set of
#: receipt keys).
DEAD_JOBS_KEY = "cash_receipt:index:failed"
#: A job's last attempts and outcomes (lists), by receipt key.
HISTORY_PREFIX = "cash_receipt:history:"
#: The task ids waiting on a job in flight (sets), by receipt key.
WAITERS_PREFIX = "cash_receipt:waiters:"
#: Once-only markers of terminal events, one per task id (strings: the event's id).
TERMINAL_PREFIX = "cash_receipt:terminal:"
#: Once-only markers of a message's second terminal event (a partial refund's new
#: receipt), one per task id (strings: the event's id).
SECOND_TERMINAL_PREFIX = "cash_receipt:terminal_then:"
#: The latest terminal event of each job (strings: the event's id), by receipt key.
STATUS_PREFIX = "cash_receipt:status:"


@dataclass(frozen=True)
class _Layout1:
    """Layout 1, which only the migration reads: the indexes (sorted sets of imp_uids)
    and the side keys sat under the records' prefix, a payment's status pointer was
    named by its imp_uid, and a message's second marker sat beside its first."""

    due_key: str = "cash_receipt:ledger:due"
    dead_jobs_key: str = "cash_receipt:ledger:failed"
    history_suffix: str = ":history"
    waiters_suffix: str = ":waiters"
    second_terminal_suffix: str = ":2"
    last_event_prefix: str = "cash_receipt:last_event:"


LAYOUT_1 = _Layout1()
#: Messages the workers could not run, set aside: dead messages (a list, newest first;
#: ``cashreceipt parked`` lists them).
DEAD_MESSAGES_KEY = "cash_receipt:parked"
#: One sweep at a time across the fleet (a string: the holder's token).
SWEEPER_LOCK_KEY = "cash_receipt:sweeper:lock"
#: The reply of one mutating script call, kept a while by its call id, so that a
#: client's re-run of that call answers it again (strings with a TTL: JSON).
CALL_PREFIX = "cash_receipt:call:"
#: The ingress's dead letters: stream entries it could not turn into a job (a list,
#: newest first; ``cashreceipt dead`` lists them).
DEAD_ENTRIES_KEY = "cash_receipt:dead:ingress"
#: The i'mport access token shared by every worker, one per merchant account (strings
#: with a TTL: ``iamport:token:<16 hex digits of the key's SHA-256>``).
TOKEN_PREFIX = "iamport:token:"  # noqa: S105 (a key name, not a secret)


def payment_receipt_key(imp_uid: str) -> str:
    """The receipt key of a V1 payment: its job's name in the indexes and side keys."""
    return f"{PAYMENT_RECEIPT_PREFIX}{imp_uid}"


def payment_of(receipt_key: str) -> str | None:
    """The imp_uid a receipt key names, or None when it names another kind of job."""
    if receipt_key.startswith(PAYMENT_RECEIPT_PREFIX):
        return receipt_key[len(PAYMENT_RECEIPT_PREFIX) :]
    return None


def ledger_key(imp_uid: str) -> str:
    """The ledger record of one payment."""
    return f"{LEDGER_PREFIX}{imp_uid}"


def record_key(receipt_key: str) -> str:
    """The record of the job a receipt key names: a V1 payment's under the ledger's
    prefix (layout 1's place, kept), a V1 external receipt's and a PortOne V2 job's under
    ``job:``.

    Raises ValueError for a key of no kind this release knows: a record must never
    be named by a string that is no job's.
    """
    imp_uid = payment_of(receipt_key)
    if imp_uid is not None:
        return ledger_key(imp_uid)
    if receipt_key.startswith((EXTERNAL_RECEIPT_PREFIX, PORTONE_RECEIPT_PREFIX)):
        return f"{JOB_PREFIX}{receipt_key}"
    raise ValueError("not a receipt key of a kind this release knows")


def history_key(imp_uid: str) -> str:
    """The last attempts and outcomes of a payment's jobs, newest first.

    As many as ``worker.config.defaults.JOB_HISTORY_LENGTH`` (50).
    """
    return history_of(payment_receipt_key(imp_uid))


def history_of(receipt_key: str) -> str:
    """:func:`history_key` of any kind of job, by its receipt key."""
    return f"{HISTORY_PREFIX}{receipt_key}"


def waiters_key(imp_uid: str) -> str:
    """The task ids of other messages waiting on a payment's job in flight."""
    return waiters_of(payment_receipt_key(imp_uid))


def waiters_of(receipt_key: str) -> str:
    """:func:`waiters_key` of any kind of job, by its receipt key."""
    return f"{WAITERS_PREFIX}{receipt_key}"


def terminal_key(task_id: str) -> str:
    """The marker that makes a task's terminal event happen once."""
    return f"{TERMINAL_PREFIX}{task_id}"


def second_terminal_key(task_id: str) -> str:
    """The marker of a task's second terminal event: a partial refund's new receipt.

    Not ``terminal_key(task_id + ":2")``: a producer chooses task ids, and ``x:2`` is one.
    """
    return f"{SECOND_TERMINAL_PREFIX}{task_id}"


def status_key(imp_uid: str) -> str:
    """Points at the latest terminal event of a payment, for ``cashreceipt status``."""
    return status_of(payment_receipt_key(imp_uid))


def status_of(receipt_key: str) -> str:
    """:func:`status_key` of any kind of job, by its receipt key."""
    return f"{STATUS_PREFIX}{receipt_key}"


def token_key(imp_key: str) -> str:
    """The cached access token of one merchant account, named without its key in Redis."""
    return TOKEN_PREFIX + hashlib.sha256(imp_key.encode()).hexdigest()[:16]


def call_key(call_id: str) -> str:
    """Where the reply of one script call is kept (:mod:`worker.adapters.store.once`)."""
    return f"{CALL_PREFIX}{call_id}"
