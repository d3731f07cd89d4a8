# Regressions found in review of the run-handling path (take_queued, tell_many, the batched tap), and the edges it
# must keep: fairness under a flood, a failure part way through a run, a poison tap and the monitor's restart.
from __future__ import annotations

import itertools
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from actors import Actor, ActorRef, MailboxSpec, Message, Overflow, open_actor_system
from actors._mailbox import BATCH_SIZE
from actors.chat import _bridge as bridge_module, _detection as detection_module
from actors.chat._bridge_messages import BridgeConfig
from actors.chat._events import (
    RunStarted,
    StampedEvent,
    TextMessageContent,
    ToolCallEnd,
    ToolCallStart,
    stamp,
)
from actors.chat._monitor import ChatEventMonitor, MonitorMemory
from actors.chat._tap import DeliveryProgress
from tests.behaviour.test_bridge_fast_path import PathSink
from tests.behaviour.test_bridge_support import TapRecorder, open_bridge, spawn_recorder, stamped_events, until
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio

NO_TICK = 3600.0


class Item(Message, frozen=True, kw_only=True):
    n: int


class RunHandler(Actor[Any]):
    """Handles each run of queued Items in one receive, as the bridge and the monitor do."""

    async def receive(self, message: Any) -> Any:
        if type(message) is Item:
            self.take_queued(Item)
        return None


async def sample_processed(ref: ActorRef[Any], total: int, samples: list[int]) -> None:
    """Record the actor's processed count each time this task gets to run, until ``total`` are processed."""
    while True:
        processed = ref.statistics().processed
        samples.append(processed)
        if processed >= total:
            return
        await anyio.lowlevel.checkpoint()


class TestFairness:
    async def test_take_queued_drain_loop_yields_after_batch_size_messages(self) -> None:
        # Regression: BATCH_SIZE is the most messages an actor handles back to back before other tasks run
        # (fairness under a flood). The drain loop counted receive calls, not messages: a flood handled in runs
        # went BATCH_SIZE receives x BATCH_SIZE messages (the bridge's mailbox holds 65,536 publishes) without
        # yielding.
        # (Bound: two batches between two samples, as trio may run the actor's task last in one scheduling round
        # and first in the next.)
        total = 8 * BATCH_SIZE
        async with open_actor_system() as system:
            ref = await system.start(RunHandler, mailbox=MailboxSpec(capacity=2 * total))
            samples: list[int] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample_processed, ref, 1 + total, samples)
                await anyio.lowlevel.checkpoint()
                ref.tell_many([Item(n=n) for n in range(total)])
                ref.tell("end")  # another type: the last run ends here
        gaps = [after - before for before, after in itertools.pairwise(samples)]
        assert max(gaps) <= 2 * BATCH_SIZE + 1, gaps


def bad_metadata() -> TextMessageContent:
    # Accepted by BridgeHandle.publish (its type is an AG-UI event), but stamp() cannot merge metadata that is not
    # a mapping: a struct built in code is not validated.
    return TextMessageContent(message_id="m", delta="bad", metadata=[1])  # type: ignore[arg-type]


def bad_timestamp() -> TextMessageContent:
    return TextMessageContent(message_id="m", delta="bad", timestamp="soon")  # type: ignore[arg-type]


class TestBridgeFailureMidRun:
    async def test_publish_that_cannot_be_stamped_counted_invalid_rest_of_run_routed(self) -> None:
        # Regression: such a publish raised in the bridge (a critical actor), in the middle of a run of publishes.
        async with open_bridge(BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK)) as (system, bridge):
            recorder, log = spawn_recorder(system, capacity=1000)
            bridge.attach_monitor(recorder)
            await bridge.get_metrics()
            bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            bridge.publish("t", "r", bad_metadata())
            bridge.publish("t", "r", TextMessageContent(message_id="m", delta="after"))
            bridge.publish("t", "r", bad_timestamp())
            bridge.publish("t", "r", TextMessageContent(message_id="m", delta="last"))
            metrics = await bridge.get_metrics()
            await until(lambda: len(stamped_events(log)) == 3)
            assert bridge.ref.is_alive
        assert (metrics.events_received, metrics.events_accepted) == (5, 3)
        assert [tap.seq for tap in stamped_events(log)] == [1, 2, 3]  # the rejected ones take no seq

    async def test_publish_raising_mid_run_earlier_tapped_later_still_queued(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Regression: the events routed before a publish that raised were never tapped (they waited for a flush),
        # and the publishes behind it were taken with it and vanished (before runs, they stayed queued: a
        # restarted bridge routes them, a stopped one counts them as dead letters).
        real_stamp = stamp

        def failing_stamp(event: Any, **fields: Any) -> StampedEvent:
            if getattr(event, "delta", None) == "poison":
                raise RuntimeError("a bug in the bridge")
            return real_stamp(event, **fields)

        monkeypatch.setattr(bridge_module, "stamp", failing_stamp)
        async with open_bridge(BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK)) as (system, bridge):
            recorder, log = spawn_recorder(system, capacity=1000)
            bridge.attach_monitor(recorder)
            await bridge.get_metrics()
            bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            bridge.publish("t", "r", TextMessageContent(message_id="m", delta="before"))
            bridge.publish("t", "r", TextMessageContent(message_id="m", delta="poison"))
            bridge.publish("t", "r", TextMessageContent(message_id="m", delta="after-1"))
            bridge.publish("t", "r", TextMessageContent(message_id="m", delta="after-2"))
            await until(lambda: not bridge.ref.is_alive)
            await until(lambda: recorder.statistics().queued == 0)
            stats = bridge.ref.statistics()
        assert [tap.seq for tap in stamped_events(log)] == [1, 2]
        assert stats.dead_lettered == 2, stats


