from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from actors import ActorError
from actors.chat._monitor import CheckHealth
from actors.process import ProcessFault, ProcessHost

from ._events import SupervisorEventKind
from .faults import flood

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors import ActorRef
    from actors.sim._plan import RuntimeFault

    from .app import Runtime
    from .faults import FaultHistory

# The simulator's monitor faults, translated for a monitor that runs in a worker process
# (RuntimeConfig(monitor_isolation="process")). The fault toolkit's interceptors wrap the handlers of the actor in
# this process, which for a process monitor is its host: a Crash there would crash the host, a BlockLoop would block
# this loop, the bridge's. The worker is made to misbehave instead, with a ProcessFault told to the monitor's ref.

#: The exit status of a crashed worker: what an uncaught exception gives a Python process.
CRASH_EXIT_CODE: Final = 1
#: How long a fault may take to show its effect beyond the runtime's own timeouts (a loaded machine, a backoff).
EFFECT_GUARD: Final = 10.0
#: How often the effect is looked for: the worker is a real process, observed on the real clock.
POLL_INTERVAL: Final = 0.005
#: The monitor faults and the fault names their history lines use (those of the in-process toolkit's faults).
FAULT_NAMES: Final = {
    "monitor_crash": "crash",
    "monitor_hang": "hang",
    "monitor_block": "block_loop",
    "monitor_flood": "flood",
}


class ProcessFaultOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one simulator monitor fault did to a monitor that runs in a worker process.

    :param text: the outcome in words, for the simulation report (``"crashed the monitor (worker exit)"``, or
        ``"skipped: ..."`` when it could not be applied)
    :param applied: how many times the fault took effect (a crash burst: one per crash; 0 when skipped)
    :param loop_blocked: seconds the parent's event loop was blocked by the fault: 0.0, since a blocked monitor
        blocks the worker's own loop
    :param triggered_at: the runtime clock's times (seconds) at which the fault took effect, in order
    """

    text: str
    applied: int = 0
    loop_blocked: float = 0.0
    triggered_at: tuple[float, ...] = ()


async def inject_into_process_monitor(
    runtime: Runtime, fault: RuntimeFault, *, history: FaultHistory
) -> ProcessFaultOutcome:
    """Apply a simulator monitor fault to the monitor's worker process and wait until its effect is observed.

    ``monitor_crash``: the worker exits at once (status 1), ``burst`` times in a row, each as soon as the monitor is
    back; ``monitor_hang``: the monitor's next handler awaits forever, until its handler deadline ends the worker;
    ``monitor_block``: the next handler blocks the worker's event loop for ``seconds`` (``time.sleep``; longer than
    the heartbeat timeout, the worker is taken for stuck and replaced); ``monitor_flood``: ``messages`` health
    queries told at once to the monitor's ref, whose mailbox (the host's, in this process) queues or drops them.
    Each is recorded in ``history`` (inject, trigger, effect), under the in-process fault's name. Every wait is
    bounded by the runtime's own timeouts plus a guard; a fault whose effect did not come says so in its outcome.

    :param runtime: a runtime opened with ``monitor_isolation="process"`` (real clock: the worker is a process)
    :param fault: one of the simulator's monitor faults, with its options filled in (``seconds``, ``messages``)
    :param history: where the injection, what it triggered and what was observed are recorded
    :return: the outcome, ``"skipped: ..."`` when the monitor was not running
    :raises ValueError: when the runtime's monitor does not run in a process, or ``fault`` is not a monitor fault
    """
    if runtime.config.monitor_isolation != "process":
        raise ValueError(
            "runtime.config.monitor_isolation must be 'process' for inject_into_process_monitor, "
            f"got {runtime.config.monitor_isolation!r}"
        )
    if fault.name not in FAULT_NAMES:
        raise ValueError(f"fault.name must be one of {', '.join(FAULT_NAMES)}, got {fault.name!r}")
    monitor = _running_monitor(runtime)
    if monitor is None:
        return ProcessFaultOutcome(text=f"skipped: monitoring is {runtime.monitoring_state()}")
    if fault.name == "monitor_crash":
        return await _crash(runtime, fault, history)
    if fault.name == "monitor_hang":
        return await _hang(runtime, monitor, history)
    if fault.name == "monitor_block":
        if fault.seconds is None or fault.seconds < 0:
            raise ValueError(f"fault.seconds must be >= 0 seconds for monitor_block, got {fault.seconds!r}")
        return await _block(runtime, monitor, fault.seconds, history)
    if fault.messages is None or fault.messages < 1:
        raise ValueError(f"fault.messages must be an int >= 1 for monitor_flood, got {fault.messages!r}")
    return await _flood(runtime, monitor, fault.messages, history)


def _running_monitor(runtime: Runtime) -> ActorRef[Any] | None:
    """The monitor's ref while its branch runs and a worker is up, else None."""
    ref = runtime.monitor_ref()
    if ref is None or runtime.monitoring_state() != "running" or ref.state != "running":
        return None
    host = ref.current_instance
    return ref if isinstance(host, ProcessHost) and host.pid is not None else None


