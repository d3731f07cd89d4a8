from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors import ActorRef, MailboxFull
from actors.chat._events import LIFECYCLE_EVENT_TYPES, StampedEvent

if TYPE_CHECKING:
    from collections import deque

    from actors._mailbox import Mailbox


class MonitorTap:
    """The bridge's side of the monitoring tap: which monitor gets the accepted events, how, and what was lost.

    The bridge adds each event it routes to :attr:`pending` and calls :meth:`flush` once the run of publishes it
    is routing is done (so :attr:`pending` is empty between two messages). A run that fits below the shedding mark
    is told with one ``tell`` (a run of one: sparse traffic) or one ``tell_many``; otherwise each event is tapped
    on its own: content shed above the mark when shedding is configured, lifecycle events into the mailbox's
    reserved lane. Nothing here ever waits, and a monitor that is full, stopped or detached costs counts only.

    :param shed_at: the fraction of the monitor mailbox's capacity from which content taps are shed (None: never)
    """

    __slots__ = (
        "_inbox",
        "_shed_above",
        "_shed_at",
        "lost",
        "monitor",
        "monitor_ref",
        "pending",
        "shed",
        "skipped",
        "taps",
    )

    def __init__(self, shed_at: float | None) -> None:
        self._shed_at = shed_at
        #: The configured monitor, even while it is detached or stopped (None: none is configured).
        self.monitor_ref: ActorRef[Any] | None = None
        #: The monitor taps go to now: the configured one while it is alive (checked by :meth:`refresh`), else None.
        self.monitor: ActorRef[Any] | None = None
        #: The events of the run being routed, tapped together by :meth:`flush`.
        self.pending: list[StampedEvent] = []
        #: Taps told to the monitor (shed and skipped ones are not).
        self.taps = 0
        #: Taps the monitor's mailbox refused (full, or the monitor stopped since the last refresh).
        self.lost = 0
        #: Events not tapped because the configured monitor was out of service.
        self.skipped = 0
        #: Content taps shed because the monitor's mailbox was at or above the shedding mark.
        self.shed = 0
        # The queue length from which a tap needs a decision: the shedding mark if configured, never above the
        # point where ordinary tells are refused (the mailbox's limit below its reserved lane).
        self._shed_above = 0
        # The configured monitor mailbox's queue (None: none is configured): a tap or report that is not its last
        # item after the tell was refused.
        self._inbox: deque[Any] | None = None

    @property
    def lost_total(self) -> int:
        """Every accepted event the monitor did not get: refused, skipped or shed."""
        return self.lost + self.skipped + self.shed

    @property
    def monitor_queue(self) -> deque[Any] | None:
        """The configured monitor mailbox's queue (None: no monitor is configured)."""
        return self._inbox

    def set_monitor(self, monitor: ActorRef[Any] | None) -> None:
        """Tap ``monitor`` from now on (None: no monitor)."""
        self.monitor_ref = monitor
        if monitor is None:
            self._inbox = None
            self._shed_above = 0
        else:
            # Read once per run of taps, so the queue itself is kept (it lives as long as the ref). A same-package
            # shortcut: statistics() would build two structs.
            mailbox: Mailbox = monitor._mailbox
            self._inbox = mailbox.queue
            shed_at = self._shed_at
            shed_mark = max(1, int(mailbox.capacity * shed_at)) if shed_at is not None else mailbox.limit
            self._shed_above = min(shed_mark, mailbox.limit)
        self.refresh()

    def refresh(self) -> ActorRef[Any] | None:
        """Check whether the configured monitor is in service; return the monitor taps now go to (or None).

        Checked on the bridge's tick rather than per event: a tell to a detached ref costs a dead-letter record, so
        while the monitor is out of service the taps are skipped (and counted) instead.
        """
        monitor = self.monitor_ref
        self.monitor = monitor if monitor is not None and monitor.is_alive else None
        return self.monitor

    def flush(self) -> None:
        """Tap the events of the run just routed (:attr:`pending`), in order; never waits."""
        taps = self.pending
        monitor = self.monitor
        inbox = self._inbox
        # Events are only added while a monitor is tapped, which a run cannot change.
        assert monitor is not None
        assert inbox is not None
        count = len(taps)
        if len(inbox) + count <= self._shed_above:
            # They all fit below the mark, itself never above the mailbox's limit: none is refused for room (not
            # even on a REJECT mailbox), only if the monitor stopped since the last refresh (dead letters, lost).
            self.taps += count
            if count == 1:
                stamped = taps.pop()
                monitor.tell(stamped)
                if not inbox or inbox[-1] is not stamped:
                    self.lost += 1
            else:
                self.lost += count - monitor.tell_many(taps)
                taps.clear()  # tell_many copied them
            return
        for stamped in taps:
            self._tap_one(monitor, stamped)
        taps.clear()

    def _tap_one(self, monitor: ActorRef[Any], stamped: StampedEvent) -> None:
        """Tap one event into a monitor mailbox at or near its shedding mark."""
        inbox = self._inbox
        assert inbox is not None
        # Below the mark one plain tell. At or above it, content taps are shed (when shedding is configured) and
        # lifecycle taps go into the reserved lane of the monitor's mailbox, which a flood by other senders cannot
        # take: the detectors need every boundary to tell a missing start from a real one.
        if len(inbox) < self._shed_above:
            tell = monitor.tell
        elif type(stamped.event) in LIFECYCLE_EVENT_TYPES:
            tell = monitor.tell_reserved
        elif self._shed_at is not None:
            self.shed += 1
            return
        else:
            tell = monitor.tell
        try:  # noqa: SIM105  (a monitor on a REJECT mailbox: lost all the same, never the bridge's problem)
            tell(stamped)
        except MailboxFull:
            pass
        self.taps += 1
        # Counted here, per tap, rather than from the mailbox's drop counters: whatever else floods the monitor
        # (health checks, reports) is not a tap the bridge lost.
        if not inbox or inbox[-1] is not stamped:
            self.lost += 1
