"""agentwatch's pytest plugin (entry point ``pytest11: agentwatch``): fault injection fixtures and virtual time.

- ``@pytest.mark.virtual_time``: run an async test on a virtual clock, once per backend (asyncio and trio when
  trio is installed; ``@pytest.mark.virtual_time(backends=["trio"])`` to choose). Implies ``@pytest.mark.anyio``.
- ``fault_history``: a fresh :class:`~supervisors.faults.FaultHistory`, shown in the report when the test fails.
- ``fault_injector``: a :class:`~supervisors.faults.FaultInjector` bound to that history; whatever it injected
  and is still applied is reverted when the test ends.
- ``critical_path_budget``: :func:`supervisors.faults.critical_path_budget`.

See ``docs/fault-injection.md``.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import TYPE_CHECKING, Any

import pytest

from actors import virtual_time_backend

from .faults import FaultHistory, FaultInjector, critical_path_budget as _critical_path_budget

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

VIRTUAL_TIME = "virtual_time"
_BACKENDS = ("asyncio", "trio")
#: Lines of the fault history attached to a failed test's report (the newest ones).
_REPORT_LINES = 200


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{VIRTUAL_TIME}(backends=('asyncio', 'trio')): run this async test on a virtual clock (timers jump to "
        "the next deadline), once per backend; implies @pytest.mark.anyio (agentwatch plugin)",
    )


def _default_backends() -> tuple[str, ...]:
    # trio is optional for users of the plugin: without it the marker runs on asyncio only.
    return _BACKENDS if importlib.util.find_spec("trio") is not None else ("asyncio",)


def _marker(collector: pytest.Module | pytest.Class, obj: object) -> pytest.Mark | None:
    own = [mark for mark in getattr(obj, "pytestmark", ()) if mark.name == VIRTUAL_TIME]
    return own[0] if own else collector.get_closest_marker(VIRTUAL_TIME)


def _backends(marker: pytest.Mark) -> tuple[str, ...]:
    backends = tuple(marker.kwargs.get("backends", ()) or marker.args or _default_backends())
    unknown = [backend for backend in backends if backend not in _BACKENDS]
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{VIRTUAL_TIME}: backends must be among {_BACKENDS}, got {unknown}")
    return backends


def _parametrized_by_us(obj: object) -> bool:
    return any(
        mark.name == "parametrize" and mark.args and mark.args[0] == "anyio_backend"
        for mark in getattr(obj, "pytestmark", ())
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Module | pytest.Class, name: str, obj: object) -> None:
    if not collector.istestfunction(obj, name):
        return
    marker = _marker(collector, obj)
    if marker is None or _parametrized_by_us(obj):
        return
    inner = obj.hypothesis.inner_test if hasattr(obj, "hypothesis") else obj
    if not inspect.iscoroutinefunction(inner):
        raise pytest.UsageError(
            f"{collector.nodeid}::{name}: @pytest.mark.{VIRTUAL_TIME} applies to async (anyio) tests only"
        )
    backends = _backends(marker)
    # A parametrize mark (not a metafunc.parametrize call) so that it takes precedence over the params of any
    # anyio_backend fixture in effect (anyio's, or a conftest's own), as a mark written by hand would. Direct, not
    # indirect: each backend's options are built here, per test function (trio gets a MockClock of its own).
    pytest.mark.parametrize(
        "anyio_backend",
        [virtual_time_backend(backend) for backend in backends],
        ids=[f"{backend}+virtual" for backend in backends],
    )(obj)
    # What @pytest.mark.anyio does (anyio's own hook adds the same fixture for it): the test runs in anyio's runner
    # with the parametrized anyio_backend.
    pytest.mark.anyio(obj)
    pytest.mark.usefixtures("anyio_backend")(obj)


@pytest.fixture
def fault_history() -> FaultHistory:
    """A fresh history of the faults injected in this test; shown in the report when the test fails."""
    return FaultHistory()


@pytest.fixture
def fault_injector(fault_history: FaultHistory) -> Iterator[FaultInjector]:
    """Injects faults (``await fault_injector.inject(system, target, fault)`` or ``async with``) into this test's
    actors, recorded in ``fault_history``; whatever is still applied is reverted when the test ends."""
    injector = FaultInjector(fault_history)
    yield injector
    injector.revert_all()


@pytest.fixture
def critical_path_budget() -> Any:
    """``async with critical_path_budget(bridge, p99_ms=..., lost=0): ...``: fail unless the bridge stayed within
    budget while the block ran (see :func:`supervisors.faults.critical_path_budget`)."""
    return _critical_path_budget


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    history = getattr(item, "funcargs", {}).get("fault_history")
    if isinstance(history, FaultHistory) and history.records:
        lines = history.records[-_REPORT_LINES:]
        skipped = len(history.records) - len(lines)
        text = "".join(
            f"{r.at:12.6f}  {r.action:<8} {r.fault:<18} {r.target}  {r.detail}\n".rstrip() + "\n" for r in lines
        )
        header = f"({skipped} earlier lines not shown)\n" if skipped else ""
        report.sections.append(("fault history", header + text))
