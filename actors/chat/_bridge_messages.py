from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from actors._message import Message, Terminated
from actors._ref import ActorRef
from actors.chat._connection import ConnectionProgress, WriterDrained
from actors.chat._events import AgentEvent
from actors.chat._health import HealthThresholds, require_int, require_number
from actors.chat._tap import ReplaySnapshot


def allow_all(principal: str, thread_id: str) -> bool:
    """The default authorisation hook: every principal may join every thread."""
    return True


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How an :class:`AgentWebSocketBridge` routes, buffers, sheds load and reports health.

    :param component_id: the id it reports health under (the seed's ``agent_websocket_bridge``)
    :param replay_capacity: events kept per thread for clients that resume with afterSeq
    :param replay_max_age: seconds an event stays replayable
    :param writer_queue_capacity: events a connection may have queued and unsent; beyond it the connection lags
        (its events wait in the replay ring) until it drains
    :param slow_consumer_after: seconds a connection may stay lagging, or a turn of sends may stay blocked,
        before it is closed with 4001
    :param coalesce_at: a connection queue this long or longer has its consecutive deltas merged; ``None``
        disables coalescing
    :param close_timeout: seconds a sink's ``close`` may take before it is abandoned
    :param frame_kind: WebSocket frame type for events: ``"text"`` (what AG-UI clients expect) or ``"bytes"``
    :param tick_interval: seconds between the bridge's ticks (catch-up of lagging connections, slow-consumer
        checks, delivery progress to the monitor, health evaluation)
    :param health_window: seconds of history the health checks look at
    :param thresholds: the health thresholds
    :param closed_connections_kept: how many closed connections' final statistics are kept for inspection
    :param authorize: ``(principal, thread_id) -> bool``, called on every subscribe; anything but ``True`` (an
        exception included) refuses. It must be a plain function: it runs inside the bridge's handler
    :param monitor: the monitor's ref to tap events to (``None``: no monitor; ``AttachMonitor`` changes it)
    :param tap_shed_at: a fraction of the monitor's mailbox capacity: while it is at least this full, only
        lifecycle events are tapped, so an overloaded monitor loses content (``taps_shed``), never a run or tool
        call boundary; ``None`` taps every event until the monitor's mailbox itself drops
    """

    component_id: str = "agent_websocket_bridge"
    replay_capacity: int = 1024
    replay_max_age: float = 300.0
    writer_queue_capacity: int = 256
    slow_consumer_after: float = 5.0
    coalesce_at: int | None = 32
    close_timeout: float = 1.0
    frame_kind: Literal["text", "bytes"] = "text"
    tick_interval: float = 0.1
    health_window: float = 10.0
    thresholds: HealthThresholds = msgspec.field(default_factory=HealthThresholds)
    closed_connections_kept: int = 100
    authorize: Callable[[str, str], bool] = allow_all
    monitor: ActorRef[Any] | None = None
    tap_shed_at: float | None = None

    def __post_init__(self) -> None:
        owner = "BridgeConfig"
        if not isinstance(self.component_id, str) or not self.component_id:
            raise ValueError(f"{owner}.component_id must be a non-empty str, got {self.component_id!r}")
        require_int(owner, "replay_capacity", self.replay_capacity, 1)
        require_number(owner, "replay_max_age", self.replay_max_age)
        require_int(owner, "writer_queue_capacity", self.writer_queue_capacity, 1)
        require_number(owner, "slow_consumer_after", self.slow_consumer_after)
        if self.coalesce_at is not None:
            require_int(owner, "coalesce_at", self.coalesce_at, 2)
        require_number(owner, "close_timeout", self.close_timeout)
        if self.frame_kind not in ("text", "bytes"):
            raise ValueError(f"{owner}.frame_kind must be 'text' or 'bytes', got {self.frame_kind!r}")
        require_number(owner, "tick_interval", self.tick_interval)
        window = require_number(owner, "health_window", self.health_window)
        if window < self.tick_interval:
            raise ValueError(f"{owner}.health_window must be >= tick_interval ({self.tick_interval}), got {window}")
        if not isinstance(self.thresholds, HealthThresholds):
            raise TypeError(f"{owner}.thresholds must be a HealthThresholds, got {type(self.thresholds).__name__}")
        require_int(owner, "closed_connections_kept", self.closed_connections_kept, 0)
        if not callable(self.authorize) or inspect.iscoroutinefunction(self.authorize):
            raise TypeError(f"{owner}.authorize must be a plain (not async) callable (principal, thread_id) -> bool")
        if self.monitor is not None and not isinstance(self.monitor, ActorRef):
            raise TypeError(f"{owner}.monitor must be an ActorRef or None, got {type(self.monitor).__name__}")
        if self.tap_shed_at is not None and not 0 < require_number(owner, "tap_shed_at", self.tap_shed_at) <= 1:
            raise ValueError(f"{owner}.tap_shed_at must be within (0, 1] or None, got {self.tap_shed_at!r}")


# ---------------------------------------------------------------- requests


class Publish(Message, frozen=True, kw_only=True):
    """An agent's event for a thread and run: numbered, kept for replay, routed, tapped to the monitor."""

    thread_id: str
    run_id: str
    event: AgentEvent


