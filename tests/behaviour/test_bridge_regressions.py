# Regressions found by the simulator in the bridge's writers, its delivery reports and tap accounting, and in
# reverting an injected fault.
from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import Actor, MailboxSpec
from actors.chat._anomaly import AnomalyKind
from actors.chat._bridge_messages import BridgeConfig
from actors.chat._connection import CloseCode, MemorySink
from actors.chat._events import RunStarted, TextMessageContent, TextMessageStart
from actors.chat._monitor import MonitorConfig
from actors.chat._tap import DeliveryProgress
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    open_bridge,
    spawn_recorder,
    until,
    until_async,
)
from tests.behaviour.test_monitor import monitor_rig
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


def delta(i: int) -> TextMessageContent:
    return TextMessageContent(message_id="m", delta=f"<{i}>")


@virtual_time
class TestCoalescedCountedWhenSent:
    # Regression: deltas folded into a merged frame counted as coalesced at once, so a merged frame discarded on
    # close showed 19 coalesced + 1 discarded for 20 events of which the client received none.
    async def test_merged_frame_discarded_on_close_counts_every_event_discarded(self) -> None:
        config = BridgeConfig(writer_queue_capacity=64, coalesce_at=4, slow_consumer_after=1.0, tick_interval=0.1)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            sink.stall()
            connection = await bridge.connect(sink, principal="p")
            await bridge.subscribe(connection, "t")
            for i in range(20):
                bridge.publish("t", "r", delta(i))
            await until(lambda: sink.closed)
            [stats] = await bridge.connection_statistics(connection)
            assert sink.sent == 0
            assert sink.close_code == CloseCode.SLOW_CONSUMER
            assert (stats.received, stats.delivered, stats.coalesced, stats.discarded_on_close) == (20, 0, 0, 20)
            assert_connection_conserved(stats)
            metrics = await bridge.get_metrics()
            assert (metrics.events_coalesced, metrics.dropped["discarded_on_close"]) == (0, 20)

    async def test_merged_frame_sent_counts_folded_events_coalesced(self) -> None:
        config = BridgeConfig(writer_queue_capacity=64, coalesce_at=4, slow_consumer_after=30.0)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            sink.stall()
            connection = await bridge.connect(sink, principal="p")
            await bridge.subscribe(connection, "t")
            for i in range(20):
                bridge.publish("t", "r", delta(i))
            await anyio.sleep(0.5)
            [stalled] = await bridge.connection_statistics(connection)
            # Merged, not yet sent: nothing counts as coalesced while the frame may still be discarded.
            assert (stalled.coalesced, stalled.queued) == (0, 20)
            sink.release()
            await until(lambda: sink.sent == 1)
            [stats] = await bridge.connection_statistics(connection)
            assert (stats.delivered, stats.coalesced, stats.queued) == (1, 19, 0)
            assert sink.events()[0].delta == "".join(f"<{i}>" for i in range(20))  # type: ignore[union-attr]
            assert_connection_conserved(stats)


