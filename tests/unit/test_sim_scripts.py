from __future__ import annotations

import random
from collections import defaultdict
from itertools import pairwise

import pytest

from actors.chat._anomaly import ALL_THREADS
from actors.chat._detection import DetectionThresholds
from actors.chat._events import (
    RunError,
    RunFinished,
    RunStarted,
    TextMessageContent,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
)
from actors.sim._faults import FAULT_PHASE, RUN_SCENARIOS, FaultSpecError, occurrence_times, parse_duration, parse_fault
from actors.sim._plan import SimulationSpec, plan_simulation
from actors.sim._scoring import Detection, Explanation, score
from actors.sim._scripts import (
    AgentProfile,
    ErrorRoom,
    GroundTruth,
    ScriptStep,
    ThreadScript,
    burst_span,
    truth_of,
)

THRESHOLDS = DetectionThresholds()
STUCK_MS = round(THRESHOLDS.stuck_tool_after * 1000)
STALE_MS = round(THRESHOLDS.stale_thread_after * 1000)


def script(*, seed: int = 7, until: float = 600.0, **kwargs: object) -> list[ScriptStep]:
    return list(
        ThreadScript("t", 0, seed=seed, until=until, thresholds=THRESHOLDS, profile=AgentProfile(), **kwargs)  # type: ignore[arg-type]
    )


def runs_of(steps: list[ScriptStep]) -> dict[str, list[ScriptStep]]:
    runs: dict[str, list[ScriptStep]] = defaultdict(list)
    for step in steps:
        runs[step.run_id].append(step)
    return runs


def tag(step: ScriptStep) -> str:
    return str(type(step.event).__struct_config__.tag)


class TestParseFault:
    def test_parse_fault_percent_share_of_runs(self) -> None:
        spec = parse_fault("stuck_tool:2%")
        assert (spec.name, spec.share, spec.count) == ("stuck_tool", 0.02, None)

    def test_parse_fault_every_with_unit_seconds(self) -> None:
        assert parse_fault("monitor_crash:every=500ms").every == 0.5
        assert parse_fault("monitor_crash:every=2m").every == 120.0

    def test_parse_fault_repeated_at_sorted(self) -> None:
        assert parse_fault("monitor_hang:at=40s,at=10s").at == (10.0, 40.0)

    def test_parse_fault_without_argument_once(self) -> None:
        spec = parse_fault("stale_thread")
        assert (spec.count, spec.share, spec.every, spec.at) == (1, None, None, ())

    def test_parse_fault_options_kept(self) -> None:
        spec = parse_fault("monitor_block:count=2,seconds=0.3")
        assert (spec.count, spec.seconds) == (2, 0.3)
        assert parse_fault("monitor_flood:messages=500").messages == 500

    def test_parse_fault_unknown_name_lists_known_faults(self) -> None:
        with pytest.raises(FaultSpecError, match=r"unknown fault 'stuck'.*stuck_tool"):
            parse_fault("stuck:2%")

    def test_parse_fault_share_of_scheduled_fault_names_rule(self) -> None:
        with pytest.raises(FaultSpecError, match=r"monitor_crash: 5% is a share.*count=N, every=DUR or at=DUR"):
            parse_fault("monitor_crash:5%")

    def test_parse_fault_two_schedules_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="give one schedule"):
            parse_fault("stuck_tool:2%,count=3")

    def test_parse_fault_option_of_another_fault_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="stuck_tool takes no option 'seconds'"):
            parse_fault("stuck_tool:seconds=1")

    @pytest.mark.parametrize("text", ["stuck_tool:0%", "stuck_tool:150%", "stuck_tool:abc%"])
    def test_parse_fault_share_out_of_range_rejected(self, text: str) -> None:
        with pytest.raises(FaultSpecError, match="stuck_tool"):
            parse_fault(text)

    def test_parse_fault_bad_duration_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="every: 'soon' is not a duration"):
            parse_fault("monitor_crash:every=soon")

    def test_parse_duration_bare_number_is_seconds(self) -> None:
        assert parse_duration("1.5") == 1.5
        assert parse_duration("1h") == 3600.0
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration("-1s")