class Connect(Message, frozen=True, kw_only=True):
    """Register a connection whose writer is already running (``BridgeHandle.connect`` does both).

    The principal is bound here, once, when the connection is authenticated; a subscribe cannot change it.
    ``progress`` is the writer's counter object, which the bridge reads (see :class:`ConnectionProgress`).
    Replies ``True``, or ``False`` when the id is already in use.
    """

    connection_id: str
    writer: ActorRef[Any]
    principal: str
    progress: ConnectionProgress


class Subscribe(Message, frozen=True, kw_only=True):
    """Join a thread; with ``after_seq``, first replay every event after it (a resume). Replies a SubscribeResult."""

    connection_id: str
    thread_id: str
    after_seq: int | None = None


class Unsubscribe(Message, frozen=True, kw_only=True):
    """Leave a thread; frames already queued for it are still sent."""

    connection_id: str
    thread_id: str


class Disconnect(Message, frozen=True, kw_only=True):
    """Close a connection (the client left, or the application ends it); unknown ids are ignored."""

    connection_id: str
    code: int = 1000
    reason: str = "normal closure"


class AttachMonitor(Message, frozen=True, kw_only=True):
    """Tap every accepted event to ``monitor`` from now on (``None`` detaches)."""

    monitor: ActorRef[Any] | None


class RegisterObserver(Message, frozen=True, kw_only=True):
    """Tell ``observer`` a ``ComponentHealthChanged`` (``actors.chat._components``) whenever the bridge's health
    changes."""

    observer: ActorRef[Any]


class GetHealth(Message, frozen=True, kw_only=True):
    """Reply the bridge's ``ComponentHealth`` (evaluated now)."""


class GetMetrics(Message, frozen=True, kw_only=True):
    """Reply a :class:`BridgeMetrics` snapshot."""


class GetHealthAndMetrics(Message, frozen=True, kw_only=True):
    """Reply ``(ComponentHealth, BridgeMetrics)``, both as of now: what an audit reads, in one round trip."""


class GetConnectionStatistics(Message, frozen=True, kw_only=True):
    """Reply ``ConnectionStatistics`` for one connection (open or recently closed), or for every open one."""

    connection_id: str | None = None


class Tick(Message, frozen=True, kw_only=True):
    """The bridge's periodic tick (sent by its own timer)."""


BridgeMessage = (
    Publish
    | Connect
    | Subscribe
    | Unsubscribe
    | Disconnect
    | AttachMonitor
    | RegisterObserver
    | GetHealth
    | GetMetrics
    | GetHealthAndMetrics
    | GetConnectionStatistics
    | ReplaySnapshot
    | Tick
    | WriterDrained
    | Terminated
)
"""Everything an :class:`AgentWebSocketBridge` accepts."""


# ---------------------------------------------------------------- replies


class SubscribeOutcome(enum.StrEnum):
    """What became of a subscribe."""

    SUBSCRIBED = "subscribed"
    ALREADY_SUBSCRIBED = "already_subscribed"
    #: The authorisation hook refused: the connection was closed with 1008.
    REFUSED = "refused"
    #: afterSeq is older than the replay ring reaches (or not a seq of the thread): closed with 4002.
    REPLAY_GAP = "replay_gap"
    #: No open connection has this id (never connected, or already closed).
    UNKNOWN_CONNECTION = "unknown_connection"


