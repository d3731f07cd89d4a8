"""Fault injection: crash, hang, slow, block or flood any actor or client, record it, and check what survived.

Every injector targets a ref (or a registered name), is seeded where it is random, bounded in time if asked, and
reversible: ``async with inject(system, "agentwatch/monitoring/monitor", Crash(every=5)):`` undoes itself on exit.
Each injection, trigger, observed effect and revert is appended to a :class:`FaultHistory`, which checkers read
afterwards (generator -> injector -> history -> checker, as in Jepsen). See ``docs/fault-injection.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from actors import Actor, ActorNotFound, MailboxFull, MailboxSpec, Overflow

from ._fault_checks import (
    BudgetReport,
    CheckFailed,
    CheckResult,
    LatencyComparison,
    added_latency,
    anomaly_keys,
    check_bridge_accounting,
    check_delivery,
    check_exactly_once,
    check_history,
    check_mailbox,
    critical_path_budget,
)
from ._fault_clients import BridgeClient, ClientClose, ClientSink, Delivery, DeliveryLog
from ._fault_plan import FrameMutation, Schedule, malformed_frames, run_schedule

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator
    from types import TracebackType

    from actors import ActorRef, ActorSystem

    from ._events import SupervisionEventStream, SupervisorEvent


class InjectedFault(RuntimeError):
    """Raised by an injected crash: recognisable in logs, exit reasons and tests."""


class FaultRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the fault history.

    :param at: loop time in seconds (virtual in tests and simulations)
    :param target: the actor, client or component the line is about
    :param fault: the fault's name (``crash``, ``slow_reader``, ...) or ``supervision`` for observed tree events
    :param action: ``inject``, ``trigger`` (the fault took effect once), ``effect`` (a consequence observed: a
        restart, a close code, a resume) or ``revert``
    :param injection: which injection the line belongs to (0 for lines that belong to none)
    """

    at: float
    target: str
    fault: str
    action: str
    detail: str = ""
    injection: int = 0


class FaultHistory:
    """Append-only record of every injection, its triggers, the effects observed and its revert."""

    def __init__(self) -> None:
        self.records: list[FaultRecord] = []
        self._injections = itertools.count(1)

    def __len__(self) -> int:
        return len(self.records)

    def new_injection(self) -> int:
        """A fresh injection id, to tie an injection's lines together."""
        return next(self._injections)

    def record(
        self,
        target: str,
        fault: str,
        action: str,
        detail: str = "",
        *,
        at: float | None = None,
        injection: int = 0,
    ) -> FaultRecord:
        """Append one record, stamped with the current loop time unless ``at`` is given.

        :raises ValueError: when ``action`` is not one of inject, trigger, effect, revert
        """
        if action not in _ACTIONS:
            raise ValueError(f"action must be one of {', '.join(sorted(_ACTIONS))}, got {action!r}")
        record = FaultRecord(
            at=anyio.current_time() if at is None else at,
            target=target,
            fault=fault,
            action=action,
            detail=detail,
            injection=injection,
        )
        self.records.append(record)
        return record

    def select(
        self, *, action: str | None = None, fault: str | None = None, target: str | None = None
    ) -> list[FaultRecord]:
        """The records matching every filter given, in order."""
        return [
            r
            for r in self.records
            if (action is None or r.action == action)
            and (fault is None or r.fault == fault)
            and (target is None or r.target == target)
        ]

    def triggers(self, fault: str | None = None, target: str | None = None) -> list[FaultRecord]:
        """The ``trigger`` records, optionally of one fault kind and/or one target."""
        return self.select(action="trigger", fault=fault, target=target)

    def effects(self, fault: str | None = None, target: str | None = None) -> list[FaultRecord]:
        """The ``effect`` records, optionally of one fault kind and/or one target."""
        return self.select(action="effect", fault=fault, target=target)

    def count(self, fault: str | None = None, target: str | None = None) -> int:
        """How many times a fault took effect."""
        return len(self.triggers(fault, target))

    def to_jsonl(self) -> bytes:
        """The history as JSON lines (one record per line), for a test report or a bug attachment."""
        return b"".join(_encoder.encode(record) + b"\n" for record in self.records)


_ACTIONS = frozenset({"inject", "trigger", "effect", "revert"})
_encoder = msgspec.json.Encoder()


