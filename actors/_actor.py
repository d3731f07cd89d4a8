from __future__ import annotations

import abc
from itertools import islice, repeat
from operator import call, countOf
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._exceptions import ActorError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._clock import Clock
    from ._incarnation import Incarnation
    from ._mailbox import Mailbox
    from ._message import ExitReason
    from ._ref import ActorRef
    from ._system import ActorSystem
    from ._timers import Timer

MsgT = TypeVar("MsgT")
QueuedT = TypeVar("QueuedT")


class Actor(abc.ABC, Generic[MsgT]):
    """Base class for actors. State lives on the instance and is touched only by the actor's own task.

    Subclasses implement :meth:`receive`; its return value answers an ``ask``. A supervisor may replace the
    instance after a failure: the new instance gets the same ref and the messages still queued.
    """

    __incarnation: Incarnation | None = None

    def _attach(self, incarnation: Incarnation) -> None:
        self.__incarnation = incarnation

    @property
    def _current(self) -> Incarnation:
        incarnation = self.__incarnation
        if incarnation is None:
            raise ActorError(f"{type(self).__name__} is not running: spawn it through an ActorSystem first")
        return incarnation

    @property
    def ref(self) -> ActorRef[MsgT]:
        """This actor's own ref (stable across restarts)."""
        return self._current.ref

    @property
    def system(self) -> ActorSystem:
        """The actor system this actor runs in."""
        return self._current.ref._system

    @property
    def clock(self) -> Clock:
        """The runtime clock (virtual in tests and simulations)."""
        return self._current.ref._system.clock

    @abc.abstractmethod
    async def receive(self, message: MsgT) -> Any:
        """Handle one message; the return value is the reply to an ``ask``.

        Raising fails this instance: its supervisor decides what happens next (an unsupervised actor stops).
        """

    async def on_start(self) -> None:  # an optional hook: doing nothing is the right default
        """Run once before the first message; raising here fails the start."""

    async def on_stop(self, reason: ExitReason) -> None:  # an optional hook, as on_start
        """Run once after the last message, on a normal, shutdown or error exit (not when cancelled)."""

    def on_kill(self) -> None:
        """Run synchronously when the instance is cancelled (``on_stop`` cannot run then); it must not await.

        Supervisors use it to take their children down with them.
        """

    def take_queued(self, kind: type[QueuedT]) -> Iterator[QueuedT]:
        """Iterate over the messages of type ``kind`` queued right behind the current one, to handle them in this call.

        An actor whose messages come in floods (the monitor's taps, the bridge's publishes) handles a run of them in
        one pass instead of paying the drain loop's dispatch and a ``receive`` call for each. Each message is taken
        from the head of the mailbox (and counted as handled) only when the iteration reaches it, so a handler that
        fails part way leaves the rest queued for whoever handles the mailbox next (a restarted instance). The run
        ends at the first message of another type (exactly ``kind``, not a subclass: an ask or a timer ends it too)
        and where the drain loop's batch ends (:data:`BATCH_SIZE` messages, these included), so that the actor
        still lets other tasks run between batches. Nothing is taken while a fault injector instruments the actor,
        so that each message still goes through its instrumented ``receive``.

        The whole run is one ``receive`` call: a handler deadline (``handler_timeout``) applies to it as a whole.

        :param kind: the message type to take
        :return: an iterator over the messages, oldest first (empty when the next message is not a ``kind``)
        """
        incarnation = self._current
        ref = incarnation.ref
        if ref._interceptors:
            return iter(())
        return _take_queued(incarnation, ref._mailbox, kind)

    def take_queued_list(self, kind: type[QueuedT]) -> list[QueuedT]:
        """Take at once, as a list, the messages :meth:`take_queued` would iterate over.

        For a handler whose per-message work is a few dozen bytecodes (the monitor's taps), where resuming the lazy
        iterator for each message is a noticeable share. The same run is taken (exactly ``kind``, up to the end of
        the drain loop's batch, nothing while a fault injector instruments the actor), and all of it is counted as
        handled at once: a handler that fails part way must give back what it did not handle with
        :meth:`requeue`, or those messages are lost with the failing instance.

        :param kind: the message type to take
        :return: the messages, oldest first (empty when the next message is not a ``kind``)
        """
        incarnation = self._current
        ref = incarnation.ref
        if ref._interceptors:
            return []
        mailbox = ref._mailbox
        queue = mailbox.queue
        room = min(len(queue), incarnation.batch_end - mailbox.processed)
        taken: list[QueuedT]
        if room > 0 and countOf(map(type, islice(queue, room)), kind) == room:
            # The common case, a run of one kind (a flood of taps), in C: ~13 ns per message for a whole queue and
            # ~25 for part of one, against ~35 for the loop below. (Part of a queue is popped one by one: copying
            # what stays behind would cost a backlog of 100,000 taps a full copy per batch.)
            if room == len(queue):
                taken = list(queue)
                queue.clear()
            else:
                taken = list(map(call, repeat(queue.popleft, room)))
        else:
            taken = []
            take = taken.append
            popleft = queue.popleft
            for _ in range(room):
                if type(queue[0]) is not kind:
                    break
                take(popleft())
        mailbox.processed += len(taken)
        return taken

    def requeue(self, messages: Sequence[MsgT]) -> None:
        """Put messages taken with :meth:`take_queued_list` and not handled back at the head of the mailbox.

        They are queued again in the order given, ahead of everything else, and are no longer counted as handled:
        the next ``receive`` (this instance's, or a restarted one's) gets them first. Call it before the handler
        awaits anything after the take, and on any exception, cancellation included (``except BaseException``:
        it never awaits): their room in the mailbox was then still theirs, so this ignores the capacity and never
        drops one. A handler that awaits between the take and a failure should use :meth:`take_queued`, which
        leaves the untaken messages where they are. An instance that is no longer the ref's current one (a
        stale object) gives them to dead letters instead.

        :param messages: the messages not handled, oldest first (the tail of the list that was taken)
        """
        incarnation = self._current
        ref = incarnation.ref
        mailbox = ref._mailbox
        mailbox.processed -= len(messages)  # taken, not handled: counted again as queued, or as dead letters
        if incarnation.finished or ref._incarnation is not incarnation:
            for message in messages:
                ref._dead_letter(message)
            return
        mailbox.queue.extendleft(reversed(messages))

    def stop(self) -> None:
        """Stop this actor after the current message (exit reason ``normal``)."""
        self._current.request_stop(owner=False, normal=True)

    def send_after(self, delay: float, message: MsgT) -> Timer:
        """Deliver ``message`` to this actor once, after ``delay`` seconds.

        The timer is cancelled when this instance stops or is replaced.
        """
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        return self._current.start_timer(delay, None, message)

    def send_every(self, interval: float, message: MsgT, *, first_after: float | None = None) -> Timer:
        """Deliver ``message`` to this actor every ``interval`` seconds, at a fixed rate.

        :param first_after: delay before the first delivery (default: ``interval``)
        """
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        first = interval if first_after is None else first_after
        if first < 0:
            raise ValueError(f"first_after must be >= 0 seconds, got {first}")
        return self._current.start_timer(first, interval, message)

    def watch(self, ref: ActorRef[Any]) -> None:
        """Receive ``Terminated(ref, reason)`` when ``ref`` stops for good (at once if it already has)."""
        self._current.ref._system.watch(self._current.ref, ref)

    def unwatch(self, ref: ActorRef[Any]) -> None:
        """Cancel a :meth:`watch`: no ``Terminated`` for ``ref`` is delivered after this call."""
        self._current.ref._system.unwatch(self._current.ref, ref)


def _take_queued(incarnation: Incarnation, mailbox: Mailbox, kind: type[QueuedT]) -> Iterator[QueuedT]:
    queue = mailbox.queue
    batch_end = incarnation.batch_end  # the batch this receive call belongs to
    while queue and type(queue[0]) is kind and mailbox.processed < batch_end:
        mailbox.processed += 1
        yield queue.popleft()
