from __future__ import annotations

import heapq
import itertools
import random
from typing import TYPE_CHECKING, Final

import msgspec
from hypothesis import given, settings, strategies as st

from actors.chat._anomaly import ALL_THREADS, Anomaly, AnomalyKey, AnomalyKind, ReportedKeys
from actors.chat._detection import DetectionThresholds, RunTracker
from actors.chat._events import (
    AgentEvent,
    Custom,
    ReasoningEnd,
    ReasoningStart,
    RunError,
    RunFinished,
    RunStarted,
    StampedEvent,
    StepFinished,
    StepStarted,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
)
from actors.chat._finished_runs import FinishedRuns

if TYPE_CHECKING:
    from collections.abc import Iterator

T0: Final = 1_700_000_000_000

# A timeline action: (at, order, tiebreak, stamped event or None, (thread, seq) confirmed or None). At equal
# times events (order 0) come before confirmations (order 1), so a confirmation never precedes its expectation.
Action = tuple[int, int, int, StampedEvent | None, tuple[str, int] | None]
Timed = list[tuple[int, AgentEvent]]


class Limits:
    """Threshold figures in ms, as the tracker rounds them."""

    def __init__(self, thresholds: DetectionThresholds) -> None:
        self.stuck = round(thresholds.stuck_tool_after * 1000)
        self.stale = round(thresholds.stale_thread_after * 1000)
        self.latency = round(thresholds.high_latency_after * 1000)
        self.undelivered = round(thresholds.undelivered_after * 1000)
        self.window = round(thresholds.error_burst_window * 1000)
        self.burst = thresholds.error_burst_count
        self.retention = round(thresholds.retention * 1000)


def pick(rng: random.Random, limit: int) -> int:
    """A duration in [0, limit]: usually short, sometimes anywhere, sometimes exactly the limit (the boundary)."""
    roll = rng.random()
    if roll < 0.03:
        return limit
    # int(random() * (n + 1)) is uniform over [0, n] and several times cheaper than randint().
    if roll < 0.1:
        return int(rng.random() * (limit + 1))
    return int(rng.random() * (min(limit, 2_000) + 1))


def thirds(duration: int) -> tuple[int, int, int]:
    """Split a duration into three gaps, none longer than a third of it rounded up."""
    first = duration // 3
    second = (duration - first) // 2
    return first, second, duration - first - second


def valid_run(rng: random.Random, limits: Limits, thread: str, run: str, start: int, *, error: bool) -> Timed:
    """One well-formed run with every timing inside its threshold (deadline kinds: at most threshold - 1 ms).

    A server-side tool call (START, ARGS, END, RESULT) gets its RESULT within the stuck threshold of its START; a
    client-side one (START, ARGS, END, no RESULT) can only end the run, which then finishes within the threshold.
    """
    gap = limits.stale - 1  # between consecutive events of a run
    at = start
    out: Timed = [(at, RunStarted(thread_id=thread, run_id=run))]

    def emit(event: AgentEvent, after: int) -> None:
        nonlocal at
        at += after
        out.append((at, event))

    def call_lasting(call: str) -> tuple[int, int]:
        """Open a call and stream its arguments; return the two gaps left for what closes it (under the threshold)."""
        # Three gaps split the call's duration, so each stays under the stale threshold as well.
        args, end, close = thirds(pick(rng, min(limits.stuck - 1, 3 * gap)))
        emit(ToolCallStart(tool_call_id=call, tool_call_name="search"), pick(rng, gap))
        emit(ToolCallArgs(tool_call_id=call, delta="{}"), args)
        return end, close

    for block in range(rng.randint(0, 3)):
        shape = rng.randrange(4)
        if shape == 0:
            call = f"{run}-call{block}"
            end, close = call_lasting(call)
            emit(ToolCallEnd(tool_call_id=call), end)
            emit(ToolCallResult(message_id=f"{call}-result", tool_call_id=call, content="ok"), close)
        elif shape == 1:
            message = f"{run}-m{block}"
            emit(TextMessageStart(message_id=message), pick(rng, gap))
            for _ in range(rng.randint(0, 3)):
                emit(TextMessageContent(message_id=message, delta="x"), pick(rng, gap))
            emit(TextMessageEnd(message_id=message), pick(rng, gap))
        elif shape == 2:
            emit(ReasoningStart(message_id=f"{run}-r{block}"), pick(rng, gap))
            emit(ReasoningEnd(message_id=f"{run}-r{block}"), pick(rng, gap))
        else:
            emit(StepStarted(step_name="plan"), pick(rng, gap))
            emit(StepFinished(step_name="plan"), pick(rng, gap))
    finish = RunError(message="tool failed") if error else RunFinished(thread_id=thread, run_id=run)
    if rng.random() < 0.25:
        call = f"{run}-client"
        end, close = call_lasting(call)
        emit(ToolCallEnd(tool_call_id=call), end)
        emit(finish, close)
    else:
        emit(finish, pick(rng, gap))
    return [(at, stamp_time(rng, limits, event, at)) for at, event in out]


