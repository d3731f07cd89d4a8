from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from supervisors import SupervisorEventKind
from supervisors.app import MONITOR, ROOT
from supervisors.faults import FaultHistory, Schedule, check_delivery, crash_once, run_schedule
from tests.conftest import virtual_time
from tests.faults._harness import Workload, all_received, fast_config, logs, report, runtime_with_clients

pytestmark = pytest.mark.anyio

# Figure 2: the monitoring branch is detached exactly when its restart budget is exceeded, never escalates to the
# root, and comes back after its cool-down. Two budgets are in play: the monitor's within the branch (its failures
# beyond MONITOR_INTENSITY within MONITOR_PERIOD fail the branch), and the branch's own within the root (its
# failures beyond BRANCH_INTENSITY within BRANCH_PERIOD detach it). The periods are off the 10 ms grid the crash
# times are drawn on, so no crash falls exactly on a window's edge (float rounding would decide it).
MONITOR_INTENSITY = 2
MONITOR_PERIOD = 1.005
BRANCH_INTENSITY = 2
BRANCH_PERIOD = 10.005
COOLDOWN = 300.0  # longer than any crash schedule drawn (at most 20 gaps of 6 s): no re-attach within it


def expected_detach(times: list[float]) -> tuple[int, float | None]:
    """The model: how many crashes land on a running monitor, and when the branch is detached (None: never).

    OTP's rule at both levels: a failure at t is one too many when more than ``intensity`` failures (itself
    included) lie within [t - period, t]. A branch restart starts the monitor's window afresh.
    """
    monitor_failures: list[float] = []
    branch_failures: list[float] = []
    for index, at in enumerate(times):
        monitor_failures = [t for t in [*monitor_failures, at] if t >= at - MONITOR_PERIOD]
        if len(monitor_failures) <= MONITOR_INTENSITY:
            continue
        monitor_failures = []  # the branch fails and is restarted with a fresh monitor budget
        branch_failures = [t for t in [*branch_failures, at] if t >= at - BRANCH_PERIOD]
        if len(branch_failures) > BRANCH_INTENSITY:
            return index + 1, at
    return len(times), None


# Gaps in whole 10 ms steps: mostly bursts (10-300 ms, which exhaust the monitor's budget), some pauses (up to
# 1.5 s, which let its window, or at 6 s the branch's, empty again). About a quarter of the lists detach.
_burst = st.integers(min_value=1, max_value=30)
gaps = st.lists(
    st.one_of(_burst, _burst, _burst, _burst, st.integers(min_value=31, max_value=150), st.just(600)),
    min_size=9,
    max_size=20,
)


class TestRestartIntensityExhaustion:
    @virtual_time
    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(gaps=gaps)
    # Nine crashes 50 ms apart: three branch failures within its period, detached at the ninth crash.
    @example(gaps=[5] * 9)
    # Bursts of three with pauses: branch failures at 0.15, 6.25 and 10.35 s (the first has left the branch's
    # 10.005 s window: not detached), then at 10.5 s (three within it: detached at the twelfth crash).
    @example(gaps=[5, 5, 5, 600, 5, 5, 400, 5, 5, 5, 5, 5])
    async def test_monitor_crash_timings_branch_detached_exactly_at_budget_root_never_escalates(
        self, gaps: list[int]
    ) -> None:
        offsets = [sum(gaps[: index + 1]) / 100 for index in range(len(gaps))]
        crashed_expected, detach_offset = expected_detach(offsets)
        event("detached" if detach_offset is not None else "not detached")
        history = FaultHistory()
        config = fast_config(
            monitor_intensity=MONITOR_INTENSITY,
            monitor_period=MONITOR_PERIOD,
            monitoring_intensity=BRANCH_INTENSITY,
            monitoring_period=BRANCH_PERIOD,
            detach_cooldown=COOLDOWN,
        )
        workload = Workload(len(gaps), threads=2, events_per_thread=200)
        async with runtime_with_clients(config, workload.threads, per_thread=1, history=history) as (runtime, clients):
            origin = anyio.current_time()
            async with anyio.create_task_group() as tg:
                # Light traffic throughout: the bridge must carry it whatever happens to monitoring.
                tg.start_soon(lambda: workload.drive(runtime, rate=400.0 / offsets[-1]))
                crashed = await run_schedule(
                    Schedule(times=tuple(offsets)),
                    lambda _: crash_once(runtime.system, MONITOR, history=history),
                    origin=origin,
                )
            events = runtime.events.history()
            detached = [e for e in events if e.kind is SupervisorEventKind.DETACHED and e.child_id == "monitoring"]
            assert crashed == crashed_expected
            if detach_offset is None:
                assert detached == []
                assert runtime.monitoring_state() == "running"
            else:
                assert [round(e.at - origin, 6) for e in detached] == [round(detach_offset, 6)]
                assert detached[0].supervisor == ROOT
                health = await runtime.health()
                assert health.ready
                assert health.status == "degraded"
                assert health.monitoring == "detached"
                # The cool-down passes: the branch is re-attached (a half-open probe) and runs again.
                await anyio.sleep_until(detached[0].at + COOLDOWN + 0.01)
                reattached = [e for e in runtime.events.history() if e.kind is SupervisorEventKind.REATTACHED]
                assert [round(e.at - detached[0].at, 6) for e in reattached] == [COOLDOWN]
                assert runtime.monitoring_state() == "running"
                assert (await runtime.health()).monitoring == "running"
            # The root never gave up, the bridge never failed, and it delivered everything.
            assert not [
                e for e in runtime.events.history() if e.supervisor == ROOT and e.kind is SupervisorEventKind.ESCALATED
            ]
            assert runtime.supervisor.ref.is_alive
            assert runtime.bridge.ref.statistics().restarts == 0
            assert (await runtime.health()).ready
            await all_received(clients, workload)
            check_delivery(logs(clients), last_seqs=workload.last_seqs()).raise_for_problems()
            report("fig2", crashes=len(offsets), landed=crashed, detached_at=detach_offset, events=len(workload.plan))
