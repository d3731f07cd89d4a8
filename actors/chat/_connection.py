from __future__ import annotations

import contextlib
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, assert_never, runtime_checkable

import anyio

from actors._actor import Actor
from actors._exceptions import MailboxFull
from actors._message import Message
from actors.chat._coalescing import coalesce_carried
from actors.chat._events import AgentEvent, StampedEvent, decode_event
from actors.chat._health import LatencyHistogram

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors._clock import Clock
    from actors._message import ExitReason
    from actors._ref import ActorRef

logger = logging.getLogger("agentwatch.chat.connection")

#: Frames a writer sends per turn before it lets a queued Close (or anything else) in.
FRAMES_PER_TURN: Final = 64


class CloseCode(enum.IntEnum):
    """Every WebSocket close code the bridge uses (see ``docs/bridge.md`` for what a client does on each)."""

    #: The client or the application ended the connection (``disconnect``).
    NORMAL = 1000
    #: The server is shutting down; reconnect elsewhere or later and resume with afterSeq.
    GOING_AWAY = 1001
    #: Reported in metrics only, never sent: the connection ended without a close (its writer was killed).
    ABNORMAL = 1006
    #: The principal is not authorised for a thread it subscribed to; do not retry with the same credentials.
    POLICY_VIOLATION = 1008
    #: Writing to the client failed (it most likely went away); best-effort close frame.
    INTERNAL_ERROR = 1011
    #: The bridge failed and is being restarted; reconnect and resume with afterSeq.
    SERVICE_RESTART = 1012
    #: Slow consumer: the client fell too far behind; reconnect and resume with afterSeq (lossless).
    SLOW_CONSUMER = 4001
    #: The events after the client's afterSeq are gone from the replay ring; refetch a snapshot.
    REPLAY_GAP = 4002
    #: A frame from the client was not a valid request (for front ends that parse client frames).
    BAD_FRAME = 4003


