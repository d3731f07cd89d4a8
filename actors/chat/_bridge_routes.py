from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from actors.chat._replay_ring import ReplayGap

if TYPE_CHECKING:
    from collections import OrderedDict
    from collections.abc import Callable, Iterable

    from actors._ref import ActorRef
    from actors.chat._connection import ConnectionProgress
    from actors.chat._replay_ring import ReplayRing

# The bridge's logger: what is logged here is logged by the bridge.
logger = logging.getLogger("agentwatch.chat.bridge")


class ThreadRoutes:
    """One thread as the bridge keeps it: its numbering, its replay ring and the routes to its subscribers."""

    __slots__ = (
        "fan_out_routes",
        "last_active",
        "last_seq",
        "needs_scan",
        "reported_seq",
        "ring",
        "routed_seq",
        "routes",
        "thread_id",
    )

    def __init__(self, thread_id: str, ring: ReplayRing) -> None:
        self.thread_id = thread_id
        self.ring = ring
        self.last_seq = 0
        #: Highest seq routed to at least one connection, and the highest reported delivered to all of them.
        self.routed_seq = 0
        self.reported_seq = 0
        self.last_active = 0
        self.routes: dict[str, Route] = {}
        #: The same routes as a tuple, for the loop over them once per event (a dict's values view and its
        #: iterator are two objects per event); None after a route was added or removed, until the next event
        #: that needs it rebuilds it (:meth:`current_routes`).
        self.fan_out_routes: tuple[Route, ...] | None = ()
        #: Set when an event of the thread is routed without being sent on the spot (handed to a writer's queue,
        #: or held back for a lagging route); cleared once a delivery check finds every route caught up. While it
        #: is clear, every event routed so far was sent to every route as it was routed (the fast path), so the
        #: thread is delivered through ``last_seq`` without a look at its routes.
        self.needs_scan = False

    def routes_changed(self) -> None:
        """Note that a route was added or removed: :attr:`fan_out_routes` is rebuilt when next needed.

        Not rebuilt here: subscribing or closing thousands of connections on one thread, one after another (a
        broadcast thread, or a shutdown closing them all in one handler), would cost a tuple of all of them each.
        """
        self.fan_out_routes = None

    def current_routes(self) -> tuple[Route, ...]:
        """:attr:`fan_out_routes`, rebuilt first if a route was added or removed since it was last built."""
        routes = self.fan_out_routes
        if routes is None:
            routes = self.fan_out_routes = tuple(self.routes.values())
        return routes


class Route:
    """One connection's subscription to one thread."""

    __slots__ = ("connection", "deferred", "handed", "lagging", "sent_seq", "subscribed_at", "thread", "told_seq")

    def __init__(self, connection: ConnectionRoutes, thread: ThreadRoutes, told_seq: int) -> None:
        self.connection = connection
        self.thread = thread
        #: The thread's last seq when the subscription took effect: later events are routed here live.
        self.subscribed_at = thread.last_seq
        #: While lagging, the highest seq handed to the writer (it catches up from the ring after it). A route
        #: that is not lagging has been handed every event up to the thread's last seq, so the hot path does not
        #: keep this up to date then.
        self.told_seq = told_seq
        self.lagging = False
        #: Live events routed here while lagging and not yet handed to the writer.
        self.deferred = 0
        #: Live events routed here that were not sent on the spot (handed to the writer, or held back): every other
        #: live event, ``thread.last_seq - subscribed_at - handed`` of them, the bridge sent itself (the fast path).
        self.handed = 0
        #: The seq of the last frame the bridge sent itself on this route (0: none). The writer's cursor
        #: (``progress.delivered_seq``) covers the frames it sent; the route is delivered up to the higher of the two.
        self.sent_seq = 0


class ConnectionRoutes:
    """One connection as the bridge keeps it: its writer, what it was handed, and its routes by thread."""

    __slots__ = (
        "caught_up",
        "close_code",
        "closing",
        "connection_id",
        "full_since",
        "lagging_routes",
        "principal",
        "progress",
        "replayed",
        "routes",
        "seen_coalesced",
        "seen_discarded",
        "seen_errors",
        "seen_sent",
        "sent_directly_before",
        "sent_seq_before",
        "told",
        "writer",
    )

    def __init__(self, connection_id: str, writer: ActorRef[Any], principal: str, progress: ConnectionProgress) -> None:
        self.connection_id = connection_id
        self.writer = writer
        self.principal = principal
        self.progress = progress
        self.routes: dict[str, Route] = {}
        #: Events handed to the writer: live, caught up from the ring, or replayed on resume.
        self.told = 0
        self.caught_up = 0
        self.replayed = 0
        self.lagging_routes = 0
        #: Loop time since which the connection has had events it could not take (None: it takes everything).
        self.full_since: float | None = None
        self.closing = False
        self.close_code: int | None = None
        #: Frames the bridge sent itself on routes since removed (see :attr:`Route.handed`), and per thread the seq
        #: of the last of them.
        self.sent_directly_before = 0
        self.sent_seq_before: dict[str, int] = {}
        #: What the writer had sent, merged and failed to send when the bridge last read it (DeliveryTally).
        self.seen_sent = 0
        self.seen_coalesced = 0
        self.seen_errors = 0
        self.seen_discarded = 0

    def sent_directly(self) -> int:
        """Frames the bridge sent to this connection itself (the fast path), derived from its routes."""
        sent = self.sent_directly_before
        for route in self.routes.values():
            sent += route.thread.last_seq - route.subscribed_at - route.handed
        return sent

    def forget_route(self, route: Route) -> None:
        """Keep what the bridge sent itself on a route that is being removed (see :meth:`sent_directly`)."""
        thread = route.thread
        self.sent_directly_before += thread.last_seq - route.subscribed_at - route.handed
        if route.sent_seq > self.sent_seq_before.get(thread.thread_id, 0):
            self.sent_seq_before[thread.thread_id] = route.sent_seq

    def delivered_seq(self) -> dict[str, int]:
        """Per thread, the highest seq sent to the connection, by its writer or by the bridge."""
        delivered = dict(self.progress.delivered_seq)
        for thread_id, seq in self.sent_seq_before.items():
            if seq > delivered.get(thread_id, 0):
                delivered[thread_id] = seq
        for thread_id, route in self.routes.items():
            if route.sent_seq > delivered.get(thread_id, 0):
                delivered[thread_id] = route.sent_seq
        return delivered


