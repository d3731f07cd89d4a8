from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from _common import BACKENDS, alternate, emit, figure, parse_args, progress, repeated
from ask import Echo  # the ask floor's trivial actor, as ask.py measures it

from actors.chat import (
    ChatEventMonitorHandle,
    MemorySink,
    MonitorConfig,
    agent_completed,
    agent_started,
    agent_thinking,
    spawn_bridge,
    tool_completed,
    tool_executing,
)
from supervisors import RuntimeConfig, open_runtime

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors import ActorRef
    from actors.chat import AgentEvent, BridgeHandle

# The operations the seed report times ("Phase 4 validation"), each timed here through the public API of a running
# application tree (open_runtime: bridge, monitor and the bridge registered as a component, as an embedding backend
# runs them), against the runtime primitive it is built on, measured in the same event loop. The seed's averages
# (ms) are kept in each figure as `seed_ms`, with `beats_seed`.
SEED_MS = {
    "record_event": 0.001,
    "check_health": 0.060,
    "component audit": 0.062,
    "audit_bridge_health": 0.062,
    "observer notification": 0.042,
    "monitoring per chat interaction": 0.01,
}
#: Runs in flight in the monitor while it is timed: its health report and the audit read a tracker that holds them.
RUNS_IN_FLIGHT = 1_000
#: Calls per timed block (sync calls) and round trips per block (asks); blocks alternate with their floor's.
CALLS = 200
ASKS = 20
#: Chat interactions per block of the per-interaction figure (5 events each, the seed's unit).
INTERACTIONS = 50
#: Audits off (the bench calls the audit itself); the monitor checks its deadlines every second, as by default.
MONITOR_CONFIG = MonitorConfig(audit_interval=0)


class Component:
    """A plain registered component (the seed's MonitorableComponent): it keeps the observer it is given."""

    def __init__(self) -> None:
        self.observer: Any = None

    async def get_health_status(self) -> dict[str, str]:
        return {"status": "healthy"}

    async def get_metrics(self) -> dict[str, int]:
        return {"requests": 0}

    def register_monitor_observer(self, observer: Any) -> None:
        self.observer = observer


def interaction(thread_id: str, run_id: str) -> list[AgentEvent]:
    """The seed's chat interaction, in its own event names: five events."""
    call = f"{run_id}:call"
    return [
        agent_started(thread_id, run_id),
        agent_thinking(thread_id, run_id),
        tool_executing(call, "search", thread_id=thread_id, run_id=run_id),
        tool_completed(call, thread_id=thread_id, run_id=run_id),
        agent_completed(thread_id, run_id),
    ]


def per_call_block(call: Callable[[], None], calls: int) -> float:
    """µs per call of ``call`` in a tight loop (CPU time of this thread)."""
    start = time.thread_time_ns()
    for _ in range(calls):
        call()
    return (time.thread_time_ns() - start) / calls / 1000


async def timed_block(call: Callable[[], None], calls: int, drained: Callable[[], bool]) -> float:
    """:func:`per_call_block`, then wait (untimed) until the receiver has handled everything."""
    elapsed = per_call_block(call, calls)
    while not drained():
        await anyio.lowlevel.checkpoint()
    return elapsed


async def ask_block(ask: Callable[[], Any], asks: int) -> float:
    """µs per round trip of ``ask`` (wall clock: the receiver's work is part of a round trip)."""
    start = time.perf_counter()
    for _ in range(asks):
        await ask()
    return (time.perf_counter() - start) / asks * 1e6


class Interactions:
    """Publishes whole chat interactions to one bridge and times them until every frame reached its sink."""

    def __init__(self, name: str, bridge: BridgeHandle, monitor: ActorRef[Any] | None, threads: int) -> None:
        self.name = name
        self.bridge = bridge
        self.monitor = monitor
        self.threads = [f"{name}-t{i}" for i in range(threads)]
        self.sinks: list[MemorySink] = []
        self.published = 0
        self.rounds = 0

    async def connect(self) -> None:
        for thread_id in self.threads:
            sink = MemorySink(keep_frames=False)
            connection_id = await self.bridge.connect(sink, principal="bench")
            await self.bridge.subscribe(connection_id, thread_id)
            self.sinks.append(sink)

    async def block(self, interactions: int) -> float:
        """CPU µs per interaction: published, routed to its sink, and (monitor attached) handled by the monitor."""
        self.rounds += 1
        events = []
        for i in range(interactions):
            thread_id = self.threads[i % len(self.threads)]
            run_id = f"{self.name}-r{self.rounds}-{i}"
            events += [(thread_id, run_id, event) for event in interaction(thread_id, run_id)]
        publish = self.bridge.publish
        start = time.thread_time_ns()
        for thread_id, run_id, event in events:
            publish(thread_id, run_id, event)
        self.published += len(events)
        while sum(sink.sent for sink in self.sinks) < self.published:
            await anyio.lowlevel.checkpoint()
        monitor = self.monitor
        while monitor is not None and monitor.statistics().queued:
            await anyio.lowlevel.checkpoint()
        return (time.thread_time_ns() - start) / interactions / 1000


