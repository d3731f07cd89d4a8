from __future__ import annotations

import random
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

import anyio

from actors import ActorNotFound
from actors.chat._anomaly import AnomalyKind
from actors.chat._bridge_messages import Publish
from actors.chat._events import InvalidEvent, parse_event
from actors.chat._monitor import CheckHealth
from actors.sim._scoring import Explanation
from actors.sim._scripts import GroundTruth

from ._replay import InvalidTraceLine, TraceReplay
from ._sim_process_faults import inject_into_process_monitor
from .app import BRIDGE_COMPONENT_ID
from .faults import BlockLoop, Crash, Fault, Hang, flood, inject, malformed_frames

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from actors import ActorRef
    from actors.sim._plan import RuntimeFault

    from ._sim_run import SimulationRun
    from .app import Runtime
    from .faults import LyingComponent


async def apply_at(run: SimulationRun, runtime: Runtime, fault: RuntimeFault, liar: LyingComponent | None) -> None:
    await anyio.sleep_until(run.start + fault.at)
    run.faults_running += 1
    try:
        await _apply(run, runtime, fault, liar)
    finally:
        run.faults_running -= 1


async def _apply(run: SimulationRun, runtime: Runtime, fault: RuntimeFault, liar: LyingComponent | None) -> None:
    if fault.name == "lying_component":
        assert liar is not None
        await _lie(run, runtime, fault, liar)
        return
    if fault.name == "malformed_input":
        await _feed_malformed(run, runtime, fault)
        return
    monitor = runtime.monitor_ref()
    if monitor is None or runtime.monitoring_state() != "running":
        run.outcome(fault, f"skipped: monitoring is {runtime.monitoring_state()}")
        return
    if run.monitor_fault_pending:
        run.outcome(fault, "skipped: the monitor was still recovering from the previous fault")
        return
    run.monitor_fault_pending = True
    try:
        await _apply_to_monitor(run, runtime, fault, monitor)
    finally:
        run.monitor_fault_pending = False


async def _apply_to_monitor(run: SimulationRun, runtime: Runtime, fault: RuntimeFault, monitor: ActorRef[Any]) -> None:
    if run.settings.runtime.monitor_isolation == "process":
        # The monitor runs in a worker process: the in-process interceptors would act on its host here (crash the
        # host, block the bridge's loop); the worker is made to misbehave instead.
        outcome = await inject_into_process_monitor(runtime, fault, history=run.history)
        run.loop_blocked += outcome.loop_blocked
        if fault.name == "monitor_crash":
            run.crash_times.extend(run.start_ms + round((at - run.start) * 1000) for at in outcome.triggered_at)
        run.outcome(fault, outcome.text)
        return
    system = runtime.system
    history = run.history
    supervision = run.settings.runtime.supervision
    name = fault.name
    if name == "monitor_crash":
        landed = 0
        for _ in range(fault.burst or 1):
            # A burst crashes the monitor again as soon as it is back: restarted, or (when the crash failed its
            # branch) restarted with the branch. A detached branch ends it.
            if landed:
                await _wait_for(lambda: runtime.monitoring_state() in ("running", "detached", "stopped"), 10.0)
            target = runtime.monitor_ref() if landed else monitor
            if target is None or runtime.monitoring_state() != "running" or not await _crash(run, runtime, target):
                break
            landed += 1
        if fault.burst is None:
            run.outcome(fault, "crashed the monitor" if landed else "skipped: no message reached the monitor in 10 s")
        else:
            run.outcome(fault, f"crashed the monitor {landed} times in a row" if landed else "skipped: no message")
    elif name == "monitor_hang":
        restarts = monitor.statistics().restarts
        async with inject(system, monitor, Hang(), history=history) as hang:
            assert isinstance(hang, Hang)
            # The hung handler is cancelled at the monitor's handler deadline and the monitor restarted.
            await _wait_for(
                lambda: hang.hangs >= 1 and monitor.statistics().restarts > restarts,
                supervision.monitor_handler_timeout + 10.0,
            )
        run.outcome(fault, "hung the monitor" if hang.hangs else "skipped: no message reached the monitor in time")
    elif name == "monitor_block":
        assert fault.seconds is not None
        async with inject(system, monitor, BlockLoop(fault.seconds), history=history) as block:
            assert isinstance(block, BlockLoop)
            await _wait_for(lambda: block.blocks >= 1, 10.0)
        run.loop_blocked += fault.seconds * block.blocks
        run.outcome(
            fault, f"blocked the loop for {fault.seconds:g} s" if block.blocks else "skipped: no message arrived"
        )
    elif name == "monitor_flood":
        assert fault.messages is not None
        dropped = flood(monitor, lambda _: CheckHealth(), fault.messages, history=history)
        run.outcome(fault, f"{fault.messages:,} health queries, {dropped:,} dropped by the full mailbox")
    else:
        raise AssertionError(f"not a runtime fault: {name}")


async def _crash(run: SimulationRun, runtime: Runtime, monitor: ActorRef[Any]) -> bool:
    """Crash the monitor on its next message and wait until it is back; False when no message came in 10 s."""
    restarts = monitor.statistics().restarts
    async with inject(runtime.system, monitor, Crash(), history=run.history) as crash:
        assert isinstance(crash, Crash)
        # Back: restarted, or its branch failed with it (then the branch is restarting, detached, or restarted with
        # a new monitor).
        await _wait_for(
            lambda: (
                crash.crashes >= 1
                and (
                    monitor.statistics().restarts > restarts
                    or runtime.monitoring_state() != "running"
                    or runtime.monitor_ref() is not monitor
                )
            ),
            10.0,
        )
    if not crash.crashes:
        return False
    triggers = run.history.triggers("crash", target=monitor.name)
    if triggers:
        run.crash_times.append(run.start_ms + round((triggers[-1].at - run.start) * 1000))
    return True


