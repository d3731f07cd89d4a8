from __future__ import annotations

import anyio
import pytest

from actors.chat._bridge_messages import BridgeConfig, Publish
from actors.chat._connection import MemorySink
from actors.chat._events import RunStarted, TextMessageContent, decode_event, stamp
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    open_bridge,
    seqs,
    settled,
    spawn_recorder,
    stamped_events,
    until,
)

pytestmark = pytest.mark.anyio

NO_TICK = 3600.0


def text(i: int) -> TextMessageContent:
    return TextMessageContent(message_id="m1", delta=f"<{i}>")


class NoNowaitSink(MemorySink):
    """A sink that offers the fast path's methods but says it can never use them (a StarletteSink on trio)."""

    sends_nowait = False

    def __init__(self) -> None:
        super().__init__()
        self.nowait_calls = 0

    def send_text_nowait(self, data: str) -> None:
        self.nowait_calls += 1
        raise anyio.WouldBlock


class TestRunOfPublishes:
    async def test_mixed_run_counts_each_publish_once_and_routes_in_order(self) -> None:
        # Published back to back without a checkpoint: the bridge takes them as one run, and its counters are added
        # up over the run. Every identity of BridgeMetrics must hold, and each thread keeps its own numbering.
        config = BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK)
        async with open_bridge(config) as (system, bridge):
            recorder, log = spawn_recorder(system)
            bridge.attach_monitor(recorder)
            watched = MemorySink()
            cid = await bridge.connect(watched, principal="p")
            await bridge.subscribe(cid, "watched")
            bad = TextMessageContent(message_id="m", delta="x", timestamp="soon")  # type: ignore[arg-type]
            for i in range(3):
                bridge.publish("watched", "r", text(i))
                bridge.publish("nobody", "r", text(i))
            bridge.publish("watched", "r", bad)
            bridge.ref.tell(Publish(thread_id=1, run_id="r", event=text(9)))  # type: ignore[arg-type]
            bridge.publish("watched", "r", text(3))
            await settled(bridge)
            await until(lambda: len(stamped_events(log)) == 7)
            metrics = await bridge.get_metrics()
            (stats,) = await bridge.connection_statistics(cid)
        assert (metrics.events_received, metrics.events_accepted) == (9, 7)
        assert metrics.dropped["invalid_event"] == 2
        assert (metrics.events_routed, metrics.events_unrouted) == (4, 3)
        assert (metrics.fan_out_total, metrics.fan_out_sent, metrics.events_delivered) == (4, 4, 4)
        assert seqs(watched, "watched") == [1, 2, 3, 4]
        deltas = [getattr(decode_event(frame), "delta", None) for frame in watched.frames]
        assert deltas == ["<0>", "<1>", "<2>", "<3>"]
        taps = stamped_events(log)
        assert [(tap.thread_id, tap.seq) for tap in taps] == [
            ("watched", 1),
            ("nobody", 1),
            ("watched", 2),
            ("nobody", 2),
            ("watched", 3),
            ("nobody", 3),
            ("watched", 4),
        ]
        assert [tap.fan_out for tap in taps] == [1, 0, 1, 0, 1, 0, 1]
        assert_connection_conserved(stats)

    async def test_routed_event_is_what_stamp_makes(self) -> None:
        # The bridge's stamped event (kept, tapped and sent) is stamp()'s, field for field: the frame a client gets
        # decodes to the event the monitor sees, and a replayed frame rebuilds the same StampedEvent.
        config = BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK)
        async with open_bridge(config) as (system, bridge):
            recorder, log = spawn_recorder(system)
            bridge.attach_monitor(recorder)
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            event = RunStarted(thread_id="t", run_id="r", metadata={"seq": 99, "keep": "me"})
            bridge.publish("t", "r", event)
            await until(lambda: len(stamped_events(log)) == 1 and len(sink.frames) == 1)
        (tapped,) = stamped_events(log)
        expected = stamp(event, thread_id="t", run_id="r", seq=1, observed_at=tapped.observed_at, fan_out=1)
        assert tapped == expected
        assert sink.frames == [expected.frame.decode()]


class TestSubscriptionsSeenByTheRoute:
    async def test_unsubscribed_connection_gets_nothing_more_others_get_everything(self) -> None:
        async with open_bridge() as (_, bridge):
            staying, leaving = MemorySink(), MemorySink()
            staying_id = await bridge.connect(staying, principal="p")
            leaving_id = await bridge.connect(leaving, principal="p")
            await bridge.subscribe(staying_id, "t")
            await bridge.subscribe(leaving_id, "t")
            bridge.publish("t", "r", text(0))
            await settled(bridge)
            bridge.unsubscribe(leaving_id, "t")
            bridge.publish("t", "r", text(1))
            await settled(bridge)
            assert seqs(leaving, "t") == [1]
            await bridge.subscribe(leaving_id, "t")
            bridge.publish("t", "r", text(2))
            await settled(bridge)
            metrics = await bridge.get_metrics()
        assert seqs(staying, "t") == [1, 2, 3]
        assert seqs(leaving, "t") == [1, 3]
        assert (metrics.fan_out_total, metrics.fan_out_sent) == (5, 5)

    async def test_disconnected_connection_no_longer_routed(self) -> None:
        async with open_bridge() as (_, bridge):
            gone, kept = MemorySink(), MemorySink()
            gone_id = await bridge.connect(gone, principal="p")
            await bridge.subscribe(gone_id, "t")
            await bridge.subscribe(await bridge.connect(kept, principal="p"), "t")
            bridge.disconnect(gone_id)
            await until(lambda: gone.closed)
            bridge.publish("t", "r", text(0))
            await settled(bridge)
            metrics = await bridge.get_metrics()
        assert gone.frames == []
        assert seqs(kept, "t") == [1]
        assert (metrics.events_routed, metrics.fan_out_total) == (1, 1)


class TestSinkWithoutFastPath:
    async def test_sink_that_cannot_send_nowait_is_never_asked_writer_sends_in_order(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = NoNowaitSink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            for i in range(5):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            for i in range(5, 8):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            (stats,) = await bridge.connection_statistics(cid)
            metrics = await bridge.get_metrics()
        assert sink.nowait_calls == 0
        assert seqs(sink, "t") == list(range(1, 9))
        assert (stats.received, stats.delivered) == (8, 8)
        assert metrics.fan_out_sent == 8
        assert_connection_conserved(stats)