class ConnectionSink(Protocol):
    """Where a connection's frames go: a Starlette ``WebSocket``, a test double or a simulated client.

    ``send_text`` / ``send_bytes`` may wait (backpressure from the client) and may raise when the client is gone;
    ``close`` ends the connection with a WebSocket close code.

    A sink may also offer the synchronous fast path of :class:`NowaitSink`: the bridge then writes a frame itself,
    on its own pass, whenever the connection's writer is idle, instead of waking the writer's task for it.
    """

    async def send_text(self, data: str) -> None:
        """Send one text frame."""
        ...

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and a short ``reason``."""
        ...


@runtime_checkable
class NowaitSink(Protocol):
    """The optional fast path of a :class:`ConnectionSink`: send one frame now, without waiting, or not at all.

    Each call either sends the whole frame and returns, or raises: ``anyio.WouldBlock`` when it would have to wait
    (the client applies backpressure, another send is in progress), any other exception when the sink failed. A
    sink may have begun sending a frame it answers WouldBlock for (StarletteSink leaves such a send in flight):
    its waiting send of that same frame, which comes next, must then complete that send, not send it twice.

    The bridge calls it only while the connection's writer has nothing queued (so order is kept), and on any
    exception hands the frame to the writer, which sends it with ``send_text`` / ``send_bytes`` (and closes the
    connection if that fails). It must never block: it runs inside the bridge's handler. A sink that could only
    ever answer WouldBlock where it runs (a StarletteSink on trio) says so with ``sends_nowait = False``: it is then
    not offered as a fast path at all (:func:`nowait_send`).
    """

    def send_text_nowait(self, data: str) -> None:
        """Send one text frame now, or raise ``anyio.WouldBlock`` (nothing sent)."""
        ...

    def send_bytes_nowait(self, data: bytes) -> None:
        """Send one binary frame now, or raise ``anyio.WouldBlock`` (nothing sent)."""
        ...


def nowait_send(sink: ConnectionSink, frame_kind: Literal["text", "bytes"]) -> Callable[[Any], None] | None:
    """The sink's fast path for ``frame_kind`` frames, or None when it offers none that can be trusted.

    A subclass that overrides the waiting send (to record, count or transform frames) but inherits the nowait one
    would be bypassed by it: such a sink gets no fast path, and every frame goes through its waiting send. Nor does
    a sink whose ``sends_nowait`` attribute is False (it knows it could only ever answer WouldBlock, as a
    StarletteSink on trio): the bridge hands its frames to the writer at once, instead of being refused each
    time its writer is idle.
    """
    if not isinstance(sink, NowaitSink) or getattr(sink, "sends_nowait", True) is False:
        return None
    send, nowait = ("send_text", "send_text_nowait") if frame_kind == "text" else ("send_bytes", "send_bytes_nowait")
    attributes = getattr(sink, "__dict__", {})
    if send in attributes and nowait not in attributes:
        return None  # the waiting send was replaced on the instance
    mro = type(sink).__mro__
    send_owner = next((cls for cls in mro if send in vars(cls)), None)
    nowait_owner = next((cls for cls in mro if nowait in vars(cls)), None)
    if send_owner is not None and nowait_owner is not None and not issubclass(nowait_owner, send_owner):
        return None
    method: Callable[[Any], None] = getattr(sink, nowait)
    return method


class SinkClosed(anyio.BrokenResourceError):
    """A :class:`MemorySink` was written to after it closed, or was told to fail."""


class MemorySink:
    """An in-memory :class:`ConnectionSink` for tests, simulations and benchmarks: records frames and the close.

    :param delay: seconds each send waits (a slow client); may be changed at any time
    :param fail_after: raise :class:`SinkClosed` on every send after this many successful ones (a client that
        vanished); ``None`` never fails
    :param keep_frames: keep the frames in :attr:`frames` (turn off for long benchmarks; :attr:`sent` still counts)
    """

    def __init__(self, *, delay: float = 0.0, fail_after: int | None = None, keep_frames: bool = True) -> None:
        self.delay = delay
        self.fail_after = fail_after
        self.keep_frames = keep_frames
        self.frames: list[str | bytes] = []
        self.sent = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._gate: anyio.Event | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.close_code is not None

    def stall(self) -> None:
        """Make every send wait until :meth:`release` (a client that stopped reading)."""
        if self._gate is None:
            self._gate = anyio.Event()

    def release(self) -> None:
        """Let sends through again after :meth:`stall`."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def send_text(self, data: str) -> None:
        """Record a text frame (after the configured delay)."""
        await self._send(data)

    async def send_bytes(self, data: bytes) -> None:
        """Record a binary frame (after the configured delay)."""
        await self._send(data)

    def send_text_nowait(self, data: str) -> None:
        """Record a text frame now; raise ``anyio.WouldBlock`` while stalled or slow (``delay`` > 0).

        :raises SinkClosed: when closed, or failing (``fail_after``); nothing is recorded then
        """
        self._send_nowait(data)

    def send_bytes_nowait(self, data: bytes) -> None:
        """Record a binary frame now; raise ``anyio.WouldBlock`` while stalled or slow (``delay`` > 0).

        :raises SinkClosed: when closed, or failing (``fail_after``); nothing is recorded then
        """
        self._send_nowait(data)

    def _send_nowait(self, data: str | bytes) -> None:
        if self.close_code is not None:
            raise SinkClosed(f"sink closed with {self.close_code}")
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise SinkClosed(f"sink failed after {self.fail_after} frames")
        if self._gate is not None or self.delay > 0:
            raise anyio.WouldBlock
        if self.keep_frames:
            self.frames.append(data)
        self.sent += 1

    async def _send(self, data: str | bytes) -> None:
        if self.close_code is not None:
            raise SinkClosed(f"sink closed with {self.close_code}")
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise SinkClosed(f"sink failed after {self.fail_after} frames")
        while self._gate is not None:
            await self._gate.wait()
        if self.delay > 0:
            await anyio.sleep(self.delay)
        if self.keep_frames:
            self.frames.append(data)
        self.sent += 1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Record the close; later sends raise :class:`SinkClosed`."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def events(self) -> list[AgentEvent]:
        """Decode every recorded frame, in order."""
        return [decode_event(frame) for frame in self.frames]


