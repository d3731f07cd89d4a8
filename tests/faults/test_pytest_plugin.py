from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

# The agentwatch pytest plugin (entry point ``pytest11: agentwatch``), exercised the way a user's test suite meets
# it: each test writes a small test module and runs pytest on it in-process.
pytest_plugins = ["pytester"]

COUNTER = """
from typing import Any

from actors import Actor, open_actor_system


class Counter(Actor[Any]):
    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: Any) -> int:
        self.count += 1
        return self.count
"""


class TestVirtualTimeMarker:
    def test_marked_async_test_runs_on_each_backend_on_a_virtual_clock(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            """
            import time

            import anyio
            import pytest


            @pytest.mark.virtual_time
            async def test_an_hour_passes(anyio_backend_name):
                began, wall = anyio.current_time(), time.monotonic()
                await anyio.sleep(3600)
                assert anyio.current_time() - began >= 3600
                assert time.monotonic() - wall < 60  # virtual: the hour took no real time
            """
        )
        result = pytester.runpytest("-v", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["*test_an_hour_passes?asyncio+virtual? PASSED*", "*?trio+virtual? PASSED*"])

    def test_marker_backends_argument_selects_backends(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            """
            import anyio
            import pytest


            @pytest.mark.virtual_time(backends=["trio"])
            async def test_on_trio_only(anyio_backend_name):
                assert anyio_backend_name == "trio"
                await anyio.sleep(10)
            """
        )
        result = pytester.runpytest("-v", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*test_on_trio_only?trio+virtual? PASSED*"])

    def test_marker_overrides_a_conftest_anyio_backend_fixture(self, pytester: pytest.Pytester) -> None:
        # A suite with its own anyio_backend (ours has one, with params): the marked test still runs virtually.
        pytester.makeconftest(
            """
            import pytest


            @pytest.fixture(params=["asyncio"])
            def anyio_backend(request):
                return request.param
            """
        )
        pytester.makepyfile(
            """
            import anyio
            import pytest

            pytestmark = pytest.mark.anyio


            @pytest.mark.virtual_time
            async def test_virtual():
                await anyio.sleep(86400)


            async def test_plain_stays_real(anyio_backend):
                assert anyio_backend == "asyncio"
            """
        )
        result = pytester.runpytest("-v", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=3)

    def test_marker_on_a_sync_test_is_a_usage_error(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            """
            import pytest


            @pytest.mark.virtual_time
            def test_sync():
                pass
            """
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        assert result.ret != 0
        output = result.stdout.str() + result.stderr.str()
        assert "test_sync: @pytest.mark.virtual_time applies to async (anyio) tests only" in output


class TestFaultInjector:
    def test_awaited_injection_crashes_actor_recorded_and_reverted_at_teardown(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            COUNTER
            + """
import pytest

from actors import ActorStopped
from supervisors.faults import Crash


SEEN = []


@pytest.mark.virtual_time
async def test_crash(fault_injector, fault_history):
    async with open_actor_system() as system:
        ref = system.spawn(Counter, name="counter")
        assert await ref.ask("a") == 1
        injection = await fault_injector.inject(system, ref, Crash())
        SEEN.append((injection, fault_history))
        assert injection.active
        with pytest.raises(Exception):
            await ref.ask("b")  # the handler raised: the unsupervised actor stopped
        assert [r.action for r in fault_history.records] == ["inject", "trigger"]
        assert fault_history.count("crash", target="counter") == 1


def test_reverted_afterwards():
    # The fixture's teardown reverted what each test left applied, and recorded it.
    assert [injection.active for injection, _ in SEEN] == [False, False]
    assert [history.records[-1].action for _, history in SEEN] == ["revert", "revert"]
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=3)

    def test_injection_as_async_context_manager_reverts_on_exit(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            COUNTER
            + """
import pytest

from supervisors.faults import Slow, check_history


@pytest.mark.virtual_time
async def test_slow_then_fast(fault_injector, fault_history):
    async with open_actor_system() as system:
        ref = system.spawn(Counter)
        async with fault_injector.inject(system, ref, Slow(2.0)) as slow:
            began = system.clock.now()
            await ref.ask("x")
            assert system.clock.now() - began == pytest.approx(2.0)
        began = system.clock.now()
        await ref.ask("y")
        assert system.clock.now() == began
        assert slow.delayed == 1
        assert [r.action for r in fault_history.records] == ["inject", "trigger", "revert"]
        check_history(fault_history, triggered=True).raise_for_problems()
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)

    def test_failing_test_report_shows_the_fault_history(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            COUNTER
            + """
import contextlib

import pytest

from supervisors.faults import Crash


@pytest.mark.virtual_time(backends=["asyncio"])
async def test_fails(fault_injector):
    async with open_actor_system() as system:
        ref = system.spawn(Counter, name="victim")
        await fault_injector.inject(system, ref, Crash())
        with contextlib.suppress(Exception):
            await ref.ask("boom")
    assert False, "the property did not hold"
"""
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*- fault history -*", "*inject*crash*victim*", "*trigger*crash*victim*"])


class TestCriticalPathBudget:
    def test_budget_met_passes_and_exceeded_fails_with_the_figures(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            """
            import anyio
            import pytest

            from actors import open_actor_system
            from actors.chat import MemorySink, TextMessageContent, spawn_bridge


            async def deliver(critical_path_budget, delay, p99_ms):
                async with open_actor_system() as system:
                    bridge = spawn_bridge(system)
                    sink = MemorySink(delay=delay)
                    await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
                    async with critical_path_budget(bridge, p99_ms=p99_ms, lost=0) as report:
                        for i in range(20):
                            bridge.publish("t", "r", TextMessageContent(message_id="m", delta=str(i)))
                        await anyio.sleep(5)
                    return report


            @pytest.mark.virtual_time
            async def test_fast_client_within_budget(critical_path_budget):
                report = await deliver(critical_path_budget, 0.0, 1)
                assert report.frames == 20 and report.p99_ms == 0 and report.lost == 0


            @pytest.mark.virtual_time
            async def test_slow_client_over_budget(critical_path_budget):
                await deliver(critical_path_budget, 0.05, 10)
            """
        )
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=2, failed=2)
        result.stdout.fnmatch_lines(["*CheckFailed: critical path over budget: delivery latency p99 * ms > 10 ms*"])