def stamp_time(rng: random.Random, limits: Limits, event: AgentEvent, at: int) -> AgentEvent:
    """Give most events a producer timestamp no more than the latency threshold before ``at``."""
    if rng.random() < 0.3:
        return event
    return msgspec.structs.replace(event, timestamp=at - pick(rng, limits.latency))


def run_actions(
    rng: random.Random,
    limits: Limits,
    thread: str,
    run: str,
    timed: Timed,
    tiebreak: Iterator[int],
    *,
    drop_last_confirm: bool = False,
) -> list[Action]:
    """The bridge's view of a run on its own thread: each event accepted, routed, and confirmed in time.

    Confirmations are batched at random, as the bridge's writers report them: one covers every seq up to its own,
    and it comes before the oldest seq it covers is overdue.
    """
    actions: list[Action] = []
    last = len(timed)
    oldest: int | None = None  # when the oldest unconfirmed event was accepted
    first = 1  # and its seq
    for seq, (at, event) in enumerate(timed, start=1):
        actions.append((at, 0, next(tiebreak), stamped(event, thread, run, seq, at), None))
        if oldest is None:
            oldest, first = at, seq
        latest = oldest + limits.undelivered - 1  # the last ms at which a confirmation is still in time
        if seq < last and timed[seq][0] <= latest and rng.random() < 0.5:
            continue  # batch this one with the next
        if seq == last and drop_last_confirm:
            if first < seq:  # confirm the rest of the batch; only the last event stays unconfirmed
                actions.append((at, 1, next(tiebreak), None, (thread, seq - 1)))
            continue
        actions.append((at + pick(rng, latest - at), 1, next(tiebreak), None, (thread, seq)))
        oldest = None
    return actions


def stamped(event: AgentEvent, thread: str, run: str, seq: int, at: int) -> StampedEvent:
    # Routed to one connection: every event is expected to be delivered.
    return StampedEvent(thread_id=thread, run_id=run, seq=seq, observed_at=at, event=event, frame=b"", fan_out=1)


def drive(tracker: RunTracker, actions: Iterator[Action], *, ingest: bool = False) -> list[Anomaly]:
    """Play a timeline the way the monitor actor does: fire each deadline exactly when it comes due.

    :param ingest: feed the events with ``ingest`` (the monitor's path), in runs of consecutive events as the
        monitor takes them from its mailbox, rather than each with ``observe`` then ``expect_delivery``; the two
        must not differ. A run holds the events of one ms (a deadline one of them sets cannot fall due inside it)
        and ends where a deadline falls due or a confirmation comes.
    """
    found: list[Anomaly] = []
    taps: list[StampedEvent] = []
    for at, _, _, item, confirmation in actions:
        if taps and taps[0].observed_at != at:
            found += tracker.ingest(taps)
            taps = []
        if (deadline := tracker.next_deadline()) is not None and deadline <= at:
            if taps:
                found += tracker.ingest(taps)
                taps = []
            while (deadline := tracker.next_deadline()) is not None and deadline <= at:
                found += fire(tracker, deadline)
        if item is not None and ingest:
            taps.append(item)
            continue
        if taps:
            found += tracker.ingest(taps)
            taps = []
        if item is not None:
            found += tracker.observe(item)
            tracker.expect_delivery(item.thread_id, item.seq, item.observed_at)
        else:
            assert confirmation is not None
            tracker.confirm_delivery(*confirmation)
    if taps:
        found += tracker.ingest(taps)
    while (deadline := tracker.next_deadline()) is not None:
        found += fire(tracker, deadline)
    return found


