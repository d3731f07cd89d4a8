from __future__ import annotations

from typing import TYPE_CHECKING, assert_never

import msgspec

from actors._actor import Actor
from actors._message import Message
from actors.chat._events import LIFECYCLE_EVENT_TYPES
from actors.sim._scripts import GroundTruth, ScriptStep, truth_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from actors.chat._bridge_handle import BridgeHandle


class _Step(Message, frozen=True, kw_only=True):
    """A thread's next planned step is due (the agent's own timer)."""

    index: int


class GetAgentReport(Message, frozen=True, kw_only=True):
    """Ask a SimulatedAgent what it has produced so far; the reply is an :class:`AgentReport`."""


AgentMessage = _Step | GetAgentReport


class AgentReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one simulated agent produced.

    :param produced: events published, per thread (each is numbered by the bridge: the thread's last seq)
    :param runs: runs started (by their first event), ``finished`` / ``errored`` by their first completion
    :param scenarios: runs with an injected scenario, per scenario
    :param truth: ground truth of every scenario step emitted, with its due time on the runtime clock
    :param remaining: threads with steps still to emit (0: its scripts are exhausted)
    :param lifecycle: lifecycle events published (``RUN_*``, ``TOOL_CALL_START/END/RESULT``): those the monitor must
        never lose
    """

    agent_id: str
    produced: dict[str, int]
    runs: int
    finished: int
    errored: int
    scenarios: dict[str, int]
    truth: tuple[GroundTruth, ...]
    remaining: int
    lifecycle: int = 0


class SimulatedAgent(Actor[AgentMessage]):
    """Drives the scripted runs of a few threads through the bridge, each step at its planned time.

    One timer per thread: when a step is due the agent stamps its event with the runtime clock (``timestamp`` in
    ms, minus the step's skew) and publishes it with :meth:`BridgeHandle.publish`, which never waits; then it arms
    the timer for the thread's next step. Steps are planned relative to ``start`` (loop time), so timers never
    drift from the plan even on a real clock. The ground truth of every scenario step is recorded as it is emitted.

    :param agent_id: a name for reports
    :param bridge: where events go
    :param scripts: ``(thread_id, steps)`` per thread, steps in time order
    :param start: loop time (seconds) of the simulation's t = 0
    """

    def __init__(
        self, agent_id: str, bridge: BridgeHandle, scripts: Sequence[tuple[str, Iterator[ScriptStep]]], start: float
    ) -> None:
        self.agent_id = agent_id
        self._bridge = bridge
        self._scripts = [steps for _, steps in scripts]
        self._next: list[ScriptStep | None] = [None] * len(scripts)
        self._start = start
        self._produced = {thread_id: 0 for thread_id, _ in scripts}
        self._runs = 0
        self._finished = 0
        self._errored = 0
        self._ended: set[str] = set()
        self._scenarios: dict[str, int] = {}
        self._truth: list[GroundTruth] = []
        self._lifecycle = 0

    async def on_start(self) -> None:
        for index in range(len(self._scripts)):
            self._arm(index)

    async def receive(self, message: AgentMessage) -> AgentReport | None:
        match message:
            case _Step(index=index):
                self._emit_due(index)
                return None
            case GetAgentReport():
                return self._report()
            case _:
                assert_never(message)

    def _arm(self, index: int) -> None:
        step = next(self._scripts[index], None)
        self._next[index] = step
        if step is not None:
            self.send_after(max(0.0, self._start + step.at - self.clock.now()), _Step(index=index))

    def _emit_due(self, index: int) -> None:
        clock = self.clock
        step = self._next[index]
        # Steps planned for the same instant (or already late on a real clock) go out together, in order.
        while step is not None and self._start + step.at <= clock.now():
            self._emit(step, clock.now_ms())
            step = next(self._scripts[index], None)
        self._next[index] = step
        if step is not None:
            self.send_after(max(0.0, self._start + step.at - clock.now()), _Step(index=index))

    def _emit(self, step: ScriptStep, now_ms: int) -> None:
        event = msgspec.structs.replace(step.event, timestamp=now_ms - step.skew_ms)
        self._bridge.publish(step.thread_id, step.run_id, event)
        self._produced[step.thread_id] += 1
        if type(event) in LIFECYCLE_EVENT_TYPES:
            self._lifecycle += 1
        if step.opens_run:
            self._runs += 1
            if step.scenario is not None:
                self._scenarios[step.scenario] = self._scenarios.get(step.scenario, 0) + 1
        tag = type(event).__struct_config__.tag
        if tag in ("RUN_FINISHED", "RUN_ERROR") and step.run_id not in self._ended:
            self._ended.add(step.run_id)
            if tag == "RUN_ERROR":
                self._errored += 1
            else:
                self._finished += 1
        truth = truth_of(step, now_ms)
        if truth is not None:
            self._truth.append(truth)

    def _report(self) -> AgentReport:
        return AgentReport(
            agent_id=self.agent_id,
            produced=dict(self._produced),
            runs=self._runs,
            finished=self._finished,
            errored=self._errored,
            scenarios=dict(sorted(self._scenarios.items())),
            truth=tuple(self._truth),
            remaining=sum(1 for step in self._next if step is not None),
            lifecycle=self._lifecycle,
        )
