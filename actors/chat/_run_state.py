from __future__ import annotations

from typing import Final

from actors.chat._events import RunError, RunFinished, RunStarted, ToolCallEnd, ToolCallResult, ToolCallStart

# What an event means to the state machine; everything absent from the table is plain activity. Ordered: the
# categories above _STARTED are exactly the ones that act on a run in flight (the tracker tests `> _STARTED`).
_ACTIVITY: Final = 0
_STARTED: Final = 1
_FINISHED: Final = 2
_ERRORED: Final = 3
_TOOL_STARTED: Final = 4
_TOOL_ENDED: Final = 5
_TOOL_RESULT: Final = 6
_COMPLETIONS: Final = frozenset({RunFinished, RunError})
_CATEGORY: Final[dict[type, int]] = {
    RunStarted: _STARTED,
    RunFinished: _FINISHED,
    RunError: _ERRORED,
    ToolCallStart: _TOOL_STARTED,
    ToolCallEnd: _TOOL_ENDED,
    ToolCallResult: _TOOL_RESULT,
}

# _Run.flags: what was already reported for a run, so each per-run anomaly is reported once.
_STALE_REPORTED: Final = 1
_LATENCY_REPORTED: Final = 2
_DUPLICATE_REPORTED: Final = 4
_AFTER_REPORTED: Final = 8

# _Run.tools values. A non-negative int is the stuck deadline of a call whose arguments are still streaming (no
# TOOL_CALL_END yet; observed_at is ms on a clock that starts at or above 0, so deadlines are never negative). A call
# that had its END and awaits its RESULT (or its run's finish) keeps its deadline as _AWAITING_RESULT - deadline,
# which is <= _AWAITING_RESULT, so one dict holds both and _deadline_of() reads either. The other two mark a call
# already reported stuck and a closed (or orphan) call.
_TOOL_STUCK: Final = -1
_TOOL_DONE: Final = -2
_AWAITING_RESULT: Final = -3


class _Run:
    """Per-run state: one per tracked (thread, run)."""

    __slots__ = ("armed", "finished_at", "flags", "flight_id", "key", "last_activity", "queued_at", "tools", "tracked")

    def __init__(self, key: tuple[str, str], now: int) -> None:
        self.key = key
        # The run id while the run is in flight, None once it finished or was dropped: what a thread's cached run
        # is matched on (ThreadDeliveries.current_run), in one comparison and without touching the key tuple.
        self.flight_id: str | None = key[1]
        self.last_activity = now
        # When the run was (re)queued in the in-flight table, for the cap's second-chance eviction.
        self.queued_at = now
        self.finished_at: int | None = None
        # Deadline of this run's one current heap entry (its stale check, or its expiry once finished or reported
        # stale); an entry for the run with any other deadline is skipped when popped.
        self.armed = 0
        self.flags = 0
        self.tools: dict[str, int] | None = None
        self.tracked = True

    def is_current(self, due: int, tool_call_id: str | None) -> bool:
        """Whether the heap entry (``due``, ``tool_call_id``) is still a deadline of this run."""
        if not self.tracked:
            return False
        if tool_call_id is None:
            return self.armed == due
        tools = self.tools
        if tools is None:
            return False
        state = tools.get(tool_call_id)
        return state is not None and _deadline_of(state) == due


def _deadline_of(state: int) -> int:
    """The stuck deadline a tool state holds; negative (never a deadline) for a call stuck or done."""
    return state if state >= 0 else _AWAITING_RESULT - state


def _armed(state: int) -> bool:
    """Whether a tool state is a call with a live deadline (not yet stuck, closed or orphan)."""
    return state >= 0 or state <= _AWAITING_RESULT


def _completed_by_seed(event: ToolCallEnd) -> bool:
    """Whether this TOOL_CALL_END came in as the seed's ``tool_completed``, which says the tool has finished.

    The alias parser keeps the seed object as ``rawEvent``; AG-UI's own END only says the arguments are complete.
    """
    raw = event.raw_event
    return type(raw) is dict and raw.get("type") == "tool_completed"
