from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from actors.chat._anomaly import Anomaly, AnomalyKind
from actors.chat._oldest_first import pop_least_recently_active

if TYPE_CHECKING:
    from collections.abc import Mapping

    from actors.chat._deadlines import DeadlineHeap
    from actors.chat._run_state import _Run


_COMPACT_AFTER: Final = 64  # consumed slots at the head of a pending list before it is worth shifting


class ThreadDeliveries:
    """One thread's delivery state: the highest confirmed seq and the expected seqs above it, oldest first.

    It also remembers the thread's run last seen in flight (``current_run``), for the run tracker: the monitor
    looks the thread up for every routed event anyway, so finding the run through it saves a second lookup.
    """

    __slots__ = (
        "armed",
        "confirmed",
        "current_run",
        "gap",
        "head",
        "last_activity",
        "overdue_through",
        "pending",
        "queued_at",
        "thread_id",
        "tracked",
    )

    def __init__(self, thread_id: str, confirmed: int, now: int) -> None:
        self.thread_id = thread_id
        self.confirmed = confirmed
        # The open gap: the first seq of it that was reported (0: none open), and the highest seq found overdue.
        # The gap closes once a confirmation reaches overdue_through.
        self.gap = 0
        self.overdue_through = 0
        # Flat [seq, observed_at, seq, observed_at, ...] from index `head` on: no object per expectation (both ints
        # are the stamped event's own), and a few dozen bytes for the handful usually pending (a deque allocates a
        # 64-slot block up front). observed_at is non-decreasing because seqs arrive in acceptance order.
        self.pending: list[int] = []
        self.head = 0
        # Deadline of this thread's one current heap entry: at or before its oldest pending deadline, if any.
        self.armed: int | None = None
        self.tracked = True
        # For the cap's second-chance eviction: when the thread last had an event expected, and when it was (re)queued.
        self.last_activity = now
        self.queued_at = now
        self.current_run: _Run | None = None

    def is_current(self, due: int, tag: str | None) -> bool:
        """Whether the heap entry at ``due`` is still this thread's deadline."""
        return self.tracked and self.armed == due

    def waiting(self) -> int:
        """How many expected seqs are neither confirmed nor found overdue yet."""
        return (len(self.pending) - self.head) // 2

    def consumed(self, head: int) -> None:
        """Record that the pending entries before ``head`` are settled (confirmed or reported)."""
        pending = self.pending
        if head == len(pending):
            pending.clear()
            head = 0
        elif head >= _COMPACT_AFTER and 2 * head >= len(pending):
            del pending[:head]  # amortised O(1): at least as many entries were consumed as are moved
            head = 0
        self.head = head


