from __future__ import annotations

import anyio
import pytest

from actors.chat._bridge_messages import BridgeConfig
from actors.chat._connection import MemorySink
from actors.chat._events import TextMessageContent
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    open_bridge,
    seqs,
    settled,
    until,
    until_async,
)

pytestmark = pytest.mark.anyio


def text(i: int) -> TextMessageContent:
    return TextMessageContent(message_id="m1", delta=f"<{i}>")


class PathSink(MemorySink):
    """Records which way each frame came: written by the bridge itself (``send_text_nowait``) or by the writer."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        #: Refuse this many fast-path sends (as a socket whose buffer is momentarily full would).
        self.refuse_nowait = 0

    async def send_text(self, data: str) -> None:
        await super().send_text(data)
        self.paths.append("writer")

    def send_text_nowait(self, data: str) -> None:
        if self.refuse_nowait:
            self.refuse_nowait -= 1
            raise anyio.WouldBlock
        super().send_text_nowait(data)
        self.paths.append("bridge")


class RecordingSink(MemorySink):
    """Overrides only the waiting send, as a test double that records or transforms frames would."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    async def send_text(self, data: str) -> None:
        self.seen.append(data)
        await super().send_text(data)


class TestFastPath:
    async def test_idle_writer_frames_written_by_bridge_in_order_and_counted(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = PathSink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            for i in range(5):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert sink.paths == ["bridge"] * 5
            assert seqs(sink, "t") == [1, 2, 3, 4, 5]
            (stats,) = await bridge.connection_statistics(cid)
            assert (stats.received, stats.delivered, stats.queued) == (5, 5, 0)
            assert stats.delivered_seq == {"t": 5}
            assert_connection_conserved(stats)
            metrics = await bridge.get_metrics()
            assert (metrics.events_delivered, metrics.fan_out_sent, metrics.latency_samples) == (5, 5, 5)

    async def test_refused_fast_path_writer_takes_over_until_idle_order_kept(self) -> None:
        async with open_bridge() as (_, bridge):
            sink = PathSink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            sink.refuse_nowait = 1
            for i in range(5):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            # The first frame was refused, so it and everything behind it went through the writer (never around it).
            assert sink.paths == ["writer"] * 5
            for i in range(5, 8):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert sink.paths == ["writer"] * 5 + ["bridge"] * 3
            assert seqs(sink, "t") == list(range(1, 9))
            (stats,) = await bridge.connection_statistics(cid)
            assert (stats.received, stats.delivered) == (8, 8)
            assert_connection_conserved(stats)

    async def test_stalled_sink_frames_wait_in_writer_then_arrive_in_order(self) -> None:
        async with open_bridge() as (_, bridge):
            stalled = MemorySink()
            other = PathSink()
            stalled_id = await bridge.connect(stalled, principal="p")
            await bridge.subscribe(stalled_id, "t")
            await bridge.subscribe(await bridge.connect(other, principal="p"), "t")
            stalled.stall()
            for i in range(4):
                bridge.publish("t", "r", text(i))
            await until(lambda: len(other.frames) == 4)
            # The other connection got everything straight from the bridge while this one's writer waits.
            assert other.paths == ["bridge"] * 4
            assert stalled.frames == []
            (stats,) = await bridge.connection_statistics(stalled_id)
            assert stats.queued == 4
            stalled.release()
            for i in range(4, 6):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert seqs(stalled, "t") == list(range(1, 7))

    async def test_subclass_overriding_only_send_text_gets_every_frame_through_it(self) -> None:
        # Regression: a MemorySink subclass that records in send_text was bypassed by the inherited fast path.
        async with open_bridge() as (_, bridge):
            sink = RecordingSink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(3):
                bridge.publish("t", "r", text(i))
            await settled(bridge)
            assert len(sink.seen) == 3
            assert sink.seen == sink.frames

    async def test_failing_fast_path_send_handed_to_writer_closes_1011(self) -> None:
        async with open_bridge(BridgeConfig(coalesce_at=None)) as (_, bridge):
            sink = MemorySink(fail_after=2)
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            for i in range(4):
                bridge.publish("t", "r", text(i))
            await until(lambda: sink.closed)
            assert sink.close_code == 1011
            assert seqs(sink, "t") == [1, 2]

            async def closed() -> bool:
                return (await bridge.get_metrics()).connections_closed == {"1011": 1}

            await until_async(closed)
            metrics = await bridge.get_metrics()
            assert metrics.send_errors == 1
            assert metrics.events_delivered == 2
            assert metrics.dropped.get("discarded_on_close", 0) == 2