def tap(event: Any, seq: int, observed_at: int) -> StampedEvent:
    return stamp(event, thread_id="t", run_id="r", seq=seq, observed_at=observed_at)


class TestMonitorFailureMidRun:
    async def test_poison_tap_mid_run_anomalies_of_earlier_taps_still_reported(self) -> None:
        # Regression: a lone TOOL_CALL_END is a missing start and an orphan completion. A tap behind it in the same
        # run that the tracker cannot take (a timestamp that is not a number: told to the monitor directly, the
        # bridge rejects it) fails the monitor, and what the first tap revealed was dropped with it.
        memory = MonitorMemory()
        async with open_actor_system() as system:
            monitor = await system.start(lambda: ChatEventMonitor(memory=memory))
            bad = TextMessageContent(message_id="m", delta="x", timestamp="soon")  # type: ignore[arg-type]
            monitor.tell_many([tap(ToolCallEnd(tool_call_id="c"), 1, 1000), tap(bad, 2, 1000)])
            await until(lambda: not monitor.is_alive)
        assert memory.last_tapped is not None
        assert memory.last_tapped.seq == 2  # the poison counts as seen
        kinds = {anomaly.kind.value for anomaly in memory.alerts}
        assert "missing_agent_started" in kinds, kinds

    async def test_poison_tap_mid_run_taps_behind_it_stay_queued(self) -> None:
        # The monitor takes a run of taps as a list (Actor.take_queued_list): those behind the one that raised were
        # taken with it, and must go back to the mailbox for the next instance (here there is none, so the stopped
        # monitor counts them as dead letters) instead of vanishing with the failed one.
        async with open_actor_system() as system:
            monitor = await system.start(lambda: ChatEventMonitor(memory=MonitorMemory()))
            bad = TextMessageContent(message_id="m", delta="x", timestamp="soon")  # type: ignore[arg-type]
            after = [tap(TextMessageContent(message_id="m", delta="y"), seq, 1000) for seq in (3, 4)]
            monitor.tell_many([tap(RunStarted(thread_id="t", run_id="r"), 1, 1000), tap(bad, 2, 1000), *after])
            await until(lambda: not monitor.is_alive)
            stats = monitor.statistics()
        assert (stats.mailbox.processed, stats.dead_lettered) == (2, 2), stats

    async def test_poison_tap_report_raising_taps_behind_it_still_requeued_and_poisoned(self) -> None:
        # Regression (review): reporting what the earlier taps revealed went first, and a dispatcher whose REJECT
        # mailbox is full made it raise: the poison and the requeue were skipped, and the taps behind were lost.
        memory = MonitorMemory()
        async with open_actor_system() as system:
            dispatcher = system.create_ref(name="alerts", mailbox=MailboxSpec(capacity=1, overflow=Overflow.REJECT))
            dispatcher.tell("filler")  # full: its next tell raises MailboxFull
            monitor = await system.start(lambda: ChatEventMonitor(memory=memory, dispatcher=dispatcher))
            bad = TextMessageContent(message_id="m", delta="x", timestamp="soon")  # type: ignore[arg-type]
            after = [tap(TextMessageContent(message_id="m", delta="y"), seq, 1000) for seq in (3, 4)]
            monitor.tell_many([tap(ToolCallEnd(tool_call_id="c"), 1, 1000), tap(bad, 2, 1000), *after])
            await until(lambda: not monitor.is_alive)
            stats = monitor.statistics()
        assert (stats.mailbox.processed, stats.dead_lettered) == (2, 2), stats
        assert list(memory.poisoned) == [("t", 2)]

    async def test_same_tap_object_twice_failing_second_gives_back_only_what_is_behind(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Regression (review): the failing tap was found in the run by identity, first occurrence: the same object
        # told twice, failing the second time, gave back the failing tap and what was ingested after the first.
        real = detection_module._IN_TIME[ToolCallStart]
        calls: list[StampedEvent] = []

        def second_call_raises(tracker: Any, run: Any, stamped: StampedEvent) -> Any:
            calls.append(stamped)
            if len(calls) == 2:
                raise RuntimeError("a bug in the tracker")
            return real(tracker, run, stamped)

        monkeypatch.setitem(detection_module._IN_TIME, ToolCallStart, second_call_raises)
        async with open_actor_system() as system:
            monitor = await system.start(lambda: ChatEventMonitor(memory=MonitorMemory()))
            start = tap(ToolCallStart(tool_call_id="c", tool_call_name="f"), 2, 1000)
            after = tap(TextMessageContent(message_id="m", delta="y"), 4, 1000)
            monitor.tell_many([tap(RunStarted(thread_id="t", run_id="r"), 1, 1000), start, start, after])
            await until(lambda: not monitor.is_alive)
            stats = monitor.statistics()
        assert (stats.mailbox.processed, stats.dead_lettered) == (3, 1), stats


class Snapshots(Actor[Any]):
    """Stands in for the bridge's ReplaySnapshot answers: the first ask gets nothing, later ones ``later``."""

    def __init__(self, later: list[StampedEvent]) -> None:
        self.later = later
        self.asked = 0

    async def receive(self, message: Any) -> Any:
        self.asked += 1
        return [] if self.asked == 1 else self.later


class TestMonitorPoisonRestart:
    async def test_poison_tap_counted_seen_restarted_monitor_starts(self) -> None:
        # Regression: the tap that raised counts as seen, and seen events are what the rebuild replays silently:
        # the poison raised again in the next instance's on_start, and every restart failed until the supervisor
        # gave up. The memory now keeps it poisoned and the rebuild skips it.
        memory = MonitorMemory()
        good = tap(RunStarted(thread_id="t", run_id="r"), 1, 1000)
        bad = tap(TextMessageContent(message_id="m", delta="x", timestamp="soon"), 2, 1000)  # type: ignore[arg-type]
        async with open_actor_system() as system:
            bridge = await system.start(lambda: Snapshots([good, bad]))
            first = await system.start(lambda: ChatEventMonitor(memory=memory, bridge=bridge))
            first.tell_many([good, bad])
            await until(lambda: not first.is_alive)
            assert memory.last_tapped is bad
            second = await system.start(lambda: ChatEventMonitor(memory=memory, bridge=bridge))
            assert second.is_alive
            assert (list(memory.poisoned), memory.poisoned_total) == ([("t", 2)], 1)


class TestEdgesSound:
    async def test_tell_many_resumes_a_hibernating_actor(self) -> None:
        # The mailbox's waiter is then the Incarnation itself (Incarnation.set), not an Event.
        log: list[Any] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: TapRecorder(log))  # started with nothing queued: hibernates
            assert ref._mailbox.waiter is ref._incarnation
            assert ref.tell_many(["a", "b"]) == 2
            await until(lambda: len(log) == 2)
        assert log == ["a", "b"]

    async def test_tell_many_keeps_the_reserved_lane(self) -> None:
        # Room in ``capacity`` but not below ``limit``: the run is told one by one and ordinary tells stop at the
        # limit, leaving the reserved slots to tell_reserved.
        log: list[Any] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: TapRecorder(log), mailbox=MailboxSpec(capacity=6, reserved=2))
            gate = anyio.Event()
            ref.tell(("block", gate))
            await until(lambda: ref.statistics().queued == 0)
            assert ref.tell_many(list(range(6))) == 4
            ref.tell_reserved("lifecycle")
            gate.set()
            await until(lambda: len(log) == 5)
            stats = ref.statistics()
        assert log == [0, 1, 2, 3, "lifecycle"]
        assert stats.dropped == {"drop_newest": 2}
        assert stats.sent == stats.processed + stats.dropped_total + stats.dead_lettered + stats.queued

    @virtual_time
    async def test_delivery_report_never_confirms_a_seq_not_tapped_before_it(self) -> None:
        # Runs of publishes and ticks interleaved: every DeliveryProgress in the monitor's mailbox comes after the
        # taps of every seq it confirms (MonitorTap.pending is flushed within the message that filled it).
        config = BridgeConfig(coalesce_at=None, tick_interval=0.05)
        async with open_bridge(config) as (system, bridge):
            monitor, log = spawn_recorder(system)
            bridge.attach_monitor(monitor)
            sink = PathSink()
            await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            sent = 0
            for burst in range(12):
                for _ in range(1 + burst * 7):
                    bridge.publish("t", "r", TextMessageContent(message_id="m", delta=f"<{sent}>"))
                    sent += 1
                await anyio.sleep(0.03)
            await anyio.sleep(0.2)
        tapped = 0
        reports = 0
        for message in log:
            if isinstance(message, StampedEvent):
                assert message.seq == tapped + 1
                tapped = message.seq
            elif isinstance(message, DeliveryProgress):
                reports += 1
                assert message.confirmed.get("t", 0) <= tapped, (message, tapped)
        assert (tapped, reports > 1) == (sent, True)
