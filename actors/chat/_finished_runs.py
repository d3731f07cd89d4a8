from __future__ import annotations

from collections import OrderedDict

RunKey = tuple[str, str]
"""``(thread_id, run_id)``."""


class FinishedRuns:
    """A bounded memory of the runs seen to finish, and when: what a restarted monitor must not take for in flight.

    The bridge's replay rings are bounded by count and age, so one may have lost a run's RUN_FINISHED while it
    still holds other events of the run; rebuilt from the ring alone, that run would look in flight and be reported
    stale. :class:`MonitorMemory` keeps this table across monitor restarts and the run tracker records each finish
    in it. The oldest finish is forgotten first when full, and counted.

    :param capacity: most runs remembered.
    :raises ValueError: when ``capacity`` is not a positive int.
    """

    __slots__ = ("_capacity", "_forgotten", "_runs")

    def __init__(self, capacity: int = 100_000) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        # Oldest first. OrderedDict, not dict: steady popping of a plain dict's first key turns quadratic.
        self._runs: OrderedDict[RunKey, int] = OrderedDict()
        self._forgotten = 0

    @property
    def capacity(self) -> int:
        """Most runs remembered."""
        return self._capacity

    @property
    def forgotten(self) -> int:
        """How many finished runs were dropped to stay within ``capacity``."""
        return self._forgotten

    def add(self, key: RunKey, finished_at: int) -> None:
        """Remember that run ``key`` finished at ``finished_at`` (ms); one already remembered keeps its first."""
        runs = self._runs
        if key in runs:
            return
        runs[key] = finished_at
        if len(runs) > self._capacity:
            runs.popitem(last=False)
            self._forgotten += 1

    @property
    def added(self) -> int:
        """How many runs were ever added (kept or since forgotten): a cursor for :meth:`newest`."""
        return len(self._runs) + self._forgotten

    def newest(self, count: int) -> list[tuple[str, str, int]]:
        """The ``count`` most recently added runs still remembered, oldest first, as (thread, run, finished at)."""
        if count <= 0:
            return []
        runs = self._runs
        picked: list[tuple[str, str, int]] = []
        for (thread_id, run_id), finished_at in reversed(runs.items()):
            if len(picked) == count:
                break
            picked.append((thread_id, run_id, finished_at))
        picked.reverse()
        return picked

    def entries(self) -> list[tuple[str, str, int]]:
        """Every remembered run, oldest first, as (thread, run, finished at)."""
        return [(thread_id, run_id, finished_at) for (thread_id, run_id), finished_at in self._runs.items()]

    def get(self, key: RunKey) -> int | None:
        """When run ``key`` finished (ms), or None when it is not remembered as finished."""
        return self._runs.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._runs

    def __len__(self) -> int:
        return len(self._runs)
