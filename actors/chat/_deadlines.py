from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from weakref import WeakMethod

_MIN_COMPACT: Final = 1024


class Deadlined(Protocol):
    """Something that arms deadlines in a :class:`DeadlineHeap` and knows which of them still count."""

    def is_current(self, due: int, tag: str | None) -> bool:
        """Whether the entry (``due``, ``tag``) is still this target's deadline, not one it has moved on from."""
        ...


DeadlineEntry = tuple[int, int, Deadlined, str | None]
"""``(due, tiebreak, target, tag)``: the tiebreak keeps comparisons off the target and pops ties in push order."""


class DeadlineHeap:
    """A min-heap of deadlines with lazy invalidation.

    Cancelling or moving a deadline costs nothing here: the target changes its own state, and an entry it no longer
    recognises (:meth:`Deadlined.is_current` is False) is skipped when it reaches the top. So that such stale
    entries cannot pile up (a busy run opens and closes thousands of tool calls inside one stuck threshold), the
    heap is rebuilt from its live entries whenever it has doubled since the last rebuild: amortised O(1).

    :param live: (a weak reference to) how many entries are current, which the owner keeps count of; when
        given, a heap that doubled is only rebuilt if at least half of it is stale, so a heap that grew because its
        live entries did is not scanned for nothing.
    """

    __slots__ = ("_compact_above", "_entries", "_live", "_tiebreak")

    def __init__(self, live: WeakMethod[Callable[[], int]] | None = None) -> None:
        self._entries: list[DeadlineEntry] = []
        self._tiebreak = itertools.count()
        self._compact_above = _MIN_COMPACT
        self._live = live

    def push(self, due: int, target: Deadlined, tag: str | None = None) -> None:
        """Arm a deadline for ``target`` at ``due`` (ms), told apart from its other deadlines by ``tag``."""
        entries = self._entries
        heapq.heappush(entries, (due, next(self._tiebreak), target, tag))
        if len(entries) > self._compact_above:
            live = None if self._live is None else self._live()
            if live is not None and 2 * live() > len(entries):
                self._compact_above = 2 * len(entries)  # mostly live: a rebuild would not even halve it
                return
            entries[:] = [entry for entry in entries if entry[2].is_current(entry[0], entry[3])]
            heapq.heapify(entries)
            self._compact_above = max(_MIN_COMPACT, 2 * len(entries))

    def pop_due(self, now: int) -> DeadlineEntry | None:
        """Remove and return the earliest current entry due at or before ``now``, or None when there is none."""
        entries = self._entries
        while entries and entries[0][0] <= now:
            entry = heapq.heappop(entries)
            if entry[2].is_current(entry[0], entry[3]):
                return entry
        return None

    def next_deadline(self) -> int | None:
        """When the earliest current entry is due (ms), or None when there is none; drops stale entries on top."""
        entries = self._entries
        while entries:
            due, _, target, tag = entries[0]
            if target.is_current(due, tag):
                return due
            heapq.heappop(entries)
        return None

    def __len__(self) -> int:
        """Entries held, current or stale."""
        return len(self._entries)
