"""Fuzzing a running worker with raw queue entries: it stays up, and every entry is accounted for.

Hypothesis generates queue entries (garbage bytes, invalid UTF-8, JSON that is not
an envelope, envelopes with keys missing or of the wrong type, bodies that are not
base64 or not JSON, wrong content types and encodings, wrong or missing task
arguments, huge strings, unknown fields, unknown task names, odd headers). They
are all LPUSHed onto ``cash_receipts`` of a private Redis served by a worker of
this module's own, so the result stream and ``cash_receipt:parked`` hold only
them. Then, per entry, what the contract says must have happened:

- an entry that names ``issue_cash_receipt`` in an envelope kombu can read ends
  in exactly one event for its task id (for one without a string id, the id the
  guard derives from its body): ``invalid_payload`` unless its payload is valid;
- every other entry is parked, and nothing else is;
- the worker is still up, a valid message still ends ``cash_receipt.issued``,
  and no generated identifier reaches its log.

The expectation is computed from the entry's bytes by :func:`expect`, a model
of kombu 5.7's envelope rules and of that contract, not from how it was made.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support.envelopes import ISSUE_TASK, QUEUE, body_of, envelope, envelope_dict
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import TEST_PII_KEY, ProcessOutput, running_worker, worker_env
from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.core.schemas import InvalidPayload, load_payload

# Raw entries go straight onto the Redis broker's list: with RabbitMQ there is no such list.
pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]

#: How many generated entries one batch pushes through the worker.
BATCH = 200
SEALER = Sealer([TEST_PII_KEY])
#: The reasons a payload is refused with: malformed, or sealed so that no key opens it.
REFUSED = frozenset({"invalid_payload", "payload_unreadable"})
DROP = object()
ID = "@@ID@@"
IMP = "@@IMP@@"
#: Recognisable identifiers: 0109 and seven digits.
IDENTIFIER = re.compile(rb"0109\d{7}")
FIELDS = (
    "imp_uid", "merchant_uid", "identifier", "identifier_type", "type", "company_tel",
    "company_name", "corp_reg_no", "buyer_name", "buyer_email", "buyer_tel", "tax_free",
)  # fmt: skip
#: Headers the worker reads besides task and id; a spec that changes one may end either way.
OTHER_HEADERS = (
    "retries", "eta", "expires", "timelimit", "argsrepr", "kwargsrepr",
    "lang", "root_id", "parent_id", "group",
)  # fmt: skip


# -- what is generated -------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One queue entry before it gets its unique ids.

    ``raw`` is a whole entry as it is; otherwise an envelope is built around
    ``body`` and ``edits`` change it (a path of keys, and a value or DROP).
    """

    label: str
    raw: bytes | None = None
    body: bytes = b""
    edits: tuple[tuple[tuple[str, ...], Any], ...] = ()
    invalid_utf8: bool = False


@dataclass(frozen=True)
class Entry:
    """One queue entry as pushed, and what the contract says must become of it."""

    label: str
    raw: bytes
    expected: Expected


@dataclass(frozen=True)
class Expected:
    """Parked (under ``key``, the envelope's id when it has one) or one event for ``key``.

    An event without a key is for a message of our task without a string id.

    ``valid``: True when the payload is valid (issued, or refused by i'mport),
    False when it must be ``invalid_payload``, None when either may hold.
    """

    parked: bool
    key: str | None
    valid: bool | None = None


small = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    small,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
huge_text = st.builds(
    lambda unit, size: (unit * size)[:size],
    st.text(min_size=1, max_size=3),
    st.integers(min_value=1_000, max_value=100_000),
)
identifiers = st.builds(lambda tail: "0109" + tail, st.text("0123456789", min_size=7, max_size=7))
field_values = (
    json_values
    | identifiers
    | huge_text
    | st.sampled_from(["phone", "person", "company", "business", "a@example.com", "", -1, 10**18])
)
payloads = st.fixed_dictionaries(
    {"imp_uid": st.just(IMP), "identifier": identifiers},
    optional={
        "identifier_type": st.just("phone"),
        "merchant_uid": st.text(max_size=20),
        "memo": field_values,  # unknown fields are dropped
        "phone_again": identifiers,
    },
).flatmap(
    lambda valid: (
        st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=3).map(
            lambda changed: {**valid, **changed}
        )
        | st.just(valid)
        | st.dictionaries(st.text(max_size=10), field_values, max_size=4)
        | json_values
    )
)
sealed_payloads = st.builds(
    lambda number: {"imp_uid": IMP, "identifier_sealed": SEALER.seal(number)},
    identifiers,
) | st.builds(lambda token: {"imp_uid": IMP, "identifier_sealed": token}, st.text(max_size=60))


def _triple(args: Any, kwargs: Any = None, embed: Any = None) -> bytes:
    return json.dumps([args, {} if kwargs is None else kwargs, embed]).encode()


def _no_v1_task(value: Any) -> bool:
    return not (isinstance(value, dict) and "task" in value)


bodies = st.one_of(
    st.builds(body_of, payloads | sealed_payloads),
    st.builds(lambda p: _triple([]), payloads),  # missing args
    st.builds(lambda p, q: _triple([p, q]), payloads, payloads),  # too many
    st.builds(lambda p: _triple([], {"payload": p}), payloads),  # kwargs instead
    st.builds(
        lambda p, k: _triple([p], k),
        payloads,
        st.dictionaries(st.text(max_size=8), small, min_size=1),
    ),
    st.builds(
        lambda p, e: _triple([p], {}, e), payloads, json_values.filter(lambda v: v is not None)
    ),
    st.builds(lambda p: json.dumps(p).encode(), payloads.filter(_no_v1_task)),  # a bare payload
    st.builds(lambda p: json.dumps({"args": [p], "kwargs": {}}).encode(), payloads),  # hybrid
    st.builds(lambda v: json.dumps(v).encode(), json_values.filter(_no_v1_task)),
    st.binary(max_size=300),  # not JSON (or, rarely, some JSON)
    st.builds(lambda p: b"\xff\xfe" + body_of(p), payloads),  # invalid UTF-8
    st.builds(lambda p: body_of(p).decode().encode("utf-16"), payloads),
)

task_names = st.text(max_size=40).filter(
    lambda name: name != ISSUE_TASK and not name.startswith("celery.")
)
edits = st.one_of(
    # the task name: unknown, or not a string at all
    st.tuples(
        st.just(("headers", "task")),
        task_names | json_values.filter(lambda v: v != ISSUE_TASK) | st.just(DROP),
    ),
    # the task id: odd but unique strings, other types, or none
    st.tuples(
        st.just(("headers", "id")),
        st.builds(lambda s: ID + s, st.text(max_size=30))
        | json_values.filter(lambda v: not isinstance(v, str))
        | st.just(DROP),
    ),
    st.tuples(
        st.just(("content-type",)),
        st.sampled_from(
            [
                "application/x-python-serialize",
                "application/x-yaml",
                "text/plain",
                "application/data",
                "APPLICATION/JSON",
                "",
                None,
                5,
                ["application/json"],
                {"a": 1},
                DROP,
            ]
        ),
    ),
    st.tuples(
        st.just(("content-encoding",)),
        st.sampled_from(["binary", "latin-1", "rot13", "utf-16", "", None, 7, ["utf-8"], DROP]),
    ),
    st.tuples(
        st.just(("properties", "body_encoding")),
        st.sampled_from(["BASE64", "utf-8", "rot13", None, 3, ["base64"], DROP]),
    ),
    st.tuples(
        st.just(("body",)),
        st.text(max_size=40) | small | st.sampled_from(["!!!", "abc", "=", DROP]),
    ),
    st.tuples(st.sampled_from([("headers",), ("properties",)]), json_values | st.just(DROP)),
    st.tuples(
        st.sampled_from([("properties", "delivery_tag"), ("properties", "delivery_info")]),
        json_values | st.just(DROP),
    ),
    st.tuples(
        st.tuples(st.just("headers"), st.sampled_from(OTHER_HEADERS)), json_values | st.just(DROP)
    ),
    st.tuples(st.tuples(st.just("headers"), st.text(max_size=10)), field_values),  # unknown header
    st.tuples(st.tuples(st.text(max_size=10)), field_values),  # unknown envelope key
)