@virtual_time
class TestStalledTurn:
    async def test_send_blocked_past_slow_consumer_after_closed_4001_by_the_tick(self) -> None:
        config = BridgeConfig(slow_consumer_after=2.0, tick_interval=0.1, coalesce_at=None)
        async with open_bridge(config) as (_, bridge):
            stuck, fine = MemorySink(), MemorySink()
            stuck.stall()
            stuck_id = await bridge.connect(stuck, principal="p")
            await bridge.subscribe(stuck_id, "t")
            await bridge.subscribe(await bridge.connect(fine, principal="p"), "t")
            start = anyio.current_time()
            bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            await anyio.sleep(1.5)
            assert not stuck.closed  # blocked, but not yet for slow_consumer_after
            await until(lambda: stuck.closed)
            assert 2.0 <= anyio.current_time() - start <= 2.0 + 2 * config.tick_interval
            assert stuck.close_code == CloseCode.SLOW_CONSUMER
            assert (fine.sent, fine.closed) == (1, False)
            metrics = await bridge.get_metrics()
            assert metrics.slow_consumer_closes == 1
            [stats] = await bridge.connection_statistics(stuck_id)
            assert (stats.state, stats.close_code, stats.discarded_on_close) == ("closed", CloseCode.SLOW_CONSUMER, 1)

    # Without the per-turn timer, a Close told to a writer parked in a send would wait for ever: the tick ends the
    # turn and the connection closes with the code it was being closed with.
    async def test_disconnect_while_send_blocked_closes_with_its_code_after_the_deadline(self) -> None:
        config = BridgeConfig(slow_consumer_after=1.0, tick_interval=0.1)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            sink.stall()
            connection = await bridge.connect(sink, principal="p")
            await bridge.subscribe(connection, "t")
            bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            await anyio.sleep(0.2)
            bridge.disconnect(connection)
            await until(lambda: sink.closed, timeout=5.0)
            assert sink.close_code == CloseCode.NORMAL
            await until_async(lambda: _closed(bridge, connection))


async def _closed(bridge: Any, connection: str) -> bool:
    [stats] = await bridge.connection_statistics(connection)
    return bool(stats.state == "closed")


@virtual_time
class TestDeliveryProgress:
    async def test_report_carries_its_time_and_the_events_sent_since_the_previous_one(self) -> None:
        config = BridgeConfig(tick_interval=0.1)
        async with open_bridge(config) as (system, bridge):
            recorder, log = spawn_recorder(system)
            bridge.attach_monitor(recorder)
            sinks = [MemorySink(), MemorySink()]
            for sink in sinks:
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            bridge.publish("t", "r", TextMessageStart(message_id="m"))
            bridge.publish("t", "r", delta(0))
            await anyio.sleep(0.35)
            reports = [m for m in log if isinstance(m, DeliveryProgress)]
            assert [r.confirmed for r in reports] == [{"t": 3}]
            assert reports[0].delivered == 6  # three events to each of two connections
            assert reports[0].at is not None
            assert 0 <= system.clock.now_ms() - reports[0].at <= 350
            bridge.publish("t", "r", delta(1))
            await anyio.sleep(0.2)
            reports = [m for m in log if isinstance(m, DeliveryProgress)]
            assert [(r.confirmed, r.delivered) for r in reports[1:]] == [({"t": 4}, 2)]

    # Regression: after a client dropped and resumed, the bridge confirmed from where it resubscribed and the
    # monitor counted that jump as delivered (audits saw 44-69% delivered with no client reading).
    async def test_monitor_counts_what_was_sent_not_confirmation_jumps(self) -> None:
        async with monitor_rig(fan_out=1) as rig:
            rig.tap.emit("t", "r", RunStarted(thread_id="t", run_id="r"))
            for i in range(9):
                rig.tap.emit("t", "r", delta(i))
            rig.monitor.tell(DeliveryProgress(confirmed={"t": 10}, delivered=0, at=rig.system.clock.now_ms()))
            await rig.settle()
            assert rig.monitor.current_instance.flow.delivered == 0
            rig.monitor.tell(DeliveryProgress(confirmed={}, delivered=7, at=rig.system.clock.now_ms()))
            await rig.settle()
            assert rig.monitor.current_instance.flow.delivered == 7

    # Regression: a report that waited in the monitor's mailbox past a delivery deadline was judged as of when it
    # was handled, so events the bridge had delivered in time were reported undelivered.
    async def test_report_judged_as_of_when_the_bridge_made_it(self) -> None:
        config = MonitorConfig(check_interval=60.0)
        undelivered_after = config.thresholds.undelivered_after
        async with monitor_rig(config, fan_out=1) as rig:
            rig.tap.emit("t", "r", RunStarted(thread_id="t", run_id="r"))
            made_at = rig.system.clock.now_ms() + 1000
            await rig.at(undelivered_after + 1.0)
            rig.monitor.tell(DeliveryProgress(confirmed={"t": 1}, delivered=1, at=made_at))
            await rig.at(undelivered_after + 70.0)
            assert AnomalyKind.UNDELIVERED_EVENT not in rig.alerts.kinds()

    async def test_report_made_after_the_deadline_still_reports_undelivered(self) -> None:
        config = MonitorConfig(check_interval=60.0)
        undelivered_after = config.thresholds.undelivered_after
        async with monitor_rig(config, fan_out=1) as rig:
            rig.tap.emit("t", "r", RunStarted(thread_id="t", run_id="r"))
            await rig.at(undelivered_after + 1.0)
            made_at = rig.system.clock.now_ms()
            rig.monitor.tell(DeliveryProgress(confirmed={"t": 1}, delivered=1, at=made_at))
            await rig.settle()
            assert rig.alerts.kinds() == [AnomalyKind.UNDELIVERED_EVENT]


