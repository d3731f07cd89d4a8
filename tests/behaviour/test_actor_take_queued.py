from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from actors import Actor, ActorRef, MailboxSpec, Message, open_actor_system
from actors._mailbox import BATCH_SIZE

pytestmark = pytest.mark.anyio


class Tap(Message, frozen=True, kw_only=True):
    n: int


class LoudTap(Tap, frozen=True, kw_only=True):
    """A subclass of Tap: take_queued(Tap) takes exactly Tap, not this."""


class Batcher(Actor[Any]):
    """Handles a run of queued Taps in one call and records each run it handled; fails on the Tap ``fail_on``."""

    def __init__(self, runs: list[list[int]], *, fail_on: int | None = None, eager: bool = False) -> None:
        self.runs = runs
        self.fail_on = fail_on
        self.eager = eager
        self.others: list[Any] = []

    async def receive(self, message: Any) -> Any:
        if type(message) is Tap:
            run = [message.n]
            self.runs.append(run)
            if self.eager:
                self._handle_list(run, self.take_queued_list(Tap))
                return None
            for tap in self.take_queued(Tap):
                if tap.n == self.fail_on:
                    raise RuntimeError(f"failed on {tap.n}")
                run.append(tap.n)
        elif message == "ping":
            return "pong"
        else:
            self.others.append(message)
        return None

    def _handle_list(self, run: list[int], taps: list[Tap]) -> None:
        """take_queued_list's contract: what a failure leaves unhandled goes back with requeue."""
        for index, tap in enumerate(taps):
            if tap.n == self.fail_on:
                self.requeue(taps[index + 1 :])
                raise RuntimeError(f"failed on {tap.n}")
            run.append(tap.n)


def tell_all(ref: ActorRef[Any], messages: list[Any]) -> None:
    # Told without a checkpoint in between: they are all queued before the actor handles the first.
    for message in messages:
        ref.tell(message)


class CountingInterceptor:
    """Wraps receive so that every message it sees is counted (a fault injector instruments actors this way)."""

    def __init__(self) -> None:
        self.seen = 0

    def instrument(self, actor: Any) -> None:
        inner = actor.receive

        async def counted(message: Any) -> Any:
            self.seen += 1
            return await inner(message)

        actor.receive = counted


@pytest.fixture(params=[False, True], ids=["lazy", "list"])
def eager(request: pytest.FixtureRequest) -> bool:
    """Each test runs with take_queued (lazy) and with take_queued_list (its list twin, with requeue)."""
    value: bool = request.param
    return value


class TestTakeQueued:
    async def test_take_queued_run_of_one_type_handled_in_one_call(self, eager: bool) -> None:
        runs: list[list[int]] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Batcher(runs, eager=eager))
            tell_all(ref, [Tap(n=n) for n in range(10)])
            assert await ref.ask("ping") == "pong"
        assert runs == [list(range(10))]

    async def test_take_queued_queue_holding_only_that_type_taken_whole(self, eager: bool) -> None:
        # Nothing but Taps queued (no ask behind them): take_queued_list takes the whole queue at once.
        runs: list[list[int]] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Batcher(runs, eager=eager))
            tell_all(ref, [Tap(n=n) for n in range(10)])
            with anyio.fail_after(5):
                while ref.statistics().mailbox.processed < 10:
                    await anyio.lowlevel.checkpoint()
            mailbox = ref.statistics().mailbox
        assert runs == [list(range(10))]
        assert (mailbox.sent, mailbox.processed, mailbox.queued) == (10, 10, 0)

    async def test_take_queued_other_type_ends_the_run_in_order(self, eager: bool) -> None:
        runs: list[list[int]] = []
        instances: list[Batcher] = []

        def build() -> Batcher:
            instances.append(Batcher(runs, eager=eager))
            return instances[-1]

        async with open_actor_system() as system:
            ref = await system.start(build)
            tell_all(ref, [Tap(n=0), Tap(n=1), "between", Tap(n=2), LoudTap(n=3), Tap(n=4)])
            assert await ref.ask("ping") == "pong"
        # A LoudTap is not exactly a Tap: it ends the run and reaches receive on its own.
        assert runs == [[0, 1], [2], [4]]
        assert instances[0].others == ["between", LoudTap(n=3)]

    async def test_take_queued_batch_end_caps_each_run(self, eager: bool) -> None:
        # A run ends where the drain loop's batch does: BATCH_SIZE messages, the one receive was called with included.
        runs: list[list[int]] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Batcher(runs, eager=eager), mailbox=MailboxSpec(capacity=1000))
            tell_all(ref, [Tap(n=n) for n in range(600)])
            assert await ref.ask("ping") == "pong"
        assert [len(run) for run in runs] == [BATCH_SIZE, BATCH_SIZE, 600 - 2 * BATCH_SIZE]
        assert [n for run in runs for n in run] == list(range(600))

    async def test_take_queued_handler_failing_mid_run_leaves_the_rest_queued(self, eager: bool) -> None:
        runs: list[list[int]] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Batcher(runs, fail_on=3, eager=eager))
            tell_all(ref, [Tap(n=n) for n in range(6)])
            with anyio.fail_after(5):
                while ref.is_alive:
                    await anyio.lowlevel.checkpoint()
            mailbox = ref.statistics().mailbox
        # Taps 4 and 5 were never taken: the unsupervised actor stopped with them queued, so they are dead letters.
        assert runs == [[0, 1, 2]]
        assert (mailbox.processed, mailbox.dead_lettered) == (4, 2)

    async def test_take_queued_messages_taken_counted_as_processed(self, eager: bool) -> None:
        async with open_actor_system() as system:
            ref = await system.start(lambda: Batcher([], eager=eager))
            tell_all(ref, [Tap(n=n) for n in range(50)])
            assert await ref.ask("ping") == "pong"
            mailbox = ref.statistics().mailbox
        assert (mailbox.sent, mailbox.processed, mailbox.queued) == (51, 51, 0)
        assert mailbox.sent == mailbox.processed + mailbox.dropped_total + mailbox.dead_lettered + mailbox.queued

    async def test_take_queued_instrumented_actor_each_message_meets_the_interceptor(self, eager: bool) -> None:
        runs: list[list[int]] = []
        interceptor = CountingInterceptor()
        async with open_actor_system() as system:
            ref = await system.start(lambda: Batcher(runs, eager=eager))
            ref.add_interceptor(interceptor)
            tell_all(ref, [Tap(n=n) for n in range(5)])
            assert await ref.ask("ping") == "pong"
            ref.remove_interceptor(interceptor)
        # Nothing is taken past an instrumented receive: a fault that slows or fails each message still does.
        assert runs == [[0], [1], [2], [3], [4]]
        assert interceptor.seen == 6

    def test_take_queued_outside_a_running_actor_raises(self) -> None:
        with pytest.raises(Exception, match="not running"):
            Batcher([]).take_queued(Tap)