specs = st.one_of(
    st.builds(lambda raw: Spec("bytes", raw=raw), st.binary(max_size=300)),
    st.builds(lambda raw: Spec("invalid utf-8", raw=b"\xc3\x28" + raw), st.binary(max_size=100)),
    st.builds(
        lambda value: Spec("json, not an envelope", raw=json.dumps(value).encode()),
        json_values | st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    ),
    st.builds(lambda body: Spec("our task, body fuzzed", body=body), bodies),
    st.builds(
        lambda body, changes, bad: Spec(
            "envelope fuzzed", body=body, edits=tuple(changes), invalid_utf8=bad
        ),
        bodies,
        st.lists(edits, min_size=1, max_size=3),
        st.booleans(),
    ),
)


def generated_specs(count: int) -> list[Spec]:
    """``count`` specs from hypothesis, always the same ones (derandomized)."""
    collected: list[Spec] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(specs)
    def collect(spec: Spec) -> None:
        collected.append(spec)

    collect()
    return collected


# -- building an entry and its expectation --------------------------------------------------


def materialise(spec: Spec, number: int, nonce: str) -> bytes:
    """The entry's bytes, with a unique task id, imp_uid and delivery tag."""
    if spec.raw is not None:
        return spec.raw
    task_id = f"fz-{nonce}-{number}"
    body = spec.body.replace(IMP.encode(), f"imp_fz{nonce}{number}".encode())
    message = envelope_dict(body, task_id=task_id)
    # What a bare send_task writes: the arguments themselves, identifiers included.
    message["headers"]["argsrepr"] = body.decode("utf-8", "replace")[:1024]
    for path, value in spec.edits:
        unique = isinstance(value, str) and value.startswith(ID)
        _edit(message, path, task_id + value[len(ID) :] if unique else value)
    raw = json.dumps(message).encode()
    if spec.invalid_utf8:
        raw = raw.replace(b'"lang": "js"', b'"lang": "j\xc3\x28s\xff"')
    return raw


