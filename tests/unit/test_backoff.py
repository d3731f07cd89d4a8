from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given, strategies as st

from supervisors._backoff import Backoff, BackoffState, CooldownPhase, CooldownState


def _no_jitter(**overrides: Any) -> BackoffState:
    options: dict[str, Any] = {"min": 1.0, "max": 8.0, "jitter": 0.0, "reset_after": 10.0, **overrides}
    return BackoffState(Backoff(**options), random.Random(0))


class TestBackoffConfig:
    def test_backoff_defaults_match_documented_values(self) -> None:
        backoff = Backoff()
        assert (backoff.min, backoff.max, backoff.jitter) == (0.1, 30.0, 0.2)
        assert (backoff.reset_after, backoff.max_restarts) == (60.0, None)

    @pytest.mark.parametrize(
        ("options", "fragment"),
        [
            ({"min": 0.0}, "min must be > 0"),
            ({"min": -1.0}, "min must be > 0"),
            ({"min": 2.0, "max": 1.0}, "max must be >= Backoff.min"),
            ({"max": math.inf}, "max must be finite"),
            ({"min": math.nan}, "min must be finite"),
            ({"jitter": 1.0}, "jitter must satisfy 0 <= jitter < 1"),
            ({"jitter": -0.1}, "jitter must satisfy 0 <= jitter < 1"),
            ({"reset_after": 0.0}, "reset_after must be > 0"),
            ({"max_restarts": -1}, "max_restarts must be >= 0"),
        ],
    )
    def test_backoff_breaking_a_rule_raises_value_error_naming_field(
        self, options: dict[str, Any], fragment: str
    ) -> None:
        with pytest.raises(ValueError, match=fragment):
            Backoff(**options)

    @pytest.mark.parametrize("options", [{"min": True}, {"max": "30"}, {"max_restarts": 1.5}, {"max_restarts": False}])
    def test_backoff_wrong_type_raises_type_error(self, options: dict[str, Any]) -> None:
        with pytest.raises(TypeError, match=next(iter(options))):
            Backoff(**options)

    def test_backoff_is_frozen(self) -> None:
        backoff = Backoff()
        with pytest.raises(AttributeError):
            backoff.min = 1.0  # type: ignore[misc]


