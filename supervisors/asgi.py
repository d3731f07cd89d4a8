from __future__ import annotations

import logging
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from actors import ActorError
from actors.chat._bridge_messages import allow_all
from actors.chat._connection import CloseCode

from ._asgi_ws import ANONYMOUS, Grant, StarletteSink, TokenAuthorizer, WebSocketGateway
from ._dashboard import DashboardFeed, DashboardSnapshot, FaultPanel, RunInFlight
from ._prometheus import RuntimeCollector, read_snapshot, runtime_registry
from .app import Runtime, open_runtime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from actors.chat._alert_sinks import AlertSink

    from ._config import RuntimeConfig

logger = logging.getLogger("agentwatch.asgi")

#: Seconds between two dashboard snapshots pushed over ``/dashboard/ws``.
DASHBOARD_INTERVAL: Final = 0.5

_json = msgspec.json.Encoder()


def _json_response(value: Any, status_code: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status_code, media_type="application/json")


class RuntimeHost:
    """Runs an agentwatch runtime for an ASGI app: its lifespan, its ``/ws`` gateway, its metrics and dashboard.

    ``create_app`` builds one and keeps it at ``app.state.agentwatch``; the runtime it starts is at
    ``app.state.runtime`` (and at :attr:`runtime`) while the lifespan runs.

    :param runtime: host an already running runtime instead of starting one (the lifespan then neither starts
        nor stops it)
    :param drain_timeout: seconds :meth:`drain` waits for queued events to be sent before closing with 1001
    """

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        *,
        runtime: Runtime | None = None,
        authorize_token: TokenAuthorizer | None = None,
        authorize: Callable[[str, str], bool] = allow_all,
        sinks: Sequence[AlertSink] = (),
        fault_injection: bool = False,
        runs_source: Callable[[], Sequence[RunInFlight]] | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        if runtime is not None and config is not None:
            raise ValueError("pass either config (a runtime is started) or runtime (one already running), not both")
        if not drain_timeout > 0:
            raise ValueError(f"drain_timeout must be > 0 seconds, got {drain_timeout!r}")
        self._config = config
        self._external = runtime
        self._authorize = authorize
        self._sinks = tuple(sinks)
        self._drain_timeout = drain_timeout
        self.runtime: Runtime | None = None
        self.draining = False
        self.gateway = WebSocketGateway(lambda: self.runtime, authorize_token=authorize_token)
        self.collector = RuntimeCollector()
        self._registry = runtime_registry(self.collector)
        self.faults = FaultPanel(lambda: self.runtime) if fault_injection else None
        self.dashboard = DashboardFeed(self.faults, runs_source=runs_source)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._apps: list[Any] = []

    def bind(self, app: Any) -> None:
        """Also set ``app.state.runtime`` while the runtime runs (the app the host is mounted in, say)."""
        self._apps.append(app)

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the runtime on the running event loop; on exit drain (flush, close with 1001) and stop it.

        Usable as a Starlette or FastAPI ``lifespan``: ``FastAPI(lifespan=watch.state.agentwatch.lifespan)``.

        :raises RuntimeError: when the host is already running
        """
        if self.runtime is not None:
            raise RuntimeError("this RuntimeHost is already running: one lifespan per host")
        apps = [*self._apps, *([app] if app is not None else [])]
        async with AsyncExitStack() as stack:
            runtime = self._external
            if runtime is None:
                runtime = await stack.enter_async_context(
                    open_runtime(self._config, authorize=self._authorize, sinks=self._sinks)
                )
            self._tasks = await stack.enter_async_context(anyio.create_task_group())
            self.runtime = runtime
            self.draining = False
            self.gateway.accepting = True
            for bound in apps:
                bound.state.runtime = runtime
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self.drain()
                self._tasks.cancel_scope.cancel()
                self.runtime = None
                for bound in apps:
                    bound.state.runtime = None

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting connections, wait until every accepted event was sent, then close each one with 1001.

        Call it before the server stops reading sockets (``graceful_shutdown_trigger`` does, for Hypercorn); the
        lifespan calls it too (a no-op the second time). Clients reconnect and resume with ``afterSeq``.

        :param timeout: seconds for the whole drain (default: the host's ``drain_timeout``)
        """
        runtime = self.runtime
        self.draining = True
        self.gateway.accepting = False
        if runtime is None:
            return
        bridge = runtime.bridge
        with anyio.move_on_after(self._drain_timeout if timeout is None else timeout):
            try:
                # The reply to an ask comes after every Publish queued before it: once it shows nothing queued
                # or held back, every event published before the drain began has been sent.
                while True:
                    metrics = await bridge.get_metrics()
                    if metrics.queued == 0 and metrics.deferred_pending == 0:
                        break
                    await anyio.sleep(0.01)
                for stats in await bridge.connection_statistics():
                    bridge.disconnect(
                        stats.connection_id, code=CloseCode.GOING_AWAY, reason="server shutting down: resume"
                    )
                while True:
                    if not (await bridge.get_metrics()).connections_open:
                        break
                    await anyio.sleep(0.01)
            except ActorError as exc:
                logger.warning("drain ended early: the bridge is unavailable (%s)", exc)

    # ------------------------------------------------------------------ HTTP endpoints

    async def livez(self, request: Request) -> Response:
        """``200`` whenever the event loop answers (liveness: restart the process only when this fails)."""
        return _json_response({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        """``200`` while the bridge accepts connections; a detached monitor is ``degraded``, never not-ready."""
        runtime = self.runtime
        if runtime is None:
            return _json_response({"status": "starting", "ready": False}, 503)
        if self.draining:
            return _json_response({"status": "draining", "ready": False}, 503)
        try:
            with anyio.fail_after(1.0):
                bridge = await runtime.bridge.get_health_status()
        except (ActorError, TimeoutError) as exc:
            return _json_response({"status": "not_ready", "ready": False, "reasons": [f"bridge: {exc}"]}, 503)
        monitoring = runtime.monitoring_state()
        reasons = [f"bridge {reason.check}: {reason.detail}" for reason in bridge.reasons]
        if monitoring != "running":
            reasons.append(f"monitoring is {monitoring}: the bridge runs alone")
        degraded = bool(reasons)
        return _json_response(
            {
                "status": "degraded" if degraded else "ready",
                "ready": True,
                "degraded": degraded,
                "bridge": bridge.status.value,
                "monitoring": monitoring,
                "reasons": reasons,
            }
        )

    async def health(self, request: Request) -> Response:
        """The combined health report (``RuntimeHealth`` with the audit summary); 503 when not ready."""
        runtime = self.runtime
        if runtime is None:
            return _json_response({"status": "starting", "ready": False}, 503)
        report = await runtime.health(timeout=1.0)
        return _json_response(report, 200 if report.ready else 503)

    async def metrics(self, request: Request) -> Response:
        """Prometheus text exposition of the bridge's, the monitor's and the gateway's figures."""
        runtime = self.runtime
        if runtime is None:
            return Response("runtime not started\n", status_code=503, media_type="text/plain")
        self.collector.update(await read_snapshot(runtime, self.gateway))
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ dashboard

    async def dashboard_page(self, request: Request) -> Response:
        """The dashboard (one static HTML file, no external assets)."""
        page = resources.files("supervisors").joinpath("static/dashboard.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def dashboard_snapshot(self) -> DashboardSnapshot | None:
        """One dashboard snapshot now (None before the runtime started)."""
        runtime = self.runtime
        return None if runtime is None else await self.dashboard.snapshot(runtime)

    async def dashboard_json(self, request: Request) -> Response:
        """``GET /dashboard/snapshot``: what the live page shows, once."""
        snapshot = await self.dashboard_snapshot()
        if snapshot is None:
            return _json_response({"status": "starting"}, 503)
        return _json_response(snapshot)

    async def dashboard_ws(self, websocket: WebSocket) -> None:
        """Push a snapshot every :data:`DASHBOARD_INTERVAL` seconds until the client leaves or the host drains."""
        await websocket.accept()
        sink = StarletteSink(websocket)

        async def push() -> None:
            while not self.draining:
                snapshot = await self.dashboard_snapshot()
                if snapshot is None:
                    break
                await sink.send_text(_json.encode(snapshot).decode())
                await anyio.sleep(DASHBOARD_INTERVAL)
            await sink.close(CloseCode.GOING_AWAY, "server shutting down")

        try:
            async with anyio.create_task_group() as tasks:

                async def read_until_closed() -> None:
                    # The page sends nothing; reading is how a client's departure is noticed.
                    while (await websocket.receive())["type"] != "websocket.disconnect":
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(read_until_closed)
                await push()
                tasks.cancel_scope.cancel()
        except (WebSocketDisconnect, OSError):
            pass

    async def inject_fault(self, request: Request) -> Response:
        """``POST /dashboard/faults/{name}``: start a demo fault (202), or say why not (404, 409)."""
        name = request.path_params["name"]
        faults = self.faults
        if faults is None or name not in FaultPanel.FAULTS:
            return _json_response({"error": f"unknown fault {name!r}", "faults": list(FaultPanel.FAULTS)}, 404)
        if self._tasks is None:
            return _json_response({"error": "the runtime is not running"}, 409)
        try:
            faults.start(name, self._tasks)
        except RuntimeError as exc:
            return _json_response({"error": str(exc)}, 409)
        return _json_response({"started": name}, 202)

    async def fault_list(self, request: Request) -> Response:
        """``GET /dashboard/faults``: the faults on offer and the history."""
        faults = self.faults
        if faults is None:
            return _json_response({"faults": [], "history": []})
        return _json_response({"faults": list(FaultPanel.FAULTS), "running": faults.running,
                               "history": faults.history.records})  # fmt: skip


def create_app(
    config: RuntimeConfig | None = None,
    *,
    authorize_token: TokenAuthorizer | None = None,
    runtime: Runtime | None = None,
    authorize: Callable[[str, str], bool] = allow_all,
    sinks: Sequence[AlertSink] = (),
    dashboard: bool = False,
    fault_injection: bool = False,
    runs_source: Callable[[], Sequence[RunInFlight]] | None = None,
    drain_timeout: float = 5.0,
) -> Starlette:
    """Build the Starlette app that hosts an agentwatch runtime.

    Routes: ``/ws`` (subscribe/resume), ``/livez``, ``/readyz``, ``/health``, ``/metrics``; with ``dashboard``,
    ``/`` (the page), ``/dashboard/ws`` and ``/dashboard/snapshot``; with ``fault_injection`` too,
    ``POST /dashboard/faults/{name}``. The dashboard and its fault buttons have no authentication of their own:
    enable them for demos, or behind your own middleware.

    :param config: the runtime's configuration (default ``RuntimeConfig()``)
    :param authorize_token: ``token -> Grant | None`` (may be async); ``None`` admits every client as
        ``anonymous`` to every thread
    :param runtime: host a runtime you started yourself (then ``config``, ``authorize`` and ``sinks`` are yours)
    :param authorize: the bridge's own ``(principal, thread_id) -> bool`` hook, checked after the grant
    :param sinks: alert sinks for the monitor
    :param runs_source: the application's runs in flight, for the dashboard
    :param drain_timeout: seconds the shutdown waits for queued events to be sent before closing with 1001
    :return: a Starlette app; ``app.state.agentwatch`` is its :class:`RuntimeHost`
    """
    if fault_injection and not dashboard:
        raise ValueError("fault_injection needs dashboard=True (its buttons live on the dashboard)")
    host = RuntimeHost(
        config,
        runtime=runtime,
        authorize_token=authorize_token,
        authorize=authorize,
        sinks=sinks,
        fault_injection=fault_injection,
        runs_source=runs_source,
        drain_timeout=drain_timeout,
    )
    routes: list[Route | WebSocketRoute] = [
        WebSocketRoute("/ws", host.gateway.serve),
        Route("/livez", host.livez),
        Route("/readyz", host.readyz),
        Route("/health", host.health),
        Route("/metrics", host.metrics),
    ]
    if dashboard:
        routes += [
            Route("/", host.dashboard_page),
            Route("/dashboard/snapshot", host.dashboard_json),
            WebSocketRoute("/dashboard/ws", host.dashboard_ws),
            Route("/dashboard/faults", host.fault_list),
        ]
    if fault_injection:
        routes.append(Route("/dashboard/faults/{name}", host.inject_fault, methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lambda app: host.lifespan())
    app.state.agentwatch = host
    app.state.runtime = None
    host.bind(app)
    return app


def runtime_of(app: Any) -> Runtime:
    """The runtime an app created by :func:`create_app` (or bound to its host) is running.

    :raises RuntimeError: when its lifespan has not started (or has ended)
    """
    runtime = getattr(app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the agentwatch runtime is not running: is the app's lifespan (or the host's) started?")
    return runtime


def graceful_shutdown_trigger(app: Starlette, trigger: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    """Wrap a Hypercorn ``shutdown_trigger`` so that the app drains (flush, close with 1001) before the server
    stops reading its sockets.

    Hypercorn cancels open WebSockets after its ``graceful_timeout`` and only then runs the lifespan's shutdown,
    when no connection can be closed politely any more; draining first gives every client its last events and a
    1001 close to resume from.
    """
    host: RuntimeHost = app.state.agentwatch

    async def shutdown() -> None:
        await trigger()
        await host.drain()

    return shutdown


__all__ = [
    "ANONYMOUS",
    "Grant",
    "RunInFlight",
    "RuntimeHost",
    "StarletteSink",
    "TokenAuthorizer",
    "create_app",
    "graceful_shutdown_trigger",
    "runtime_of",
]