def _edit(message: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target: Any = message
    for key in path[:-1]:
        if not isinstance(target, dict) or not isinstance(target.get(key), dict):
            return
        target = target[key]
    if not isinstance(target, dict):
        return
    if value is DROP:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


class Unreadable(Exception):
    """kombu cannot build a message from the entry: the transport parks it."""


def expect(raw: bytes, *, loose: bool) -> Expected:
    """What must become of ``raw``, by kombu 5.7's envelope rules and the worker's contract."""
    try:
        message, body = readable(raw)
    except Unreadable:
        return Expected(parked=True, key=None)
    headers = message.get("headers") or {}
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    if headers.get("task") != ISSUE_TASK or body is None:
        return Expected(parked=True, key=task_id)
    if task_id is None:
        # The guard derives an id; which one is its business: these are counted.
        return Expected(parked=False, key=None, valid=False)
    valid = payload_valid(message.get("content-type"), body)
    encoding = message.get("content-encoding")
    if valid and not (encoding is None or str(encoding).lower() in {"", "utf-8"}):
        # kombu decodes with the declared encoding, or fails to: either way one
        # event, issued or invalid_payload, is what the contract promises.
        return Expected(parked=False, key=task_id, valid=None)
    return Expected(parked=False, key=task_id, valid=None if loose and valid else valid)


def readable(raw: bytes) -> tuple[dict[str, Any], bytes | None]:
    """The envelope and its body as kombu builds them, or Unreadable.

    The body is None when kombu cannot encode it to bytes: Celery then parks the
    message as undecodable, whatever its task.
    """
    try:
        message = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        raise Unreadable from None
    if not isinstance(message, dict) or "properties" not in message:
        raise Unreadable
    properties = message["properties"]
    body = message.get("body")
    if body:
        if not isinstance(properties, dict):
            raise Unreadable
        body = _decoded_body(body, properties.get("body_encoding"))
    if not isinstance(properties, dict) or not _deliverable(properties):
        raise Unreadable
    headers = message.get("headers")
    if headers and not isinstance(headers, dict):
        raise Unreadable
    if isinstance(body, str):
        try:
            return message, body.encode("utf-8")
        except UnicodeEncodeError:
            return message, None
    return message, body if isinstance(body, bytes) else str(body or "").encode()


def _deliverable(properties: Mapping[str, Any]) -> bool:
    """What kombu's Redis QoS needs to hold the message unacked.

    A delivery tag (a Redis hash field: text or a number) and the exchange and
    routing key it restores the message to.
    """
    tag = properties.get("delivery_tag")
    info = properties.get("delivery_info")
    return (
        isinstance(tag, str | int | float)
        and not isinstance(tag, bool)
        and isinstance(info, dict)
        and {"exchange", "routing_key"} <= info.keys()
    )


def _decoded_body(body: Any, encoding: Any) -> Any:
    """kombu's ``decode_body``: base64 or nothing; any other encoding is unreadable."""
    if not encoding:
        return body
    if not isinstance(encoding, str):
        raise Unreadable
    if encoding.lower() == "utf-8":
        return body
    if encoding != "base64" or not isinstance(body, str):
        raise Unreadable
    try:
        return base64.b64decode(body.encode())
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Unreadable from None


def payload_valid(content_type: object, body: bytes) -> bool:
    """Whether a worker would find one valid payload in the body (and no other argument)."""
    arguments = _arguments(body) if content_type == "application/json" else None
    if arguments is None:
        return False
    args, kwargs = arguments
    if not isinstance(args, list) or not isinstance(kwargs, dict) or len(args) != 1 or kwargs:
        return False
    try:
        load_payload(args[0], SEALER)
    except InvalidPayload:
        return False
    return True


def _arguments(body: bytes) -> tuple[Any, Any] | None:
    """args and kwargs of a protocol-2 triple (or of a hybrid object), or None."""
    try:
        decoded = json.loads(body.decode("utf-8"))
    except ValueError:
        return None
    if isinstance(decoded, list) and len(decoded) == 3:
        args, kwargs, embed = decoded
        return (args, kwargs) if embed is None or isinstance(embed, dict) else None
    if isinstance(decoded, dict):
        return decoded.get("args"), decoded.get("kwargs", {})
    return None


def build(spec: Spec, number: int, nonce: str) -> Entry:
    """The entry of ``spec`` and its expectation."""
    raw = materialise(spec, number, nonce)
    loose = any(path[:1] == ("headers",) and path[-1] in OTHER_HEADERS for path, _ in spec.edits)
    return Entry(label=spec.label, raw=raw, expected=expect(raw, loose=loose))


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for this module only, so its stream and parked list hold only our entries."""
    server = RedisServer(Path(tmp_path_factory.mktemp("fuzz-redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_worker(own_redis: RedisServer, sandbox: Sandbox) -> Iterator[ProcessOutput]:
    """A fresh worker on an empty Redis: a crash in one test cannot hide the next one's."""
    own_redis.client().flushdb()
    with running_worker(worker_env(own_redis.url, sandbox.url)) as output:
        yield output


# -- checking ----------------------------------------------------------------------------


def push_and_settle(entries: list[Entry], client: redis.Redis, worker: ProcessOutput) -> str:
    """Push every entry, then a valid message, and wait until every entry is accounted for."""
    pipe = client.pipeline()
    for entry in entries:
        pipe.lpush(QUEUE, entry.raw)
    pipe.execute()
    results = ResultStream(client)
    sentinel = str(uuid.uuid4())
    payload = {"imp_uid": f"imp_{sentinel[:12]}", "identifier": "01055554321"}
    client.lpush(QUEUE, envelope(body_of(payload), task_id=sentinel))

    def settled() -> bool:
        # Entries are fetched in order, so once the sentinel's event exists every entry
        # has been fetched; once nothing is queued or unacked, every one has been handled.
        if "Unrecoverable error" in worker.text or not worker.alive:
            raise WorkerDied(f"the worker died:\n{worker.text[-3000:]}\n{stuck(client)}")
        return (
            bool(results.for_task(sentinel))
            and client.llen(QUEUE) == 0
            and client.hlen("unacked") == 0
        )

    wait_for(settled, timeout=120, interval=0.1, message="every entry to be handled")
    events = results.for_task(sentinel)
    assert [event["type"] for event in events] == ["cash_receipt.issued"]
    return sentinel


class WorkerDied(Exception):
    """The worker stopped: the entry that stopped it is still queued or unacked."""


def stuck(client: redis.Redis) -> str:
    """The entries still queued or unacked: the one that stopped the worker is among them."""
    kwargs = client.connection_pool.connection_kwargs
    raw = redis.Redis(host=kwargs["host"], port=kwargs["port"])
    left = [*raw.lrange(QUEUE, 0, -1), *raw.hvals("unacked")]
    return "still queued or unacked:\n" + "\n".join(repr(item)[:800] for item in left)


def assert_accounted_for(entries: list[Entry], client: redis.Redis, sentinel: str) -> None:
    """Per entry: one event or one parked record, as expected; nothing dropped, nothing extra."""
    events = [e for e in ResultStream(client).all() if e["data"]["task_id"] != sentinel]
    records = [json.loads(item) for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1)]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_task.setdefault(event["data"]["task_id"], []).append(event)
    parked_ids = Counter(record.get("id") for record in records)
    keys = {entry.expected.key for entry in entries}
    problems = [
        problem
        for entry in entries
        if (problem := _problem(entry, by_task.get(str(entry.expected.key), []), parked_ids))
    ]
    # Messages of our task without an id: counted, as their event ids are derived.
    idless = [e for e in entries if not e.expected.parked and e.expected.key is None]
    derived = [event for event in events if event["data"]["task_id"] not in keys]
    if len(derived) != len(idless):
        problems.append(
            f"{len(derived)} events for {len(idless)} messages without an id:\n"
            + "\n".join(f"  {entry.raw[:300]!r}" for entry in idless)
        )
    if any((event["data"].get("error") or {}).get("reason") not in REFUSED for event in derived):
        problems.append(f"a message without an id not refused as invalid_payload: {derived}")
    parked_idless = sum(1 for e in entries if e.expected.parked and e.expected.key is None)
    if parked_ids[None] != parked_idless:
        problems.append(
            f"{parked_ids[None]} parked records without an id; {parked_idless} expected"
        )
    for record in records:
        if not (record["reason"] and record["queue"] == QUEUE):
            problems.append(f"a parked record without its reason or queue: {record}")
    assert not problems, "\n".join(problems)
    # Nothing silently dropped, nothing extra: entries in == events + parked records.
    assert len(events) + len(records) == len(entries)


