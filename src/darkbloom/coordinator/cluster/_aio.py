"""Bounding and stopping what the cluster layer awaits on Redis.

On Python 3.11, redis-py (8.1) wraps each socket write in ``asyncio.wait_for`` whenever the
client has a ``socket_timeout``, and 3.11's ``wait_for`` swallows a cancel that lands as the
write completes (CPython gh-86296): the command then returns normally in a task that was told to
stop, so a consumer who hung up would go unnoticed and a loop would never end. Clients for the
cluster are therefore made with ``socket_timeout=None`` (``client()``), and every command is
bounded here instead, with ``asyncio.timeout``, which hands cancels through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import TimeoutError as RedisTimeout

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 5.0


def client(redis_url: str, *, max_connections: int = 64) -> Redis:
    """A client as the cluster layer needs it: bytes in and out, no ``socket_timeout`` (see the
    module docstring; callers bound commands with ``bounded``), and a bounded pool that makes a
    burst of callers wait their turn (the default pool raises MaxConnectionsError instead)."""
    pool = BlockingConnectionPool.from_url(
        redis_url, max_connections=max_connections, timeout=COMMAND_TIMEOUT_S,
        decode_responses=False, socket_timeout=None, socket_connect_timeout=COMMAND_TIMEOUT_S,
        health_check_interval=30)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


@contextlib.asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[None]:
    """Redis must answer within ``seconds``, else redis.exceptions.TimeoutError (a RedisError,
    so callers handle it as any outage). A cancel passes through unchanged."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise RedisTimeout(f"Redis did not answer within {seconds:g} s") from exc


def cancelling() -> bool:
    """Whether the running task has been asked to stop: a loop catching RedisError checks it, so
    a client made with a ``socket_timeout`` elsewhere cannot keep it going."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(tasks: Iterable[asyncio.Task[None]], timeout_s: float = 5.0) -> None:
    """Cancel ``tasks`` (again, every 0.1 s, in case a cancel was absorbed) until all have ended."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.warning("cluster task %s did not stop within %g s", task.get_name(), timeout_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("cluster task %s had failed: %r", task.get_name(), task.exception())
