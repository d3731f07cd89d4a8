from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.chat._bridge_messages import BridgeConfig, SubscribeOutcome
from actors.chat._connection import MemorySink
from actors.chat._events import (
    LIFECYCLE_EVENT_TYPES,
    AgentEvent,
    RunFinished,
    RunStarted,
    TextMessageContent,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    is_delta,
)
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    frames,
    meta,
    open_bridge,
    spawn_recorder,
    stamped_events,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio

THREADS = ("a", "b", "c")
SINK_KINDS = ("fast", "slow", "failing", "stalled")

Step = tuple[str, int, int]
steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("burst"), st.integers(0, len(THREADS) - 1), st.integers(1, 60)),
        st.tuples(st.just("publish"), st.integers(0, len(THREADS) - 1), st.integers(0, 5)),
        st.tuples(st.just("subscribe"), st.integers(0, 5), st.integers(0, len(THREADS) - 1)),
        st.tuples(st.just("resume"), st.integers(0, 5), st.integers(0, len(THREADS) - 1)),
        st.tuples(st.just("disconnect"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("sleep"), st.integers(1, 30), st.just(0)),
    ),
    min_size=5,
    max_size=25,
)


def event_for(kind: int, n: int) -> AgentEvent:
    """Kinds 0-2 are deltas (two streams), 3-5 lifecycle events."""
    match kind:
        case 0 | 1:
            return TextMessageContent(message_id=f"m{kind}", delta=f"{n};")
        case 2:
            return ToolCallArgs(tool_call_id="c", delta=f"{n};")
        case 3:
            return ToolCallStart(tool_call_id=f"c{n}", tool_call_name="tool")
        case 4:
            return ToolCallEnd(tool_call_id=f"c{n}")
        case _:
            return RunStarted(thread_id="x", run_id="r") if n % 2 else RunFinished(thread_id="x", run_id="r")


def make_sink(kind: str) -> MemorySink:
    match kind:
        case "slow":
            return MemorySink(delay=0.3)
        case "failing":
            return MemorySink(fail_after=5)
        case "stalled":
            sink = MemorySink()
            sink.stall()
            return sink
        case _:
            return MemorySink()


