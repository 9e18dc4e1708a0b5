"""Stopping a `make run` demo that a test started, whatever state the test left it in."""

from __future__ import annotations

import subprocess


def stop_demo(demo: subprocess.Popen[str]) -> None:
    """Stop the demo as an operator would, so it stops its worker, Flower, sandbox and Redis.

    A failed assertion leaves the demo running: SIGKILL would orphan its children (a worker
    that goes on taking messages, a redis-server on a port), and they would outlive the test
    and the run. SIGTERM is what the demo turns into a full stop; SIGKILL only when it hangs.
    """
    if demo.poll() is not None:
        return
    demo.terminate()
    try:
        demo.wait(timeout=60)
    except subprocess.TimeoutExpired:
        demo.kill()
        demo.wait()
