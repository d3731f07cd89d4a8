from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from actors import Actor, ActorNotFound, MailboxFull, MailboxSpec, Overflow

from ._actor_faults import Fault, Poison, PoisonPill
from ._history import FaultHistory

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from types import TracebackType

    from actors import ActorRef, ActorSystem

    from .._events import SupervisionEventStream, SupervisorEvent


def _uninstrument(ref: ActorRef[Any]) -> None:
    """Restore the running instance's own methods, then re-apply the interceptors still installed."""
    actor = ref.current_instance
    if actor is None:
        return
    for attribute in ("receive", "on_start"):
        actor.__dict__.pop(attribute, None)
    for interceptor in ref._interceptors:
        interceptor.instrument(actor)


class _RevertDue(msgspec.Struct, frozen=True):
    pass


class _Reverter(Actor[_RevertDue]):
    """Reverts one injection after its duration: a timer that outlives the code that injected (``await inject``)."""

    def __init__(self, injection: Injection, duration: float) -> None:
        self._injection = injection
        self._duration = duration

    async def on_start(self) -> None:
        self.send_after(self._duration, _RevertDue())

    async def receive(self, message: _RevertDue) -> None:
        self._injection.revert()
        self.stop()


class Injection:
    """One fault applied to one target: awaited, it stays until :meth:`revert` (or its duration); used with
    ``async with``, it is reverted when the block exits.

    Made by :func:`inject` and :meth:`FaultInjector.inject`. Applying and reverting are synchronous, so a revert
    can never be lost to a cancellation.
    """

    def __init__(
        self,
        system: ActorSystem,
        target: ActorRef[Any] | str,
        fault: Fault,
        *,
        history: FaultHistory | None = None,
        duration: float | None = None,
    ) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault (Crash, Hang, ...), got {type(fault).__name__}")
        if duration is not None and not (isinstance(duration, int | float) and duration > 0):
            raise ValueError(f"duration must be > 0 seconds or None, got {duration!r}")
        self.system = system
        self.target = target
        self.fault = fault
        self.history = history if history is not None else FaultHistory()
        self.duration = duration
        self.id = 0
        self.ref: ActorRef[Any] | None = None
        self._applied = False
        self._reverted = False
        self._reverter: ActorRef[Any] | None = None

    @property
    def active(self) -> bool:
        """True between apply and revert."""
        return self._applied and not self._reverted

    def apply(self) -> Fault:
        """Instrument the target's running instance and every later one; tell it the pills of a :class:`Poison`.

        :raises ActorNotFound: when the target is a name that no live actor has
        :raises RuntimeError: when applied twice
        """
        if self._applied:
            raise RuntimeError("an Injection is applied once: make a new one")
        ref = self.system.lookup(self.target) if isinstance(self.target, str) else self.target
        self.ref = ref
        self._applied = True
        self.id = self.history.new_injection()
        fault = self.fault
        fault.bind(ref.name, self.history, self.id)
        detail = fault.describe() if self.duration is None else f"{fault.describe()} for {self.duration} s"
        self.history.record(ref.name, fault.name, "inject", detail, injection=self.id)
        ref.add_interceptor(fault)
        if isinstance(fault, Poison):
            for index in range(fault.count):
                ref.tell(PoisonPill(label=f"poison-{index + 1}"))
        if self.duration is not None:
            duration = self.duration
            self._reverter = self.system.spawn(
                lambda: _Reverter(self, duration),
                name=f"fault-reverter-{self.id}-{id(self)}",
                mailbox=MailboxSpec(capacity=2, overflow=Overflow.DROP_NEWEST),
            )
        return fault

    def revert(self) -> None:
        """Stop instrumenting new instances and restore the running one (idempotent)."""
        if not self._applied or self._reverted:
            return
        self._reverted = True
        ref = self.ref
        assert ref is not None
        ref.remove_interceptor(self.fault)
        _uninstrument(ref)
        self.history.record(ref.name, self.fault.name, "revert", injection=self.id)
        reverter = self._reverter
        if reverter is not None and reverter.is_alive:
            # Reverted before its duration: the timer actor has nothing left to do; this makes it stop now.
            reverter.tell(_RevertDue())

    def __await__(self) -> Generator[Any, None, Injection]:
        return self._applied_now().__await__()

    async def _applied_now(self) -> Injection:
        self.apply()
        return self

    async def __aenter__(self) -> Fault:
        if not self._applied:
            self.apply()
        return self.fault

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.revert()


def inject(
    system: ActorSystem,
    target: ActorRef[Any] | str,
    fault: Fault,
    *,
    history: FaultHistory | None = None,
    duration: float | None = None,
) -> Injection:
    """Apply ``fault`` to ``target`` (a ref, or a name looked up when applied).

    ``async with inject(...) as fault:`` reverts when the block exits; ``injection = await inject(...)`` keeps it
    until ``injection.revert()``. The fault instruments the running instance and every instance the target's
    supervisor starts after it (the same ref: a branch restart that makes a new ref is a new target).

    :param duration: revert automatically after this many seconds (loop time: virtual in tests)
    :raises TypeError: when ``fault`` is not a :class:`Fault`
    :raises ValueError: when ``duration`` is not > 0
    """
    return Injection(system, target, fault, history=history, duration=duration)