class TestOccurrenceTimes:
    def test_occurrence_times_every_inside_traffic_off_tick_grid(self) -> None:
        times = occurrence_times(parse_fault("monitor_crash:every=5s"), 20.0, random.Random(0))
        assert times == [5 + FAULT_PHASE, 10 + FAULT_PHASE, 15 + FAULT_PHASE]

    def test_occurrence_times_count_spread_over_slices(self) -> None:
        times = occurrence_times(parse_fault("stuck_tool:count=4"), 100.0, random.Random(0))
        assert len(times) == 4
        assert all(5.0 <= t <= 85.0 for t in times)
        assert times == sorted(times)

    def test_occurrence_times_at_after_traffic_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match=r"at=90s is not within the traffic \(0 .. 60 s\)"):
            occurrence_times(parse_fault("monitor_hang:at=90s"), 60.0, random.Random(0))

    def test_occurrence_times_every_longer_than_traffic_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="never fires"):
            occurrence_times(parse_fault("monitor_hang:every=2m"), 60.0, random.Random(0))

    def test_occurrence_times_share_none_scheduled(self) -> None:
        assert occurrence_times(parse_fault("stuck_tool:5%"), 60.0, random.Random(0)) == []


class TestThreadScript:
    def test_thread_script_same_seed_same_steps(self) -> None:
        assert script(seed=3) == script(seed=3)
        assert script(seed=3) != script(seed=4)

    def test_thread_script_steps_in_time_order_and_no_run_starts_after_until(self) -> None:
        steps = script(until=300.0)
        assert [step.at for step in steps] == sorted(step.at for step in steps)
        assert all(step.at < 300.0 for step in steps if step.opens_run)

    def test_thread_script_healthy_runs_well_formed(self) -> None:
        runs = runs_of(script(until=1200.0))
        assert len(runs) > 50
        profile = AgentProfile()
        cap = min(profile.tool_cap, 0.5 * THRESHOLDS.stuck_tool_after)
        for steps in runs.values():
            assert isinstance(steps[0].event, RunStarted)
            assert steps[0].opens_run
            assert steps[0].scenario is None
            assert [tag(step) for step in steps].count("RUN_STARTED") == 1
            assert isinstance(steps[-1].event, RunFinished | RunError)
            assert sum(isinstance(step.event, RunFinished | RunError) for step in steps) == 1
            assert all(step.truth is None and step.skew_ms == 0 for step in steps)
            assert all(b.at - a.at < THRESHOLDS.stale_thread_after / 2 for a, b in pairwise(steps))
            started = {step.event.tool_call_id: step.at for step in steps if isinstance(step.event, ToolCallStart)}
            ended = {step.event.tool_call_id: step.at for step in steps if isinstance(step.event, ToolCallEnd)}
            results = {step.event.tool_call_id for step in steps if isinstance(step.event, ToolCallResult)}
            assert started.keys() == ended.keys() == results
            assert len(started) <= profile.max_tool_calls
            assert all(ended[call] - started[call] <= cap + 1.0 for call in started)

    def test_thread_script_tool_durations_heavy_tailed(self) -> None:
        runs = runs_of(script(until=3600.0))
        durations = []
        for steps in runs.values():
            args_done: dict[str, float] = {}
            for step in steps:
                event = step.event
                if tag(step) == "TOOL_CALL_ARGS":
                    args_done[event.tool_call_id] = step.at  # type: ignore[union-attr]
                elif isinstance(event, ToolCallEnd):
                    durations.append(step.at - args_done[event.tool_call_id])
        durations.sort()
        median = durations[len(durations) // 2]
        assert durations[-1] > 5 * median  # lognormal: the slowest calls are many times the typical one

    @pytest.mark.parametrize("kind", RUN_SCENARIOS)
    def test_thread_script_ticket_injects_scenario_into_next_run(self, kind: str) -> None:
        steps = script(tickets=[(100.0, kind)])
        runs = runs_of(steps)
        scenario_runs = [run for run in runs.values() if run[0].scenario == kind]
        assert len(scenario_runs) == 1
        run = scenario_runs[0]
        assert run[0].at >= 100.0
        earlier = [other[0].at for other in runs.values() if 100.0 <= other[0].at < run[0].at]
        assert earlier == []  # the first run starting at or after the ticket
        marked = [step for step in run if step.truth is not None]
        assert len(marked) == 1
        assert marked[0].truth is not None
        assert marked[0].truth.kind == kind

    def test_thread_script_stuck_tool_keeps_run_alive_but_never_ends_call(self) -> None:
        run = next(run for run in runs_of(script(tickets=[(50.0, "stuck_tool")])).values() if run[0].scenario)
        start = next(step for step in run if step.truth is not None)
        assert isinstance(start.event, ToolCallStart)
        assert start.truth is not None
        assert start.truth.due_after_ms == STUCK_MS
        call = start.event.tool_call_id
        assert not any(isinstance(step.event, ToolCallEnd | ToolCallResult) for step in run)
        assert all(b.at - a.at < THRESHOLDS.stale_thread_after for a, b in pairwise(run))  # never also stale
        assert run[-1].at > start.at + THRESHOLDS.stuck_tool_after  # still streaming when it becomes stuck
        assert isinstance(run[-1].event, RunFinished)
        assert call.endswith(".tc0") or ".tc" in call

    def test_thread_script_stale_run_goes_silent_without_open_tool(self) -> None:
        run = next(run for run in runs_of(script(tickets=[(50.0, "stale_thread")])).values() if run[0].scenario)
        assert run[-1].truth is not None
        assert run[-1].truth.due_after_ms == STALE_MS
        assert not any(isinstance(step.event, RunFinished | RunError) for step in run)
        opened = sum(isinstance(step.event, ToolCallStart) for step in run)
        closed = sum(isinstance(step.event, ToolCallEnd) for step in run)
        assert opened == closed

    def test_thread_script_missing_start_begins_without_run_started(self) -> None:
        run = next(
            run for run in runs_of(script(tickets=[(50.0, "missing_agent_started")])).values() if run[0].scenario
        )
        assert not any(isinstance(step.event, RunStarted) for step in run)
        assert run[0].truth is not None

    def test_thread_script_orphan_completion_for_call_never_started(self) -> None:
        run = next(
            run for run in runs_of(script(tickets=[(50.0, "orphan_tool_completed")])).values() if run[0].scenario
        )
        marked = next(step for step in run if step.truth is not None)
        assert isinstance(marked.event, ToolCallEnd)
        assert marked.truth is not None
        assert marked.truth.tool_call_id == marked.event.tool_call_id
        started = {step.event.tool_call_id for step in run if isinstance(step.event, ToolCallStart)}
        assert marked.event.tool_call_id not in started

    def test_thread_script_high_latency_skews_one_timestamp_past_threshold(self) -> None:
        run = next(run for run in runs_of(script(tickets=[(50.0, "high_latency")])).values() if run[0].scenario)
        skewed = [step for step in run if step.skew_ms]
        assert len(skewed) == 1
        assert skewed[0].skew_ms > THRESHOLDS.high_latency_after * 1000
        assert skewed[0].truth is not None

    @pytest.mark.parametrize(
        ("kind", "late"), [("duplicate_completion", RunFinished), ("event_after_completion", TextMessageContent)]
    )
    def test_thread_script_late_event_after_run_finished(self, kind: str, late: type) -> None:
        run = next(run for run in runs_of(script(tickets=[(50.0, kind)])).values() if run[0].scenario)
        finished = next(index for index, step in enumerate(run) if isinstance(step.event, RunFinished))
        assert finished == len(run) - 2
        assert isinstance(run[-1].event, late)
        assert run[-1].truth is not None
        assert run[-1].at > run[finished].at

    def test_thread_script_share_one_every_run_drawn(self) -> None:
        runs = runs_of(script(until=200.0, shares=[("high_latency", 1.0)]))
        assert runs
        assert all(run[0].scenario == "high_latency" for run in runs.values())


class TestNaturalErrors:
    def test_natural_errors_never_add_up_to_burst(self) -> None:
        # Every run that may end in error does: the densest the generator can make them.
        profile = AgentProfile(error_rate=1.0, idle_mean=2.0)
        threads = 30
        room = ErrorRoom(1, threads, THRESHOLDS, [])
        errors: list[float] = []
        for index in range(threads):
            steps = ThreadScript(
                f"t{index}", index, seed=1, until=1800.0, thresholds=THRESHOLDS, profile=profile, errors=room
            )
            errors.extend(step.at for step in steps if isinstance(step.event, RunError))
        errors.sort()
        assert len(errors) > 20
        window = THRESHOLDS.error_burst_window
        most = max(sum(1 for t in errors if start <= t < start + window) for start in errors)
        assert most < THRESHOLDS.error_burst_count

    def test_natural_errors_none_near_injected_burst(self) -> None:
        profile = AgentProfile(error_rate=1.0, idle_mean=2.0)
        burst = 600.0
        room = ErrorRoom(1, 10, THRESHOLDS, [(burst, burst + burst_span(THRESHOLDS))])
        window = THRESHOLDS.error_burst_window
        for index in range(10):
            steps = ThreadScript(
                f"t{index}", index, seed=1, until=1200.0, thresholds=THRESHOLDS, profile=profile, errors=room
            )
            assert not any(
                isinstance(step.event, RunError) and burst - window <= step.at <= burst + window for step in steps
            )


class TestPlan:
    def spec(self, *faults: str, **kwargs: object) -> SimulationSpec:
        defaults: dict[str, object] = {"seed": 5, "duration": 600.0, "threads": 12, "clients": 5}
        defaults.update(kwargs)
        return SimulationSpec(faults=tuple(parse_fault(text) for text in faults), **defaults)  # type: ignore[arg-type]

    def test_plan_same_spec_same_plan(self) -> None:
        spec = self.spec("slow_client:count=2", "monitor_crash:every=60s", "stuck_tool:count=3")
        first, second = plan_simulation(spec), plan_simulation(spec)
        assert first.clients == second.clients
        assert first.runtime_faults == second.runtime_faults
        assert all(list(first.script(t)) == list(second.script(t)) for t in first.thread_ids)

    def test_plan_every_thread_followed_by_a_client(self) -> None:
        plan = plan_simulation(self.spec("error_burst", threads=30, clients=7))
        followed = {thread for client in plan.clients for thread in client.threads}
        assert followed == set(plan.thread_ids)
        assert "burst" in plan.thread_ids

    def test_plan_runtime_faults_sorted_with_defaults(self) -> None:
        plan = plan_simulation(self.spec("monitor_block:count=2", "lying_component:at=30s", "monitor_crash:every=200s"))
        assert [fault.at for fault in plan.runtime_faults] == sorted(fault.at for fault in plan.runtime_faults)
        blocks = [fault for fault in plan.runtime_faults if fault.name == "monitor_block"]
        assert len(blocks) == 2
        assert all(fault.seconds == 0.2 for fault in blocks)
        lie = next(fault for fault in plan.runtime_faults if fault.name == "lying_component")
        assert lie.duration == 25.0

    def test_plan_scheduled_scenarios_each_land_once(self) -> None:
        plan = plan_simulation(self.spec("stuck_tool:count=3", "stale_thread:count=2"))
        drawn: dict[str, int] = defaultdict(int)
        for thread in plan.thread_ids:
            for step in plan.script(thread):
                if step.scenario is not None:
                    drawn[step.scenario] += 1
        assert drawn == {"stuck_tool": 3, "stale_thread": 2}

    def test_plan_error_bursts_too_close_rejected(self) -> None:
        with pytest.raises(
            FaultSpecError, match=r"--fault 'error_burst:every=60s': error_burst: bursts must be at least 121.1 s apart"
        ):
            plan_simulation(self.spec("error_burst:every=60s"))

    def test_plan_client_fault_without_clients_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="slow_client: needs at least one client"):
            plan_simulation(self.spec("slow_client", clients=0))

    def test_plan_client_share_hits_about_that_share(self) -> None:
        plan = plan_simulation(self.spec("client_disconnect:50%", clients=40))
        hit = sum(1 for client in plan.clients if client.outages)
        assert 10 <= hit <= 30