def _problem(entry: Entry, events: list[dict[str, Any]], parked_ids: Counter[Any]) -> str | None:
    """How one entry's outcome differs from its expectation, or None."""
    expected, shown = entry.expected, f"{entry.label}: {entry.raw[:500]!r}"
    if expected.key is None:
        return None
    if expected.parked:
        return None if parked_ids[expected.key] == 1 else f"not parked once: {shown}"
    if len(events) != 1:
        where = "parked instead" if parked_ids[expected.key] else "dropped"
        return f"{len(events)} events ({where}): {shown}"
    reason = (events[0]["data"].get("error") or {}).get("reason")
    if expected.valid is False and reason not in REFUSED:
        return f"{events[0]['type']} {reason}, not invalid_payload: {shown}"
    if expected.valid is True and reason in REFUSED:
        return f"a valid payload refused: {events[0]['data']['error']}: {shown}"
    return None


def assert_no_identifier_logged(entries: list[Entry], worker: ProcessOutput) -> None:
    """No generated identifier, from any entry, in the worker's output."""
    secrets = set()
    for entry in entries:
        secrets.update(IDENTIFIER.findall(entry.raw))
        try:
            _, body = readable(entry.raw)
        except Unreadable:
            continue
        secrets.update(IDENTIFIER.findall(body or b""))
    log = worker.text
    assert secrets
    leaked = sorted(secret.decode() for secret in secrets if secret.decode() in log)
    assert not leaked, leaked


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_generated_entries_are_each_accounted_for_and_the_worker_stays_up(
    own_worker: ProcessOutput, own_redis: RedisServer
) -> None:
    """200 generated entries: each ends in one event or one parked record; the worker goes on."""
    nonce = uuid.uuid4().hex[:8]
    entries = [build(spec, number, nonce) for number, spec in enumerate(generated_specs(BATCH))]
    categories = Counter((entry.expected.parked, entry.expected.valid) for entry in entries)
    assert categories[(True, None)] and categories[(False, False)], categories
    client = own_redis.client()
    sentinel = push_and_settle(entries, client, own_worker)
    assert_accounted_for(entries, client, sentinel)
    assert "Unrecoverable error" not in own_worker.text
    assert_no_identifier_logged(entries, own_worker)