async def measure_backend(blocks: int) -> dict[str, float]:
    """Every figure and its floor on the current backend, in one event loop."""
    config = RuntimeConfig(monitor=MONITOR_CONFIG)
    async with open_runtime(config) as runtime:
        system = runtime.system
        monitor: ChatEventMonitorHandle = runtime.monitor
        monitor_ref = runtime.monitor_ref()
        assert monitor_ref is not None
        # The floor of the per-interaction figure: a bridge with no monitor at all (the default settings, as the
        # tree's bridge has them).
        bare = spawn_bridge(system, name="seed-bench-bare-bridge")
        echo = await system.start(Echo, name="seed-bench-echo")
        send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=CALLS)

        # Runs in flight for the monitor to hold while it is timed.
        publish = runtime.bridge.publish
        for i in range(RUNS_IN_FLIGHT):
            publish(f"load-{i}", f"load-run-{i}", agent_started(f"load-{i}", f"load-run-{i}"))
        while monitor_ref.statistics().queued or runtime.bridge.ref.statistics().queued:
            await anyio.lowlevel.checkpoint()

        component = Component()
        await monitor.register_component_for_monitoring("bench_component", component)
        observer = component.observer
        assert observer is not None, "the proxy registers its observer with the component"

        recorded = agent_thinking("direct", "direct-run")
        record = monitor.record_event

        def record_one() -> None:
            record(recorded, thread_id="direct", run_id="direct-run")

        def notify_one() -> None:
            observer.on_component_health_change("bench_component", {"status": "healthy"})

        def floor_one() -> None:
            send.send_nowait(recorded)
            receive.receive_nowait()

        def monitor_idle() -> bool:
            return monitor_ref.statistics().queued == 0

        attached = Interactions("attached", runtime.bridge, monitor_ref, threads=10)
        detached = Interactions("detached", bare, None, threads=10)
        await attached.connect()
        await detached.connect()

        result = await alternate(
            blocks,
            {
                "record_event": lambda: timed_block(record_one, CALLS, monitor_idle),
                "observer notification": lambda: timed_block(notify_one, CALLS, monitor_idle),
                "send_nowait": lambda: timed_block(floor_one, CALLS, lambda: True),
                "check_health": lambda: ask_block(monitor.check_health, ASKS),
                "component audit": lambda: ask_block(lambda: monitor.audit_component("bench_component"), ASKS),
                "audit_bridge_health": lambda: ask_block(monitor.audit_bridge_health, ASKS),
                "ask": lambda: ask_block(lambda: echo.ask(0), ASKS),
                "attached": lambda: attached.block(INTERACTIONS),
                "detached": lambda: detached.block(INTERACTIONS),
            },
        )
        health = await monitor.check_health()
        assert health.tracker.runs_in_flight >= RUNS_IN_FLIGHT, health.tracker
        summary = await monitor.get_component_audit_summary()
        assert "agent_websocket_bridge" in summary.components, summary
        await echo.stop()
        await bare.ref.stop()
    result["monitoring per chat interaction"] = result["attached"] - result["detached"]
    return result


def main() -> None:
    args = parse_args("The seed report's operation timings, through the public API, each against its primitive.")
    blocks = 10 if args.quick else 60

    def measure(run: int) -> dict[str, float]:
        samples: dict[str, float] = {}
        for backend in BACKENDS if run % 2 == 0 else reversed(BACKENDS):
            result = anyio.run(measure_backend, blocks, backend=backend)
            samples |= {f"{name}/{backend}": value for name, value in result.items()}
        return samples

    progress(f"seed bench: {args.runs} runs of {blocks} blocks per measurement")
    samples = repeated(args.runs, measure)
    figures = []
    for backend in BACKENDS:
        for name, floor, goal in (
            ("record_event", "send_nowait", "<= 2"),
            ("observer notification", "send_nowait", "<= 8"),
            ("check_health", "ask", "<= 3"),
            ("component audit", "ask", "<= 4"),
            ("audit_bridge_health", "ask", "<= 8"),
            ("monitoring per chat interaction", "detached", "<= 1"),
        ):
            result = figure(
                name,
                backend,
                "µs",
                samples[f"{name}/{backend}"],
                samples[f"{floor}/{backend}"],
                goal,
            )
            seed_us = SEED_MS[name] * 1000
            result |= {"floor_is": floor, "seed_us": seed_us, "beats_seed": result["value"] < seed_us}
            figures.append(result)
    emit("seed", figures, runs=args.runs, quick=args.quick, blocks_per_run=blocks, runs_in_flight=RUNS_IN_FLIGHT)


if __name__ == "__main__":
    main()
