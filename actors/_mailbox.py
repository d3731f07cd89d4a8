from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable


#: Messages handled back to back before an actor's drain loop yields to other tasks (fairness under a flood).
BATCH_SIZE = 256


class Overflow(enum.Enum):
    """What a full mailbox does with one more message. Every drop is counted by reason."""

    #: Keep what is queued, drop the new message (the sender is not told).
    DROP_NEWEST = "drop_newest"
    #: Evict the oldest queued message to make room for the new one.
    DROP_OLDEST = "drop_oldest"
    #: Refuse the new message: ``tell`` and ``send`` raise :class:`MailboxFull`.
    REJECT = "reject"


class MailboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A mailbox's bound and overflow policy.

    :param capacity: the most messages queued at once (>= 1); every mailbox is bounded
    :param overflow: what happens to one more message when it is full
    :param reserved: slots at the top of ``capacity`` that only :meth:`ActorRef.tell_reserved` may fill (0 <=
        reserved < capacity): a lane kept for one privileged sender, so that a flood by the others cannot take it.
        ``tell``, ``send`` and ``ask`` see a mailbox of ``capacity - reserved``. The queue stays one FIFO: a
        reserved message keeps its place in the order of arrival.
    """

    capacity: int = 1000
    overflow: Overflow = Overflow.DROP_NEWEST
    reserved: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
            raise TypeError(f"MailboxSpec.capacity must be an int, got {type(self.capacity).__name__}")
        if self.capacity < 1:
            raise ValueError(f"MailboxSpec.capacity must be >= 1 (every mailbox is bounded), got {self.capacity}")
        if not isinstance(self.overflow, Overflow):
            raise TypeError(f"MailboxSpec.overflow must be an Overflow member, got {self.overflow!r}")
        if isinstance(self.reserved, bool) or not isinstance(self.reserved, int):
            raise TypeError(f"MailboxSpec.reserved must be an int, got {type(self.reserved).__name__}")
        if not 0 <= self.reserved < self.capacity:
            raise ValueError(
                f"MailboxSpec.reserved must be >= 0 and < capacity ({self.capacity}) so that ordinary messages keep "
                f"room, got {self.reserved}"
            )


class MailboxStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one mailbox's counters.

    The counts obey ``sent == processed + dropped_total + dead_lettered + queued`` at every instant.
    """

    capacity: int
    overflow: Overflow
    #: Slots of ``capacity`` kept for :meth:`ActorRef.tell_reserved`.
    reserved: int
    sent: int
    received: int
    processed: int
    queued: int
    high_water: int
    dropped: dict[str, int]
    dead_lettered: int

    @property
    def dropped_total(self) -> int:
        """All messages dropped by the overflow policy, whatever the reason."""
        return sum(self.dropped.values())


class Waker(Protocol):
    """What wakes an actor when its mailbox gets a message: an ``anyio.Event`` or a hibernating Incarnation."""

    def set(self) -> None: ...


class Mailbox:
    """The bounded queue behind an :class:`ActorRef`. It outlives actor instances, so a restart keeps its messages.

    The hot path (``ActorRef.tell`` and the actor's drain loop) reads and writes these slots directly: one deque
    append, one counter and, only when the actor sleeps, one wake-up per batch.
    """

    __slots__ = (
        "capacity",
        "dead_lettered",
        "drained",
        "dropped_newest",
        "dropped_oldest",
        "high_water",
        "limit",
        "overflow",
        "processed",
        "queue",
        "rejected",
        "sent",
        "space_waiters",
        "waiter",
        "waiter_class",
    )

    def __init__(self, spec: MailboxSpec) -> None:
        self.capacity = spec.capacity
        self.overflow = spec.overflow
        # The bound that ordinary messages see; the slots between it and ``capacity`` are the reserved lane.
        self.limit = spec.capacity - spec.reserved
        self.queue: deque[Any] = deque()
        self.sent = 0
        self.processed = 0
        self.dropped_newest = 0
        self.dropped_oldest = 0
        self.rejected = 0
        # Dead letters: ``dead_lettered`` counts them all, ``drained`` those that had been queued first.
        self.dead_lettered = 0
        self.drained = 0
        self.high_water = 0
        # The actor's wake-up: set only while its drain loop sleeps on an empty queue (an Event), or while the
        # actor hibernates without a task (its Incarnation, whose ``set`` resumes it).
        self.waiter: Waker | None = None
        # The running backend's Event class, found on the first sleep: ``anyio.Event()`` looks the backend up on
        # every call, and a busy actor sleeps once per batch (a mailbox serves one event loop all its life).
        self.waiter_class: Callable[[], anyio.Event] | None = None
        # Senders blocked in ``ActorRef.send`` waiting for room.
        self.space_waiters: list[anyio.Event] = []

    def wake(self) -> None:
        """Wake the actor's drain loop if it sleeps (a message arrived, or a stop was requested)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()

    async def wait_nonempty(self) -> None:
        """Sleep until a message arrives or :meth:`wake` is called."""
        if self.queue:
            return
        waiter_class = self.waiter_class
        if waiter_class is None:
            waiter = anyio.Event()
            self.waiter_class = type(waiter)
        else:
            waiter = waiter_class()
        self.waiter = waiter
        await waiter.wait()

    def wake_senders(self) -> None:
        """Let every sender blocked on a full mailbox try again (called after the actor took messages out)."""
        waiters, self.space_waiters = self.space_waiters, []
        for waiter in waiters:
            waiter.set()

    async def wait_for_space(self) -> None:
        """Sleep until the actor has taken messages out."""
        waiter = anyio.Event()
        self.space_waiters.append(waiter)
        await waiter.wait()

    def drain(self) -> list[Any]:
        """Remove and return everything queued, counted as dead letters (the ref was stopped or detached)."""
        items = list(self.queue)
        self.queue.clear()
        self.drained += len(items)
        self.dead_lettered += len(items)
        self.wake_senders()
        return items

    def statistics(self) -> MailboxStatistics:
        """Return a frozen snapshot of the counters."""
        queued = len(self.queue)
        dropped = {
            reason: count
            for reason, count in (
                ("drop_newest", self.dropped_newest),
                ("drop_oldest", self.dropped_oldest),
                ("rejected", self.rejected),
            )
            if count
        }
        return MailboxStatistics(
            capacity=self.capacity,
            overflow=self.overflow,
            reserved=self.capacity - self.limit,
            sent=self.sent,
            received=self.processed + self.dropped_oldest + queued + self.drained,
            processed=self.processed,
            queued=queued,
            high_water=max(self.high_water, queued),
            dropped=dropped,
            dead_lettered=self.dead_lettered,
        )
