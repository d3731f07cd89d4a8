from __future__ import annotations

import math

import msgspec


class DetectionThresholds(msgspec.Struct, frozen=True, kw_only=True):
    """When the run tracker calls something an anomaly; durations are seconds.

    :param stuck_tool_after: a tool call still open this long (``>=``) after its TOOL_CALL_START is ``stuck_tool``:
        open means no TOOL_CALL_RESULT, and either no TOOL_CALL_END or an END in a run that has not finished.
    :param stale_thread_after: an unfinished run silent this long (``>=``) is ``stale_thread``.
    :param high_latency_after: an event observed more than this (``>``) after its own ``timestamp`` is
        ``high_latency``.
    :param error_burst_count: this many RUN_ERROR events (across all runs) ...
    :param error_burst_window: ... less than this apart, first to last, are an ``error_burst``.
    :param undelivered_after: an event expected for delivery and not confirmed this long after (``>=``) it was
        accepted is ``undelivered_event``.
    :param retention: how long a finished run is kept to catch duplicate and late events; also how long a run
        already reported stale is kept before it is forgotten.
    :param max_tracked_runs: most runs in flight (and, separately, most finished runs retained, and most threads
        with delivery state); beyond it one is evicted and counted: the oldest finished run; the run in flight, or
        thread, queued longest ago without activity since (second chance: about the least recently active).
    :raises ValueError: when a duration is not a positive finite number or a count is not a positive int.
    """

    stuck_tool_after: float = 30.0
    stale_thread_after: float = 60.0
    high_latency_after: float = 2.0
    error_burst_count: int = 5
    error_burst_window: float = 60.0
    undelivered_after: float = 5.0
    retention: float = 300.0
    max_tracked_runs: int = 100_000

    def __post_init__(self) -> None:
        for name in (
            "stuck_tool_after",
            "stale_thread_after",
            "high_latency_after",
            "error_burst_window",
            "undelivered_after",
            "retention",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
        for name in ("error_burst_count", "max_tracked_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