def fire(tracker: RunTracker, deadline: int) -> tuple[Anomaly, ...]:
    found = tracker.advance(deadline)
    following = tracker.next_deadline()
    assert following is None or following > deadline, "advance() left a deadline it was due to fire"
    return found


# ---------------------------------------------------------------- injected faults
# The tracker produces every kind but health_claim_mismatch (the audit's); error_burst spans runs, so it is
# injected on its own.

Expected = tuple[AnomalyKey, int]  # the anomaly's key and when it must be detected


def inject(
    kind: AnomalyKind, rng: random.Random, limits: Limits, thread: str, run: str, start: int, tiebreak: Iterator[int]
) -> tuple[list[Action], Expected]:
    """A run on its own thread carrying exactly one fault of ``kind``; error bursts are injected separately."""
    timed = valid_run(rng, limits, thread, run, start, error=False)
    if kind is AnomalyKind.STUCK_TOOL:
        while not any(isinstance(event, ToolCallStart) for _, event in timed):
            timed = valid_run(rng, limits, thread, run, start, error=False)
    filler = Custom(name="filler", value=None)
    subject: tuple[str | None, int | None] = (None, None)  # (tool_call_id, seq)
    drop_last_confirm = False
    if kind is AnomalyKind.MISSING_AGENT_STARTED:
        timed[0] = (timed[0][0], filler)  # same time, so no gap grows
        detected = timed[0][0]
    elif kind is AnomalyKind.ORPHAN_TOOL_COMPLETED:
        index = rng.randrange(len(timed) - 1)
        timed.insert(index + 1, (timed[index][0], ToolCallEnd(tool_call_id="ghost")))
        detected, subject = timed[index][0], ("ghost", None)
    elif kind is AnomalyKind.STUCK_TOOL:
        index = next(n for n, (_, event) in enumerate(timed) if isinstance(event, ToolCallStart))
        opening = timed[index][1]
        assert isinstance(opening, ToolCallStart)
        call = opening.tool_call_id
        detected, subject = timed[index][0] + limits.stuck, (call, None)
        if rng.random() < 0.5:
            # Never ends: its arguments stop streaming, whether or not the run then finishes.
            closes: tuple[type, ...] = (ToolCallEnd, ToolCallResult)
        else:
            # Hung while executing: END, then no RESULT, and the run still going at the deadline.
            closes = (ToolCallResult,)
            end = next(n for n, (_, event) in enumerate(timed) if isinstance(event, ToolCallEnd) and n > index)
            timed = postpone_after(timed, end, until=detected, gap=limits.stale - 1, filler=filler)
        timed = [
            (at, filler if isinstance(event, closes) and getattr(event, "tool_call_id", None) == call else event)
            for at, event in timed
        ]
    elif kind is AnomalyKind.STALE_THREAD:
        timed.pop()  # no RUN_FINISHED, and no client-side call left open at the end (that would be stuck)
        timed = [(at, event) for at, event in timed if getattr(event, "tool_call_id", None) != f"{run}-client"]
        detected = timed[-1][0] + limits.stale
    elif kind is AnomalyKind.HIGH_LATENCY:
        index = rng.randrange(len(timed))
        at, event = timed[index]
        timed[index] = (at, msgspec.structs.replace(event, timestamp=at - limits.latency - 1))
        detected = at
    elif kind is AnomalyKind.DUPLICATE_COMPLETION:
        timed.append((timed[-1][0], RunFinished(thread_id=thread, run_id=run)))
        detected = timed[-1][0]
    elif kind is AnomalyKind.EVENT_AFTER_COMPLETION:
        # Still inside the retention: a later event would belong to a forgotten run.
        timed.append((timed[-1][0] + pick(rng, min(60_000, limits.retention - 1)), filler))
        detected = timed[-1][0]
    elif kind is AnomalyKind.UNDELIVERED_EVENT:
        drop_last_confirm = True
        detected, subject = timed[-1][0] + limits.undelivered, (None, len(timed))
    else:
        raise AssertionError(f"no injection for {kind}")
    actions = run_actions(rng, limits, thread, run, timed, tiebreak, drop_last_confirm=drop_last_confirm)
    run_id = None if kind is AnomalyKind.UNDELIVERED_EVENT else run
    return actions, ((kind, thread, run_id, subject[0], subject[1], None), detected)


