from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, cast

import pytest

from actors._exceptions import MailboxFull
from actors.chat._bridge_progress import DeliveryReports
from actors.chat._bridge_routes import ConnectionRoutes, Route, ThreadRoutes
from actors.chat._bridge_statistics import ConnectionScan
from actors.chat._connection import ConnectionProgress
from actors.chat._replay_ring import ReplayRing
from actors.chat._tap import DeliveryProgress

if TYPE_CHECKING:
    from actors._ref import ActorRef


class Monitor:
    """A monitor's ref as the reports see it: ``tell`` appends to its queue, refuses, or drops (drop-newest)."""

    def __init__(self, mode: str = "take") -> None:
        self.queue: deque[Any] = deque()
        self.mode = mode

    def tell(self, message: object) -> None:
        if self.mode == "refuse":
            raise MailboxFull("monitor", 1)
        if self.mode == "take":
            self.queue.append(message)

    @property
    def ref(self) -> ActorRef[Any]:
        return cast("ActorRef[Any]", self)


def thread(thread_id: str, *, last_seq: int = 0, routed_seq: int = 0) -> ThreadRoutes:
    routes = ThreadRoutes(thread_id, ReplayRing(16, math.inf))
    routes.last_seq = last_seq
    routes.routed_seq = routed_seq
    return routes


def subscribe(to: ThreadRoutes, connection_id: str, *, subscribed_at: int = 0) -> Route:
    connection = ConnectionRoutes(
        connection_id, writer=cast("ActorRef[Any]", None), principal="p", progress=ConnectionProgress()
    )
    route = Route(connection, to, told_seq=subscribed_at)
    route.subscribed_at = subscribed_at
    to.routes[connection_id] = route
    connection.routes[to.thread_id] = route
    return route


def scan(delivered: int = 0, coalesced: int = 0) -> ConnectionScan:
    return ConnectionScan(
        sent_directly=0,
        delivered=delivered,
        coalesced=coalesced,
        errors=0,
        discarded=0,
        queued=0,
        fullest=0,
        closing_queued=0,
        closing_fullest=0,
        open=1,
    )


def threads_of(*threads: ThreadRoutes) -> OrderedDict[str, ThreadRoutes]:
    return OrderedDict((t.thread_id, t) for t in threads)


class TestReport:
    def test_report_thread_sent_everything_confirms_last_seq_and_forgets_it(self) -> None:
        reports = DeliveryReports()
        t = thread("t", last_seq=5, routed_seq=5)
        subscribe(t, "c")  # needs_scan clear: every event went out as it was routed
        reports.unconfirmed[t] = None
        monitor = Monitor()
        reports.report(monitor.ref, monitor.queue, threads_of(t), scan(delivered=5), at=1234)
        assert list(monitor.queue) == [DeliveryProgress(confirmed={"t": 5}, at=1234, delivered=5)]
        assert (t.reported_seq, reports.unconfirmed, reports.reported_delivered) == (5, {}, 5)

    def test_report_route_behind_confirms_its_seq_and_keeps_thread_unconfirmed(self) -> None:
        reports = DeliveryReports()
        t = thread("t", last_seq=5, routed_seq=5)
        t.needs_scan = True
        behind = subscribe(t, "slow")
        behind.sent_seq = 3
        subscribe(t, "fast").sent_seq = 5
        reports.unconfirmed[t] = None
        monitor = Monitor()
        reports.report(monitor.ref, monitor.queue, threads_of(t), scan(delivered=8), at=0)
        assert monitor.queue[-1].confirmed == {"t": 3}
        assert t.reported_seq == 3
        assert list(reports.unconfirmed) == [t]

    def test_report_nothing_new_tells_nothing(self) -> None:
        reports = DeliveryReports()
        t = thread("t", last_seq=5, routed_seq=5)
        t.reported_seq = 5
        reports.unconfirmed[t] = None
        reports.reported_delivered = 7
        monitor = Monitor()
        reports.report(monitor.ref, monitor.queue, threads_of(t), scan(delivered=7), at=0)
        assert not monitor.queue

    @pytest.mark.parametrize("mode", ["refuse", "drop"])
    def test_report_not_received_is_kept_for_the_next_one(self, mode: str) -> None:
        reports = DeliveryReports()
        t = thread("t", last_seq=2, routed_seq=2)
        subscribe(t, "c")
        reports.unconfirmed[t] = None
        reports.unsubscribed["gone"] = None
        monitor = Monitor(mode)
        reports.report(monitor.ref, monitor.queue, threads_of(t), scan(delivered=2), at=0)
        assert (t.reported_seq, list(reports.unconfirmed), list(reports.unsubscribed)) == (0, [t], ["gone"])
        assert reports.reported_delivered == 0
        monitor.mode = "take"
        reports.report(monitor.ref, monitor.queue, threads_of(t), scan(delivered=3), at=0)
        assert list(monitor.queue) == [DeliveryProgress(confirmed={"t": 2}, unsubscribed=("gone",), at=0, delivered=3)]
        assert (reports.unconfirmed, reports.unsubscribed, reports.reported_delivered) == ({}, {}, 3)

    def test_report_counts_only_what_was_sent_since_the_last_one(self) -> None:
        reports = DeliveryReports()
        monitor = Monitor()
        reports.report(monitor.ref, None, {}, scan(delivered=4, coalesced=1), at=0)
        reports.report(monitor.ref, None, {}, scan(delivered=10, coalesced=2), at=0)
        assert [report.delivered for report in monitor.queue] == [5, 7]

    def test_report_resync_is_marked(self) -> None:
        reports = DeliveryReports()
        monitor = Monitor()
        reports.report(monitor.ref, monitor.queue, {}, scan(delivered=1), at=0, resync=True)
        assert monitor.queue[-1].resync is True


class TestThreadLeft:
    @pytest.mark.parametrize(("monitored", "unsubscribed"), [(True, ["t"]), (False, [])])
    def test_thread_left_owes_nothing_and_is_reported_only_if_monitored(
        self, monitored: bool, unsubscribed: list[str]
    ) -> None:
        reports = DeliveryReports()
        t = thread("t", last_seq=9, routed_seq=7)
        reports.unconfirmed[t] = None
        reports.thread_left(t, monitored=monitored)
        assert (t.reported_seq, t.routed_seq) == (9, 9)
        assert reports.unconfirmed == {}
        assert list(reports.unsubscribed) == unsubscribed


class TestResync:
    def test_resync_marks_every_routed_thread_unconfirmed_from_nothing(self) -> None:
        reports = DeliveryReports()
        routed = thread("routed", last_seq=4, routed_seq=4)
        routed.reported_seq = 4
        never_routed = thread("quiet", last_seq=3)
        reports.resync([routed, never_routed])
        assert routed.reported_seq == 0
        assert list(reports.unconfirmed) == [routed]
