from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from actors.chat._events import LIFECYCLE_EVENT_TYPES, StampedEvent
from actors.chat._monitor import CheckHealth
from supervisors._config import BridgeSettings, RuntimeConfig
from supervisors.app import MONITOR
from supervisors.faults import (
    CheckResult,
    Fault,
    FaultHistory,
    Slow,
    check_bridge_accounting,
    check_delivery,
    check_mailbox,
    flood,
    inject,
)
from tests.conftest import virtual_time
from tests.faults._harness import (
    Workload,
    all_received,
    delivery_latencies,
    logs,
    report,
    runtime_with_clients,
    until,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors import ActorStatistics
    from actors.chat._anomaly import Anomaly
    from actors.chat._bridge_messages import BridgeMetrics
    from supervisors.faults import BridgeClient

pytestmark = pytest.mark.anyio

# Figure 4: the monitor at twice the load it can take, and flooded on top: its mailbox keeps its bound, every
# message sent to it is accounted for by reason, and no lifecycle event is lost (neither to the clients, nor to
# the monitor, which needs them to tell a missing start from a real one).
CAPACITY = 200
RATE = 1000.0  # events per second offered to the bridge, hence taps offered to the monitor
FLOOD = 5_000
FLOOD_AT = (50, 80, 120, 150)  # sampling steps (10 ms each) at which the monitor is flooded
LIFECYCLE = frozenset(cls.__struct_config__.tag for cls in LIFECYCLE_EVENT_TYPES)


class LifecycleSeen(Fault):
    """A pass-through interceptor: records each lifecycle event the monitor actually handles."""

    name = "lifecycle_seen"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int]] = set()

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if type(message) is StampedEvent and type(message.event) in LIFECYCLE_EVENT_TYPES:
            self.seen.add((message.thread_id, message.seq))
        return await receive(message)


@dataclass
class Overload:
    samples: list[ActorStatistics]
    final: ActorStatistics
    metrics: BridgeMetrics
    alerts: list[Anomaly]
    lifecycle_seen: set[tuple[str, int]]
    flood_drops: int
    workload: Workload
    clients: list[BridgeClient]