class DeliveryTracker:
    """Detects ``undelivered_event``: events the bridge routed to a connection and never confirmed delivered.

    Per thread it keeps the highest confirmed seq and the pending (seq, observed_at) pairs, and at most one heap
    entry, which a confirmation does not cancel: when it comes due it takes what is overdue off the pending list
    and re-arms at the oldest deadline still pending. A busy thread whose events are delivered promptly so costs
    one heap entry per ``undelivered_after`` rather than one per event; an expectation is O(1), a confirmation
    O(seqs it covers).

    One anomaly per **gap**: the first overdue seqs of a thread open a gap, reported once and keyed by its first
    seq; seqs found overdue while it is open join it silently. It closes when a confirmation reaches the highest
    seq found overdue (the thread has caught up), and only then may a later overdue seq open, and report, a new
    one. A thread whose deliveries stall is so reported once, not once per check.

    :param deadlines: the heap shared with the run tracker.
    :param undelivered_ms: how long a seq may stay unconfirmed (``>=`` elapsed is late).
    :param max_threads: most threads with state; beyond it one that has had nothing expected since it was last
        queued is forgotten (second chance: approximately the least recently expected).
    """

    __slots__ = ("_armed", "_deadlines", "_evictions", "_max_threads", "_threads", "_undelivered_ms", "threads")

    def __init__(self, deadlines: DeadlineHeap, *, undelivered_ms: int, max_threads: int) -> None:
        self._deadlines = deadlines
        self._undelivered_ms = undelivered_ms
        self._max_threads = max_threads
        # Oldest queued first: the cap pops the front in O(1), giving a thread active since a second chance at the
        # back rather than moving it on every expectation.
        self._threads: OrderedDict[str, ThreadDeliveries] = OrderedDict()
        # The same table, for the run tracker's hot path: it never adds or removes a thread, but does expect()'s
        # common case inline (a thread already armed: append to pending, set last_activity), so keep the two in step.
        self.threads: dict[str, ThreadDeliveries] = self._threads
        self._armed = 0
        self._evictions = 0

    @property
    def evictions(self) -> int:
        """Threads with deliveries pending that were forgotten because ``max_threads`` was reached."""
        return self._evictions

    @property
    def armed(self) -> int:
        """Threads with a current entry in the heap (possibly early: confirmations leave it in place)."""
        return self._armed

    def pending(self) -> int:
        """Seqs expected and not yet confirmed nor found overdue, over all threads (O(threads): statistics only)."""
        return sum(thread.waiting() for thread in self._threads.values())

    def expect(self, thread_id: str, seq: int, observed_at: int) -> ThreadDeliveries:
        """Note that event ``seq`` of ``thread_id``, accepted at ``observed_at``, was routed to a connection.

        :return: the thread's state (created for its first expectation).
        """
        thread = self._threads.get(thread_id)
        if thread is None:
            thread = self._add(thread_id, seq - 1, observed_at)
        if seq > thread.confirmed:  # else the confirmation overtook the expectation
            pending = thread.pending
            pending.append(seq)
            pending.append(observed_at)
            thread.last_activity = observed_at
            if thread.armed is None:
                self._arm(thread, observed_at + self._undelivered_ms)
        return thread

    def confirm(self, thread_id: str, seq: int) -> int:
        """Note that every event of ``thread_id`` up to ``seq`` was delivered; a lower seq than before is ignored.

        :return: how far this moved the thread's confirmed seq (0 for a thread without state: its mark is kept,
            so that an expectation arriving after its confirmation is not reported, but nothing is known below it).
        """
        return self.confirm_all({thread_id: seq})

    def confirm_all(self, confirmed: Mapping[str, int]) -> int:
        """:meth:`confirm` each thread's seq; return the total advance (see :meth:`confirm`)."""
        # Bound once: the table is an OrderedDict, whose .get the interpreter cannot specialise (~2% of the
        # monitor's cost per event when looked up per thread).
        thread_of = self._threads.get
        advanced = 0
        for thread_id, seq in confirmed.items():
            thread = thread_of(thread_id)
            if thread is None:
                self._add(thread_id, seq, None)
                continue
            previous = thread.confirmed
            if seq <= previous:
                continue
            thread.confirmed = seq
            advanced += seq - previous
            if thread.gap and seq >= thread.overdue_through:
                thread.gap = 0  # caught up with everything found overdue: the gap is closed
            pending = thread.pending
            if not pending:
                continue
            if pending[-2] <= seq:
                pending.clear()  # the usual case: delivery caught up with everything expected
                thread.head = 0
                continue
            head, end = thread.head, len(pending)
            if pending[head] <= seq:
                head += 2
                while head < end and pending[head] <= seq:
                    head += 2
                thread.consumed(head)
        return advanced

    def forget(self, thread_id: str) -> None:
        """Drop a thread's state and pending expectations (its last connection left)."""
        thread = self._threads.pop(thread_id, None)
        if thread is not None:
            self._forget(thread)

    def fire(self, thread: ThreadDeliveries, now: int, found: list[Anomaly]) -> None:
        """Handle the thread's heap entry coming due: take the overdue seqs off, report them if they open a gap."""
        thread.armed = None
        self._armed -= 1
        pending, start = thread.pending, thread.head
        head, end = start, len(pending)
        accepted_by = now - self._undelivered_ms  # accepted at or before this, a seq is overdue now
        while head < end and pending[head + 1] <= accepted_by:
            head += 2
        if head > start:
            first, last, overdue = pending[start], pending[head - 2], (head - start) // 2
            thread.consumed(head)
            thread.overdue_through = last
            # Seqs overdue while a gap is open join it silently: it was reported when it opened.
            if not thread.gap:
                thread.gap = first
                found.append(
                    Anomaly(
                        kind=AnomalyKind.UNDELIVERED_EVENT,
                        severity=AnomalyKind.UNDELIVERED_EVENT.default_severity,
                        thread_id=thread.thread_id,
                        seq=first,
                        detected_at=now,
                        detail=f"{overdue} event(s), seq {first}..{last}, routed to a connection and not confirmed "
                        f"delivered within {self._undelivered_ms} ms (highest confirmed seq: {thread.confirmed}); "
                        "later overdue events of the thread are not reported until its deliveries catch up",
                    )
                )
        if thread.head < len(pending):
            self._arm(thread, pending[thread.head + 1] + self._undelivered_ms)

    def _arm(self, thread: ThreadDeliveries, due: int) -> None:
        thread.armed = due
        self._armed += 1
        self._deadlines.push(due, thread)

    def _add(self, thread_id: str, confirmed: int, now: int | None) -> ThreadDeliveries:
        threads = self._threads
        if len(threads) >= self._max_threads:
            self._evict()
        thread = threads[thread_id] = ThreadDeliveries(thread_id, confirmed, 0 if now is None else now)
        return thread

    def _evict(self) -> None:
        """Forget one thread to make room: the longest queued one that has had nothing expected since (CLOCK).

        One with expectations since it was queued goes to the back instead, once per such activity, so a thread
        is never moved on the hot path and the eviction is amortised O(1). It runs before the new thread is
        queued, so the newcomer is never the one forgotten.
        """
        thread = pop_least_recently_active(self._threads)
        if thread.waiting():
            self._evictions += 1  # an idle thread's state costs nothing to forget; only pending ones count
        self._forget(thread)

    def _forget(self, thread: ThreadDeliveries) -> None:
        thread.tracked = False
        thread.current_run = None
        if thread.armed is not None:
            thread.armed = None
            self._armed -= 1