class ConnectionProgress:
    """What one connection's writer has done so far: written by that writer alone, read by the bridge.

    This is the one sanctioned cross-actor read in the system. The bridge and the writers run on one event loop,
    so a read between two of the writer's statements always sees consistent integers. It reads ``settled`` on
    every routed event (to keep the writer's queue bounded without a message per frame) and the rest on its tick
    (delivery progress for the monitor, stalled turns) and for metrics. A frame the bridge sent itself through
    ``send_nowait`` (its fast path, while the writer had nothing outstanding) is not counted here: the bridge
    counts it on its route (``Route.sent_seq``, and the frames sent directly follow from the route's counts).

    Conservation, kept by the writer at every instant: ``taken == delivered + coalesced + discarded + pending``
    where ``pending`` is the events in the writer's own queue (a merged frame counts every event it carries);
    ``settled == delivered + coalesced + discarded``.
    """

    __slots__ = (
        "close_code",
        "close_reason",
        "closed",
        "coalesced",
        "delivered",
        "delivered_seq",
        "discarded",
        "interrupt",
        "latency",
        "pending",
        "send_errors",
        "send_nowait",
        "settled",
        "taken",
        "turn_started",
    )

    def __init__(self) -> None:
        #: Events the writer took out of its mailbox.
        self.taken = 0
        #: Events sent as a frame of their own, or as the last event of a coalesced frame.
        self.delivered = 0
        #: Events merged into a later event's frame that was sent (their content travelled in it).
        self.coalesced = 0
        #: Events thrown away because the connection closed before they were sent.
        self.discarded = 0
        #: ``delivered + coalesced + discarded``: what left the writer's queue.
        self.settled = 0
        #: Events in the writer's own queue (taken, not yet settled).
        self.pending = 0
        self.send_errors = 0
        #: Per thread, the highest seq whose frame was sent (the delivered-seq cursor).
        self.delivered_seq: dict[str, int] = {}
        #: Latency from acceptance (``observed_at``) to the completed send, one sample per frame, in ms. The bridge
        #: replaces it with its own when it registers the connection: one histogram for all its connections.
        self.latency = LatencyHistogram()
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: Loop time at which the current turn of sends started; None while the writer is not sending. The
        #: bridge's tick closes a connection whose turn has been blocked for ``slow_consumer_after``.
        self.turn_started: float | None = None
        #: Set by the writer while it runs: ``interrupt(code, reason)`` ends a blocked turn of sends and closes
        #: the connection with ``code`` (a stalled writer reads no message).
        self.interrupt: Callable[[int, str], None] | None = None
        #: Set by the writer while it is open, when its sink is a :class:`NowaitSink`: the sink's
        #: ``send_text_nowait`` (or ``send_bytes_nowait`` for binary frames). The bridge's fast path.
        self.send_nowait: Callable[[Any], None] | None = None


class Close(Message, frozen=True, kw_only=True):
    """Close the connection with ``code`` and ``reason``: queued frames are discarded (and counted).

    With ``drain`` > 0 (a graceful shutdown), the queued frames are sent first, for at most ``drain`` seconds;
    what is still queued then is discarded. Sent past the mailbox bound (``tell_control``), so it is never dropped.
    """

    code: int
    reason: str
    drain: float = 0.0


class WriterDrained(Message, frozen=True, kw_only=True):
    """Told by a writer to the bridge when a backlog (half its capacity) has drained to a quarter: the bridge
    refills it from the replay ring if it held events back meanwhile."""

    connection_id: str


WriterMessage = StampedEvent | Close
"""Everything a :class:`ConnectionWriter` accepts."""