class TestConservation:
    @virtual_time
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        kinds=st.lists(st.sampled_from(SINK_KINDS), min_size=2, max_size=6),
        subscriptions=st.lists(st.tuples(st.integers(0, 5), st.integers(0, len(THREADS) - 1)), min_size=2, max_size=10),
        steps=steps_strategy,
    )
    async def test_any_workload_every_event_accounted_for_lifecycle_never_lost(
        self, kinds: list[str], subscriptions: list[tuple[int, int]], steps: list[Step]
    ) -> None:
        config = BridgeConfig(
            writer_queue_capacity=8,
            coalesce_at=4,
            slow_consumer_after=2.0,
            replay_capacity=64,
            closed_connections_kept=1_000,
        )
        async with open_bridge(config) as (system, bridge):
            monitor, _ = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            sinks: dict[str, MemorySink] = {}
            for kind in kinds:
                sink = make_sink(kind)
                sinks[await bridge.connect(sink, principal="p")] = sink
            connections = list(sinks)
            # Per (connection, thread): the seq after which the subscription's stream starts.
            starts: dict[tuple[str, str], int] = {}
            last_seq = dict.fromkeys(THREADS, 0)
            counter = 0

            async def subscribe(index: int, thread: str, after: int | None) -> None:
                cid = connections[index % len(connections)]
                result = await bridge.subscribe(cid, thread, after_seq=after)
                if result.outcome is SubscribeOutcome.SUBSCRIBED:
                    starts[(cid, thread)] = result.last_seq if after is None else after

            for index, thread_index in subscriptions:
                await subscribe(index, THREADS[thread_index], None)
            for op, x, y in steps:
                if op in ("burst", "publish"):
                    thread = THREADS[x]
                    for n in range(y if op == "burst" else 1):
                        counter += 1
                        last_seq[thread] += 1
                        bridge.publish(thread, "r", event_for((n // 5) % 3 if op == "burst" else y, counter))
                elif op == "subscribe":
                    await subscribe(x, THREADS[y], None)
                elif op == "resume":
                    # Sometimes within the ring (64 events), sometimes beyond it (a 4002 close).
                    await subscribe(x, THREADS[y], last_seq[THREADS[y]] // 2)
                elif op == "disconnect":
                    bridge.disconnect(connections[x % len(connections)])
                else:
                    await anyio.sleep(x / 10)
            # Let every slow or stalled client be served or closed, then release the stalled ones.
            await anyio.sleep(5.0)
            for sink in sinks.values():
                sink.release()
            await anyio.sleep(5.0)

            tapped = stamped_events(await monitor.ask("get"))
            metrics = await bridge.get_metrics()
            assert metrics.events_accepted == metrics.events_received == counter == len(tapped)
            assert metrics.events_accepted == metrics.events_routed + metrics.events_unrouted
            assert metrics.fan_out_total == sum(s.fan_out for s in tapped)
            assert metrics.fan_out_total == metrics.fan_out_sent + metrics.events_deferred
            assert metrics.events_deferred == (
                metrics.events_caught_up + metrics.dropped.get("deferred_on_close", 0) + metrics.deferred_pending
            )
            assert (metrics.queued, metrics.deferred_pending) == (0, 0)
            by_thread = {thread: [s for s in tapped if s.thread_id == thread] for thread in THREADS}
            every: list[Any] = []
            for cid, sink in sinks.items():
                (stats,) = await bridge.connection_statistics(cid)
                every.append(stats)
                assert_connection_conserved(stats)
                assert stats.delivered == len(sink.frames)
                check_stream(sink, cid, starts, by_thread, closed=stats.state == "closed")
            # The bridge's totals are kept as things change, never summed over connections or rings when read: they
            # must still be what the connections and the rings add up to.
            assert metrics.events_delivered == sum(s.delivered for s in every) == metrics.latency_samples
            assert metrics.events_coalesced == sum(s.coalesced for s in every)
            assert metrics.send_errors == sum(s.send_errors for s in every)
            assert metrics.dropped.get("discarded_on_close", 0) == sum(s.discarded_on_close for s in every)
            assert metrics.subscriptions == sum(len(s.threads) for s in every if s.state != "closed")
            held = await bridge.replay_snapshot()
            metrics = await bridge.get_metrics()
            assert metrics.replay_retained == len(held)
            assert metrics.replay_retained + metrics.replay_evicted == metrics.events_accepted


def check_stream(
    sink: MemorySink, cid: str, starts: dict[tuple[str, str], int], by_thread: dict[str, list[Any]], *, closed: bool
) -> None:
    """What one client saw of each thread is the thread's events from its start, in order, without a gap or a
    duplicate; a client still connected saw all of them; lifecycle events were never merged or lost."""
    got = frames(sink)
    for event in got:
        if "firstSeq" in meta(event):
            assert is_delta(event)
    for thread, events in by_thread.items():
        start = starts.get((cid, thread))
        mine = [e for e in got if meta(e)["threadId"] == thread]
        if start is None:
            assert mine == []
            continue
        covered = [seq for e in mine for seq in range(meta(e).get("firstSeq", meta(e)["seq"]), meta(e)["seq"] + 1)]
        expected = [s.seq for s in events if s.seq > start]
        assert covered == expected[: len(covered)]
        if not closed:
            assert covered == expected
            lifecycle = [s.seq for s in events if s.seq > start and type(s.event) in LIFECYCLE_EVENT_TYPES]
            assert [meta(e)["seq"] for e in mine if type(e) in LIFECYCLE_EVENT_TYPES] == lifecycle
