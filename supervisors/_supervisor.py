from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors import (
    Actor,
    ActorRef,
    ActorStartError,
    ExitKind,
    ExitReason,
    MailboxSpec,
    RefState,
)

from ._backoff import BackoffState, CooldownPhase, CooldownState
from ._events import SupervisionEventStream, SupervisorEvent, SupervisorEventKind
from ._exceptions import (
    ChildRunning,
    ChildStartError,
    DuplicateChild,
    InvalidChildSpec,
    RestartIntensityExceeded,
    UnknownChild,
)
from ._intensity import RestartWindow
from ._isolation import child_start, instance_handler_timeout
from ._spec import (
    AutoShutdown,
    ChildSpec,
    Restart,
    Shutdown,
    Strategy,
    should_restart,
    validate_intensity,
    validate_significant,
)
from ._strategies import RestartPlan, auto_shutdown_triggered, restart_plan
from ._supervisor_messages import (
    ChildBlockedLoop,
    ChildCounts,
    ChildInfo,
    ChildState,
    SupervisorHealth,
    _Admin,
    _AdminOp,
    _ChildExited,
    _ProbeCheck,
    _Query,
    _ReattachDue,
    _Refused,
    _RestartDue,
    _StartChild,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


_SupervisorMsg = Any  # the union of the private request types above; receive dispatches with match

_DEFAULT_MAILBOX = MailboxSpec()


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    dynamic: bool
    ref: ActorRef[Any] | None = None
    state: ChildState = ChildState.STOPPED
    restarts: int = 0
    # Bumped whenever a scheduled restart/re-attach/probe for this child must be forgotten.
    generation: int = 0
    # The number of the ref's instance started last (set at every start attempt): an exit notice from an earlier
    # attempt (a failed start, or an instance that exited while a restart plan was already replacing it) is stale
    # and must not count as a new failure.
    launches: int = 0
    window: RestartWindow | None = None
    backoff: BackoffState | None = None
    cooldown: CooldownState | None = None
    is_supervisor: bool = field(default=False)


def _retire_orphan(ref: ActorRef[Any], reason: ExitReason) -> None:
    """The ``on_exit`` of a child whose supervisor has stopped: nobody restarts it, so it is stopped for good."""
    ref._system.retire(ref, reason)


def _shutdown_timeout(shutdown: float | Shutdown) -> float | None:
    if shutdown is Shutdown.BRUTAL:
        return 0.0
    if shutdown is Shutdown.INFINITY:
        return None
    assert isinstance(shutdown, int | float)
    return float(shutdown)


class Supervisor(Actor[_SupervisorMsg]):
    """An actor that starts, watches and restarts its children with OTP semantics, plus our additions.

    OTP: strategies, restart types, intensity/period, ordered start and reverse-order stop with per-child
    shutdown, significant children and auto-shutdown, dynamic children. Added: backoff between restarts; children
    marked ``critical=False`` spend their own budget and are detached (then re-attached after a cool-down)
    instead of escalating; handler deadlines and loop-blocking detection count as failures.

    Usually created through :func:`start_supervisor` or nested with :func:`supervisor_spec`.
    """

    def __init__(
        self,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 1,
        period: float = 5.0,
        children: Sequence[ChildSpec] = (),
        auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
        events: SupervisionEventStream | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy member, got {strategy!r}")
        if not isinstance(auto_shutdown, AutoShutdown):
            raise TypeError(f"auto_shutdown must be an AutoShutdown member, got {auto_shutdown!r}")
        validate_intensity(intensity, period)
        for spec in children:
            validate_significant(spec, auto_shutdown)
        ids = [spec.id for spec in children]
        for child_id in ids:
            if ids.count(child_id) > 1:
                raise DuplicateChild(child_id)
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.auto_shutdown = auto_shutdown
        self._initial = tuple(children)
        self._events = events
        self._rng = random.Random(seed)
        self._window = RestartWindow(intensity, period)
        self._children: dict[str, _Child] = {}
        self._order: list[str] = []  # start order of the children we hold
        self._restarts = 0
        self._dead = False
        # Bound once: every child's instance keeps its on_exit for its lifetime (a bound method per child would be
        # one more object per live child for the cyclic GC to rescan). It refers back to this instance: replaced
        # once the supervisor has stopped, so that a stopped supervisor and its child records are freed by
        # reference counting rather than left, as cyclic garbage, to a full collection.
        self._on_child_exit: Callable[[ActorRef[Any], ExitReason], None] = self._child_exit

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def _child_prefix(self) -> str:
        """What our children's ref names start with: ours and a "/" (child ids never contain one)."""
        return self.ref.name + "/"

    @property
    def events(self) -> SupervisionEventStream:
        """The stream this supervisor publishes to (shared with nested supervisors)."""
        if self._events is None:
            self._events = SupervisionEventStream()
        return self._events

    async def on_start(self) -> None:
        for spec in self._initial:
            try:
                await self._add_and_start(spec, dynamic=False, detach_on_failure=not spec.critical)
            except ChildStartError:
                # OTP: a supervisor whose static child fails to start stops the ones it started and fails.
                await self._stop_all_children()
                raise

    async def on_stop(self, reason: ExitReason) -> None:
        await self._stop_all_children()
        self._publish(SupervisorEventKind.SHUT_DOWN, None, reason=str(reason))
        self._on_child_exit = _retire_orphan  # see __init__: unlinks this instance from itself

    def on_kill(self) -> None:
        # Cancelled: we cannot await our children's graceful stop, so cancel them and retire them as they end.
        self._dead = True
        self._on_child_exit = _retire_orphan  # see __init__ (the children being killed keep the bound method)
        for child in self._children.values():
            child.generation += 1
            ref = child.ref
            if ref is not None and ref._incarnation is not None and not ref._incarnation.finished:
                ref._incarnation.kill(f"its supervisor {self.ref.name!r} was cancelled")
            elif ref is not None and ref.state != RefState.STOPPED:  # also a detached ref: its name must be freed
                self.system.retire(ref, ExitReason(kind=ExitKind.KILLED, detail="supervisor cancelled"))

    # -- messages ------------------------------------------------------------------------------------------------

    async def receive(self, message: _SupervisorMsg) -> Any:
        match message:
            case _ChildExited():
                await self._on_child_exited(message)
            case _RestartDue():
                await self._on_restart_due(message)
            case _ReattachDue():
                await self._on_reattach_due(message)
            case _ProbeCheck():
                self._on_probe_check(message)
            case ChildBlockedLoop():
                await self._on_blocked_loop(message)
            case _StartChild():
                return await self._admin_start(message.spec)
            case _Admin():
                return await self._admin(message)
            case _Query.WHICH:
                return self._which_children()
            case _Query.COUNT:
                return self._count_children()
            case _Query.HEALTH:
                return self._health()
            case _:
                raise TypeError(f"supervisor {self.ref.name!r} got an unknown message {message!r}")
        return None

    async def _on_child_exited(self, message: _ChildExited) -> None:
        child = self._children.get(message.child_id)
        if (
            child is None
            or child.ref is not message.ref
            or child.launches != message.launch
            or child.state is not ChildState.RUNNING
        ):
            return  # stale: about an instance we already replaced or stopped
        reason = message.reason
        kind = SupervisorEventKind.FAILED if reason.is_error else SupervisorEventKind.SHUT_DOWN
        self._publish(kind, child.spec.id, reason=str(reason))
        if not should_restart(child.spec.restart, reason.is_error):
            self._finish(child, reason)
            return
        await self._recover(child, reason)

    def _finish(self, child: _Child, reason: ExitReason) -> None:
        """A child exited on its own and is not restarted: keep it listed (transient) or remove it (temporary)."""
        assert child.ref is not None
        self.system.retire(child.ref, reason)
        child.ref = None
        child.state = ChildState.STOPPED
        if child.spec.restart is Restart.TEMPORARY:
            self._forget(child.spec.id)
        if child.spec.significant:
            remaining = sum(
                1
                for other in self._children.values()
                if other.spec.significant and other.state is not ChildState.STOPPED
            )
            if auto_shutdown_triggered(self.auto_shutdown, exited_significant=True, remaining_significant=remaining):
                self._publish(SupervisorEventKind.SHUT_DOWN, child.spec.id, reason="auto_shutdown")
                self.stop()

    async def _recover(self, child: _Child, reason: ExitReason) -> None:
        """Restart a failed child as its criticality, budget, backoff and our strategy say; may escalate."""
        now = self.clock.now()
        child_id = child.spec.id
        if not child.spec.critical:
            assert child.window is not None
            assert child.cooldown is not None
            if child.cooldown.phase is CooldownPhase.PROBING or not child.window.add_restart(now):
                self._detach(child, now, reason)
                return
            plan = RestartPlan(failed=child_id, stop=(), start=(child_id,))
        else:
            if not self._window.add_restart(now):
                await self._escalate(child_id, reason, now)
            # A detached child is out of service until its own cool-down ends: a sibling's restart leaves it be.
            in_service = [cid for cid in self._order if self._children[cid].state is not ChildState.DETACHED]
            plan = restart_plan(
                self.strategy,
                in_service,
                child_id,
                restart_types={cid: c.spec.restart for cid, c in self._children.items()},
            )
        delay = 0.0
        if child.backoff is not None:
            next_delay = child.backoff.next_delay(now)
            if next_delay is None:
                if child.spec.critical:
                    await self._escalate(child_id, reason, now, detail="backoff max_restarts reached")
                self._detach(child, now, reason)
                return
            delay = next_delay
        child.state = ChildState.RESTARTING
        for sibling_id in plan.stop:
            await self._stop_child(self._children[sibling_id], then=ChildState.RESTARTING)
        for sibling_id in plan.remove:
            self._forget(sibling_id)
        group = tuple(cid for cid in plan.start if cid in self._children)
        if delay > 0:
            child.generation += 1
            self._publish(SupervisorEventKind.RESTART_SCHEDULED, child_id, detail=f"in {delay:.3f} s")
            self.send_after(delay, _RestartDue(child_id=child_id, generation=child.generation, group=group))
            return
        await self._start_group(group)

    async def _start_group(self, group: tuple[str, ...]) -> None:
        for child_id in group:
            child = self._children.get(child_id)
            if child is None or child.state is not ChildState.RESTARTING:
                continue
            try:
                await self._launch(child)
            except ChildStartError as exc:
                # A restart whose start raises is one more failure of that child: it counts against the budget,
                # so a child that can never start ends in escalation (or detachment), never in a busy loop.
                reason = ExitReason.error(exc.cause, f"restart failed: {exc.cause!r}")
                self._publish(SupervisorEventKind.FAILED, child_id, reason=str(reason))
                child.state = ChildState.RUNNING  # so that _recover treats it as the failed, exited child
                await self._recover(child, reason)
                if child.spec.critical:
                    return  # _recover re-planned the whole group (or escalated)
                continue  # a non-critical child's failure is its own: the rest of the group still starts
            child.restarts += 1
            self._restarts += 1
            self._publish(SupervisorEventKind.RESTARTED, child_id)

    async def _on_restart_due(self, message: _RestartDue) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.generation != message.generation or child.state is not ChildState.RESTARTING:
            return
        await self._start_group(message.group)

    def _detach(self, child: _Child, now: float, reason: ExitReason) -> None:
        assert child.ref is not None
        assert child.cooldown is not None
        self.system.detach(child.ref)
        child.state = ChildState.DETACHED
        child.generation += 1
        reattach_at = child.cooldown.on_detach(now)
        self._publish(
            SupervisorEventKind.DETACHED,
            child.spec.id,
            reason=str(reason),
            detail=f"re-attach in {reattach_at - now:.3f} s",
        )
        self.send_after(reattach_at - now, _ReattachDue(child_id=child.spec.id, generation=child.generation))

    async def _on_reattach_due(self, message: _ReattachDue) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.generation != message.generation or child.state is not ChildState.DETACHED:
            return
        assert child.ref is not None
        assert child.cooldown is not None
        assert child.window is not None
        now = self.clock.now()
        self.system.reattach(child.ref)
        child.cooldown.on_reattach(now)
        child.window.reset()
        if child.backoff is not None:
            child.backoff.reset()
        try:
            await self._launch(child)
        except ChildStartError as exc:
            self._detach(child, now, ExitReason.error(exc.cause, f"re-attach probe failed to start: {exc.cause!r}"))
            return
        child.restarts += 1
        self._restarts += 1
        self._publish(SupervisorEventKind.REATTACHED, child.spec.id, detail="half-open probe")
        self.send_after(child.spec.period, _ProbeCheck(child_id=child.spec.id, generation=child.generation))

    def _on_probe_check(self, message: _ProbeCheck) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.generation != message.generation or child.cooldown is None:
            return
        # Timed to fire no earlier than the probe is due (it is set after the probe's start was recorded); the
        # judgement's own tolerance covers the float rounding of "exactly due".
        child.cooldown.probe_passed(self.clock.now())

    async def _on_blocked_loop(self, message: ChildBlockedLoop) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.ref is None or child.state is not ChildState.RUNNING:
            return
        detail = f"blocked the event loop for {message.seconds:.3f} s"
        self._publish(SupervisorEventKind.BLOCKED_LOOP, child.spec.id, detail=detail)
        await self.system.stop_incarnation(child.ref, timeout=0)
        reason = ExitReason(kind=ExitKind.ERROR, detail=detail)
        self._publish(SupervisorEventKind.FAILED, child.spec.id, reason=str(reason))
        if not should_restart(child.spec.restart, reason.is_error):
            self._finish(child, reason)  # a temporary child: removed, never restarted
            return
        await self._recover(child, reason)

    async def _escalate(self, child_id: str, reason: ExitReason, now: float, detail: str = "") -> None:
        restarts = self._window.restarts(now)
        self._publish(
            SupervisorEventKind.ESCALATED,
            child_id,
            reason=str(reason),
            detail=detail or f"{len(restarts)} restarts within {self.period} s (intensity {self.intensity})",
        )
        await self._stop_all_children()
        raise RestartIntensityExceeded(self.ref.name, self.intensity, self.period, restarts, child_id)

    # -- starting and stopping children --------------------------------------------------------------------------

    async def _add_and_start(self, spec: ChildSpec, *, dynamic: bool, detach_on_failure: bool = False) -> _Child:
        if spec.id in self._children:
            raise DuplicateChild(spec.id)
        child = _Child(spec=spec, dynamic=dynamic)
        if not spec.critical:
            child.window = RestartWindow(spec.intensity, spec.period)
            child.cooldown = CooldownState(spec.detach_cooldown, spec.max_detach_cooldown, stable_after=spec.period)
        if spec.backoff is not None:
            child.backoff = BackoffState(spec.backoff, random.Random(self._rng.random()))
        self._children[spec.id] = child
        self._order.append(spec.id)
        try:
            await self._launch(child)
        except ChildStartError as exc:
            if detach_on_failure and child.ref is not None:
                # Graceful degradation: a non-critical child that cannot start does not stop its supervisor from
                # starting; it starts detached and is retried after its cool-down.
                self._detach(child, self.clock.now(), ExitReason.error(exc.cause, f"start failed: {exc.cause!r}"))
                return child
            self._forget(spec.id)
            raise
        return child

    async def _launch(self, child: _Child) -> None:
        """Start an instance behind the child's ref (creating the ref the first time)."""
        spec = child.spec
        system = self.system
        if child.ref is None or not child.ref.is_alive:
            mailbox = spec.mailbox if isinstance(spec.mailbox, MailboxSpec) else _DEFAULT_MAILBOX
            child.ref = system.create_ref(spec.start, name=self._child_prefix + spec.id, mailbox=mailbox)
        ref = child.ref
        # The instance about to start is the ref's next one: its exit notice carries that number (see _child_exit).
        child.launches = ref._incarnations + 1
        try:
            await system.start_incarnation(
                ref,
                self._factory(child),
                on_exit=self._on_child_exit,
                handler_timeout=instance_handler_timeout(spec),
            )
        except ActorStartError as exc:
            child.state = ChildState.RESTARTING
            raise ChildStartError(spec.id, exc.cause if isinstance(exc.cause, BaseException) else exc) from exc
        child.state = ChildState.RUNNING
        self._publish(SupervisorEventKind.STARTED, spec.id)

    def _factory(self, child: _Child) -> Callable[[], Actor[Any]]:
        spec = child.spec
        start = child_start(spec)  # spec.start, or a ProcessHost for a process-isolated child

        def build() -> Actor[Any]:
            instance = start()
            if not isinstance(instance, Actor):
                raise TypeError(f"ChildSpec.start of {spec.id!r} must return an Actor, got {type(instance).__name__}")
            if isinstance(instance, Supervisor):
                child.is_supervisor = True
                if instance._events is None:
                    instance._events = self.events  # one event stream per tree
            return instance

        return build

    def _child_exit(self, ref: ActorRef[Any], reason: ExitReason) -> None:
        """Every child's ``on_exit``, called in the child's task as its instance ends.

        One bound method for all children rather than a closure per child: a closure and its cells per live child
        were five more objects for the cyclic GC to rescan (bench/supervisor_scale.py). The child's id is its
        ref's name after ours and the "/", and the ref's instance count says which start of it this instance was.
        """
        if self._dead:
            self.system.retire(ref, reason)
            return
        child_id = ref.name[len(self._child_prefix) :]
        # A control message: never dropped, even when our mailbox is full of admin requests.
        self.ref.tell_control(_ChildExited(child_id=child_id, ref=ref, reason=reason, launch=ref._incarnations))

    async def _stop_child(self, child: _Child, *, then: ChildState) -> None:
        """Stop a child's instance (graceful, then cancelled after its shutdown timeout)."""
        child.generation += 1
        ref = child.ref
        if ref is not None:
            exited = await self.system.stop_incarnation(ref, timeout=_shutdown_timeout(child.spec.shutdown))
            self._child_stopped(child, ref, exited, then)
        child.state = then

    def _child_stopped(self, child: _Child, ref: ActorRef[Any], exited: ExitReason | None, then: ChildState) -> None:
        if exited is not None:
            # The real reason: "cancelled after its shutdown timeout" must not read as a graceful stop.
            self._publish(SupervisorEventKind.SHUT_DOWN, child.spec.id, reason=str(exited))
        if then is ChildState.STOPPED:
            if ref.state != RefState.STOPPED:
                if exited is None:
                    exited = ExitReason(kind=ExitKind.SHUTDOWN, detail="terminated by its supervisor")
                self.system.retire(ref, exited)
            child.ref = None
        child.state = then

    async def _stop_all_children(self) -> None:
        """Dynamic children in parallel, then static children in reverse start order (OTP)."""
        running = [self._children[cid] for cid in reversed(self._order) if cid in self._children]
        dynamic = [child for child in running if child.dynamic]
        if dynamic:
            await self._stop_in_parallel_for_good(dynamic)
        for child in running:
            if not child.dynamic:
                await self._stop_child_for_good(child)

    async def _stop_in_parallel_for_good(self, children: list[_Child]) -> None:
        """Stop children all at once, each within its own shutdown timeout, from this one task (no task each)."""
        stopping: list[_Child] = []
        refs: list[ActorRef[Any]] = []
        for child in children:
            child.generation += 1
            if child.ref is None:
                child.state = ChildState.STOPPED
            else:
                stopping.append(child)
                refs.append(child.ref)

        def stopped(index: int, exited: ExitReason | None) -> None:
            self._child_stopped(stopping[index], refs[index], exited, ChildState.STOPPED)

        timeouts = [_shutdown_timeout(child.spec.shutdown) for child in stopping]
        await self.system.stop_incarnations(refs, timeouts, each=stopped)

    async def _stop_child_for_good(self, child: _Child) -> None:
        await self._stop_child(child, then=ChildState.STOPPED)

    def _forget(self, child_id: str) -> None:
        child = self._children.pop(child_id, None)
        if child is None:
            return
        self._order.remove(child_id)
        child.generation += 1
        if child.ref is not None and child.ref.state != RefState.STOPPED:
            incarnation = child.ref._incarnation
            if incarnation is None or incarnation.finished:
                self.system.retire(child.ref, ExitReason(kind=ExitKind.SHUTDOWN, detail="removed"))

    # -- admin calls ---------------------------------------------------------------------------------------------

    async def _admin_start(self, spec: ChildSpec) -> Any:
        try:
            validate_significant(spec, self.auto_shutdown)
            child = await self._add_and_start(spec, dynamic=True)
        except (DuplicateChild, ChildStartError, InvalidChildSpec) as exc:
            return _Refused(exc)
        return child.ref

    async def _admin(self, request: _Admin) -> Any:
        child = self._children.get(request.child_id)
        if child is None:
            if request.op is _AdminOp.TERMINATE:
                return None  # idempotent, as OTP's terminate_child of an unknown temporary child
            return _Refused(UnknownChild(request.child_id))
        if request.op is _AdminOp.TERMINATE:
            await self._stop_child(child, then=ChildState.STOPPED)
            if child.spec.restart is Restart.TEMPORARY:
                self._forget(child.spec.id)
            return None
        if child.state is not ChildState.STOPPED:
            return _Refused(ChildRunning(request.child_id, request.op.value))
        if request.op is _AdminOp.DELETE:
            self._forget(request.child_id)
            return None
        if child.cooldown is not None:
            child.cooldown.reset()
            assert child.window is not None
            child.window.reset()
        if child.backoff is not None:
            child.backoff.reset()
        try:
            await self._launch(child)
        except ChildStartError as exc:
            await self._stop_child(child, then=ChildState.STOPPED)  # retires the ref made for this attempt
            return _Refused(exc)
        return child.ref

    def _which_children(self) -> list[ChildInfo]:
        return [
            ChildInfo(
                id=cid,
                ref=child.ref if child.state is ChildState.RUNNING else None,
                state=child.state,
                restart=child.spec.restart,
                critical=child.spec.critical,
                is_supervisor=child.is_supervisor,
                restarts=child.restarts,
            )
            for cid in self._order
            if (child := self._children[cid])
        ]

    def _count_children(self) -> ChildCounts:
        children = list(self._children.values())
        return ChildCounts(
            specs=len(children),
            active=sum(1 for c in children if c.state is ChildState.RUNNING),
            supervisors=sum(1 for c in children if c.is_supervisor),
            workers=sum(1 for c in children if not c.is_supervisor),
            restarting=sum(1 for c in children if c.state is ChildState.RESTARTING),
            detached=sum(1 for c in children if c.state is ChildState.DETACHED),
        )

    def _health(self) -> SupervisorHealth:
        detached = tuple(cid for cid in self._order if self._children[cid].state is ChildState.DETACHED)
        restarting = tuple(cid for cid in self._order if self._children[cid].state is ChildState.RESTARTING)
        return SupervisorHealth(
            status="degraded" if detached or restarting else "healthy",
            detached=detached,
            restarting=restarting,
            restarts=self._restarts,
        )

    def _publish(self, kind: SupervisorEventKind, child_id: str | None, *, reason: str = "", detail: str = "") -> None:
        self.events.publish(
            SupervisorEvent(
                kind=kind,
                supervisor=self.ref.name,
                child_id=child_id,
                strategy=self.strategy.value,
                reason=reason,
                detail=detail,
                at=self.clock.now(),
            )
        )
