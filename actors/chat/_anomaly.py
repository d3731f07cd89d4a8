from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

import msgspec

from ._oldest_first import OldestFirstTable

if TYPE_CHECKING:
    from collections.abc import Hashable


class AnomalyKind(enum.StrEnum):
    """A silent failure the monitor detects; the value is the seed's snake_case name."""

    MISSING_AGENT_STARTED = "missing_agent_started"
    ORPHAN_TOOL_COMPLETED = "orphan_tool_completed"
    STUCK_TOOL = "stuck_tool"
    STALE_THREAD = "stale_thread"
    HIGH_LATENCY = "high_latency"
    DUPLICATE_COMPLETION = "duplicate_completion"
    EVENT_AFTER_COMPLETION = "event_after_completion"
    UNDELIVERED_EVENT = "undelivered_event"
    ERROR_BURST = "error_burst"
    HEALTH_CLAIM_MISMATCH = "health_claim_mismatch"

    @property
    def default_severity(self) -> Severity:
        """The severity the detectors give this kind (see the table in ``docs/monitor.md``)."""
        return _DEFAULT_SEVERITY[self]


class Severity(enum.StrEnum):
    """How urgently an anomaly needs a human."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


# Critical: the user is left waiting or loses output. Warning: the stream is malformed but the user still got an
# answer (or the problem may be transient).
_DEFAULT_SEVERITY: Final[dict[AnomalyKind, Severity]] = {
    AnomalyKind.MISSING_AGENT_STARTED: Severity.WARNING,
    AnomalyKind.ORPHAN_TOOL_COMPLETED: Severity.WARNING,
    AnomalyKind.STUCK_TOOL: Severity.CRITICAL,
    AnomalyKind.STALE_THREAD: Severity.CRITICAL,
    AnomalyKind.HIGH_LATENCY: Severity.WARNING,
    AnomalyKind.DUPLICATE_COMPLETION: Severity.WARNING,
    AnomalyKind.EVENT_AFTER_COMPLETION: Severity.WARNING,
    AnomalyKind.UNDELIVERED_EVENT: Severity.CRITICAL,
    AnomalyKind.ERROR_BURST: Severity.CRITICAL,
    AnomalyKind.HEALTH_CLAIM_MISMATCH: Severity.CRITICAL,
}

ALL_THREADS: Final = "*"
"""The ``thread_id`` of an anomaly that is about the whole stream rather than one thread (``error_burst``)."""

AnomalyKey = tuple[AnomalyKind, str, str | None, str | None, int | None, int | None]
"""``(kind, thread_id, run_id, tool_call_id, seq, window_start)``: identifies one anomaly, to report it once."""


class Anomaly(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One detected silent failure.

    :param kind: what went wrong.
    :param severity: how urgently it needs a human.
    :param thread_id: the thread it concerns; :data:`ALL_THREADS` for a stream-wide anomaly.
    :param run_id: the run it concerns, when it concerns one run.
    :param tool_call_id: the tool call it concerns (``stuck_tool``, ``orphan_tool_completed``).
    :param detected_at: ms on the runtime clock when it was detected.
    :param detail: a human-readable explanation with the figures that triggered it.
    :param seq: ``undelivered_event`` only: the first per-thread sequence number that was not delivered.
    :param window_start: ``error_burst`` only: start (ms) of the aligned window the burst was reported for.
    """

    kind: AnomalyKind
    severity: Severity
    thread_id: str
    run_id: str | None = None
    tool_call_id: str | None = None
    detected_at: int
    detail: str
    seq: int | None = None
    window_start: int | None = None

    @property
    def key(self) -> AnomalyKey:
        """What makes this anomaly the same one when it is seen again (by a restarted monitor, say)."""
        return (self.kind, self.thread_id, self.run_id, self.tool_call_id, self.seq, self.window_start)


class ReportedKeys(OldestFirstTable["Hashable", None]):
    """A bounded set of anomaly keys already reported; the oldest key is forgotten first when full.

    The monitor keeps it outside its run tracker so that a rebuilt tracker does not report an anomaly twice.

    :param capacity: most keys kept.
    :raises ValueError: when ``capacity`` is not a positive int.
    """

    __slots__ = ()

    def add(self, key: Hashable) -> bool:
        """Remember ``key``.

        :return: True when the key was new (report the anomaly), False when it was already reported.
        """
        return self._put(key, None)
