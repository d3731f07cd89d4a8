from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors import ActorRef, ActorSystem, ExitReason, MailboxSpec

from ._events import SupervisionEventStream
from ._spec import AutoShutdown, ChildSpec, Restart, Shutdown, Strategy
from ._supervisor import Supervisor
from ._supervisor_messages import (
    ChildCounts,
    ChildInfo,
    SupervisorHealth,
    _Admin,
    _AdminOp,
    _Query,
    _Refused,
    _StartChild,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


class SupervisorRef:
    """The handle to a running supervisor: OTP's admin and introspection calls, plus health and events.

    Every call is an ``ask`` to the supervisor actor, so it is serialised with the supervisor's own work.
    """

    def __init__(self, ref: ActorRef[Any], events: SupervisionEventStream) -> None:
        self.ref = ref
        self.events = events

    @property
    def name(self) -> str:
        return self.ref.name

    async def _call(self, request: Any, timeout: float | None) -> Any:
        result = await self.ref.ask(request, timeout=timeout)
        if isinstance(result, _Refused):
            raise result.error
        return result

    async def start_child(self, spec: ChildSpec, *, timeout: float | None = 30.0) -> ActorRef[Any]:
        """Add a dynamic child and start it.

        :raises DuplicateChild: when a child with that id exists
        :raises ChildStartError: when it failed to start (it is not added)
        """
        ref: ActorRef[Any] = await self._call(_StartChild(spec), timeout)
        return ref

    async def terminate_child(self, child_id: str, *, timeout: float | None = 30.0) -> None:
        """Stop a child and keep its spec (a temporary child is removed). Idempotent."""
        await self._call(_Admin(_AdminOp.TERMINATE, child_id), timeout)

    async def restart_child(self, child_id: str, *, timeout: float | None = 30.0) -> ActorRef[Any]:
        """Start a stopped child again (a fresh ref).

        :raises ChildRunning: when the child is not stopped
        :raises UnknownChild: when there is no such child
        """
        ref: ActorRef[Any] = await self._call(_Admin(_AdminOp.RESTART, child_id), timeout)
        return ref

    async def delete_child(self, child_id: str, *, timeout: float | None = 30.0) -> None:
        """Forget a stopped child's spec.

        :raises ChildRunning: when the child is not stopped
        :raises UnknownChild: when there is no such child
        """
        await self._call(_Admin(_AdminOp.DELETE, child_id), timeout)

    async def which_children(self, *, timeout: float | None = 30.0) -> list[ChildInfo]:
        """Every child in start order: id, ref (None unless running), state, restart type, criticality."""
        children: list[ChildInfo] = await self._call(_Query.WHICH, timeout)
        return children

    async def count_children(self, *, timeout: float | None = 30.0) -> ChildCounts:
        """Counts by kind and state."""
        counts: ChildCounts = await self._call(_Query.COUNT, timeout)
        return counts

    async def health(self, *, timeout: float | None = 30.0) -> SupervisorHealth:
        """``healthy``, or ``degraded`` with the detached and restarting children."""
        health: SupervisorHealth = await self._call(_Query.HEALTH, timeout)
        return health

    async def stop(self, *, timeout: float | None = None) -> ExitReason:
        """Stop the supervisor: its children stop first, in reverse start order."""
        return await self.ref.stop(timeout=timeout)


def supervisor_spec(
    id: str,  # noqa: A002  # OTP's and ChildSpec's name for it
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 1,
    period: float = 5.0,
    children: Sequence[ChildSpec] = (),
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
    restart: Restart = Restart.PERMANENT,
    critical: bool = True,
    **child_options: Any,
) -> ChildSpec:
    """A ChildSpec for a nested supervisor (shutdown ``INFINITY``, as OTP recommends for supervisors).

    Extra keyword arguments go to :class:`ChildSpec` (e.g. ``detach_cooldown`` for a non-critical branch).

    :raises InvalidChildSpec: when a child spec, or the spec built here, breaks a rule
    :raises DuplicateChild: when two children share an id
    :raises ValueError: when ``intensity`` or ``period`` breaks its rule (``TypeError`` for a wrong type)
    """

    def start() -> Supervisor:
        return Supervisor(
            strategy=strategy, intensity=intensity, period=period, children=children, auto_shutdown=auto_shutdown
        )

    start()  # validates the arguments now, so a bad one raises here and not when the parent starts
    child_options.setdefault("shutdown", Shutdown.INFINITY)
    return ChildSpec(id, start, restart=restart, critical=critical, **child_options)


async def start_supervisor(
    system: ActorSystem,
    *,
    name: str,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 1,
    period: float = 5.0,
    children: Sequence[ChildSpec] = (),
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
    events: SupervisionEventStream | None = None,
    mailbox: MailboxSpec | None = None,
    seed: int | None = None,
) -> SupervisorRef:
    """Start a top-level supervisor and its children (in order); return once all of them have started.

    :raises ActorStartError: when a child failed to start (the ones started are stopped again)
    :raises InvalidChildSpec: when a child is not allowed under this supervisor (a significant child with
        ``AutoShutdown.NEVER``)
    :raises DuplicateChild: when two children share an id
    :raises ValueError: when ``intensity`` or ``period`` breaks its rule (``TypeError`` for a wrong type)
    """
    stream = events if events is not None else SupervisionEventStream()
    # Built here, not in the actor's start-up, so that a bad argument raises its own error (a ValueError) rather
    # than an ActorStartError; a top-level supervisor runs exactly one instance.
    supervisor = Supervisor(
        strategy=strategy,
        intensity=intensity,
        period=period,
        children=children,
        auto_shutdown=auto_shutdown,
        events=stream,
        seed=seed,
    )

    def build() -> Supervisor:
        return supervisor

    ref = await system.start(build, name=name, mailbox=mailbox or MailboxSpec(capacity=10_000))
    return SupervisorRef(ref, stream)
