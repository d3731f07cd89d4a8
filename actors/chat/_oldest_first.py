from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterator

K = TypeVar("K", bound="Hashable")
V = TypeVar("V")


class Recency(Protocol):
    """What :func:`pop_least_recently_active` reads of an entry: when it was last active, and last (re)queued."""

    last_activity: int
    queued_at: int


R = TypeVar("R", bound=Recency)


def pop_least_recently_active(table: OrderedDict[K, R]) -> R:
    """Remove and return about the least recently active entry of ``table``, which is kept oldest-queued first
    (CLOCK, second chance).

    An entry active since it was queued goes to the back instead, once per such activity, and is stamped as queued
    then: so an entry is never moved when it is active (the hot path), and the eviction is amortised O(1). The
    caller runs it before queueing a newcomer, which so is never the one removed.

    :raises KeyError: when ``table`` is empty
    """
    while True:
        key, entry = table.popitem(last=False)
        if entry.last_activity > entry.queued_at:
            entry.queued_at = entry.last_activity
            table[key] = entry
            continue
        return entry


class OldestFirstTable(Generic[K, V]):
    """A bounded table of keys in the order they were first added; the oldest is forgotten first when full.

    The shape both of the monitor's memories across restarts share: the anomaly keys already reported
    (:class:`ReportedKeys`) and the runs seen to finish (:class:`FinishedRuns`).

    :param capacity: most keys kept.
    :raises ValueError: when ``capacity`` is not a positive int.
    """

    __slots__ = ("_capacity", "_forgotten", "_items")

    def __init__(self, capacity: int = 100_000) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        # Insertion order makes the first key the oldest. OrderedDict, not dict: popping a plain dict's first key
        # leaves dummies that the next `iter()` must skip, which turns steady eviction quadratic.
        self._items: OrderedDict[K, V] = OrderedDict()
        self._forgotten = 0

    @property
    def capacity(self) -> int:
        """Most keys kept."""
        return self._capacity

    @property
    def forgotten(self) -> int:
        """How many keys were dropped to stay within ``capacity``."""
        return self._forgotten

    def _put(self, key: K, value: V) -> bool:
        """Add ``key`` unless present (a present key keeps its first value); return whether it was new."""
        items = self._items
        if key in items:
            return False
        items[key] = value
        if len(items) > self._capacity:
            items.popitem(last=False)
            self._forgotten += 1
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)
