from __future__ import annotations

import os

import msgspec
import pytest

from actors.process import ProcessIsolation
from actors.process._starvation import CpuTimes, cpu_times, starved


class TestProcessScheduling:
    def test_scheduling_default_normal_idle_accepted(self) -> None:
        assert ProcessIsolation().scheduling == "normal"
        assert ProcessIsolation(scheduling="idle").scheduling == "idle"

    def test_scheduling_unknown_policy_rejected_with_rule(self) -> None:
        with pytest.raises(ValueError, match=r"ProcessIsolation\.scheduling must be 'normal' or 'idle', got 'batch'"):
            ProcessIsolation(scheduling="batch")  # type: ignore[arg-type]

    def test_scheduling_decoded_from_toml_table_validated(self) -> None:
        # A [monitor_process] table of the runtime's TOML configuration arrives through msgspec.convert.
        assert msgspec.convert({"scheduling": "idle"}, ProcessIsolation).scheduling == "idle"
        with pytest.raises(msgspec.ValidationError, match="scheduling"):
            msgspec.convert({"scheduling": "realtime"}, ProcessIsolation)


class TestStarvation:
    # A worker silent for a 0.2 s window, heartbeat timeout 0.3 s.
    def test_starved_waited_most_of_window_ran_little_true(self) -> None:
        assert starved(CpuTimes(ran=1.0, waited=2.0), CpuTimes(ran=1.01, waited=2.15), 0.2, 0.3)

    def test_starved_spinning_with_core_to_itself_false(self) -> None:
        assert not starved(CpuTimes(ran=1.0, waited=2.0), CpuTimes(ran=1.2, waited=2.0), 0.2, 0.3)

    def test_starved_blocked_in_call_not_waiting_for_cpu_false(self) -> None:
        assert not starved(CpuTimes(ran=1.0, waited=2.0), CpuTimes(ran=1.0, waited=2.0), 0.2, 0.3)

    def test_starved_spinning_on_busy_machine_past_half_timeout_of_cpu_false(self) -> None:
        # Waited most of a long window, but ran 0.16 s (over half the timeout) without a frame: a live loop would have
        # sent its heartbeat long before.
        assert not starved(CpuTimes(ran=1.0, waited=2.0), CpuTimes(ran=1.16, waited=2.4), 0.55, 0.3)

    def test_cpu_times_own_process_read_gone_process_none(self) -> None:
        times = cpu_times(os.getpid())
        assert times is not None
        assert times.ran > 0
        assert cpu_times(2**22 + 1) is None  # above the kernel's pid limit: never a process
