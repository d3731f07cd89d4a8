from __future__ import annotations

import itertools
import random

import pytest

from actors.sim._faults import FAULT_PHASE, FaultSpecError, occurrence_times, parse_fault
from actors.sim._plan import plan_simulation
from supervisors._config import SupervisionSettings
from supervisors._sim_intensity import predict_detaches
from supervisors._sim_presets import PRESETS, preset_settings

# Figure 2's budgets: 2 monitor restarts in 1.005 s, 2 branch restarts in 10.005 s, cool-down 20 s (up to 80 s).
BUDGETS = SupervisionSettings(
    monitor_intensity=2,
    monitor_period=1.005,
    monitoring_intensity=2,
    monitoring_period=10.005,
    detach_cooldown=20.0,
    max_detach_cooldown=80.0,
)


def storm(start: float, count: int = 3, gap: float = 0.05) -> list[float]:
    return [round(start + k * gap, 6) for k in range(count)]


class TestPredictDetaches:
    def test_predict_detaches_three_branch_failures_within_period_detached_at_the_third(self) -> None:
        forecast = predict_detaches([*storm(0.05), *storm(0.2), *storm(0.35)], BUDGETS)
        assert forecast.branch_failures == [0.15, 0.3, 0.45]
        assert forecast.detaches == [0.45]
        assert forecast.reattaches == [20.45]

    def test_predict_detaches_branch_failures_spread_over_window_never_detached(self) -> None:
        # Three branch failures, but the first has left the 10.005 s window when the third comes.
        forecast = predict_detaches([*storm(0.05), *storm(6.0), *storm(10.2)], BUDGETS)
        assert forecast.branch_failures == [0.15, 6.1, 10.3]
        assert forecast.detaches == []

    def test_predict_detaches_monitor_failures_over_a_second_apart_never_fail_the_branch(self) -> None:
        forecast = predict_detaches([1.0, 2.1, 3.2, 4.3, 5.4], BUDGETS)
        assert forecast == predict_detaches([], BUDGETS)

    def test_predict_detaches_failed_probe_detached_at_once_cooldown_doubled(self) -> None:
        first = [*storm(0.05), *storm(0.2), *storm(0.35)]
        # Re-attached at 20.45: one branch failure within its 10.005 s probe detaches it again, for 40 s.
        forecast = predict_detaches([*first, *storm(21.0)], BUDGETS)
        assert forecast.detaches == [0.45, 21.1]
        assert forecast.reattaches == [20.45, 61.1]

    def test_predict_detaches_passed_probe_fresh_budget_cooldown_reset(self) -> None:
        first = [*storm(0.05), *storm(0.2), *storm(0.35)]
        # Re-attached at 20.45, the probe passes at 30.455; a lone branch failure at 31.1 is only a restart, and the
        # next detach (three within 10 s) waits the initial 20 s again.
        later = [*storm(31.0), *storm(33.0), *storm(35.0)]
        forecast = predict_detaches([*first, *later], BUDGETS)
        assert forecast.branch_failures == [0.15, 0.3, 0.45, 31.1, 33.1, 35.1]
        assert forecast.detaches == [0.45, 35.1]
        assert forecast.reattaches == [20.45, 55.1]


class TestFigureFaultOptions:
    def test_parse_fault_every_with_offset_shifts_every_occurrence(self) -> None:
        spec = parse_fault("monitor_hang:every=6s,offset=3s")
        times = occurrence_times(spec, 20.0, random.Random(0))
        assert times == pytest.approx([9 + FAULT_PHASE, 15 + FAULT_PHASE])

    def test_parse_fault_offset_without_every_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="offset shifts an every=DUR schedule"):
            parse_fault("monitor_hang:count=2,offset=3s")

    def test_occurrence_times_offset_past_traffic_rejected(self) -> None:
        with pytest.raises(FaultSpecError, match="after offset=8s never fires"):
            occurrence_times(parse_fault("monitor_hang:every=3s,offset=8s"), 10.0, random.Random(0))

    def test_parse_fault_burst_kept_for_monitor_crash_only(self) -> None:
        assert parse_fault("monitor_crash:count=4,burst=3").burst == 3
        with pytest.raises(FaultSpecError, match="monitor_hang takes no option 'burst'"):
            parse_fault("monitor_hang:count=4,burst=3")

    def test_parse_fault_malformed_input_takes_messages(self) -> None:
        assert parse_fault("malformed_input:count=100,messages=1000").messages == 1000


class TestFigurePresets:
    def test_presets_one_per_reliability_figure(self) -> None:
        assert {f"fig{n}" for n in range(1, 11)} <= set(PRESETS)

    @pytest.mark.parametrize("name", [f"fig{n}" for n in range(1, 11)])
    def test_fig_preset_plans_its_full_size(self, name: str) -> None:
        settings = preset_settings(name)
        plan = plan_simulation(settings.spec)
        assert plan.thread_ids
        # The scripts are planned against the thresholds the runtime's monitor applies.
        assert settings.spec.thresholds == settings.runtime.monitor.thresholds

    def test_fig3_hangs_and_blocks_interleaved_never_within_a_second(self) -> None:
        plan = plan_simulation(preset_settings("fig3").spec)
        times = sorted((fault.at, fault.name) for fault in plan.runtime_faults)
        assert all(later[0] - earlier[0] >= 2.0 for earlier, later in itertools.pairwise(times))
        assert {name for _, name in times} == {"monitor_hang", "monitor_block"}