class Fault:
    """Base of the receive-wrapping faults. Subclasses decide, per message, whether and how to misbehave."""

    name = "fault"

    def __init__(self) -> None:
        self._target = ""
        self._history: FaultHistory | None = None
        self._injection = 0

    def bind(self, target: str, history: FaultHistory, injection: int = 0) -> None:
        """Attach the fault to the history its triggers go to (done by :func:`inject`)."""
        self._target = target
        self._history = history
        self._injection = injection

    def _triggered(self, detail: str = "") -> None:
        if self._history is not None:
            self._history.record(self._target, self.name, "trigger", detail, injection=self._injection)

    def describe(self) -> str:
        """A short description for the history."""
        return self.name

    # -- the Interceptor protocol (see actors.Interceptor) --------------------------------------------------------

    def instrument(self, actor: Any) -> None:
        """Wrap the instance's ``receive`` with :meth:`around` (called for every new instance behind the ref)."""
        inner: Callable[[Any], Awaitable[Any]] = actor.receive

        async def receive(message: Any) -> Any:
            return await self.around(inner, message)

        actor.receive = receive

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        """Handle one message, misbehaving when the fault says so; by default pass it through."""
        return await receive(message)


class Crash(Fault):
    """Raise :class:`InjectedFault` in the handler: on the next message, on every n-th, or with probability p.

    :param every: crash on every ``every``-th message (1 = every message)
    :param probability: crash each message with this probability (seeded)
    :param times: stop crashing after this many crashes (None: no limit)
    :param seed: seeds the probability draws
    """

    name = "crash"

    def __init__(
        self, *, every: int | None = None, probability: float | None = None, times: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        if every is None and probability is None:
            every, times = 1, 1 if times is None else times  # the default: crash on the next message, once
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"Crash.every must be an int >= 1, got {every!r}")
        if probability is not None and not 0 <= probability <= 1:
            raise ValueError(f"Crash.probability must be within [0, 1], got {probability!r}")
        if times is not None and times < 0:
            raise ValueError(f"Crash.times must be >= 0 or None, got {times!r}")
        self.every = every
        self.probability = probability
        self.times = times
        self._rng = random.Random(seed)
        self._seen = 0
        self.crashes = 0

    def describe(self) -> str:
        if self.probability is not None:
            return f"crash p={self.probability}"
        return f"crash every={self.every} times={self.times}"

    def _should_crash(self) -> bool:
        if self.times is not None and self.crashes >= self.times:
            return False
        self._seen += 1
        if self.every is not None:
            return self._seen % self.every == 0
        assert self.probability is not None
        return self._rng.random() < self.probability

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self._should_crash():
            self.crashes += 1
            self._triggered(f"on {type(message).__name__}")
            raise InjectedFault(f"injected crash #{self.crashes} ({self.describe()})")
        return await receive(message)


class CrashOnStart(Fault):
    """Make ``on_start`` of the next ``times`` instances raise (a restart that fails to start)."""

    name = "crash_on_start"

    def __init__(self, *, times: int | None = 1) -> None:
        super().__init__()
        self.times = times
        self.crashes = 0

    def instrument(self, actor: Any) -> None:
        super().instrument(actor)
        inner = actor.on_start

        async def on_start() -> None:
            if self.times is None or self.crashes < self.times:
                self.crashes += 1
                self._triggered()
                raise InjectedFault(f"injected on_start failure #{self.crashes}")
            await inner()

        actor.on_start = on_start


class Hang(Fault):
    """The next ``times`` handlers await forever (until the handler deadline or a stop cancels them)."""

    name = "hang"

    def __init__(self, *, times: int | None = 1) -> None:
        super().__init__()
        self.times = times
        self.hangs = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self.times is None or self.hangs < self.times:
            self.hangs += 1
            self._triggered(f"on {type(message).__name__}")
            await anyio.sleep_forever()
        return await receive(message)


class BlockLoop(Fault):
    """Block the event loop synchronously (``time.sleep``) for ``seconds`` in the next ``times`` handlers.

    This is what a CPU-bound or blocking-I/O handler does to every other actor in the same loop. The trigger
    record's detail gives the stall measured on the real clock.
    """

    name = "block_loop"

    def __init__(self, seconds: float, *, times: int | None = 1) -> None:
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"BlockLoop.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self.times = times
        self.blocks = 0
        #: The real time each block held the loop, in seconds.
        self.stalls: list[float] = []

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self.times is None or self.blocks < self.times:
            self.blocks += 1
            began = time.perf_counter()
            time.sleep(self.seconds)  # noqa: ASYNC251  # blocking the loop is the fault being injected
            stall = time.perf_counter() - began
            self.stalls.append(stall)
            self._triggered(f"{self.seconds} s requested, loop held {stall:.3f} s")
        return await receive(message)


