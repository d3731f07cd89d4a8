from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from actors._actor import Actor
from actors._exceptions import ActorError, ActorFailed, ActorNotFound, AskTimeout
from actors._mailbox import MailboxSpec
from actors._message import ExitKind, ExitReason
from actors._ref import ActorRef, RefState

from . import _wire as wire
from ._options import HeartbeatMissed, ProcessFault, ProcessIsolation, WorkerExited, WorkerFailed, WorkerStartTimeout
from ._outbox import WorkerOutbox
from ._spawn import WorkerProcess
from ._starvation import STARVED_GRACE, CpuTimes, cpu_times, starved

if TYPE_CHECKING:
    from ._recipe import ActorRecipe

logger = logging.getLogger("agentwatch.process")

#: A list answer longer than this goes to the worker in slices, one frame each, so that encoding a large replay
#: snapshot never holds the parent's event loop for long: 64 replayed events encode in about 0.05 ms, where 512
#: took 0.4 ms, each a stall of the bridge's deliveries in flight (measured in the isolation bench's kill blocks).
ANSWER_SLICE: Final = 64
_NO_REPLY: Final = object()
_DANGLING_MAILBOX: Final = MailboxSpec(capacity=1)


class _LinkDown:
    """Control message a host tells itself when its worker is gone (or stopped on its own)."""

    __slots__ = ("host",)

    def __init__(self, host: ProcessHost) -> None:
        self.host = host


