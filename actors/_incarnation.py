from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from ._actor import Actor
from ._exceptions import ActorFailed, ActorStartError
from ._mailbox import BATCH_SIZE
from ._message import NORMAL_EXIT, SHUTDOWN_EXIT, ExitKind, ExitReason
from ._ref import AskRequest, RefState, TimerFire
from ._timers import Timer
from ._virtual_time import loop_clock

if TYPE_CHECKING:
    from anyio import TaskHandle

    from ._ref import ActorRef

logger = logging.getLogger("agentwatch.actors")

ExitCallback = Callable[["ActorRef[Any]", ExitReason], None]


class HandlerTimeout(Exception):
    """A ``receive`` ran past its deadline and was cancelled (hang detection)."""

    def __init__(self, actor: str, deadline: float) -> None:
        super().__init__(f"{actor!r}: a handler ran past its deadline of {deadline} s and was cancelled")
        self.actor = actor
        self.deadline = deadline


class Incarnation:
    """One instance of an actor, running behind a ref: its task, timers, stop request and exit reason.

    A restart is a new Incarnation on the same ref (same mailbox); this object never outlives its instance.
    """

    __slots__ = (
        "_done_event",
        "_drain_scope",
        "_guard_scope",
        "_handler_cut",
        "_handler_serial",
        "_handler_since",
        "_hibernating",
        "_kill_detail",
        "_kill_requested",
        "_kill_scope",
        "_owner_stop",
        "_stop_reason",
        "_task",
        "_timers",
        "actor",
        "batch_end",
        "exit_reason",
        "finished",
        "handler_timeout",
        "on_exit",
        "ref",
        "start_failure",
        "started",
    )

    def __init__(self, ref: ActorRef[Any], *, on_exit: ExitCallback | None, handler_timeout: float | None) -> None:
        self.ref = ref
        self.on_exit = on_exit
        self.handler_timeout = handler_timeout
        self.actor: Actor[Any] | None = None
        #: True once the instance has ended (its exit reason is recorded); :attr:`done` is the Event to wait on.
        self.finished = False
        # Made only for whoever waits for the end (a stop): an Event per live instance would be three more objects
        # for the cyclic GC to rescan for as long as the actor lives (bench/supervisor_scale.py).
        self._done_event: anyio.Event | None = None
        #: Given by a starter that waits (:meth:`ActorSystem.start_incarnation`), which drops it once set: set
        #: when ``on_start`` completed, or when the instance ended without getting there (``start_failure``).
        self.started: anyio.Event | None = None
        self.start_failure: BaseException | None = None
        self.exit_reason: ExitReason | None = None
        self._stop_reason: ExitReason | None = None
        self._owner_stop = False
        # What a kill cancels: the task's own scope, which anyio (>= 4.16) gives every task it spawns and hands
        # back as a TaskHandle, or else (an older anyio) a scope of ours around the whole instance. A second scope
        # per instance would be four to six more objects per live actor for the cyclic GC to rescan.
        self._task: TaskHandle[None] | None = None
        self._kill_scope: anyio.CancelScope | None = None
        self._kill_requested = False
        self._kill_detail = "cancelled"
        # The live timers of this instance, while it may set them (from on_start until its drain loop ends): None
        # when it may not, ``_NO_TIMERS`` while it may but has none (most actors never set one: no set per actor).
        # They run in the system's task group, not in one of the instance's own: a task group per instance costs
        # every restart its set-up and cancellation (~15 µs on asyncio, bench/restart.py) and every live actor a
        # handful of objects that the cyclic GC rescans (bench/supervisor_scale.py).
        self._timers: set[Timer] | frozenset[Timer] | None = None
        # Handler deadlines (hang detection): the drain loop only stamps when each handler starts; one watcher task
        # per instance cancels the drain's scope when the running handler passes its deadline. A cancel scope per
        # message (move_on_after) would cost several microseconds on every message of a busy actor.
        self._handler_since: float | None = None
        self._handler_serial = 0
        self._drain_scope: anyio.CancelScope | None = None
        # Set by the watcher as it cancels a handler past its deadline: one that returns before the cancellation
        # lands (its wake-up was already scheduled, or it shielded itself) has timed out all the same.
        self._handler_cut = False
        #: The mailbox's ``processed`` count at which the current batch ends: the drain loop yields to other tasks
        #: there, and :meth:`Actor.take_queued` takes no message past it (a batch is BATCH_SIZE messages, however
        #: many of them one ``receive`` call takes).
        self.batch_end = 0
        self._guard_scope: anyio.CancelScope | None = None
        # Hibernation (OTP's word): an instance that has started and has nothing queued ends its task and keeps
        # only its state; the mailbox's next wake-up (a message, a stop, a kill) resumes it in a new task through
        # :meth:`set`. A task waiting on an empty mailbox is some thirty objects (task, coroutines, scopes,
        # events) that every full collection of the cyclic GC rescans: a supervisor's 10,000 idle dynamic children
        # made each full collection ~8x slower per object than 1,000 did (bench/supervisor_scale.py).
        self._hibernating = False

    @property
    def done(self) -> anyio.Event:
        """An Event set once the instance has ended (made on first use; :attr:`finished` reads the same state)."""
        event = self._done_event
        if event is None:
            event = self._done_event = anyio.Event()
            if self.finished:
                event.set()
        return event

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    @property
    def stopped_by_owner(self) -> bool:
        """True when the exit was requested by whoever owns the ref (a supervisor), not a crash or a self-stop."""
        return self._owner_stop

    def request_stop(self, *, owner: bool, normal: bool = False) -> None:
        """Ask the drain loop to stop after the current message."""
        if self._stop_reason is None:
            self._stop_reason = NORMAL_EXIT if normal else SHUTDOWN_EXIT
            self._owner_stop = owner
        actor = self.actor
        if self._hibernating and actor is not None and type(actor).on_stop is Actor.on_stop:
            # Nothing queued, no task and no on_stop to run: the instance ends here, without a task to end it.
            self._hibernating = False
            self.ref._mailbox.waiter = None
            self._end(self._stop_reason, started=True, start_failure=None)
            return
        self.ref._mailbox.wake()

    def kill(self, detail: str) -> None:
        """Cancel the instance now: its current handler is interrupted and ``on_stop`` does not run."""
        self._kill_detail = detail
        self._kill_requested = True  # a kill before the task runs takes effect as soon as it does
        if self._kill_scope is not None:
            self._kill_scope.cancel()
        elif self._task is not None:
            self._task.cancel()

    def spawn(self, task_group: anyio.abc.TaskGroup, factory: Callable[[], Actor[Any]]) -> None:
        """Run this instance (:meth:`run`) as a new task of ``task_group``; return at once."""
        self._task = task_group.start_soon(self.run, factory, name=f"actor:{self.ref.name}")

    def set(self) -> None:
        """Resume the hibernating instance in a new task: the mailbox's wake-up while it hibernates.

        Named like ``anyio.Event.set`` because it takes an Event's place as the mailbox's waiter (see
        :meth:`_drain`), so that ``tell`` stays one attribute check and one call whatever the actor is doing.
        """
        if not self._hibernating:
            return
        self._hibernating = False
        handle = self.ref._system._task_group.start_soon(self.run, None, name=f"actor:{self.ref.name}")
        # An eager task factory may have run the whole resumed task (to its end, or to hibernating again) before
        # start_soon returned: its handle is then stale and a kill must not cancel it.
        if not self._hibernating and not self.finished:
            self._task = handle

    def start_timer(self, delay: float, interval: float | None, message: Any) -> Timer:
        timers = self._timers
        if timers is None or self.finished:
            raise RuntimeError("timers can only be set while the actor is running")
        if not isinstance(timers, set):
            timers = self._timers = set()
        timer = Timer(interval)
        timers.add(timer)
        self.ref._system._task_group.start_soon(self._run_timer, timer, delay, message)
        return timer

    async def _run_timer(self, timer: Timer, delay: float, message: Any) -> None:
        try:
            await timer.run(self, delay, message)
        except Exception:
            # A timer runs in the system's task group: whatever goes wrong must not take every actor down.
            logger.exception("%s: a timer failed and was dropped", self.ref.name)
        finally:
            timers = self._timers
            if isinstance(timers, set):
                timers.discard(timer)

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, None
        if timers:
            for timer in timers:
                timer.cancel()
        if self._guard_scope is not None:
            self._guard_scope.cancel()

    async def _watch_handler_deadlines(self, timeout: float) -> None:
        """Cancel the running handler exactly when it has run for ``timeout`` (hang detection)."""
        assert self._guard_scope is not None
        with self._guard_scope:
            while True:
                since = self._handler_since
                if since is None:
                    await anyio.sleep(timeout)  # idle: no handler can be late before a whole timeout has passed
                    continue
                serial = self._handler_serial
                await anyio.sleep_until(since + timeout)
                if self._handler_since is since and self._handler_serial == serial and self._drain_scope is not None:
                    self._handler_cut = True
                    self._drain_scope.cancel()
                    await anyio.sleep(timeout)

    async def run(self, factory: Callable[[], Actor[Any]] | None) -> None:
        """Build the instance, run ``on_start``, drain the mailbox until stopped, run ``on_stop``.

        With ``factory`` None, resume a hibernating instance instead: drain from where it stopped (see
        :meth:`set`). Either way the task may end by hibernating, which leaves the instance alive.

        Reports the end of its start through :attr:`started` (and a failure through :attr:`start_failure`,
        never by raising: the task group belongs to the whole system) and always records the exit reason, even
        when cancelled from outside. An Event rather than ``TaskGroup.start``: on trio, ``start`` opens a
        nursery per call, ~12 µs of every restart (bench/restart.py).
        """
        reason: ExitReason | None = None
        start_failure: BaseException | None = None
        started = False
        # Stays True unless the body runs to its end: a cancellation anywhere (drain, on_start, on_stop) is a kill.
        killed = True
        hibernated = False
        fresh = factory is not None
        ref = self.ref
        try:
            # A kill cancels the task's own scope (see ``_task``): it ends this coroutine with the backend's
            # cancellation, which that scope then absorbs. Without a task handle (an older anyio, or an eager task
            # factory that ran this before ``spawn`` got the handle) a scope of ours absorbs it here instead.
            with anyio.CancelScope() if self._task is None else _NO_SCOPE as kill_scope:
                if kill_scope is not None:
                    self._kill_scope = kill_scope
                    if self._kill_requested:
                        kill_scope.cancel()
                if factory is None:
                    started = True
                    actor = self.actor
                    assert actor is not None
                    if self._kill_requested:
                        return  # killed while hibernating: ends as a kill, without on_stop
                else:
                    self._timers = _NO_TIMERS
                    try:
                        actor = factory()
                        # The factory (often a closure over its supervisor's state) is not needed again: dropping it
                        # here keeps it off the heap for the instance's lifetime, which the GC would rescan.
                        del factory
                        actor._attach(self)
                        self.actor = actor
                        for interceptor in ref._interceptors:
                            interceptor.instrument(actor)
                        await actor.on_start()
                    except Exception as exc:
                        # Reported to the starter only once the ref is cleaned up (in ``finally``), so that a caller
                        # seeing ActorStartError never finds the failed actor still registered.
                        reason = ExitReason.error(exc, f"start failed: {exc!r}")
                        start_failure = exc
                        killed = False
                        return
                    ref._state = RefState.RUNNING
                    started = True
                    if self.started is not None:
                        self.started.set()
                reason = await self._drain(actor, fresh=fresh)
                if reason is None:
                    # Hibernating (the drain loop made this instance its mailbox's waiter): the task ends here,
                    # the instance lives on, and nothing below runs.
                    hibernated = True
                    killed = False
                    return
                # No timer fires into on_stop, and on_stop cannot set new ones (as after any other exit).
                self._cancel_timers()
                # A kill requested while the drain loop was already returning must not run on_stop.
                if (
                    reason is not None
                    and self.actor is not None
                    and reason.kind is not ExitKind.KILLED
                    and not self._kill_requested
                ):
                    try:
                        await self.actor.on_stop(reason)
                    except Exception:
                        logger.exception("%s: on_stop raised (exit reason kept: %s)", ref.name, reason)
                killed = self._kill_requested
        except anyio.get_cancelled_exc_class():
            if not self._kill_requested or self._kill_scope is not None:
                raise
            # Our own kill, through the task's scope: absorbed here, at the top of the task, which ends anyway.
            # Let through, the task handle would keep the cancellation, whose traceback holds the frames of the
            # code that called kill(), which hold the handle: a reference cycle, garbage for a full collection.
        finally:
            if hibernated:
                # Only the task ends: a kill while hibernating must not cancel its finished handle.
                self._task = None
                self._kill_scope = None
            else:
                self._end(None if killed else reason, started=started, start_failure=start_failure)

    def _end(self, reason: ExitReason | None, *, started: bool, start_failure: BaseException | None) -> None:
        """Record the instance's exit (a kill when ``reason`` is None) and unlink it, at the end of its last task."""
        ref = self.ref
        if reason is None:
            reason = ExitReason(kind=ExitKind.KILLED, detail=self._kill_detail)
            if self.actor is not None:
                try:
                    self.actor.on_kill()
                except Exception:
                    logger.exception("%s: on_kill raised", ref.name)
        self.exit_reason = reason
        self._cancel_timers()  # also after a failed start or a kill: a timer never outlives its instance
        self.finished = True
        if self._done_event is not None:
            self._done_event.set()
        ref._system._incarnation_ended(self, reason)
        if not started:
            self.start_failure = start_failure if start_failure is not None else ActorStartError(ref.name, reason)
            if self.started is not None:
                self.started.set()
        # The instance and this object refer to each other, and so do the task handle (through the cancellation it
        # records) and this object: unlinked here, an ended instance is freed by reference counting at once instead
        # of waiting, as cyclic garbage, for a full collection.
        self.actor = None
        self._task = None
        self._kill_scope = None

    async def _drain(self, actor: Actor[Any], *, fresh: bool) -> ExitReason | None:
        """Handle messages until a stop: return why, or None to hibernate (see :meth:`set`).

        :param fresh: True on the instance's first task: it hibernates if nothing is queued once it has started
        """
        ref = self.ref
        mailbox = ref._mailbox
        queue = mailbox.queue
        receive = actor.receive
        version = ref._interceptor_version
        deadline = self.handler_timeout
        # Only an actor with a handler deadline stamps its handlers (on asyncio the clock is a bound method: one
        # more object per live actor for the GC to rescan, kept only where it is used).
        now = _no_clock
        if deadline is not None:
            now = loop_clock()
            if self._guard_scope is None:  # one watcher for the instance's life, not one per resumed task
                self._guard_scope = anyio.CancelScope()
                ref._system._task_group.start_soon(self._watch_handler_deadlines, deadline)
        item: Any = None
        try:
            # One cancel scope for the whole drain, not one per batch: entering and leaving a scope costs 2-5 µs
            # (anyio on asyncio / trio), which an actor woken for a few messages at a time paid on every wake-up
            # (bench/bridge.py's monitor, woken per run of publishes). The watcher cancels it only while a handler
            # runs (``_handler_since``) and flags the cut (``_handler_cut``): the cancellation lands in that handler,
            # or, if the handler returns first (its wake-up already scheduled, or shielded), the flag fails the actor
            # right after it, so no later message is cut, or blamed, in its place.
            with anyio.CancelScope() if deadline is not None else _NO_SCOPE as drain_scope:
                self._drain_scope = drain_scope
                while True:
                    if self._stop_reason is not None:
                        return self._stop_reason
                    if not queue:
                        if fresh:
                            # Started with nothing to do: hibernate until the first message instead of keeping a
                            # task.
                            self._hibernating = True
                            mailbox.waiter = self
                            return None
                        await mailbox.wait_nonempty()
                        continue
                    fresh = False
                    depth = len(queue)
                    if depth > mailbox.high_water:
                        mailbox.high_water = depth
                    batch_end = self.batch_end = mailbox.processed + BATCH_SIZE
                    while queue and mailbox.processed < batch_end:
                        # A fault injector may wrap or unwrap the instance's receive at any await: re-read it as
                        # soon as the ref's interceptors change, so a reverted fault ends with the message.
                        if ref._interceptor_version != version:
                            version = ref._interceptor_version
                            receive = actor.receive
                        item = queue.popleft()
                        mailbox.processed += 1
                        if deadline is not None:
                            self._handler_serial += 1
                            self._handler_since = now()
                        kind = type(item)
                        if kind is AskRequest:
                            reply = await receive(item.message)
                            if not item.resolve(reply):
                                ref._system.dead_letters.record(ref.name, "late_reply", reply)
                            # Not kept until the next ask: a large answer (a replay snapshot) would outlive what it
                            # holds and be freed all at once, much later, stalling the loop (bench/isolation.py).
                            reply = None
                        elif kind is TimerFire:
                            if item.incarnation is not self:
                                ref._system.dead_letters.record(ref.name, "stale_timer", item.message)
                            else:
                                await receive(item.message)
                        else:
                            await receive(item)
                        self._handler_since = None
                        item = None
                        if self._handler_cut:
                            # Cut at its deadline but returned before the cancellation landed: the actor fails
                            # now, and the next message is not the one cut (and blamed) in its place.
                            assert deadline is not None
                            raise HandlerTimeout(ref.name, deadline)
                        if self._stop_reason is not None:
                            break
                    if mailbox.space_waiters:
                        mailbox.wake_senders()
                    if mailbox.processed >= batch_end:
                        await anyio.lowlevel.checkpoint()
            # Only the watcher's cancellation ends the loop here (every other way out returns or raises), and the
            # scope absorbed it: the running handler passed its deadline.
            assert deadline is not None
            raise HandlerTimeout(ref.name, deadline)
        except Exception as exc:
            ref._failed += 1
            if type(item) is AskRequest:
                item.fail(ActorFailed(ref.name, exc))
            logger.debug("%s failed while handling %s", ref.name, type(item).__name__, exc_info=True)
            return ExitReason.error(exc)
        finally:
            self._drain_scope = None


class _NoScope:
    """Stands in for a cancel scope that is not needed (no handler deadline, or the task's own scope kills).

    Static methods: a ``with`` block keeps its ``__exit__`` for as long as it runs, and a bound method would be one
    more object per live actor for the cyclic GC to rescan (the function itself is shared).
    """

    @staticmethod
    def __enter__() -> None:
        return None

    @staticmethod
    def __exit__(*exc_info: object) -> None:
        return None


_NO_SCOPE = _NoScope()


def _no_clock() -> float:
    """Stands in for the loop's clock in the drain loop of an actor without a handler deadline (never called)."""
    raise AssertionError("an actor without a handler deadline never reads the clock")


#: ``Incarnation._timers`` of an instance that may set timers and has set none yet.
_NO_TIMERS: frozenset[Timer] = frozenset()