async def crash_once(
    system: ActorSystem, target: ActorRef[Any] | str, *, history: FaultHistory | None = None, timeout: float = 5.0
) -> bool:
    """Crash the target's current instance now, with one poison message, and wait until it has taken effect.

    The pill queues behind whatever the mailbox already holds. A name is resolved now, so after a branch restart
    the new instance is the one crashed.

    :return: True once the instance crashed; False when the target is not running (not found, detached, stopped)
        or the pill was not handled within ``timeout`` (recorded as an ``effect`` saying so)
    """
    history = history if history is not None else FaultHistory()
    try:
        ref = system.lookup(target) if isinstance(target, str) else target
    except ActorNotFound:
        history.record(str(target), "poison", "effect", "skipped: not running")
        return False
    if not ref.is_alive:
        history.record(ref.name, "poison", "effect", f"skipped: {ref.state}")
        return False
    poison = Poison(1)
    async with inject(system, ref, poison, history=history):
        with anyio.move_on_after(timeout):
            while poison.crashes == 0 and ref.is_alive:  # noqa: ASYNC110  # the condition is another actor's
                await anyio.sleep(0.001)
    if poison.crashes == 0:
        history.record(ref.name, "poison", "effect", "the pill was not handled")
        return False
    return True


class _SupervisionRecorder(Actor[Any]):
    def __init__(self, history: FaultHistory) -> None:
        self._history = history

    async def receive(self, message: Any) -> None:
        event: SupervisorEvent = message
        target = event.supervisor if event.child_id is None else f"{event.supervisor}/{event.child_id}"
        detail = " ".join(part for part in (event.kind.value, event.reason, event.detail) if part)
        self._history.record(target, "supervision", "effect", detail, at=event.at)


def record_supervision(
    system: ActorSystem, events: SupervisionEventStream, history: FaultHistory, *, capacity: int = 100_000
) -> ActorRef[Any]:
    """Copy every future supervision event (failed, restarted, detached, ...) into ``history`` as an ``effect``.

    The stream's own history is bounded (1,000 events); this keeps them all, next to the faults that caused them.

    :return: the recording actor's ref (stop it, or let the system stop it)
    """
    ref = system.spawn(
        lambda: _SupervisionRecorder(history),
        name=f"fault-supervision-recorder-{id(history)}",
        mailbox=MailboxSpec(capacity=capacity, overflow=Overflow.DROP_NEWEST),
    )
    events.subscribe(ref)
    return ref


def flood(
    target: ActorRef[Any], make_message: Callable[[int], Any], count: int, *, history: FaultHistory | None = None
) -> int:
    """Tell ``count`` messages to ``target`` at once, without yielding (a burst no mailbox drains in between).

    :return: how many the mailbox dropped (its overflow policy applies; ``REJECT`` drops are counted too)
    """
    before = target.statistics().dropped_total
    for index in range(count):
        # REJECT raises MailboxFull for each refused message; the mailbox counts it, so it is only skipped here.
        with contextlib.suppress(MailboxFull):
            target.tell(make_message(index))
    dropped = target.statistics().dropped_total - before
    if history is not None:
        history.record(target.name, "flood", "trigger", f"{count} messages, {dropped} dropped")
    return dropped


class FaultInjector:
    """Injects faults into one test's actors and reverts whatever is still applied at the end (the pytest
    plugin's ``fault_injector`` fixture).

    :param history: where every injection, trigger and effect is recorded
    """

    def __init__(self, history: FaultHistory | None = None) -> None:
        self.history = history if history is not None else FaultHistory()
        self._injections: list[Injection] = []

    def inject(
        self, system: ActorSystem, target: ActorRef[Any] | str, fault: Fault, *, duration: float | None = None
    ) -> Injection:
        """Like :func:`inject`, recorded in this injector's history and reverted by :meth:`revert_all`."""
        injection = Injection(system, target, fault, history=self.history, duration=duration)
        self._injections.append(injection)
        return injection

    async def crash_once(self, system: ActorSystem, target: ActorRef[Any] | str, *, timeout: float = 5.0) -> bool:
        """Like :func:`crash_once`, recorded in this injector's history."""
        return await crash_once(system, target, history=self.history, timeout=timeout)

    def flood(self, target: ActorRef[Any], make_message: Callable[[int], Any], count: int) -> int:
        """Like :func:`flood`, recorded in this injector's history."""
        return flood(target, make_message, count, history=self.history)

    def record_supervision(self, system: ActorSystem, events: SupervisionEventStream) -> ActorRef[Any]:
        """Like :func:`record_supervision`, into this injector's history."""
        return record_supervision(system, events, self.history)

    def revert_all(self) -> None:
        """Revert every injection still applied (newest first)."""
        for injection in reversed(self._injections):
            injection.revert()