class TestBackoffStateDelays:
    def test_next_delay_doubles_then_caps_at_max(self) -> None:
        state = _no_jitter()
        assert [state.next_delay(0.0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]

    def test_next_delay_counts_attempts_in_streak(self) -> None:
        state = _no_jitter()
        for _ in range(3):
            state.next_delay(0.0)
        assert state.attempts == 3

    def test_next_delay_after_quiet_period_starts_over(self) -> None:
        state = _no_jitter()
        assert state.next_delay(0.0) == 1.0  # back up at 1.0
        assert state.next_delay(2.0) == 2.0  # back up at 4.0
        assert state.next_delay(14.5) == 1.0  # up for 10.5 s > reset_after
        assert state.attempts == 1

    def test_next_delay_quiet_exactly_reset_after_does_not_start_over(self) -> None:
        state = _no_jitter()
        state.next_delay(0.0)  # back up at 1.0
        state.next_delay(2.0)  # back up at 4.0
        assert state.next_delay(14.0) == 4.0  # up for exactly 10 s: not *more than* reset_after

    def test_next_delay_long_delay_is_not_mistaken_for_quiet_period(self) -> None:
        # The quiet period runs from the restart, not from the failure: a child that fails right after a
        # 32 s delay was up for 0.5 s, and its streak must go on even though the last failure was 32.5 s ago.
        state = _no_jitter(max=100.0)
        now = 0.0
        for expected in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
            delay = state.next_delay(now)
            assert delay == expected
            now += delay + 0.5
        assert state.next_delay(now) == 64.0

    def test_next_delay_max_restarts_reached_returns_none(self) -> None:
        state = _no_jitter(max_restarts=2)
        assert state.next_delay(0.0) == 1.0
        assert state.next_delay(1.5) == 2.0
        assert state.next_delay(4.0) is None
        assert state.next_delay(4.5) is None

    def test_next_delay_max_restarts_streak_ends_after_quiet_period(self) -> None:
        state = _no_jitter(max_restarts=1)
        assert state.next_delay(0.0) == 1.0
        assert state.next_delay(1.5) is None
        assert state.next_delay(20.0) == 1.0

    def test_next_delay_zero_max_restarts_never_restarts(self) -> None:
        assert _no_jitter(max_restarts=0).next_delay(0.0) is None

    def test_reset_starts_a_new_streak(self) -> None:
        state = _no_jitter(max_restarts=2)
        state.next_delay(0.0)
        state.next_delay(0.0)
        state.reset()
        assert state.attempts == 0
        assert state.next_delay(0.0) == 1.0

    def test_next_delay_jitter_spreads_delays(self) -> None:
        backoff = Backoff(min=1.0, max=10.0, jitter=0.5)
        firsts = {BackoffState(backoff, random.Random(seed)).next_delay(0.0) for seed in range(20)}
        assert len(firsts) > 1
        assert all(delay is not None and 0.5 <= delay <= 1.5 for delay in firsts)

    def test_next_delay_jitter_never_exceeds_max(self) -> None:
        state = BackoffState(Backoff(min=1.0, max=4.0, jitter=0.9), random.Random(3))
        delays = [state.next_delay(0.0) for _ in range(200)]
        assert max(delay for delay in delays if delay is not None) <= 4.0
        assert any(delay == 4.0 for delay in delays)  # capped draws exist: the cap does bite

    def test_next_delay_same_seed_gives_same_delays(self) -> None:
        backoff = Backoff(min=0.1, max=30.0, jitter=0.3)
        first = BackoffState(backoff, random.Random(42))
        second = BackoffState(backoff, random.Random(42))
        times = [0.0, 0.5, 1.0, 90.0, 91.0]
        assert [first.next_delay(t) for t in times] == [second.next_delay(t) for t in times]

    def test_next_delay_different_seeds_give_different_delays(self) -> None:
        backoff = Backoff(min=0.1, max=30.0, jitter=0.3)
        one = BackoffState(backoff, random.Random(1))
        two = BackoffState(backoff, random.Random(2))
        assert [one.next_delay(0.0) for _ in range(5)] != [two.next_delay(0.0) for _ in range(5)]

    def test_backoff_state_exposes_its_config(self) -> None:
        backoff = Backoff()
        assert BackoffState(backoff).backoff is backoff


_backoffs = st.builds(
    lambda low, factor, jitter, reset_after: Backoff(min=low, max=low * factor, jitter=jitter, reset_after=reset_after),
    st.floats(min_value=0.001, max_value=10.0),
    st.floats(min_value=1.0, max_value=1000.0),
    st.floats(min_value=0.0, max_value=0.99),
    st.floats(min_value=0.01, max_value=100.0),
)
_gaps = st.lists(st.floats(min_value=0.0, max_value=200.0), min_size=1, max_size=50)


class TestBackoffStateProperties:
    @given(backoff=_backoffs, seed=st.integers(), gaps=_gaps)
    def test_next_delay_always_within_min_times_one_minus_jitter_and_max(
        self, backoff: Backoff, seed: int, gaps: list[float]
    ) -> None:
        state = BackoffState(backoff, random.Random(seed))
        for now in itertools.accumulate(gaps):
            delay = state.next_delay(now)
            assert delay is not None
            assert backoff.min * (1 - backoff.jitter) <= delay <= backoff.max

    @given(
        low=st.floats(min_value=0.001, max_value=10.0),
        factor=st.floats(min_value=1.0, max_value=1e6),
        failures=st.integers(min_value=1, max_value=80),
    )
    def test_next_delay_without_jitter_is_min_times_two_to_the_k_capped(
        self, low: float, factor: float, failures: int
    ) -> None:
        backoff = Backoff(min=low, max=low * factor, jitter=0.0)
        state = BackoffState(backoff, random.Random(0))
        for k in range(failures):
            assert state.next_delay(0.0) == min(low * 2.0**k, backoff.max)


class TestCooldownState:
    def test_on_detach_first_time_waits_initial(self) -> None:
        cooldown = CooldownState(30.0, 600.0, stable_after=5.0)
        assert cooldown.on_detach(100.0) == 130.0
        assert cooldown.phase is CooldownPhase.DETACHED
        assert cooldown.reattach_at == 130.0

    def test_on_detach_failed_probe_doubles_cooldown_up_to_maximum(self) -> None:
        cooldown = CooldownState(30.0, 100.0, stable_after=5.0)
        now = 0.0
        waits = []
        for _ in range(4):
            reattach_at = cooldown.on_detach(now)
            waits.append(reattach_at - now)
            now = reattach_at
            cooldown.on_reattach(now)
            now += 1.0  # fails 1 s into its probe: shorter than stable_after
        assert waits == [30.0, 60.0, 100.0, 100.0]

    def test_probe_passed_after_stable_after_resets_cooldown(self) -> None:
        cooldown = CooldownState(30.0, 600.0, stable_after=5.0)
        cooldown.on_reattach(cooldown.on_detach(0.0))  # probe from 30.0
        cooldown.on_reattach(cooldown.on_detach(31.0))  # failed probe: 60 s, probe from 91.0
        assert cooldown.cooldown == 60.0
        early = (cooldown.probe_passed(95.0), cooldown.phase)
        assert early == (False, CooldownPhase.PROBING)
        closing = (cooldown.probe_passed(96.0), cooldown.phase)
        assert closing == (True, CooldownPhase.ATTACHED)
        assert cooldown.cooldown == 30.0
        assert cooldown.probe_passed(200.0) is False  # only the closing call reports the pass
        assert cooldown.on_detach(500.0) == 530.0

    def test_on_detach_after_unreported_stable_probe_waits_initial(self) -> None:
        cooldown = CooldownState(10.0, 600.0, stable_after=5.0)
        cooldown.on_reattach(cooldown.on_detach(0.0))  # probe from 10.0
        cooldown.on_reattach(cooldown.on_detach(11.0))  # failed probe: 20 s, probe from 31.0
        assert cooldown.on_detach(40.0) == 50.0  # stayed up 9 s >= 5 s: passed, so back to 10 s

    def test_probe_passed_checked_exactly_stable_after_later_passes_despite_float_rounding(self) -> None:
        # Regression: 863.785 - 853.78 < 10.005 in floating point, so a check timed to fire exactly stable_after
        # after the re-attach found the probe "not yet" stable, and the next failure doubled the cool-down.
        cooldown = CooldownState(10.0, 600.0, stable_after=10.005)
        cooldown.on_detach(843.78)
        cooldown.on_reattach(853.78)
        assert 853.78 + 10.005 - 853.78 < 10.005
        assert cooldown.probe_due == 853.78 + 10.005
        assert cooldown.probe_passed(853.78 + 10.005) is True
        assert cooldown.phase is CooldownPhase.ATTACHED

    def test_probe_passed_a_millisecond_early_stays_probing(self) -> None:
        cooldown = CooldownState(10.0, 600.0, stable_after=10.0)
        cooldown.on_reattach(cooldown.on_detach(0.0))
        assert cooldown.probe_passed(19.999) is False
        assert cooldown.phase is CooldownPhase.PROBING

    def test_probe_passed_without_probe_returns_false(self) -> None:
        cooldown = CooldownState(10.0, 600.0, stable_after=0.0)
        assert cooldown.probe_passed(1.0) is False
        cooldown.on_detach(1.0)
        assert cooldown.probe_passed(100.0) is False

    def test_on_detach_while_detached_raises_runtime_error(self) -> None:
        cooldown = CooldownState(10.0, 600.0, stable_after=5.0)
        cooldown.on_detach(0.0)
        with pytest.raises(RuntimeError, match="already detached"):
            cooldown.on_detach(1.0)

    def test_on_reattach_while_attached_raises_runtime_error(self) -> None:
        cooldown = CooldownState(10.0, 600.0, stable_after=5.0)
        with pytest.raises(RuntimeError, match="not detached"):
            cooldown.on_reattach(0.0)

    def test_reset_returns_to_attached_with_initial_cooldown(self) -> None:
        cooldown = CooldownState(10.0, 600.0, stable_after=5.0)
        cooldown.on_reattach(cooldown.on_detach(0.0))
        cooldown.on_detach(11.0)
        cooldown.reset()
        assert cooldown.phase is CooldownPhase.ATTACHED
        assert cooldown.reattach_at is None
        assert cooldown.on_detach(20.0) == 30.0

    @pytest.mark.parametrize(
        ("initial", "maximum", "stable_after", "fragment"),
        [
            (0.0, 10.0, 1.0, "initial must be > 0"),
            (10.0, 5.0, 1.0, "maximum must be >= initial"),
            (10.0, 20.0, -1.0, "stable_after must be >= 0"),
            (10.0, math.inf, 1.0, "maximum must be finite"),
        ],
    )
    def test_cooldown_state_bad_arguments_raise_value_error(
        self, initial: float, maximum: float, stable_after: float, fragment: str
    ) -> None:
        with pytest.raises(ValueError, match=fragment):
            CooldownState(initial, maximum, stable_after=stable_after)

    @given(
        initial=st.floats(min_value=0.01, max_value=100.0),
        factor=st.floats(min_value=1.0, max_value=100.0),
        uptimes=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=40),
    )
    def test_cooldown_always_within_initial_and_maximum(
        self, initial: float, factor: float, uptimes: list[float]
    ) -> None:
        maximum = initial * factor
        cooldown = CooldownState(initial, maximum, stable_after=10.0)
        now = 0.0
        for uptime in uptimes:
            reattach_at = cooldown.on_detach(now)
            assert reattach_at == now + cooldown.cooldown
            assert initial <= cooldown.cooldown <= maximum
            now = reattach_at
            cooldown.on_reattach(now)
            now += uptime
