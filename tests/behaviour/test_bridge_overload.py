from __future__ import annotations

import anyio
import pytest

from actors.chat._bridge_messages import BridgeConfig, SubscribeOutcome
from actors.chat._connection import MemorySink
from actors.chat._events import (
    LIFECYCLE_EVENT_TYPES,
    AgentEvent,
    RunFinished,
    RunStarted,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    is_delta,
)
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    covered_seqs,
    frames,
    meta,
    open_bridge,
    seqs,
    settled,
    until,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


def text(i: int) -> TextMessageContent:
    return TextMessageContent(message_id="m1", delta=f"<{i}>")


def chat_run(n_text: int, n_args: int) -> list[AgentEvent]:
    """One run: start, a streamed message, a tool call with streamed arguments, finish."""
    events: list[AgentEvent] = [RunStarted(thread_id="t", run_id="r"), TextMessageStart(message_id="m1")]
    events += [TextMessageContent(message_id="m1", delta=f"w{i} ") for i in range(n_text)]
    events += [TextMessageEnd(message_id="m1"), ToolCallStart(tool_call_id="c1", tool_call_name="search")]
    events += [ToolCallArgs(tool_call_id="c1", delta=f'"a{i}",') for i in range(n_args)]
    events += [ToolCallEnd(tool_call_id="c1"), RunFinished(thread_id="t", run_id="r")]
    return events


class TestSlowConsumer:
    @virtual_time
    async def test_slow_client_does_not_delay_others_closed_4001_resumes_losslessly(self) -> None:
        config = BridgeConfig(writer_queue_capacity=8, slow_consumer_after=5.0, coalesce_at=None)
        async with open_bridge(config) as (_, bridge):
            slow = MemorySink(delay=1.0)
            fast = [MemorySink() for _ in range(5)]
            slow_id = await bridge.connect(slow, principal="p")
            await bridge.subscribe(slow_id, "t")
            for sink in fast:
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            start = anyio.current_time()
            for i in range(100):
                bridge.publish("t", "r", text(i))
            await until(lambda: all(sink.sent == 100 for sink in fast))
            # Everyone else got all 100 before a single second of the slow client's time passed.
            assert anyio.current_time() - start < 1.0
            assert all(seqs(sink) == list(range(1, 101)) for sink in fast)
            await anyio.sleep(6.0)
            assert slow.close_code == 4001
            assert "resume with afterSeq" in (slow.close_reason or "")
            got = seqs(slow)
            assert got == list(range(1, len(got) + 1))
            assert 3 <= len(got) <= 7  # one frame a second until it was closed at 5 s (+ one tick)
            (closed,) = await bridge.connection_statistics(slow_id)
            assert_connection_conserved(closed)
            assert closed.close_code == 4001
            # The client reconnects and resumes after the last seq it saw: it gets the rest, exactly once.
            again = MemorySink()
            result = await bridge.subscribe(await bridge.connect(again, principal="p"), "t", after_seq=got[-1])
            assert result.outcome is SubscribeOutcome.SUBSCRIBED
            await settled(bridge)
            assert got + seqs(again) == list(range(1, 101))
            metrics = await bridge.get_metrics()
            assert metrics.slow_consumer_closes == 1
            assert metrics.connections_closed == {"4001": 1}

    @virtual_time
    async def test_client_that_stops_reading_closed_4001_by_its_writer(self) -> None:
        # The queue never fills (capacity 100, 3 events), so only the writer's own deadline can catch this.
        config = BridgeConfig(writer_queue_capacity=100, slow_consumer_after=5.0)
        async with open_bridge(config) as (_, bridge):
            stuck, other = MemorySink(), MemorySink()
            stuck.stall()
            for sink in (stuck, other):
                await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(3):
                bridge.publish("t", "r", text(i))
            start = anyio.current_time()
            await until(lambda: stuck.closed, timeout=60)
            assert anyio.current_time() - start == pytest.approx(5.0, abs=0.2)
            assert (stuck.close_code, stuck.frames) == (4001, [])
            assert other.sent == 3
            await anyio.sleep(0.5)
            metrics = await bridge.get_metrics()
            assert metrics.slow_consumer_closes == 1
            assert metrics.dropped["discarded_on_close"] == 3

    @virtual_time
    async def test_brief_stall_lags_then_catches_up_from_ring_in_order(self) -> None:
        config = BridgeConfig(writer_queue_capacity=4, slow_consumer_after=5.0, coalesce_at=None)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            sink.stall()
            for i in range(50):
                bridge.publish("t", "r", text(i))
            await anyio.sleep(2.0)
            (lagging,) = await bridge.connection_statistics(cid)
            assert lagging.state == "lagging"
            assert lagging.received == 4  # never more than the queue's capacity handed over
            assert lagging.deferred == 46
            sink.release()
            await settled(bridge)
            assert seqs(sink) == list(range(1, 51))
            assert not sink.closed
            metrics = await bridge.get_metrics()
            assert (metrics.events_deferred, metrics.events_caught_up, metrics.deferred_pending) == (46, 46, 0)

    @virtual_time
    async def test_stall_longer_than_ring_closed_4002(self) -> None:
        config = BridgeConfig(writer_queue_capacity=4, replay_capacity=16, slow_consumer_after=50.0)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            sink.stall()
            for i in range(100):
                bridge.publish("t", "r", text(i))
            # The bridge must route them while the client is stalled (answered after the publishes, in order):
            # released before that, the bridge writes every frame straight to the idle sink and nobody lags.
            metrics = await bridge.get_metrics()
            assert metrics.events_deferred > 16
            sink.release()
            await until(lambda: sink.closed)
            assert sink.close_code == 4002  # its place in the stream is gone: resuming cannot be lossless


