from __future__ import annotations

import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from actors import Message

if TYPE_CHECKING:
    from actors import ActorRef

logger = logging.getLogger("agentwatch.supervisors")


class SupervisorEventKind(enum.Enum):
    """What happened to a child (or to a supervisor itself)."""

    STARTED = "started"
    FAILED = "failed"
    RESTARTED = "restarted"
    RESTART_SCHEDULED = "restart_scheduled"  # waiting out a backoff delay
    DETACHED = "detached"
    REATTACHED = "reattached"
    ESCALATED = "escalated"
    SHUT_DOWN = "shut_down"
    BLOCKED_LOOP = "blocked_loop"  # the loop-lag watchdog caught this child blocking the event loop


class SupervisorEvent(Message, frozen=True, kw_only=True):
    """One supervision event, as published to subscribers and logged.

    :param at: loop time in seconds (virtual in tests and simulations)
    """

    kind: SupervisorEventKind
    supervisor: str
    child_id: str | None
    strategy: str
    reason: str = ""
    detail: str = ""
    at: float = 0.0


class SupervisionEventStream:
    """Fan-out of supervisor events: every event is logged, kept in a bounded history and told to subscribers.

    One stream is usually shared by a whole supervision tree, so one subscriber (the monitor, a metrics
    exporter) sees every restart, detach and escalation. Telling a subscriber never blocks.
    """

    def __init__(self, history: int = 1000) -> None:
        self._subscribers: list[ActorRef[Any]] = []
        self._history: deque[SupervisorEvent] = deque(maxlen=history)
        self.counts: dict[SupervisorEventKind, int] = dict.fromkeys(SupervisorEventKind, 0)

    def subscribe(self, ref: ActorRef[Any]) -> None:
        """Tell ``ref`` every future event (a stopped subscriber's events become dead letters)."""
        if ref not in self._subscribers:
            self._subscribers.append(ref)

    def unsubscribe(self, ref: ActorRef[Any]) -> None:
        """Stop telling ``ref``."""
        if ref in self._subscribers:
            self._subscribers.remove(ref)

    def history(self) -> list[SupervisorEvent]:
        """Return the most recent events, oldest first."""
        return list(self._history)

    def publish(self, event: SupervisorEvent) -> None:
        """Log, record and fan out one event."""
        self.counts[event.kind] += 1
        self._history.append(event)
        level = logging.INFO if event.kind in _QUIET else logging.WARNING
        if event.kind is SupervisorEventKind.ESCALATED:
            level = logging.ERROR
        logger.log(
            level,
            "supervisor=%s child=%s event=%s strategy=%s reason=%s %s",
            event.supervisor,
            event.child_id,
            event.kind.value,
            event.strategy,
            event.reason,
            event.detail,
        )
        for subscriber in self._subscribers:
            subscriber.tell(event)


# Restarts log at INFO: the failure that caused them is already logged at WARNING with its reason (as OTP does).
_QUIET = frozenset(
    {
        SupervisorEventKind.STARTED,
        SupervisorEventKind.SHUT_DOWN,
        SupervisorEventKind.REATTACHED,
        SupervisorEventKind.RESTARTED,
    }
)
