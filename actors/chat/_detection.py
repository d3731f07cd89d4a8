from __future__ import annotations

import weakref
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Final, cast

import msgspec

from actors.chat._anomaly import Anomaly, AnomalyKey, AnomalyKind
from actors.chat._deadlines import DeadlineHeap
from actors.chat._delivery import DeliveryTracker, ThreadDeliveries
from actors.chat._events import RunError, RunFinished, StampedEvent, ToolCallEnd, ToolCallResult, ToolCallStart
from actors.chat._rebuild import rebuild_steps
from actors.chat._run_anomalies import (
    duplicate_completion_anomaly,
    event_after_completion_anomaly,
    high_latency_anomaly,
    missing_agent_started_anomaly,
    orphan_tool_completed_anomaly,
)
from actors.chat._run_state import (
    _ACTIVITY,
    _AFTER_REPORTED,
    _AWAITING_RESULT,
    _CATEGORY,
    _DUPLICATE_REPORTED,
    _ERRORED,
    _FINISHED,
    _LATENCY_REPORTED,
    _STARTED,
    _TOOL_DONE,
    _TOOL_ENDED,
    _TOOL_RESULT,
    _completed_by_seed,
    _Run,
)
from actors.chat._run_tables import NOTHING, RunTables

# Re-exported: DetectionThresholds was defined here, and is imported from here.
from actors.chat._thresholds import DetectionThresholds as DetectionThresholds

if TYPE_CHECKING:
    from collections.abc import Callable, Container, Generator, Iterable, Mapping

    from actors.chat._finished_runs import FinishedRuns


class TrackerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a :class:`RunTracker`.

    :param runs_in_flight: runs started (or first seen) and not finished.
    :param runs_retained: finished runs still kept to catch duplicate and late events.
    :param runs_abandoned: runs reported stale that stayed silent for ``retention`` more and were forgotten.
    :param evictions: runs, and threads with deliveries pending, dropped because ``max_tracked_runs`` was
        reached.
    :param pending_deadlines: live deadlines (run checks, open tool calls, threads awaiting delivery).
    :param pending_deliveries: events expected for delivery, neither confirmed nor found overdue yet.
    :param events_observed: events passed to ``observe`` (and ``rebuild``).
    :param anomalies_by_kind: anomalies returned so far, by kind (kinds never seen are absent).
    """

    runs_in_flight: int
    runs_retained: int
    runs_abandoned: int
    evictions: int
    pending_deadlines: int
    pending_deliveries: int
    events_observed: int
    anomalies_by_kind: dict[AnomalyKind, int]


REBUILD_SLICE: Final = 256
"""Default for :meth:`RunTracker.rebuild_in_slices`: events (or deadlines) handled between two yields."""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RunTracker(RunTables):
    """The ChatEventMonitor's detection core: per-run state machines and a deadline heap, no I/O and no clock.

    Feed it every event the bridge accepts (:meth:`observe`), the delivery taps (:meth:`expect_delivery`,
    :meth:`confirm_delivery`), and call :meth:`advance` when :meth:`next_deadline` comes due. Times are ms on the
    runtime clock (``StampedEvent.observed_at``). Each detector, and what counts as the boundary:

    - ``missing_agent_started``: the first event seen for a (thread, run) is not RUN_STARTED (a lone RUN_FINISHED
      included). Reported once; the run is then tracked as if it had started (or as finished, for a completion).
    - ``orphan_tool_completed``: TOOL_CALL_END or TOOL_CALL_RESULT for a tool call id never started in the run
      (once per tool call id). A RESULT after its END is normal.
    - ``stuck_tool``: per AG-UI, TOOL_CALL_END only says a call's arguments are complete; its outcome is its
      TOOL_CALL_RESULT. So a call is open from its START until its RESULT, and is stuck when, ``stuck_tool_after``
      after its START (elapsed ``>=``: ``advance(start + threshold)`` reports it, and a RESULT observed at that
      same ms is too late once ``advance`` ran), it has had no RESULT and either

      - no END, even if its run finished meanwhile (the run is kept past ``retention`` until then): a run that
        ends with a call half-streamed leaves the client waiting on it; or
      - an END, but its run has not finished: a server-side tool hung while executing.

      A call that had its END when its run finished (RUN_FINISHED or RUN_ERROR) is a client-side tool, which the
      client executes after the run: closed, not stuck. So is a call whose END came in as the seed's
      ``tool_completed`` (a seed object decoded by the alias parser, kept as ``rawEvent``): the seed's event
      says the tool finished.
    - ``stale_thread``: a run in flight (no RUN_FINISHED/RUN_ERROR) that has seen no event for
      ``stale_thread_after`` (``>=``). Reported once per run; if it then stays silent for ``retention`` more it is
      forgotten (``runs_abandoned``).
    - ``high_latency``: ``observed_at - event.timestamp > high_latency_after`` (strictly: exactly at the threshold
      is fine); events without a timestamp are skipped. Reported once per run, for the first late event.
    - ``duplicate_completion``: RUN_FINISHED or RUN_ERROR for a run already finished (once per run).
    - ``event_after_completion``: any other event for a finished run still retained (once per run). A late
      TOOL_CALL_END/RESULT still closes its call.
    - ``error_burst``: ``error_burst_count`` RUN_ERROR events (across all runs) less than ``error_burst_window``
      apart, first to last. Reported at most once per aligned window (``window_start`` = the detecting error's
      ``observed_at`` rounded down to a multiple of the window), so a continuing burst reports once per window.
    - ``undelivered_event``: once per gap of a thread's deliveries, see :meth:`expect_delivery`.

    Deadlines live in a :class:`DeadlineHeap` with lazy invalidation (an entry whose target moved on is skipped
    when popped), so each event costs O(1) or O(log n) and nothing ever scans all runs. Memory is bounded by
    ``retention`` and ``max_tracked_runs``.

    A tracker given ``finished_runs`` records there every run it sees finish, and takes a run it does not track
    but finds there (finished less than ``retention`` ago) for a finished run, not a new one: so a monitor rebuilt
    from replay rings that lost a run's RUN_FINISHED does not believe the run still in flight (see :meth:`rebuild`).

    :param thresholds: the detection thresholds.
    :param finished_runs: a memory of finished runs that outlives this tracker (the monitor's ``MonitorMemory``).
    """

    def __init__(
        self, thresholds: DetectionThresholds | None = None, *, finished_runs: FinishedRuns | None = None
    ) -> None:
        self._thresholds = thresholds = thresholds or DetectionThresholds()
        self._remember = finished_runs
        # When the memory saw a run finish: its lookup bound once, asked for every run this tracker starts.
        self._remembered = None if finished_runs is None else finished_runs.lookup
        # While not None, finishes wait here for record_finished_runs() instead of going to _remember at once.
        self._unrecorded: list[tuple[tuple[str, str], int]] | None = None
        self._stuck_ms = _ms(thresholds.stuck_tool_after)
        self._stale_ms = _ms(thresholds.stale_thread_after)
        self._latency_ms = _ms(thresholds.high_latency_after)
        self._burst_window_ms = max(1, _ms(thresholds.error_burst_window))
        self._retention_ms = _ms(thresholds.retention)
        self._max_runs = thresholds.max_tracked_runs
        # Oldest queued first: the cap pops the front in O(1) and gives a run active since a second chance at the
        # back, so no event has to move its run (see _evict).
        self._in_flight: OrderedDict[tuple[str, str], _Run] = OrderedDict()
        # Oldest finished first: retention expiry and the cap both remove from the front.
        self._finished: OrderedDict[tuple[str, str], _Run] = OrderedDict()
        # A weak reference: a bound method held by the heap would make the tracker a cycle, which only the cyclic
        # GC frees; a monitor restarted a thousand times would leave that many full trackers to its slow passes.
        self._deadlines = DeadlineHeap(weakref.WeakMethod(self._live_deadlines))
        self._deliveries = DeliveryTracker(
            self._deadlines, undelivered_ms=_ms(thresholds.undelivered_after), max_threads=thresholds.max_tracked_runs
        )
        self._delivery_threads = self._deliveries.threads
        # Its lookup, bound once: the table is an OrderedDict, whose instances have a __dict__, so the interpreter
        # cannot specialise `table.get(...)` and looks the method up on every event (a bound method is ~2% cheaper
        # per event; the table only references thread states, never the tracker, so this makes no cycle).
        self._thread_of = self._delivery_threads.get
        # Open tool calls not yet reported stuck: each has one current heap entry.
        self._armed_tools = 0
        self._burst_count = thresholds.error_burst_count
        self._errors: deque[int] = deque(maxlen=thresholds.error_burst_count)
        self._burst_window_reported: int | None = None
        # Events passed to observe() (and rebuild), and to ingest(): counted apart, so that the monitor reads its
        # tap's counts off the tracker instead of keeping its own on the hot path (see ingested).
        self._events_observed = 0
        self._ingested = 0
        self._ingested_unrouted = 0
        #: The tap :meth:`ingest` took last (the one being ingested when it raised, if one did).
        self.last_taken: StampedEvent | None = None
        #: Where :attr:`last_taken` was in the taps of its :meth:`ingest` call (0 for the first).
        self.last_index = -1
        #: What the taps before the one that raised revealed, when :meth:`ingest` raised (counted as found).
        self.found_before_failure: tuple[Anomaly, ...] = ()
        # How far deadlines were advanced (ms): ingest() advances them again only when a tap is newer.
        self._advanced_to = 0
        self._evictions = 0
        self._abandoned = 0
        self._by_kind: dict[AnomalyKind, int] = {}

    @property
    def thresholds(self) -> DetectionThresholds:
        """The thresholds this tracker applies."""
        return self._thresholds

    # ------------------------------------------------------------------ events

    def observe(self, stamped: StampedEvent) -> tuple[Anomaly, ...]:
        """Account for one accepted event and report what it reveals at once.

        :return: the anomalies this event reveals (missing start, orphan completion, latency, duplicate or late
            completion, error burst); a shared empty tuple when there are none, which is the common case.
        """
        self._events_observed += 1
        found = self._observe(stamped, None)
        if found is None:
            return NOTHING
        self._tally(found)
        return tuple(found)

    @property
    def ingested(self) -> int:
        """How many events were passed to :meth:`ingest` (they count in ``events_observed`` too)."""
        return self._ingested

    @property
    def ingested_routed(self) -> int:
        """How many of the :attr:`ingested` events the bridge had routed to a connection (``fan_out > 0``)."""
        return self._ingested - self._ingested_unrouted

    def ingest(self, taps: Iterable[StampedEvent]) -> tuple[Anomaly, ...]:
        """The monitor's hot path: for each tap in order, fire the deadlines that passed before it was accepted,
        then :meth:`observe` it and, when the bridge routed it (``fan_out > 0``), :meth:`expect_delivery` it.

        Deadlines are advanced to a tap's ``observed_at`` once per ms (every deadline set since is at least one
        threshold later), so a tool call that ends after its threshold is reported even when no tick ran in
        between: the boundary is exact, not tick-aligned. A run of taps costs one call: the thread's delivery
        state, looked up for the expectation, also leads to the run it is running, so an event of a busy run
        costs one dict lookup. :attr:`last_taken` is the tap being ingested (the one that raised, if one did), and
        :attr:`found_before_failure` what the taps before it revealed.

        :param taps: the taps, oldest first; taken from the iterable one at a time
        :return: the anomalies found, deadlines first, in order; a shared empty tuple when there are none.
        """
        found: list[Anomaly] = []
        ingested = 0
        # Bound once per run of taps rather than looked up per event (attributes of self, a global's method).
        thread_of = self._thread_of
        latency_ms = self._latency_ms
        in_time = _IN_TIME.get
        advanced_to = self._advanced_to
        stamped = None
        try:
            for stamped in taps:
                ingested += 1
                now = stamped.observed_at
                if now > advanced_to:
                    advanced_to = now
                    self._advance(now, found)
                thread = thread_of(stamped.thread_id)
                if stamped.fan_out:
                    seq = stamped.seq
                    if thread is not None and thread.armed is not None and seq > thread.confirmed:
                        # DeliveryTracker.expect's common case inline (a thread already waiting on a deadline).
                        # Two appends, not `+= (seq, now)`: the interpreter appends to a list in place, where the
                        # tuple costs an allocation and an extend call (~4% of the monitor's ingest).
                        pending = thread.pending
                        pending.append(seq)
                        pending.append(now)
                        thread.last_activity = now
                    else:
                        thread = self._deliveries.expect(stamped.thread_id, seq, now)
                    run = thread.current_run
                else:
                    self._ingested_unrouted += 1
                    run = None if thread is None else thread.current_run
                if run is None or run.flight_id != stamped.run_id:
                    more = self._observe(stamped, thread)
                else:
                    if now > run.last_activity:
                        run.last_activity = now
                    event = stamped.event
                    timestamp = event.timestamp
                    if timestamp is None or now - timestamp <= latency_ms:
                        handler = in_time(type(event))
                        if handler is None:
                            continue  # plain activity of a run in flight, in time: the common case
                        more = handler(self, run, stamped)
                    else:
                        more = self._apply(run, stamped, None)
                if more:
                    found += more
        except Exception:
            # Found, so never found again: the caller reports them before it fails (see found_before_failure).
            self._tally(found)
            self.found_before_failure = tuple(found)
            raise
        finally:
            # Kept per run, not per event: the taps counted, the last one taken (the one that raised, if one did)
            # and how far the deadlines went.
            self._ingested += ingested
            self._advanced_to = advanced_to
            if stamped is not None:
                self.last_taken = stamped
                self.last_index = ingested - 1
        if not found:
            return NOTHING
        self._tally(found)
        return tuple(found)

    def _observe(self, stamped: StampedEvent, thread: ThreadDeliveries | None) -> list[Anomaly] | None:
        """Find (or start tracking) the event's run and apply the event; remember the run on ``thread``.

        The caller counts the event (``_events_observed`` or ``_ingested``).
        """
        event = stamped.event
        now = stamped.observed_at
        category = _CATEGORY.get(type(event), _ACTIVITY)
        key = (stamped.thread_id, stamped.run_id)
        found: list[Anomaly] | None = None
        in_flight = self._in_flight
        run = in_flight.get(key)
        if run is not None:
            if now > run.last_activity:
                run.last_activity = now
        else:
            run = self._finished.get(key)
            if run is None and self._remembered is not None:
                finished_at = self._remembered(key)
                if finished_at is not None:
                    run = self._recall_finished(key, finished_at, now)
            if run is not None:
                return self._observe_finished(run, stamped, category)
            # A run to track: queued at the back of the in-flight table, with its stale check armed.
            if len(in_flight) >= self._max_runs:
                self._evict()
            run = in_flight[key] = _Run(key, now)
            run.armed = due = now + self._stale_ms
            self._deadlines.push(due, run)
            if category != _STARTED:
                found = [missing_agent_started_anomaly(stamped)]
        if thread is not None:
            thread.current_run = run
        if category > _STARTED:
            return self._apply(run, stamped, found)
        # Plain activity or a RUN_STARTED (a run's first event, for one): only its latency can be news.
        timestamp = event.timestamp
        if timestamp is None or now - timestamp <= self._latency_ms:
            return found
        return self._apply(run, stamped, found)

    def _apply(self, run: _Run, stamped: StampedEvent, found: list[Anomaly] | None) -> list[Anomaly] | None:
        """Apply an event to its run in flight: latency, tool calls, completion; ``found`` so far is extended."""
        event = stamped.event
        timestamp = event.timestamp
        if (
            timestamp is not None
            and stamped.observed_at - timestamp > self._latency_ms
            and not run.flags & _LATENCY_REPORTED
        ):
            run.flags |= _LATENCY_REPORTED
            late = high_latency_anomaly(stamped, timestamp, self._latency_ms)
            found = [late] if found is None else [*found, late]
        handler = _IN_TIME.get(type(event))
        if handler is not None:
            more = handler(self, run, stamped)
            if more is not None:
                found = more if found is None else [*found, *more]
        return found

    # The handlers of _IN_TIME: what an event of each type does to its run in flight. They are the hot path for
    # tool calls, so the common case is inline in each (no helper call), and the event's type is narrowed for the
    # type checker only: typing.cast is a function call at run time.

    def _on_tool_start(self, run: _Run, stamped: StampedEvent) -> None:
        event = stamped.event
        if TYPE_CHECKING:
            assert isinstance(event, ToolCallStart)
        tool_call_id = event.tool_call_id
        tools = run.tools
        if tools is None:
            tools = run.tools = {}
        elif tool_call_id in tools:
            return  # a repeated START neither re-arms nor reopens the call
        due = stamped.observed_at + self._stuck_ms
        tools[tool_call_id] = due
        self._armed_tools += 1
        self._deadlines.push(due, run, tool_call_id)

    def _on_tool_end(self, run: _Run, stamped: StampedEvent) -> list[Anomaly] | None:
        """A call's arguments are complete: it now awaits its RESULT or its run's finish."""
        event = stamped.event
        if TYPE_CHECKING:
            assert isinstance(event, ToolCallEnd)
        tools = run.tools
        tool_call_id = event.tool_call_id
        state = None if tools is None else tools.get(tool_call_id)
        if state is None or (event.raw_event is not None and _completed_by_seed(event)):
            if self._close_tool(run, tool_call_id):
                return None
            return [orphan_tool_completed_anomaly(stamped)]
        if TYPE_CHECKING:
            assert tools is not None  # a call with a state is in the table
        if state >= 0:
            # Same deadline, same heap entry: only how the state holds it changes.
            tools[tool_call_id] = _AWAITING_RESULT - state
        return None  # a repeated END, or one for a call already stuck or closed, changes nothing

    def _on_tool_result(self, run: _Run, stamped: StampedEvent) -> list[Anomaly] | None:
        event = stamped.event
        if TYPE_CHECKING:
            assert isinstance(event, ToolCallResult)
        tools = run.tools
        if tools is not None:
            state = tools.get(event.tool_call_id)
            if state is not None:
                # _close_tool's common case inline: a call started, now closed.
                if state >= 0 or state <= _AWAITING_RESULT:  # armed: its heap entry goes stale
                    tools[event.tool_call_id] = _TOOL_DONE
                    self._armed_tools -= 1
                return None  # a call already reported stuck stays so: a late close is not news
        self._close_tool(run, event.tool_call_id)
        return [orphan_tool_completed_anomaly(stamped)]

    def _on_run_error(self, run: _Run, stamped: StampedEvent) -> list[Anomaly] | None:
        self._finish(run, stamped)
        burst = self._count_error(stamped)
        return None if burst is None else [burst]

    def _observe_finished(self, run: _Run, stamped: StampedEvent, category: int) -> list[Anomaly] | None:
        found: list[Anomaly] = []
        event = stamped.event
        timestamp = event.timestamp
        if (
            timestamp is not None
            and stamped.observed_at - timestamp > self._latency_ms
            and not run.flags & _LATENCY_REPORTED
        ):
            run.flags |= _LATENCY_REPORTED
            found.append(high_latency_anomaly(stamped, timestamp, self._latency_ms))
        if category in (_FINISHED, _ERRORED):
            if not run.flags & _DUPLICATE_REPORTED:
                run.flags |= _DUPLICATE_REPORTED
                found.append(duplicate_completion_anomaly(stamped, run.finished_at))
            if category == _ERRORED:
                burst = self._count_error(stamped)
                if burst is not None:
                    found.append(burst)
        else:
            if category in (_TOOL_ENDED, _TOOL_RESULT):
                # Closing the call keeps it from also being reported stuck (an END in a finished run closes it, as
                # the finish would have); it is not an orphan either, since a finished run is reported once for
                # late events and that already says what happened.
                self._close_tool(run, cast("ToolCallEnd | ToolCallResult", event).tool_call_id)
            if not run.flags & _AFTER_REPORTED:
                run.flags |= _AFTER_REPORTED
                found.append(event_after_completion_anomaly(stamped, run.finished_at))
        return found or None

    # ------------------------------------------------------------------ delivery

    def expect_delivery(self, thread_id: str, seq: int, observed_at: int) -> None:
        """Note that the bridge routed event ``seq`` of ``thread_id`` to at least one subscribed connection.

        Expectation is explicit: the bridge calls this only for events it routed to a connection, so an event on
        a thread nobody subscribes to never counts as undelivered. Unless :meth:`confirm_delivery` covers ``seq``
        within ``undelivered_after`` of ``observed_at`` (``>=`` elapsed is late), :meth:`advance` reports
        ``undelivered_event``: once per gap, keyed by its first seq. A gap opens with the first seqs of the thread
        found overdue; seqs overdue while it is open join it unreported; it closes when a confirmation reaches the
        highest seq found overdue, after which the next overdue seq opens a new one. Seqs of a thread are expected
        in increasing order (the bridge numbers them).

        :param thread_id: the thread the event belongs to.
        :param seq: its per-thread sequence number.
        :param observed_at: ms when the bridge accepted it.
        """
        self._deliveries.expect(thread_id, seq, observed_at)

    def confirm_delivery(self, thread_id: str, seq: int) -> None:
        """Note that every event of ``thread_id`` up to ``seq`` reached every connection subscribed to it.

        Confirmations may be batched: only the highest delivered seq matters, and a lower one is ignored. One that
        overtakes its expectation is remembered, so the expectation is not reported.
        """
        self._deliveries.confirm(thread_id, seq)

    def confirm_deliveries(self, confirmed: Mapping[str, int]) -> int:
        """:meth:`confirm_delivery` for each thread of a batch (the bridge's ``DeliveryProgress.confirmed``).

        :return: how many seqs the batch newly confirmed on threads with expectations: each thread's advance past
            its previous confirmation, or past the seq before its first expectation. What a thread's delivery state
            does not cover (before its first expectation, or on a thread never expected) is not counted.
        """
        return self._deliveries.confirm_all(confirmed)

    def thread_has_no_subscribers(self, thread_id: str) -> None:
        """Forget the delivery state of a thread whose last connection left.

        What that connection had not received is not undelivered: a client that reconnects gets it from the replay
        ring. Expectations resume with the next :meth:`expect_delivery` for the thread.
        """
        self._deliveries.forget(thread_id)

    # ------------------------------------------------------------------ restart

    def rebuild(
        self, items: Iterable[StampedEvent], now_ms: int, already_reported: Container[AnomalyKey] = ()
    ) -> tuple[Anomaly, ...]:
        """Restore in-flight state from replayed events (the bridge's replay rings) after a monitor restart.

        The events are ones the previous monitor saw. What it saw at once (missing start, orphan, latency,
        duplicate, late event, burst) is not reported again — a replay ring that lost the head of a run must not
        look like a missing start — while a deadline that passed (a tool stuck before the crash, a run gone stale,
        a delivery) is, unless its key is in ``already_reported``.

        Only runs in flight are replayed event by event, in ``observed_at`` order with deadlines fired between
        them. A run the previous monitor saw finish — its RUN_FINISHED/RUN_ERROR is among the events, or the
        tracker's ``finished_runs`` memory knows it (the ring may have lost its completion) — is restored straight
        into the finished table: every deadline it had up to its finish fired in the previous monitor, so only
        its retention and any call it left without a TOOL_CALL_END (still reported stuck) are armed again, and one
        finished longer than ``retention`` ago with no such call is not kept at all.

        :param items: the replayed events, in any order across threads.
        :param now_ms: the current time; every deadline at or before it fires.
        :param already_reported: keys reported before the restart (a :class:`ReportedKeys`, say).
        :return: the anomalies to report now.
        :raises ValueError: when this tracker has already observed events (rebuild a fresh one).
        """
        steps = self.rebuild_in_slices(items, now_ms, already_reported)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                found: tuple[Anomaly, ...] = done.value
                return found

    def rebuild_in_slices(
        self,
        items: Iterable[StampedEvent],
        now_ms: int,
        already_reported: Container[AnomalyKey] = (),
        *,
        slice_events: int = REBUILD_SLICE,
    ) -> Generator[None, None, tuple[Anomaly, ...]]:
        """:meth:`rebuild` in bounded slices, so that a caller on an event loop can let other tasks run between them.

        The generator yields after about every ``slice_events`` events replayed (and every ``slice_events``
        deadlines fired), and returns (``StopIteration.value``, or ``yield from``) what :meth:`rebuild` returns.
        The tracker must not be used otherwise until it is exhausted.

        :raises ValueError: when this tracker has already observed events, or ``slice_events`` < 1.
        """
        observed = self._events_observed + self._ingested
        if observed:
            raise ValueError(f"rebuild() needs a fresh tracker; this one has observed {observed} events")
        if isinstance(slice_events, bool) or not isinstance(slice_events, int) or slice_events < 1:
            raise ValueError(f"slice_events must be a positive int, got {slice_events!r}")
        return rebuild_steps(self, items, now_ms, already_reported, slice_events)

    # ------------------------------------------------------------------ reporting

    def statistics(self) -> TrackerStatistics:
        """Return a snapshot of the tracker's state and counters."""
        return TrackerStatistics(
            runs_in_flight=len(self._in_flight),
            runs_retained=len(self._finished),
            runs_abandoned=self._abandoned,
            evictions=self._evictions + self._deliveries.evictions,
            pending_deadlines=self._live_deadlines(),
            pending_deliveries=self._deliveries.pending(),
            events_observed=self._events_observed + self._ingested,
            anomalies_by_kind=dict(self._by_kind),
        )


# The hot path's dispatch for an event in time of a run in flight: one dict lookup instead of _apply's chain of tests;
# a type absent from it (plain activity, a repeated RUN_STARTED) changes nothing. Plain functions, not bound
# methods: a table of bound methods on the tracker would make it a reference cycle.
_IN_TIME: Final[dict[type, Callable[[RunTracker, _Run, StampedEvent], list[Anomaly] | None]]] = {
    ToolCallStart: RunTracker._on_tool_start,
    ToolCallEnd: RunTracker._on_tool_end,
    ToolCallResult: RunTracker._on_tool_result,
    RunFinished: RunTracker._finish,
    RunError: RunTracker._on_run_error,
}
