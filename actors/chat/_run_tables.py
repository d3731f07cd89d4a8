from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

from actors.chat._delivery import ThreadDeliveries
from actors.chat._oldest_first import pop_least_recently_active
from actors.chat._run_anomalies import error_burst_anomaly, stale_thread_anomaly, stuck_tool_anomaly
from actors.chat._run_state import _AWAITING_RESULT, _STALE_REPORTED, _TOOL_DONE, _TOOL_STUCK, _armed, _Run

if TYPE_CHECKING:
    from collections import OrderedDict, deque

    from actors.chat._anomaly import Anomaly, AnomalyKind
    from actors.chat._deadlines import DeadlineEntry, DeadlineHeap
    from actors.chat._delivery import DeliveryTracker
    from actors.chat._events import StampedEvent
    from actors.chat._finished_runs import FinishedRuns

#: What advance() returns when nothing came due (shared: the common case allocates nothing).
NOTHING: Final[tuple[Anomaly, ...]] = ()


class RunTables:
    """The run tracker's tables over time: runs finishing, retained, evicted and dropped, and the deadlines firing.

    :class:`~actors.chat._detection.RunTracker` derives from it and adds the events (its hot path) and the
    rebuild; the state below is set up by its ``__init__``. The split is by what drives the code: an event
    (RunTracker) or the clock and the caps (here), so that each module stays readable on its own.
    """

    # Set by RunTracker.__init__ (see there for what each one holds).
    _in_flight: OrderedDict[tuple[str, str], _Run]
    _finished: OrderedDict[tuple[str, str], _Run]
    _deadlines: DeadlineHeap
    _deliveries: DeliveryTracker
    _delivery_threads: dict[str, ThreadDeliveries]
    _remember: FinishedRuns | None
    _unrecorded: list[tuple[tuple[str, str], int]] | None
    _stuck_ms: int
    _stale_ms: int
    _retention_ms: int
    _burst_window_ms: int
    _burst_count: int
    _max_runs: int
    _armed_tools: int
    _errors: deque[int]
    _burst_window_reported: int | None
    _advanced_to: int
    _evictions: int
    _abandoned: int
    _by_kind: dict[AnomalyKind, int]

    # ------------------------------------------------------------------ runs

    def _evict(self) -> None:
        """Make room for one run: drop the longest queued run that has seen no event since (CLOCK).

        A run active since it was queued goes to the back instead, once per such activity, so no event has to
        move its run and the eviction is amortised O(1); the result is approximately the least recently active
        run. It runs before the new run is queued, so the newcomer is never the one dropped.
        """
        self._drop(pop_least_recently_active(self._in_flight))
        self._evictions += 1

    def _close_tool(self, run: _Run, tool_call_id: str) -> bool:
        """Close a tool call; False when the run never started it (it is then remembered as closed)."""
        tools = run.tools
        if tools is None:
            tools = run.tools = {}
        state = tools.get(tool_call_id)
        if state is None:
            tools[tool_call_id] = _TOOL_DONE
            return False
        if _armed(state):
            tools[tool_call_id] = _TOOL_DONE
            self._armed_tools -= 1  # its heap entry goes stale
        return True  # a call already reported stuck stays so: a late close is not news

    def defer_finished_runs(self) -> None:
        """Hold the finishes seen from now on back from ``finished_runs`` until :meth:`record_finished_runs`.

        For a rebuild that may be interrupted (the monitor rebuilds in slices, and may be killed between two): the
        memory must not learn of a finish before whatever says the finish was seen (the monitor's ``last_tapped``)
        does, or the next rebuild would take that event for a second completion.
        """
        if self._unrecorded is None:
            self._unrecorded = []

    def record_finished_runs(self) -> None:
        """Record the finishes held back since :meth:`defer_finished_runs`, and record the next ones at once."""
        unrecorded, self._unrecorded = self._unrecorded, None
        if unrecorded and self._remember is not None:
            add = self._remember.add
            for key, finished_at in unrecorded:
                add(key, finished_at)

    def _recall_finished(self, key: tuple[str, str], finished_at: int, now: int) -> _Run | None:
        """Retain again a run the finished-run memory saw finish at ``finished_at`` and this tracker does not know
        (lost in a restart)."""
        if finished_at + self._retention_ms <= now:
            return None  # past the retention: this tracker would have forgotten it too
        run = _Run(key, finished_at)
        run.finished_at = finished_at
        run.flight_id = None
        self._retain(run)
        self._arm(run, self._run_due(run))
        return run

    def _finish(self, run: _Run, stamped: StampedEvent) -> None:
        """RUN_FINISHED (or RUN_ERROR) for a run in flight: it is retained, to catch duplicate and late events."""
        now = stamped.observed_at
        key = run.key
        del self._in_flight[key]
        run.finished_at = now
        run.flight_id = None
        remember = self._remember
        if remember is not None:
            if self._unrecorded is None:
                remember.add(key, now)
            else:
                self._unrecorded.append((key, now))
        due = now + self._retention_ms
        tools = run.tools
        if tools:
            # A call whose arguments ended before the run did is a client-side tool: the client runs it after the
            # run, so the run's finish closes it. Only calls left without an END stay armed, and the run is kept
            # until they come due (_run_due() of a finished run, inline).
            for tool_call_id, state in tools.items():
                if state <= _AWAITING_RESULT:
                    tools[tool_call_id] = _TOOL_DONE  # a value update: safe while iterating
                    self._armed_tools -= 1
                elif state > due:
                    due = state
        if due != run.armed:
            # Re-armed even when later, so that next_deadline() stays exact for finished runs.
            run.armed = due
            self._deadlines.push(due, run)
        self._retain(run)

    def _retain(self, run: _Run) -> None:
        """Add a finished run to the retained ones, evicting the oldest beyond the cap."""
        finished = self._finished
        finished[run.key] = run
        if len(finished) > self._max_runs:
            _, oldest = finished.popitem(last=False)
            self._drop(oldest)
            self._evictions += 1

    def _count_error(self, stamped: StampedEvent) -> Anomaly | None:
        now = stamped.observed_at
        window_start = self._burst(now)
        if window_start is None:
            return None
        return error_burst_anomaly(stamped, window_start, self._errors, self._burst_count, self._burst_window_ms)

    def _burst(self, now: int) -> int | None:
        """Count a RUN_ERROR at ``now``; return the window to report a burst for, None when there is none new."""
        errors = self._errors
        errors.append(now)
        if len(errors) < self._burst_count or now - errors[0] >= self._burst_window_ms:
            return None
        window_start = now - now % self._burst_window_ms
        if window_start == self._burst_window_reported:
            return None
        self._burst_window_reported = window_start
        return window_start

    # ------------------------------------------------------------------ deadlines

    def advance(self, now_ms: int) -> tuple[Anomaly, ...]:
        """Fire every deadline at or before ``now_ms``: stuck tools, stale runs, undelivered events, expiries.

        :return: the anomalies found; a shared empty tuple when there are none.
        """
        found: list[Anomaly] = []
        if now_ms > self._advanced_to:
            self._advanced_to = now_ms
        self._advance(now_ms, found)
        if not found:
            return NOTHING
        self._tally(found)
        return tuple(found)

    def next_deadline(self) -> int | None:
        """When :meth:`advance` next has something to do (ms), or None when nothing is pending.

        It may be early (a run active since its check was armed is only re-armed then), never late.
        """
        return self._deadlines.next_deadline()

    def _advance(self, now: int, found: list[Anomaly]) -> None:
        pop_due = self._deadlines.pop_due
        while (entry := pop_due(now)) is not None:
            self._fire(entry, now, found)

    def _fire(self, entry: DeadlineEntry, now: int, found: list[Anomaly]) -> None:
        deadline, _, target, tool_call_id = entry
        if isinstance(target, ThreadDeliveries):
            self._deliveries.fire(target, now, found)
        elif tool_call_id is not None:
            self._fire_tool(cast("_Run", target), tool_call_id, deadline, now, found)
        else:
            self._fire_run(cast("_Run", target), now, found)

    def _arm(self, run: _Run, due: int) -> None:
        run.armed = due
        self._deadlines.push(due, run)

    def _run_due(self, run: _Run) -> int:
        if run.finished_at is not None:
            due = run.finished_at + self._retention_ms
            if run.tools:
                # A call left open when the run finished is still reported stuck, even past the retention.
                due = max(due, *run.tools.values())
            return due
        if run.flags & _STALE_REPORTED:
            return run.last_activity + self._stale_ms + self._retention_ms
        return run.last_activity + self._stale_ms

    def _fire_run(self, run: _Run, now: int, found: list[Anomaly]) -> None:
        due = self._run_due(run)
        if due > now:
            self._arm(run, due)  # activity since the entry was armed moved the deadline on
        elif run.finished_at is not None:
            if run.tools:
                # Its expiry waited for its open calls, but may share their ms and pop first: fire them now.
                for tool_call_id, state in run.tools.items():
                    if state >= 0:
                        self._fire_tool(run, tool_call_id, state, now, found)
            del self._finished[run.key]
            self._drop(run)
        elif not run.flags & _STALE_REPORTED:
            run.flags |= _STALE_REPORTED
            found.append(stale_thread_anomaly(run, now, self._stale_ms))
            self._arm(run, self._run_due(run))
        else:
            del self._in_flight[run.key]
            self._drop(run)
            self._abandoned += 1

    def _fire_tool(self, run: _Run, tool_call_id: str, deadline: int, now: int, found: list[Anomaly]) -> None:
        assert run.tools is not None  # a live tool entry implies the call is in the table
        ended = run.tools[tool_call_id] < 0
        run.tools[tool_call_id] = _TOOL_STUCK
        self._armed_tools -= 1
        found.append(stuck_tool_anomaly(run, tool_call_id, deadline, now, self._stuck_ms, ended=ended))

    def _drop(self, run: _Run) -> None:
        run.tracked = False  # every heap entry for it is now stale
        run.flight_id = None
        thread = self._delivery_threads.get(run.key[0])
        if thread is not None and thread.current_run is run:
            thread.current_run = None  # a thread that stays (idle, subscribed) must not keep a forgotten run alive
        tools = run.tools
        if tools:
            self._armed_tools -= sum(1 for state in tools.values() if _armed(state))

    # ------------------------------------------------------------------ counts

    def _live_deadlines(self) -> int:
        # Each run (in flight or retained), open tool call and thread awaiting delivery has one current entry.
        return len(self._in_flight) + len(self._finished) + self._armed_tools + self._deliveries.armed

    def _tally(self, found: list[Anomaly]) -> None:
        by_kind = self._by_kind
        for anomaly in found:
            by_kind[anomaly.kind] = by_kind.get(anomaly.kind, 0) + 1
