from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec

from actors import Actor, ActorError, ActorNotFound

from ._supervisor import Supervisor
from ._supervisor_messages import ChildBlockedLoop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import FrameType

    from actors import ActorSystem

logger = logging.getLogger("agentwatch.supervisors.watchdog")

#: The sampler thread's name (one per running watchdog; gone once the watchdog's context has exited).
WATCHDOG_THREAD_NAME = "agentwatch-loop-watchdog"


class LoopBlock(msgspec.Struct, frozen=True, kw_only=True):
    """One stretch during which the event loop ran nothing: which actor blocked it, and for how long.

    :param actor: the name of the actor whose handler held the loop, or ``None`` when no single actor's code was
        seen holding it (code outside any actor, a loop merely overloaded, or a block too short to confirm)
    :param seconds: how late the loop's heartbeat ran; the loop was blocked at least this long
    :param at: loop time (seconds) at which the loop resumed and the block was reported
    :param supervisor: the supervisor told to apply the child's policy; ``None`` when the actor is unsupervised
    """

    actor: str | None
    seconds: float
    at: float
    supervisor: str | None = None


class _Sample:
    """One look at the loop thread's stack: the innermost frame running an actor's code, and that actor's name."""

    __slots__ = ("due", "frame", "name")

    def __init__(self, due: float, frame: FrameType | None, name: str | None) -> None:
        self.due = due
        self.frame = frame
        self.name = name


def _innermost_actor_frame(frame: FrameType | None) -> tuple[FrameType, str] | tuple[None, None]:
    """Walk a stack outwards from ``frame`` to the innermost frame whose ``self`` is a running actor.

    :param frame: the innermost frame of the stack (e.g. from ``sys._current_frames()``)
    :return: that frame and the actor's name (its ref's name), or ``(None, None)`` when no actor's code is on it
    """
    while frame is not None:
        code = frame.f_code
        # Only methods can belong to an actor; reading f_locals is the costly part, so filter on the code first.
        if code.co_argcount and code.co_varnames[0] == "self":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Actor):
                try:
                    return frame, candidate.ref.name
                except ActorError:
                    pass  # an instance not (or no longer) attached to a ref: keep walking outwards
        frame = frame.f_back
    return None, None


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite seconds > 0, got {value!r}")
    return float(value)


