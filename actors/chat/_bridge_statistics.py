from __future__ import annotations

import logging
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import msgspec

from actors._exceptions import MailboxFull
from actors._ref import RefState
from actors.chat._bridge_messages import ConnectionStatistics
from actors.chat._components import ComponentHealthChanged
from actors.chat._connection import CloseCode
from actors.chat._health import HealthSample, LatencyHistogram

if TYPE_CHECKING:
    from collections.abc import Iterable

    from actors._ref import ActorRef
    from actors.chat._bridge_routes import ConnectionRoutes, ThreadRoutes
    from actors.chat._health import ComponentHealth

# The bridge's logger: what is logged here is logged by the bridge.
logger = logging.getLogger("agentwatch.chat.bridge")


def statistics_of(connection: ConnectionRoutes, *, finished: bool = False) -> ConnectionStatistics:
    """What one connection was handed, sent and lost, as :class:`ConnectionStatistics`.

    :param finished: its writer has stopped (what is still queued for it was discarded)
    """
    progress = connection.progress
    # Handed to the writer but not yet taken out of its mailbox; once the writer has stopped, these were
    # dead-lettered by the runtime, i.e. discarded when the connection closed.
    in_mailbox = connection.told - progress.taken
    if finished:
        # A writer that failed (rather than closed) leaves its own queue behind: discarded as well.
        state = "closed"
        discarded = progress.discarded + progress.pending + in_mailbox
        queued = 0
    else:
        state = "closing" if connection.closing else "lagging" if connection.lagging_routes else "open"
        discarded = progress.discarded
        queued = progress.pending + in_mailbox
    close_code = progress.close_code if progress.closed else connection.close_code
    if finished and close_code is None:
        close_code = CloseCode.ABNORMAL
    # Frames the bridge sent itself count as received and delivered, as the writer's do.
    sent_directly = connection.sent_directly()
    return ConnectionStatistics(
        connection_id=connection.connection_id,
        principal=connection.principal,
        state=state,
        threads=tuple(connection.routes),
        received=connection.told + sent_directly,
        delivered=progress.delivered + sent_directly,
        coalesced=progress.coalesced,
        discarded_on_close=discarded,
        queued=queued,
        replayed=connection.replayed,
        caught_up=connection.caught_up,
        deferred=sum(route.deferred for route in connection.routes.values()),
        send_errors=progress.send_errors,
        delivered_seq=connection.delivered_seq(),
        close_code=close_code,
        close_reason=progress.close_reason,
    )


class ClosedConnections:
    """What the bridge keeps of the connections it has closed and forgotten: totals, and the last few statistics.

    :param kept: how many closed connections' final statistics are kept (``BridgeConfig.closed_connections_kept``)
    """

    __slots__ = (
        "by_code",
        "coalesced",
        "delivered",
        "discarded",
        "latency",
        "send_errors",
        "slow_closes",
        "statistics",
    )

    def __init__(self, kept: int) -> None:
        self.statistics: deque[ConnectionStatistics] = deque(maxlen=kept)
        self.delivered = 0
        self.coalesced = 0
        self.discarded = 0
        self.send_errors = 0
        self.latency = LatencyHistogram()
        self.by_code: Counter[int] = Counter()
        self.slow_closes = 0

    def record(self, connection: ConnectionRoutes) -> None:
        """Add a connection whose writer has stopped to the totals, and keep its final statistics."""
        final = statistics_of(connection, finished=True)
        progress = connection.progress
        self.delivered += final.delivered
        self.coalesced += progress.coalesced
        self.discarded += final.discarded_on_close
        self.send_errors += progress.send_errors
        self.latency.merge(progress.latency)
        self.latency.record_zeros(final.delivered - progress.delivered)
        assert final.close_code is not None
        self.by_code[final.close_code] += 1
        if final.close_code == CloseCode.SLOW_CONSUMER:
            self.slow_closes += 1
        self.statistics.append(final)

    def last_of(self, connection_id: str) -> tuple[ConnectionStatistics, ...]:
        """The final statistics of the last closed connection with this id still kept (empty if none is)."""
        return tuple(s for s in self.statistics if s.connection_id == connection_id)[-1:]


class ConnectionScan(msgspec.Struct, frozen=True, kw_only=True):
    """What the bridge's connections add up to now, closed ones included: what its tick reports and judges.

    :param delivered: events sent as a frame of their own, or as the last of a coalesced frame
    :param coalesced: events merged into a later event's frame that was sent
    :param errors: sends that failed
    :param queued: events handed to open connections' writers and not yet settled
    :param fullest: the most of those for one connection
    :param open: connections not closing
    """

    delivered: int
    coalesced: int
    errors: int
    queued: int
    fullest: int
    open: int


