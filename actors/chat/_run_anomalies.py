from __future__ import annotations

from typing import TYPE_CHECKING, cast

from actors.chat._anomaly import ALL_THREADS, Anomaly, AnomalyKind

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors.chat._events import AgentEvent, StampedEvent, ToolCallEnd, ToolCallResult
    from actors.chat._run_state import _Run


def _type_name(event: AgentEvent) -> str:
    return str(event.__struct_config__.tag)


def _about_event(kind: AnomalyKind, stamped: StampedEvent, detail: str) -> Anomaly:
    return Anomaly(
        kind=kind,
        severity=kind.default_severity,
        thread_id=stamped.thread_id,
        run_id=stamped.run_id,
        detected_at=stamped.observed_at,
        detail=detail,
    )


def missing_agent_started_anomaly(stamped: StampedEvent) -> Anomaly:
    """``missing_agent_started``: ``stamped`` is the first event seen for its run, and not RUN_STARTED."""
    return _about_event(
        AnomalyKind.MISSING_AGENT_STARTED,
        stamped,
        f"the first event seen for the run was {_type_name(stamped.event)} (seq {stamped.seq}), not RUN_STARTED",
    )


def high_latency_anomaly(stamped: StampedEvent, timestamp: int, latency_ms: int) -> Anomaly:
    """``high_latency``: ``stamped`` was observed more than ``latency_ms`` after its ``timestamp``."""
    return _about_event(
        AnomalyKind.HIGH_LATENCY,
        stamped,
        f"{_type_name(stamped.event)} (seq {stamped.seq}) was observed {stamped.observed_at - timestamp} ms "
        f"after its timestamp (threshold {latency_ms} ms)",
    )


def orphan_tool_completed_anomaly(stamped: StampedEvent) -> Anomaly:
    """``orphan_tool_completed``: ``stamped`` (an END or RESULT) closes a tool call never started in its run."""
    tool_call_id = cast("ToolCallEnd | ToolCallResult", stamped.event).tool_call_id
    return Anomaly(
        kind=AnomalyKind.ORPHAN_TOOL_COMPLETED,
        severity=AnomalyKind.ORPHAN_TOOL_COMPLETED.default_severity,
        thread_id=stamped.thread_id,
        run_id=stamped.run_id,
        tool_call_id=tool_call_id,
        detected_at=stamped.observed_at,
        detail=f"{_type_name(stamped.event)} (seq {stamped.seq}) for a tool call never started in this run",
    )


def duplicate_completion_anomaly(stamped: StampedEvent, finished_at: int | None) -> Anomaly:
    """``duplicate_completion``: ``stamped`` completes a run that already finished at ``finished_at``."""
    return _about_event(
        AnomalyKind.DUPLICATE_COMPLETION,
        stamped,
        f"{_type_name(stamped.event)} (seq {stamped.seq}) for a run that already finished "
        f"{stamped.observed_at - (finished_at or 0)} ms earlier",
    )


def event_after_completion_anomaly(stamped: StampedEvent, finished_at: int | None) -> Anomaly:
    """``event_after_completion``: ``stamped`` arrived for a run that finished at ``finished_at``."""
    return _about_event(
        AnomalyKind.EVENT_AFTER_COMPLETION,
        stamped,
        f"{_type_name(stamped.event)} (seq {stamped.seq}) arrived "
        f"{stamped.observed_at - (finished_at or 0)} ms after the run finished",
    )


def error_burst_anomaly(
    stamped: StampedEvent, window_start: int, errors: Sequence[int], burst_count: int, burst_window_ms: int
) -> Anomaly:
    """``error_burst``: the RUN_ERROR ``stamped`` made ``errors`` (their times, oldest first) a burst."""
    now = stamped.observed_at
    return Anomaly(
        kind=AnomalyKind.ERROR_BURST,
        severity=AnomalyKind.ERROR_BURST.default_severity,
        thread_id=ALL_THREADS,
        detected_at=now,
        window_start=window_start,
        detail=f"{len(errors)} RUN_ERROR events within {now - errors[0]} ms (threshold: "
        f"{burst_count} within {burst_window_ms} ms); the latest on thread "
        f"{stamped.thread_id!r}, run {stamped.run_id!r}",
    )


def stale_thread_anomaly(run: _Run, now: int, stale_ms: int) -> Anomaly:
    """``stale_thread``: ``run`` has not finished and has seen no event for ``stale_ms`` or more."""
    thread_id, run_id = run.key
    return Anomaly(
        kind=AnomalyKind.STALE_THREAD,
        severity=AnomalyKind.STALE_THREAD.default_severity,
        thread_id=thread_id,
        run_id=run_id,
        detected_at=now,
        detail=f"the run has not finished and has seen no event for {now - run.last_activity} ms "
        f"(threshold {stale_ms} ms)",
    )


def stuck_tool_anomaly(run: _Run, tool_call_id: str, deadline: int, now: int, stuck_ms: int, *, ended: bool) -> Anomaly:
    """``stuck_tool``: the call came due at ``deadline`` still open (``ended``: it had its TOOL_CALL_END)."""
    thread_id, run_id = run.key
    if ended:
        what = "had its TOOL_CALL_END but no TOOL_CALL_RESULT, and its run has not finished"
    else:
        what = "has had no TOOL_CALL_END or TOOL_CALL_RESULT"
        if run.finished_at is not None:
            what += " (the run has finished)"
    return Anomaly(
        kind=AnomalyKind.STUCK_TOOL,
        severity=AnomalyKind.STUCK_TOOL.default_severity,
        thread_id=thread_id,
        run_id=run_id,
        tool_call_id=tool_call_id,
        detected_at=now,
        detail=f"the tool call started {now - deadline + stuck_ms} ms ago and {what} (threshold {stuck_ms} ms)",
    )
