from __future__ import annotations

import anyio
import pytest

from actors.chat._bridge_messages import BridgeConfig
from actors.chat._connection import MemorySink
from actors.chat._events import TextMessageContent
from actors.chat._tap import DeliveryProgress
from tests.behaviour.test_bridge_fast_path import PathSink
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    open_bridge,
    seqs,
    settled,
    spawn_recorder,
    until,
    until_async,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio

#: One frame per event, so that counts of frames and of events agree.
EXACT = BridgeConfig(coalesce_at=None)


def text(i: int) -> TextMessageContent:
    return TextMessageContent(message_id="m1", delta=f"<{i}>")


class TestDeliveryAccounting:
    """Frames the bridge sends itself and frames the writer sends are counted once each, wherever they are read."""

    async def test_mixed_paths_unsubscribe_and_close_every_frame_counted_once(self) -> None:
        async with open_bridge(EXACT) as (_, bridge):
            sink = PathSink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            await bridge.subscribe(cid, "u")
            for i in range(3):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            sink.refuse_nowait = 1  # the next frame, and whatever queues behind it, goes through the writer
            for i in range(3, 6):
                bridge.publish("t", "r", text(i))
            bridge.publish("u", "r", text(0))
            await settled(bridge)
            for i in range(6, 8):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert "bridge" in sink.paths
            assert "writer" in sink.paths
            bridge.unsubscribe(cid, "t")
            bridge.publish("u", "r", text(1))
            bridge.publish("t", "r", text(8))  # not routed here any more
            await settled(bridge)
            (stats,) = await bridge.connection_statistics(cid)
            assert (stats.received, stats.delivered, stats.queued) == (10, 10, 0)
            assert stats.delivered_seq == {"t": 8, "u": 2}
            assert_connection_conserved(stats)
            metrics = await bridge.get_metrics()
            assert (metrics.events_delivered, metrics.latency_samples) == (10, 10)
            bridge.disconnect(cid)

            async def closed() -> bool:
                return [s.state for s in await bridge.connection_statistics(cid)] == ["closed"]

            await until_async(closed)
            (final,) = await bridge.connection_statistics(cid)
            assert (final.received, final.delivered, final.delivered_seq) == (10, 10, {"t": 8, "u": 2})
            metrics = await bridge.get_metrics()
            assert (metrics.events_delivered, metrics.latency_samples) == (10, 10)
            assert metrics.connections_open == 0

    @virtual_time
    async def test_delivery_report_counts_and_confirms_frames_of_both_paths(self) -> None:
        async with open_bridge(EXACT) as (system, bridge):
            monitor, log = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            sinks = [PathSink(), PathSink()]
            for sink in sinks:
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            # Regression guard: a thread whose first frame went through the writer and the rest straight from the
            # bridge must still be confirmed up to its last seq, or the monitor reports them undelivered.
            sinks[0].refuse_nowait = 1
            for i in range(5):
                bridge.publish("t", "r", text(i))
            await anyio.sleep(0.5)
            assert sinks[0].paths[0] == "writer"
            assert "bridge" in sinks[0].paths + sinks[1].paths
            reports = [m for m in log if isinstance(m, DeliveryProgress)]
            assert max(r.confirmed.get("t", 0) for r in reports) == 5
            assert sum(r.delivered or 0 for r in reports) == 10
            for i in range(5, 8):
                bridge.publish("t", "r", text(i))
            await anyio.sleep(0.5)
            reports = [m for m in log if isinstance(m, DeliveryProgress)]
            assert max(r.confirmed.get("t", 0) for r in reports) == 8
            assert sum(r.delivered or 0 for r in reports) == 16


class TestTickHealth:
    """The tick reads only connections with frames in a writer's hands; the others must still be judged right."""

    @virtual_time
    async def test_stalled_writer_seen_by_tick_then_released_queue_clears(self) -> None:
        async with open_bridge(EXACT) as (_, bridge):
            stalled, idle = MemorySink(), PathSink()
            cid = await bridge.connect(stalled, principal="p")
            await bridge.subscribe(cid, "t")
            await bridge.subscribe(await bridge.connect(idle, principal="p"), "u")
            stalled.stall()
            for i in range(230):  # 90% of the writer's queue (256): degraded on queue depth
                bridge.publish("t", "r", text(i))
            bridge.publish("u", "r", text(0))
            await anyio.sleep(0.3)
            health = await bridge.get_health_status()
            assert "queue_depth" in {r.check for r in health.reasons}
            stalled.release()
            await until(lambda: len(stalled.frames) == 230)
            await anyio.sleep(0.3)
            health = await bridge.get_health_status()
            assert health.status.value == "healthy", health
            assert seqs(stalled, "t") == list(range(1, 231))
            metrics = await bridge.get_metrics()
            assert metrics.events_delivered == 231
            assert metrics.queued == 0

    @virtual_time
    async def test_blocked_turn_closed_4001_after_idle_period_on_fast_path(self) -> None:
        async with open_bridge(BridgeConfig(coalesce_at=None, slow_consumer_after=1.0)) as (_, bridge):
            sink = PathSink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            for i in range(3):
                bridge.publish("t", "r", text(i))
            await anyio.sleep(0.5)  # ticks find the connection idle (everything went straight from the bridge)
            assert sink.paths == ["bridge"] * 3
            sink.stall()
            sink.refuse_nowait = 1
            bridge.publish("t", "r", text(3))  # the writer takes it, and its send blocks
            await until(lambda: sink.closed)
            assert sink.close_code == 4001
            (stats,) = await bridge.connection_statistics(cid)
            assert (stats.received, stats.delivered) == (4, 3)
            assert_connection_conserved(stats)
