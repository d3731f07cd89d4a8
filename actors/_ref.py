from __future__ import annotations

import heapq
import itertools
import math
import weakref
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import msgspec

from ._exceptions import ActorFailed, ActorStopped, AskTimeout, MailboxFull
from ._mailbox import Mailbox, MailboxSpec, MailboxStatistics, Overflow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._incarnation import Incarnation
    from ._message import ExitReason
    from ._system import ActorSystem

MsgT = TypeVar("MsgT")


class Interceptor(Protocol):
    """Instruments each new actor instance behind a ref (fault injection): e.g. wraps its ``receive``."""

    def instrument(self, actor: Any) -> None:
        """Called with every new instance, after it is built and before ``on_start``."""
        ...


class RefState:
    """The lifecycle states of a ref, as reported by ``statistics().state`` and supervisors."""

    IDLE = "idle"  # created, no instance yet: messages queue
    STARTING = "starting"  # an instance is running on_start: messages queue
    RUNNING = "running"
    RESTARTING = "restarting"  # supervised, between instances: messages queue (bounded)
    DETACHED = "detached"  # a non-critical child taken out of service: messages are dead letters
    STOPPED = "stopped"  # for good: messages are dead letters, watchers were told


_CLOSED_STATES = frozenset({RefState.DETACHED, RefState.STOPPED})


class AskRequest:
    """An ask in flight: the mailbox item that carries the question and the slot its answer goes to."""

    __slots__ = ("abandoned", "done", "error", "finished", "message", "reply")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.done = anyio.Event()
        self.finished = False
        self.abandoned = False
        self.reply: Any = None
        self.error: ActorFailed | ActorStopped | MailboxFull | None = None

    def resolve(self, reply: Any) -> bool:
        """Deliver the reply; return False when the asker already gave up (the caller counts a late reply)."""
        if self.abandoned:
            return False
        self.reply = reply
        self.finished = True
        self.done.set()
        return True

    def fail(self, error: ActorFailed | ActorStopped | MailboxFull) -> bool:
        """Deliver an error instead of a reply; return False when the asker already gave up."""
        if self.abandoned:
            return False
        self.error = error
        self.finished = True
        self.done.set()
        return True

    def expire(self) -> None:
        """Give up on the reply (its deadline passed) and wake the asker, unless the answer came first."""
        if not self.finished and not self.abandoned:
            self.abandoned = True
            self.done.set()


class AskDeadlines:
    """Times out the asks of one actor system from one task, so that an ask needs no cancel scope of its own.

    Entering and leaving a cancel scope with a deadline was a quarter to a third of an ask round trip, on either
    backend (docs/performance.md). Instead an ask with a finite timeout pushes its deadline onto a heap here, and one
    task sleeps until the earliest deadline and expires the asks whose time is up (an ask with an earlier deadline
    than the one slept on moves the sleep forward). Answered asks stay in the heap until it is compacted, which
    happens once it has doubled since the last time, so the heap holds about twice the asks in flight at most (or 64
    entries).
    """

    __slots__ = ("_compact_at", "_heap", "_scope", "_sequence", "alive")

    _MIN_COMPACT = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, AskRequest]] = []
        self._sequence = itertools.count()  # breaks deadline ties without comparing requests
        self._compact_at = self._MIN_COMPACT
        # The cancel scope the task sleeps in (None while it is awake): its deadline is the earliest in the heap.
        self._scope: anyio.CancelScope | None = None
        #: False once the task has ended (its task group was cancelled): asks then time themselves out.
        self.alive = True

    def add(self, deadline: float, request: AskRequest) -> None:
        """Expire ``request`` at ``deadline`` (loop time) unless it is answered or abandoned first."""
        heap = self._heap
        if len(heap) >= self._compact_at:
            heap[:] = [entry for entry in heap if not (entry[2].finished or entry[2].abandoned)]
            heapq.heapify(heap)
            self._compact_at = max(self._MIN_COMPACT, 2 * len(heap))
        heapq.heappush(heap, (deadline, next(self._sequence), request))
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self) -> None:
        """Expire asks at their deadlines until cancelled; then hand every pending ask back to its asker."""
        heap = self._heap
        try:
            while True:
                with anyio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._scope = scope
                    await anyio.sleep_forever()
                # No await from here to the next scope: an ask added meanwhile is seen when the scope is rebuilt.
                self._scope = None
                now = anyio.current_time()
                while heap and heap[0][0] <= now:
                    heapq.heappop(heap)[2].expire()
        finally:
            self.alive = False
            self._scope = None
            pending = list(heap)
            heap.clear()
            for _, _, request in pending:
                # Neither answered nor expired: the asker wakes and waits out its deadline in its own scope.
                if not request.finished and not request.abandoned:
                    request.done.set()