def postpone_after(timed: Timed, index: int, *, until: int, gap: int, filler: AgentEvent) -> Timed:
    """Move the events after ``timed[index]`` later, so the last one comes no earlier than ``until``; fill the
    widened silence with ``filler`` events no more than ``gap`` apart, so the run does not go stale meanwhile."""
    shift = max(0, until - timed[-1][0])
    if not shift:
        return timed
    head, tail = timed[: index + 1], [(at + shift, later(event, shift)) for at, event in timed[index + 1 :]]
    at = head[-1][0] + gap
    while at < tail[0][0]:
        head.append((at, filler))
        at += gap
    return head + tail


def later(event: AgentEvent, shift: int) -> AgentEvent:
    """The event as its producer would have stamped it ``shift`` ms later (so it is no later to arrive)."""
    if event.timestamp is None:
        return event
    return msgspec.structs.replace(event, timestamp=event.timestamp + shift)


def inject_burst(
    rng: random.Random, limits: Limits, after: int, tiebreak: Iterator[int]
) -> tuple[list[Action], Expected]:
    """``error_burst_count`` failing runs, the last one exactly inside the window: one burst, nothing else."""
    actions: list[Action] = []
    at = after
    spacing = (limits.window - 1) // max(1, limits.burst - 1)
    for n in range(limits.burst):
        thread = run = f"burst-{n}"
        timed: Timed = [(at, RunStarted(thread_id=thread, run_id=run)), (at, RunError(message="upstream down"))]
        actions += run_actions(rng, limits, thread, run, timed, tiebreak)
        if n < limits.burst - 1:
            at += spacing
    window_start = at - at % limits.window
    return actions, ((AnomalyKind.ERROR_BURST, ALL_THREADS, None, None, None, window_start), at)


INJECTABLE: Final[list[AnomalyKind]] = [
    kind for kind in AnomalyKind if kind not in (AnomalyKind.ERROR_BURST, AnomalyKind.HEALTH_CLAIM_MISMATCH)
]


def timeline(actions: list[Action]) -> Iterator[Action]:
    return iter(sorted(actions))


def report(found: list[Anomaly]) -> list[Expected]:
    return sorted((anomaly.key, anomaly.detected_at) for anomaly in found)


# ---------------------------------------------------------------- hypothesis

thresholds_strategy = st.builds(
    DetectionThresholds,
    stuck_tool_after=st.integers(2, 120_000).map(lambda ms: ms / 1000),
    stale_thread_after=st.integers(2, 120_000).map(lambda ms: ms / 1000),
    high_latency_after=st.integers(1, 10_000).map(lambda ms: ms / 1000),
    error_burst_count=st.integers(1, 8),
    error_burst_window=st.integers(1, 120_000).map(lambda ms: ms / 1000),
    undelivered_after=st.integers(2, 20_000).map(lambda ms: ms / 1000),
    retention=st.integers(1, 600_000).map(lambda ms: ms / 1000),
)


