from __future__ import annotations

import contextlib
import inspect
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from sniffio import current_async_library
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from actors import ActorError
from actors.chat._bridge_messages import SubscribeOutcome
from actors.chat._connection import CloseCode

from ._eager_send import InFlightSend, start_eagerly
from ._ws_protocol import (
    CONNECTED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    AuthRequest,
    BadFrame,
    SubscribeRequest,
    UnsubscribeRequest,
    control_frame,
    decode_client_frame,
    error_frame,
)

if TYPE_CHECKING:
    from .app import Runtime

logger = logging.getLogger("agentwatch.asgi")

#: WebSocket close reasons are limited to 123 bytes of UTF-8.
_MAX_REASON: Final = 120

#: Seconds the endpoint waits for the connection's writer to send its close frame before closing itself.
_CLOSE_WAIT: Final = 2.0

# Read once: an Enum member looked up on its class costs ~45 ns on CPython 3.11, once per frame on the send path.
_CONNECTED: Final = WebSocketState.CONNECTED
# What an ``async def`` returns: tested with ``type(x) is`` (an ``isinstance`` against the ABC costs ~100 ns a frame).
_COROUTINE: Final = types.CoroutineType
# What next() returns for a coroutine that returned instead of waiting (a coroutine never yields it).
_RETURNED: Final = object()

#: Starlette's wrapper around the server's send (per route, and in its ExceptionMiddleware): it only notes whether
#: an HTTP response has started, and passes every other message on unchanged.
_STARLETTE_SENDER: Final = (
    "starlette._exception_handler",
    "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender",
)


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """What a token admits: the principal it authenticates and the threads that principal may join.

    With neither ``threads`` nor ``prefixes``, every thread is allowed (the bridge's own ``authorize`` hook, if
    any, still applies).

    :param principal: who the connection is (bound to it for its whole life)
    :param threads: thread ids it may join
    :param prefixes: it may also join every thread whose id starts with one of these (``"alice/"``)
    """

    principal: str
    threads: frozenset[str] | None = None
    prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.principal, str) or not self.principal:
            raise ValueError(f"Grant.principal must be a non-empty str, got {self.principal!r}")

    def allows(self, thread_id: str) -> bool:
        """Whether this grant lets its principal join ``thread_id``."""
        if self.threads is None and not self.prefixes:
            return True
        if self.threads is not None and thread_id in self.threads:
            return True
        return any(thread_id.startswith(prefix) for prefix in self.prefixes)


def server_send(send: Callable[[dict[str, Any]], Awaitable[None]]) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """The server's own ASGI send under Starlette's pass-through wrappers around it (found by their closure).

    Sending a WebSocket frame through it does exactly what sending through the wrappers does, with one coroutine
    (and one await) less per wrapper. Anything else (an application's own middleware, another framework) is kept.
    """
    while (getattr(send, "__module__", None), getattr(send, "__qualname__", None)) == _STARLETTE_SENDER:
        code = getattr(send, "__code__", None)
        closure = getattr(send, "__closure__", None)
        if code is None or closure is None or "send" not in code.co_freevars:
            break
        inner = closure[code.co_freevars.index("send")].cell_contents
        if not callable(inner):
            break
        send = inner
    return send


TokenAuthorizer = Callable[[str], "Grant | Awaitable[Grant | None] | None"]
"""``token -> Grant`` (or ``None`` to refuse; may be async): the app's authentication hook."""

ANONYMOUS: Final = Grant(principal="anonymous")