async def overload(*, flooded: bool, lifecycle_reserve: float = 0.25) -> Overload:
    """Tap the monitor at twice the rate it handles (and flood it twice with health queries, if ``flooded``)."""
    history = FaultHistory()
    workload = Workload(5, threads=10, events_per_thread=200)
    alerts: list[Anomaly] = []
    config = RuntimeConfig(
        bridge=BridgeSettings(tick_interval=0.05),
        monitor_mailbox=CAPACITY,
        monitor_lifecycle_reserve=lifecycle_reserve,
    )
    async with runtime_with_clients(config, workload.threads, per_thread=2, history=history, sinks=[alerts.append]) as (
        runtime,
        clients,
    ):
        monitor = runtime.system.lookup(MONITOR)
        samples: list[ActorStatistics] = []
        flood_drops = 0
        # Each message takes the monitor 2/RATE s: it handles half of what the bridge taps to it.
        seen = LifecycleSeen()
        async with inject(runtime.system, monitor, seen, history=history):
            async with (
                inject(runtime.system, monitor, Slow(2 / RATE), history=history),
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(lambda: workload.drive(runtime, rate=RATE))
                for step in range(int(len(workload.plan) / RATE / 0.01)):
                    samples.append(monitor.statistics())
                    if flooded and step in FLOOD_AT:
                        flood_drops += flood(monitor, lambda _: CheckHealth(), FLOOD, history=history)
                    await anyio.sleep(0.01)
            await all_received(clients, workload)
            await until(lambda: monitor.statistics().queued == 0)
        return Overload(
            samples=samples,
            final=monitor.statistics(),
            metrics=await runtime.bridge.get_metrics(),
            alerts=alerts,
            lifecycle_seen=set(seen.seen),
            flood_drops=flood_drops,
            workload=workload,
            clients=clients,
        )


def check_bounded_and_accounted(run: Overload) -> None:
    final, metrics = run.final, run.metrics
    # The bound held at every sample, and every message sent to the monitor is accounted for exactly.
    assert max(s.queued for s in run.samples) <= CAPACITY
    assert final.mailbox.high_water <= CAPACITY
    for stats in [*run.samples, final]:
        check_mailbox(stats).raise_for_problems()
    assert set(final.dropped) <= {"drop_newest"}
    # Every accepted event was tapped or shed (content only, above half the monitor's mailbox). The bridge counts as
    # tap losses its shed taps and its own taps the monitor's mailbox refused, never other senders' dropped messages.
    assert metrics.events_accepted == metrics.taps + metrics.taps_shed
    assert metrics.taps_shed > 0  # really overloaded
    lost = metrics.dropped.get("monitor_tap", 0) - metrics.taps_shed
    assert 0 <= lost <= final.dropped_total + final.dead_lettered - run.flood_drops
    check_bridge_accounting(metrics).raise_for_problems()
    # The critical path: every event to every client, in order, at the instant it was published.
    check_delivery(logs(run.clients), last_seqs=run.workload.last_seqs()).raise_for_problems()
    assert set(delivery_latencies(run.clients, run.workload)) == {0.0}


def check_no_lifecycle_lost(run: Overload) -> None:
    # Every run boundary and tool call boundary reached the monitor's handler (what it lost was content), so
    # nothing looked like a missing start or an orphan completion either.
    published = {(p.thread_id, p.seq) for p in run.workload.published if p.type in LIFECYCLE}
    lost = sorted(published - run.lifecycle_seen)
    false_alarms = [a for a in run.alerts if a.kind.value in ("missing_agent_started", "orphan_tool_completed")]
    CheckResult(
        check="lifecycle events reached the monitor",
        checked=len(published),
        problems=tuple(f"lifecycle event {thread} seq {seq} never reached the monitor" for thread, seq in lost)
        + tuple(f"false alarm: {msgspec.json.encode(a).decode()}" for a in false_alarms),
    ).raise_for_problems()


def _report(figure: str, run: Overload) -> None:
    published = {(p.thread_id, p.seq) for p in run.workload.published if p.type in LIFECYCLE}
    report(
        figure,
        capacity=CAPACITY,
        max_depth=max(s.queued for s in run.samples),
        high_water=run.final.mailbox.high_water,
        sent=run.final.sent,
        processed=run.final.processed,
        dropped=run.final.dropped,
        taps=run.metrics.taps,
        taps_shed=run.metrics.taps_shed,
        events=run.metrics.events_accepted,
        lifecycle=len(published),
        lifecycle_lost=len(published - run.lifecycle_seen),
    )


class TestMonitorOverload:
    @virtual_time
    async def test_monitor_tapped_at_twice_its_pace_bound_kept_accounted_no_lifecycle_event_lost(self) -> None:
        run = await overload(flooded=False)
        check_bounded_and_accounted(run)
        assert run.final.dropped_total == 0  # shedding content kept the mailbox from overflowing at all
        check_no_lifecycle_lost(run)
        _report("fig4", run)

    @virtual_time
    async def test_monitor_overloaded_and_flooded_bound_kept_everything_accounted(self) -> None:
        run = await overload(flooded=True)
        check_bounded_and_accounted(run)
        assert run.flood_drops >= len(FLOOD_AT) * (FLOOD - CAPACITY)
        assert run.final.dropped_total >= run.flood_drops
        _report("fig4-flooded", run)

    @virtual_time
    async def test_monitor_overloaded_and_flooded_no_lifecycle_event_lost(self) -> None:
        run = await overload(flooded=True)
        check_no_lifecycle_lost(run)
        # The lane was needed: the flood filled the mailbox up to its limit for ordinary messages.
        assert max(s.queued for s in run.samples) > CAPACITY * 3 // 4 - 10
        _report("fig4-flooded-lifecycle", run)

    @virtual_time
    async def test_monitor_flooded_without_reserved_lane_loses_lifecycle_taps(self) -> None:
        # Why the lane exists: with no slots reserved, the same flood takes the room lifecycle taps needed.
        run = await overload(flooded=True, lifecycle_reserve=0.0)
        published = {(p.thread_id, p.seq) for p in run.workload.published if p.type in LIFECYCLE}
        assert published - run.lifecycle_seen