class TestValidRunsProperties:
    @settings(max_examples=300, deadline=None)
    @given(
        thresholds=thresholds_strategy,
        rng=st.randoms(use_true_random=False),
        runs=st.integers(1, 8),
        ingest=st.booleans(),
    )
    def test_valid_runs_under_thresholds_report_nothing(
        self, thresholds: DetectionThresholds, rng: random.Random, runs: int, ingest: bool
    ) -> None:
        limits = Limits(thresholds)
        tiebreak = itertools.count()
        errors = rng.randint(0, limits.burst - 1)  # fewer than a burst, wherever they fall
        actions: list[Action] = []
        for n in range(runs):
            start = T0 + rng.randint(0, 120_000)
            timed = valid_run(rng, limits, f"t{n}", f"r{n}", start, error=n < errors)
            actions += run_actions(rng, limits, f"t{n}", f"r{n}", timed, tiebreak)
        tracker = RunTracker(thresholds)
        assert drive(tracker, timeline(actions), ingest=ingest) == []
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_retained, stats.pending_deadlines) == (0, 0, 0)

    @settings(max_examples=300, deadline=None)
    @given(
        thresholds=thresholds_strategy,
        rng=st.randoms(use_true_random=False),
        runs=st.integers(0, 6),
        kind=st.sampled_from([*INJECTABLE, AnomalyKind.ERROR_BURST]),
        ingest=st.booleans(),
    )
    def test_injected_anomaly_is_detected_once_at_its_deadline(
        self, thresholds: DetectionThresholds, rng: random.Random, runs: int, kind: AnomalyKind, ingest: bool
    ) -> None:
        limits = Limits(thresholds)
        tiebreak = itertools.count()
        actions: list[Action] = []
        latest = T0
        for n in range(runs):
            timed = valid_run(rng, limits, f"t{n}", f"r{n}", T0 + rng.randint(0, 120_000), error=False)
            latest = max(latest, timed[-1][0])
            actions += run_actions(rng, limits, f"t{n}", f"r{n}", timed, tiebreak)
        if kind is AnomalyKind.ERROR_BURST:
            faulty, expected = inject_burst(rng, limits, latest, tiebreak)
        else:
            faulty, expected = inject(kind, rng, limits, "faulty", "faulty-run", T0 + rng.randint(0, 120_000), tiebreak)
        tracker = RunTracker(thresholds)
        assert report(drive(tracker, timeline(actions + faulty), ingest=ingest)) == [expected]


# ---------------------------------------------------------------- at scale, fixed seed


def scaled_timeline(
    rng: random.Random, limits: Limits, runs: int, faults: dict[int, AnomalyKind], expected: list[Expected]
) -> Iterator[Action]:
    """``runs`` runs starting 5 ms apart (thousands in flight at once), merged lazily in time order."""
    tiebreak = itertools.count()
    pending: list[Action] = []
    for n in range(runs):
        start = T0 + 5 * n
        while pending and pending[0][0] < start:
            yield heapq.heappop(pending)
        thread, run = f"t{n}", f"r{n}"
        fault = faults.get(n)
        if fault is None:
            # Four failed runs in all: fewer than a burst, wherever they end.
            timed = valid_run(rng, limits, thread, run, start, error=n % 25_000 == 0)
            actions = run_actions(rng, limits, thread, run, timed, tiebreak)
        else:
            actions, wanted = inject(fault, rng, limits, thread, run, start, tiebreak)
            expected.append(wanted)
        for action in actions:
            heapq.heappush(pending, action)
    latest = max(action[0] for action in pending) if pending else T0
    burst, wanted = inject_burst(rng, limits, latest + limits.window, tiebreak)
    expected.append(wanted)
    for action in burst:
        heapq.heappush(pending, action)
    while pending:
        yield heapq.heappop(pending)


class TestAtScale:
    def test_100k_valid_runs_report_only_the_injected_anomalies(self) -> None:
        rng = random.Random(20250901)
        thresholds = DetectionThresholds()
        runs = 100_000
        faulty = rng.sample(range(runs), len(INJECTABLE))
        faults = dict(zip(faulty, INJECTABLE, strict=True))
        expected: list[Expected] = []
        tracker = RunTracker(thresholds)
        found = drive(tracker, scaled_timeline(rng, Limits(thresholds), runs, faults, expected), ingest=True)
        assert report(found) == sorted(expected)
        assert len(expected) == len(INJECTABLE) + 1
        stats = tracker.statistics()
        assert stats.events_observed > 5 * runs
        assert (stats.runs_in_flight, stats.runs_retained, stats.evictions) == (0, 0, 0)


