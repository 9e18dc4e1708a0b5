"""Whatever ids producers send, no two of the store's keys are one key (issue 14, finding 1).

An imp_uid or a task id is any string a producer sends. In layout 1 the imp_uids ``due``
and ``failed`` named the ledger's indexes, ``x:history`` and ``x:waiters`` another
payment's side keys, and the task id ``x:2`` the second marker of task ``x``. These
checks read every key function of :mod:`worker.adapters.store.keys` (a new one is
checked without being listed here) and every fixed key, and look for two names that
meet: for a key built from an id, every other id that another function could be given
to build the same string is a slice of that string of one length, so each check tries
them all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.adapters.store import keys
from worker.config.defaults import INGRESS_STREAM, RESULT_STREAM

#: Functions that build a Redis key from one id (a receipt key is an index member, no key).
KEY_FUNCTIONS: dict[str, Callable[[str], str]] = {
    name: value
    for name, value in vars(keys).items()
    if inspect.isfunction(value)
    and value.__module__ == keys.__name__
    and name.endswith("_key")
    and name not in {"payment_receipt_key", "record_key"}
}
#: record_key for every kind but a V1 payment (whose record is ledger_key's): by receipt
#: key, under ``job:``, and checked for every string, as issue 16's kinds will be.
KEY_FUNCTIONS["job record_key"] = lambda receipt_key: f"{keys.JOB_PREFIX}{receipt_key}"
#: Every key whose name is fixed: the layout's own, and the streams' defaults.
FIXED_KEYS = frozenset(
    {
        value
        for name, value in vars(keys).items()
        if name.endswith("_KEY") and isinstance(value, str)
    }
    | {RESULT_STREAM, INGRESS_STREAM}
)
#: Functions whose key is a digest of the id: a slice of the key is no id that builds it.
DIGESTS = frozenset({"token_key"})
#: The receipt keys' prefixes, today's and those issues 15 and 16 add.
RECEIPT_PREFIXES = (keys.PAYMENT_RECEIPT_PREFIX, "iamport-external:", "portone:")

#: Ids that met a layout key once, and text around them.
HOSTILE = st.sampled_from(
    ["due", "failed", "x:history", "x:waiters", "x:2", "", ":", "iamport:x", "ledger:x"]
)
IDS = st.one_of(HOSTILE, st.text(max_size=12), st.text(alphabet=":2adefhilrstuwx", max_size=12))


def test_the_checks_see_every_key() -> None:
    """The functions and fixed keys found are the layout's, so a new one cannot slip by."""
    assert {
        "ledger_key",
        "history_key",
        "waiters_key",
        "terminal_key",
        "second_terminal_key",
        "status_key",
        "token_key",
    } <= set(KEY_FUNCTIONS)
    assert {keys.DUE_KEY, keys.DEAD_JOBS_KEY, keys.LAYOUT_KEY, keys.DEAD_MESSAGES_KEY} <= FIXED_KEYS


def _ids_that_could_build(name: str, key: str) -> list[str]:
    """Every id the function ``name`` could be given to build ``key``: its slices of one length."""
    if name in DIGESTS:
        return []
    length = len(key) - len(KEY_FUNCTIONS[name](""))
    if length < 0:
        return []
    return [key[start : start + length] for start in range(len(key) - length + 1)]


def collisions(built_by: str, given_id: str) -> list[str]:
    """Every other (function, id) whose key is the one ``built_by(given_id)`` names."""
    key = KEY_FUNCTIONS[built_by](given_id)
    found = [f"{key!r} is a fixed key"] if key in FIXED_KEYS else []
    for name, function in KEY_FUNCTIONS.items():
        for other in _ids_that_could_build(name, key):
            if function(other) == key and (name, other) != (built_by, given_id):
                found.append(f"{built_by}({given_id!r}) == {name}({other!r}) == {key!r}")
    return found


def test_no_key_built_from_an_id_is_a_fixed_key() -> None:
    """For every id at all: each fixed key's slices are all the ids that could build it."""
    found = [
        f"{name}({other!r}) == {fixed!r}"
        for fixed in FIXED_KEYS
        for name, function in KEY_FUNCTIONS.items()
        for other in _ids_that_could_build(name, fixed)
        if function(other) == fixed
    ]
    assert found == []


@settings(max_examples=300, deadline=None)
@given(given_id=IDS)
def test_two_ids_never_share_a_key(given_id: str) -> None:
    """No function builds, from another id, a key any function builds from this one."""
    found = [
        collision for name in sorted(KEY_FUNCTIONS) for collision in collisions(name, given_id)
    ]
    assert found == []


@given(first=IDS, second=IDS)
def test_receipt_keys_name_one_job_across_kinds(first: str, second: str) -> None:
    """A V1 payment's receipt key is another kind's only if they are one job (the
    indexes hold receipt keys of every kind)."""
    built = {(prefix, first): prefix + first for prefix in RECEIPT_PREFIXES}
    for prefix in RECEIPT_PREFIXES:
        other = prefix + second
        meeting = [name for name, key in built.items() if key == other]
        assert meeting in ([], [(prefix, second)])
    assert keys.payment_of(keys.payment_receipt_key(first)) == first


def test_the_check_sees_the_collisions_of_layout_1() -> None:
    """Against layout 1's functions, the same checks find what finding 1 reported."""
    layout_1 = {
        "ledger_key": lambda imp_uid: f"cash_receipt:ledger:{imp_uid}",
        "history_key": lambda imp_uid: f"cash_receipt:ledger:{imp_uid}:history",
        "terminal_key": lambda task_id: f"cash_receipt:terminal:{task_id}",
        "second_terminal_key": lambda task_id: f"cash_receipt:terminal:{task_id}:2",
    }
    saved = dict(KEY_FUNCTIONS)
    KEY_FUNCTIONS.clear()
    KEY_FUNCTIONS.update(layout_1)
    try:
        assert "ledger_key('x:history') == history_key('x') == 'cash_receipt:ledger:x:history'" in (
            collisions("ledger_key", "x:history")
        )
        assert "terminal_key('x:2') == second_terminal_key('x') == 'cash_receipt:terminal:x:2'" in (
            collisions("terminal_key", "x:2")
        )
    finally:
        KEY_FUNCTIONS.clear()
        KEY_FUNCTIONS.update(saved)
    assert "cash_receipt:ledger:due" == layout_1["ledger_key"]("due") == keys.LAYOUT_1.due_key


@given(given_id=IDS)
def test_record_key_is_the_ledger_key_or_a_job_key(given_id: str) -> None:
    """A V1 payment keeps its record where layout 1 kept it; an external receipt's is the
    job record the checks above cover; a string of no kind names no record."""
    assert keys.record_key(f"iamport:{given_id}") == keys.ledger_key(given_id)
    external = f"iamport-external:{given_id}"
    assert keys.record_key(external) == KEY_FUNCTIONS["job record_key"](external)
    with pytest.raises(ValueError, match="not a receipt key"):
        keys.record_key(f"x-{given_id}")
