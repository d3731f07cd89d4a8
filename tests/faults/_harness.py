# Shared workload and runtime helpers for the reliability figures (tests/faults/test_fig*.py); it holds no tests.
from __future__ import annotations

import os
import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from actors.chat._events import (
    AgentEvent,
    RunFinished,
    RunStarted,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
)
from supervisors._config import BridgeSettings, RuntimeConfig, SupervisionSettings
from supervisors.app import open_runtime
from supervisors.faults import BridgeClient, DeliveryLog, FaultHistory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from actors.chat._alert_sinks import AlertSink
    from supervisors.app import Runtime

#: Multiplies the figures' sizes (1 in CI; e.g. AGENTWATCH_FAULTS_SCALE=10 for the larger runs in docs/reliability.md).
SCALE = float(os.environ.get("AGENTWATCH_FAULTS_SCALE", "1"))


def scaled(n: int) -> int:
    """``n`` times the scale, at least 1."""
    return max(1, round(n * SCALE))


class Published(msgspec.Struct, frozen=True):
    """One event the workload published: which thread, its seq there (the bridge numbers each thread from 1 in the
    order it accepts), when, and whether it is a lifecycle event."""

    thread_id: str
    seq: int
    at: float
    type: str


class Workload:
    """A seeded stream of agent runs over ``threads`` threads: each run is RUN_STARTED, a text message in deltas, a
    tool call (start, args, end, result) and RUN_FINISHED. Events of different threads interleave at random.

    :param events_per_thread: about how many events each thread gets (whole runs: a little more)
    """

    def __init__(self, seed: int, *, threads: int, events_per_thread: int, prefix: str = "t") -> None:
        self.seed = seed
        rng = random.Random(seed)
        queues: list[list[tuple[str, str, AgentEvent]]] = []
        self.threads = [f"{prefix}{index}" for index in range(threads)]
        for thread_id in self.threads:
            events: list[tuple[str, str, AgentEvent]] = []
            run = 0
            while len(events) < events_per_thread:
                run += 1
                events.extend((thread_id, f"r{run}", event) for event in _run_events(thread_id, f"r{run}", rng))
            queues.append(events)
        # A random interleaving that keeps each thread's own order.
        self.plan: list[tuple[str, str, AgentEvent]] = []
        cursors = [0] * threads
        remaining = list(range(threads))
        while remaining:
            pick = rng.randrange(len(remaining))
            index = remaining[pick]
            self.plan.append(queues[index][cursors[index]])
            cursors[index] += 1
            if cursors[index] == len(queues[index]):
                remaining.pop(pick)
        self.published: list[Published] = []
        self._seqs: dict[str, int] = {}
        #: The loop time :meth:`drive` started at (a run's origin when two runs are compared).
        self.origin = 0.0

    def last_seqs(self) -> dict[str, int]:
        """Per thread, the last seq published so far."""
        last: dict[str, int] = {}
        for item in self.published:
            last[item.thread_id] = item.seq
        return last

    def published_at(self) -> dict[tuple[str, int], float]:
        """When each (thread, seq) was published."""
        return {(item.thread_id, item.seq): item.at for item in self.published}

    def publish(self, runtime: Runtime, thread_id: str, run_id: str, event: AgentEvent) -> None:
        """Publish one event through the runtime's bridge and record it (with the seq the bridge will give it)."""
        runtime.bridge.publish(thread_id, run_id, event)
        self._seqs[thread_id] = seq = self._seqs.get(thread_id, 0) + 1
        self.published.append(Published(thread_id, seq, anyio.current_time(), event.__struct_config__.tag))  # type: ignore[arg-type]

    async def drive(self, runtime: Runtime, *, rate: float, tick: float = 0.01) -> None:
        """Publish the whole plan at ``rate`` events per second (in bursts every ``tick`` seconds)."""
        per_tick = max(1, round(rate * tick))
        step = per_tick / rate  # the tick, corrected for rounding (a low rate sends one event per step)
        origin = self.origin = anyio.current_time()
        for start in range(0, len(self.plan), per_tick):
            await anyio.sleep_until(origin + (start // per_tick) * step)
            for thread_id, run_id, event in self.plan[start : start + per_tick]:
                self.publish(runtime, thread_id, run_id, event)


def _run_events(thread_id: str, run_id: str, rng: random.Random) -> list[AgentEvent]:
    message = f"{run_id}:m"
    call = f"{run_id}:call"
    deltas = rng.randint(2, 8)
    return [
        RunStarted(thread_id=thread_id, run_id=run_id),
        TextMessageStart(message_id=message),
        *(TextMessageContent(message_id=message, delta=f"<{i}>") for i in range(deltas)),
        TextMessageEnd(message_id=message),
        ToolCallStart(tool_call_id=call, tool_call_name="search"),
        ToolCallArgs(tool_call_id=call, delta='{"q":1}'),
        ToolCallEnd(tool_call_id=call),
        ToolCallResult(message_id=f"{run_id}:result", tool_call_id=call, content="ok"),
        RunFinished(thread_id=thread_id, run_id=run_id),
    ]


def fast_config(**supervision: Any) -> RuntimeConfig:
    """A runtime config for the figures: short ticks, and the supervision settings given."""
    return RuntimeConfig(
        bridge=BridgeSettings(tick_interval=0.05),
        supervision=SupervisionSettings(**supervision),
    )


@asynccontextmanager
async def runtime_with_clients(
    config: RuntimeConfig,
    threads: Sequence[str],
    *,
    per_thread: int,
    history: FaultHistory,
    sinks: Sequence[AlertSink] = (),
    register_bridge: bool = True,
) -> AsyncIterator[tuple[Runtime, list[BridgeClient]]]:
    """A runtime in its own actor system with ``per_thread`` clients subscribed to each thread (named
    ``<thread>/c<i>``, so two runs of the same workload can be compared client by client)."""
    async with open_runtime(config, sinks=sinks, register_bridge=register_bridge, epoch_ms=0) as runtime:
        clients: list[BridgeClient] = []
        for thread_id in threads:
            for index in range(per_thread):
                client = BridgeClient(runtime.bridge, principal="p", name=f"{thread_id}/c{index}", history=history)
                await client.connect()
                await client.subscribe(thread_id)
                clients.append(client)
        yield runtime, clients


async def until(condition: Callable[[], bool], *, timeout: float = 30.0, step: float = 0.01) -> None:
    """Poll ``condition`` (another actor's state) until it holds; fail after ``timeout`` (loop) seconds."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110  # the condition is other actors' state, which signals nothing
            await anyio.sleep(step)


async def all_received(clients: Sequence[BridgeClient], workload: Workload, *, timeout: float = 30.0) -> None:
    """Wait until every client has received its thread's last published seq."""
    last = workload.last_seqs()

    def done() -> bool:
        return all(
            (client.log.last_seq(thread_id) or 0) >= last.get(thread_id, 0)
            for client in clients
            for thread_id in client.log.starts
        )

    await until(done, timeout=timeout)


def logs(clients: Sequence[BridgeClient]) -> list[DeliveryLog]:
    """The clients' delivery logs."""
    return [client.log for client in clients]


def delivery_latencies(clients: Sequence[BridgeClient], workload: Workload) -> list[float]:
    """For every (client, seq) received: arrival time minus publish time, in seconds."""
    published = workload.published_at()
    return [at - published[key] for client in clients for key, at in client.log.times().items() if key in published]


def report(figure: str, **figures: object) -> None:
    """Append a figure's measured numbers to the JSON-lines file named by AGENTWATCH_FAULTS_REPORT (if set): how
    docs/reliability.md's tables are produced, at the size AGENTWATCH_FAULTS_SCALE sets."""
    path = os.environ.get("AGENTWATCH_FAULTS_REPORT")
    if not path:
        return
    line = msgspec.json.encode({"figure": figure, "scale": SCALE, "backend": _backend(), **figures})
    with open(path, "ab") as out:
        out.write(line + b"\n")


def _backend() -> str:
    try:
        import sniffio

        return sniffio.current_async_library()
    except Exception:  # outside an event loop (fig10 runs both backends itself)
        return "-"
