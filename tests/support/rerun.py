"""Re-running a script call as a client retry does: the server ran it, the reply was lost.

redis-py re-sends a command after a connection error or a timeout even when the server
already ran it (issue 14, finding 8). Two ways to make that happen on demand:

- :class:`RerunningRedis`, a client that sends each script call (EVALSHA, EVAL) twice
  and answers the second reply: exactly what the server sees from a retry, without the
  network (the model test's "re-run a script as a client retry would");
- :class:`ReplyCutter`, a TCP proxy in front of a real redis-server that forwards the
  next EVALSHA, waits for the server's reply, and closes the client's connection
  instead of passing the reply on: redis-py's own retry, over a real dropped connection.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis

_SCRIPT_CALLS = frozenset({"EVALSHA", "EVAL"})


class RerunningRedis(redis.Redis):
    """A client whose next ``rerun`` script calls each run twice on the server.

    ``client.rerun = 1`` re-sends the next script call once its reply came; the
    caller gets the second reply, as after a retry. ``rerun = -1``: every call.
    """

    rerun = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in _SCRIPT_CALLS and self.rerun:
            # A script not loaded yet answers NOSCRIPT, and redis-py loads it and calls
            # again: that call is the one re-run.
            super().execute_command(*args, **options)
            self.rerun -= 1 if self.rerun > 0 else 0
        return super().execute_command(*args, **options)


class ReplyCutter:
    """A proxy to ``port`` on 127.0.0.1 that loses the reply of a script call on demand.

    :meth:`cut_next` arms it: the next EVALSHA that passes is forwarded, and once the
    server's first reply bytes arrive (the script ran) both connections close, the
    reply unsent. redis-py then reconnects through the proxy and re-sends the command.
    """

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._armed = 0
        self._lock = threading.Lock()
        #: How many replies were cut so far.
        self.cut = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, server_url: str) -> str:
        """``server_url`` pointed at this proxy."""
        return server_url.replace(f":{self._target}/", f":{self.port}/")

    def cut_next(self, times: int = 1) -> None:
        """Lose the replies of the next ``times`` script calls (re-sends included)."""
        with self._lock:
            self._armed = times

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def _take(self) -> bool:
        with self._lock:
            if self._armed <= 0:
                return False
            self._armed -= 1
            return True

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            cutting = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, cutting), daemon=True).start()
            threading.Thread(
                target=self._down, args=(upstream, client, cutting), daemon=True
            ).start()

    def _up(self, client: socket.socket, upstream: socket.socket, cutting: threading.Event) -> None:
        """Client to server; marks the connection to cut when an armed EVALSHA passes."""
        try:
            while chunk := client.recv(65536):
                if b"EVALSHA" in chunk.upper() and self._take():
                    cutting.set()
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(
        self, upstream: socket.socket, client: socket.socket, cutting: threading.Event
    ) -> None:
        """Server to client; a reply to cut is read (the script ran) and never passed on."""
        try:
            while chunk := upstream.recv(65536):
                if cutting.is_set():
                    self.cut += 1
                    break
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client, upstream)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@contextmanager
def reply_cutter(port: int) -> Iterator[ReplyCutter]:
    """A :class:`ReplyCutter` in front of the redis-server on ``port``, closed after."""
    cutter = ReplyCutter(port)
    try:
        yield cutter
    finally:
        cutter.close()
