from __future__ import annotations

import contextlib
import gc
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings, strategies as st

from actors import (
    Actor,
    ActorFailed,
    ActorNameTaken,
    ActorNotFound,
    ActorRef,
    ActorStartError,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    ExitKind,
    MailboxFull,
    MailboxSpec,
    Overflow,
    RefState,
    Terminated,
    open_actor_system,
)
from tests.conftest import virtual_time

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio


class Recorder(Actor[Any]):
    """Records every message; answers "get" with what it has seen, raises on "boom", sleeps on ("sleep", s)."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.seen: list[Any] = [] if log is None else log

    async def receive(self, message: Any) -> Any:
        if message == "get":
            return list(self.seen)
        if message == "boom":
            raise RuntimeError("boom")
        if isinstance(message, tuple) and message[0] == "sleep":
            await anyio.sleep(message[1])
            return "slept"
        self.seen.append(message)
        return None


async def wait_until_drained(ref: ActorRef[Any]) -> None:
    while ref.statistics().queued:
        await anyio.lowlevel.checkpoint()


def assert_conserved(ref: ActorRef[Any]) -> None:
    stats = ref.statistics()
    assert stats.sent == stats.processed + stats.dropped_total + stats.dead_lettered + stats.queued, stats


class TestTellAndOrder:
    async def test_tell_many_messages_processed_in_fifo_order(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=10_000))
            for i in range(5_000):
                ref.tell(i)
            assert await ref.ask("get") == list(range(5_000))
            assert_conserved(ref)

    async def test_two_senders_each_sender_order_preserved(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=100_000))

            async def sender(tag: str) -> None:
                for i in range(500):
                    ref.tell((tag, i))
                    if i % 7 == 0:
                        await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender, "a")
                tg.start_soon(sender, "b")
            seen = await ref.ask("get")
            for tag in ("a", "b"):
                assert [i for t, i in seen if t == tag] == list(range(500))

    async def test_tell_before_actor_runs_is_queued_not_lost(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder)
            ref.tell("first")  # the actor's task has not run yet
            assert await ref.ask("get") == ["first"]


class TestOverflow:
    @pytest.mark.parametrize("policy", list(Overflow))
    async def test_flood_sender_never_blocks_counts_exact(self, policy: Overflow) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=10, overflow=policy))
            rejected = 0
            for i in range(100):  # no await in this loop: the actor cannot drain, the flood is total
                try:
                    ref.tell(i)
                except MailboxFull:
                    rejected += 1
            stats = ref.statistics()
            assert stats.queued == 10
            assert stats.dropped_total == 90
            await wait_until_drained(ref)
            seen = await ref.ask("get")
            if policy is Overflow.DROP_NEWEST:
                assert seen == list(range(10))
                assert stats.dropped == {"drop_newest": 90}
            elif policy is Overflow.DROP_OLDEST:
                assert seen == list(range(90, 100))
                assert stats.dropped == {"drop_oldest": 90}
            else:
                assert rejected == 90
                assert seen == list(range(10))
                assert stats.dropped == {"rejected": 90}
            assert_conserved(ref)

    async def test_send_full_mailbox_waits_for_room_then_delivers(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=2))
            for i in range(50):
                await ref.send(i)  # backpressure: never dropped
            assert await ref.ask("get") == list(range(50))
            assert ref.statistics().dropped_total == 0

    async def test_ask_full_mailbox_waits_for_room_then_replies(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=1))
            ref.tell("x")
            assert await ref.ask("get", timeout=5) == ["x"]
            assert ref.statistics().dropped_total == 0

    @virtual_time
    async def test_queued_ask_evicted_by_drop_oldest_fails_with_mailbox_full(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=1, overflow=Overflow.DROP_OLDEST))
            ref.tell(("sleep", 10.0))  # keeps the actor busy in its handler
            while ref.statistics().processed < 1:
                await anyio.lowlevel.checkpoint()
            async with anyio.create_task_group() as tg:
                failures: list[BaseException] = []

                async def asker() -> None:
                    try:
                        await ref.ask("get")
                    except MailboxFull as exc:
                        failures.append(exc)

                tg.start_soon(asker)
                while ref.statistics().queued < 1:
                    await anyio.lowlevel.checkpoint()
                ref.tell("newer")  # evicts the queued ask
            assert len(failures) == 1
            assert ref.statistics().dropped == {"drop_oldest": 1}


class TestConservation:
    @settings(max_examples=30, deadline=None)
    @given(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("tell"), st.integers(0, 50)),
                st.tuples(st.just("yield"), st.integers(0, 3)),
                st.just(("stop", 0)),
            ),
            max_size=60,
        ),
        capacity=st.integers(1, 20),
        policy=st.sampled_from(list(Overflow)),
    )
    async def test_any_sequence_sent_equals_processed_dropped_dead_queued(
        self, ops: list[tuple[str, int]], capacity: int, policy: Overflow
    ) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, mailbox=MailboxSpec(capacity=capacity, overflow=policy))
            sent = 0
            for op, n in ops:
                if op == "tell":
                    for i in range(n):
                        sent += 1
                        with contextlib.suppress(MailboxFull):
                            ref.tell(i)
                elif op == "yield":
                    for _ in range(n):
                        await anyio.lowlevel.checkpoint()
                else:
                    await ref.stop()
                assert_conserved(ref)
            assert ref.statistics().sent == sent


class TestAsk:
    @virtual_time
    async def test_ask_timeout_raised_at_deadline_late_reply_dropped_and_counted(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder)
            start = anyio.current_time()
            with pytest.raises(AskTimeout):
                await ref.ask(("sleep", 10.0), timeout=1.0)
            assert anyio.current_time() - start == pytest.approx(1.0)
            # The late reply arrives at t=10 and must neither crash the replier nor reach the next ask.
            await anyio.sleep(10.0)
            assert system.dead_letters.count("late_reply") == 1
            assert await ref.ask("get") == []
            assert ref.is_alive

    async def test_ask_stopped_actor_fails_fast(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder)
            await ref.stop()
            with anyio.fail_after(1):
                with pytest.raises(ActorStopped):
                    await ref.ask("get", timeout=None)
            assert system.dead_letters.count("stopped") == 1

    async def test_ask_handler_raises_asker_gets_actor_failed_with_cause(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder)
            with pytest.raises(ActorFailed) as info:
                await ref.ask("boom")
            assert isinstance(info.value.__cause__, RuntimeError)
            assert isinstance(info.value.cause, RuntimeError)

    async def test_asks_queued_behind_a_crash_fail_as_stopped_for_unsupervised_actor(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder)
            ref.tell("boom")
            with pytest.raises(ActorStopped):
                await ref.ask("get")
            assert ref.stop_reason is not None
            assert ref.stop_reason.kind is ExitKind.ERROR


class Ticker(Actor[Any]):
    def __init__(self, log: list[tuple[int, Any]], generation: int) -> None:
        self.log = log
        self.generation = generation

    async def on_start(self) -> None:
        self.send_every(1.0, "tick")

    async def receive(self, message: Any) -> Any:
        self.log.append((self.generation, message))
        return None


class TestRestartHook:
    async def test_new_instance_same_ref_keeps_queued_messages(self) -> None:
        log: list[Any] = []
        exits: list[Any] = []
        async with open_actor_system() as system:
            ref = system.create_ref(name="worker")
            await system.start_incarnation(ref, lambda: Recorder(log), on_exit=lambda r, why: exits.append(why))
            ref.tell("boom")
            for i in range(5):
                ref.tell(i)  # queued behind the crash
            while not exits:
                await anyio.lowlevel.checkpoint()
            assert exits[0].kind is ExitKind.ERROR
            assert ref.state == RefState.RESTARTING
            ref.tell(5)  # told between instances: still queued
            await system.start_incarnation(ref, lambda: Recorder(log), on_exit=lambda r, why: exits.append(why))
            await wait_until_drained(ref)
            assert log == [0, 1, 2, 3, 4, 5]
            assert system.lookup("worker") is ref
            assert ref.statistics().restarts == 1
            await system.stop_incarnation(ref, timeout=1.0)

    @virtual_time
    async def test_stop_incarnations_in_parallel_each_reported_once_refs_stay_open(self) -> None:
        exits: list[Any] = []
        reported: list[tuple[int, ExitKind | None, float]] = []
        async with open_actor_system() as system:
            refs = [system.create_ref(name=name) for name in ("slow", "idle", "quick", "never-started")]
            for ref in refs[:3]:
                await system.start_incarnation(ref, Recorder, on_exit=lambda r, why: exits.append(why))
            refs[0].tell(("sleep", 100.0))  # ignores its graceful stop: cancelled at its 3 s timeout
            refs[2].tell(("sleep", 0.5))  # finishes its message, then stops within its 1 s timeout
            await anyio.sleep(0.01)
            started = anyio.current_time()

            def each(index: int, reason: Any) -> None:
                kind = None if reason is None else reason.kind
                reported.append((index, kind, round(anyio.current_time() - started, 1)))

            await system.stop_incarnations(refs, [3.0, 2.0, 1.0, 5.0], each=each)
            # Reported in deadline order (the idle one ended at once, but is seen once the quick one has ended).
            assert reported == [
                (3, None, 0.0),
                (2, ExitKind.SHUTDOWN, 0.5),
                (1, ExitKind.SHUTDOWN, 0.5),
                (0, ExitKind.KILLED, 3.0),
            ]
            assert exits == []  # stopped by their owner: no exit notice
            assert [ref.state for ref in refs[:3]] == [RefState.RESTARTING] * 3  # the refs stay open
            with pytest.raises(ValueError, match="same length"):
                await system.stop_incarnations(refs, [1.0])

    @virtual_time
    async def test_timers_of_old_instance_never_fire_into_new_one(self) -> None:
        log: list[tuple[int, Any]] = []
        async with open_actor_system() as system:
            ref = system.create_ref(name="ticker")
            await system.start_incarnation(ref, lambda: Ticker(log, 1), on_exit=None)
            await anyio.sleep(3.5)
            await system.stop_incarnation(ref, timeout=1.0)
            await system.start_incarnation(ref, lambda: Ticker(log, 2), on_exit=None)
            await anyio.sleep(3.5)
            assert [g for g, _ in log] == [1, 1, 1, 2, 2, 2]

    async def test_start_failure_raises_and_leaves_nothing_running(self) -> None:
        class Broken(Actor[Any]):
            async def on_start(self) -> None:
                raise ValueError("no config")

            async def receive(self, message: Any) -> Any:
                return None

        async with open_actor_system() as system:
            with pytest.raises(ActorStartError) as info:
                await system.start(Broken, name="broken")
            assert isinstance(info.value.cause, ValueError)
            with pytest.raises(ActorNotFound):
                system.lookup("broken")

    async def test_detached_ref_dead_letters_then_reattach_queues_again(self) -> None:
        async with open_actor_system() as system:
            ref = system.create_ref(name="flaky")
            ref.tell("queued")
            system.detach(ref)
            ref.tell("lost")
            assert ref.statistics().dead_lettered == 2
            assert system.dead_letters.count("detached") == 2
            system.reattach(ref)
            ref.tell("kept")
            log: list[Any] = []
            await system.start_incarnation(ref, lambda: Recorder(log), on_exit=None)
            await wait_until_drained(ref)
            assert log == ["kept"]
            assert_conserved(ref)
            await system.stop_incarnation(ref, timeout=1.0)


class Watcher(Actor[Any]):
    def __init__(self, got: list[Terminated]) -> None:
        self.got = got

    async def receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "watch":
            self.watch(message[1])
        elif isinstance(message, tuple) and message[0] == "unwatch":
            self.unwatch(message[1])
        elif isinstance(message, Terminated):
            self.got.append(message)
        return None


class TestDeathWatch:
    async def test_watch_target_stops_terminated_delivered_with_reason(self) -> None:
        got: list[Terminated] = []
        async with open_actor_system() as system:
            target = system.spawn(Recorder)
            watcher = system.spawn(lambda: Watcher(got))
            await watcher.ask(("watch", target))
            target.tell("boom")
            with anyio.fail_after(1):
                while not got:
                    await anyio.lowlevel.checkpoint()
            assert got[0].ref is target
            assert got[0].reason.kind is ExitKind.ERROR

    async def test_watch_already_dead_target_terminated_delivered_at_once(self) -> None:
        got: list[Terminated] = []
        async with open_actor_system() as system:
            target = system.spawn(Recorder)
            await target.stop()
            watcher = system.spawn(lambda: Watcher(got))
            await watcher.ask(("watch", target))
            await watcher.ask("sync")
            assert [t.ref for t in got] == [target]
            assert got[0].reason.kind is ExitKind.SHUTDOWN

    async def test_unwatch_suppresses_terminated(self) -> None:
        got: list[Terminated] = []
        async with open_actor_system() as system:
            target = system.spawn(Recorder)
            watcher = system.spawn(lambda: Watcher(got))
            await watcher.ask(("watch", target))
            await watcher.ask(("unwatch", target))
            await target.stop()
            await watcher.ask("sync")
            assert got == []


class TestTimers:
    @virtual_time
    async def test_send_after_fires_once_at_delay(self) -> None:
        fired: list[float] = []

        class Once(Actor[Any]):
            async def on_start(self) -> None:
                self.send_after(2.5, "ding")

            async def receive(self, message: Any) -> Any:
                fired.append(anyio.current_time())
                return None

        async with open_actor_system() as system:
            start = anyio.current_time()
            system.spawn(Once)
            await anyio.sleep(10)
            assert [round(t - start, 6) for t in fired] == [2.5]

    @virtual_time
    async def test_send_every_fixed_rate_over_an_hour(self) -> None:
        log: list[tuple[int, Any]] = []
        async with open_actor_system() as system:
            system.spawn(lambda: Ticker(log, 1))
            await anyio.sleep(3600.5)
            assert len(log) == 3600

    @virtual_time
    async def test_timer_cancel_stops_delivery(self) -> None:
        log: list[Any] = []

        class Cancelling(Actor[Any]):
            async def on_start(self) -> None:
                self.timer = self.send_every(1.0, "tick")

            async def receive(self, message: Any) -> Any:
                log.append(message)
                if len(log) == 3:
                    self.timer.cancel()
                return None

        async with open_actor_system() as system:
            system.spawn(Cancelling)
            await anyio.sleep(100)
            assert log == ["tick"] * 3


class TestLifecycle:
    async def test_name_registry_taken_then_freed_after_stop(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, name="unique")
            with pytest.raises(ActorNameTaken):
                system.spawn(Recorder, name="unique")
            await ref.stop()
            with pytest.raises(ActorNotFound):
                system.lookup("unique")
            assert system.spawn(Recorder, name="unique") is not ref

    async def test_on_stop_runs_with_reason_after_graceful_stop(self) -> None:
        reasons: list[Any] = []

        class Tidy(Recorder):
            async def on_stop(self, reason: Any) -> None:
                reasons.append(reason.kind)

        async with open_actor_system() as system:
            ref = system.spawn(Tidy)
            ref.tell(1)
            await ref.stop()
            assert reasons == [ExitKind.SHUTDOWN]

    @virtual_time
    async def test_stop_ignored_handler_cancelled_after_timeout(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder)
            ref.tell(("sleep", 1000.0))
            await anyio.sleep(0.1)
            start = anyio.current_time()
            reason = await ref.stop(timeout=2.0)
            assert anyio.current_time() - start == pytest.approx(2.0)
            assert reason.kind is ExitKind.KILLED
            assert "timeout" in reason.detail

    @virtual_time
    async def test_handler_past_deadline_cancelled_and_fails_actor(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, handler_timeout=5.0)
            ref.tell(("sleep", 60.0))
            await anyio.sleep(6.0)
            assert ref.state == RefState.STOPPED
            assert ref.stop_reason is not None
            assert "deadline" in ref.stop_reason.detail

    # Regression guard: the drain keeps one cancel scope for its whole life (not one per batch), so neither the
    # time spent idle between messages nor the handlers of earlier batches may count towards a handler's deadline.
    @virtual_time
    async def test_handler_deadline_counts_only_the_running_handler_not_idle_time_or_earlier_batches(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Recorder, handler_timeout=5.0)
            for _ in range(3):
                for _ in range(600):  # more than two batches, 2.4 s of handlers in all, 4 ms each
                    ref.tell(("sleep", 0.004))
                await anyio.sleep(20.0)  # all handled, then idle for four deadlines
                assert ref.state == RefState.RUNNING
                assert ref.statistics().processed % 600 == 0
            ref.tell(("sleep", 60.0))  # the one handler past its deadline: cut exactly 5 s after it started
            await anyio.sleep(4.99)
            assert ref.state == RefState.RUNNING
            await anyio.sleep(0.02)
            assert ref.state == RefState.STOPPED
            assert ref.stop_reason is not None
            assert "deadline" in ref.stop_reason.detail

    # Regression: a handler that returned just as its deadline passed (its wake-up already scheduled when the
    # watcher cancelled) left the cancellation to land in the next message's handler, which was cut and blamed:
    # its ask failed with ActorFailed(HandlerTimeout).
    @virtual_time
    async def test_handler_returning_at_its_deadline_fails_the_actor_not_the_next_message(self) -> None:
        log: list[Any] = []
        released = anyio.Event()

        class Waits(Actor[Any]):
            async def receive(self, message: Any) -> Any:
                log.append(("start", message))
                if message == "wait":
                    await released.wait()
                log.append(("end", message))

        async def release_at_the_deadline() -> None:
            await anyio.sleep_until(anyio.current_time() + 5.0)
            released.set()

        async with open_actor_system() as system, anyio.create_task_group() as tg:
            ref = system.spawn(Waits, handler_timeout=5.0)
            tg.start_soon(release_at_the_deadline)
            ref.tell("wait")
            ref.tell("next")
            await anyio.sleep(20.0)
            assert ref.state == RefState.STOPPED
            assert ref.stop_reason is not None
            assert "deadline" in ref.stop_reason.detail
            assert ("start", "next") not in log

    async def test_system_exit_leaves_no_actor_task_behind(self) -> None:
        cancelled: list[str] = []

        class Stubborn(Actor[Any]):
            async def receive(self, message: Any) -> Any:
                try:
                    await anyio.sleep_forever()
                finally:
                    cancelled.append("stubborn")

        system_ref: list[ActorSystem] = []
        with anyio.fail_after(5):
            async with open_actor_system(shutdown_timeout=0.05) as system:
                system_ref.append(system)
                for _ in range(20):
                    system.spawn(Recorder).tell(1)
                system.spawn(Stubborn).tell("hang")
                await anyio.sleep(0.01)
        assert cancelled == ["stubborn"]
        assert system_ref[0].names() == []

    async def test_body_error_propagates_unwrapped(self) -> None:
        async def body() -> None:
            async with open_actor_system() as system:
                system.spawn(Recorder)
                raise KeyError("from the body")

        with pytest.raises(KeyError):
            await body()


class TestTimerOverflow:
    @virtual_time
    async def test_timer_into_full_reject_mailbox_counted_not_fatal(self) -> None:
        # Regression: a timer tick refused by a full REJECT mailbox raised MailboxFull into the system's task group
        # and took every actor down.
        class Busy(Actor[Any]):
            async def on_start(self) -> None:
                self.send_every(1.0, "tick")

            async def receive(self, message: Any) -> Any:
                await anyio.sleep(100.0)

        async with open_actor_system() as system:
            ref = system.spawn(Busy, mailbox=MailboxSpec(capacity=2, overflow=Overflow.REJECT))
            other = system.spawn(Recorder)
            await anyio.sleep(10.0)
            assert ref.statistics().dropped.get("rejected", 0) >= 5
            assert await other.ask("get") == []
            assert ref.is_alive


class TestStartRegressions:
    @virtual_time
    async def test_on_start_sets_timer_then_raises_start_error_not_hang(self) -> None:
        # Regression: an on_start that set a timer and then raised hung its starter forever.
        class TimerThenFail(Actor[Any]):
            async def on_start(self) -> None:
                self.send_every(1.0, "tick")
                raise ValueError("bad config")

            async def receive(self, message: Any) -> Any:
                return None

        async with open_actor_system() as system:
            with anyio.fail_after(60):
                with pytest.raises(ActorStartError):
                    await system.start(TimerThenFail)

    async def test_brutal_stop_before_first_run_is_a_kill(self) -> None:
        # Regression: a kill requested before the instance's task first ran was ignored.
        class Idle(Actor[Any]):
            async def receive(self, message: Any) -> Any:
                return None

        async with open_actor_system() as system:
            ref = system.spawn(Idle)
            reason = await ref.stop(timeout=0)
            assert reason.kind is ExitKind.KILLED


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic collector: whatever is freed meanwhile was freed by reference counting alone."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def wait_freed(*handles: weakref.ref[Any]) -> bool:
    """Give the ended tasks a few scheduler passes to unwind; return whether every referent was freed."""
    for _ in range(20):
        if all(handle() is None for handle in handles):
            return True
        await anyio.lowlevel.checkpoint()
    return all(handle() is None for handle in handles)


class TestReferenceCycles:
    # Regression: every stopped actor was cyclic garbage (instance <-> incarnation <-> ref). It reached the oldest
    # generation with the actor and waited there for a full collection, which rescans every live object: with
    # thousands of actors, those collections made stopping them cost more per actor (bench/supervisor_scale.py).
    async def test_stopped_actor_freed_by_reference_counting_alone(self) -> None:
        with cyclic_gc_paused():
            async with open_actor_system() as system:
                ref = system.spawn(Recorder)
                ref.tell("one")
                assert await ref.ask("get") == ["one"]
                instance = weakref.ref(ref.current_instance)
                handle = weakref.ref(ref)
                await ref.stop()
                del ref
                assert await wait_freed(instance, handle)

    async def test_killed_actor_freed_by_reference_counting_alone(self) -> None:
        with cyclic_gc_paused():
            async with open_actor_system() as system:
                ref = system.spawn(Recorder)
                ref.tell(("sleep", 1000.0))
                await wait_until_drained(ref)
                instance = weakref.ref(ref.current_instance)
                handle = weakref.ref(ref)
                reason = await ref.stop(timeout=0)
                assert reason.kind is ExitKind.KILLED
                del ref
                assert await wait_freed(instance, handle)

    async def test_replaced_instance_freed_by_reference_counting_alone(self) -> None:
        with cyclic_gc_paused():
            async with open_actor_system() as system:
                ref = system.create_ref(Recorder, name="restarted")
                await system.start_incarnation(ref, Recorder, on_exit=None)
                first = weakref.ref(ref.current_instance)
                assert await system.stop_incarnation(ref, timeout=None) is not None
                await system.start_incarnation(ref, Recorder, on_exit=None)
                assert await wait_freed(first)
                assert ref.current_instance is not None


class Answer:
    """An ask's answer that a weak reference can follow."""


class Answerer(Actor[Any]):
    async def receive(self, message: Any) -> Answer:
        return Answer()


class TestAnsweredAskFreed:
    # Regression: an answered ask's reply stayed alive after the asker had it: in the answering actor's drain loop
    # until its next ask, and in the ask-deadline heap until the deadline. A 5,120-event replay snapshot so outlived
    # the rings that held its events, and freeing it later, all at once, stalled the loop 2.5-4 ms
    # (bench/isolation.py, a process monitor killed and restarted).
    @pytest.mark.parametrize("timeout", [5.0, None])
    async def test_answered_ask_reply_freed_once_the_asker_drops_it(self, timeout: float | None) -> None:
        with cyclic_gc_paused():
            async with open_actor_system() as system:
                ref = await system.start(Answerer)
                answer = weakref.ref(await ref.ask("question", timeout=timeout))
                assert await wait_freed(answer)
                assert ref.is_alive
