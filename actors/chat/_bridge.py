from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, assert_never

import msgspec

from actors._exceptions import MailboxFull
from actors._message import ExitKind, Terminated
from actors.chat._bridge_connections import BridgeConnections
from actors.chat._bridge_messages import (
    AttachMonitor,
    BridgeConfig,
    BridgeMessage,
    BridgeMetrics,
    Connect,
    Disconnect,
    GetConnectionStatistics,
    GetHealth,
    GetHealthAndMetrics,
    GetMetrics,
    Publish,
    RegisterObserver,
    Subscribe,
    Tick,
    Unsubscribe,
)
from actors.chat._bridge_routes import sweep_idle_threads
from actors.chat._bridge_shutdown import SHUTDOWN_DRAIN, wait_drained
from actors.chat._bridge_statistics import ConnectionScan, broadcast_health, sample_health
from actors.chat._connection import CloseCode, WriterDrained
from actors.chat._events import EVENT_CLASSES, StampedEvent, stamp
from actors.chat._health import ComponentHealth, HealthStatus, HealthWindow, LatencyHistogram
from actors.chat._tap import ReplaySnapshot

if TYPE_CHECKING:
    from actors._message import ExitReason
    from actors._ref import ActorRef
    from actors.chat._bridge_routes import Route
    from actors.chat._health import HealthSample

logger = logging.getLogger("agentwatch.chat.bridge")

_EVENT_TYPES: Final = frozenset(EVENT_CLASSES.values())

_TICK: Final = Tick()
#: Threads looked at per tick when sweeping out idle ones (bounds the tick's cost, not the memory).
_SWEEP_PER_TICK: Final = 1000


class BridgeWiring:
    """What a bridge keeps across restarts of its instance: the monitor's ref and the health observers' refs.

    Created once with the bridge's ref and handed to every instance's constructor (as the mailbox outlives the
    instance); only the running instance changes it, in its own handlers.
    """

    __slots__ = ("monitor", "monitor_set", "observers")

    def __init__(self) -> None:
        #: The monitor set by AttachMonitor (it overrides ``BridgeConfig.monitor`` once set, even to None).
        self.monitor: ActorRef[Any] | None = None
        self.monitor_set = False
        self.observers: list[ActorRef[Any]] = []


