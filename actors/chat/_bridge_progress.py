from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors._exceptions import MailboxFull
from actors.chat._bridge_routes import confirmed_delivery
from actors.chat._tap import DeliveryProgress

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Iterable, Mapping

    from actors._ref import ActorRef
    from actors.chat._bridge_routes import ThreadRoutes
    from actors.chat._bridge_statistics import ConnectionScan


class DeliveryReports:
    """What the bridge has still to tell the monitor of delivery (:class:`DeliveryProgress`), and what it told.

    The monitor judges each routed event's delivery deadline from these reports: per thread, the seq up to which
    every subscriber has been sent its events; the threads that lost their last connection (nobody is owed
    anything there any more); and how many events were sent, all connections together.
    """

    __slots__ = ("reported_delivered", "unconfirmed", "unsubscribed")

    def __init__(self) -> None:
        #: Threads with routed events not yet reported delivered (an ordered set). The bridge's event path adds
        #: to this very dict, through a reference of its own.
        self.unconfirmed: dict[ThreadRoutes, None] = {}
        #: Threads whose last connection left, not yet reported (an ordered set).
        self.unsubscribed: dict[str, None] = {}
        #: Events sent to clients (delivered + coalesced, all connections) as of the last report.
        self.reported_delivered = 0

    def thread_left(self, thread: ThreadRoutes, *, monitored: bool) -> None:
        """Note that a thread lost its last route: nobody is owed its events any more.

        :param monitored: a monitor is configured (only then is the thread reported as unsubscribed)
        """
        # A client that comes back resumes from the ring.
        self.unconfirmed.pop(thread, None)
        thread.reported_seq = thread.routed_seq = thread.last_seq
        if monitored:
            self.unsubscribed[thread.thread_id] = None

    def resync(self, threads: Iterable[ThreadRoutes]) -> None:
        """Have every routed thread's delivery reported again, from nothing, for a (re)starting monitor.

        It knows none of the confirmations its predecessor got, nor those made while it was detached (none are
        reported then). Otherwise a thread with no new traffic would never be confirmed, and its delivered events
        would be reported undelivered.
        """
        unconfirmed = self.unconfirmed
        for thread in threads:
            if thread.routed_seq:
                thread.reported_seq = 0
                unconfirmed[thread] = None

    def report(
        self,
        monitor: ActorRef[Any],
        monitor_queue: deque[Any] | None,
        threads: Mapping[str, ThreadRoutes],
        scan: ConnectionScan,
        at: int,
        *,
        resync: bool = False,
    ) -> None:
        """Tell the monitor how far delivery got per thread, and which threads lost their last connection.

        Nothing is told if there is nothing new. A report the monitor's mailbox refused or dropped is not counted
        as told: everything in it is told again in the next one (confirmations are cumulative, and so is what it
        says was delivered).

        :param monitor_queue: the monitor mailbox's queue (None: not known), to see whether the report landed
        :param threads: the bridge's threads by id
        :param scan: the connections, scanned now (what was sent so far)
        :param at: the bridge's clock, in milliseconds
        :param resync: the full re-report for a (re)starting monitor (see :class:`DeliveryProgress`)
        """
        delivered_total = scan.delivered + scan.coalesced
        delivered = delivered_total - self.reported_delivered
        confirmed = confirmed_delivery(self.unconfirmed)
        if not confirmed and not self.unsubscribed and not delivered:
            return
        # The report goes through the monitor's drop-on-full mailbox like the taps.
        report = DeliveryProgress(
            confirmed=confirmed, unsubscribed=tuple(self.unsubscribed), at=at, delivered=delivered, resync=resync
        )
        try:
            monitor.tell(report)
        except MailboxFull:
            return
        if monitor_queue is not None and (not monitor_queue or monitor_queue[-1] is not report):
            return
        self.reported_delivered = delivered_total
        self.unsubscribed.clear()
        unconfirmed = self.unconfirmed
        for thread_id, seq in confirmed.items():
            thread = threads[thread_id]
            thread.reported_seq = seq
            if seq >= thread.routed_seq:
                del unconfirmed[thread]