class _Pending:
    __slots__ = ("decoder", "done", "error", "value")

    def __init__(self, decoder: msgspec.msgpack.Decoder[Any]) -> None:
        self.decoder = decoder
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def current_backend() -> str:
    """The name of the running async backend, for the worker to run the same one."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return "asyncio"


class ProcessHost(Actor[Any]):
    """Stands in the parent for an actor that runs in a worker process; an ordinary actor in every other respect.

    It starts the worker (forked by the fork server, or ``python -m actors.process``; see ``ProcessIsolation``)
    and speaks to it over a socketpair: the messages told to its ref are taken out of its mailbox in batches,
    encoded with MessagePack and written one frame per batch; the asks whose type has a declared reply wait for
    the worker's answer. It fails (raises, so its
    supervisor's rules apply) when the worker crashes, exits, is killed or misses its heartbeats; stopping it stops
    the worker: a Stop frame, then SIGTERM, then SIGKILL, and the process is always reaped.

    :param recipe: what the worker builds
    :param isolation: heartbeats, timeouts and the outbox bound
    :param handler_timeout: the deadline of each handler of the actor in the worker (enforced there)
    :param mailbox_capacity: the capacity of the actor's mailbox in the worker
    """

    def __init__(
        self,
        recipe: ActorRecipe,
        isolation: ProcessIsolation | None = None,
        *,
        handler_timeout: float | None = None,
        mailbox_capacity: int = 1000,
    ) -> None:
        self.recipe = recipe
        self.isolation = isolation if isolation is not None else ProcessIsolation()
        self.handler_timeout = handler_timeout
        self.mailbox_capacity = mailbox_capacity
        schema = recipe.schema
        self.schema = schema
        self.encoder = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)
        hooks: dict[str, Any] = {"ext_hook": self._ext_hook, "dec_hook": _dec_hook}
        self._sends = [wire.typed_decoder(tp, **hooks) for tp in schema.sends]
        self._replies = {tp: wire.typed_decoder(reply, **hooks) for tp, reply in schema.replies.items()}
        self._reply_types = schema.replies
        self._process: WorkerProcess | None = None
        self._stream: anyio.abc.SocketStream | None = None
        #: What waits to be written to the worker, tells in runs of one type.
        self._outbox = WorkerOutbox(schema, self.encoder, self._unencodable)
        self._wake = wire.Signal()
        self._space = wire.Signal()
        self._progress = wire.Signal()
        self._pending: dict[int, _Pending] = {}
        self._ask_ids = itertools.count(1)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._owner_scheduled = False
        self._owner_done = anyio.Event()
        self._ready = anyio.Event()
        self._started = False
        self._start_failure: str | None = None
        self._exited_item: wire.Exited | None = None
        self._eof = anyio.Event()
        self._process_exited = anyio.Event()
        self._returncode: int | None = None
        self._last_heard = 0.0
        self._closing = False
        self._failure: WorkerFailed | None = None
        self._finished_normally = False
        self._ignored_types: set[type] = set()
        #: Frames written to the worker (each one a batch of messages).
        self.frames_sent = 0
        #: Messages forwarded to the worker.
        self.forwarded = 0
        #: Messages taken out of the mailbox but never written to the worker, because it failed or stopped first.
        self.lost = 0

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs (for tests and fault injection)."""
        process = self._process
        return process.pid if process is not None and self._returncode is None else None

    @property
    def returncode(self) -> int | None:
        """The worker's exit status once it was reaped (negative: the signal that killed it), else None."""
        return self._returncode

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        started = False
        try:
            await self._spawn()
            self._owner_scheduled = True
            self.system._task_group.start_soon(self._run_link, name=f"process link:{self.ref.name}")
            await self._handshake()
            started = True
        finally:
            if not started:
                with anyio.CancelScope(shield=True):
                    await self._close()
        self._started = True

    async def _spawn(self) -> None:
        parent_end, child_end = socket.socketpair()
        try:
            isolation = self.isolation
            argv = [
                str(child_end.fileno()),
                current_backend(),
                str(os.getpid()),
                str(isolation.nice),
                isolation.scheduling,
            ]
            # A new interpreter imports the factory as this process would: give it this process's import path.
            path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
            self._process = await WorkerProcess.start(
                argv,
                fd=child_end.fileno(),
                env={**os.environ, "PYTHONPATH": path},
                preload=self.recipe.target.partition(":")[0],
                start_method=self.isolation.start_method,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self._stream = await anyio.abc.SocketStream.from_socket(parent_end)

    async def _handshake(self) -> None:
        assert self._stream is not None
        isolation = self.isolation
        clock = self.clock
        init = wire.Init(
            target=self.recipe.target,
            args=self.recipe.encoded_args,
            name=self.ref.name,
            heartbeat_interval=isolation.heartbeat_interval,
            handler_timeout=self.handler_timeout,
            mailbox_capacity=self.mailbox_capacity,
            clock_offset_ms=clock.now_ms() - int(time.time() * 1000),
        )
        # A worker already gone breaks the send: the exit watcher then says how it ended.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._stream.send(wire.frame(init, self.encoder))
        with anyio.move_on_after(isolation.start_timeout):
            await self._ready.wait()
        if self._start_failure is not None:
            raise wire.RemoteError("start failed in the worker", self._start_failure)
        if self._failure is not None:
            raise self._failure
        if not self._ready.is_set():
            raise WorkerStartTimeout(self.ref.name, self.pid, isolation.start_timeout)
        self._last_heard = anyio.current_time()

    async def on_stop(self, reason: ExitReason) -> None:
        try:
            if reason.kind in (ExitKind.SHUTDOWN, ExitKind.NORMAL) and self._failure is None:
                await self._stop_worker()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    def on_kill(self) -> None:
        # Cancelled: no awaiting here. Kill the worker now; the link task reaps it (in the system's task group).
        self._closing = True
        self._kill_now()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def _stop_worker(self) -> None:
        """Graceful, then SIGTERM, then (in ``_close``) SIGKILL: each step bounded by its timeout."""
        process = self._process
        if process is None or self._process_exited.is_set():
            return
        isolation = self.isolation
        self._closing = True  # from here on, the worker exiting is what we asked for, not a failure
        self._send((wire.STOP, isolation.stop_timeout))
        with anyio.move_on_after(isolation.stop_timeout):
            await self._process_exited.wait()
        if self._process_exited.is_set():
            return
        logger.warning(
            "%s: worker %s did not stop within %s s; terminating it", self.ref.name, process.pid, isolation.stop_timeout
        )
        process.terminate()
        with anyio.move_on_after(isolation.terminate_timeout):
            await self._process_exited.wait()

    async def _close(self) -> None:
        """Kill the worker if it still runs, stop the link tasks, reap the process and close the socket."""
        self._closing = True
        self._kill_now()
        if self._owner_scheduled:
            if self._tasks is not None:
                self._tasks.cancel_scope.cancel()
            await self._owner_done.wait()  # the link task reaps the process and closes the socket as it ends
        else:
            await self._reap()
            await self._close_stream()
        self._drop_outbox()

    async def _close_stream(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    def _kill_now(self) -> None:
        if self._process is not None:
            self._process.kill()

    async def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        self._kill_now()
        self._returncode = await process.wait()
        self._process_exited.set()

    def _drop_outbox(self) -> None:
        self._count_lost(self._outbox.take_all())
        error = self._failure or ActorError(f"{self.ref.name!r}: its worker stopped")
        for pending in self._pending.values():
            pending.error = error
            pending.done.set()

    # -- the link (runs in the system's task group; never raises) ---------------------------------------------

    async def _run_link(self) -> None:
        try:
            if not self._closing:
                async with anyio.create_task_group() as tasks:
                    self._tasks = tasks
                    tasks.start_soon(self._watch_exit)
                    tasks.start_soon(self._read_loop)
                    tasks.start_soon(self._write_loop)
                    tasks.start_soon(self._watch_heartbeats)
        except Exception as exc:  # the link's own bug must not take the actor system down: fail the host instead
            logger.exception("%s: the process link failed", self.ref.name)
            self._fail(WorkerFailed(self.ref.name, self.pid, f"the process link failed: {exc!r}"))
        finally:
            with anyio.CancelScope(shield=True):
                await self._reap()
                await self._close_stream()
            self._owner_done.set()

    async def _watch_exit(self) -> None:
        assert self._process is not None
        self._returncode = await self._process.wait()
        self._process_exited.set()
        if self._closing:
            return
        # The worker's last frame (why its actor ended) may still be in the socket: let the reader get to it.
        with anyio.move_on_after(1.0):
            await self._eof.wait()
        exited = self._exited_item
        if exited is not None and exited.kind == ExitKind.NORMAL.value and self._returncode == 0:
            self._finish_normally()
            return
        reason = exited.detail if exited is not None else ""
        self._fail(WorkerExited(self.ref.name, self._process.pid, self._returncode, reason))

    async def _watch_heartbeats(self) -> None:
        isolation = self.isolation
        timeout = isolation.heartbeat_timeout
        interval = min(isolation.heartbeat_interval, timeout / 4)
        #: The worker's CPU accounting once a heartbeat was overdue (None while frames arrive): at the timeout it
        #: tells a starved worker from a stuck one (see _starvation).
        overdue: tuple[float, CpuTimes] | None = None
        reported_starved = False
        while True:
            planned = anyio.current_time() + interval
            await anyio.sleep(interval)
            now = anyio.current_time()
            if now - planned > interval:
                continue  # our own loop was late: frames may be waiting unread, so judge at the next check
            silence = now - self._last_heard
            pid = self.pid
            if not self._ready.is_set() or silence <= 2 * interval or pid is None:
                overdue = None
                reported_starved = False
                continue
            if overdue is None:
                times = cpu_times(pid)  # one read of /proc, only once a heartbeat is late
                overdue = (now, times) if times is not None else None
            if silence <= timeout:
                continue
            if overdue is not None and silence < STARVED_GRACE * timeout:
                times = cpu_times(pid)
                if times is not None and starved(overdue[1], times, now - overdue[0], timeout):
                    if not reported_starved:
                        reported_starved = True
                        logger.warning(
                            "%s: worker %s silent for %.3f s, starved of CPU (waiting for a core): not failed yet",
                            self.ref.name,
                            pid,
                            silence,
                        )
                    continue
            self._fail(HeartbeatMissed(self.ref.name, pid, silence, timeout))
            return

    async def _write_loop(self) -> None:
        assert self._stream is not None
        stream = self._stream
        entries: list[tuple[Any, ...]] = []
        try:
            while True:
                outbox = self._outbox
                while not outbox.entries:
                    await self._wake.wait()
                entries = outbox.take_frame()
                self._space.set()
                await stream.send(outbox.encode(entries))
                entries = []
                self.frames_sent += 1
                self._progress.set()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            # The frame being written went down with the link: taken out of the outbox, it is counted here.
            self._count_lost(entries)
            with anyio.move_on_after(1.0):  # the exit watcher has the better reason when the worker died
                await self._process_exited.wait()
            self._fail(WorkerFailed(self.ref.name, self.pid, f"the link to the worker broke: {exc!r}"))

    def _count_lost(self, entries: list[tuple[Any, ...]]) -> None:
        """Count the actor's messages in outbox ``entries`` as lost with the worker.

        As the message a crashing actor was handling is: counted, not recorded one by one as dead letters (a repr
        each, thousands of them after a stuck worker, would stall the event loop).
        """
        lost = WorkerOutbox.messages_in(entries)
        if lost:
            self.lost += lost
            logger.warning("%s: %d messages on their way to the worker were lost with it", self.ref.name, lost)

    def _unencodable(self, item: tuple[Any, ...], exc: Exception) -> tuple[Any, ...] | None:
        op = item[0]
        if op in (wire.TELL, wire.ASK):
            logger.warning("%s: dropped %s, which does not encode: %s", self.ref.name, type(item[2]).__name__, exc)
            self.system.dead_letters.record(self.ref.name, "unencodable", item[2])
            if op == wire.ASK:
                pending = self._pending.pop(item[3], None)
                if pending is not None:
                    pending.error = ActorError(f"{self.ref.name!r}: the request does not encode: {exc}")
                    pending.done.set()
            return None
        if op in (wire.ANSWER, wire.ANSWER_PART):
            return (wire.ANSWER, item[1], False, wire.failure_of(exc, self.ref.name))
        return None

    async def _read_loop(self) -> None:
        assert self._stream is not None
        reader = wire.FrameReader(self._stream)
        try:
            while True:
                frames = await reader.receive()
                self._last_heard = anyio.current_time()
                for body in frames:
                    for item in wire.UP_BATCH.decode(body):
                        self._dispatch(item)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except (msgspec.DecodeError, ValueError) as exc:
            self._fail(WorkerFailed(self.ref.name, self.pid, f"corrupt frame from the worker: {exc}"))
        finally:
            self._eof.set()

    def _dispatch(self, item: wire.UpItem) -> None:
        kind = type(item)
        if kind is wire.TellUp:
            assert isinstance(item, wire.TellUp)
            self._tell_up(item)
        elif kind is wire.Reply:
            assert isinstance(item, wire.Reply)
            self._reply(item)
        elif kind is wire.AskUp:
            assert isinstance(item, wire.AskUp)
            assert self._tasks is not None
            self._tasks.start_soon(self._serve_ask, item)
        elif kind is wire.Ready:
            self._ready.set()
        elif kind is wire.StartFailed:
            assert isinstance(item, wire.StartFailed)
            self._start_failure = item.detail
            self._ready.set()
        elif kind is wire.Exited:
            assert isinstance(item, wire.Exited)
            self._exited_item = item

    def _tell_up(self, item: wire.TellUp) -> None:
        try:
            message = self._sends[item.code].decode(item.body)
        except (msgspec.DecodeError, IndexError) as exc:
            logger.error("%s: dropped a message for %r that does not decode: %s", self.ref.name, item.target, exc)
            return
        try:
            target = self.system.lookup(item.target)
        except ActorNotFound:
            self.system.dead_letters.record(item.target, "not_found", message)
            return
        target.tell(message)

    def _reply(self, item: wire.Reply) -> None:
        pending = self._pending.pop(item.ask_id, None)
        if pending is None:
            return
        try:
            if item.ok:
                pending.value = pending.decoder.decode(item.body)
            else:
                failure = wire.FAILURE.decode(item.body)
                # A handler that raised: the host raises its cause, so the asker's ActorFailed carries the remote
                # exception itself, as a local ask's carries the handler's exception.
                error = wire.error_from(failure, None)
                pending.error = error.cause if isinstance(error, ActorFailed) else error
        except msgspec.DecodeError as exc:
            pending.error = ActorError(f"{self.ref.name!r}: its reply does not decode: {exc}")
        pending.done.set()

    async def _serve_ask(self, item: wire.AskUp) -> None:
        """Answer an ask from the worker's actor to one of ours: ask it here, send the reply (in slices if long)."""
        try:
            message = self._sends[item.code].decode(item.body)
            target = self.system.lookup(item.target)
            # The timeout in a scope of our own, not the ask's: an ask with a timeout stays in the actor system's
            # deadline heap, its reply with it, until the deadline passes. A replay snapshot (thousands of events
            # that the bridge's rings have long dropped by then) was freed there, 5 s later, in one step of the
            # event loop: 2.5 to 4 ms during which the bridge delivered nothing. Freed as soon as it is sent, its
            # events are still in the rings and freeing it costs nothing.
            reply: Any = _NO_REPLY
            with anyio.move_on_after(math.inf if item.timeout is None else item.timeout):
                reply = await target.ask(message, timeout=None)
            if reply is _NO_REPLY:
                raise AskTimeout(item.target, math.inf if item.timeout is None else item.timeout)
        except Exception as exc:  # any failure is the asker's answer, in the worker; nothing here fails
            self._send((wire.ANSWER, item.ask_id, False, wire.failure_of(exc, item.target)))
            return
        if isinstance(reply, list) and len(reply) > ANSWER_SLICE:
            slices = [reply[start : start + ANSWER_SLICE] for start in range(0, len(reply), ANSWER_SLICE)]
            for part in slices[:-1]:
                self._send((wire.ANSWER_PART, item.ask_id, part))
                await self._progress.wait()  # one slice per frame: the bridge runs between them
            reply = slices[-1]
        self._send((wire.ANSWER, item.ask_id, True, reply))

    # -- refs across the boundary ---------------------------------------------------------------------------------

    def _enc_hook(self, obj: Any) -> Any:
        if isinstance(obj, ActorRef):
            if obj is self.ref:
                return msgspec.msgpack.Ext(wire.EXT_LINKED_REF, b"")
            return msgspec.msgpack.Ext(wire.EXT_PARENT_REF, obj.name.encode())
        raise TypeError(f"{type(obj).__qualname__} is not msgspec-encodable")

    def _ext_hook(self, code: int, data: memoryview) -> Any:
        if code == wire.EXT_LINKED_REF:
            return self.ref
        if code == wire.EXT_PARENT_REF:
            name = bytes(data).decode()
            try:
                return self.system.lookup(name)
            except ActorNotFound:
                # A ref to an actor that has stopped since: messages to it become dead letters, as with a local
                # ref held after its actor stopped.
                dangling: ActorRef[Any] = ActorRef(self.system, name, _DANGLING_MAILBOX)
                dangling._state = RefState.STOPPED
                return dangling
        raise ValueError(f"unknown MessagePack extension code {code}")

    # -- messages ---------------------------------------------------------------------------------------------------

    def _send(self, item: tuple[Any, ...]) -> None:
        self._outbox.put(item)
        self._wake.set()

    def _fail(self, error: WorkerFailed) -> None:
        if self._failure is not None or self._closing or self._finished_normally:
            return
        self._failure = error
        logger.warning("%s", error)
        for pending in self._pending.values():
            pending.error = error
            pending.done.set()
        self._ready.set()
        self._space.set()
        if self._started:
            self.ref.tell_control(_LinkDown(self))

    def _finish_normally(self) -> None:
        self._finished_normally = True
        self._space.set()
        if self._started:
            self.ref.tell_control(_LinkDown(self))

    async def receive(self, message: Any) -> Any:
        kind = type(message)
        if self._failure is not None:
            if kind is _LinkDown and message.host is not self:
                return None  # about an earlier instance's worker
            raise self._failure
        if self._finished_normally:
            self.stop()
            if kind is not _LinkDown:
                self.system.dead_letters.record(self.ref.name, "stopped", message)
            return None
        if kind is _LinkDown:
            return None  # stale: about an earlier instance's worker
        if kind is ProcessFault:
            self._send((wire.FAULT, message.kind, message.seconds, message.exit_code))
            return None
        code = self.schema.accept_code(message)
        if code is None:
            self._not_in_schema(message)
            return None
        reply_type = self._reply_types.get(kind, _NO_REPLY)
        if reply_type is _NO_REPLY:
            outbox = self._outbox
            self.forwarded += outbox.take_tells(
                code, message, self.ref._mailbox, self.schema.accept_codes, self._reply_types
            )
            self._wake.set()
            if outbox.size >= self.isolation.outbox_limit:
                await self._wait_for_space()
            return None
        self.forwarded += 1
        ask_id = next(self._ask_ids)
        pending = self._pending[ask_id] = _Pending(self._replies[kind])
        self._send((wire.ASK, code, message, ask_id))
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def _wait_for_space(self) -> None:
        limit = self.isolation.outbox_limit
        while self._outbox.size >= limit and self._failure is None and not self._finished_normally:
            await self._space.wait()
        if self._failure is not None:
            raise self._failure

    def _not_in_schema(self, message: Any) -> None:
        self.system.dead_letters.record(self.ref.name, "not_in_schema", message)
        kind = type(message)
        if kind not in self._ignored_types:
            self._ignored_types.add(kind)
            logger.warning(
                "%s: %s is not in the schema of %s: dropped (a dead letter), as will be every later one",
                self.ref.name,
                kind.__qualname__,
                self.recipe.target,
            )


def _dec_hook(tp: Any, obj: Any) -> Any:
    if isinstance(obj, ActorRef):
        return obj
    raise NotImplementedError(f"cannot decode {tp!r} from {type(obj).__name__}")
