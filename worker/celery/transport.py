"""kombu's Redis transport, made to survive queue entries that are not messages.

kombu pops an entry with BRPOP and parses it as a JSON envelope inside the
worker's event loop; an entry that is not JSON, or not an envelope (no
``properties``, a body that is not valid base64), raises there and stops the
worker. The entry is already off the list by then, so it is also lost.

This transport parses the entry first. One that cannot be a message is kept as a dead message
(:mod:`worker.adapters.store.dead_messages`) with the reason, and the worker goes on. Everything
else is delivered exactly as kombu would.

Tied to kombu 5.7's ``Channel._brpop_read`` (celery 5.7 pins kombu 5.7); the
fuzz tests drive this path against a real worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker.adapters.store.dead_messages import dead_message_record, keep_dead_message

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that a requeue Redis refuses does not stop the worker."""

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Requeue as kombu does; when Redis refuses, leave the message unacked.

        kombu moves the message from the unacked hash back to the queue in one
        MULTI/EXEC, and a Redis out of memory (or read-only, or refusing the
        command) discards all of it. The error would reach Celery's event loop,
        which catches only connection errors there: the worker stopped
        ("Unrecoverable error"), every task in hand with it. The message is
        still in the unacked hash, so kombu's visibility-timeout scan brings it
        back; this worker only stops counting it as in hand, or the refused
        requeues would use up its prefetch. A connection error still goes to
        Celery, which knows what to do with one.
        """
        if not requeue:
            super().reject(delivery_tag, requeue=False)
            return
        try:
            self.restore_by_tag(delivery_tag, leftmost=True)
        except ResponseError as refused:
            log.warning(
                "message %s could not go back to the queue (%s): it stays unacked, and "
                "returns once the visibility timeout has passed",
                delivery_tag,
                type(refused).__name__,
            )
        virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    """A Redis channel that keeps unreadable queue entries as dead messages, never crashing."""

    # A requeue Redis refuses leaves the message unacked instead of stopping the worker.
    QoS = QoS
    _shared_client: tuple[Any, Any] | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """A Redis client for one operation: one per connection pool, not one per call.

        kombu builds a new ``redis.Redis`` around the same pool for every ack,
        publish and event (redis-py 8's constructor is not cheap: about a
        twentieth of a thread-pool worker's CPU). A client over a pool is safe
        to share between threads; a new pool (after a fork or a reconnect)
        gets a new client.
        """
        if client:
            yield client
            return
        if self._pool is None and self.connection.client is None:
            # Celery closes a lost connection twice: ``collect()`` detaches the
            # transport from it, then ``close()`` closes the channel, whose
            # restore of the unacked messages would build a pool from no
            # connection (AttributeError: the worker stopped, "Unrecoverable
            # error", whenever Redis went away with a message in hand). A
            # connection error is what Celery ignores there and recovers from;
            # the messages stay in the unacked hash until the visibility scan.
            raise RedisConnectionError("the broker connection is closed")
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared[0] is not pool:
            shared = (pool, self._create_client())
            self._shared_client = shared
        yield shared[1]

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            envelope = self._readable(dest, item)
            if envelope is not None:
                self.connection._deliver(envelope, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _readable(self, queue: str, item: bytes) -> dict[str, Any] | None:
        """The entry as an envelope kombu can build a message from, or None once kept aside."""
        try:
            envelope = loads(bytes_to_str(item))
            # Builds the message as _deliver will: a missing key, a body that is not
            # base64 or an envelope that is not an object raises here, not there.
            self.Message(envelope, channel=self)
            _check_delivery(envelope)
        except Exception as error:  # noqa: BLE001 (anything kombu would die of)
            record = dead_message_record(
                reason=f"unreadable queue entry: {type(error).__name__}",
                queue=queue,
                envelope=None,
                raw=item,
            )
            with self.conn_or_acquire() as client:
                keep_dead_message(client, record)
            return None
        return envelope if isinstance(envelope, dict) else None


def _check_delivery(envelope: dict[str, Any]) -> None:
    """What kombu needs later to ack or requeue the message, checked now.

    A delivery tag that is not a scalar stops the worker at ack time; missing
    delivery info makes kombu drop the connection, with the entry already
    popped and so lost.
    """
    properties = envelope["properties"]
    tag = properties.get("delivery_tag")
    if isinstance(tag, bool) or not isinstance(tag, str | int | float):
        raise TypeError("delivery_tag must be a string or a number")
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        raise TypeError("delivery_info must name an exchange and a routing key")


class Transport(kombu_redis.Transport):
    """``broker_transport`` for the worker: kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