class StarletteSink:
    """A :class:`~actors.chat._connection.ConnectionSink` over a Starlette ``WebSocket``.

    The connection's writer actor sends events through it while the endpoint sends control frames; a lock keeps
    the two from interleaving inside one ASGI send on servers that do not serialise sends themselves.
    """

    __slots__ = (
        "_asgi_send",
        "_busy",
        "_closed",
        "_eager",
        "_in_flight",
        "_reading",
        "_sent_early",
        "_waiters",
        "_websocket",
        "close_code",
        "sends_nowait",
    )

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        # The ASGI send under the WebSocket (a private attribute of Starlette's: without it, its public send), below
        # Starlette's own pass-through wrappers.
        asgi_send = getattr(websocket, "_send", None)
        self._asgi_send: Callable[[dict[str, Any]], Awaitable[None]] | None = (
            server_send(asgi_send) if callable(asgi_send) else None
        )
        # A lock of its own rather than anyio.Lock: an uncontended acquire is one attribute test here, where
        # anyio's costs a task lookup and a walk of the cancel scopes on every frame (the send that follows
        # is where a cancellation lands). Contended, it is handed over in FIFO order, as anyio's.
        self._busy = False
        self._waiters: deque[anyio.Event] = deque()
        self._closed = anyio.Event()
        self._reading = anyio.CancelScope()
        # The bridge's fast path (send_text_nowait): on asyncio the ASGI send runs in the bridge's own stack, and
        # with Hypercorn it returns without ever waiting unless the client applies backpressure. On trio every
        # socket send is a checkpoint that waits, and its traps belong to the task that made them: no fast path.
        self._eager = self._asgi_send is not None and current_async_library() == "asyncio"
        #: Whether :meth:`send_text_nowait` can ever send (see ``nowait_send``): on trio, or without the server's
        #: own send, it could only answer WouldBlock, so the bridge does not try it.
        self.sends_nowait = self._eager
        # A fast-path send that had to wait: its rest, run by whoever takes the lock next (see _acquire).
        self._in_flight: InFlightSend | None = None
        # The frame of the last in-flight send once it has completed: the writer's send of that same frame (the
        # bridge handed it the frame along with WouldBlock) then returns at once instead of sending it twice.
        self._sent_early: str | bytes | None = None
        #: The code this side closed with, once it did.
        self.close_code: int | None = None

    @property
    def closed(self) -> anyio.Event:
        """Set once :meth:`close` has run (the endpoint then stops reading)."""
        return self._closed

    @property
    def reading(self) -> anyio.CancelScope:
        """The endpoint's read loop runs in this scope; :meth:`close` cancels it once the close frame is sent."""
        return self._reading

    async def send_text(self, data: str) -> None:
        """Send one text frame."""
        # The writer's path for every event frame: _send inlined for the common case (one coroutine less per frame).
        if self._busy or self._waiters:
            await self._acquire()
        else:
            self._busy = True
        if self._sent_early is not None and self._was_sent_early(data):
            return  # completed by whoever took the lock first since the fast path left it in flight
        try:
            asgi_send = self._asgi_send
            websocket = self._websocket
            if asgi_send is None or websocket.application_state is not _CONNECTED:
                await self._send({"type": "websocket.send", "text": data})
            else:
                try:
                    await asgi_send({"type": "websocket.send", "text": data})
                except OSError as exc:
                    raise self._lost() from exc
        finally:
            if self._waiters:
                self._release()
            else:
                self._busy = False

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame."""
        if self._busy or self._waiters:
            await self._acquire()
        else:
            self._busy = True
        if self._sent_early is not None and self._was_sent_early(data):
            return  # completed by whoever took the lock first since the fast path left it in flight
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        finally:
            self._release()

    async def _send(self, message: dict[str, Any]) -> None:
        websocket = self._websocket
        asgi_send = self._asgi_send
        if asgi_send is None or websocket.application_state is not _CONNECTED:
            await websocket.send(message)  # Starlette's own checks (and its error for a closed socket)
            return
        # Open: what Starlette's WebSocket.send does in this state, without its two calls and checks per frame.
        try:
            await asgi_send(message)
        except OSError as exc:
            raise self._lost() from exc

    def send_text_nowait(self, data: str | bytes, _kind: str = "text") -> None:
        """Send one text frame now, or raise ``anyio.WouldBlock`` (the bridge's fast path, :class:`NowaitSink`).

        On asyncio the ASGI send runs right here. If the server has to wait for the client (backpressure), the
        send is left in flight holding the lock, and WouldBlock hands the frame to the connection's writer, whose
        ``send_text`` of it completes the send in flight instead of sending the frame again.

        :param _kind: internal: the ASGI message key, ``"text"``; :meth:`send_bytes_nowait` passes ``"bytes"`` (one
            body for both, with no call in between for text frames, the bridge's usual kind: ~23 ns a frame)
        """
        # Once per frame on the bridge's critical path: an uncontended lock is one flag (a queued waiter always
        # finds it held: the lock is handed over, never freed, while one waits), the ASGI message is built only
        # once the send is known to go ahead, and a send that completes without waiting is one step of its
        # coroutine, taken here (start_eagerly's work, without its call and its ABC check). The lock is taken only
        # if the send has to wait: until then it runs synchronously here, so no other task can see it free.
        if self._busy or not self._eager or self._websocket.application_state is not _CONNECTED:
            raise anyio.WouldBlock
        send: Any = self._asgi_send  # not None when eager
        try:
            # Typed Any: the test below is what tells a coroutine (typing.cast would cost a call per frame).
            awaitable: Any = send({"type": "websocket.send", _kind: data})
            if type(awaitable) is _COROUTINE:
                # next() with a default steps it without raising StopIteration when it returns (send(None) would
                # build and raise one per frame, ~100 ns).
                yielded = next(awaitable.__await__(), _RETURNED)
                if yielded is _RETURNED:
                    return
                in_flight: InFlightSend | None = InFlightSend(awaitable, yielded)
            else:
                in_flight = start_eagerly(awaitable)
        except OSError as exc:
            raise self._lost() from exc
        if in_flight is None:  # completed after all
            return
        self._busy = True
        self._in_flight = in_flight
        self._sent_early = data
        raise anyio.WouldBlock

    def send_bytes_nowait(self, data: bytes) -> None:
        """As :meth:`send_text_nowait`, for a binary frame."""
        self.send_text_nowait(data, _kind="bytes")

    def _lost(self) -> WebSocketDisconnect:
        """The socket failed under an ASGI send: mark the WebSocket gone and return the error to raise (1006)."""
        self._websocket.application_state = WebSocketState.DISCONNECTED
        return WebSocketDisconnect(code=1006)

    def _was_sent_early(self, frame: str | bytes) -> bool:
        """True, releasing the lock, if ``frame`` is the one an in-flight send has completed.

        Kept until that frame comes (the writer sends the frames it was handed in order, so it is the writer's next
        one), not cleared by a control frame that took the lock in between.
        """
        if frame != self._sent_early:
            return False
        self._sent_early = None
        self._release()
        return True

    async def _finish_in_flight(self) -> None:
        """Run the rest of the in-flight send; the lock it held then goes to the next in line (or is free)."""
        in_flight, self._in_flight = self._in_flight, None
        assert in_flight is not None
        sent = False
        try:
            await in_flight
            sent = True
        except OSError as exc:
            raise self._lost() from exc
        finally:
            if not sent:
                self._sent_early = None
            self._release()

    async def _acquire(self) -> None:
        """Wait for the sends in progress or queued before this one; on return this one holds the lock."""
        if self._in_flight is not None:
            # Nobody else will run it: a send left in flight by the fast path holds the lock until it completes.
            await self._finish_in_flight()
        if not self._busy and not self._waiters:
            self._busy = True
            return
        turn = anyio.Event()
        self._waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self._release()  # handed the lock while being cancelled: pass it on
            else:
                self._waiters.remove(turn)
            raise

    def _release(self) -> None:
        # Handed straight to the longest waiter (the lock stays held), so a busy writer cannot starve a control frame.
        waiters = self._waiters
        if waiters:
            waiters.popleft().set()
        else:
            self._busy = False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once; a connection the client already closed is only marked closed)."""
        if self.close_code is not None:
            return
        self.close_code = code
        try:
            if self._in_flight is not None:
                # A frame the fast path left in flight goes out before the close frame; if it cannot, the close
                # below finds the socket gone.
                with contextlib.suppress(WebSocketDisconnect, OSError):
                    await self._finish_in_flight()
            await self._acquire()
            try:
                websocket = self._websocket
                if (
                    websocket.application_state is WebSocketState.CONNECTED
                    and websocket.client_state is WebSocketState.CONNECTED
                ):
                    await websocket.close(code, reason.encode()[:_MAX_REASON].decode(errors="ignore"))
            finally:
                self._release()
        finally:
            self._closed.set()
            self._reading.cancel()


class GatewayStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of the ``/ws`` front end (the bridge counts the rest).

    :param accepted: WebSocket connections accepted
    :param auth_refused: connections closed with 1008 because their token was missing or refused
    :param threads_refused: subscribes refused because the grant does not cover the thread (closed with 1008)
    :param bad_frames: client frames answered with an error frame
    :param bad_frame_closes: connections closed with 4003 after too many bad frames
    :param open: connections currently open through this front end
    """

    accepted: int
    auth_refused: int
    threads_refused: int
    bad_frames: int
    bad_frame_closes: int
    open: int


class WebSocketGateway:
    """The ``/ws`` endpoint: authenticates a connection, registers it with the bridge, serves its requests.

    :param runtime: where the bridge lives (read at every connection, so a host may start it later)
    :param authorize_token: the authentication hook; ``None`` admits everyone as ``anonymous``
    :param auth_timeout: seconds a client has to send its ``auth`` frame
    :param max_bad_frames: bad frames a connection may send before it is closed with 4003
    """

    def __init__(
        self,
        runtime: Callable[[], Runtime | None],
        *,
        authorize_token: TokenAuthorizer | None = None,
        auth_timeout: float = 10.0,
        max_bad_frames: int = 100,
    ) -> None:
        if authorize_token is not None and not callable(authorize_token):
            raise TypeError(f"authorize_token must be a callable token -> Grant | None, got {authorize_token!r}")
        if not auth_timeout > 0:
            raise ValueError(f"auth_timeout must be > 0 seconds, got {auth_timeout!r}")
        if isinstance(max_bad_frames, bool) or not isinstance(max_bad_frames, int) or max_bad_frames < 1:
            raise ValueError(f"max_bad_frames must be an int >= 1, got {max_bad_frames!r}")
        self._runtime = runtime
        self._authorize_token = authorize_token
        self._auth_timeout = auth_timeout
        self._max_bad_frames = max_bad_frames
        self.accepting = True
        self._accepted = 0
        self._auth_refused = 0
        self._threads_refused = 0
        self._bad_frames = 0
        self._bad_frame_closes = 0
        self._open = 0

    def statistics(self) -> GatewayStatistics:
        """The front end's counters now."""
        return GatewayStatistics(
            accepted=self._accepted,
            auth_refused=self._auth_refused,
            threads_refused=self._threads_refused,
            bad_frames=self._bad_frames,
            bad_frame_closes=self._bad_frame_closes,
            open=self._open,
        )

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one WebSocket connection on ``/ws`` until it closes."""
        runtime = self._runtime()
        if runtime is None or not self.accepting:
            # Before the runtime started or while draining: tell the client to come back (and resume).
            await websocket.close(CloseCode.GOING_AWAY, "server not accepting connections")
            return
        await websocket.accept()
        self._accepted += 1
        self._open += 1
        sink = StarletteSink(websocket)
        try:
            await self._serve(runtime, websocket, sink)
        finally:
            self._open -= 1

    async def _serve(self, runtime: Runtime, websocket: WebSocket, sink: StarletteSink) -> None:
        bad_frames = 0
        grant = await self._authenticate(websocket, sink)
        if grant is None:
            return
        bridge = runtime.bridge
        try:
            connection_id = await bridge.connect(sink, principal=grant.principal)
        except ActorError as exc:
            logger.warning("bridge refused a connection: %s", exc)
            await sink.close(CloseCode.GOING_AWAY, "bridge unavailable: reconnect and resume")
            return
        try:
            await sink.send_text(
                control_frame(CONNECTED, {"connectionId": connection_id, "principal": grant.principal})
            )
            # The bridge closes the connection (refusal, replay gap, slow consumer, shutdown) through the sink, and
            # the sink's close cancels this scope: the endpoint stops reading. A scope rather than a watcher task:
            # a task per connection is some 35 more tracked objects that every full garbage collection rescans.
            with sink.reading:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    data = message.get("text")
                    if data is None:
                        data = message.get("bytes") or b""
                    try:
                        request = decode_client_frame(data)
                    except BadFrame as error:
                        bad_frames += 1
                        if not await self._answer_bad_frame(sink, error, bad_frames):
                            bridge.disconnect(connection_id, code=CloseCode.BAD_FRAME, reason="too many bad frames")
                            break
                        continue
                    if not await self._handle(runtime, connection_id, grant, sink, request):
                        break
        finally:
            # Never waits; a connection the bridge already closed is ignored.
            bridge.disconnect(connection_id)
            # The close frame (1008, 4002, 1001, ...) is the writer's to send: returning before it did would let
            # the server close the socket itself, with a code that tells the client nothing.
            with anyio.move_on_after(_CLOSE_WAIT):
                await sink.closed.wait()
            await sink.close(CloseCode.GOING_AWAY, "bridge unavailable: reconnect and resume")

    async def _answer_bad_frame(self, sink: StarletteSink, error: BadFrame, count: int) -> bool:
        self._bad_frames += 1
        if count > self._max_bad_frames:
            self._bad_frame_closes += 1
            return False
        await sink.send_text(error_frame("bad_frame", error.rule, field=error.field))
        return True

    async def _authenticate(self, websocket: WebSocket, sink: StarletteSink) -> Grant | None:
        if self._authorize_token is None:
            return ANONYMOUS
        token = _bearer_token(websocket)
        bad_frames = 0
        with anyio.move_on_after(self._auth_timeout):
            while token is None:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return None
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                try:
                    request = decode_client_frame(data)
                except BadFrame as error:
                    bad_frames += 1
                    if not await self._answer_bad_frame(sink, error, bad_frames):
                        await sink.close(CloseCode.BAD_FRAME, "too many bad frames")
                        return None
                    continue
                if not isinstance(request, AuthRequest):
                    self._auth_refused += 1
                    await sink.close(CloseCode.POLICY_VIOLATION, "authenticate first: send {auth: {token}}")
                    return None
                token = request.token
        if token is None:
            self._auth_refused += 1
            await sink.close(CloseCode.POLICY_VIOLATION, "no auth frame in time")
            return None
        try:
            grant = self._authorize_token(token)
            if inspect.isawaitable(grant):
                grant = await grant
        except Exception:  # the hook is application code: a failure refuses, it never crashes the endpoint
            logger.exception("authorize_token raised; refusing the connection")
            grant = None
        if not isinstance(grant, Grant):
            self._auth_refused += 1
            await sink.close(CloseCode.POLICY_VIOLATION, "token refused")
            return None
        return grant

    async def _handle(
        self,
        runtime: Runtime,
        connection_id: str,
        grant: Grant,
        sink: StarletteSink,
        request: AuthRequest | SubscribeRequest | UnsubscribeRequest,
    ) -> bool:
        """Serve one request; return False when the connection is over."""
        bridge = runtime.bridge
        match request:
            case SubscribeRequest(thread_id=thread_id, after_seq=after_seq):
                if not grant.allows(thread_id):
                    self._threads_refused += 1
                    bridge.disconnect(connection_id, code=CloseCode.POLICY_VIOLATION, reason="thread not allowed")
                    return False
                try:
                    result = await bridge.subscribe(connection_id, thread_id, after_seq=after_seq)
                except ActorError as exc:
                    logger.warning("subscribe failed: %s", exc)
                    await sink.close(CloseCode.GOING_AWAY, "bridge unavailable: reconnect and resume")
                    return False
                if result.outcome in (SubscribeOutcome.SUBSCRIBED, SubscribeOutcome.ALREADY_SUBSCRIBED):
                    value = {
                        "threadId": thread_id,
                        "lastSeq": result.last_seq,
                        "replayPending": result.replay_pending,
                        "outcome": result.outcome.value,
                    }
                    await sink.send_text(control_frame(SUBSCRIBED, value))
                    return True
                # refused (1008), replay gap (4002): the bridge closed the connection; unknown: it is gone.
                return False
            case UnsubscribeRequest(thread_id=thread_id):
                bridge.unsubscribe(connection_id, thread_id)
                await sink.send_text(control_frame(UNSUBSCRIBED, {"threadId": thread_id}))
                return True
            case AuthRequest():
                await sink.send_text(error_frame("bad_request", "already authenticated", field="$.auth"))
                return True


def _bearer_token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