# ---------------------------------------------------------------- undelivered_event, against a plain model


class GapModel:
    """The ``undelivered_event`` rule of one thread stated plainly: every expected seq with its deadline.

    A gap opens when seqs are first found overdue (reported once, keyed by the first of them) and closes when a
    confirmation reaches the highest seq found overdue; seqs overdue while it is open are not reported.
    """

    def __init__(self, undelivered_ms: int) -> None:
        self.undelivered_ms = undelivered_ms
        self.known = False
        self.confirmed = 0
        self.due: dict[int, int] = {}
        self.gap = 0
        self.overdue_through = 0

    def expect(self, seq: int, at: int) -> None:
        if not self.known:
            self.known, self.confirmed = True, seq - 1
        if seq > self.confirmed:
            self.due[seq] = at + self.undelivered_ms

    def confirm(self, seq: int) -> None:
        if not self.known:
            self.known, self.confirmed = True, seq
            return
        if seq <= self.confirmed:
            return
        self.confirmed = seq
        if self.gap and seq >= self.overdue_through:
            self.gap = 0
        self.due = {pending: due for pending, due in self.due.items() if pending > seq}

    def advance(self, now: int) -> list[int]:
        overdue = sorted(seq for seq, due in self.due.items() if due <= now)
        if not overdue:
            return []
        for seq in overdue:
            del self.due[seq]
        self.overdue_through = overdue[-1]
        if self.gap:
            return []
        self.gap = overdue[0]
        return [overdue[0]]


DeliveryOp = tuple[str, int, int]  # (thread, what: 0 expect / 1 confirm / 2 advance, amount)


class TestUndeliveredGapsProperties:
    @settings(max_examples=400, deadline=None)
    @given(
        undelivered=st.integers(1, 50),
        ops=st.lists(
            st.tuples(st.sampled_from(["t1", "t2"]), st.integers(0, 2), st.integers(0, 40)), min_size=1, max_size=80
        ),
    )
    def test_reports_match_the_gap_model(self, undelivered: int, ops: list[DeliveryOp]) -> None:
        tracker = RunTracker(DetectionThresholds(undelivered_after=undelivered / 1000))
        models = {thread: GapModel(undelivered) for thread in ("t1", "t2")}
        expected_through = {"t1": 0, "t2": 0}
        now = T0
        for thread, what, amount in ops:
            if what == 0:  # the next seq of the thread is routed, `amount` ms from now
                now += amount % 5
                expected_through[thread] += 1 + amount // 30  # sometimes a seq was not routed (skipped)
                seq = expected_through[thread]
                tracker.expect_delivery(thread, seq, now)
                models[thread].expect(seq, now)
            elif what == 1:  # a confirmation anywhere up to a little past what was expected: stale, partial, ahead
                seq = amount * (expected_through[thread] + 2) // 40
                tracker.confirm_delivery(thread, seq)
                models[thread].confirm(seq)
            else:
                now += amount
                found = tracker.advance(now)
                wanted = sorted((thread, seq) for thread, model in models.items() for seq in model.advance(now))
                assert sorted((a.thread_id, a.seq) for a in found) == wanted
                assert all(a.kind is AnomalyKind.UNDELIVERED_EVENT and a.detected_at == now for a in found)
            assert tracker.statistics().pending_deliveries == sum(len(model.due) for model in models.values())


# ---------------------------------------------------------------- restarts: rebuilt against uninterrupted

RESTARTABLE: Final[list[AnomalyKind]] = [kind for kind in INJECTABLE if kind is not AnomalyKind.UNDELIVERED_EVENT]


def observed_only(actions: list[Action]) -> list[Action]:
    """The events of a timeline without its delivery confirmations (a rebuild restores runs, not deliveries)."""
    return sorted(action for action in actions if action[3] is not None)