class TestGroundTruth:
    def test_truth_of_due_after_emission(self) -> None:
        steps = script(tickets=[(50.0, "stuck_tool")])
        marked = next(step for step in steps if step.truth is not None)
        truth = truth_of(marked, 1_000)
        assert truth == GroundTruth(
            kind="stuck_tool",
            thread_id="t",
            run_id=marked.run_id,
            tool_call_id=marked.truth.tool_call_id if marked.truth else None,
            due_at=1_000 + STUCK_MS,
            fault="stuck_tool",
        )

    def test_truth_of_stream_wide_burst_names_all_threads(self) -> None:
        plan = plan_simulation(
            SimulationSpec(duration=300.0, threads=2, clients=1, faults=(parse_fault("error_burst"),))
        )
        marked = [step for step in plan.script("burst") if step.truth is not None]
        assert len(marked) == 1
        truth = truth_of(marked[0], 5)
        assert truth is not None
        assert (truth.thread_id, truth.run_id) == (ALL_THREADS, None)

    def test_truth_of_ordinary_step_none(self) -> None:
        assert truth_of(script()[0], 0) is None


def truth(
    kind: str, due_at: int, *, thread: str = "t1", run: str | None = "r1", tool: str | None = None
) -> GroundTruth:
    return GroundTruth(kind=kind, thread_id=thread, run_id=run, tool_call_id=tool, due_at=due_at, fault=kind)


