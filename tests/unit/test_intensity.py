from __future__ import annotations

import functools
import itertools
import math
import operator

import pytest
from hypothesis import given, strategies as st

from supervisors._intensity import RestartWindow

# Non-decreasing timestamps, with ties (several failures in the same instant) and long gaps.
_gaps = st.lists(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=20.0, allow_nan=False)), max_size=60)
_intensities = st.integers(min_value=0, max_value=6)
_periods = st.floats(min_value=0.01, max_value=30.0, allow_nan=False)


def _timestamps(gaps: list[float]) -> list[float]:
    return list(itertools.accumulate(gaps, initial=0.0))


class TestRestartWindowOtpCases:
    def test_add_restart_within_intensity_returns_true(self) -> None:
        window = RestartWindow(intensity=3, period=5.0)
        assert [window.add_restart(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]

    def test_add_restart_beyond_intensity_within_period_returns_false(self) -> None:
        window = RestartWindow(intensity=1, period=5.0)
        assert window.add_restart(0.0) is True
        assert window.add_restart(1.0) is False

    def test_add_restart_old_restart_outside_period_is_forgotten(self) -> None:
        window = RestartWindow(intensity=1, period=5.0)
        assert window.add_restart(0.0) is True
        assert window.add_restart(5.5) is True

    def test_add_restart_restart_exactly_period_ago_still_counts(self) -> None:
        # OTP keeps R >= Now - Period: the boundary is inclusive.
        window = RestartWindow(intensity=1, period=5.0)
        assert window.add_restart(0.0) is True
        assert window.add_restart(5.0) is False

    def test_add_restart_zero_intensity_first_restart_returns_false(self) -> None:
        window = RestartWindow(intensity=0, period=5.0)
        assert window.add_restart(0.0) is False

    def test_add_restart_rejected_restart_is_still_recorded(self) -> None:
        # As in OTP, the restart that exceeded the budget stays in the list and counts for later verdicts.
        window = RestartWindow(intensity=1, period=10.0)
        assert window.add_restart(0.0) is True
        assert window.add_restart(1.0) is False
        assert window.add_restart(10.5) is False  # 1.0 is still within [0.5, 10.5]
        assert window.add_restart(21.0) is True

    def test_add_restart_same_instant_counts_each_restart(self) -> None:
        window = RestartWindow(intensity=2, period=1.0)
        assert [window.add_restart(3.0) for _ in range(3)] == [True, True, False]

    def test_add_restart_time_going_backwards_raises_value_error(self) -> None:
        window = RestartWindow(intensity=3, period=5.0)
        window.add_restart(10.0)
        with pytest.raises(ValueError, match="backwards"):
            window.add_restart(9.0)


class TestRestartWindowQueries:
    def test_restarts_in_window_counts_without_recording(self) -> None:
        window = RestartWindow(intensity=2, period=5.0)
        window.add_restart(0.0)
        window.add_restart(4.0)
        assert window.restarts_in_window(4.0) == 2
        assert window.restarts_in_window(4.0) == 2
        assert window.restarts_in_window(6.0) == 1
        assert window.add_restart(6.0) is True  # 0.0 has left the window: the query recorded nothing

    def test_restarts_returns_times_in_window_oldest_first(self) -> None:
        window = RestartWindow(intensity=5, period=5.0)
        for t in (0.0, 2.0, 3.0):
            window.add_restart(t)
        assert window.restarts(6.0) == (2.0, 3.0)

    def test_restarts_memory_stays_bounded_by_intensity(self) -> None:
        window = RestartWindow(intensity=3, period=1000.0)
        for _ in range(10_000):
            window.add_restart(1.0)
        assert window.restarts(1.0) == (1.0,) * 4
        assert window.restarts_in_window(1.0) == 4

    def test_reset_forgets_every_restart(self) -> None:
        window = RestartWindow(intensity=1, period=5.0)
        window.add_restart(0.0)
        window.reset()
        assert window.restarts_in_window(0.0) == 0
        assert window.add_restart(1.0) is True

    def test_properties_report_budget(self) -> None:
        window = RestartWindow(intensity=4, period=7)
        assert (window.intensity, window.period) == (4, 7.0)


class TestRestartWindowValidation:
    @pytest.mark.parametrize(
        ("intensity", "period", "error"),
        [(-1, 5.0, ValueError), (1, 0.0, ValueError), (1, math.inf, ValueError), (2.0, 5.0, TypeError)],
    )
    def test_restart_window_bad_budget_raises(self, intensity: int, period: float, error: type[Exception]) -> None:
        with pytest.raises(error):
            RestartWindow(intensity, period)


class TestRestartWindowProperties:
    @given(intensity=_intensities, period=_periods, gaps=_gaps)
    def test_add_restart_agrees_with_brute_force_count(self, intensity: int, period: float, gaps: list[float]) -> None:
        window = RestartWindow(intensity, period)
        seen: list[float] = []
        for now in _timestamps(gaps):
            seen.append(now)
            in_window = sum(1 for restart in seen if restart >= now - period)
            assert window.add_restart(now) is (in_window <= intensity)
            assert window.restarts_in_window(now) == min(in_window, intensity + 1)

    @given(intensity=_intensities, period=_periods, gaps=_gaps)
    def test_add_restart_agrees_with_otp_list_algorithm(self, intensity: int, period: float, gaps: list[float]) -> None:
        # A literal port of supervisor.erl's add_restart/3 (newest first, takewhile, prepend; length =< MaxR).
        window = RestartWindow(intensity, period)
        otp_restarts: list[float] = []
        for now in _timestamps(gaps):
            threshold = now - period
            otp_restarts = [now, *itertools.takewhile(functools.partial(operator.le, threshold), otp_restarts)]
            assert window.add_restart(now) is (len(otp_restarts) <= intensity)
