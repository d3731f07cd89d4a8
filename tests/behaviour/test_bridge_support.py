# Shared helpers for the bridge tests (named test_bridge_* to sit with them; it holds no tests itself).
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from actors import Actor, ActorSystem, MailboxSpec, open_actor_system
from actors.chat._bridge_handle import BridgeHandle, spawn_bridge
from actors.chat._events import AgentEvent, StampedEvent, decode_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from actors.chat._bridge_messages import BridgeConfig, ConnectionStatistics
    from actors.chat._connection import MemorySink


@asynccontextmanager
async def open_bridge(config: BridgeConfig | None = None) -> AsyncIterator[tuple[ActorSystem, BridgeHandle]]:
    """An actor system with one unsupervised bridge in it."""
    async with open_actor_system() as system:
        yield system, spawn_bridge(system, config)


async def until(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Yield to other tasks until ``condition()`` holds (fails the test after ``timeout`` seconds)."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110  (polling is the point: the condition is on another actor's state)
            await anyio.sleep(0.001)


async def until_async(condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    """Like :func:`until`, for a condition that asks an actor."""
    with anyio.fail_after(timeout):
        while not await condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


async def settled(bridge: BridgeHandle, *, timeout: float = 10.0) -> None:
    """Wait until no connection has anything queued, held back, or closing."""
    with anyio.fail_after(timeout):
        while True:
            metrics = await bridge.get_metrics()
            stats = await bridge.connection_statistics()
            if (
                metrics.queued == 0
                and metrics.deferred_pending == 0
                and all(s.state == "open" and s.queued == 0 for s in stats)
            ):
                return
            await anyio.sleep(0.001)


def frames(sink: MemorySink) -> list[AgentEvent]:
    """The events a sink received, decoded."""
    return [decode_event(frame) for frame in sink.frames]


def meta(event: AgentEvent) -> dict[str, Any]:
    """An event's metadata (every delivered event has one: the bridge stamps it)."""
    assert event.metadata is not None
    return event.metadata


def seqs(sink: MemorySink, thread_id: str | None = None) -> list[int]:
    """The seqs a sink received (for one thread, or all)."""
    return [meta(e)["seq"] for e in frames(sink) if thread_id is None or meta(e)["threadId"] == thread_id]


def covered_seqs(sink: MemorySink, thread_id: str) -> list[int]:
    """Every seq of ``thread_id`` a sink's frames cover, expanding coalesced frames (``firstSeq``..``seq``)."""
    covered: list[int] = []
    for event in frames(sink):
        m = meta(event)
        if m["threadId"] == thread_id:
            covered.extend(range(m.get("firstSeq", m["seq"]), m["seq"] + 1))
    return covered


def assert_connection_conserved(stats: ConnectionStatistics) -> None:
    assert stats.received == stats.delivered + stats.coalesced + stats.discarded_on_close + stats.queued, stats


class TapRecorder(Actor[Any]):
    """Stands in for the monitor: records everything told to it; ``("block", event)`` parks it until set."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "block":
            await message[1].wait()
            return None
        if message == "get":
            return list(self.log)
        self.log.append(message)
        return None


def spawn_recorder(system: ActorSystem, *, capacity: int = 100_000) -> tuple[Any, list[Any]]:
    """A TapRecorder and the list it records into."""
    log: list[Any] = []
    return system.spawn(lambda: TapRecorder(log), mailbox=MailboxSpec(capacity=capacity)), log


def stamped_events(log: list[Any]) -> list[StampedEvent]:
    return [m for m in log if isinstance(m, StampedEvent)]
