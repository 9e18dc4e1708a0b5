"""Whether REDIS_URL's Redis keeps what it acknowledged: the worker and the ingress ask at start.

The ledger, the queue and the events are the only memory of which receipts
were issued. A Redis without an append-only file forgets, on a restart, every
write since its last snapshot; one that syncs the file only every second loses
up to a second of acknowledged writes when its host crashes; one whose
``maxmemory-policy`` is not ``noeviction`` drops keys under memory pressure
(the ``volatile-*`` policies pick among the keys with a TTL: finished ledger
records, the once-only markers). Each time a job is forgotten it can be issued a second time.

What is read, and what an answer that cannot be read does (README,
"Configuration", ``REDIS_DURABILITY``):

- ``aof_enabled`` (INFO persistence) and ``maxmemory_policy`` (INFO memory).
  They must be readable: INFO refused, or a field missing (a proxy, a managed
  service that hides it), counts as not durable. The compose ACL allows INFO.
- ``appendfsync``, through CONFIG GET. The compose ACL does not grant CONFIG:
  Redis cannot narrow CONFIG GET to one parameter, and the user would read
  every other one too (``requirepass``, ``masterauth``, TLS key passphrases).
  So a refused or unknown CONFIG GET is a warning, not a refusal: the compose
  file sets ``--appendfsync always`` next to the ACL. A value that is read and
  is not ``always`` refuses.

``REDIS_DURABILITY=accept-risk`` turns every refusal into a warning, printed at
every start, and still names what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.adapters.store.redis_client import as_text
from worker.config.defaults import REDIS_DURABILITY_CHOICES

#: The setting, and its two values.
SETTING = "REDIS_DURABILITY"
REQUIRE, ACCEPT_RISK = REDIS_DURABILITY_CHOICES


class NotDurable(Exception):
    """The Redis may lose what it acknowledged, and the risk was not accepted: the one line."""


@dataclass(frozen=True)
class Finding:
    """One thing that makes (or may make) acknowledged writes go missing."""

    text: str
    #: Whether it refuses the start under REDIS_DURABILITY=require (else it only warns).
    refuses: bool


def inspect(client: redis.Redis) -> list[Finding]:
    """What the Redis behind ``client`` says of its durability; empty when it keeps everything.

    A connection error is not caught: the caller decides whether to wait for Redis.
    """
    try:
        persistence = client.info("persistence")
        memory = client.info("memory")
    except redis.ResponseError as error:  # NOPERM, or INFO renamed away
        return [
            Finding(
                f"INFO cannot be read ({_reason(error)}), so nothing can be checked; fix: let "
                "this Redis user run INFO (docker/redis/users.acl does)",
                refuses=True,
            )
        ]
    return judge(persistence, memory, _appendfsync(client))


#: INFO's fields: section, field, the one good value, and what any other value means.
INFO_RULES = (
    (
        "persistence",
        "aof_enabled",
        "1",
        "appendonly is no (INFO aof_enabled:{}): a restart loses every write since the last "
        "snapshot; fix: run Redis with appendonly yes and appendfsync always",
    ),
    (
        "memory",
        "maxmemory_policy",
        "noeviction",
        "maxmemory-policy is {}: under memory pressure Redis evicts ledger records and queued "
        "messages; fix: maxmemory-policy noeviction",
    ),
)


def judge(
    persistence: Mapping[str, Any], memory: Mapping[str, Any], appendfsync: str | Exception
) -> list[Finding]:
    """The findings from INFO's two sections and CONFIG GET appendfsync (or its error)."""
    sections = {"persistence": persistence, "memory": memory}
    found: list[Finding] = []
    for section, field, good, wrong in INFO_RULES:
        value = sections[section].get(field)
        if value is None:
            found.append(
                Finding(
                    f"INFO {section} has no {field}, so it cannot be checked; fix: a Redis "
                    "that reports it",
                    refuses=True,
                )
            )
        elif as_text(value) != good:
            found.append(Finding(wrong.format(as_text(value)), refuses=True))
    if isinstance(appendfsync, Exception):
        found.append(
            Finding(
                f"appendfsync is not checked: CONFIG GET appendfsync cannot be read "
                f"({_reason(appendfsync)}); make sure Redis runs with appendfsync always "
                "(the compose stack's does)",
                refuses=False,
            )
        )
    elif as_text(persistence.get("aof_enabled")) == "1" and appendfsync != "always":
        found.append(
            Finding(
                f"appendfsync is {appendfsync}: a crash of the host loses acknowledged writes "
                "not yet on disk; fix: appendfsync always",
                refuses=True,
            )
        )
    return found


def verdict(found: Sequence[Finding], *, policy: str, shown_url: str) -> list[str]:
    """The warnings to print at this start; raises :class:`NotDurable` to refuse it."""
    refusing = [finding.text for finding in found if finding.refuses]
    notes = [f"cashreceipt: Redis at {shown_url}: {f.text}" for f in found if not f.refuses]
    if policy != ACCEPT_RISK:
        if refusing:
            raise NotDurable(
                f"cashreceipt: refusing to start: the Redis at {shown_url} may lose what it "
                f"acknowledged: {'; '.join(refusing)}. To start anyway, knowingly, set "
                f"{SETTING}={ACCEPT_RISK}"
            )
        return notes
    if refusing:
        risk = f"starting on a Redis that may lose what it acknowledged: {'; '.join(refusing)}"
    else:
        risk = "nothing is missing now, but a Redis that loses writes would be accepted too"
    return [
        f"cashreceipt: WARNING: {SETTING}={ACCEPT_RISK}: the Redis at {shown_url}: {risk}. "
        f"Set {SETTING}={REQUIRE} (the default) for production",
        *notes,
    ]


def check_durability(client: redis.Redis, *, policy: str, shown_url: str) -> list[str]:
    """:func:`inspect` then :func:`verdict`: the start's warnings, or :class:`NotDurable`."""
    return verdict(inspect(client), policy=policy, shown_url=shown_url)


def _appendfsync(client: redis.Redis) -> str | Exception:
    try:
        reply = client.config_get("appendfsync")
    except redis.ResponseError as error:  # NOPERM (the compose ACL), or CONFIG renamed away
        return error
    values = {as_text(key): as_text(value) for key, value in (reply or {}).items()}
    if "appendfsync" not in values:
        return LookupError("no such parameter in the reply")
    return values["appendfsync"]


def _reason(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
