from __future__ import annotations

import heapq
import operator
from typing import TYPE_CHECKING, Final, cast

from actors.chat._events import RunError, ToolCallEnd, ToolCallResult, ToolCallStart
from actors.chat._run_state import (
    _AFTER_REPORTED,
    _AWAITING_RESULT,
    _COMPLETIONS,
    _DUPLICATE_REPORTED,
    _LATENCY_REPORTED,
    _TOOL_DONE,
    _completed_by_seed,
    _Run,
)

if TYPE_CHECKING:
    from collections.abc import Container, Generator, Iterable

    from actors.chat._anomaly import Anomaly, AnomalyKey
    from actors.chat._detection import RunTracker
    from actors.chat._events import StampedEvent

_by_observed_at: Final = operator.attrgetter("observed_at")
_by_finished_at: Final = operator.attrgetter("finished_at")


def rebuild_steps(
    tracker: RunTracker,
    items: Iterable[StampedEvent],
    now_ms: int,
    already_reported: Container[AnomalyKey],
    slice_events: int,
) -> Generator[None, None, tuple[Anomaly, ...]]:
    """The body of :meth:`RunTracker.rebuild_in_slices` on a fresh ``tracker``, arguments already checked.

    :return: the anomalies to report now (``StopIteration.value``), already tallied on ``tracker``.
    """
    # 1. Each run's events, in the order given (a ring is oldest first).
    by_run: dict[tuple[str, str], list[StampedEvent]] = {}
    budget = slice_events
    for stamped in items:
        key = (stamped.thread_id, stamped.run_id)
        events = by_run.get(key)
        if events is None:
            by_run[key] = [stamped]
        else:
            events.append(stamped)
        budget -= 1
        if not budget:
            budget = slice_events
            yield
    # 2. Runs seen finished go straight to the finished table; the others are replayed below.
    remember = tracker._remember
    restored: list[_Run] = []
    errors: list[int] = []
    in_flight: list[list[StampedEvent]] = []
    for key, events in by_run.items():
        events.sort(key=_by_observed_at)  # a no-op pass for a ring's run; any order is accepted
        finished_at = None if remember is None else remember.get(key)
        if not _restore_finished(tracker, key, events, finished_at, now_ms, restored, errors):
            in_flight.append(events)
        budget -= len(events)
        if budget <= 0:
            budget = slice_events
            yield
    restored.sort(key=_by_finished_at)  # the finished table is oldest first
    for run in restored:
        tracker._retain(run)
        tools = run.tools
        if tools:
            for tool_call_id, state in tools.items():
                if state >= 0:
                    tracker._armed_tools += 1
                    tracker._deadlines.push(state, run, tool_call_id)
        tracker._arm(run, tracker._run_due(run))
        budget -= 4  # a few dict and heap operations: about as much work as replaying an event or two
        if budget <= 0:
            budget = slice_events
            yield
    for at in sorted(errors):
        tracker._burst(at)  # a burst under way across the restart goes on being counted
    # 3. Runs in flight, in time order across runs, with the deadlines that came due between their events.
    found: list[Anomaly] = []
    pop_due = tracker._deadlines.pop_due
    for stamped in heapq.merge(*in_flight, key=_by_observed_at):
        at = stamped.observed_at
        while (entry := pop_due(at)) is not None:
            tracker._fire(entry, at, found)
            budget -= 1
        tracker._events_observed += 1
        tracker._observe(stamped, None)  # what it reveals at once was the previous monitor's to report
        budget -= 1
        if budget <= 0:
            budget = slice_events
            yield
    while (entry := pop_due(now_ms)) is not None:
        tracker._fire(entry, now_ms, found)
        budget -= 1
        if budget <= 0:
            budget = slice_events
            yield
    fresh = [anomaly for anomaly in found if anomaly.key not in already_reported]
    tracker._tally(fresh)
    return tuple(fresh)


def _restore_finished(
    tracker: RunTracker,
    key: tuple[str, str],
    events: list[StampedEvent],
    remembered_at: int | None,
    now: int,
    restored: list[_Run],
    errors: list[int],
) -> bool:
    """Restore a run the previous monitor saw finish, from its replayed events (sorted); False when in flight.

    The previous monitor advanced its deadlines to the run's finish before it observed it, so everything due
    up to then fired there (and is in its reported keys): the run needs its finish, its flags (what it already
    reported once per run), and the calls its finish left armed, not a replay.
    """
    done = next((index for index, stamped in enumerate(events) if type(stamped.event) in _COMPLETIONS), None)
    if remembered_at is not None and (done is None or events[done].observed_at > remembered_at):
        # The ring lost the completion: what it kept of the run from the remembered finish on came after it.
        finished_at = remembered_at
        split = 0
        while split < len(events) and events[split].observed_at < remembered_at:
            split += 1
        after = split
    elif done is not None:
        finished_at = events[done].observed_at
        split, after = done, done + 1
        if type(events[done].event) is RunError:
            errors.append(finished_at)
    else:
        return False
    tracker._events_observed += len(events)
    latency_ms = tracker._latency_ms
    for stamped in events:
        timestamp = stamped.event.timestamp
        if timestamp is not None and stamped.observed_at - timestamp > latency_ms:
            flags = _LATENCY_REPORTED
            break
    else:
        flags = 0
    # Before the finish only the calls' states matter (as the tracker's tool-call handlers keep them).
    stuck_ms = tracker._stuck_ms
    tools: dict[str, int] = {}
    for stamped in events[:split]:
        event = stamped.event
        kind = type(event)
        if kind is ToolCallStart:
            tools.setdefault(cast("ToolCallStart", event).tool_call_id, stamped.observed_at + stuck_ms)
        elif kind is ToolCallEnd:
            end = cast("ToolCallEnd", event)
            state = tools.get(end.tool_call_id)
            if state is None or _completed_by_seed(end):
                tools[end.tool_call_id] = _TOOL_DONE
            elif state >= 0:
                tools[end.tool_call_id] = _AWAITING_RESULT - state
        elif kind is ToolCallResult:
            tools[cast("ToolCallResult", event).tool_call_id] = _TOOL_DONE
    for tool_call_id, state in tools.items():
        if state <= _AWAITING_RESULT:
            tools[tool_call_id] = _TOOL_DONE  # as _finish: the finish closes a call whose arguments ended
    # After the finish: what _observe_finished flags (and closes) for a late event.
    for stamped in events[after:]:
        event = stamped.event
        kind = type(event)
        if kind in _COMPLETIONS:
            flags |= _DUPLICATE_REPORTED
            if kind is RunError:
                errors.append(stamped.observed_at)
            continue
        flags |= _AFTER_REPORTED
        if kind is ToolCallEnd or kind is ToolCallResult:
            tool_call_id = cast("ToolCallEnd | ToolCallResult", event).tool_call_id
            state = tools.get(tool_call_id)
            # A call due before this late close fired first: it stays armed, to fire now if not reported yet.
            if state is not None and state > stamped.observed_at:
                tools[tool_call_id] = _TOOL_DONE
    if tracker._remember is not None:
        # Not held back by defer_finished_runs(): these events are ones the previous monitor saw, which its
        # last_tapped already covers (and the memory usually has the run already: then this is a lookup).
        tracker._remember.add(key, finished_at)
    armed = any(state >= 0 for state in tools.values())
    if not armed and finished_at + tracker._retention_ms <= now:
        return True  # it would only be restored to expire at once
    run = _Run(key, events[-1].observed_at if events else finished_at)
    run.finished_at = finished_at
    run.flight_id = None
    run.flags = flags
    run.tools = tools or None
    restored.append(run)
    return True