class ConnectionWriter(Actor[WriterMessage]):
    """Writes one connection's frames to its sink, in order, so that a slow client only ever delays itself.

    While the writer is idle and its sink offers :class:`NowaitSink`, the bridge writes frames itself (through the
    ``progress.send_nowait`` the writer installs when it starts) and the writer's task is not woken. Otherwise the
    bridge tells it stamped events and keeps at most ``queue_capacity`` of them unsettled (it reads
    :class:`ConnectionProgress`); the writer moves them from its mailbox into its own queue and, once its mailbox is
    empty (the end of what arrived together), writes them in turns of up to 64 frames, letting any message that
    arrived meanwhile (a Close) in between turns. Under backlog (``coalesce_at`` or more queued) consecutive deltas
    of one message or tool call are merged into one frame first. A turn blocked for ``send_deadline`` means the
    client stopped reading: the bridge's tick sees it (``turn_started``) and calls ``interrupt``, and the writer
    closes with 4001 (no timer per turn: arming and cancelling one cost more than a frame). A send that raises
    closes with 1011. Closing discards what is still queued (counted) and stops the writer; the bridge watches it
    and learns the outcome.

    :param connection_id: the bridge's id for this connection
    :param sink: where frames go
    :param progress: the writer's counters, shared with the bridge
    :param queue_capacity: the bound the bridge keeps; a queue half this full makes the writer report when it has
        drained to a quarter (:class:`WriterDrained`)
    :param coalesce_at: queue length from which deltas are merged; ``None`` never merges
    :param send_deadline: seconds one turn of sends may stay blocked before the client counts as stuck: enforced
        by whoever watches ``progress.turn_started`` (the bridge, with its ``slow_consumer_after``)
    :param close_timeout: seconds the sink's ``close`` may take before it is abandoned
    :param frame_kind: send frames as WebSocket ``"text"`` (AG-UI clients expect it) or ``"bytes"``
    :param bridge: told :class:`WriterDrained` when a backlog has drained
    """

    def __init__(
        self,
        connection_id: str,
        sink: ConnectionSink,
        progress: ConnectionProgress,
        *,
        queue_capacity: int,
        coalesce_at: int | None,
        send_deadline: float,
        close_timeout: float,
        frame_kind: Literal["text", "bytes"] = "text",
        bridge: ActorRef[Any] | None = None,
    ) -> None:
        self._connection_id = connection_id
        self._sink = sink
        self._progress = progress
        # A queue that filled to half reports to the bridge when it is down to a quarter: the bridge may have
        # held events back meanwhile (it only knows the writer has room when told, or on its tick).
        self._refill_above = max(1, queue_capacity // 2)
        self._refill_below = queue_capacity // 4
        self._coalesce_at = coalesce_at
        self._send_deadline = send_deadline
        self._close_timeout = close_timeout
        self._text = frame_kind == "text"
        self._bridge = bridge
        self._pending: deque[StampedEvent] = deque()
        # id(frame) → how many events a merged frame in _pending carries (frames not in here carry one).
        self._carried: dict[int, int] = {}
        # progress.taken when _pending was last coalesced: what was taken since is the only part not merged yet.
        self._taken_at_merge = 0
        self._backlogged = False
        self._closed = False
        # Why the bridge interrupted a blocked turn: the close to make once the send is cancelled.
        self._interrupted: tuple[int, str] | None = None
        self._inbox: deque[Any] | None = None
        self._clock: Clock | None = None

    async def on_start(self) -> None:
        self._clock = self.clock
        # Same-package shortcut (as the bridge's tap shedding): the writer's own mailbox queue, read to learn
        # whether the message in hand is the last one that arrived together; statistics() would build a struct.
        self._inbox = self.ref._mailbox.queue
        progress = self._progress
        progress.interrupt = self._interrupt_turn
        if not self._closed:
            # The bridge writes a frame itself while this writer is idle: no wake-up of this task per frame.
            progress.send_nowait = nowait_send(self._sink, "text" if self._text else "bytes")

    async def receive(self, message: WriterMessage) -> None:
        if type(message) is StampedEvent:  # the one message per frame: no pattern match for it
            self._accept(message)
            assert self._inbox is not None
            if not self._inbox:
                await self._flush()
            return
        match message:
            case StampedEvent():
                self._accept(message)
                assert self._inbox is not None
                if not self._inbox:
                    await self._flush()
            case Close(code=code, reason=reason, drain=drain):
                await self._close(code, reason, drain=drain)
            case _:
                assert_never(message)

    async def on_stop(self, reason: ExitReason) -> None:
        # Stopped from outside (system shutdown, or a supervisor): the client is told the server is going away.
        await self._close(CloseCode.GOING_AWAY, "server shutting down", stop=False)

    def on_kill(self) -> None:
        if not self._closed:
            self._discard_pending()
            self._mark_closed(CloseCode.ABNORMAL, "writer killed before the connection was closed")

    def _interrupt_turn(self, code: int, reason: str) -> None:
        """End a blocked turn of sends (the bridge saw it blocked too long) and close with ``code``."""
        if self._closed or self._progress.turn_started is None or self._interrupted is not None:
            return
        self._interrupted = (code, reason)
        # The writer is parked in its sink's send and reads no message: cancelling the instance is the only way
        # in. _flush catches the cancellation, closes the sink (shielded) and lets the instance end.
        self._current.kill(f"turn of sends blocked: {reason}")

    def _accept(self, item: StampedEvent) -> None:
        progress = self._progress
        progress.taken += 1
        if self._closed:
            progress.discarded += 1
            progress.settled += 1
            return
        self._pending.append(item)
        progress.pending += 1
        if progress.pending >= self._refill_above:
            self._backlogged = True

    async def _flush(self) -> None:
        pending = self._pending
        if self._closed or not pending:
            return
        progress = self._progress
        carried = self._carried
        if self._coalesce_at is not None and len(pending) >= self._coalesce_at:
            # Folded events count as coalesced only once their frame is sent (see below): a merged frame that is
            # discarded on close discards every event it carries.
            self._merge_pending(pending, carried)
        sink = self._sink
        text = self._text
        clock = self._clock
        inbox = self._inbox
        assert clock is not None
        assert inbox is not None
        now = clock.now
        now_ms = clock.now_ms
        delivered_seq = progress.delivered_seq
        record_latency = progress.latency.record
        failure: Exception | None = None
        progress.turn_started = now()
        try:
            in_turn = 0
            while pending:
                item = pending[0]
                if text:
                    await sink.send_text(item.frame.decode())
                else:
                    await sink.send_bytes(item.frame)
                pending.popleft()
                progress.delivered += 1
                events = carried.pop(id(item), 1) if carried else 1
                if events == 1:
                    progress.settled += 1
                    progress.pending -= 1
                else:
                    progress.coalesced += events - 1
                    progress.settled += events
                    progress.pending -= events
                delivered_seq[item.thread_id] = item.seq
                record_latency(now_ms() - item.observed_at)
                in_turn += 1
                if in_turn == FRAMES_PER_TURN:
                    if inbox:
                        break  # the rest is sent after the waiting messages, when the mailbox is empty again
                    in_turn = 0
                    progress.turn_started = now()
        except anyio.get_cancelled_exc_class():
            progress.turn_started = None
            interrupted = self._interrupted
            if interrupted is not None:
                code, reason = interrupted
                logger.info(
                    "connection %s: a turn of sends blocked past %s s, closing with %s: %s",
                    self._connection_id,
                    self._send_deadline,
                    code,
                    reason,
                )
                with anyio.CancelScope(shield=True):
                    await self._close(code, reason)
            raise
        except Exception as exc:  # the sink is foreign I/O: any failure means the client is gone
            failure = exc
        finally:
            progress.turn_started = None
        if failure is not None:
            progress.send_errors += 1
            logger.info("connection %s: send failed, closing: %r", self._connection_id, failure)
            await self._close(CloseCode.INTERNAL_ERROR, f"send failed: {type(failure).__name__}")
            return
        if self._backlogged and progress.pending <= self._refill_below:
            self._backlogged = False
            if self._bridge is not None:
                # A hint only: if the bridge's mailbox refuses it, the bridge's next tick catches up instead.
                with contextlib.suppress(MailboxFull):
                    self._bridge.tell(WriterDrained(connection_id=self._connection_id))

    def _merge_pending(self, pending: deque[StampedEvent], carried: dict[int, int]) -> None:
        """Coalesce ``pending`` in place, merging only what arrived since the last merge.

        What was queued then is already merged (no two neighbours of one stream), so only its last frame can fold
        into the newcomers: a backlog that is flushed a turn at a time costs O(newcomers) per turn, not O(queue).
        """
        fresh = self._progress.taken - self._taken_at_merge
        self._taken_at_merge = self._progress.taken
        keep = len(pending) - fresh - 1  # frames before the last merged one: they cannot change
        if keep <= 0:
            merged = coalesce_carried(pending, carried)
            pending.clear()
            pending.extend(merged)
            return
        tail: deque[StampedEvent] = deque()
        for _ in range(len(pending) - keep):
            tail.appendleft(pending.pop())
        pending.extend(coalesce_carried(tail, carried))

    def _discard_pending(self) -> None:
        progress = self._progress
        carried = self._carried
        count = len(self._pending) + sum(carried.values()) - len(carried)
        self._pending.clear()
        carried.clear()
        progress.discarded += count
        progress.settled += count
        progress.pending -= count

    def _mark_closed(self, code: int, reason: str) -> None:
        self._closed = True
        progress = self._progress
        progress.closed = True
        progress.close_code = code
        progress.close_reason = reason
        progress.interrupt = None
        progress.send_nowait = None

    async def _close(self, code: int, reason: str, *, stop: bool = True, drain: float = 0.0) -> None:
        if self._closed:
            return
        if drain > 0:
            # A graceful close: the client gets what was queued for it (the terminal events of its runs) first.
            # A send that fails meanwhile closes the connection with its own code, as at any time.
            with anyio.move_on_after(drain):
                while self._pending and not self._closed:
                    await self._flush()
            if self._closed:
                return
        # Marked before the await below, so the bridge never routes to (or waits on) a connection being closed.
        self._discard_pending()
        self._mark_closed(code, reason)
        with anyio.move_on_after(self._close_timeout):
            try:
                await self._sink.close(code, reason)
            except Exception as exc:  # a client that already vanished cannot be closed politely
                logger.debug("connection %s: close(%s) failed: %r", self._connection_id, code, exc)
        if stop:
            self.stop()
