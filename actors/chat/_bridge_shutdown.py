from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import anyio

from actors.chat._connection import CloseCode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors._ref import ActorRef
    from actors.chat._bridge_routes import ConnectionRoutes

#: Seconds each connection may take, at a graceful shutdown, to send what is queued for it before its 1001 close.
SHUTDOWN_DRAIN: Final = 1.0
_SHUTDOWN_POLL: Final = 0.005


async def wait_drained(connections: Sequence[ConnectionRoutes], close_timeout: float) -> None:
    """Wait, at a graceful shutdown, for the writers of connections told to close with ``SHUTDOWN_DRAIN``.

    Each writer first sends what is queued for its client (for at most ``SHUTDOWN_DRAIN`` seconds), then closes
    with 1001. Waiting for them (bounded) keeps the bridge's stop from overtaking the drain: a client gets the
    terminal events published before the shutdown, then the close.

    :param connections: the connections, each already told to close with a drain
    :param close_timeout: how long, past the drain, a writer still sending may take to close
    """
    writers = [connection.writer for connection in connections]
    with anyio.move_on_after(SHUTDOWN_DRAIN):
        await _wait_stopped(writers)
    # Past the drain: a writer still in a turn of sends to a client that reads too slowly may not even have read
    # its Close yet. Interrupted, it closes with 1001 now; stopped instead, its client would be told nothing.
    for connection in connections:
        interrupt = connection.progress.interrupt
        if interrupt is not None and connection.writer.is_alive:
            interrupt(CloseCode.GOING_AWAY, "server shutting down: drain deadline passed; resume with afterSeq")
    with anyio.move_on_after(close_timeout):
        await _wait_stopped(writers)


async def _wait_stopped(writers: list[ActorRef[Any]]) -> None:
    while any(writer.is_alive for writer in writers):  # noqa: ASYNC110  # writers signal only by stopping
        await anyio.sleep(_SHUTDOWN_POLL)
