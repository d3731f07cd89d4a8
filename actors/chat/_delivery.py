from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from actors.chat._anomaly import Anomaly, AnomalyKind

if TYPE_CHECKING:
    from actors.chat._deadlines import DeadlineHeap


class ThreadDeliveries:
    """One thread's delivery state: the highest confirmed seq and the expected seqs above it, oldest first."""

    __slots__ = ("armed", "confirmed", "deadlines", "seqs", "thread_id", "tracked")

    def __init__(self, thread_id: str, confirmed: int) -> None:
        self.thread_id = thread_id
        self.confirmed = confirmed
        # Parallel deques rather than a deque of tuples: nothing is allocated per expectation beyond the ints the
        # caller already holds. Deadlines are non-decreasing because seqs arrive in acceptance order.
        self.seqs: deque[int] = deque()
        self.deadlines: deque[int] = deque()
        # Deadline of this thread's one current heap entry: at or before its oldest pending deadline, if any.
        self.armed: int | None = None
        self.tracked = True

    def is_current(self, due: int, tag: str | None) -> bool:
        """Whether the heap entry at ``due`` is still this thread's deadline."""
        return self.tracked and self.armed == due


class DeliveryTracker:
    """Detects ``undelivered_event``: events the bridge routed to a connection and never confirmed delivered.

    Per thread it keeps the highest confirmed seq and a queue of pending (seq, deadline), and at most one heap
    entry, which a confirmation does not cancel: when it comes due it reports what is overdue and re-arms at the
    oldest deadline still pending. A busy thread whose events are delivered promptly so costs one heap entry per
    ``undelivered_after`` rather than one per event; an expectation is O(1), a confirmation O(seqs it covers).

    :param deadlines: the heap shared with the run tracker.
    :param undelivered_ms: how long a seq may stay unconfirmed (``>=`` elapsed is late).
    :param max_threads: most threads with state; beyond it the least recently expected one is forgotten.
    """

    __slots__ = ("_armed", "_deadlines", "_evictions", "_max_threads", "_threads", "_undelivered_ms")

    def __init__(self, deadlines: DeadlineHeap, *, undelivered_ms: int, max_threads: int) -> None:
        self._deadlines = deadlines
        self._undelivered_ms = undelivered_ms
        self._max_threads = max_threads
        # Least recently expected first, so the cap pops the front in O(1).
        self._threads: OrderedDict[str, ThreadDeliveries] = OrderedDict()
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
        """Seqs expected and not yet confirmed, over all threads (O(threads): for statistics only)."""
        return sum(len(thread.seqs) for thread in self._threads.values())

    def expect(self, thread_id: str, seq: int, observed_at: int) -> None:
        """Note that event ``seq`` of ``thread_id``, accepted at ``observed_at``, was routed to a connection."""
        threads = self._threads
        thread = threads.get(thread_id)
        if thread is None:
            thread = self._add(thread_id, seq - 1)
        else:
            threads.move_to_end(thread_id)
            if seq <= thread.confirmed:
                return  # the confirmation overtook the expectation
        due = observed_at + self._undelivered_ms
        thread.seqs.append(seq)
        thread.deadlines.append(due)
        if thread.armed is None:
            self._arm(thread, due)

    def confirm(self, thread_id: str, seq: int) -> None:
        """Note that every event of ``thread_id`` up to ``seq`` was delivered; a lower seq than before is ignored."""
        thread = self._threads.get(thread_id)
        if thread is None:
            # Remember the mark anyway, so an expectation that arrives after its confirmation is not reported.
            self._add(thread_id, seq)
            return
        if seq <= thread.confirmed:
            return
        thread.confirmed = seq
        seqs, deadlines = thread.seqs, thread.deadlines
        while seqs and seqs[0] <= seq:
            seqs.popleft()
            deadlines.popleft()

    def forget(self, thread_id: str) -> None:
        """Drop a thread's state and pending expectations (its last connection left)."""
        thread = self._threads.pop(thread_id, None)
        if thread is not None:
            self._forget(thread)

    def fire(self, thread: ThreadDeliveries, now: int, found: list[Anomaly]) -> None:
        """Handle the thread's heap entry coming due: report the overdue seqs as one anomaly, re-arm if any remain."""
        thread.armed = None
        self._armed -= 1
        seqs, deadlines = thread.seqs, thread.deadlines
        first = last = overdue = 0
        while deadlines and deadlines[0] <= now:
            deadlines.popleft()
            last = seqs.popleft()
            if not overdue:
                first = last
            overdue += 1
        if overdue:
            found.append(
                Anomaly(
                    kind=AnomalyKind.UNDELIVERED_EVENT,
                    severity=AnomalyKind.UNDELIVERED_EVENT.default_severity,
                    thread_id=thread.thread_id,
                    seq=first,
                    detected_at=now,
                    detail=f"{overdue} event(s), seq {first}..{last}, routed to a connection and not confirmed "
                    f"delivered within {self._undelivered_ms} ms (highest confirmed seq: {thread.confirmed})",
                )
            )
        if deadlines:
            self._arm(thread, deadlines[0])

    def _arm(self, thread: ThreadDeliveries, due: int) -> None:
        thread.armed = due
        self._armed += 1
        self._deadlines.push(due, thread)

    def _add(self, thread_id: str, confirmed: int) -> ThreadDeliveries:
        threads = self._threads
        thread = threads[thread_id] = ThreadDeliveries(thread_id, confirmed)
        if len(threads) > self._max_threads:
            _, oldest = threads.popitem(last=False)
            if oldest.seqs:
                self._evictions += 1  # an idle thread's state costs nothing to forget; only pending ones count
            self._forget(oldest)
        return thread

    def _forget(self, thread: ThreadDeliveries) -> None:
        thread.tracked = False
        if thread.armed is not None:
            thread.armed = None
            self._armed -= 1