#: One deadline task per actor system, started by its first ask with a timeout.
_SYSTEM_DEADLINES: weakref.WeakKeyDictionary[ActorSystem, AskDeadlines] = weakref.WeakKeyDictionary()


class TimerFire:
    """A timer's message, tagged with the instance that set it: a replaced instance's timers never reach the next."""

    __slots__ = ("incarnation", "message")

    def __init__(self, incarnation: Incarnation, message: Any) -> None:
        self.incarnation = incarnation
        self.message = message


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one actor: its state, mailbox counters and restarts.

    ``sent == processed + dropped_total + dead_lettered + queued`` holds for every snapshot.
    """

    name: str
    state: str
    sent: int
    received: int
    processed: int
    failed: int
    queued: int
    dropped: dict[str, int]
    dead_lettered: int
    restarts: int
    mailbox: MailboxStatistics

    @property
    def dropped_total(self) -> int:
        """All messages dropped by the overflow policy."""
        return sum(self.dropped.values())


class ActorRef(Generic[MsgT]):
    """The only handle to an actor. Stable across restarts: the mailbox belongs to the ref, not to the instance.

    ``tell`` never awaits, ``send`` waits for room, ``ask`` waits for the handler's return value.
    """

    __slots__ = (
        "__weakref__",
        "_deadlines",
        "_failed",
        "_incarnation",
        "_incarnations",
        "_interceptor_version",
        "_interceptors",
        "_mailbox",
        "_name",
        "_state",
        "_stop_reason",
        "_system",
        "_watchers",
    )

    def __init__(self, system: ActorSystem, name: str, mailbox: MailboxSpec) -> None:
        self._system = system
        self._name = name
        self._mailbox = Mailbox(mailbox)
        self._state = RefState.IDLE
        self._incarnation: Incarnation | None = None
        self._incarnations = 0
        self._failed = 0
        self._stop_reason: ExitReason | None = None
        # Both empty tuples until used: most refs are never watched nor instrumented, and a list per ref is one
        # more object for the cyclic GC to rescan for as long as the actor lives (bench/supervisor_scale.py).
        self._watchers: tuple[ActorRef[Any], ...] = ()
        # Fault injectors applied to every new instance behind this ref (see supervisors.faults).
        self._interceptors: tuple[Interceptor, ...] = ()
        #: Bumped whenever the interceptors change: the drain loop re-reads the instance's ``receive`` then.
        self._interceptor_version = 0
        self._deadlines: AskDeadlines | None = None

    @property
    def name(self) -> str:
        """The name this actor is registered under."""
        return self._name

    @property
    def state(self) -> str:
        """One of the :class:`RefState` values."""
        return self._state

    @property
    def is_alive(self) -> bool:
        """True unless the actor is stopped for good or detached."""
        return self._state not in _CLOSED_STATES

    @property
    def stop_reason(self) -> ExitReason | None:
        """Why the actor stopped for good, once it has."""
        return self._stop_reason

    def __repr__(self) -> str:
        return f"<ActorRef {self._name} {self._state}>"

    def tell(self, message: MsgT) -> None:
        """Queue a message without waiting. Never blocks and never raises, except under ``Overflow.REJECT``.

        A full mailbox applies its overflow policy and counts the drop; a stopped or detached actor's messages go
        to dead letters.

        :raises MailboxFull: when the mailbox is full and its policy is REJECT
        """
        mailbox = self._mailbox
        mailbox.sent += 1
        if self._state in _CLOSED_STATES:
            self._dead_letter(message)
            return
        queue = mailbox.queue
        if len(queue) < mailbox.limit:
            queue.append(message)
            waiter = mailbox.waiter
            if waiter is not None:
                mailbox.waiter = None
                waiter.set()
            return
        self._overflow(message)

    def tell_many(self, messages: Sequence[MsgT]) -> int:
        """Queue several messages without waiting: exactly :meth:`tell` of each, in order, in one step when they fit.

        For a sender that produces runs of messages (the bridge's taps): when the mailbox has room for all of them,
        they are queued with one append of the run and at most one wake-up; otherwise each is told in turn, so the
        overflow policy applies to each and every drop is counted.

        :return: how many were queued (the others were dropped, or dead-lettered if the actor has stopped); under
            DROP_OLDEST each one is, although later ones of the run may then evict earlier ones
        :raises MailboxFull: when the mailbox is full and its policy is REJECT (the messages before it are queued)
        """
        mailbox = self._mailbox
        queue = mailbox.queue
        count = len(messages)
        if len(queue) + count <= mailbox.limit and self._state not in _CLOSED_STATES:
            mailbox.sent += count
            queue.extend(messages)
            waiter = mailbox.waiter
            if waiter is not None and count:
                mailbox.waiter = None
                waiter.set()
            return count
        # Not queued: what DROP_NEWEST drops and what goes to dead letters (DROP_OLDEST queues each one).
        lost = mailbox.dropped_newest + mailbox.dead_lettered
        for message in messages:
            self.tell(message)
        return count - (mailbox.dropped_newest + mailbox.dead_lettered - lost)

    def tell_reserved(self, message: MsgT) -> None:
        """Like :meth:`tell`, but may also fill the mailbox's reserved slots (``MailboxSpec.reserved``).

        For one privileged sender whose messages must survive a flood by the others (the bridge's lifecycle taps
        into the monitor). Once the whole ``capacity`` is taken, the overflow policy applies as for ``tell``.

        :raises MailboxFull: when the mailbox is full and its policy is REJECT
        """
        mailbox = self._mailbox
        queue = mailbox.queue
        if mailbox.limit <= len(queue) < mailbox.capacity and self._state not in _CLOSED_STATES:
            mailbox.sent += 1
            queue.append(message)
            mailbox.wake()
            return
        self.tell(message)  # below the limit, completely full, or closed: exactly an ordinary tell

    def tell_control(self, message: Any) -> None:
        """Queue a runtime control message (``Terminated``, a child's exit) past the mailbox bound.

        Control messages must never be dropped: losing one would leave a watcher or a supervisor with a wrong
        picture. They are bounded by the number of watched actors and children, not by the sender's rate.
        """
        mailbox = self._mailbox
        mailbox.sent += 1
        if self._state in _CLOSED_STATES:
            self._dead_letter(message)
            return
        mailbox.queue.append(message)
        mailbox.wake()

    def _overflow(self, message: Any) -> None:
        mailbox = self._mailbox
        mailbox.high_water = max(mailbox.high_water, len(mailbox.queue))
        if mailbox.overflow is Overflow.DROP_NEWEST:
            mailbox.dropped_newest += 1
            if type(message) is AskRequest:
                message.fail(MailboxFull(self._name, mailbox.capacity, mailbox.overflow.value))
        elif mailbox.overflow is Overflow.DROP_OLDEST:
            evicted = mailbox.queue.popleft()
            mailbox.dropped_oldest += 1
            if type(evicted) is AskRequest:
                evicted.fail(MailboxFull(self._name, mailbox.capacity, mailbox.overflow.value))
            mailbox.queue.append(message)
        else:
            mailbox.rejected += 1
            raise MailboxFull(self._name, mailbox.capacity)

    def _dead_letter(self, message: Any) -> None:
        self._mailbox.dead_lettered += 1
        if type(message) is AskRequest:
            message.fail(ActorStopped(self._name, self._state))
            message = message.message
        elif type(message) is TimerFire:
            message = message.message
        self._system.dead_letters.record(self._name, self._state, message)

    async def send(self, message: MsgT) -> None:
        """Queue a message, waiting for room while the mailbox is full (backpressure).

        :raises ActorStopped: when the actor is stopped or detached (the message is also counted as a dead letter)
        """
        mailbox = self._mailbox
        while len(mailbox.queue) >= mailbox.limit and self._state not in _CLOSED_STATES:
            await mailbox.wait_for_space()
        if self._state in _CLOSED_STATES:
            state = self._state
            self.tell(message)
            raise ActorStopped(self._name, state)
        self.tell(message)

    async def ask(self, message: MsgT, *, timeout: float | None = 5.0) -> Any:
        """Send a message and wait for the handler's return value.

        :param timeout: seconds to wait for the reply; ``None`` waits forever. A reply arriving after the timeout
            is dropped and counted as a dead letter (``late_reply``); it never reaches a later ask.
        :return: whatever ``receive`` returned for this message
        :raises AskTimeout: when no reply came within ``timeout``
        :raises ActorStopped: when the actor is (or becomes, before handling it) stopped or detached
        :raises ActorFailed: when the handler raised; the original exception is its ``__cause__``
        :raises MailboxFull: when the request was dropped by the mailbox's overflow policy
        """
        if self._state in _CLOSED_STATES:
            self._mailbox.sent += 1
            self._dead_letter(message)
            raise ActorStopped(self._name, self._state)
        mailbox = self._mailbox
        deadlines: AskDeadlines | None = None
        deadline = math.inf
        if len(mailbox.queue) >= mailbox.limit:
            return await self._ask_scoped(message, timeout)
        if timeout is not None and timeout != math.inf:
            if not timeout > 0:  # zero, negative or NaN: the cancel scope's own rules decide, as they always did
                return await self._ask_scoped(message, timeout)
            deadlines = self._deadlines or self._start_deadlines()
            if deadlines is None or not deadlines.alive:
                return await self._ask_scoped(message, timeout)
            deadline = anyio.current_time() + timeout
        # The fast path: there is room in the mailbox, and the system's deadline task keeps the deadline (if any).
        request = AskRequest(message)
        try:
            if deadlines is not None:
                deadlines.add(deadline, request)
            self.tell(request)  # type: ignore[arg-type]  # the drain loop unwraps it
            await request.done.wait()
            if not request.finished and not request.abandoned:
                # The deadline task ended (its system is closing) before this ask was answered or expired.
                request.done = anyio.Event()
                with anyio.CancelScope(deadline=deadline):
                    await request.done.wait()
        finally:
            if not request.finished:
                request.abandoned = True
        return self._answer(request, timeout)

    def _start_deadlines(self) -> AskDeadlines | None:
        """Find or start the deadline task of this ref's system; None if the system no longer runs tasks."""
        system = self._system
        deadlines = _SYSTEM_DEADLINES.get(system)
        if deadlines is None:
            deadlines = AskDeadlines()
            try:
                system._task_group.start_soon(deadlines.run, name="ask deadlines")
            except RuntimeError:  # the system's task group has exited
                return None
            _SYSTEM_DEADLINES[system] = deadlines
        self._deadlines = deadlines
        return deadlines

    async def _ask_scoped(self, message: Any, timeout: float | None) -> Any:
        """The general ask: waits for room in the mailbox and for the reply inside one cancel scope."""
        request = AskRequest(message)
        try:
            # An ask waits anyway, so it also waits for room (backpressure) instead of being dropped.
            with anyio.move_on_after(timeout if timeout is not None else math.inf):
                mailbox = self._mailbox
                while len(mailbox.queue) >= mailbox.limit and self._state not in _CLOSED_STATES:
                    await mailbox.wait_for_space()
                self.tell(request)  # type: ignore[arg-type]  # the drain loop unwraps it
                await request.done.wait()
        finally:
            if not request.finished:
                request.abandoned = True
        return self._answer(request, timeout)

    def _answer(self, request: AskRequest, timeout: float | None) -> Any:
        if not request.finished:
            raise AskTimeout(self._name, timeout if timeout is not None else 0.0)
        error = request.error
        if error is not None:
            if isinstance(error, ActorFailed):
                raise error from error.cause
            raise error
        # Handed over, then dropped: the request may stay in the deadline heap until its deadline, and a large
        # reply kept alive that long is freed all at once later (a 5,120-event replay snapshot outlived the ring
        # that held its events, and freeing it stalled the loop 2.5-4 ms; bench/isolation.py).
        reply, request.reply = request.reply, None
        return reply

    async def stop(self, *, timeout: float | None = 5.0) -> ExitReason:
        """Stop the actor gracefully (after its current message, ``on_stop`` runs) and wait until it has.

        A supervised actor stopped this way exits with reason ``shutdown``: its supervisor applies the child's
        restart type (use the supervisor's ``terminate_child`` to stop a supervised child for good).

        :param timeout: how long a graceful stop may take before the actor is cancelled; 0 cancels at once
        :return: why it stopped
        """
        return await self._system.stop_actor(self, timeout=timeout)

    def add_interceptor(self, interceptor: Interceptor) -> None:
        """Instrument the running instance now and every later one (fault injection)."""
        self._interceptors = (*self._interceptors, interceptor)
        incarnation = self._incarnation
        if incarnation is not None and incarnation.actor is not None and not incarnation.finished:
            interceptor.instrument(incarnation.actor)
            self._interceptor_version += 1
            self._mailbox.wake()

    def remove_interceptor(self, interceptor: Interceptor) -> None:
        """Stop instrumenting new instances; the interceptor undoes its own changes to the running one."""
        if interceptor in self._interceptors:
            interceptors = list(self._interceptors)
            interceptors.remove(interceptor)
            self._interceptors = tuple(interceptors)
            # The caller restores the running instance's methods right after this (synchronously), before the
            # drain loop can look at the version again.
            self._interceptor_version += 1

    @property
    def current_instance(self) -> Any:
        """The actor instance running behind this ref right now, or None (for tests and fault injection)."""
        incarnation = self._incarnation
        if incarnation is None or incarnation.finished:
            return None
        return incarnation.actor

    def statistics(self) -> ActorStatistics:
        """Return a frozen snapshot of this actor's counters."""
        mailbox = self._mailbox.statistics()
        return ActorStatistics(
            name=self._name,
            state=self._state,
            sent=mailbox.sent,
            received=mailbox.received,
            processed=mailbox.processed,
            failed=self._failed,
            queued=mailbox.queued,
            dropped=mailbox.dropped,
            dead_lettered=mailbox.dead_lettered,
            restarts=max(0, self._incarnations - 1),
            mailbox=mailbox,
        )