class TestCoalescing:
    @virtual_time
    async def test_backlog_of_deltas_coalesced_content_and_lifecycle_kept(self) -> None:
        config = BridgeConfig(writer_queue_capacity=256, coalesce_at=8)
        async with open_bridge(config) as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="p")
            await bridge.subscribe(cid, "t")
            sink.stall()
            run = chat_run(40, 10)
            for event in run:
                bridge.publish("t", "r", event)
            await anyio.sleep(1.0)
            sink.release()
            await settled(bridge)
            got = frames(sink)
            # Every event's content arrived, in order: the text and the arguments concatenate to the originals.
            assert "".join(e.delta for e in got if isinstance(e, TextMessageContent)) == "".join(
                f"w{i} " for i in range(40)
            )
            assert "".join(e.delta for e in got if isinstance(e, ToolCallArgs)) == "".join(
                f'"a{i}",' for i in range(10)
            )
            assert [type(e) for e in got if not is_delta(e)] == [type(e) for e in run if not is_delta(e)]
            assert covered_seqs(sink, "t") == list(range(1, len(run) + 1))
            (stats,) = await bridge.connection_statistics(cid)
            assert stats.coalesced == len(run) - len(got) > 0
            assert stats.delivered == len(got)
            assert_connection_conserved(stats)
            # Merged frames carry the last seq they cover; lifecycle events each keep a frame of their own.
            lifecycle = [e for e in got if type(e) in LIFECYCLE_EVENT_TYPES]
            assert len(lifecycle) == 4
            assert all("firstSeq" not in meta(e) for e in lifecycle)

    async def test_queue_below_high_water_mark_nothing_coalesced(self) -> None:
        async with open_bridge(BridgeConfig(coalesce_at=64)) as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            for i in range(200):
                bridge.publish("t", "r", text(i))
                if i % 10 == 9:
                    await settled(bridge)
            await settled(bridge)
            assert seqs(sink) == list(range(1, 201))
            assert (await bridge.get_metrics()).events_coalesced == 0

    @virtual_time
    async def test_deltas_of_different_messages_never_merged(self) -> None:
        async with open_bridge(BridgeConfig(coalesce_at=2)) as (_, bridge):
            sink = MemorySink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            sink.stall()
            for i in range(12):
                bridge.publish("t", "r", TextMessageContent(message_id=f"m{i % 2}", delta=str(i)))
            await anyio.sleep(0.1)
            sink.release()
            await settled(bridge)
            assert [e.delta for e in frames(sink) if isinstance(e, TextMessageContent)] == [str(i) for i in range(12)]