class DeliveryTally:
    """The bridge's running totals of what its connections' writers sent, merged and failed to send.

    They are kept without a pass over every connection: a writer only sends what the bridge handed it, so only the
    connections handed something since they were last found idle (``busy``) can have changed, and each of those
    is read as the change since it was last read. Frames the bridge sent itself (the fast path) are not in the
    writers' counters; the bridge counts them as it routes. A tick so costs O(busy connections), not
    O(connections).
    """

    __slots__ = ("coalesced", "errors", "writer_sent")

    def __init__(self) -> None:
        self.writer_sent = 0
        self.coalesced = 0
        self.errors = 0

    def read(self, connection: ConnectionRoutes) -> None:
        """Add what the connection's writer did since it was last read (before it stops being read)."""
        progress = connection.progress
        writer_sent = progress.delivered
        self.writer_sent += writer_sent - connection.seen_sent
        connection.seen_sent = writer_sent
        coalesced = progress.coalesced
        self.coalesced += coalesced - connection.seen_coalesced
        connection.seen_coalesced = coalesced
        errors = progress.send_errors
        self.errors += errors - connection.seen_errors
        connection.seen_errors = errors

    def scan(self, busy: dict[ConnectionRoutes, None], *, sent_directly: int, open_connections: int) -> ConnectionScan:
        """Read every busy connection, forget those found idle, and return the totals.

        :param busy: connections handed events since they were last found idle (pruned in place)
        :param sent_directly: frames the bridge sent itself, to every connection it ever had
        :param open_connections: connections not closing
        """
        queued = fullest = 0
        idle: list[ConnectionRoutes] = []
        for connection in busy:
            self.read(connection)
            progress = connection.progress
            depth = connection.told - progress.settled
            if depth:
                if not connection.closing:
                    queued += depth
                    if depth > fullest:
                        fullest = depth
            elif progress.turn_started is None:
                # Everything handed over is settled and no turn is running: only a new hand-over (which puts it
                # back) can change its writer's counters.
                idle.append(connection)
        for connection in idle:
            del busy[connection]
        return ConnectionScan(
            delivered=sent_directly + self.writer_sent,
            coalesced=self.coalesced,
            errors=self.errors,
            queued=queued,
            fullest=fullest,
            open=open_connections,
        )


def sample_health(
    scan: ConnectionScan,
    *,
    at: float,
    capacity: int,
    lagging: int,
    tap_lost: int,
    inbox_dropped: int,
    monitor: ActorRef[Any] | None,
    monitor_attached: bool,
) -> HealthSample:
    """Measure the bridge now, for its health window.

    :param scan: the connections, scanned now
    :param at: loop time, in seconds
    :param monitor: the configured monitor (None: none is), and ``monitor_attached`` whether taps reach it now
    """
    problem = None
    if monitor is not None and not monitor_attached:
        problem = f"monitor {monitor.name!r} is {monitor.state}: events are not being monitored"
    return HealthSample(
        at=at,
        attempts=scan.delivered + scan.errors,
        errors=scan.errors,
        delivered=scan.delivered,
        tap_lost=tap_lost,
        inbox_dropped=inbox_dropped,
        queued=scan.queued,
        fullest=scan.fullest,
        capacity=capacity,
        connections=scan.open,
        lagging=lagging,
        monitor_problem=problem,
    )


class ConnectionTotals(msgspec.Struct, frozen=True, kw_only=True):
    """What the bridge's connections add up to, closed ones included, for :class:`BridgeMetrics`."""

    latency: LatencyHistogram
    delivered: int
    coalesced: int
    discarded: int
    send_errors: int
    queued: int
    deepest: int
    deferred_pending: int
    subscriptions: int
    open: int


def connection_totals(connections: Iterable[ConnectionRoutes], closed: ClosedConnections) -> ConnectionTotals:
    """Add up the open connections' progress and the closed ones' totals."""
    latency = LatencyHistogram()
    latency.merge(closed.latency)
    delivered = closed.delivered
    coalesced = closed.coalesced
    discarded = closed.discarded
    send_errors = closed.send_errors
    queued = 0
    deepest = 0
    deferred_pending = 0
    subscriptions = 0
    open_connections = 0
    for connection in connections:
        progress = connection.progress
        sent_directly = connection.sent_directly()
        latency.merge(progress.latency)
        latency.record_zeros(sent_directly)
        delivered += progress.delivered + sent_directly
        coalesced += progress.coalesced
        discarded += progress.discarded
        send_errors += progress.send_errors
        depth = connection.told - progress.settled
        queued += depth
        deepest = max(deepest, depth)
        subscriptions += len(connection.routes)
        deferred_pending += sum(route.deferred for route in connection.routes.values())
        open_connections += not connection.closing
    return ConnectionTotals(
        latency=latency,
        delivered=delivered,
        coalesced=coalesced,
        discarded=discarded,
        send_errors=send_errors,
        queued=queued,
        deepest=deepest,
        deferred_pending=deferred_pending,
        subscriptions=subscriptions,
        open=open_connections,
    )


def ring_totals(threads: Iterable[ThreadRoutes]) -> tuple[int, int]:
    """Events the threads' replay rings hold now, and events they have evicted (by count or by age).

    :return: ``(retained, evicted)``
    """
    retained = evicted = 0
    for thread in threads:
        ring_stats = thread.ring.statistics()
        retained += ring_stats.retained
        evicted += ring_stats.evicted_by_count + ring_stats.evicted_by_age
    return retained, evicted


def broadcast_health(observers: list[ActorRef[Any]], component_id: str, health: ComponentHealth) -> None:
    """Tell every health observer of a change in the bridge's health; forget observers that have stopped.

    :param observers: the bridge's observers (``BridgeWiring.observers``), pruned in place
    :param component_id: the id the bridge reports health under
    """
    change = ComponentHealthChanged(
        component_id=component_id, status=health.status.value, health=msgspec.to_builtins(health)
    )
    for observer in list(observers):
        if observer.state == RefState.STOPPED:
            observers.remove(observer)
            continue
        try:
            observer.tell(change)
        except MailboxFull:
            logger.warning("health observer %s refused a health change (mailbox full)", observer.name)
