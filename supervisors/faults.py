"""Fault injection: crash, hang, slow, block or flood any actor, and record what was done and when.

Every injector targets a ref (or a registered name), is seeded where it is random, bounded in time if asked, and
reversible: ``async with inject(system, "root/monitor", Crash(every=5)):`` undoes itself on exit. Each injection,
trigger and revert is appended to a :class:`FaultHistory` that checkers read afterwards (generator -> injector ->
history -> checker, as in Jepsen).
"""

from __future__ import annotations

import random
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from actors import ActorRef, ActorSystem


class InjectedFault(RuntimeError):
    """Raised by an injected crash: recognisable in logs, exit reasons and tests."""


class FaultRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the fault history.

    :param at: loop time in seconds (virtual in tests and simulations)
    :param action: ``inject``, ``trigger`` (the fault took effect once) or ``revert``
    """

    at: float
    target: str
    fault: str
    action: str
    detail: str = ""


class FaultHistory:
    """Append-only record of every injection and its effects."""

    def __init__(self) -> None:
        self.records: list[FaultRecord] = []

    def record(self, target: str, fault: str, action: str, detail: str = "") -> None:
        """Append one record, stamped with the current loop time."""
        self.records.append(
            FaultRecord(at=anyio.current_time(), target=target, fault=fault, action=action, detail=detail)
        )

    def triggers(self, fault: str | None = None, target: str | None = None) -> list[FaultRecord]:
        """The ``trigger`` records, optionally of one fault kind and/or one target."""
        return [
            r
            for r in self.records
            if r.action == "trigger" and (fault is None or r.fault == fault) and (target is None or r.target == target)
        ]

    def count(self, fault: str | None = None, target: str | None = None) -> int:
        """How many times a fault took effect."""
        return len(self.triggers(fault, target))


class Fault:
    """Base of the receive-wrapping faults. Subclasses decide, per message, whether and how to misbehave."""

    name = "fault"

    def __init__(self) -> None:
        self._target = ""
        self._history: FaultHistory | None = None

    def bind(self, target: str, history: FaultHistory) -> None:
        self._target = target
        self._history = history

    def _triggered(self, detail: str = "") -> None:
        if self._history is not None:
            self._history.record(self._target, self.name, "trigger", detail)

    def describe(self) -> str:
        """A short description for the history."""
        return self.name

    # -- the Interceptor protocol (see actors.Interceptor) --------------------------------------------------------

    def instrument(self, actor: Any) -> None:
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

    This is what a CPU-bound or blocking-I/O handler does to every other actor in the same loop.
    """

    name = "block_loop"

    def __init__(self, seconds: float, *, times: int | None = 1) -> None:
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"BlockLoop.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self.times = times
        self.blocks = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self.times is None or self.blocks < self.times:
            self.blocks += 1
            self._triggered(f"{self.seconds} s")
            time.sleep(self.seconds)  # noqa: ASYNC251  # blocking the loop is the fault being injected
        return await receive(message)


class Slow(Fault):
    """Delay each handler by ``seconds`` (awaited: the actor is slow, the loop is not blocked)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"Slow.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        self._triggered()
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
        self.count = count

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if type(message) is PoisonPill:
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


@asynccontextmanager
async def inject(
    system: ActorSystem,
    target: ActorRef[Any] | str,
    fault: Fault,
    *,
    history: FaultHistory | None = None,
    duration: float | None = None,
) -> AsyncIterator[Fault]:
    """Apply ``fault`` to ``target`` (a ref, or a name looked up now) until the block exits or ``duration`` passes.

    The fault instruments the running instance and every instance the target's supervisor starts after it.

    :param duration: revert automatically after this many seconds (the block may run on)
    """
    ref = system.lookup(target) if isinstance(target, str) else target
    history = history if history is not None else FaultHistory()
    fault.bind(ref.name, history)
    history.record(ref.name, fault.name, "inject", fault.describe())
    ref.add_interceptor(fault)
    if isinstance(fault, Poison):
        for index in range(fault.count):
            ref.tell(PoisonPill(label=f"poison-{index + 1}"))
    reverted = False

    def revert() -> None:
        nonlocal reverted
        if reverted:
            return
        reverted = True
        ref.remove_interceptor(fault)
        _uninstrument(ref)
        history.record(ref.name, fault.name, "revert")

    try:
        if duration is None:
            yield fault
        else:
            async with anyio.create_task_group() as tg:

                async def revert_later() -> None:
                    await anyio.sleep(duration)
                    revert()

                tg.start_soon(revert_later)
                yield fault
                tg.cancel_scope.cancel()
    finally:
        revert()


def flood(
    target: ActorRef[Any], make_message: Callable[[int], Any], count: int, *, history: FaultHistory | None = None
) -> int:
    """Tell ``count`` messages to ``target`` at once, without yielding (a burst no mailbox drains in between).

    :return: how many the mailbox dropped (its overflow policy applies; ``REJECT`` drops are counted too)
    """
    before = target.statistics().dropped_total
    rejected = 0
    for index in range(count):
        try:
            target.tell(make_message(index))
        except Exception:
            rejected += 1
    dropped = target.statistics().dropped_total - before
    if history is not None:
        history.record(target.name, "flood", "trigger", f"{count} messages, {dropped} dropped")
    return dropped


class LyingComponent:
    """Wraps a MonitorableComponent so that it claims ``healthy`` (and healthy-looking metrics) whatever it is.

    Pair it with a fault that makes the component actually fail (e.g. its connections dropping everything); the
    monitor's audit must see through the claim (``health_claim_mismatch``).
    """

    def __init__(self, component: Any, *, history: FaultHistory | None = None, target: str = "component") -> None:
        self.component = component
        self.history = history
        self.target = target
        self.lying = True

    async def get_health_status(self) -> dict[str, Any]:
        if not self.lying:
            return dict(_as_mapping(await self.component.get_health_status()))
        if self.history is not None:
            self.history.record(self.target, "lying_component", "trigger", "claimed healthy")
        return {"status": "healthy", "reasons": []}

    async def get_metrics(self) -> dict[str, Any]:
        metrics = dict(_as_mapping(await self.component.get_metrics()))
        if self.lying:
            metrics.pop("error_rate", None)
        return metrics

    def register_monitor_observer(self, observer: Any) -> None:
        register = getattr(self.component, "register_monitor_observer", None)
        if callable(register):
            register(observer)


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
    "Crash",
    "CrashOnStart",
    "Fault",
    "FaultHistory",
    "FaultRecord",
    "Hang",
    "InjectedFault",
    "LyingComponent",
    "Poison",
    "PoisonPill",
    "Slow",
    "flood",
    "hanging_sink",
    "inject",
    "raising_sink",
]