def _host_of(ref: ActorRef[Any]) -> ProcessHost:
    host = ref.current_instance
    assert isinstance(host, ProcessHost)  # checked by _running_monitor
    return host


async def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds; False when ``timeout`` seconds passed first."""
    with anyio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110  # a real process is observed: nothing to wait on but its host
            await anyio.sleep(POLL_INTERVAL)
        return True
    return False


def _exited(host: ProcessHost) -> Callable[[], bool]:
    """Whether the worker behind ``host`` has exited and been reaped."""
    return lambda: host.returncode is not None


def _back(runtime: Runtime, monitor: ActorRef[Any], host: ProcessHost) -> Callable[[], bool]:
    """Whether the monitor is back after its worker ``host`` failed: a new worker runs behind the same ref, or its
    branch failed with it (then the branch is restarting, detached, or restarted with a new monitor)."""

    def back() -> bool:
        if runtime.monitoring_state() != "running" or runtime.monitor_ref() is not monitor:
            return True
        current = monitor.current_instance
        return monitor.state == "running" and current is not host and isinstance(current, ProcessHost)

    return back


def _failure_since(runtime: Runtime, since: float) -> str | None:
    """The reason of the monitor's first failure at or after ``since`` (loop time), from the supervision events."""
    for event in runtime.events.history():
        if event.child_id == "monitor" and event.kind is SupervisorEventKind.FAILED and event.at >= since:
            return event.reason
    return None


def _recovery_timeout(runtime: Runtime) -> float:
    isolation = runtime.config.monitor_process
    return isolation.heartbeat_timeout + isolation.start_timeout + EFFECT_GUARD


async def _crash(runtime: Runtime, fault: RuntimeFault, history: FaultHistory) -> ProcessFaultOutcome:
    triggered: list[float] = []
    for _ in range(fault.burst or 1):
        # A burst crashes the monitor again as soon as it is back (its branch may fail meanwhile: then it ends).
        monitor = _running_monitor(runtime)
        if monitor is None:
            break
        host = _host_of(monitor)
        pid = host.pid
        injection = history.new_injection()
        history.record(
            monitor.name, "crash", "inject", f"worker pid {pid}: exit({CRASH_EXIT_CODE})", injection=injection
        )
        monitor.tell(ProcessFault(kind="exit", exit_code=CRASH_EXIT_CODE))
        # The fault waits behind the taps already queued in the host's mailbox; then the worker exits at once.
        if not await _wait_for(_exited(host), EFFECT_GUARD):
            history.record(
                monitor.name, "crash", "revert", "no exit in time (the fault may still land)", injection=injection
            )
            break
        trigger = history.record(
            monitor.name, "crash", "trigger", f"worker pid {pid} exited ({host.returncode})", injection=injection
        )
        triggered.append(trigger.at)
        await _record_recovery(runtime, monitor, host, history, "crash", injection)
        if not _back(runtime, monitor, host)():
            break
    crashes = len(triggered)
    if not crashes:
        return ProcessFaultOutcome(text="skipped: the monitor's worker did not exit in time")
    if fault.burst is None:
        text = "crashed the monitor (worker exit)"
    else:
        text = f"crashed the monitor {crashes} times in a row (worker exits)"
    return ProcessFaultOutcome(text=text, applied=crashes, triggered_at=tuple(triggered))


def _recovered(runtime: Runtime, monitor: ActorRef[Any]) -> str:
    if runtime.monitoring_state() != "running":
        return f"the monitoring branch is {runtime.monitoring_state()}"
    if runtime.monitor_ref() is not monitor:
        return "the monitoring branch restarted with a new monitor"
    current = monitor.current_instance
    pid = current.pid if isinstance(current, ProcessHost) else None
    return f"restarted: worker pid {pid}"


