from __future__ import annotations

import heapq
import itertools
import math
import random
from typing import TYPE_CHECKING, Final

import msgspec

from actors.chat._anomaly import ALL_THREADS
from actors.chat._events import (
    AgentEvent,
    ReasoningEnd,
    ReasoningMessageContent,
    ReasoningMessageEnd,
    ReasoningMessageStart,
    ReasoningStart,
    RunError,
    RunFinished,
    RunStarted,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from actors.chat._detection import DetectionThresholds


class AgentProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What a simulated agent's runs look like (durations in seconds).

    :param idle_mean: mean idle time on a thread between two runs (exponential)
    :param delta_gap: median gap between two streamed deltas (lognormal)
    :param think_gap: median pause between the blocks of a run (lognormal)
    :param reasoning_deltas: inclusive range of reasoning deltas per run
    :param text_deltas: inclusive range of text deltas per run
    :param max_tool_calls: most tool calls per run (0..max, fewer more likely)
    :param args_deltas: inclusive range of argument deltas per tool call
    :param tool_median: median tool duration (lognormal: heavy-tailed)
    :param tool_sigma: the lognormal's sigma
    :param tool_cap: longest tool duration; also capped at half the stuck/stale thresholds, so a healthy call is
        never mistaken for a stuck one
    :param error_rate: chance that a run ending where the stream has room for an error ends with RUN_ERROR
    """

    idle_mean: float = 8.0
    delta_gap: float = 0.05
    think_gap: float = 0.4
    reasoning_deltas: tuple[int, int] = (2, 10)
    text_deltas: tuple[int, int] = (4, 30)
    max_tool_calls: int = 5
    args_deltas: tuple[int, int] = (1, 4)
    tool_median: float = 1.0
    tool_sigma: float = 1.0
    tool_cap: float = 12.0
    error_rate: float = 0.3


class TruthMark(msgspec.Struct, frozen=True, kw_only=True):
    """On a script step: the anomaly its emission makes detectable, ``due_after_ms`` after it is emitted."""

    kind: str
    tool_call_id: str | None = None
    due_after_ms: int = 0
    stream_wide: bool = False


class ScriptStep(msgspec.Struct, frozen=True, kw_only=True):
    """One event an agent emits, at ``at`` seconds after the simulation's start (planned).

    :param event: the event, without a timestamp (the agent stamps the runtime clock's ms when it emits it)
    :param skew_ms: emit it with a timestamp this far in the past (``high_latency``)
    :param truth: the anomaly this step makes detectable, if it is part of an injected scenario
    :param opens_run: the first step of a run
    :param scenario: on the first step of a run, the scenario injected into it
    """

    at: float
    thread_id: str
    run_id: str
    event: AgentEvent
    skew_ms: int = 0
    truth: TruthMark | None = None
    opens_run: bool = False
    scenario: str | None = None


class GroundTruth(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One injected fault the monitor must report: its anomaly key, and when it became detectable.

    :param due_at: ms on the runtime clock from which the anomaly is detectable (the threshold has passed)
    :param fault: the ``--fault`` name that injected it
    """

    kind: str
    thread_id: str
    run_id: str | None
    tool_call_id: str | None
    due_at: int
    fault: str


def truth_of(step: ScriptStep, emitted_at_ms: int) -> GroundTruth | None:
    """The ground truth a step creates when it is emitted at ``emitted_at_ms`` (None for an ordinary step)."""
    mark = step.truth
    if mark is None:
        return None
    return GroundTruth(
        kind=mark.kind,
        thread_id=ALL_THREADS if mark.stream_wide else step.thread_id,
        run_id=None if mark.stream_wide else step.run_id,
        tool_call_id=mark.tool_call_id,
        due_at=emitted_at_ms + mark.due_after_ms,
        fault=mark.kind,
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class ErrorRoom:
    """Where natural RUN_ERRORs may fall so that they never add up to an ``error_burst`` nobody injected.

    Time is cut into slots of ``window / (count - 2)``; each slot belongs to one thread (seeded), which may end at
    most one run in it with RUN_ERROR. Any window then holds at most ``count - 1`` natural errors. Slots near an
    injected burst (within one window either side) take none, so a burst is reported exactly when injected.
    """

    def __init__(
        self, seed: int, threads: int, thresholds: DetectionThresholds, bursts: Sequence[tuple[float, float]]
    ) -> None:
        count = thresholds.error_burst_count
        window = thresholds.error_burst_window
        self._seed = seed
        self._threads = threads
        self._slot = window / (count - 2) if count >= 4 else 0.0
        self._quiet = [(start - window - self._slot, end + window + self._slot) for start, end in bursts]

    def slot_for(self, thread_index: int, at: float) -> int | None:
        """The slot in which ``thread_index`` may end a run with an error at ``at``, or None where it may not."""
        if self._slot <= 0 or self._threads == 0:
            return None
        slot = int(at // self._slot)
        start, end = slot * self._slot, (slot + 1) * self._slot
        if any(start < quiet_end and end > quiet_start for quiet_start, quiet_end in self._quiet):
            return None
        owner = random.Random(f"{self._seed}:error-slot:{slot}").randrange(self._threads)
        return slot if owner == thread_index else None


class _RunBuilder:
    """Collects one run's steps on a planned clock."""

    __slots__ = ("clock", "run_id", "scenario", "steps", "thread_id")

    def __init__(self, thread_id: str, run_id: str, start: float, scenario: str | None) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.scenario = scenario
        self.clock = start
        self.steps: list[ScriptStep] = []

    def emit(self, event: AgentEvent, gap: float = 0.0, *, truth: TruthMark | None = None, skew_ms: int = 0) -> None:
        self.clock += gap
        first = not self.steps
        self.steps.append(
            ScriptStep(
                at=self.clock,
                thread_id=self.thread_id,
                run_id=self.run_id,
                event=event,
                skew_ms=skew_ms,
                truth=truth,
                opens_run=first,
                scenario=self.scenario if first else None,
            )
        )

    def mark_last(self, truth: TruthMark) -> None:
        self.steps[-1] = msgspec.structs.replace(self.steps[-1], truth=truth)


class ThreadScript:
    """The time-ordered steps one thread's agent emits: run after run until ``until`` (lazily, in constant memory).

    Deterministic for a given seed and thread. Each run: RUN_STARTED; a reasoning block; 0..5 tool calls (START,
    ARGS*, then END and RESULT after a heavy-tailed duration); a streamed text message; RUN_FINISHED (or, where the
    stream has room for one, now and then RUN_ERROR). A scenario run deviates as its anomaly requires and marks the
    step that makes it detectable (:class:`TruthMark`). No run starts at or after ``until``; the last ones finish.

    :param tickets: ``(time, scenario)``: the scenario is injected into the first run starting at or after the time
    :param shares: per-run chance of each scenario (the first that hits wins; a ticket takes precedence)
    :param errors: where natural RUN_ERRORs may fall (None: never)
    """

    def __init__(
        self,
        thread_id: str,
        thread_index: int,
        *,
        seed: int,
        until: float,
        thresholds: DetectionThresholds,
        profile: AgentProfile,
        tickets: Sequence[tuple[float, str]] = (),
        shares: Sequence[tuple[str, float]] = (),
        errors: ErrorRoom | None = None,
    ) -> None:
        self.thread_id = thread_id
        self._index = thread_index
        self._seed = seed
        self._until = until
        self._thresholds = thresholds
        self._profile = profile
        self._tickets = tuple(sorted(tickets))
        self._shares = tuple(shares)
        self._errors = errors
        shortest = min(thresholds.stuck_tool_after, thresholds.stale_thread_after)
        # Healthy gaps stay well under both thresholds: a slow tool must never look stuck, nor a pause stale.
        self._tool_cap = min(profile.tool_cap, 0.5 * shortest)
        self._gap_cap = 0.25 * shortest

    def __iter__(self) -> Iterator[ScriptStep]:
        # Each iteration starts afresh from the seed: iterating twice gives the same steps.
        rng = random.Random(f"{self._seed}:thread:{self.thread_id}")
        tickets = list(self._tickets)
        used_slots: set[int] = set()
        pending: list[tuple[float, int, ScriptStep]] = []
        order = itertools.count()
        next_start = rng.uniform(0.0, self._profile.idle_mean)
        number = 0
        while True:
            # A run's late events (a duplicate completion, say) may fall after the next run's start: runs are
            # generated ahead until the earliest pending step is before the next start, then steps leave in order.
            while next_start < self._until and (not pending or pending[0][0] >= next_start):
                scenario = self._scenario(rng, tickets, next_start)
                run = _RunBuilder(self.thread_id, f"{self.thread_id}.r{number}", next_start, scenario)
                run_end = self._run(rng, run, used_slots)
                for step in run.steps:
                    heapq.heappush(pending, (step.at, next(order), step))
                number += 1
                next_start = run_end + rng.expovariate(1.0 / self._profile.idle_mean) + 0.05
            if not pending:
                return
            yield heapq.heappop(pending)[2]

    def _scenario(self, rng: random.Random, tickets: list[tuple[float, str]], start: float) -> str | None:
        if tickets and tickets[0][0] <= start:
            return tickets.pop(0)[1]
        for kind, share in self._shares:
            if rng.random() < share:
                return kind
        return None

    def _gap(self, rng: random.Random, median: float) -> float:
        return min(self._gap_cap, rng.lognormvariate(math.log(median), 0.6))

    def _run(self, rng: random.Random, run: _RunBuilder, used_slots: set[int]) -> float:
        """Fill ``run`` with its steps; return when it ends (its last in-order step)."""
        profile = self._profile
        thresholds = self._thresholds
        scenario = run.scenario
        run_id = run.run_id
        emit = run.emit

        def delta() -> float:
            return self._gap(rng, profile.delta_gap)

        def pause() -> float:
            return self._gap(rng, profile.think_gap)

        think = f"{run_id}.think"
        if scenario == "missing_agent_started":
            # The run's first event is not RUN_STARTED: detectable the moment it is seen.
            emit(ReasoningStart(message_id=think), truth=TruthMark(kind="missing_agent_started"))
        else:
            emit(RunStarted(thread_id=run.thread_id, run_id=run_id))
            emit(ReasoningStart(message_id=think), delta())
        emit(ReasoningMessageStart(message_id=think), delta())
        for _ in range(rng.randint(*profile.reasoning_deltas)):
            emit(ReasoningMessageContent(message_id=think, delta=_words(rng)), delta())
        emit(ReasoningMessageEnd(message_id=think), delta())
        emit(ReasoningEnd(message_id=think), delta())

        text = f"{run_id}.text"
        if scenario == "stale_thread":
            # The run goes silent mid-answer, with no tool call open, and never finishes.
            emit(TextMessageStart(message_id=text, role="assistant"), pause())
            for _ in range(rng.randint(1, 4)):
                emit(TextMessageContent(message_id=text, delta=_words(rng)), delta())
            run.mark_last(TruthMark(kind="stale_thread", due_after_ms=_ms(thresholds.stale_thread_after)))
            return run.clock

        tools = _tool_count(rng, profile.max_tool_calls)
        if scenario == "stuck_tool":
            tools = max(tools, 1)
        stuck_at = rng.randrange(tools) if scenario == "stuck_tool" else -1
        orphan_at = rng.randint(0, tools) if scenario == "orphan_tool_completed" else -1
        for index in range(tools + 1):
            if index == orphan_at:
                # A completion for a call the run never started.
                orphan = f"{run_id}.orphan"
                emit(
                    ToolCallEnd(tool_call_id=orphan),
                    pause(),
                    truth=TruthMark(kind="orphan_tool_completed", tool_call_id=orphan),
                )
                emit(_result(orphan), 0.001)
            if index == tools:
                break
            call = f"{run_id}.tc{index}"
            stuck = index == stuck_at
            due = _ms(thresholds.stuck_tool_after)
            start = ToolCallStart(tool_call_id=call, tool_call_name=rng.choice(_TOOLS))
            emit(
                start,
                pause(),
                truth=TruthMark(kind="stuck_tool", tool_call_id=call, due_after_ms=due) if stuck else None,
            )
            for _ in range(rng.randint(*profile.args_deltas)):
                emit(ToolCallArgs(tool_call_id=call, delta=_args(rng)), delta())
            if stuck:
                self._heartbeat_past_stuck(run, delta)
                emit(RunFinished(thread_id=run.thread_id, run_id=run_id), delta())
                return run.clock
            duration = min(self._tool_cap, rng.lognormvariate(math.log(profile.tool_median), profile.tool_sigma))
            emit(ToolCallEnd(tool_call_id=call), duration)
            emit(_result(call), 0.001)

        emit(TextMessageStart(message_id=text, role="assistant"), pause())
        count = rng.randint(*profile.text_deltas)
        skewed = rng.randrange(count) if scenario == "high_latency" else -1
        for index in range(count):
            if index == skewed:
                # Stamped in the past, beyond the threshold: late the moment the bridge observes it.
                skew = _ms(thresholds.high_latency_after) + rng.randint(500, 3000)
                late = TextMessageContent(message_id=text, delta=_words(rng))
                emit(late, delta(), skew_ms=skew, truth=TruthMark(kind="high_latency"))
            else:
                emit(TextMessageContent(message_id=text, delta=_words(rng)), delta())
        emit(TextMessageEnd(message_id=text), delta())

        end_gap = delta()
        if scenario is None and self._natural_error(rng, run.clock + end_gap, used_slots):
            emit(RunError(message="the model provider returned an error", code="provider_error"), end_gap)
        else:
            emit(RunFinished(thread_id=run.thread_id, run_id=run_id), end_gap)
        run_end = run.clock
        if scenario == "duplicate_completion":
            again = RunFinished(thread_id=run.thread_id, run_id=run_id)
            emit(again, rng.uniform(0.5, 3.0), truth=TruthMark(kind="duplicate_completion"))
        elif scenario == "event_after_completion":
            late = TextMessageContent(message_id=text, delta=" (late)")
            emit(late, rng.uniform(0.5, 3.0), truth=TruthMark(kind="event_after_completion"))
        return run_end

    def _heartbeat_past_stuck(self, run: _RunBuilder, delta: Callable[[], float]) -> None:
        # The call never ends, but the run keeps streaming progress until past the threshold, so it is stuck and
        # NOT also stale; it then finishes with the call still open.
        thresholds = self._thresholds
        beat = min(10.0, max(0.5, thresholds.stale_thread_after / 4))
        progress = f"{run.run_id}.progress"
        run.emit(TextMessageStart(message_id=progress, role="assistant"), delta())
        for _ in range(math.ceil(thresholds.stuck_tool_after / beat) + 2):
            run.emit(TextMessageContent(message_id=progress, delta="."), beat)
        run.emit(TextMessageEnd(message_id=progress), delta())

    def _natural_error(self, rng: random.Random, at: float, used_slots: set[int]) -> bool:
        errors = self._errors
        if errors is None:
            return False
        slot = errors.slot_for(self._index, at)
        if slot is None or slot in used_slots or rng.random() >= self._profile.error_rate:
            return False
        used_slots.add(slot)
        return True


def burst_script(
    thread_id: str, times: Sequence[float], thresholds: DetectionThresholds, *, until: float
) -> Iterator[ScriptStep]:
    """Steps of a thread that only carries injected error bursts: at each time, ``error_burst_count`` short runs
    that each end in RUN_ERROR, 0.25 s apart; the last error of each burst makes it detectable."""
    count = thresholds.error_burst_count
    for burst, start in enumerate(times):
        if start >= until:
            return
        for index in range(count):
            run_id = f"{thread_id}.b{burst}.r{index}"
            at = start + 0.25 * index
            yield ScriptStep(
                at=at,
                thread_id=thread_id,
                run_id=run_id,
                event=RunStarted(thread_id=thread_id, run_id=run_id),
                opens_run=True,
                scenario="error_burst",
            )
            yield ScriptStep(
                at=at + 0.1,
                thread_id=thread_id,
                run_id=run_id,
                event=RunError(message="upstream tool service unavailable", code="tool_unavailable"),
                truth=TruthMark(kind="error_burst", stream_wide=True) if index == count - 1 else None,
            )


def burst_span(thresholds: DetectionThresholds) -> float:
    """Seconds one injected error burst lasts, first RUN_STARTED to last RUN_ERROR."""
    return 0.25 * (thresholds.error_burst_count - 1) + 0.1


_TOOLS: Final = ("web_search", "read_file", "run_sql", "fetch_url", "calculator", "send_email")
_WORDS: Final = ("the", "result", "shows", "that", "we", "can", "use", "a", "query", "to", "find", "it", "next")


def _words(rng: random.Random) -> str:
    return " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))


def _args(rng: random.Random) -> str:
    return f'{{"q": "{rng.choice(_WORDS)}"}}'


def _result(tool_call_id: str) -> ToolCallResult:
    return ToolCallResult(message_id=f"{tool_call_id}.result", tool_call_id=tool_call_id, content="ok", role="tool")


def _tool_count(rng: random.Random, most: int) -> int:
    # Fewer calls are more likely: P(k) halves with each extra call.
    count = 0
    while count < most and rng.random() < 0.5:
        count += 1
    return count