class TestTakeQueuedList:
    async def test_take_queued_list_failure_requeued_rest_goes_first_to_the_next_instance(self) -> None:
        # What a failing handler gives back is queued again ahead of what came later, in order, and the next
        # instance of the same ref handles it: nothing taken is lost, nothing is handled twice.
        runs: list[list[int]] = []
        exits: list[Any] = []
        async with open_actor_system() as system:
            ref = system.create_ref(name="batcher")
            await system.start_incarnation(
                ref, lambda: Batcher(runs, fail_on=3, eager=True), on_exit=lambda r, why: exits.append(why)
            )
            tell_all(ref, [Tap(n=n) for n in range(6)])
            with anyio.fail_after(5):
                while not exits:
                    await anyio.lowlevel.checkpoint()
            ref.tell(Tap(n=6))  # told between the instances: behind the requeued ones
            await system.start_incarnation(ref, lambda: Batcher(runs, eager=True), on_exit=None)
            assert await ref.ask("ping") == "pong"
            mailbox = ref.statistics().mailbox
            await system.stop_incarnation(ref, timeout=1.0)
        assert runs == [[0, 1, 2], [4, 5, 6]]  # tap 3 failed the first instance; it is not given back
        assert (mailbox.processed, mailbox.queued) == (8, 0)
        assert mailbox.sent == mailbox.processed + mailbox.dropped_total + mailbox.dead_lettered + mailbox.queued

    def test_take_queued_list_outside_a_running_actor_raises(self) -> None:
        with pytest.raises(Exception, match="not running"):
            Batcher([]).take_queued_list(Tap)

    async def test_requeue_by_a_stale_instance_goes_to_dead_letters(self) -> None:
        # An instance that is no longer the ref's current one (a task it left running, say) cannot push messages
        # into a mailbox it no longer drains: they become dead letters, and the counts still add up.
        runs: list[list[int]] = []
        instances: list[Batcher] = []

        def build() -> Batcher:
            instances.append(Batcher(runs, eager=True))
            return instances[-1]

        async with open_actor_system() as system:
            ref = system.create_ref(name="batcher")
            await system.start_incarnation(ref, build, on_exit=None)
            tell_all(ref, [Tap(n=n) for n in range(3)])
            assert await ref.ask("ping") == "pong"
            await system.stop_incarnation(ref, timeout=1.0)
            instances[0].requeue([Tap(n=1), Tap(n=2)])
            mailbox = ref.statistics().mailbox
        assert runs == [[0, 1, 2]]
        assert (mailbox.processed, mailbox.dead_lettered, mailbox.queued) == (2, 2, 0)
        assert mailbox.sent == mailbox.processed + mailbox.dropped_total + mailbox.dead_lettered + mailbox.queued