def detected(kind: str, at: int, *, thread: str = "t1", run: str | None = "r1", tool: str | None = None) -> Detection:
    return Detection(kind=kind, thread_id=thread, run_id=run, tool_call_id=tool, detected_at=at)


class TestScore:
    def test_score_exact_match_recall_precision_latency(self) -> None:
        result = score([truth("stuck_tool", 100, tool="c")], [detected("stuck_tool", 350, tool="c")])
        (kind,) = result.kinds
        assert (kind.true_positives, kind.false_positives, kind.missed) == (1, 0, 0)
        assert (kind.precision, kind.recall, kind.latency_p50_ms, kind.latency_max_ms) == (1.0, 1.0, 250, 250)

    def test_score_detection_before_due_false_positive_and_miss(self) -> None:
        result = score([truth("stale_thread", 1000)], [detected("stale_thread", 500)])
        (kind,) = result.kinds
        assert (kind.true_positives, kind.false_positives, kind.missed, kind.recall) == (0, 1, 1, 0.0)
        assert result.missed[0].due_at == 1000

    def test_score_other_tool_call_not_a_match(self) -> None:
        result = score([truth("stuck_tool", 0, tool="a")], [detected("stuck_tool", 10, tool="b")])
        assert result.kinds[0].false_positives == 1
        assert result.kinds[0].missed == 1

    def test_score_each_truth_matches_once(self) -> None:
        result = score([truth("high_latency", 0)], [detected("high_latency", 1), detected("high_latency", 2)])
        assert (result.kinds[0].true_positives, result.kinds[0].false_positives) == (1, 1)

    def test_score_repeated_keys_matched_in_time_order(self) -> None:
        bursts = [truth("error_burst", 0, thread="*", run=None), truth("error_burst", 500_000, thread="*", run=None)]
        result = score(
            bursts,
            [detected("error_burst", 500_010, thread="*", run=None), detected("error_burst", 3, thread="*", run=None)],
        )
        (kind,) = result.kinds
        assert (kind.true_positives, kind.false_positives, kind.latency_p50_ms, kind.latency_max_ms) == (2, 0, 3, 10)

    def test_score_explained_side_effect_not_false_positive(self) -> None:
        why = Explanation(kind="undelivered_event", fault="slow_client", start=100, end=200, threads=frozenset({"t1"}))
        result = score([], [detected("undelivered_event", 150), detected("undelivered_event", 250)], [why])
        (kind,) = result.kinds
        assert (kind.explained, kind.false_positives, kind.precision, kind.recall) == (1, 1, 0.0, None)
        assert result.explained == {"slow_client": 1}
        assert result.false_positives[0].detected_at == 250