class LoopLagWatchdog:
    """Detects an actor that blocks the event loop synchronously, names it, and has its supervisor restart it.

    An in-loop heartbeat runs every ``interval``; a daemon thread (the loop itself is blocked, so only a thread
    can look) checks every ``interval`` whether the heartbeat is more than ``threshold`` late. While it is, the
    thread samples the loop thread's stack for the innermost frame running an actor's code. The blocker is named
    only when two consecutive samples find the *same handler invocation* (the same frame) still running: a loop
    that is merely busy, running many short handlers, is never blamed on whichever actor happened to be sampled.
    So a block is attributed once it lasts about ``threshold + 2 * interval``; a shorter or unattributed block is
    still reported, with ``actor=None``.

    When the loop resumes, the heartbeat reports the block: a :class:`LoopBlock` goes to :meth:`history` and to
    ``on_block``, it is logged, and when the blocker is a supervised child its supervisor is told
    :class:`ChildBlockedLoop`, which applies the child's policy like any failure (restart, or detach for a
    non-critical child out of budget). An unsupervised actor is only reported. A handler that never returns
    (``while True``) never lets the loop resume: the thread logs the blocker by name as soon as it is confirmed.

    Runs on the real clock only (the heartbeat measures wall time). Create it with :func:`open_loop_watchdog`.
    """

    def __init__(
        self,
        system: ActorSystem,
        *,
        threshold: float = 0.2,
        interval: float = 0.05,
        on_block: Callable[[LoopBlock], object] | None = None,
        history: int = 100,
    ) -> None:
        self.threshold = _positive_seconds("threshold", threshold)
        self.interval = _positive_seconds("interval", interval)
        if on_block is not None and not callable(on_block):
            raise TypeError(f"on_block must be callable or None, got {type(on_block).__name__}")
        if isinstance(history, bool) or not isinstance(history, int):
            raise TypeError(f"history must be an int, got {type(history).__name__}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._system = system
        self._on_block = on_block
        self._history: deque[LoopBlock] = deque(maxlen=history)
        self._blocks = 0
        # Shared with the sampler thread, always under the lock: when the heartbeat is next due (monotonic
        # seconds), the last unconfirmed sample, and the blocker once two samples agree.
        self._lock = threading.Lock()
        self._due = math.inf
        self._candidate: _Sample | None = None
        self._blocker: str | None = None
        self._loop_thread = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def blocks(self) -> int:
        """How many blocks have been reported since the watchdog started."""
        return self._blocks

    @property
    def is_running(self) -> bool:
        """True while the sampler thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def history(self) -> list[LoopBlock]:
        """Return the most recent blocks, oldest first."""
        return list(self._history)

    # -- in the loop ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the sampler thread and beat until cancelled; the thread is stopped and joined on the way out."""
        if self._thread is not None:
            raise RuntimeError("a LoopLagWatchdog runs once: open a new one")
        self._loop_thread = threading.get_ident()
        self._beat_now()
        thread = threading.Thread(target=self._watch, name=WATCHDOG_THREAD_NAME, daemon=True)
        self._thread = thread
        thread.start()
        try:
            task_status.started()
            while True:
                await anyio.sleep(self.interval)
                self._beat()
        finally:
            self._stopping.set()
            # The thread wakes from its wait at once; joining here (not in a worker thread) leaves no thread behind.
            thread.join(timeout=max(1.0, 10 * self.interval))
            if thread.is_alive():  # pragma: no cover - the thread only ever waits on the event or samples briefly
                logger.error("loop watchdog: the sampler thread did not stop within its join timeout")

    def _beat_now(self) -> None:
        with self._lock:
            self._due = time.monotonic() + self.interval
            self._candidate = None
            self._blocker = None

    def _beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            lag = now - self._due
            blocker = self._blocker
            self._due = now + self.interval
            self._candidate = None  # drops the sampled frame: it must not keep a finished handler's locals alive
            self._blocker = None
        if blocker is not None or lag > self.threshold:
            self._report(blocker, max(lag, 0.0))

    def _report(self, actor: str | None, seconds: float) -> None:
        supervisor = self._tell_supervisor(actor, seconds) if actor is not None else None
        block = LoopBlock(actor=actor, seconds=seconds, at=anyio.current_time(), supervisor=supervisor)
        self._blocks += 1
        self._history.append(block)
        if actor is None:
            logger.warning("event loop blocked for %.3f s; no single actor was seen holding it", seconds)
        elif supervisor is None:
            logger.warning("event loop blocked for %.3f s by unsupervised actor %s (reported only)", seconds, actor)
        else:
            logger.warning(
                "event loop blocked for %.3f s by actor %s; its supervisor %s applies the child's policy",
                seconds,
                actor,
                supervisor,
            )
        if self._on_block is not None:
            try:
                self._on_block(block)
            except Exception:
                # A broken observer must not stop the watchdog: it is what catches everyone else's bugs.
                logger.exception("loop watchdog: on_block raised while reporting %s", block)

    def _tell_supervisor(self, actor: str, seconds: float) -> str | None:
        # Supervised children are named "<supervisor>/<child id>" (ChildSpec ids never contain "/").
        parent_name, slash, child_id = actor.rpartition("/")
        if not slash:
            return None
        try:
            parent = self._system.lookup(parent_name)
        except ActorNotFound:
            return None
        incarnation = parent._incarnation
        if incarnation is None or not isinstance(incarnation.actor, Supervisor):
            return None  # a "/" in a name the application chose, not a supervisor's child
        # A control message: the supervisor's mailbox bound must not swallow a failure report.
        parent.tell_control(ChildBlockedLoop(child_id=child_id, seconds=seconds))
        return parent_name

    # -- in the sampler thread -----------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self._check()
            except Exception:
                logger.exception("loop watchdog: sampling the event loop's stack failed")

    def _check(self) -> None:
        confirmed: str | None = None
        with self._lock:
            overdue = time.monotonic() - self._due
            if overdue <= self.threshold or self._blocker is not None:
                return
            frame, name = _innermost_actor_frame(sys._current_frames().get(self._loop_thread))
            previous = self._candidate
            if (
                previous is not None
                and frame is not None
                and previous.due == self._due  # still the same block: the heartbeat has not run since
                and previous.frame is frame  # the same handler invocation, still running
            ):
                self._blocker = confirmed = name
                self._candidate = None
            else:
                self._candidate = _Sample(self._due, frame, name)
            del frame
        if confirmed is not None:
            logger.warning("event loop blocked for %.3f s so far, by actor %s (still blocked)", overdue, confirmed)


@asynccontextmanager
async def open_loop_watchdog(
    system: ActorSystem,
    *,
    threshold: float = 0.2,
    interval: float = 0.05,
    on_block: Callable[[LoopBlock], object] | None = None,
    history: int = 100,
) -> AsyncIterator[LoopLagWatchdog]:
    """Run a :class:`LoopLagWatchdog` over ``system`` for the duration of the block; its thread is joined on exit.

    :param system: the actor system whose supervisors are told about blocking children
    :param threshold: how late (seconds) the heartbeat may be before the loop counts as blocked
    :param interval: the heartbeat period and the sampling period (seconds)
    :param on_block: called (in the loop, synchronously) with each :class:`LoopBlock` reported
    :param history: how many recent blocks :meth:`LoopLagWatchdog.history` keeps
    :raises TypeError: when an argument has the wrong type
    :raises ValueError: when ``threshold`` or ``interval`` is not finite and > 0, or ``history < 1``
    """
    watchdog = LoopLagWatchdog(system, threshold=threshold, interval=interval, on_block=on_block, history=history)
    # An error raised by the body is re-raised as itself once the thread is joined, not wrapped in the task
    # group's ExceptionGroup: the caller's code failed, not the watchdog. Cancellation propagates as usual.
    body_error: Exception | None = None
    async with anyio.create_task_group() as task_group:
        await task_group.start(watchdog.run)
        try:
            yield watchdog
        except Exception as exc:
            body_error = exc
        finally:
            task_group.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
