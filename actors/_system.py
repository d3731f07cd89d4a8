from __future__ import annotations

import itertools
import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from ._clock import Clock
from ._deadletters import DeadLetters
from ._exceptions import ActorNameTaken, ActorNotFound, ActorStartError, ActorStopped
from ._incarnation import ExitCallback, Incarnation
from ._mailbox import MailboxSpec
from ._message import ExitKind, ExitReason, Terminated
from ._ref import ActorRef, AskRequest, RefState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from ._actor import Actor

logger = logging.getLogger("agentwatch.actors")

MsgT = TypeVar("MsgT")

_DEFAULT_MAILBOX = MailboxSpec()

#: How many instances :meth:`ActorSystem.stop_incarnations` asks to stop before it lets them run.
_STOP_WAVE = 256


class ActorSystem:
    """Runs actors in one task group: spawning, the name registry, death watch, dead letters and the clock.

    Create it with :func:`open_actor_system`. The methods under "supervision hook" are what a supervisor uses to
    run instances behind a ref it owns; application code normally only calls :meth:`spawn` and :meth:`lookup`.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup, *, clock: Clock, dead_letters: DeadLetters) -> None:
        self._task_group = task_group
        self.clock = clock
        self.dead_letters = dead_letters
        self._names: dict[str, ActorRef[Any]] = {}
        # Unsupervised actors, in spawn order (a dict: retiring one is O(1)); shutdown stops them newest first.
        self._top_level: dict[ActorRef[Any], None] = {}
        self._anonymous = itertools.count(1)
        self._closing = False

    # -- spawning and lookup -------------------------------------------------------------------------------------

    def spawn(
        self,
        factory: Callable[[], Actor[MsgT]],
        *,
        name: str | None = None,
        mailbox: MailboxSpec = _DEFAULT_MAILBOX,
        handler_timeout: float | None = None,
    ) -> ActorRef[MsgT]:
        """Start an unsupervised actor and return its ref at once; messages told before it runs are queued.

        If it fails (in ``on_start`` or a handler) it stops for good: watchers get ``Terminated``.

        :param factory: builds the instance (a class or any zero-argument callable)
        :param name: a unique name for :meth:`lookup`; by default one is made from the factory's name
        :param mailbox: capacity and overflow policy
        :param handler_timeout: cancel a ``receive`` running longer than this and fail the actor
        :raises ActorNameTaken: when a live actor already has ``name``
        """
        ref = self.create_ref(factory, name=name, mailbox=mailbox)
        self._top_level[ref] = None
        incarnation = self._new_incarnation(ref, on_exit=None, handler_timeout=handler_timeout)
        incarnation.spawn(self._task_group, factory)
        return ref

    async def start(
        self,
        factory: Callable[[], Actor[MsgT]],
        *,
        name: str | None = None,
        mailbox: MailboxSpec = _DEFAULT_MAILBOX,
        handler_timeout: float | None = None,
    ) -> ActorRef[MsgT]:
        """Like :meth:`spawn`, but return only once ``on_start`` has completed.

        :raises ActorStartError: when building the instance or ``on_start`` raised (the actor is then stopped)
        """
        ref = self.create_ref(factory, name=name, mailbox=mailbox)
        self._top_level[ref] = None
        await self.start_incarnation(ref, factory, on_exit=None, handler_timeout=handler_timeout)
        return ref

    def lookup(self, name: str) -> ActorRef[Any]:
        """Return the live actor registered under ``name``.

        :raises ActorNotFound: when there is none
        """
        try:
            return self._names[name]
        except KeyError:
            raise ActorNotFound(name) from None

    def names(self) -> list[str]:
        """Return the names of all live actors, in creation order."""
        return list(self._names)

    # -- death watch --------------------------------------------------------------------------------------------

    def watch(self, watcher: ActorRef[Any], target: ActorRef[Any]) -> None:
        """Deliver ``Terminated(target, reason)`` to ``watcher`` when ``target`` stops for good (now, if it has)."""
        if target._state == RefState.STOPPED:
            assert target._stop_reason is not None
            watcher.tell_control(Terminated(ref=target, reason=target._stop_reason))
        elif watcher not in target._watchers:
            target._watchers = (*target._watchers, watcher)

    def unwatch(self, watcher: ActorRef[Any], target: ActorRef[Any]) -> None:
        """Stop watching; a ``Terminated`` not yet queued will not be delivered."""
        if watcher in target._watchers:
            target._watchers = tuple(ref for ref in target._watchers if ref is not watcher)

    # -- supervision hook ---------------------------------------------------------------------------------------

    def create_ref(
        self, factory: object = None, *, name: str | None = None, mailbox: MailboxSpec = _DEFAULT_MAILBOX
    ) -> ActorRef[Any]:
        """Register a ref and its mailbox with no instance behind it yet: messages told to it are queued.

        :param factory: only used to derive a default name
        :raises ActorNameTaken: when a live actor already has ``name``
        """
        if self._closing:
            raise ActorStopped("actor system", "shutting down")
        if not isinstance(mailbox, MailboxSpec):
            raise TypeError(f"mailbox must be a MailboxSpec, got {type(mailbox).__name__}")
        if name is None:
            base = getattr(factory, "__name__", None) or type(factory).__name__
            name = f"{base}-{next(self._anonymous)}"
        elif not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if name in self._names:
            raise ActorNameTaken(name)
        ref: ActorRef[Any] = ActorRef(self, name, mailbox)
        self._names[name] = ref
        return ref

    async def start_incarnation(
        self,
        ref: ActorRef[Any],
        factory: Callable[[], Actor[Any]],
        *,
        on_exit: ExitCallback | None,
        handler_timeout: float | None = None,
    ) -> None:
        """Run a new instance behind ``ref`` (its first, or a restart) and return once ``on_start`` completed.

        The mailbox and everything queued in it are kept. ``on_exit(ref, reason)`` is called (synchronously, in the
        instance's task) when the instance ends for any reason other than :meth:`stop_incarnation`; with
        ``on_exit=None`` the ref is stopped for good when the instance ends.

        :raises ActorStartError: when building the instance or ``on_start`` raised; nothing is left running
        """
        if ref._state in (RefState.STOPPED, RefState.DETACHED):
            raise ActorStopped(ref.name, ref._state)
        if ref._incarnation is not None and not ref._incarnation.finished:
            raise RuntimeError(f"{ref.name!r} already has a running instance")
        incarnation = self._new_incarnation(ref, on_exit=on_exit, handler_timeout=handler_timeout)
        started = incarnation.started = anyio.Event()
        incarnation.spawn(self._task_group, factory)
        try:
            await started.wait()
        except anyio.get_cancelled_exc_class():
            # As TaskGroup.start would: an instance whose starter was cancelled must not outlive its start.
            incarnation.kill("its starter was cancelled while it started")
            with anyio.CancelScope(shield=True):
                await incarnation.done.wait()
            raise
        finally:
            incarnation.started = None  # not kept for the instance's lifetime: fewer objects for the GC to scan
        failure = incarnation.start_failure
        if failure is not None:
            raise ActorStartError(ref.name, failure) from failure

    async def stop_incarnation(self, ref: ActorRef[Any], *, timeout: float | None) -> ExitReason | None:
        """Stop the instance behind ``ref`` without reporting it through ``on_exit``; the ref stays open.

        :param timeout: seconds a graceful stop may take before the instance is cancelled; 0 cancels at once
            (a brutal kill); ``None`` waits as long as it takes
        :return: the exit reason, or ``None`` when no instance was running
        """
        incarnation = ref._incarnation
        if incarnation is None or incarnation.finished:
            return None
        incarnation.request_stop(owner=True)
        return await self._await_exit(incarnation, timeout)

    async def stop_incarnations(
        self,
        refs: Sequence[ActorRef[Any]],
        timeouts: Sequence[float | None],
        *,
        each: Callable[[int, ExitReason | None], None] | None = None,
    ) -> None:
        """Stop many instances in parallel, as :meth:`stop_incarnation` would stop each, from this one task.

        Every stop is requested at once; then the instances are awaited in the order of their shutdown deadlines,
        so each is cancelled exactly when its own timeout runs out, as if each had its own waiter. A task per
        instance (what a parallel stop in a task group costs) would allocate tens of objects per child all at
        once: with thousands of children that wave alone drives the cyclic GC into full collections of the whole
        heap (bench/supervisor_scale.py). For the same reason nothing here allocates a container per instance.

        :param refs: the refs whose instances to stop
        :param timeouts: for each ref, as ``timeout`` for :meth:`stop_incarnation`
        :param each: called once per ref with ``(index into refs, exit reason or None)``: at once for those with no
            instance running (``None``), then for each instance once it has ended, in deadline order (an instance
            that ended early is reported when the wait reaches it)
        """
        if len(refs) != len(timeouts):
            raise ValueError(f"refs and timeouts must have the same length, got {len(refs)} and {len(timeouts)}")
        now = anyio.current_time()
        incarnations: list[Incarnation | None] = []
        deadlines: list[float] = []
        for index, ref in enumerate(refs):
            if index and not index % _STOP_WAVE:
                # Let the instances asked so far wake up and end before asking more: every wake-up allocates (a
                # callback handle on asyncio), and ten thousand of them alive at once would be promoted through
                # the young generations and bring on a full collection. One pass of the loop per wave keeps the
                # stops parallel: a slow on_stop yields at its first await and the next wave is asked at once.
                await anyio.lowlevel.checkpoint()
                now = anyio.current_time()
            incarnation = ref._incarnation
            timeout = timeouts[index]
            if incarnation is None or incarnation.finished:
                incarnations.append(None)
                deadlines.append(-math.inf)
                if each is not None:
                    each(index, None)
                continue
            incarnation.request_stop(owner=True)
            if timeout is not None and timeout <= 0:
                incarnation.kill("killed at once (brutal shutdown)")
            incarnations.append(incarnation)
            deadlines.append(math.inf if timeout is None else now + timeout)
        # sorted() is stable: equal deadlines keep the order given.
        for index in sorted(range(len(refs)), key=deadlines.__getitem__):
            incarnation = incarnations[index]
            if incarnation is None:
                continue
            if not incarnation.finished:
                timeout = timeouts[index]
                if timeout is not None and timeout > 0:
                    with anyio.move_on_after(deadlines[index] - anyio.current_time()):
                        await incarnation.done.wait()
                    if not incarnation.finished:
                        incarnation.kill(f"did not stop within its shutdown timeout of {timeout} s and was cancelled")
                await incarnation.done.wait()
            if each is not None:
                each(index, incarnation.exit_reason)

    def detach(self, ref: ActorRef[Any]) -> None:
        """Take a ref out of service (no instance may be running): queued and new messages become dead letters."""
        self._require_no_instance(ref, "detach")
        if ref._state == RefState.STOPPED:
            raise ActorStopped(ref.name, ref._state)
        ref._state = RefState.DETACHED
        self._dead_letter_queue(ref)

    def reattach(self, ref: ActorRef[Any]) -> None:
        """Put a detached ref back in service: messages queue again until an instance is started."""
        if ref._state != RefState.DETACHED:
            raise ValueError(f"{ref.name!r} is {ref._state}, not detached")
        ref._state = RefState.RESTARTING

    def retire(self, ref: ActorRef[Any], reason: ExitReason) -> None:
        """Stop a ref for good (no instance may be running): free its name, dead-letter its queue, tell watchers."""
        self._require_no_instance(ref, "retire")
        if ref._state == RefState.STOPPED:
            return
        ref._state = RefState.STOPPED
        ref._stop_reason = reason
        # The last instance refers to the ref: unlinked, a stopped actor is freed by reference counting alone
        # (cyclic garbage from every stop would pile up in the oldest generation until a full collection).
        ref._incarnation = None
        if self._names.get(ref.name) is ref:
            del self._names[ref.name]
        self._top_level.pop(ref, None)
        self._dead_letter_queue(ref)
        watchers, ref._watchers = ref._watchers, ()
        for watcher in watchers:
            watcher.tell_control(Terminated(ref=ref, reason=reason))

    # -- internals ------------------------------------------------------------------------------------------------

    def _new_incarnation(
        self, ref: ActorRef[Any], *, on_exit: ExitCallback | None, handler_timeout: float | None
    ) -> Incarnation:
        if handler_timeout is not None and handler_timeout <= 0:
            raise ValueError(f"handler_timeout must be > 0 seconds or None, got {handler_timeout}")
        incarnation = Incarnation(ref, on_exit=on_exit, handler_timeout=handler_timeout)
        ref._incarnation = incarnation
        ref._incarnations += 1
        ref._state = RefState.STARTING
        return incarnation

    def _require_no_instance(self, ref: ActorRef[Any], action: str) -> None:
        incarnation = ref._incarnation
        if incarnation is not None and not incarnation.finished:
            raise RuntimeError(f"cannot {action} {ref.name!r} while an instance is running: stop it first")

    def _dead_letter_queue(self, ref: ActorRef[Any]) -> None:
        state = ref._state
        for item in ref._mailbox.drain():
            if type(item) is AskRequest:
                item.fail(ActorStopped(ref.name, state))
                item = item.message
            self.dead_letters.record(ref.name, state, item)

    async def _await_exit(self, incarnation: Incarnation, timeout: float | None) -> ExitReason:
        if timeout is not None and timeout <= 0:
            incarnation.kill("killed at once (brutal shutdown)")
        elif timeout is not None:
            with anyio.move_on_after(timeout):
                await incarnation.done.wait()
            if not incarnation.finished:
                incarnation.kill(f"did not stop within its shutdown timeout of {timeout} s and was cancelled")
        await incarnation.done.wait()
        assert incarnation.exit_reason is not None
        return incarnation.exit_reason

    def _incarnation_ended(self, incarnation: Incarnation, reason: ExitReason) -> None:
        """Called synchronously by every instance as it ends (also when cancelled)."""
        ref = incarnation.ref
        if ref._state == RefState.STOPPED:
            return
        if incarnation.stopped_by_owner:
            ref._state = RefState.RESTARTING  # the owner decides what comes next; messages keep queueing
            return
        if incarnation.on_exit is None:
            if reason.kind is ExitKind.ERROR:
                logger.error("%s stopped after a failure: %s", ref.name, reason, exc_info=reason.exception)
            self.retire(ref, reason)
            return
        ref._state = RefState.RESTARTING
        incarnation.on_exit(ref, reason)

    async def stop_actor(self, ref: ActorRef[Any], *, timeout: float | None) -> ExitReason:
        """Stop an actor gracefully and wait for it (what :meth:`ActorRef.stop` does)."""
        incarnation = ref._incarnation
        if incarnation is not None and not incarnation.finished:
            incarnation.request_stop(owner=False)
            return await self._await_exit(incarnation, timeout)
        if ref._state == RefState.STOPPED:
            assert ref._stop_reason is not None
            return ref._stop_reason
        reason = ExitReason(kind=ExitKind.SHUTDOWN, detail="stopped while no instance was running")
        self.retire(ref, reason)
        return reason

    async def shutdown(self, *, timeout: float = 5.0) -> None:
        """Stop every top-level actor gracefully, newest first, then cancel whatever is still running.

        Supervisors stop their own children (in reverse start order) as they stop.
        """
        self._closing = True
        with anyio.move_on_after(timeout, shield=True):
            for ref in reversed(list(self._top_level)):
                if ref.is_alive:
                    await self.stop_actor(ref, timeout=timeout)
        self._task_group.cancel_scope.cancel()


@asynccontextmanager
async def open_actor_system(
    *, epoch_ms: int | None = None, dead_letter_sample: int = 100, shutdown_timeout: float = 5.0
) -> AsyncIterator[ActorSystem]:
    """Open an actor system; on exit every actor is stopped and no task is left behind.

    :param epoch_ms: pins the wall-clock anchor of the runtime clock (reproducible simulations)
    :param dead_letter_sample: how many recent dead letters to keep for inspection
    :param shutdown_timeout: how long the graceful stop of all actors may take before they are cancelled
    """
    # An error raised by the body is re-raised as itself after shutdown, not wrapped in the task group's
    # ExceptionGroup: the caller's code failed, not an actor. Cancellation is not caught and propagates as usual.
    body_error: Exception | None = None
    async with anyio.create_task_group() as task_group:
        system = ActorSystem(task_group, clock=Clock(epoch_ms=epoch_ms), dead_letters=DeadLetters(dead_letter_sample))
        try:
            yield system
        except Exception as exc:
            body_error = exc
        finally:
            await system.shutdown(timeout=shutdown_timeout)
    if body_error is not None:
        raise body_error