class _WritersDown(Fault):
    """Holds every handler of the connection writers it is injected into until :meth:`restore`: the bridge takes
    events and routes them, and delivers none (its writers are stuck), while clients keep reading. Restored, the
    writers carry on from where they stopped (the held messages are handled, nothing is lost)."""

    name = "writers_down"

    def __init__(self) -> None:
        super().__init__()
        self._restored = anyio.Event()
        self.held = 0

    def restore(self) -> None:
        """Let every held handler, and every later one, through."""
        self._restored.set()

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if not self._restored.is_set():
            self.held += 1
            self._triggered(f"held {type(message).__name__}")
            await self._restored.wait()
        return await receive(message)


async def _lie(run: SimulationRun, runtime: Runtime, fault: RuntimeFault, liar: LyingComponent) -> None:
    """The bridge really fails (its connection writers are stuck: nothing is delivered) while its registration
    claims healthy; the monitor's audit must see through the claim."""
    assert fault.duration is not None
    if liar.lying:
        # Two overlapping lies would share the one liar: the first to end would stop the claim under the second.
        run.outcome(fault, "skipped: a lie was already running")
        return
    system = runtime.system
    monitor = run.settings.runtime.monitor
    thresholds = monitor.thresholds
    began = system.clock.now_ms()
    run.lie_onsets.append(began)
    down = _WritersDown()
    writers = 0
    liar.lying = True
    async with AsyncExitStack() as stack:
        for connection in await runtime.bridge.connection_statistics():
            try:
                writer = system.lookup(f"{runtime.bridge.ref.name}/{connection.connection_id}")
            except ActorNotFound:
                continue  # closed meanwhile
            await stack.enter_async_context(inject(system, writer, down, history=run.history))
            writers += 1
        await anyio.sleep(fault.duration)
        down.restore()
    liar.lying = False
    ended = system.clock.now_ms()
    # Provable once a routed event is overdue: the next audit then sees a "healthy" claim over a dead flow.
    run.truth.append(
        GroundTruth(
            kind=AnomalyKind.HEALTH_CLAIM_MISMATCH.value,
            thread_id=f"component:{BRIDGE_COMPONENT_ID}",
            run_id=None,
            tool_call_id=None,
            due_at=began + round(thresholds.undelivered_after * 1000),
            fault="lying_component",
        )
    )
    # Nothing is delivered meanwhile, so routed events really are undelivered: side effects, not false positives.
    settle = round((thresholds.undelivered_after + 2 * monitor.check_interval + 1.0) * 1000)
    run.explanations.append(
        Explanation(kind=AnomalyKind.UNDELIVERED_EVENT.value, fault="lying_component", start=began, end=ended + settle)
    )
    run.outcome(fault, f"claimed healthy for {fault.duration:g} s while {writers} connection writers were stuck")


async def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    # Polled: the conditions are other actors' counters, which signal nothing when they change.
    with anyio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


#: Mutations whose error must name the one field they broke (the others break the frame as a whole).
_NAMED_FIELD: Final = frozenset({"wrong_type", "missing_field", "unknown_type"})
#: Every this many malformed frames, one is also handed to the bridge as a publish (what a buggy producer does).
_PUBLISH_EVERY: Final = 10
#: Frames fed between two yields to the loop (each batch also lets a little simulated time pass).
_BATCH: Final = 50


async def _feed_malformed(run: SimulationRun, runtime: Runtime, fault: RuntimeFault) -> None:
    """Feed ``fault.messages`` fuzzed frames (``faults.malformed_frames``) through event validation, the trace
    replay's line parser, and (one in ten) the bridge: each must be rejected with a clear error and counted, and
    nothing may restart or lose a valid event meanwhile."""
    assert fault.messages is not None
    counts = run.malformed
    occurrence = counts.get("occurrences", 0)
    counts["occurrences"] = occurrence + 1
    seed = random.Random(f"{run.settings.spec.seed}:malformed:{occurrence}").randrange(2**32)
    replay = TraceReplay()
    # A live thread: a bogus publish that the bridge numbered would leave its followers a gap.
    thread_id = run.plan.thread_ids[0]
    for index, mutation in enumerate(malformed_frames(seed, fault.messages)):
        counts["fed"] = counts.get("fed", 0) + 1
        try:
            parse_event(mutation.frame)
        except InvalidEvent as error:
            clear = bool(error.rule) and (error.field is None or error.field.startswith("$"))
            if mutation.kind in _NAMED_FIELD:
                clear = clear and error.field == mutation.field
            if clear:
                counts["rejected_clearly"] = counts.get("rejected_clearly", 0) + 1
            elif len(run.unclear) < 10:
                run.unclear.append(f"{mutation.kind}: {error!s} for {mutation.frame[:60]!r}")
        else:
            if len(run.unclear) < 10:
                run.unclear.append(f"{mutation.kind}: accepted {mutation.frame[:60]!r}")
        try:
            replay.feed(mutation.frame)
        except InvalidTraceLine:
            counts["replay_rejected"] = counts.get("replay_rejected", 0) + 1
        if index % _PUBLISH_EVERY == _PUBLISH_EVERY - 1:
            runtime.bridge.ref.tell(Publish(thread_id=thread_id, run_id="malformed", event=mutation.frame))  # type: ignore[arg-type]
            counts["published"] = counts.get("published", 0) + 1
        if index % _BATCH == _BATCH - 1:
            await anyio.sleep(0.005)
    run.outcome(fault, f"fed {fault.messages:,} fuzzed frames")