@virtual_time
class TestTapLost:
    # Regression: every drop in the monitor's mailbox counted as a lost tap (a flood of 150k CheckHealth showed
    # 50,001 taps lost with none lost).
    async def test_only_refused_taps_counted_not_other_messages_dropped(self) -> None:
        async with open_bridge(BridgeConfig(tap_shed_at=None)) as (system, bridge):
            recorder, log = spawn_recorder(system, capacity=10)
            bridge.attach_monitor(recorder)
            gate = anyio.Event()
            recorder.tell(("block", gate))
            await until(lambda: recorder.statistics().queued == 0)
            for i in range(50):
                recorder.tell(f"noise-{i}")  # 10 fill the mailbox, 40 are dropped
            for i in range(3):
                bridge.publish("t", "r", delta(i))  # refused: the mailbox is full
            metrics = await bridge.get_metrics()
            assert recorder.statistics().dropped_total == 43
            assert (metrics.taps, metrics.dropped["monitor_tap"]) == (3, 3)
            gate.set()
            await until(lambda: recorder.statistics().queued == 0)
            bridge.publish("t", "r", delta(3))
            await until(lambda: any(getattr(m, "seq", None) == 4 for m in log))
            metrics = await bridge.get_metrics()
            assert (metrics.taps, metrics.dropped["monitor_tap"]) == (4, 3)


class _Recorder(Actor[str]):
    def __init__(self, log: list[tuple[str, str]], gate: anyio.Event) -> None:
        self.log = log
        self.gate = gate

    async def receive(self, message: str) -> None:
        self.log.append(("plain", message))


class _Wrap:
    """An interceptor that records what its wrapped receive handles, and parks on ``"block"`` until ``gate``."""

    def instrument(self, actor: Any) -> None:
        original = type(actor).receive.__get__(actor)

        async def receive(message: str) -> None:
            actor.log.append(("wrapped", message))
            if message == "block":
                await actor.gate.wait()
                return
            await original(message)

        actor.receive = receive


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)
class TestInterceptorRevert:
    # Regression: the drain loop read receive once per batch, so a fault reverted while the target was in a
    # handler stayed in effect for the rest of that batch (up to 256 messages).
    async def test_reverted_interceptor_not_applied_to_the_rest_of_the_batch(self) -> None:
        from actors import open_actor_system

        log: list[tuple[str, str]] = []
        gate = anyio.Event()
        async with open_actor_system() as system:
            ref = system.spawn(lambda: _Recorder(log, gate), mailbox=MailboxSpec(capacity=16))
            interceptor = _Wrap()
            ref.add_interceptor(interceptor)
            for message in ("block", "a", "b"):
                ref.tell(message)
            await until(lambda: log == [("wrapped", "block")])
            # Revert as the fault toolkit does: stop instrumenting, then restore the running instance.
            ref.remove_interceptor(interceptor)
            ref.current_instance.__dict__.pop("receive")
            gate.set()
            await until(lambda: len(log) == 3)
            assert log == [("wrapped", "block"), ("plain", "a"), ("plain", "b")]