class Slow(Fault):
    """Delay each handler by ``seconds`` (awaited: the actor is slow, the loop is not blocked)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"Slow.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self.delayed = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        # One trigger record (the first delay), then counted: a slowed actor handles thousands of messages.
        self.delayed += 1
        if self.delayed == 1:
            self._triggered(f"{self.seconds} s per message")
        await anyio.sleep(self.seconds)
        return await receive(message)


class PoisonPill(msgspec.Struct, frozen=True):
    """The message :class:`Poison` makes deadly: whoever handles it raises :class:`InjectedFault`."""

    label: str = "poison"


class Poison(Fault):
    """Arm the target so that a :class:`PoisonPill` crashes it; :func:`inject` then tells it one pill per ``count``."""

    name = "poison"

    def __init__(self, count: int = 1) -> None:
        super().__init__()
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"Poison.count must be an int >= 0, got {count!r}")
        self.count = count
        self.crashes = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if type(message) is PoisonPill:
            self.crashes += 1
            self._triggered(message.label)
            raise InjectedFault(f"poison message {message.label!r}")
        return await receive(message)


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


class LyingComponent:
    """Wraps a MonitorableComponent so that it claims ``healthy`` (and healthy-looking metrics) whatever it is.

    Pair it with a fault that makes the component actually fail (e.g. its clients stop reading); the monitor's
    audit must see through the claim (``health_claim_mismatch``). While :attr:`lying`, the health changes the
    component pushes to its observers are withheld too: a liar never volunteers bad news.
    """

    def __init__(self, component: Any, *, history: FaultHistory | None = None, target: str = "component") -> None:
        self.component = component
        self.history = history
        self.target = target
        self.lying = True

    async def get_health_status(self) -> dict[str, Any]:
        """The claim: ``healthy`` while lying, the component's own report otherwise."""
        if not self.lying:
            return dict(_as_mapping(await self.component.get_health_status()))
        if self.history is not None:
            self.history.record(self.target, "lying_component", "trigger", "claimed healthy")
        return {"status": "healthy", "reasons": []}

    async def get_metrics(self) -> dict[str, Any]:
        """The component's metrics, without the error rate while lying."""
        metrics = dict(_as_mapping(await self.component.get_metrics()))
        if self.lying:
            metrics.pop("error_rate", None)
        return metrics

    def register_monitor_observer(self, observer: Any) -> None:
        """Register a filter with the component that passes health changes on only while honest."""
        register = getattr(self.component, "register_monitor_observer", None)
        if callable(register):
            register(_WithheldWhileLying(self, observer))


class _WithheldWhileLying:
    def __init__(self, liar: LyingComponent, observer: Any) -> None:
        self._liar = liar
        self._observer = observer

    def on_component_health_change(self, component_id: str, health: Any) -> Any:
        if self._liar.lying:
            if self._liar.history is not None:
                self._liar.history.record(self._liar.target, "lying_component", "trigger", "withheld a health change")
            return None
        return self._observer.on_component_health_change(component_id, health)


def _as_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, msgspec.Struct):
        plain = msgspec.to_builtins(value)
        return plain if isinstance(plain, dict) else {"value": plain}
    return {"value": value}


def raising_sink(history: FaultHistory | None = None) -> Callable[[Any], None]:
    """An alert sink that raises on every alert (detection must go on)."""

    def sink(anomaly: Any) -> None:
        if history is not None:
            history.record("alert_sink", "raising_sink", "trigger")
        raise InjectedFault("injected alert sink failure")

    return sink


def hanging_sink(history: FaultHistory | None = None) -> Callable[[Any], Awaitable[None]]:
    """An async alert sink that never returns (the dispatcher's timeout must cut it off)."""

    async def sink(anomaly: Any) -> None:
        if history is not None:
            history.record("alert_sink", "hanging_sink", "trigger")
        await anyio.sleep_forever()

    return sink


__all__ = [
    "BlockLoop",
    "BridgeClient",
    "BudgetReport",
    "CheckFailed",
    "CheckResult",
    "ClientClose",
    "ClientSink",
    "Crash",
    "CrashOnStart",
    "Delivery",
    "DeliveryLog",
    "Fault",
    "FaultHistory",
    "FaultInjector",
    "FaultRecord",
    "FrameMutation",
    "Hang",
    "InjectedFault",
    "Injection",
    "LatencyComparison",
    "LyingComponent",
    "Poison",
    "PoisonPill",
    "Schedule",
    "Slow",
    "added_latency",
    "anomaly_keys",
    "check_bridge_accounting",
    "check_delivery",
    "check_exactly_once",
    "check_history",
    "check_mailbox",
    "crash_once",
    "critical_path_budget",
    "flood",
    "hanging_sink",
    "inject",
    "malformed_frames",
    "raising_sink",
    "record_supervision",
    "run_schedule",
]
