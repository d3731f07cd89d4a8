from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from actors import ActorError, ActorNotFound
from actors.chat._monitor import CheckHealth, SetMonitoring

from ._supervisor_ref import SupervisorRef
from .app import COMPONENTS, MONITORING
from .faults import Crash, FaultHistory, Hang, crash_once, flood, inject

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from actors import ActorRef
    from actors.chat._anomaly import Anomaly

    from ._supervisor_messages import ChildInfo
    from .app import Runtime

logger = logging.getLogger("agentwatch.dashboard")

#: How many anomalies, supervision events and fault records a snapshot carries (newest first).
_RECENT: Final = 30
#: The target of the fault history's lines that say what a dashboard fault did in the end.
DASHBOARD_TARGET: Final = "dashboard"


class RunInFlight(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One run the dashboard lists as in flight (from the application's own source of truth).

    :param phase: what it is doing now (``thinking``, ``tool: search``, ``answering``)
    :param started_at: ms since the epoch
    """

    thread_id: str
    run_id: str
    phase: str
    started_at: int


class TreeNode(msgspec.Struct, frozen=True, kw_only=True):
    """One child in the supervision tree as the dashboard draws it."""

    id: str
    state: str
    restarts: int
    critical: bool
    children: tuple[TreeNode, ...] = ()


class ThreadRow(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A thread with subscribers: how many, and the highest seq any of them was sent."""

    thread_id: str
    subscribers: int
    delivered_seq: int


class DashboardSnapshot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What ``/dashboard/ws`` pushes every half second (and ``/dashboard/snapshot`` returns)."""

    at: float
    status: str
    ready: bool
    reasons: tuple[str, ...]
    monitoring: str
    bridge: dict[str, Any]
    throughput: dict[str, float]
    monitor: dict[str, Any] | None
    tree: tuple[TreeNode, ...]
    runs_in_flight: int | None
    runs: tuple[RunInFlight, ...]
    threads: tuple[ThreadRow, ...]
    anomalies: tuple[dict[str, Any], ...]
    anomalies_total: int
    supervision: tuple[dict[str, Any], ...]
    faults: tuple[dict[str, Any], ...]
    fault_running: str | None
    fault_injection: bool


class DashboardFeed:
    """Builds dashboard snapshots from a running runtime, and the event rates between two of them.

    :param runs_source: the application's list of runs in flight (the dashboard shows the monitor's count and
        the subscribed threads without it)
    """

    def __init__(
        self,
        faults: FaultPanel | None,
        *,
        runs_source: Callable[[], Sequence[RunInFlight]] | None = None,
    ) -> None:
        self._faults = faults
        self._runs_source = runs_source
        self._last: tuple[float, int, int] | None = None
        self._rates = {"acceptedPerSecond": 0.0, "deliveredPerSecond": 0.0}
        self._anomalies: list[Anomaly] = []

    def _rate(self, accepted: int, delivered: int) -> dict[str, float]:
        now = time.monotonic()
        last = self._last
        # Rates over at least a quarter second: several dashboards polling at once must not divide by ~0.
        if last is None or now - last[0] >= 0.25:
            if last is not None:
                elapsed = now - last[0]
                self._rates = {
                    "acceptedPerSecond": round(max(0, accepted - last[1]) / elapsed, 1),
                    "deliveredPerSecond": round(max(0, delivered - last[2]) / elapsed, 1),
                }
            self._last = (now, accepted, delivered)
        return dict(self._rates)

    async def snapshot(self, runtime: Runtime) -> DashboardSnapshot:
        """Read everything the page shows (bounded asks; an unavailable part shows as missing)."""
        health = await runtime.health(timeout=1.0)
        bridge: dict[str, Any] = {}
        throughput = {"acceptedPerSecond": 0.0, "deliveredPerSecond": 0.0}
        threads: tuple[ThreadRow, ...] = ()
        try:
            metrics = await runtime.bridge.get_metrics()
            connections = await runtime.bridge.connection_statistics()
        except (ActorError, TimeoutError):
            pass
        else:
            bridge = msgspec.to_builtins(metrics)
            throughput = self._rate(metrics.events_accepted, metrics.events_delivered)
            threads = _thread_rows(connections)
        monitor = msgspec.to_builtins(health.monitor) if health.monitor is not None else None
        if health.monitoring == "running":
            with suppress(ActorError, TimeoutError):
                self._anomalies = await runtime.monitor.get_alerts(timeout=1.0)
        runs: tuple[RunInFlight, ...] = ()
        if self._runs_source is not None:
            runs = tuple(sorted(self._runs_source(), key=lambda run: run.started_at)[:50])
        faults = self._faults
        return DashboardSnapshot(
            at=time.time(),
            status=health.status,
            ready=health.ready,
            reasons=health.reasons,
            monitoring=health.monitoring,
            bridge=bridge,
            throughput=throughput,
            monitor=monitor,
            tree=await supervision_tree(runtime),
            runs_in_flight=health.monitor.runs_in_flight if health.monitor is not None else None,
            runs=runs,
            threads=threads[:50],
            anomalies=tuple(msgspec.to_builtins(a) for a in reversed(self._anomalies[-_RECENT:])),
            anomalies_total=sum(health.monitor.anomalies_by_kind.values()) if health.monitor is not None else 0,
            supervision=tuple(
                {
                    "at": event.at,
                    "kind": event.kind.value,
                    "child": event.child_id,
                    "supervisor": event.supervisor,
                    "reason": event.reason[:200],
                }
                for event in reversed(runtime.events.history()[-_RECENT:])
            ),
            faults=tuple(msgspec.to_builtins(r) for r in reversed(faults.history.records[-_RECENT:])) if faults else (),
            fault_running=faults.running if faults else None,
            fault_injection=faults is not None,
        )


def _thread_rows(connections: Sequence[Any]) -> tuple[ThreadRow, ...]:
    subscribers: dict[str, int] = {}
    delivered: dict[str, int] = {}
    for connection in connections:
        for thread_id in connection.threads:
            subscribers[thread_id] = subscribers.get(thread_id, 0) + 1
            delivered[thread_id] = max(delivered.get(thread_id, 0), connection.delivered_seq.get(thread_id, 0))
    return tuple(
        ThreadRow(thread_id=thread_id, subscribers=count, delivered_seq=delivered[thread_id])
        for thread_id, count in sorted(subscribers.items())
    )


async def _children(runtime: Runtime, name: str) -> list[ChildInfo] | None:
    try:
        ref = runtime.system.lookup(name)
    except ActorNotFound:
        return None
    if not ref.is_alive:
        return None
    try:
        return await SupervisorRef(ref, runtime.events).which_children(timeout=1.0)
    except (ActorError, TimeoutError):
        return None


def _node(info: ChildInfo, children: tuple[TreeNode, ...] = ()) -> TreeNode:
    return TreeNode(
        id=info.id, state=info.state.value, restarts=info.restarts, critical=info.critical, children=children
    )


async def supervision_tree(runtime: Runtime) -> tuple[TreeNode, ...]:
    """The application tree with every child's state (``running``, ``restarting``, ``detached``, ``stopped``).

    The root is the first node; a branch that is not running shows no children.
    """
    try:
        root = await runtime.supervisor.which_children(timeout=1.0)
    except (ActorError, TimeoutError):
        return (TreeNode(id=runtime.supervisor.name, state="unavailable", restarts=0, critical=True),)
    nodes: list[TreeNode] = []
    for info in root:
        if info.id == "monitoring" and info.state.value == "running":
            branch = await _children(runtime, MONITORING) or []
            inner: list[TreeNode] = []
            for child in branch:
                grandchildren: tuple[TreeNode, ...] = ()
                if child.id == "components" and child.state.value == "running":
                    grandchildren = tuple(_node(c) for c in await _children(runtime, COMPONENTS) or [])
                inner.append(_node(child, grandchildren))
            nodes.append(_node(info, tuple(inner)))
        else:
            nodes.append(_node(info))
    return (TreeNode(id=runtime.supervisor.name, state="running", restarts=0, critical=True, children=tuple(nodes)),)


async def _poll_until(condition: Callable[[], bool], *, interval: float = 0.01) -> None:
    # The state polled belongs to other actors (fault counters, supervisor state), which signal no event.
    while True:
        if condition():
            return
        await anyio.sleep(interval)


class FaultPanel:
    """The dashboard's demo faults, injected into the monitor with :mod:`supervisors.faults`.

    One fault runs at a time, in the host's task group; each is bounded in time and reverts itself. Every
    injection and its effects land in :attr:`history`.
    """

    FAULTS: Final = ("crash-once", "crash-repeatedly", "hang", "flood")

    def __init__(self, runtime: Callable[[], Runtime | None], *, flood_count: int = 150_000) -> None:
        self._runtime = runtime
        self._flood_count = flood_count
        self.history = FaultHistory()
        self.running: str | None = None

    def start(self, name: str, tasks: anyio.abc.TaskGroup) -> None:
        """Start fault ``name`` in ``tasks``; its outcome is recorded in :attr:`history` (action ``done``).

        :raises ValueError: when ``name`` is not one of :attr:`FAULTS`
        :raises RuntimeError: when the runtime is not running, another fault still runs, or (for every fault but
            ``crash-repeatedly``) the monitor is not running
        """
        if name not in self.FAULTS:
            raise ValueError(f"fault must be one of {', '.join(self.FAULTS)}, got {name!r}")
        runtime = self._runtime()
        if runtime is None:
            raise RuntimeError("the runtime is not running")
        if self.running is not None:
            raise RuntimeError(f"fault {self.running!r} is still running")
        if name != "crash-repeatedly" and runtime.monitor_ref() is None:
            raise RuntimeError(f"the monitor is {runtime.monitoring_state()}: nothing to inject into")
        # Claimed before the task starts, so that a second click meanwhile is refused.
        self.running = name
        tasks.start_soon(self._run, runtime, name)

    async def _run(self, runtime: Runtime, name: str) -> None:
        try:
            outcome = await self._inject(runtime, name)
        except Exception as exc:  # the one boundary: a failed demo fault must never take the host's task group down
            logger.exception("dashboard fault %s failed", name)
            outcome = f"not injected: {exc}"
        finally:
            self.running = None
        self.history.record(DASHBOARD_TARGET, name, "effect", outcome)
        logger.info("dashboard fault %s: %s", name, outcome)

    async def _inject(self, runtime: Runtime, name: str) -> str:
        if name == "crash-repeatedly":
            return await self._crash_until_detached(runtime)
        ref = runtime.monitor_ref()
        if ref is None:
            raise RuntimeError(f"the monitor is {runtime.monitoring_state()}: nothing to inject into")
        if name == "crash-once":
            return await self._crash_once(runtime, ref)
        if name == "hang":
            return await self._hang(runtime, ref)
        dropped = flood(ref, lambda _: SetMonitoring(enabled=True), self._flood_count, history=self.history)
        return f"told the monitor {self._flood_count} messages at once; its mailbox dropped {dropped}"

    async def _crash_once(self, runtime: Runtime, ref: ActorRef[Any]) -> str:
        if not await crash_once(runtime.system, ref, history=self.history):
            return f"the monitor did not crash (it is {runtime.monitoring_state()})"
        return "the monitor crashed once on a poison message; its supervisor restarts it"

    async def _hang(self, runtime: Runtime, ref: ActorRef[Any]) -> str:
        deadline = runtime.config.supervision.monitor_handler_timeout
        async with inject(runtime.system, ref, Hang(times=1), history=self.history) as fault:
            ref.tell(CheckHealth())
            with anyio.move_on_after(deadline + 5.0):
                await _poll_until(lambda: not isinstance(fault, Hang) or fault.hangs > 0)
                # The handler deadline cancels the hung handler; the restart follows.
                await anyio.sleep(deadline + 0.5)
        return f"a monitor handler hung; it was cancelled after {deadline:g} s and the monitor restarted"

    async def _crash_until_detached(self, runtime: Runtime, *, limit: float = 30.0) -> str:
        crashed: set[int] = set()
        before = len(self.history.triggers("crash"))
        async with AsyncExitStack() as stack:
            with anyio.move_on_after(limit):
                while runtime.monitoring_state() != "detached":
                    ref = runtime.monitor_ref()
                    if ref is not None:
                        if id(ref) not in crashed:
                            # A restart of the whole branch makes a new monitor ref: instrument each one.
                            crashed.add(id(ref))
                            await stack.enter_async_context(
                                inject(runtime.system, ref, Crash(every=1), history=self.history)
                            )
                        ref.tell(CheckHealth())
                    await anyio.sleep(0.005)
        state = runtime.monitoring_state()
        crashes = len(self.history.triggers("crash")) - before
        if state != "detached":
            return f"the monitor crashed {crashes} times in {limit:g} s and the branch is still {state}"
        return f"the monitor crashed {crashes} times; the monitoring branch is detached and the bridge runs alone"
