from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from actors import ActorStopped, ExitKind, open_actor_system
from actors.chat._bridge import AgentWebSocketBridge, BridgeWiring
from actors.chat._bridge_handle import BridgeHandle
from actors.chat._bridge_messages import BridgeConfig, Publish, SubscribeOutcome
from actors.chat._connection import CloseCode, MemorySink
from actors.chat._events import (
    ReasoningStart,
    RunFinished,
    RunStarted,
    TextMessageContent,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
)
from actors.chat._tap import DeliveryProgress
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    frames,
    meta,
    open_bridge,
    seqs,
    settled,
    spawn_recorder,
    stamped_events,
    until,
    until_async,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


#: Frame-by-frame assertions need every event in a frame of its own (coalescing has tests of its own).
EXACT = BridgeConfig(coalesce_at=None)


def text(i: int, message_id: str = "m1") -> TextMessageContent:
    return TextMessageContent(message_id=message_id, delta=f"<{i}>")


class TestRouting:
    async def test_publish_two_threads_each_numbered_from_one_in_order(self) -> None:
        async with open_bridge(EXACT) as (_, bridge):
            sinks = {thread: MemorySink() for thread in ("t1", "t2")}
            for thread, sink in sinks.items():
                cid = await bridge.connect(sink, principal="alice")
                await bridge.subscribe(cid, thread)
            for i in range(200):
                bridge.publish("t1" if i % 3 else "t2", "r1", text(i))
            await settled(bridge)
            for thread, sink in sinks.items():
                got = frames(sink)
                assert [meta(e)["seq"] for e in got] == list(range(1, len(got) + 1))
                assert {meta(e)["threadId"] for e in got} == {thread}
                # Per-thread order is the publish order.
                expected = [f"<{i}>" for i in range(200) if ("t1" if i % 3 else "t2") == thread]
                assert [e.delta for e in got if isinstance(e, TextMessageContent)] == expected

    async def test_many_connections_on_one_thread_get_identical_streams(self) -> None:
        async with open_bridge(EXACT) as (_, bridge):
            sinks = [MemorySink() for _ in range(20)]
            for sink in sinks:
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(300):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert all(sink.frames == sinks[0].frames for sink in sinks)
            assert seqs(sinks[0]) == list(range(1, 301))

    async def test_unsubscribe_stops_delivery_of_that_thread_only(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "a")
            await bridge.subscribe(cid, "b")
            bridge.publish("a", "r", text(1))
            bridge.publish("b", "r", text(2))
            bridge.unsubscribe(cid, "a")
            bridge.publish("a", "r", text(3))
            bridge.publish("b", "r", text(4))
            await settled(bridge)
            assert [(meta(e)["threadId"], meta(e)["seq"]) for e in frames(sink)] == [("a", 1), ("b", 1), ("b", 2)]

    async def test_subscribe_twice_second_is_already_subscribed_no_duplicates(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            assert (await bridge.subscribe(cid, "t")).outcome is SubscribeOutcome.SUBSCRIBED
            bridge.publish("t", "r", text(1))
            again = await bridge.subscribe(cid, "t", after_seq=0)
            assert again.outcome is SubscribeOutcome.ALREADY_SUBSCRIBED
            await settled(bridge)
            assert seqs(sink) == [1]

    async def test_events_before_subscription_not_sent_without_after_seq(self) -> None:
        async with open_bridge() as (_, bridge):
            bridge.publish("t", "r", text(1))
            sink = MemorySink()
            result = await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            assert result.last_seq == 1
            bridge.publish("t", "r", text(2))
            await settled(bridge)
            assert seqs(sink) == [2]

    async def test_invalid_publish_rejected_and_counted_bridge_keeps_running(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            bridge.ref.tell(Publish(thread_id="t", run_id="r", event={"type": "RUN_STARTED"}))  # type: ignore[arg-type]
            bridge.ref.tell(Publish(thread_id=7, run_id="r", event=text(0)))  # type: ignore[arg-type]
            bridge.publish("t", "r", text(1))
            await settled(bridge)
            metrics = await bridge.get_metrics()
            assert metrics.dropped["invalid_event"] == 2
            assert metrics.events_received == 3
            assert metrics.events_accepted == 1
            assert seqs(sink) == [1]

    async def test_handle_publish_non_event_raises_type_error(self) -> None:
        async with open_bridge() as (_, bridge):
            with pytest.raises(TypeError, match="event must be an AG-UI event"):
                bridge.publish("t", "r", "hello")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="thread_id"):
                bridge.publish("", "r", text(1))

    async def test_seed_helpers_publish_agui_events_with_timestamps(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            bridge.notify_agent_started("t", "r")
            bridge.notify_agent_thinking("t", "r")
            bridge.notify_tool_executing("t", "r", "call-1", "search")
            bridge.notify_tool_completed("t", "r", "call-1", result="42")
            bridge.notify_agent_completed("t", "r", result={"ok": True})
            await settled(bridge)
            got = frames(sink)
            assert [type(e) for e in got] == [
                RunStarted,
                ReasoningStart,
                ToolCallStart,
                ToolCallEnd,
                ToolCallResult,
                RunFinished,
            ]
            assert all(e.timestamp is not None for e in got)
            result = got[4]
            assert isinstance(result, ToolCallResult)
            assert (result.tool_call_id, result.content, result.message_id) == ("call-1", "42", "call-1:result")
            assert all(meta(e)["runId"] == "r" for e in got)


class TestResume:
    async def test_resume_after_seq_replays_missed_then_live_without_gap_or_duplicate(self) -> None:
        async with open_bridge(EXACT) as (_, bridge):
            first = MemorySink()
            cid = await bridge.connect(first, principal="p")
            await bridge.subscribe(cid, "t")
            for i in range(10):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            bridge.disconnect(cid)
            for i in range(10, 25):  # missed while away
                bridge.publish("t", "r", text(i))
            second = MemorySink()
            result = await bridge.subscribe(await bridge.connect(second, principal="p"), "t", after_seq=seqs(first)[-1])
            assert (result.outcome, result.replay_pending) == (SubscribeOutcome.SUBSCRIBED, 15)
            for i in range(25, 30):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert seqs(first) + seqs(second) == list(range(1, 31))
            deltas = [e.delta for e in frames(first) + frames(second) if isinstance(e, TextMessageContent)]
            assert deltas == [f"<{i}>" for i in range(30)]
            metrics = await bridge.get_metrics()
            assert (metrics.resumes, metrics.events_replayed) == (1, 15)

    async def test_resume_replay_larger_than_queue_delivered_in_order(self) -> None:
        config = BridgeConfig(writer_queue_capacity=8, coalesce_at=None)
        async with open_bridge(config) as (_, bridge):
            for i in range(500):
                bridge.publish("t", "r", text(i))
            sink = MemorySink()
            result = await bridge.subscribe(await bridge.connect(sink, principal="p"), "t", after_seq=100)
            assert result.replay_pending == 400
            bridge.publish("t", "r", text(500))
            await settled(bridge)
            assert seqs(sink) == list(range(101, 502))

    async def test_resume_older_than_ring_capacity_closed_4002(self) -> None:
        async with open_bridge(BridgeConfig(replay_capacity=10, coalesce_at=None)) as (_, bridge):
            for i in range(30):
                bridge.publish("t", "r", text(i))
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            result = await bridge.subscribe(cid, "t", after_seq=5)
            assert (result.outcome, result.close_code) == (SubscribeOutcome.REPLAY_GAP, CloseCode.REPLAY_GAP)
            await until(lambda: sink.closed)
            assert sink.close_code == 4002
            assert sink.frames == []
            # At the edge of what the ring holds, a resume is complete.
            edge = MemorySink()
            ok = await bridge.subscribe(await bridge.connect(edge, principal="p"), "t", after_seq=20)
            assert ok.outcome is SubscribeOutcome.SUBSCRIBED
            await settled(bridge)
            assert seqs(edge) == list(range(21, 31))
            assert (await bridge.get_metrics()).resume_gaps == 1

    @virtual_time
    async def test_resume_older_than_ring_max_age_closed_4002(self) -> None:
        async with open_bridge(BridgeConfig(replay_max_age=60.0)) as (_, bridge):
            bridge.publish("t", "r", text(1))
            await anyio.sleep(30)
            bridge.publish("t", "r", text(2))
            await anyio.sleep(40)  # seq 1 is 70 s old now, seq 2 is 40 s old
            young = MemorySink()
            assert (await bridge.subscribe(await bridge.connect(young, principal="p"), "t", after_seq=1)).outcome is (
                SubscribeOutcome.SUBSCRIBED
            )
            old = MemorySink()
            gap = await bridge.subscribe(await bridge.connect(old, principal="p"), "t", after_seq=0)
            assert gap.outcome is SubscribeOutcome.REPLAY_GAP
            await until(lambda: old.closed)
            assert (old.close_code, old.frames) == (4002, [])
            await settled(bridge)
            assert seqs(young) == [2]

    async def test_resume_after_seq_ahead_of_thread_closed_4002(self) -> None:
        # A client resuming against a restarted bridge (numbering started again) must refetch, not hang.
        async with open_bridge() as (_, bridge):
            bridge.publish("t", "r", text(1))
            sink = MemorySink()
            result = await bridge.subscribe(await bridge.connect(sink, principal="p"), "t", after_seq=9)
            assert result.outcome is SubscribeOutcome.REPLAY_GAP
            await until(lambda: sink.closed)
            assert sink.close_code == 4002
            assert "afterSeq 9" in (sink.close_reason or "")


class TestLifecycle:
    async def test_disconnect_closes_1000_and_connection_forgotten(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            bridge.disconnect(cid)
            await until(lambda: sink.closed)
            assert sink.close_code == 1000

            async def forgotten() -> bool:
                return (await bridge.connection_statistics(cid))[0].state == "closed"

            await until_async(forgotten)
            bridge.publish("t", "r", text(1))
            metrics = await bridge.get_metrics()
            assert metrics.events_unrouted == 1
            assert metrics.connections_open == 0
            (final,) = await bridge.connection_statistics(cid)
            assert (final.state, final.close_code) == ("closed", 1000)

    async def test_system_shutdown_closes_every_connection_1001(self) -> None:
        sinks = [MemorySink() for _ in range(5)]
        async with open_bridge() as (_, bridge):
            for sink in sinks:
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
        assert [sink.close_code for sink in sinks] == [1001] * 5

    @virtual_time
    async def test_graceful_stop_client_that_stopped_reading_still_closed_1001(self) -> None:
        # Regression: a writer parked in a send to a client that stopped reading never read its drain-and-close,
        # and once the bridge's bounded wait ended it was stopped without closing its sink: the client was told
        # nothing at all. Past the drain it is interrupted, and closes with 1001.
        stuck = MemorySink()
        reading = MemorySink()
        async with open_bridge() as (_, bridge):
            for sink in (stuck, reading):
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            stuck.stall()
            for i in range(5):
                bridge.publish("t", "r", text(i))
            await until(lambda: reading.sent == 5)
            await bridge.ref.stop(timeout=10.0)
            assert stuck.close_code == CloseCode.GOING_AWAY
            assert reading.close_code == CloseCode.GOING_AWAY
            assert seqs(reading) == [1, 2, 3, 4, 5]

    async def test_sink_send_failure_closes_1011_and_counts_error(self) -> None:
        async with open_bridge() as (_, bridge):
            broken = MemorySink(fail_after=3)
            healthy = MemorySink()
            for sink in (broken, healthy):
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(10):
                bridge.publish("t", "r", text(i))
                await anyio.lowlevel.checkpoint()
            await until(lambda: broken.closed and healthy.sent == 10)
            assert broken.close_code == 1011
            assert seqs(broken) == [1, 2, 3]

            async def forgotten() -> bool:
                return (await bridge.get_metrics()).connections_closed == {"1011": 1}

            await until_async(forgotten)
            metrics = await bridge.get_metrics()
            assert metrics.send_errors == 1
            assert metrics.connections_closed == {"1011": 1}
            assert metrics.connections_open == 1

    async def test_connect_to_stopped_bridge_raises_and_closes_writer(self) -> None:
        async with open_bridge() as (_, bridge):
            await bridge.ref.stop()
            sink = MemorySink()
            with pytest.raises(ActorStopped):
                await bridge.connect(sink, principal="p")
            await until(lambda: sink.closed)
            assert sink.close_code == 1001

    async def test_instance_restart_keeps_monitor_and_observers_closes_connections(self) -> None:
        # The supervisor hook: a new instance on the same ref, built with the same wiring.
        async with open_actor_system() as system:
            config = BridgeConfig()
            wiring = BridgeWiring()
            ref = system.create_ref(name="bridge")
            await system.start_incarnation(ref, lambda: AgentWebSocketBridge(config, wiring), on_exit=None)
            bridge = BridgeHandle(ref, system, config)
            monitor, log = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            reason = await system.stop_incarnation(ref, timeout=1.0)
            assert reason is not None
            assert reason.kind is ExitKind.SHUTDOWN
            await until(lambda: sink.closed)
            assert sink.close_code == 1001
            await system.start_incarnation(ref, lambda: AgentWebSocketBridge(config, wiring), on_exit=None)
            bridge.publish("t", "r", text(1))
            assert (await bridge.get_metrics()).monitor_attached
            await until(lambda: len(stamped_events(log)) == 1)
            await system.stop_incarnation(ref, timeout=1.0)

    async def test_bridge_failure_closes_connections_1012_for_resume(self) -> None:
        class Crashing(AgentWebSocketBridge):
            async def receive(self, message: Any) -> Any:
                if message == "crash":
                    raise RuntimeError("bridge bug")
                return await super().receive(message)

        exits: list[Any] = []
        async with open_actor_system() as system:
            ref = system.create_ref(name="bridge")
            await system.start_incarnation(ref, lambda: Crashing(), on_exit=lambda r, why: exits.append(why))
            bridge = BridgeHandle(ref, system)
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            ref.tell("crash")
            await until(lambda: sink.closed)
            assert sink.close_code == 1012
            assert [why.kind for why in exits] == [ExitKind.ERROR]


class TestMonitorTap:
    async def test_bridge_without_monitor_delivers_and_reports_healthy(self) -> None:
        async with open_bridge(EXACT) as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(50):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert len(sink.frames) == 50
            metrics = await bridge.get_metrics()
            assert (metrics.monitor_attached, metrics.taps, metrics.dropped) == (False, 0, {})
            assert (await bridge.get_health_status()).status == "healthy"

    async def test_health_and_metrics_read_together_match_the_separate_reads(self) -> None:
        # What an audit reads of the bridge, in one round trip (the component proxy prefers it).
        async with open_bridge() as (_system, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(20):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            health, metrics = await bridge.get_health_and_metrics()
            alone = await bridge.get_health_status()
            assert (health.status, health.reasons) == (alone.status, alone.reasons)  # checked_at may differ by 1 ms
            assert metrics == await bridge.get_metrics()
            assert (metrics.events_delivered, health.status) == (20, "healthy")

    async def test_monitor_tapped_every_accepted_event_with_its_fan_out(self) -> None:
        async with open_bridge() as (system, bridge):
            monitor, log = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            sinks = [MemorySink() for _ in range(3)]
            for n, sink in enumerate(sinks):
                cid = await bridge.connect(sink, principal="p")
                for thread in ("a", "b", "c")[: n + 1]:
                    await bridge.subscribe(cid, thread)
            for thread in ("a", "b", "c", "nobody"):
                bridge.publish(thread, "r", text(0))
            await settled(bridge)
            await until(lambda: len(stamped_events(log)) == 4)
            tapped = stamped_events(log)
            assert [(s.thread_id, s.seq, s.fan_out) for s in tapped] == [
                ("a", 1, 3),
                ("b", 1, 2),
                ("c", 1, 1),
                ("nobody", 1, 0),
            ]
            # The very object delivered is the one tapped (immutable, never copied).
            assert tapped[0].frame.decode() == sinks[0].frames[0]
            metrics = await bridge.get_metrics()
            assert metrics.fan_out_total == sum(s.fan_out for s in tapped) == 6
            assert metrics.taps == 4

    async def test_full_monitor_mailbox_never_blocks_publish_drops_counted(self) -> None:
        async with open_bridge(EXACT) as (system, bridge):
            monitor, log = spawn_recorder(system, capacity=4)
            gate = anyio.Event()
            monitor.tell(("block", gate))  # the monitor hangs in its handler from now on
            await until(lambda: monitor.statistics().processed == 1)
            bridge.attach_monitor(monitor)
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(100):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert seqs(sink) == list(range(1, 101))  # the critical path did not wait for the monitor
            metrics = await bridge.get_metrics()
            assert metrics.taps == 100
            assert metrics.dropped["monitor_tap"] == monitor.statistics().dropped_total == 96
            health = await bridge.get_health_status()
            assert health.status == "degraded"
            assert [r.check for r in health.reasons] == ["tap_drops"]
            gate.set()
            await until(lambda: len(stamped_events(log)) == 4)
            assert [s.seq for s in stamped_events(log)] == [1, 2, 3, 4]

    @virtual_time
    async def test_stopped_monitor_taps_skipped_counted_health_degraded(self) -> None:
        async with open_bridge() as (system, bridge):
            monitor, _ = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            await monitor.stop()
            await anyio.sleep(0.5)  # the bridge notices on its tick
            for i in range(10):
                bridge.publish("t", "r", text(i))
            metrics = await bridge.get_metrics()
            assert not metrics.monitor_attached
            assert metrics.dropped["monitor_tap"] == 10
            health = await bridge.get_health_status()
            assert "monitor" in {r.check for r in health.reasons}
            assert system.dead_letters.count("stopped") == 0  # skipped, not dead-lettered one by one

    @virtual_time
    async def test_monitor_told_delivery_progress_and_unsubscribed_threads(self) -> None:
        async with open_bridge() as (system, bridge):
            monitor, log = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            fast, slow = MemorySink(), MemorySink(delay=1.0)
            cid_fast = await bridge.connect(fast, principal="p")
            cid_slow = await bridge.connect(slow, principal="p")
            for cid in (cid_fast, cid_slow):
                await bridge.subscribe(cid, "t")
            for i in range(3):
                bridge.publish("t", "r", text(i))
            await anyio.sleep(0.5)
            reports = [m for m in log if isinstance(m, DeliveryProgress)]
            # The slow client has its first frame in flight: nothing reached every connection yet.
            assert all(r.confirmed.get("t", 0) == 0 for r in reports)
            await anyio.sleep(3.5)
            reports = [m for m in log if isinstance(m, DeliveryProgress)]
            assert [r.confirmed["t"] for r in reports if "t" in r.confirmed] == [1, 2, 3]
            bridge.unsubscribe(cid_fast, "t")
            bridge.unsubscribe(cid_slow, "t")
            await anyio.sleep(0.2)
            assert [m.unsubscribed for m in log if isinstance(m, DeliveryProgress) and m.unsubscribed] == [("t",)]

    @virtual_time
    async def test_replay_snapshot_returns_ring_contents_for_a_restarting_monitor(self) -> None:
        async with open_bridge(BridgeConfig(replay_capacity=3)) as (_, bridge):
            for i in range(5):
                bridge.publish("a", "r", text(i))
            bridge.publish("b", "r", text(9))
            snapshot = await bridge.replay_snapshot()
            assert [(s.thread_id, s.seq) for s in snapshot] == [("a", 3), ("a", 4), ("a", 5), ("b", 1)]
            assert [s.seq for s in await bridge.replay_snapshot("b")] == [1]


class RecordingObserver:
    def __init__(self) -> None:
        self.changes: list[tuple[str, Any]] = []

    def on_component_health_change(self, component_id: str, health: Any) -> None:
        self.changes.append((component_id, health.status))


class RaisingObserver:
    def __init__(self) -> None:
        self.calls = 0

    def on_component_health_change(self, component_id: str, health: Any) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")


class AsyncObserver:
    def __init__(self) -> None:
        self.changes: list[str] = []

    async def on_component_health_change(self, component_id: str, health: Any) -> None:
        await anyio.lowlevel.checkpoint()
        self.changes.append(health.status)


class TestHealth:
    @virtual_time
    async def test_health_change_broadcast_to_every_observer_raising_one_harmless(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = BridgeConfig(writer_queue_capacity=4, slow_consumer_after=30.0, health_window=1.0, coalesce_at=None)
        async with open_bridge(config) as (system, bridge):
            ref_observer, log = spawn_recorder(system)
            plain, raising, coroutine = RecordingObserver(), RaisingObserver(), AsyncObserver()
            for observer in (ref_observer, plain, raising, coroutine):
                bridge.register_monitor_observer(observer)
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            await anyio.sleep(1.0)
            assert plain.changes == []  # healthy from the start: no change to report
            sink.stall()
            for i in range(20):
                bridge.publish("t", "r", text(i))
            await anyio.sleep(0.5)
            sink.release()
            await anyio.sleep(2.0)
            statuses = [m.status for m in log]
            assert [m.health["status"] for m in log] == statuses
            assert statuses[0] == "unhealthy"  # the only connection lags: lagging share 100%
            assert statuses[-1] == "healthy"
            assert [m.component_id for m in log] == ["agent_websocket_bridge"] * len(log)
            assert [status for _, status in plain.changes] == statuses
            assert coroutine.changes == statuses
            assert raising.calls == len(statuses)
            assert "observer bug" in caplog.text
            assert seqs(sink) == list(range(1, 21))

    async def test_failing_sends_make_bridge_unhealthy_with_error_rate_reason(self) -> None:
        async with open_bridge() as (_, bridge):
            for _ in range(3):
                await bridge.subscribe(await bridge.connect(MemorySink(fail_after=0), principal="p"), "t")
            ok = MemorySink()
            await bridge.subscribe(await bridge.connect(ok, principal="p"), "t")
            bridge.publish("t", "r", text(1))
            await until(lambda: ok.sent == 1)

            async def three_errors() -> bool:
                return (await bridge.get_metrics()).send_errors == 3

            await until_async(three_errors)
            health = await bridge.get_health_status()
            assert health.status == "unhealthy"
            (reason,) = [r for r in health.reasons if r.check == "delivery_errors"]
            assert reason.detail == "3 of 4 sends failed (75.0%)"

    @virtual_time
    async def test_stalled_delivery_reported_unhealthy_then_recovers(self) -> None:
        config = BridgeConfig(slow_consumer_after=100.0, health_window=2.0)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            sink.stall()
            bridge.publish("t", "r", text(1))
            bridge.publish("t", "r", text(2))
            await anyio.sleep(3.0)
            health = await bridge.get_health_status()
            assert "delivery_stalled" in {r.check for r in health.reasons}
            assert health.status == "unhealthy"
            sink.release()
            await anyio.sleep(3.0)
            assert (await bridge.get_health_status()).status == "healthy"

    async def test_register_observer_rejects_non_observer(self) -> None:
        async with open_bridge() as (_, bridge):
            with pytest.raises(TypeError, match="on_component_health_change"):
                bridge.register_monitor_observer(object())  # type: ignore[arg-type]


class TestConservationSmall:
    async def test_connection_identity_holds_mid_flight_and_after_close(self) -> None:
        config = BridgeConfig(writer_queue_capacity=16, coalesce_at=None)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            sink.stall()
            for i in range(40):
                bridge.publish("t", "r", text(i))
            (mid,) = await bridge.connection_statistics(cid)
            assert_connection_conserved(mid)
            assert mid.queued > 0
            assert mid.deferred == 40 - mid.received
            bridge.disconnect(cid)
            sink.release()
            await until(lambda: sink.closed)

            async def forgotten() -> bool:
                return (await bridge.connection_statistics(cid))[0].state == "closed"

            await until_async(forgotten)
            (final,) = await bridge.connection_statistics(cid)
            assert_connection_conserved(final)
            assert final.queued == 0
            assert final.delivered == len(sink.frames)
            metrics = await bridge.get_metrics()
            assert metrics.fan_out_total == metrics.fan_out_sent + metrics.events_deferred == 40
            assert metrics.events_deferred == (
                metrics.events_caught_up + metrics.dropped.get("deferred_on_close", 0) + metrics.deferred_pending
            )