class AgentWebSocketBridge(BridgeConnections):
    """Routes agent events to the WebSocket connections subscribed to their thread, and taps them to the monitor.

    One actor owns every thread's numbering, replay ring and routes, so per-thread order and sequence numbers need
    no lock. Each connection has its own :class:`ConnectionWriter` actor with a bounded queue: a slow client only
    ever delays itself. While a writer is idle and its sink can take a frame without waiting, the bridge writes the
    frame itself, in its own pass (the fast path), rather than waking the writer's task for it. A connection whose
    queue is full lags: its live events wait in the replay ring and are handed over as it drains; one that lags for
    ``slow_consumer_after`` is closed with 4001. Every accepted event is tapped to the monitor without waiting, one
    hand-off per run of events routed (:class:`MonitorTap`). Connections and subscriptions are kept by its other
    half, :class:`BridgeConnections`. See ``docs/bridge.md``.

    :param config: routing, buffering and health settings
    :param wiring: the monitor and observers, kept across restarts of this actor (one per ref)
    """

    def __init__(self, config: BridgeConfig | None = None, wiring: BridgeWiring | None = None) -> None:
        config = config if config is not None else BridgeConfig()
        # The threads, connections, routes, the tap and their counters (see BridgeConnections).
        super().__init__(config)
        self._wiring = wiring if wiring is not None else BridgeWiring()
        self._text = config.frame_kind == "text"
        #: Live events handed to a writer (the rest of fan_out_sent the bridge sent itself).
        self._told_live = 0
        self._self: ActorRef[BridgeMessage] | None = None
        self._health: ComponentHealth | None = None
        self._health_window = HealthWindow(config.thresholds, config.health_window)
        # Counters of the event path (see BridgeMetrics for the identities they obey).
        self._received = 0
        self._invalid = 0
        self._unrouted = 0
        self._fan_out_total = 0
        self._fan_out_sent = 0
        self._deferred = 0
        self._evicted_rings = 0

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self._clock = self.clock
        self._self = self.ref
        wiring = self._wiring
        self._tap.set_monitor(wiring.monitor if wiring.monitor_set else self._config.monitor)
        # A baseline, so that whatever happens before the first tick counts in the health window.
        self._health_window.record(self._sample())
        self.send_every(self._config.tick_interval, _TICK)

    async def on_stop(self, reason: ExitReason) -> None:
        if reason.kind is ExitKind.ERROR:
            self._close_all(CloseCode.SERVICE_RESTART, "bridge restarting: resume with afterSeq")
            return
        # A graceful shutdown: each writer first sends what is queued for its client, then closes with 1001; the
        # stop waits for that (bounded: see wait_drained).
        self._close_all(CloseCode.GOING_AWAY, "server shutting down", drain=SHUTDOWN_DRAIN)
        await wait_drained(list(self._connections.values()), self._config.close_timeout)

    def on_kill(self) -> None:
        self._close_all(CloseCode.GOING_AWAY, "server shutting down")

    # ------------------------------------------------------------------ dispatch

    async def receive(self, message: BridgeMessage) -> Any:
        match message:
            case Publish():
                # The publishes queued right behind this one are routed in the same pass (one dispatch for the
                # run, see _route), and their taps go to the monitor together once the run is routed. One clock
                # read for the run: its events were all accepted when it was taken from the mailbox (observed_at
                # counts whole ms, and a run of 256 takes ~1.5 ms to route under a flood; a read per event was ~3%
                # of the bridge's cost per event on asyncio and more on trio). Taken as a list
                # (Actor.take_queued_list, ~230 instructions per event fewer than the lazy take_queued).
                assert self._clock is not None
                run = self.take_queued_list(Publish)
                run.insert(0, message)
                self._route(run, self._clock.now_ms())
            case WriterDrained(connection_id=connection_id):
                self._on_writer_drained(connection_id)
            case Tick():
                self._on_tick()
            case Connect():
                return self._connect(message)
            case Subscribe():
                return self._subscribe(message)
            case Unsubscribe(connection_id=connection_id, thread_id=thread_id):
                self._unsubscribe(connection_id, thread_id)
            case Disconnect(connection_id=connection_id, code=code, reason=reason):
                connection = self._connections.get(connection_id)
                if connection is not None:
                    self._close_connection(connection, code, reason)
            case Terminated(ref=ref):
                self._on_writer_stopped(ref)
            case AttachMonitor(monitor=monitor):
                self._wiring.monitor = monitor
                self._wiring.monitor_set = True
                self._tap.set_monitor(monitor)
            case RegisterObserver(observer=observer):
                if observer not in self._wiring.observers:
                    self._wiring.observers.append(observer)
            case GetHealth():
                return self._evaluate_health(record=False)
            case GetMetrics():
                return self._metrics()
            case GetHealthAndMetrics():
                scan = self._scan()  # one scan for both: they are as of the same moment
                return self._evaluate_health(record=False, scan=scan), self._metrics(scan)
            case GetConnectionStatistics(connection_id=connection_id):
                return self._connection_statistics(connection_id)
            case ReplaySnapshot():
                return self._replay_snapshot()
            case _:
                assert_never(message)
        return None

    # ------------------------------------------------------------------ the critical path

    def _route(self, run: list[Publish], accepted_at: int) -> None:
        """Number, keep and route a run of publishes accepted at ``accepted_at`` (ms), then tap them to the monitor.

        One loop for the whole run rather than a call per event: what every event reads (the tables, the tap, the
        settings) is looked up once, and the counters are added up here and stored once. If a publish raises, it
        is consumed (as any failing message is), the events routed before it are still tapped, and those behind it
        go back to the head of the mailbox (requeue), for the restarted bridge.
        """
        threads = self._threads
        capacity = self._capacity
        text = self._text
        tap = self._tap
        # A run cannot change the monitor: AttachMonitor and the tick's refresh are messages of their own.
        tapped = tap.pending if tap.monitor is not None else None
        skip_taps = tapped is None and tap.monitor_ref is not None
        unconfirmed = self._unconfirmed
        handled = fan_out_total = fan_out_sent = unrouted = 0
        try:
            for message in run:
                handled += 1
                event = message.event
                thread_id = message.thread_id
                run_id = message.run_id
                if type(event) not in _EVENT_TYPES or type(thread_id) is not str or type(run_id) is not str:
                    self._reject("not an event for a str thread and run", message)
                    continue
                timestamp = event.timestamp
                if timestamp is not None and type(timestamp) is not int:
                    # A struct built in code is not validated: the monitor does arithmetic on this field.
                    self._reject(f"$.event.timestamp: expected int or None, got {type(timestamp).__name__}", message)
                    continue
                thread = threads.get(thread_id)
                if thread is None:
                    thread = self._open_thread(thread_id)
                seq = thread.last_seq + 1
                routes = thread.fan_out_routes
                if routes is None:
                    routes = thread.current_routes()
                fan_out = len(routes)
                try:
                    stamped = stamp(
                        event, thread_id=thread_id, run_id=run_id, seq=seq, observed_at=accepted_at, fan_out=fan_out
                    )
                except (TypeError, ValueError, OverflowError, msgspec.MsgspecError) as exc:
                    # Metadata that is not a mapping, a value JSON cannot hold: one counter, and the seq is not used.
                    self._reject(f"its event cannot be encoded ({exc})", message)
                    continue
                thread.last_seq = seq
                thread.ring.append(stamped)
                if thread.last_active != accepted_at:
                    thread.last_active = accepted_at
                    # Least recently published first, for the idle sweep. A thread already published to in this ms
                    # keeps its place: what follows it was published to in this ms too, or is an idle thread the
                    # sweep looked at and kept (it looks at it again once this one moves on or ages out).
                    threads.move_to_end(thread_id)
                if fan_out:
                    fan_out_total += fan_out
                    thread.routed_seq = seq
                    data: str | bytes | None = None
                    for route in routes:
                        connection = route.connection
                        if route.lagging:
                            self._defer(route)
                            continue
                        progress = connection.progress
                        outstanding = connection.told - progress.settled
                        if not outstanding:
                            send_nowait = progress.send_nowait
                            if send_nowait is not None:
                                # The fast path: the writer is idle, so the frame is written here, in order, without
                                # waking the writer's task for it (one wake-up per frame is what sparse traffic
                                # cost).
                                if data is None:
                                    data = stamped.frame.decode() if text else stamped.frame  # once per event
                                try:
                                    send_nowait(data)
                                except Exception:  # WouldBlock, or a failing sink: the writer sends it (and copes)
                                    pass
                                else:
                                    # Counted on the route alone: its seq, for delivery confirmations. How many
                                    # frames the bridge sent itself follows from the route's counts (Route.handed),
                                    # and each is delivered with latency 0; the writer's counters
                                    # (ConnectionProgress) stay its own.
                                    route.sent_seq = seq
                                    fan_out_sent += 1
                                    continue
                        elif outstanding >= capacity:
                            self._defer(route)
                            continue
                        if self._hand_to_writer(route, stamped):
                            fan_out_sent += 1
                else:
                    unrouted += 1
                if tapped is not None:
                    tapped.append(stamped)
                    if fan_out:
                        unconfirmed[thread] = None  # its delivery is reported to the monitor on a tick
                elif skip_taps:
                    tap.skipped += 1
        except BaseException:
            self.requeue(run[handled:])
            raise
        finally:
            self._received += handled
            self._fan_out_total += fan_out_total
            self._fan_out_sent += fan_out_sent
            self._unrouted += unrouted
            if tap.pending:
                tap.flush()

    def _reject(self, problem: str, message: Publish) -> None:
        """Count a Publish the bridge cannot accept: agent code is trusted, but a bad one costs a counter only."""
        self._invalid += 1
        logger.warning("rejected a Publish: %s: %r", problem, message)

    def _hand_to_writer(self, route: Route, stamped: StampedEvent) -> bool:
        """Queue a routed event for the route's writer (its sink cannot take it now); False if it was held back."""
        connection = route.connection
        try:
            connection.writer.tell(stamped)
        except MailboxFull:  # the bound the bridge keeps makes this unlikely; if it happens, nothing is lost
            self._defer(route)
            return False
        connection.told += 1
        route.handed += 1
        self._told_live += 1
        self._busy[connection] = None
        route.thread.needs_scan = True
        return True

    def _defer(self, route: Route) -> None:
        """Hold a routed event back for a connection that cannot take it now (it is in the thread's ring)."""
        # No catch-up from here: it may close the connection, and this runs inside the loop over the thread's
        # routes. The writer reports when it has drained (WriterDrained), and the tick catches up as well.
        route.deferred += 1
        route.handed += 1
        self._deferred += 1
        self._deferred_pending += 1
        route.thread.needs_scan = True
        if route.lagging:
            return
        # It was not lagging, so it had been handed everything before the event now being routed.
        route.told_seq = route.thread.last_seq - 1
        route.lagging = True
        connection = route.connection
        connection.lagging_routes += 1
        if connection.full_since is None:
            assert self._clock is not None
            connection.full_since = self._clock.now()
            self._lagging[connection] = None

    # ------------------------------------------------------------------ the tick

    def _on_tick(self) -> None:
        assert self._clock is not None
        now = self._clock.now()
        self._close_stalled_writers(now)
        if self._lagging:
            self._catch_up_lagging(now)
        # One look at the (busy) connections for both the delivery report and the health sample.
        scan = self._scan()
        reports = self._reports
        monitor = self._tap.refresh()
        if monitor is not None and (reports.unconfirmed or reports.unsubscribed):
            reports.report(monitor, self._tap.monitor_queue, self._threads, scan, self._clock.now_ms())
        self._sweep_idle_threads()
        self._evaluate_health(record=True, scan=scan)

    def _sweep_idle_threads(self) -> None:
        threads = self._threads
        if not threads:
            return
        assert self._clock is not None
        cutoff = self._clock.now_ms() - self._config.replay_max_age * 1000.0
        self._evicted_rings += sweep_idle_threads(threads, self._unconfirmed, cutoff, _SWEEP_PER_TICK)

    # ------------------------------------------------------------------ health

    def _scan(self) -> ConnectionScan:
        """What the connections add up to now (the busy ones are read; see :class:`DeliveryTally`)."""
        return self._tally.scan(
            self._busy,
            sent_directly=self._fan_out_sent - self._told_live,
            open_connections=len(self._connections) - self._closing,
        )

    def _sample(self, scan: ConnectionScan | None = None) -> HealthSample:
        assert self._clock is not None
        return sample_health(
            scan if scan is not None else self._scan(),
            at=self._clock.now(),
            capacity=self._capacity,
            lagging=len(self._lagging),
            tap_lost=self._tap.lost_total,
            inbox_dropped=self._inbox_dropped(),
            monitor=self._tap.monitor_ref,
            monitor_attached=self._tap.monitor is not None,
        )

    def _inbox_dropped(self) -> int:
        """Publishes (or anything else) the bridge's own mailbox refused so far."""
        if self._self is None:
            return 0
        # Read off the mailbox (same-package shortcut, as for the monitor's queue): statistics() builds two structs,
        # and the tick needs this one figure.
        mailbox = self._self._mailbox
        return mailbox.dropped_newest + mailbox.dropped_oldest + mailbox.rejected

    def _evaluate_health(self, *, record: bool, scan: ConnectionScan | None = None) -> ComponentHealth:
        """Judge the health now; tell every observer when it changed (the first judgement only if not healthy).

        :param scan: the connections, scanned now (None: scan them here)
        """
        assert self._clock is not None
        sample = self._sample(scan)
        if record:
            self._health_window.record(sample)
        health = self._health_window.judge(sample, self._clock.now_ms())
        if not health.same_state(self._health):
            if self._health is not None or health.status is not HealthStatus.HEALTHY:
                broadcast_health(self._wiring.observers, self._config.component_id, health)
            self._health = health
        return health

    # ------------------------------------------------------------------ queries

    def _replay_snapshot(self) -> list[StampedEvent]:
        # The very objects the rings hold, oldest first per thread: what a restarted monitor rebuilds from.
        assert self._clock is not None
        now_ms = self._clock.now_ms()
        snapshot = [item for thread in self._threads.values() for item in thread.ring.snapshot(now_ms)]
        # Every routed thread's delivery is reported again, now, so that the report is in the (re)starting
        # monitor's mailbox before the tick on which it judges the replayed events' delivery deadlines.
        self._reports.resync(self._threads.values())
        monitor = self._tap.refresh()
        if monitor is not None and self._unconfirmed:
            self._reports.report(
                monitor, self._tap.monitor_queue, self._threads, self._scan(), self._clock.now_ms(), resync=True
            )
        return snapshot

    def _metrics(self, scan: ConnectionScan | None = None) -> BridgeMetrics:
        """The bridge's counters now.

        :param scan: the connections, scanned now (None: scan them here)
        """
        # O(busy connections), like the tick: one scan brings the running totals up to date (DeliveryTally), and
        # the rest is kept as it changes (the shared latency histogram, the rings' evictions, the route counts).
        # Summing every connection's and every ring's counters instead cost ~1.9 ms per call with 1,000
        # connections, and the bridge's loop waited for it on every audit and every /metrics scrape.
        if scan is None:
            scan = self._scan()
        closed = self._closed
        dropped = {
            reason: count
            for reason, count in (
                ("invalid_event", self._invalid),
                ("inbox_full", self._inbox_dropped()),
                ("discarded_on_close", scan.discarded + closed.left_queued),
                ("deferred_on_close", self._deferred_on_close),
                ("monitor_tap", self._tap.lost_total),
            )
            if count
        }
        accepted = self._received - self._invalid
        evictions = self._ring_evictions
        evicted = evictions.by_count + evictions.by_age + self._evicted_rings
        latency = LatencyHistogram()
        latency.merge(self._latency)
        latency.record_zeros(scan.sent_directly)  # a frame the bridge sent itself went out as it was accepted
        return BridgeMetrics(
            events_received=self._received,
            events_accepted=accepted,
            events_routed=accepted - self._unrouted,
            events_unrouted=self._unrouted,
            fan_out_total=self._fan_out_total,
            fan_out_sent=self._fan_out_sent,
            events_deferred=self._deferred,
            events_caught_up=self._caught_up,
            deferred_pending=self._deferred_pending,
            events_replayed=self._replayed,
            events_delivered=scan.delivered,
            events_coalesced=scan.coalesced,
            dropped=dropped,
            connections_open=scan.open,
            connections_opened=self._opened,
            connections_lagging=len(self._lagging),
            connections_closed={str(code): n for code, n in sorted(closed.by_code.items())},
            subscriptions=self._subscriptions,
            subscriptions_refused=self._refused,
            resumes=self._resumes,
            resume_gaps=self._resume_gaps,
            slow_consumer_closes=closed.slow_closes,
            send_errors=scan.errors,
            queued=scan.queued + scan.closing_queued,
            max_queue_depth=max(scan.fullest, scan.closing_fullest),
            threads=len(self._threads),
            # Every accepted event went into its thread's ring once, and leaves it only by an eviction.
            replay_retained=accepted - evicted,
            replay_evicted=evicted,
            latency_p50_ms=latency.quantile(0.5),
            latency_p99_ms=latency.quantile(0.99),
            latency_samples=latency.count,
            latency_counts=tuple(latency.counts),
            monitor_attached=self._tap.monitor is not None,
            taps=self._tap.taps,
            taps_shed=self._tap.shed,
        )