async def _hang(runtime: Runtime, monitor: ActorRef[Any], history: FaultHistory) -> ProcessFaultOutcome:
    host = _host_of(monitor)
    deadline = runtime.config.supervision.monitor_handler_timeout
    injection = history.new_injection()
    history.record(
        monitor.name, "hang", "inject", f"worker pid {host.pid}: its next handler hangs", injection=injection
    )
    since = anyio.current_time()
    monitor.tell(ProcessFault(kind="hang"))
    # The worker's handler deadline cuts the hung handler and the worker exits; the supervisor restarts it.
    if not await _wait_for(_exited(host), deadline + EFFECT_GUARD):
        # No deadline cut it (the worker never got to the fault): end the worker, or it would hang for good.
        pid = host.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        history.record(
            monitor.name, "hang", "revert", f"not ended in time: worker pid {pid} killed", injection=injection
        )
        return ProcessFaultOutcome(text="skipped: no handler deadline ended the hang in time (worker killed)")
    reason = await _failure_reason(runtime, since) or f"worker exited ({host.returncode})"
    trigger = history.record(monitor.name, "hang", "trigger", reason, injection=injection)
    await _record_recovery(runtime, monitor, host, history, "hang", injection)
    return ProcessFaultOutcome(
        text="hung the monitor (its worker's handler deadline cut it)", applied=1, triggered_at=(trigger.at,)
    )


async def _block(
    runtime: Runtime, monitor: ActorRef[Any], seconds: float, history: FaultHistory
) -> ProcessFaultOutcome:
    host = _host_of(monitor)
    isolation = runtime.config.monitor_process
    injection = history.new_injection()
    history.record(
        monitor.name, "block_loop", "inject", f"worker pid {host.pid}: time.sleep({seconds:g})", injection=injection
    )
    since = anyio.current_time()
    monitor.tell(ProcessFault(kind="block", seconds=seconds))
    # A health query queued behind the fault is answered once the worker's loop runs again; a block longer than the
    # heartbeat timeout gets the worker replaced instead, and the query fails with it.
    try:
        await monitor.ask(CheckHealth(), timeout=seconds + isolation.heartbeat_timeout + EFFECT_GUARD)
    except (ActorError, TimeoutError) as exc:
        reason = await _failure_reason(runtime, since)
        if reason is None:
            history.record(monitor.name, "block_loop", "revert", f"no answer: {exc}", injection=injection)
            return ProcessFaultOutcome(text=f"skipped: the monitor did not come back from the block ({exc})")
        trigger = history.record(monitor.name, "block_loop", "trigger", reason, injection=injection)
        await _record_recovery(runtime, monitor, host, history, "block_loop", injection)
        return ProcessFaultOutcome(
            text=f"blocked the monitor's worker for {seconds:g} s: heartbeats missed, worker replaced "
            "(the parent's loop was not blocked)",
            applied=1,
            triggered_at=(trigger.at,),
        )
    trigger = history.record(
        monitor.name, "block_loop", "trigger", f"blocked its own loop {seconds:g} s, then answered", injection=injection
    )
    return ProcessFaultOutcome(
        text=f"blocked the monitor's worker loop for {seconds:g} s (the parent's loop was not blocked)",
        applied=1,
        triggered_at=(trigger.at,),
    )


async def _failure_reason(runtime: Runtime, since: float) -> str | None:
    """The reason of the monitor's first failure since ``since``, once its supervisor has published it (bounded)."""
    found: list[str] = []

    def failed() -> bool:
        reason = _failure_since(runtime, since)
        if reason is not None:
            found.append(reason)
        return bool(found)

    await _wait_for(failed, EFFECT_GUARD)
    return found[0] if found else None


async def _record_recovery(
    runtime: Runtime, monitor: ActorRef[Any], host: ProcessHost, history: FaultHistory, fault: str, injection: int
) -> None:
    back = await _wait_for(_back(runtime, monitor, host), _recovery_timeout(runtime))
    detail = _recovered(runtime, monitor) if back else "not back in time"
    history.record(monitor.name, fault, "effect", detail, injection=injection)


async def _flood(runtime: Runtime, monitor: ActorRef[Any], messages: int, history: FaultHistory) -> ProcessFaultOutcome:
    injection = history.new_injection()
    history.record(monitor.name, "flood", "inject", f"{messages} health queries", injection=injection)
    # The flood lands in the host's mailbox, in this process, where the bridge's taps queue: its policy applies.
    dropped = flood(monitor, lambda _: CheckHealth(), messages, history=history)
    at = history.records[-1].at  # the flood's trigger line
    # Drained: a query asked behind the flood is answered (each flooded query is a round trip to the worker).
    timeout = messages * 0.01 + EFFECT_GUARD
    try:
        await monitor.ask(CheckHealth(), timeout=timeout)
    except (ActorError, TimeoutError) as exc:
        history.record(monitor.name, "flood", "effect", f"not drained: {exc}", injection=injection)
        drained = ""
    else:
        history.record(monitor.name, "flood", "effect", "drained", injection=injection)
        drained = ", drained"
    return ProcessFaultOutcome(
        text=f"{messages:,} health queries, {dropped:,} dropped by the full mailbox{drained}",
        applied=1,
        triggered_at=(at,),
    )