def _poison(label: str, path: tuple[str, ...], value: Any) -> Spec:
    """A valid message for our task with one part changed."""
    body = body_of({"imp_uid": IMP, "identifier": "01090000001", "identifier_type": "phone"})
    return Spec(label, body=body, edits=((path, value),))


#: Minimal entries found by the fuzz test, each a bug it showed in its time.
POISON = {
    spec.label: spec
    for spec in (
        _poison("task name is a list", ("headers", "task"), [ISSUE_TASK]),
        _poison("task name is an object", ("headers", "task"), {"name": ISSUE_TASK}),
        _poison("content type is a list", ("content-type",), ["application/json"]),
        _poison("content encoding is a number", ("content-encoding",), 7),
        _poison("pickle content type", ("content-type",), "application/x-python-serialize"),
        _poison("retries header is not a number", ("headers", "retries"), "x"),
        # Found with another seed: the run read int(None) and raised, so no event.
        _poison("retries header is null", ("headers", "retries"), None),
        _poison("eta header is not a date", ("headers", "eta"), "not a date"),
        _poison("delivery tag is a list", ("properties", "delivery_tag"), [1]),
        _poison("delivery tag is null", ("properties", "delivery_tag"), None),
        _poison("delivery info has no exchange", ("properties", "delivery_info"), {"a": 1}),
        _poison("delivery info is missing", ("properties", "delivery_info"), DROP),
    )
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_minimal_poison_entries(
    name: str, own_worker: ProcessOutput, own_redis: RedisServer
) -> None:
    """Each minimal entry the fuzz found: accounted for, and the worker stays up."""
    entries = [build(POISON[name], 0, uuid.uuid4().hex[:8])]
    client = own_redis.client()
    sentinel = push_and_settle(entries, client, own_worker)
    assert_accounted_for(entries, client, sentinel)


def test_messages_without_an_id_and_with_the_same_body_each_end_in_an_event(
    own_worker: ProcessOutput, own_redis: RedisServer
) -> None:
    """Two distinct messages without a task id but with the same body: two events, not one."""
    body = body_of({"imp_uid": "imp_same_body", "identifier": "01090000002"})
    spec = Spec("no id, same body", body=body, edits=((("headers", "id"), DROP),))
    entries = [build(spec, number, uuid.uuid4().hex[:8]) for number in range(2)]
    assert entries[0].raw != entries[1].raw  # their delivery tags differ
    client = own_redis.client()
    sentinel = push_and_settle(entries, client, own_worker)
    assert_accounted_for(entries, client, sentinel)
