from __future__ import annotations

from typing import TYPE_CHECKING

from ._oldest_first import OldestFirstTable

if TYPE_CHECKING:
    from collections.abc import Callable

RunKey = tuple[str, str]
"""``(thread_id, run_id)``."""


class FinishedRuns(OldestFirstTable[RunKey, int]):
    """A bounded memory of the runs seen to finish, and when: what a restarted monitor must not take for in flight.

    The bridge's replay rings are bounded by count and age, so one may have lost a run's RUN_FINISHED while it
    still holds other events of the run; rebuilt from the ring alone, that run would look in flight and be reported
    stale. :class:`MonitorMemory` keeps this table across monitor restarts and the run tracker records each finish
    in it. The oldest finish is forgotten first when full, and counted.

    :param capacity: most runs remembered.
    :raises ValueError: when ``capacity`` is not a positive int.
    """

    __slots__ = ()

    def add(self, key: RunKey, finished_at: int) -> None:
        """Remember that run ``key`` finished at ``finished_at`` (ms); one already remembered keeps its first."""
        # _put inline: the run tracker adds every run it sees finish.
        items = self._items
        if key in items:
            return
        items[key] = finished_at
        if len(items) > self._capacity:
            items.popitem(last=False)
            self._forgotten += 1

    @property
    def added(self) -> int:
        """How many runs were ever added (kept or since forgotten): a cursor for :meth:`newest`."""
        return len(self._items) + self._forgotten

    def newest(self, count: int) -> list[tuple[str, str, int]]:
        """The ``count`` most recently added runs still remembered, oldest first, as (thread, run, finished at)."""
        if count <= 0:
            return []
        runs = self._items
        picked: list[tuple[str, str, int]] = []
        for (thread_id, run_id), finished_at in reversed(runs.items()):
            if len(picked) == count:
                break
            picked.append((thread_id, run_id, finished_at))
        picked.reverse()
        return picked

    def entries(self) -> list[tuple[str, str, int]]:
        """Every remembered run, oldest first, as (thread, run, finished at)."""
        return [(thread_id, run_id, finished_at) for (thread_id, run_id), finished_at in self._items.items()]

    def get(self, key: RunKey) -> int | None:
        """When run ``key`` finished (ms), or None when it is not remembered as finished."""
        return self._items.get(key)

    @property
    def lookup(self) -> Callable[[RunKey], int | None]:
        """:meth:`get`, as the table's own bound lookup: for a caller that asks for every run it starts, without a
        method call of ours in between (the table object lives as long as this memory)."""
        return self._items.get