def authorized(authorize: Callable[[str, str], bool], principal: str, thread_id: str) -> bool:
    """Ask the authorisation hook whether a principal may subscribe to a thread; anything but ``True`` refuses.

    :param authorize: the bridge's hook (``BridgeConfig.authorize``); if it raises, the subscription is refused
    :return: True only if the hook returned True itself
    """
    try:
        verdict = authorize(principal, thread_id)
    except Exception:
        logger.exception("authorize(%r, %r) raised: refused", principal, thread_id)
        return False
    # Only a real True admits: a coroutine (an async hook by mistake) or any other truthy object refuses.
    if verdict is not True and verdict is not False:
        if inspect.iscoroutine(verdict):
            verdict.close()  # never awaited, on purpose: the hook must decide synchronously
        logger.error("authorize(%r, %r) returned %r, not a bool: refused", principal, thread_id, verdict)
    return verdict is True


def resume_problem(thread: ThreadRoutes, after_seq: object, now_ms: int) -> str | None:
    """Why a client cannot resume a thread after ``after_seq`` from its replay ring, or None if it can.

    :param after_seq: the client's ``afterSeq``, as received (not yet known to be an int)
    :param now_ms: the bridge's clock, in milliseconds (the ring's age limit is judged against it)
    """
    if isinstance(after_seq, bool) or not isinstance(after_seq, int):
        return f"afterSeq must be an int, got {type(after_seq).__name__}"
    if not 0 <= after_seq <= thread.last_seq:
        return f"afterSeq {after_seq} is not a seq of thread {thread.thread_id!r} (last seq {thread.last_seq})"
    try:
        thread.ring.since(after_seq, now_ms)
    except ReplayGap as gap:
        return str(gap)
    return None


def confirmed_delivery(unconfirmed: Iterable[ThreadRoutes]) -> dict[str, int]:
    """The seq up to which each thread's events are now delivered to every subscriber, where that moved on.

    A route counts as delivered up to ``max(subscribed_at, the highest seq sent to it)`` (by its writer, or by the
    bridge itself: ``Route.sent_seq``); a thread's confirmation is the lowest of those over its routes, and is
    included only if above what was last reported. A thread whose events were all sent as they were routed
    (``needs_scan`` clear) is delivered through its last seq: its routes are only looked at when something was
    queued or held back since they were last found caught up.
    """
    confirmed: dict[str, int] = {}
    for thread in unconfirmed:
        thread_id = thread.thread_id
        reported = thread.reported_seq
        last_seq = low = thread.last_seq
        if thread.needs_scan:
            # The lowest of max(subscribed_at, delivered seq) over the routes; a plain loop (this runs per tick
            # over every route of every such thread), which stops once nothing new can be confirmed.
            for route in thread.routes.values():
                seq = route.connection.progress.delivered_seq.get(thread_id, 0)
                if route.sent_seq > seq:
                    seq = route.sent_seq
                subscribed_at = route.subscribed_at
                value = seq if seq > subscribed_at else subscribed_at
                if value < low:
                    low = value
                    if low <= reported:
                        break
            if low == last_seq:
                thread.needs_scan = False
        if low > reported:
            confirmed[thread_id] = low
    return confirmed


def sweep_idle_threads(
    threads: OrderedDict[str, ThreadRoutes], unconfirmed: dict[ThreadRoutes, None], cutoff_ms: float, limit: int
) -> int:
    """Forget threads nobody listens to that were last published to before ``cutoff_ms``; look at most at ``limit``.

    :param threads: least recently published first; a thread looked at and kept moves to the end
    :return: how many events the forgotten threads' rings held
    """
    # A thread nobody listens to whose ring has aged out holds nothing anyone can replay: forget it (a client
    # resuming on it later gets 4002 and refetches).
    evicted = 0
    for _ in range(min(len(threads), limit)):
        thread = next(iter(threads.values()))
        if thread.last_active >= cutoff_ms:
            break
        threads.move_to_end(thread.thread_id)
        if not thread.routes:
            del threads[thread.thread_id]
            unconfirmed.pop(thread, None)
            evicted += len(thread.ring)
    return evicted
