from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import RefState
from actors.chat._anomaly import AnomalyKind
from actors.chat._audit import AuditVerdict
from actors.chat._components import ComponentMonitor, MonitorableComponent
from actors.chat._monitor import ChatEventMonitorHandle, MonitorConfig
from tests.behaviour.test_monitor import (
    CHECK,
    CONFIG,
    Rig,
    monitor_rig,
    proxy_starter,
    run_finished,
    run_started,
    text,
    tool_start,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio

AUDIT = CONFIG.audit_interval  # 10 s
AUDIT_TIMEOUT = CONFIG.audit_timeout  # 2 s


class Component:
    """A plain object implementing the seed's MonitorableComponent, whose claims the test controls.

    :param hang: ``get_health_status`` never returns
    :param error: ``get_health_status`` raises this
    """

    def __init__(
        self,
        status: str = "healthy",
        *,
        metrics: dict[str, Any] | None = None,
        hang: bool = False,
        error: Exception | None = None,
        calls_itself: str = "agent_websocket_bridge",
    ) -> None:
        self.status = status
        self.metrics = metrics if metrics is not None else {"events_sent": 0}
        self.hang = hang
        self.error = error
        self.calls_itself = calls_itself
        self.observers: list[ComponentMonitor] = []
        self.health_reads = 0

    async def get_health_status(self) -> dict[str, Any]:
        self.health_reads += 1
        if self.hang:
            await anyio.sleep_forever()
        if self.error is not None:
            raise self.error
        return {"status": self.status, "uptime_s": 12}

    async def get_metrics(self) -> dict[str, Any]:
        return dict(self.metrics)

    def register_monitor_observer(self, observer: ComponentMonitor) -> None:
        self.observers.append(observer)

    def change_status(self, status: str) -> None:
        """Change the claim and push it to the observers, as the seed's bridge does on a health change."""
        self.status = status
        for observer in self.observers:
            observer.on_component_health_change(self.calls_itself, {"status": status})


class SyncComponent:
    """Implements the protocol with plain functions instead of coroutines."""

    def get_health_status(self) -> dict[str, Any]:
        return {"status": "degraded"}

    def get_metrics(self) -> dict[str, Any]:
        return {"queue_depth": 7}

    def register_monitor_observer(self, observer: ComponentMonitor) -> None:
        return None


class OneReadComponent(Component):
    """Also offers get_health_and_metrics(), which must then be used instead of the two separate reads (and which,
    registered with read_directly, an audit asked for by the application calls without its proxy).

    :param keeps_timeout: the read keeps the ``timeout`` it is given, as read_directly requires
    """

    def __init__(self, *, hang: bool = False, error: Exception | None = None, keeps_timeout: bool = True) -> None:
        super().__init__("degraded", metrics={"events_sent": 3}, hang=hang, error=error)
        self.keeps_timeout = keeps_timeout
        self.combined_reads = 0

    async def get_health_and_metrics(self, *, timeout: float = 5.0) -> tuple[dict[str, Any], dict[str, Any]]:
        self.combined_reads += 1
        with anyio.fail_after(timeout if self.keeps_timeout else None):
            if self.hang:
                await anyio.sleep_forever()
        if self.error is not None:
            raise self.error
        return {"status": self.status}, dict(self.metrics)


def mismatches(rig: Rig) -> list[float]:
    """Loop times (since the rig started) at which health_claim_mismatch anomalies were reported."""
    return [at - rig.t0 for at in rig.alerts.times(AnomalyKind.HEALTH_CLAIM_MISMATCH)]


async def route_events(rig: Rig, thread: str, *, until: float, every: float = 0.25, confirm: bool) -> None:
    """Tap events routed to one connection on ``thread`` until ``until``; the bridge confirms them if ``confirm``.

    Runs of 20 events each, so no run goes stale and none is left open.
    """
    n = 0
    run = f"{thread}-0"
    rig.tap.emit(thread, run, run_started(thread, run), fan_out=1)
    while rig.now() + every < until:
        await rig.at(rig.now() + every)
        n += 1
        if n % 20 == 0:
            rig.tap.emit(thread, run, run_finished(thread, run), fan_out=1)
            run = f"{thread}-{n // 20}"
            rig.tap.emit(thread, run, run_started(thread, run), fan_out=1)
        else:
            rig.tap.emit(thread, run, text(), fan_out=1)
        if confirm and n % 2 == 0:
            rig.tap.confirm(thread)
    rig.tap.emit(thread, run, run_finished(thread, run), fan_out=1)
    if confirm:
        rig.tap.confirm(thread)


@virtual_time
class TestRegistration:
    async def test_plain_object_registered_through_handle_runs_behind_its_own_proxy_actor(self) -> None:
        component = Component()
        assert isinstance(component, MonitorableComponent)
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("db", component)
            proxy = rig.system.lookup("proxy:db")
            assert proxy.state == RefState.RUNNING
            result = await rig.handle.audit_component("db")
            assert (result.component_id, result.verdict, result.claimed) == ("db", AuditVerdict.CONSISTENT, "healthy")
            assert result.metrics == {"events_sent": 0}
            assert result.at == rig.system.clock.now_ms()
            assert len(component.observers) == 1  # the proxy registered the monitor's observer

    async def test_component_offering_health_and_metrics_together_is_read_with_one_call(self) -> None:
        component = OneReadComponent()
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("db", component)
            result = await rig.handle.audit_component("db")
        assert (result.claimed, result.metrics) == ("degraded", {"events_sent": 3})
        assert (component.combined_reads, component.health_reads) == (1, 0)

    async def test_component_read_directly_audited_on_demand_without_its_proxy(self) -> None:
        # Its reads are bounded asks: the application's audit asks it itself, one round trip fewer than via the proxy.
        async with monitor_rig() as rig:
            component = OneReadComponent()
            await rig.handle.register_component_for_monitoring("db", component, read_directly=True)
            await rig.system.lookup("proxy:db").stop()
            result = await rig.handle.audit_component("db")
        assert (result.verdict, result.claimed) == (AuditVerdict.CONSISTENT, "degraded")
        assert component.combined_reads == 1

    @pytest.mark.parametrize(
        ("read_directly", "keeps_timeout"),
        [(True, True), (False, True), (False, False)],
        ids=["direct", "proxy", "deaf"],
    )
    async def test_component_offering_both_reads_hanging_is_unresponsive_after_the_audit_timeout(
        self, read_directly: bool, keeps_timeout: bool
    ) -> None:
        # Asked directly, the component keeps the audit's bound itself; through its proxy (the default) the proxy's
        # ask timeout holds it, even for a read that ignores any timeout.
        # Regression: every component offering the combined read was once read directly, so a deaf one hung the audit.
        async with monitor_rig(proxy_timeout=60.0) as rig:
            component = OneReadComponent(hang=True, keeps_timeout=keeps_timeout)
            await rig.handle.register_component_for_monitoring("db", component, read_directly=read_directly)
            started = anyio.current_time()
            result = await rig.handle.audit_component("db")
            assert result.verdict is AuditVerdict.UNRESPONSIVE
            assert anyio.current_time() - started == pytest.approx(AUDIT_TIMEOUT)

    async def test_component_offering_both_reads_raising_failed_with_the_error_in_findings(self) -> None:
        async with monitor_rig() as rig:
            component = OneReadComponent(error=ConnectionError("refused"))
            await rig.handle.register_component_for_monitoring("db", component)
            result = await rig.handle.audit_component("db")
        assert result.verdict is AuditVerdict.FAILED
        assert result.findings == ("reading its health raised ConnectionError: refused",)

    async def test_registering_an_id_twice_or_an_object_without_the_protocol_raises(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("db", Component())
            with pytest.raises(ValueError, match="already registered"):
                await rig.handle.register_component_for_monitoring("db", Component())
            with pytest.raises(TypeError, match="get_health_status"):
                await rig.handle.register_component_for_monitoring("cache", object())
            with pytest.raises(TypeError, match="read_directly needs a get_health_and_metrics"):
                await rig.handle.register_component_for_monitoring("queue", Component(), read_directly=True)
            with pytest.raises(ValueError, match="component_id"):
                await rig.handle.register_component_for_monitoring("", Component())
            with pytest.raises(KeyError):
                await rig.handle.audit_component("nobody")

    # Regression: a component with plain (non-async) methods was audited "failed" ("can't be used in await").
    async def test_component_with_sync_methods_audited_like_any_other(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("queue", SyncComponent())
            result = await rig.handle.audit_component("queue")
            assert (result.verdict, result.claimed, result.metrics) == (
                AuditVerdict.CONSISTENT,
                "degraded",
                {"queue_depth": 7},
            )

    async def test_unregistered_component_no_longer_audited_and_its_proxy_stopped(self) -> None:
        component = Component()
        async with monitor_rig() as rig:

            async def stop_proxy(component_id: str) -> None:
                await rig.system.lookup(f"proxy:{component_id}").stop()

            handle = ChatEventMonitorHandle(
                rig.monitor, proxy_starter=proxy_starter(rig.system, 30.0), proxy_stopper=stop_proxy
            )
            await handle.register_component_for_monitoring("db", component)
            proxy = rig.system.lookup("proxy:db")
            await rig.at(AUDIT + CHECK)
            reads = component.health_reads
            assert reads == 1
            await handle.unregister_component("db")
            assert proxy.state == RefState.STOPPED
            await rig.at(5 * AUDIT)
            assert component.health_reads == reads
            summary = await handle.get_component_audit_summary()
            assert (summary.total_components, summary.components) == (0, {})
            assert (await handle.check_health()).components == {}
            with pytest.raises(KeyError):
                await handle.unregister_component("db")


@virtual_time
class TestAuditVerdicts:
    async def test_hung_component_unresponsive_while_monitor_keeps_detecting(self) -> None:
        component = Component(hang=True)
        async with monitor_rig(proxy_timeout=60.0) as rig:
            await rig.handle.register_component_for_monitoring("vector-db", component)
            await rig.at(0.5)
            rig.tap.emit("t1", "r1", run_started("t1", "r1"))
            rig.tap.emit("t1", "r1", tool_start("c1"))
            async with anyio.create_task_group() as tg:
                verdicts: list[AuditVerdict] = []

                async def audit() -> None:
                    verdicts.append((await rig.handle.audit_component("vector-db")).verdict)

                tg.start_soon(audit)
                await rig.at(1.0)
                rig.tap.emit("t2", "r2", text())  # a missing start, during the hung audit
                await rig.settle()
                assert rig.alerts.kinds() == [AnomalyKind.MISSING_AGENT_STARTED]
                assert rig.alerts.entries[0][0] - rig.t0 == pytest.approx(1.0)
            assert verdicts == [AuditVerdict.UNRESPONSIVE]
            assert rig.now() == pytest.approx(0.5 + AUDIT_TIMEOUT)
            await rig.at(40)
            # Periodic audits of the hung component time out too; detection kept its pace throughout.
            assert rig.alerts.kinds() == [AnomalyKind.MISSING_AGENT_STARTED, AnomalyKind.STUCK_TOOL]
            summary = await rig.handle.get_component_audit_summary()
            assert summary.unresponsive == ("vector-db",)
            last = summary.components["vector-db"]
            assert last is not None
            assert last.findings == (f"did not report its health within {AUDIT_TIMEOUT} s",)
            assert rig.monitor.statistics().queued == 0

    async def test_hung_component_whose_proxy_hit_its_deadline_stays_unresponsive(self) -> None:
        async with monitor_rig(proxy_timeout=3.0) as rig:
            await rig.handle.register_component_for_monitoring("vector-db", Component(hang=True))
            proxy = rig.system.lookup("proxy:vector-db")
            await rig.at(AUDIT + 5)  # the first periodic audit hung the proxy past its 3 s deadline
            assert proxy.state == RefState.STOPPED  # unsupervised here; in the tree its supervisor restarts it
            result = await rig.handle.audit_component("vector-db")
            assert result.verdict is AuditVerdict.UNRESPONSIVE
            await rig.at(3 * AUDIT + 5)
            assert (await rig.handle.check_health()).components == {"vector-db": "unresponsive"}

    async def test_raising_component_failed_with_the_error_in_findings(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("db", Component(error=ConnectionError("refused")))
            result = await rig.handle.audit_component("db")
            assert result.verdict is AuditVerdict.FAILED
            assert result.findings == ("reading its health raised ConnectionError: refused",)
            await rig.at(AUDIT + CHECK)
            assert (await rig.handle.check_health()).components == {"db": "failed"}
            assert rig.alerts.entries == []  # a failing audit is a verdict, not a lie

    @pytest.mark.parametrize("status", ["degraded", "unhealthy", "critical"])
    async def test_component_admitting_trouble_is_consistent(self, status: str) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring(
                "db", Component(status, metrics={"error_rate": 0.9}), observes_flow=True
            )
            await route_events(rig, "t1", until=3 * AUDIT, confirm=False)  # it really is failing to deliver
            result = await rig.handle.audit_component("db")
            assert result.verdict is AuditVerdict.CONSISTENT
            assert mismatches(rig) == []

    async def test_healthy_claim_with_high_error_rate_is_a_mismatch(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("llm", Component(metrics={"error_rate": 0.75}))
            result = await rig.handle.audit_component("llm")
            assert result.verdict is AuditVerdict.MISMATCH
            assert "error_rate 0.75 > 0.50" in result.findings[0]
            await rig.settle()
            assert len(mismatches(rig)) == 1


@virtual_time
class TestHealthClaimMismatch:
    async def test_bridge_claiming_healthy_while_delivering_nothing_reported_once_per_episode(self) -> None:
        bridge = Component("healthy")
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", bridge, observes_flow=True)
            await rig.at(0.5)
            await route_events(rig, "t1", until=60, confirm=False)
            # Reported at a periodic audit within two audit intervals of the failure, then not again however
            # often the audit finds the same lie.
            [first] = mismatches(rig)
            assert first - 0.5 <= 2 * AUDIT
            [lie] = rig.alerts.of(AnomalyKind.HEALTH_CLAIM_MISMATCH)
            assert (lie.thread_id, lie.severity.value) == ("component:bridge", "critical")
            assert "claims healthy but delivered 0 of" in lie.detail
            summary = await rig.handle.get_component_audit_summary()
            assert summary.mismatched == ("bridge",)
            assert summary.healthy == 0
            # Honest for a while (deliveries confirmed), then lying again: a new episode, reported again.
            await route_events(rig, "t2", until=100, confirm=True)
            assert (await rig.handle.audit_bridge_health("bridge")).verdict is AuditVerdict.CONSISTENT
            assert len(mismatches(rig)) == 1
            relapse = rig.now()
            await route_events(rig, "t3", until=160, confirm=False)
            assert len(mismatches(rig)) == 2
            assert mismatches(rig)[1] - relapse <= 2 * AUDIT
            first_key, second_key = (a.key for a in rig.alerts.of(AnomalyKind.HEALTH_CLAIM_MISMATCH))
            assert first_key != second_key

    # Regression: an audit window with too little traffic to judge was "consistent" and ended the episode, so a
    # low-traffic liar was reported again after every quiet spell.
    async def test_quiet_spell_during_a_lie_is_not_a_new_episode(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", Component("healthy"), observes_flow=True)
            await route_events(rig, "t1", until=25, confirm=False)
            assert len(mismatches(rig)) == 1
            await rig.at(55)  # three audits with nothing routed
            summary = await rig.handle.get_component_audit_summary()
            assert summary.mismatched == ("bridge",)
            assert (await rig.handle.audit_bridge_health("bridge")).verdict is AuditVerdict.MISMATCH
            await route_events(rig, "t2", until=100, confirm=False)
            assert len(mismatches(rig)) == 1

    # Regression: undelivered_event is reported once per stalled gap. An audit window that mixed deliveries from
    # before the onset (>= 10% of its routed events) with that one report judged the claim consistent and was
    # reset; later windows held no report, were never judgeable, and the lie was never flagged.
    async def test_bridge_failing_early_in_an_audit_window_flagged_within_two_audits(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", Component("healthy"), observes_flow=True)
            onset = 1.3 * AUDIT  # 30% into the second window: its deliveries before the onset are ~30% of it
            await route_events(rig, "t1", until=onset, confirm=True)
            await route_events(rig, "t2", until=6 * AUDIT, confirm=False)
            [lie] = rig.alerts.of(AnomalyKind.HEALTH_CLAIM_MISMATCH)
            [flagged] = mismatches(rig)
            assert 0 < flagged - onset <= 2 * AUDIT, lie.detail
            assert "since its delivery stalled" in lie.detail
            assert [a.thread_id for a in rig.alerts.of(AnomalyKind.UNDELIVERED_EVENT)] == ["t2"]

    async def test_one_stalled_thread_among_delivering_ones_never_flagged(self) -> None:
        # A client that stopped reading holds its thread back (a stall the audits see) until it leaves; the other
        # thread is delivered all along.
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", Component("healthy"), observes_flow=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: route_events(rig, "fast", until=8 * AUDIT, confirm=True))
                await route_events(rig, "slow", until=4 * AUDIT, confirm=False)
                rig.tap.unsubscribe("slow")
            assert [a.kind for a in rig.alerts.of(AnomalyKind.UNDELIVERED_EVENT)] == [AnomalyKind.UNDELIVERED_EVENT]
            assert mismatches(rig) == []
            summary = await rig.handle.get_component_audit_summary()
            assert (summary.healthy, summary.mismatched) == (1, ())

    # Regression: a bridge that caught up with its backlog in a quiet spell (nothing new routed) was never judged
    # honest, so its next failure passed for the episode already reported and was never reported.
    async def test_backlog_caught_up_in_a_quiet_spell_ends_the_episode(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", Component("healthy"), observes_flow=True)
            # Every routed event falls in windows the audits judged (a lie) and closed; none in the next ones.
            await route_events(rig, "t1", until=2 * AUDIT - 0.1, confirm=False)
            await rig.at(2 * AUDIT + CHECK)
            assert len(mismatches(rig)) == 1
            await rig.at(2.5 * AUDIT)
            rig.tap.confirm("t1")  # everything delivered at last; nothing else is routed for a while
            await rig.at(3 * AUDIT + CHECK)
            summary = await rig.handle.get_component_audit_summary()
            assert (summary.healthy, summary.mismatched) == (1, ())
            await route_events(rig, "t2", until=8 * AUDIT, confirm=False)
            assert len(mismatches(rig)) == 2

    async def test_on_demand_audit_bridge_health_names_the_lie(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring(
                "agent_websocket_bridge", Component("healthy"), observes_flow=True
            )
            await route_events(rig, "t1", until=AUDIT - 1, confirm=False)
            result = await rig.handle.audit_bridge_health()
            assert result.verdict is AuditVerdict.MISMATCH
            assert result.claimed == "healthy"

    # Regression: events still in flight at audit time (a burst just before it) or routed to a client that then
    # left counted as "not delivered", so an honest bridge was called a liar.
    async def test_honest_bridge_with_bursts_and_departing_clients_never_flagged(self) -> None:
        bridge = Component("healthy")
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", bridge, observes_flow=True)
            rig.tap.emit("steady", "r", run_started("steady", "r"), fan_out=1)
            rig.tap.confirm("steady")
            for i in range(15):  # a client that leaves before these reach it
                rig.tap.emit("leaver", "r", run_started("leaver", "r") if i == 0 else text(), fan_out=1)
            rig.tap.emit("leaver", "r", run_finished("leaver", "r"), fan_out=1)
            await rig.at(1.0)
            rig.tap.unsubscribe("leaver")
            await rig.at(AUDIT - 0.125)
            for i in range(30):  # a burst just before the audit, confirmed at the bridge's next tick
                rig.tap.emit("burst", "r", run_started("burst", "r") if i == 0 else text(), fan_out=1)
            rig.tap.emit("burst", "r", run_finished("burst", "r"), fan_out=1)
            await rig.at(AUDIT + 0.5)
            rig.tap.confirm("burst")
            rig.tap.emit("steady", "r", run_finished("steady", "r"), fan_out=1)
            rig.tap.confirm("steady")
            await route_events(rig, "later", until=12 * AUDIT, confirm=True)
            assert rig.alerts.entries == []
            summary = await rig.handle.get_component_audit_summary()
            assert (summary.healthy, summary.mismatched) == (1, ())

    async def test_flow_check_applies_only_to_the_component_the_tap_comes_from(self) -> None:
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge", Component("degraded"), observes_flow=True)
            await rig.handle.register_component_for_monitoring("db", Component("healthy"))
            await route_events(rig, "t1", until=3 * AUDIT, confirm=False)
            summary = await rig.handle.get_component_audit_summary()
            assert summary.healthy == 2
            assert mismatches(rig) == []


@virtual_time
class TestObserverAndSummary:
    # Regression: a change pushed under the component's own name ("agent_websocket_bridge") was filed under that
    # name, not the id it was registered with, and nothing showed the pushed claims.
    async def test_health_change_pushed_through_observer_recorded_under_registered_id(self) -> None:
        bridge = Component("healthy", hang=False)
        async with monitor_rig() as rig:
            await rig.handle.register_component_for_monitoring("bridge-eu", bridge, observes_flow=True)
            bridge.change_status("degraded")
            summary = await rig.handle.get_component_audit_summary()
            assert summary.claims == {"bridge-eu": "degraded"}
            bridge.hang = True
            bridge.change_status("unhealthy")
            await rig.at(AUDIT + AUDIT_TIMEOUT + CHECK)
            summary = await rig.handle.get_component_audit_summary()
            last = summary.components["bridge-eu"]
            assert last is not None
            assert (last.verdict, last.claimed) == (AuditVerdict.UNRESPONSIVE, "unhealthy")

    async def test_summary_and_check_health_list_every_component_verdict(self) -> None:
        async with monitor_rig() as rig:
            handle = rig.handle
            await handle.register_component_for_monitoring("honest", Component("healthy"))
            await handle.register_component_for_monitoring("hung", Component(hang=True))
            await handle.register_component_for_monitoring("broken", Component(error=RuntimeError("x")))
            await handle.register_component_for_monitoring("liar", Component(metrics={"error_rate": 1.0}))
            await handle.register_component_for_monitoring("new", Component())
            before = await handle.get_component_audit_summary()
            assert before.total_components == 5
            assert set(before.components.values()) == {None}
            await rig.at(AUDIT + AUDIT_TIMEOUT + CHECK)
            summary = await handle.get_component_audit_summary()
            assert summary.total_components == 5
            assert summary.healthy == 2
            assert summary.mismatched == ("liar",)
            assert summary.unresponsive == ("hung",)
            verdicts = {cid: (r.verdict.value if r is not None else None) for cid, r in summary.components.items()}
            assert verdicts == {
                "honest": "consistent",
                "hung": "unresponsive",
                "broken": "failed",
                "liar": "health_claim_mismatch",
                "new": "consistent",
            }
            assert summary.claims == {"honest": "healthy", "liar": "healthy", "new": "healthy"}
            health = await handle.check_health()
            assert health.components == verdicts
            assert health.anomalies_by_kind == {"health_claim_mismatch": 1}
            assert health.status == "healthy"  # the monitor itself is fine; its verdicts are about others


class TestMonitorConfig:
    @pytest.mark.parametrize(
        ("field", "value", "rule"),
        [
            ("check_interval", 0, "> 0 seconds"),
            ("audit_timeout", -1.0, "> 0 seconds"),
            ("audit_interval", -1.0, ">= 0 seconds"),
            ("reported_keys", 0, "int >= 1"),
            ("direct_replay", 0, "int >= 1"),
        ],
    )
    def test_bad_value_names_the_field_and_rule(self, field: str, value: object, rule: str) -> None:
        with pytest.raises(ValueError, match=f"MonitorConfig.{field} must be .*{rule}"):
            MonitorConfig(**{field: value})  # type: ignore[arg-type]
