from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from actors.chat._events import StampedEvent


class ReplayGap(LookupError):
    """Events a reconnecting client needs were evicted from the replay ring (by count or by age).

    A LookupError, not a ValueError: the request was well-formed, the data is gone. The bridge closes the
    connection with code 4002 and the client resynchronises from scratch.

    :param after_seq: the last sequence number the client has seen.
    :param oldest_available: the oldest sequence number the ring can still replay, or None when it is empty.
    """

    def __init__(self, after_seq: int, oldest_available: int | None) -> None:
        self.after_seq = after_seq
        self.oldest_available = oldest_available
        available = "nothing" if oldest_available is None else f"from seq {oldest_available}"
        super().__init__(f"events after seq {after_seq} are no longer available (replay ring holds {available})")

    def __reduce__(self) -> tuple[type[ReplayGap], tuple[int, int | None]]:
        return (type(self), (self.after_seq, self.oldest_available))


class ReplayRingStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one ring's counters.

    :param retained: events held now.
    :param last_seq: highest sequence number ever appended (0 before the first).
    :param oldest_seq: sequence number of the oldest held event, or None when empty.
    :param evicted_by_count: events dropped because the ring was full.
    :param evicted_by_age: events dropped because they were older than ``max_age``.
    """

    retained: int
    last_seq: int
    oldest_seq: int | None
    evicted_by_count: int
    evicted_by_age: int


class RingEvictions:
    """Events evicted from a set of replay rings (a bridge's), counted as it happens: read in O(1), however many."""

    __slots__ = ("by_age", "by_count")

    def __init__(self) -> None:
        self.by_count = 0
        self.by_age = 0


class ReplayRing:
    """A bounded buffer of one thread's recent stamped events, for replay to a client reconnecting with afterSeq.

    Eviction is from the oldest end only, so everything at or below :attr:`evicted_through` is gone and everything
    above it is still held: that one number decides whether a replay is complete. Age eviction is lazy (at
    :meth:`append`, using the new event's ``observed_at`` as "now", and at :meth:`since` / :meth:`snapshot`) and
    costs O(evicted); it stops at the first young enough event, so it relies on ``observed_at`` coming from one
    monotonic clock.

    :param capacity: most events held; the oldest is evicted to make room.
    :param max_age: seconds an event stays replayable after ``observed_at``; ``math.inf`` disables age eviction.
    :param evictions: where the ring also counts its evictions, with other rings' (default: its own counter)
    :raises ValueError: when ``capacity`` < 1 or ``max_age`` is not a positive number.
    """

    __slots__ = (
        "_capacity",
        "_evicted_by_age",
        "_evicted_by_count",
        "_evicted_through",
        "_evictions",
        "_items",
        "_last_seq",
        "_max_age_ms",
    )

    def __init__(self, capacity: int, max_age: float, *, evictions: RingEvictions | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if math.isnan(max_age) or max_age <= 0:
            raise ValueError(f"max_age must be a positive number of seconds, got {max_age}")
        # Rounded so that a decimal max_age like 0.7 s compares as exactly 700 ms against integer clocks, and kept as
        # an int when it is a whole number of ms: the age test runs once per append, and an epoch-ms clock (13
        # digits) is subtracted and compared twice as fast with an int as with a float, with the same result.
        max_age_ms = round(max_age * 1000.0, 6)
        self._max_age_ms: float = int(max_age_ms) if max_age_ms.is_integer() else max_age_ms
        self._items: deque[StampedEvent] = deque(maxlen=capacity)
        # The deque's bound, kept to be read once per append without a descriptor call.
        self._capacity = capacity
        self._last_seq = 0
        self._evicted_through = 0
        self._evicted_by_count = 0
        self._evicted_by_age = 0
        self._evictions = evictions if evictions is not None else RingEvictions()

    @property
    def capacity(self) -> int:
        """Most events held at once."""
        return self._capacity

    @property
    def max_age(self) -> float:
        """Seconds an event stays replayable."""
        return self._max_age_ms / 1000.0

    @property
    def last_seq(self) -> int:
        """Highest sequence number ever appended, held or evicted (0 before the first append)."""
        return self._last_seq

    @property
    def evicted_through(self) -> int:
        """Highest sequence number evicted so far (0 when nothing was): replay needs ``after_seq >=`` this."""
        return self._evicted_through

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: StampedEvent) -> None:
        """Hold ``item``, evicting the oldest held events if the ring is full or they have aged out.

        :raises ValueError: when ``item.seq`` is not greater than :attr:`last_seq`.
        """
        # Once per event on the bridge's critical path: one comparison for the age eviction unless the oldest held
        # event has aged out, and no call at all in that usual case.
        seq = item.seq
        if seq <= self._last_seq:
            raise ValueError(f"seq must increase: got {seq} after {self._last_seq}")
        items = self._items
        if items:
            oldest = items[0]
            if oldest.observed_at < item.observed_at - self._max_age_ms:
                self._expire(item.observed_at)  # drops the oldest at least: the ring is not full any more
            elif len(items) == self._capacity:
                # The deque's maxlen drops the oldest on append; record what it drops first.
                self._evicted_through = oldest.seq
                self._evicted_by_count += 1
                self._evictions.by_count += 1
        items.append(item)
        self._last_seq = seq

    def since(self, after_seq: int, now_ms: int) -> list[StampedEvent]:
        """Every held event with ``seq > after_seq``, oldest first: what a client that saw ``after_seq`` missed.

        :param after_seq: the last sequence number the client has seen (0 for "from the beginning").
        :param now_ms: the runtime clock, for age eviction.
        :return: the missing events in order (empty when ``after_seq == last_seq``).
        :raises ReplayGap: when an event the client needs was evicted.
        :raises ValueError: when ``after_seq`` is negative or greater than :attr:`last_seq` (a client claiming to
            have seen events that were never sent is a protocol error, not a gap).
        """
        if after_seq < 0 or after_seq > self._last_seq:
            raise ValueError(f"after_seq must be between 0 and the last seq {self._last_seq}, got {after_seq}")
        self._expire(now_ms)
        if after_seq < self._evicted_through:
            raise ReplayGap(after_seq, self._items[0].seq if self._items else None)
        # Walk from the newest end: a reconnecting client usually missed only the last few events.
        missed: list[StampedEvent] = []
        for item in reversed(self._items):
            if item.seq <= after_seq:
                break
            missed.append(item)
        missed.reverse()
        return missed

    def snapshot(self, now_ms: int | None = None) -> list[StampedEvent]:
        """Every held event, oldest first, for a restarted monitor rebuilding in-flight state.

        :param now_ms: when given, events older than ``max_age`` are evicted first.
        """
        if now_ms is not None:
            self._expire(now_ms)
        return list(self._items)

    def statistics(self) -> ReplayRingStatistics:
        """The ring's counters (see :class:`ReplayRingStatistics`)."""
        items = self._items
        return ReplayRingStatistics(
            retained=len(items),
            last_seq=self._last_seq,
            oldest_seq=items[0].seq if items else None,
            evicted_by_count=self._evicted_by_count,
            evicted_by_age=self._evicted_by_age,
        )

    def _expire(self, now_ms: int) -> None:
        items = self._items
        cutoff = now_ms - self._max_age_ms
        held = len(items)
        while items and items[0].observed_at < cutoff:
            self._evicted_through = items.popleft().seq
        expired = held - len(items)
        self._evicted_by_age += expired
        self._evictions.by_age += expired
