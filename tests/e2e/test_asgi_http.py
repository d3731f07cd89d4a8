from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from actors.chat._events import Custom, RunFinished, RunStarted
from supervisors._config import RuntimeConfig, SupervisionSettings
from supervisors.asgi import create_app, runtime_of

from ._server import frame, is_control, open_ws, running

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

pytestmark = pytest.mark.anyio

LIMIT = 30


def publish_run(app: Any, thread_id: str, steps: int) -> None:
    bridge = runtime_of(app).bridge
    bridge.publish(thread_id, "r1", RunStarted(thread_id=thread_id, run_id="r1"))
    for step in range(steps):
        bridge.publish(thread_id, "r1", Custom(name="step", value=step))
    bridge.publish(thread_id, "r1", RunFinished(thread_id=thread_id, run_id="r1"))


def families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(metrics: dict[str, Metric], name: str, **labels: str) -> float:
    for family in metrics.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(f"no sample {name} {labels}")


async def wait_for(client: httpx.AsyncClient, url: str, key: str, expected: str) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = (await client.get(url)).json()
        if body.get(key) == expected:
            return body
        await anyio.sleep(0.05)


class TestProbes:
    async def test_livez_readyz_health_report_a_healthy_runtime(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with running(app) as server, httpx.AsyncClient() as client:
                livez = await client.get(server.http + "/livez")
                readyz = await client.get(server.http + "/readyz")
                health = await client.get(server.http + "/health")
        assert (livez.status_code, livez.json()) == (200, {"status": "alive"})
        assert readyz.status_code == 200
        assert readyz.json()["status"] == "ready"
        assert readyz.json()["degraded"] is False
        report = health.json()
        assert health.status_code == 200
        assert report["status"] == "healthy"
        assert report["monitoring"] == "running"
        # The audit summary is part of the report, with the bridge registered as a component.
        assert report["audit"]["totalComponents"] == 1
        assert "agent_websocket_bridge" in report["audit"]["components"]
        assert report["supervision"]["status"] == "healthy"

    async def test_detached_monitor_is_degraded_but_still_ready(self) -> None:
        app = create_app(dashboard=True, fault_injection=True)
        with anyio.fail_after(LIMIT):
            async with running(app) as server, httpx.AsyncClient() as client:
                started = await client.post(server.http + "/dashboard/faults/crash-repeatedly")
                readyz = await wait_for(client, server.http + "/readyz", "monitoring", "detached")
                health = await client.get(server.http + "/health")
                metrics = families((await client.get(server.http + "/metrics")).text)
                # The bridge still delivers while the monitor is away.
                async with open_ws(client, server.ws + "/ws") as ws:
                    await ws.receive_text()
                    await ws.send_text(json.dumps({"subscribe": {"threadId": "t1"}}))
                    assert frame(await ws.receive_text())["name"] == "agentwatch.subscribed"
                    publish_run(app, "t1", 3)
                    delivered: list[str] = []
                    while len(delivered) < 5:
                        decoded = frame(await ws.receive_text())
                        if not is_control(decoded):
                            delivered.append(decoded["type"])
        assert started.status_code == 202
        assert readyz["ready"] is True
        assert readyz["status"] == "degraded"
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["monitoring"] == "detached"
        assert value(metrics, "agentwatch_monitoring_state", state="detached") == 1.0
        assert value(metrics, "agentwatch_monitoring_state", state="running") == 0.0
        assert value(metrics, "agentwatch_supervisor_events_total", kind="detached") >= 1.0
        assert delivered == ["RUN_STARTED", "CUSTOM", "CUSTOM", "CUSTOM", "RUN_FINISHED"]


class TestMetrics:
    async def test_metrics_follow_prometheus_conventions_and_count_what_happened(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await ws.receive_text()
                await ws.send_text(json.dumps({"subscribe": {"threadId": "t1"}}))
                assert frame(await ws.receive_text())["name"] == "agentwatch.subscribed"
                await ws.send_text("{not json")
                assert frame(await ws.receive_text())["name"] == "agentwatch.error"
                publish_run(app, "t1", 48)
                seen = 0
                while seen < 50:
                    seen += not is_control(frame(await ws.receive_text()))
                response = await client.get(server.http + "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        metrics = families(response.text)
        assert metrics, "no metric families"
        for name, family in metrics.items():
            assert name.startswith("agentwatch_"), name
            for sample in family.samples:
                # No per-thread (unbounded) labels, ever.
                assert not {"thread", "thread_id", "threadId", "run_id"} & set(sample.labels), sample
                if family.type == "counter":
                    assert sample.name.endswith(("_total", "_created")), sample.name
        assert metrics["agentwatch_bridge_delivery_latency_seconds"].type == "gauge"
        assert value(metrics, "agentwatch_bridge_events_accepted_total") == 50.0
        assert value(metrics, "agentwatch_bridge_events_delivered_total") == 50.0
        assert value(metrics, "agentwatch_bridge_connections_open") == 1.0
        assert value(metrics, "agentwatch_ws_bad_frames_total") == 1.0
        assert value(metrics, "agentwatch_monitoring_state", state="running") == 1.0
        assert value(metrics, "agentwatch_bridge_status", status="healthy") == 1.0
        assert 0.0 <= value(metrics, "agentwatch_bridge_delivery_latency_seconds", quantile="0.99") < 60.0


class TestDashboardEndpoints:
    async def test_dashboard_page_and_live_snapshots(self) -> None:
        app = create_app(dashboard=True)
        with anyio.fail_after(LIMIT):
            async with running(app) as server, httpx.AsyncClient() as client:
                page = await client.get(server.http + "/")
                publish_run(app, "t1", 3)
                async with open_ws(client, server.ws + "/dashboard/ws") as ws:
                    first = json.loads(await ws.receive_text())
                    second = json.loads(await ws.receive_text())
                no_faults = await client.post(server.http + "/dashboard/faults/crash-once")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "dashboard/ws" in page.text
        # No CDN, no external asset.
        assert "http://" not in page.text
        assert "https://" not in page.text
        assert second["at"] > first["at"]
        tree = first["tree"][0]
        assert tree["id"] == "agentwatch"
        assert [child["id"] for child in tree["children"]] == ["bridge", "monitoring"]
        monitoring = tree["children"][1]
        assert [child["id"] for child in monitoring["children"]] == ["alerts", "monitor", "components"]
        assert first["bridge"]["events_accepted"] == 5
        assert first["faultInjection"] is False
        assert no_faults.status_code == 404  # fault injection is off unless asked for

    async def test_fault_endpoint_refuses_unknown_faults_and_a_second_one_meanwhile(self) -> None:
        app = create_app(dashboard=True, fault_injection=True)
        with anyio.fail_after(LIMIT):
            async with running(app) as server, httpx.AsyncClient() as client:
                unknown = await client.post(server.http + "/dashboard/faults/meteor")
                hang = await client.post(server.http + "/dashboard/faults/hang")
                busy = await client.post(server.http + "/dashboard/faults/crash-once")
        assert unknown.status_code == 404
        assert "crash-repeatedly" in unknown.json()["faults"]
        assert hang.status_code == 202
        assert busy.status_code == 409
        assert "still running" in busy.json()["error"]

    @pytest.mark.parametrize("fault", ["crash-once", "hang", "flood", "crash-repeatedly"])
    async def test_each_demo_fault_runs_to_an_outcome_and_the_bridge_stays_ready(self, fault: str) -> None:
        config = RuntimeConfig(supervision=SupervisionSettings(monitor_handler_timeout=0.5))
        app = create_app(config, dashboard=True, fault_injection=True)
        with anyio.fail_after(LIMIT):
            async with running(app) as server, httpx.AsyncClient() as client:
                started = await client.post(server.http + f"/dashboard/faults/{fault}")
                while True:
                    faults = (await client.get(server.http + "/dashboard/faults")).json()
                    if faults["running"] is None:
                        break
                    await anyio.sleep(0.05)
                readyz = await client.get(server.http + "/readyz")
                metrics = families((await client.get(server.http + "/metrics")).text)
        assert started.status_code == 202
        outcome = [r for r in faults["history"] if r["target"] == "dashboard" and r["action"] == "effect"]
        assert [r["fault"] for r in outcome] == [fault]
        assert not outcome[0]["detail"].startswith("not injected"), outcome
        assert readyz.status_code == 200
        if fault == "flood":
            # 150,000 told at once into a 100,000-message mailbox that cannot drain meanwhile.
            assert int(outcome[0]["detail"].rsplit(" ", 1)[1]) >= 50_000
        else:
            assert value(metrics, "agentwatch_supervisor_events_total", kind="failed") >= 1.0


class TestMounted:
    async def test_mounted_in_fastapi_with_its_lifespan_agent_routes_publish_to_ws_clients(self) -> None:
        watch = create_app()
        api = FastAPI(lifespan=watch.state.agentwatch.lifespan)

        @api.post("/chat/{thread_id}")
        async def chat(thread_id: str, request: Request) -> dict[str, str]:
            # Agent code reaches the bridge through the parent app's state.
            runtime_of(request.app).bridge.notify_agent_started(thread_id, "r1")
            runtime_of(request.app).bridge.notify_agent_completed(thread_id, "r1")
            return {"status": "started"}

        api.mount("/watch", watch)
        with anyio.fail_after(LIMIT):
            async with (
                running(api, drained_app=watch, ready_path="/watch/readyz") as server,
                httpx.AsyncClient() as client,
            ):
                async with open_ws(client, server.ws + "/watch/ws") as ws:
                    await ws.receive_text()
                    await ws.send_text(json.dumps({"subscribe": {"threadId": "t9"}}))
                    assert frame(await ws.receive_text())["name"] == "agentwatch.subscribed"
                    posted = await client.post(server.http + "/chat/t9")
                    events = [frame(await ws.receive_text()) for _ in range(2)]
                metrics = await client.get(server.http + "/watch/metrics")
        assert posted.json() == {"status": "started"}
        assert [event["type"] for event in events] == ["RUN_STARTED", "RUN_FINISHED"]
        assert "agentwatch_bridge_events_accepted_total 2.0" in metrics.text

    async def test_mounted_in_a_parent_starlette_app(self) -> None:
        watch = create_app()
        parent = Starlette(routes=[Mount("/agentwatch", watch)], lifespan=watch.state.agentwatch.lifespan)
        with anyio.fail_after(LIMIT):
            async with (
                running(parent, drained_app=watch, ready_path="/agentwatch/readyz") as server,
                httpx.AsyncClient() as client,
            ):
                health = await client.get(server.http + "/agentwatch/health")
        assert health.json()["status"] == "healthy"