class SubscribeResult(msgspec.Struct, frozen=True, kw_only=True):
    """The reply to a subscribe.

    :param outcome: what happened
    :param last_seq: the thread's last seq when the subscription took effect (live events follow it)
    :param replay_pending: how many events after ``after_seq`` the connection is owed from the ring (told to its
        writer at once, or as soon as its queue has room)
    :param close_code: the code the connection was closed with, for ``refused`` and ``replay_gap``
    """

    outcome: SubscribeOutcome
    last_seq: int = 0
    replay_pending: int = 0
    close_code: int | None = None


class ConnectionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One connection's counters.

    ``received == delivered + coalesced + discarded_on_close + queued`` holds in every snapshot, where
    ``received`` counts what the bridge handed to the connection's writer (live, caught up, or replayed).

    :param state: ``open``, ``lagging`` (queue full; live events wait in the replay ring), ``closing``, ``closed``
    :param delivered: events sent in a frame of their own, or as the last event of a coalesced frame
    :param coalesced: events merged into a later event's frame
    :param discarded_on_close: events queued for the client when its connection closed
    :param queued: events handed to the writer and not yet sent
    :param deferred: live events routed to it while it lagged, not yet handed to its writer
    :param delivered_seq: per thread, the highest seq sent to the client
    """

    connection_id: str
    principal: str
    state: str
    threads: tuple[str, ...]
    received: int
    delivered: int
    coalesced: int
    discarded_on_close: int
    queued: int
    replayed: int
    caught_up: int
    deferred: int
    send_errors: int
    delivered_seq: dict[str, int]
    close_code: int | None = None
    close_reason: str | None = None


class BridgeMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """The bridge's counters since it started (``get_metrics()``).

    Exact accounting (each holds in every snapshot):

    - ``events_received == events_accepted + dropped["invalid_event"]``
    - ``events_accepted == events_routed + events_unrouted``
    - ``fan_out_total == fan_out_sent + events_deferred`` (every routed (event, connection) pair was handed to
      the writer at once or held back in the ring)
    - ``events_deferred == events_caught_up + dropped["deferred_on_close"] + deferred_pending``

    ``dropped`` reasons: ``invalid_event`` (a Publish that is not an event: rejected, not numbered),
    ``inbox_full`` (Publishes the bridge's own mailbox refused: never numbered, the producer's loss),
    ``discarded_on_close`` (queued for a connection when it closed) and ``deferred_on_close`` (held back in the
    ring for a lagging connection when it closed or left the thread) -- a client that resumes gets both --, and
    ``monitor_tap`` (taps the monitor's mailbox dropped or dead-lettered, plus taps skipped while the monitor was
    detached). Lifecycle events are never dropped any other way.

    Latencies run from acceptance to the completed send, per frame, in whole ms (the resolution of
    ``observed_at``), so a sub-millisecond delivery reads 0 or 1.
    """

    events_received: int
    events_accepted: int
    events_routed: int
    events_unrouted: int
    fan_out_total: int
    fan_out_sent: int
    events_deferred: int
    events_caught_up: int
    deferred_pending: int
    events_replayed: int
    events_delivered: int
    events_coalesced: int
    dropped: dict[str, int]
    connections_open: int
    connections_opened: int
    connections_lagging: int
    connections_closed: dict[str, int]
    subscriptions: int
    subscriptions_refused: int
    resumes: int
    resume_gaps: int
    slow_consumer_closes: int
    send_errors: int
    queued: int
    max_queue_depth: int
    threads: int
    replay_retained: int
    replay_evicted: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_samples: int
    monitor_attached: bool
    taps: int
    #: Non-lifecycle events not tapped because the monitor's mailbox was over half full (also in
    #: ``dropped["monitor_tap"]``): an overloaded monitor loses content, never a run or tool call boundary.
    taps_shed: int = 0
    #: The latency histogram's bucket counts (bounds: ``LatencyHistogram.BOUNDS``): the difference of two snapshots
    #: gives the latency quantiles of the interval between them (``supervisors.faults.critical_path_budget``).
    latency_counts: tuple[int, ...] = ()