def play(tracker: RunTracker, actions: list[Action], found: list[Anomaly]) -> None:
    """Observe each event after firing the deadlines due by then, as the monitor does (no final drain)."""
    for at, _, _, item, _ in actions:
        while (deadline := tracker.next_deadline()) is not None and deadline <= at:
            found += fire(tracker, deadline)
        assert item is not None
        found += tracker.observe(item)


def drain(tracker: RunTracker, found: list[Anomaly]) -> None:
    while (deadline := tracker.next_deadline()) is not None:
        found += fire(tracker, deadline)


def lose_completed_heads(items: list[StampedEvent], keep: set[str]) -> list[StampedEvent]:
    """What a bounded ring may hold: each run (not in ``keep``) loses everything up to its RUN_FINISHED.

    Runs that failed keep theirs: a RUN_ERROR the ring lost no longer counts towards a burst after the restart.
    """
    completed: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        if isinstance(item.event, RunFinished):
            completed.setdefault((item.thread_id, item.run_id), index)
    return [
        item
        for index, item in enumerate(items)
        if item.run_id in keep or index > completed.get((item.thread_id, item.run_id), -1)
    ]


class TestRestartProperties:
    @settings(max_examples=300, deadline=None)
    @given(
        thresholds=thresholds_strategy,
        rng=st.randoms(use_true_random=False),
        runs=st.integers(0, 6),
        kinds=st.lists(st.sampled_from(RESTARTABLE), max_size=3),
        burst=st.booleans(),
        cut=st.floats(0, 1),
        lose_heads=st.booleans(),
        slice_events=st.integers(1, 8),
    )
    def test_restart_anywhere_reports_what_an_uninterrupted_tracker_reports(
        self,
        thresholds: DetectionThresholds,
        rng: random.Random,
        runs: int,
        kinds: list[AnomalyKind],
        burst: bool,
        cut: float,
        lose_heads: bool,
        slice_events: int,
    ) -> None:
        limits = Limits(thresholds)
        tiebreak = itertools.count()
        actions: list[Action] = []
        latest = T0
        for n in range(runs):
            timed = valid_run(rng, limits, f"t{n}", f"r{n}", T0 + rng.randint(0, 120_000), error=n % 2 == 1)
            latest = max(latest, timed[-1][0])
            actions += run_actions(rng, limits, f"t{n}", f"r{n}", timed, tiebreak)
        stuck_runs: set[str] = set()
        for n, kind in enumerate(kinds):
            faulty, _ = inject(kind, rng, limits, f"f{n}", f"fr{n}", T0 + rng.randint(0, 120_000), tiebreak)
            actions += faulty
            if kind is AnomalyKind.STUCK_TOOL:
                stuck_runs.add(f"fr{n}")  # a call it leaves open past its finish is only in its lost head
        if burst:
            actions += inject_burst(rng, limits, latest, tiebreak)[0]
        events = observed_only(actions)
        uninterrupted: list[Anomaly] = []
        reference = RunTracker(thresholds)
        play(reference, events, uninterrupted)
        drain(reference, uninterrupted)

        # The same stream, with the monitor restarted after `split` events: the previous tracker's reports, the
        # rebuilt one's, then the rest of the stream.
        split = int(cut * len(events))
        memory = FinishedRuns()
        before: list[Anomaly] = []
        previous = RunTracker(thresholds, finished_runs=memory)
        play(previous, events[:split], before)
        reported = ReportedKeys()
        for anomaly in before:
            reported.add(anomaly.key)
        seen = [action[3] for action in events[:split] if action[3] is not None]
        if lose_heads:
            seen = lose_completed_heads(seen, stuck_runs)
        rebuilt = RunTracker(thresholds, finished_runs=memory)
        horizon = events[split - 1][0] if split else T0
        steps = rebuilt.rebuild_in_slices(seen, horizon, already_reported=reported, slice_events=slice_events)
        after: list[Anomaly] = []
        while True:
            try:
                next(steps)
            except StopIteration as done:
                after += done.value
                break
        play(rebuilt, events[split:], after)
        drain(rebuilt, after)
        assert sorted(a.key for a in before + after) == sorted(a.key for a in uninterrupted)
