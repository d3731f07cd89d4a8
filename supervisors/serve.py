from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import os
import random
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from actors import ActorError
from actors.chat._connection import MemorySink
from actors.chat._detection import DetectionThresholds
from actors.chat._events import (
    ReasoningEnd,
    ReasoningMessageContent,
    ReasoningMessageEnd,
    ReasoningMessageStart,
    RunError,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    ToolCallArgs,
    ToolCallEnd,
)
from actors.chat._monitor import MonitorConfig

from ._config import ConfigError, RuntimeConfig, SupervisionSettings, load_config
from ._dashboard import RunInFlight

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.applications import Starlette

    from actors.chat._bridge_handle import BridgeHandle

    from .app import Runtime

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

logger = logging.getLogger("agentwatch.serve")

PROG: Final = "agentwatch serve"
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
_SERVE_PACKAGES: Final = ("hypercorn",)

#: The demo's thresholds: anomalies show on the dashboard within seconds instead of the production minutes.
DEMO_CONFIG: Final = RuntimeConfig(
    monitor=MonitorConfig(
        thresholds=DetectionThresholds(stuck_tool_after=6.0, stale_thread_after=12.0, undelivered_after=5.0),
        check_interval=0.5,
        audit_interval=5.0,
    ),
    supervision=SupervisionSettings(detach_cooldown=30.0),
)


# ---------------------------------------------------------------------- Hypercorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port the kernel picks), for :func:`serve_hypercorn`.

    :raises OSError: when the address cannot be bound
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _backend_name() -> str:
    try:
        import sniffio  # installed with trio; without it the loop can only be asyncio
    except ImportError:
        return "asyncio"
    return sniffio.current_async_library()


async def serve_hypercorn(
    app: Any,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    graceful_timeout: float = 5.0,
    freeze_heap: bool = True,
) -> None:
    """Serve ``app`` with Hypercorn on ``sock`` in the running event loop (asyncio or trio) until the trigger returns.

    The socket stays the caller's (Hypercorn gets a duplicate), so the caller knows the port before serving.

    :param freeze_heap: call ``gc.freeze()`` just before serving: the objects alive then (modules, classes, the
        app) move to the collector's permanent generation, so that the full collections a busy server triggers no
        longer rescan them. On trio over real WebSockets they took
        1.1-1.8 s of every ~159k events (bench/ws.py); frozen objects are still freed by reference counting.
    """
    from hypercorn.config import Config  # the `serve` extra: only `agentwatch serve` needs Hypercorn

    config = Config()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = None
    config.graceful_timeout = graceful_timeout
    if _backend_name() == "trio":
        from hypercorn.trio import serve as serve_trio

        serving = serve_trio(app, config, shutdown_trigger=shutdown_trigger)
    else:
        from hypercorn.asyncio import serve as serve_asyncio

        serving = serve_asyncio(app, config, shutdown_trigger=shutdown_trigger)
    if freeze_heap:
        gc.collect()  # what is garbage now is freed, not frozen
        gc.freeze()
    await serving


# ---------------------------------------------------------------------- simulated traffic


class DemoTraffic:
    """Simulated agents for ``serve --simulate N``: each runs one chat thread, with a simulated client reading it.

    A run thinks, calls zero to two tools, streams an answer and finishes; about one run in ten goes wrong the
    way production runs do (a tool that never finishes, a completion with no start, a run with no RUN_STARTED, a
    RUN_ERROR), so the monitor has something to find.

    :param agents: how many agents (and threads) run at once
    :param failure_rate: share of runs that go wrong
    """

    def __init__(self, agents: int, *, seed: int = 0, failure_rate: float = 0.1) -> None:
        if isinstance(agents, bool) or not isinstance(agents, int) or agents < 1:
            raise ValueError(f"agents must be an int >= 1, got {agents!r}")
        if not 0 <= failure_rate <= 1:
            raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate!r}")
        self.agents = agents
        self._seed = seed
        self._failure_rate = failure_rate
        self._runs: dict[tuple[str, str], RunInFlight] = {}

    def runs(self) -> list[RunInFlight]:
        """The runs in flight now (the dashboard's ``runs_source``)."""
        return list(self._runs.values())

    async def run(self, runtime: Runtime) -> None:
        """Run every agent until cancelled."""
        async with anyio.create_task_group() as tasks:
            for index in range(self.agents):
                tasks.start_soon(self._agent, runtime, index)

    async def _agent(self, runtime: Runtime, index: int) -> None:
        rng = random.Random(self._seed * 10_007 + index)
        thread = f"demo/agent-{index + 1}"
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._client, runtime, thread, index)
            number = 0
            while True:
                number += 1
                await self._one_run(runtime, rng, thread, f"run-{number}")
                await anyio.sleep(rng.uniform(0.2, 1.2))

    async def _client(self, runtime: Runtime, thread: str, index: int) -> None:
        # A simulated reader: a little slow per frame, reconnecting whenever the bridge closes it.
        while True:
            sink = MemorySink(keep_frames=False, delay=0.0002)
            try:
                connection = await runtime.bridge.connect(sink, principal=f"user-{index + 1}")
                await runtime.bridge.subscribe(connection, thread)
            except ActorError:
                await anyio.sleep(1.0)
                continue
            while True:  # MemorySink signals nothing on close: look every half second
                if sink.closed:
                    break
                await anyio.sleep(0.5)

    def _phase(self, runtime: Runtime, thread: str, run_id: str, phase: str) -> None:
        key = (thread, run_id)
        started = self._runs[key].started_at if key in self._runs else runtime.system.clock.now_ms()
        self._runs[key] = RunInFlight(thread_id=thread, run_id=run_id, phase=phase, started_at=started)

    async def _stream(
        self, bridge: BridgeHandle, clock_ms: Callable[[], int], thread: str, run_id: str, events: list[Any]
    ) -> None:
        for event in events:
            bridge.publish(thread, run_id, msgspec.structs.replace(event, timestamp=clock_ms()))
            await anyio.sleep(0.04)

    async def _one_run(self, runtime: Runtime, rng: random.Random, thread: str, run_id: str) -> None:
        bridge = runtime.bridge
        now = runtime.system.clock.now_ms
        failure = rng.choice(("stuck_tool", "orphan", "no_start", "error")) if rng.random() < self._failure_rate else ""
        key = (thread, run_id)
        self._phase(runtime, thread, run_id, "starting")
        try:
            if failure != "no_start":
                bridge.notify_agent_started(thread, run_id)
            self._phase(runtime, thread, run_id, "thinking")
            thinking = f"{run_id}:thinking"
            bridge.notify_agent_thinking(thread, run_id, message_id=thinking)
            reasoning: list[Any] = [ReasoningMessageStart(message_id=thinking, role="reasoning")]
            reasoning += [ReasoningMessageContent(message_id=thinking, delta="weighing it ") for _ in range(4)]
            reasoning += [ReasoningMessageEnd(message_id=thinking), ReasoningEnd(message_id=thinking)]
            await self._stream(bridge, now, thread, run_id, reasoning)
            for call in range(rng.randint(0, 2)):
                tool = rng.choice(("search", "calendar", "invoices", "weather"))
                call_id = f"{run_id}:call-{call + 1}"
                self._phase(runtime, thread, run_id, f"tool: {tool}")
                bridge.notify_tool_executing(thread, run_id, call_id, tool)
                await self._stream(bridge, now, thread, run_id, [ToolCallArgs(tool_call_id=call_id, delta='{"q": 1}')])
                if failure == "stuck_tool":
                    # The tool never returns and the agent gives up on the run without a word: a silent failure.
                    return
                await anyio.sleep(rng.uniform(0.2, 1.5))
                bridge.publish(thread, run_id, ToolCallEnd(tool_call_id=call_id, timestamp=now()))
                bridge.notify_tool_completed(thread, run_id, call_id, result="3 results")
            if failure == "orphan":
                bridge.publish(thread, run_id, ToolCallEnd(tool_call_id=f"{run_id}:never-started", timestamp=now()))
            self._phase(runtime, thread, run_id, "answering")
            answer = f"{run_id}:answer"
            text: list[Any] = [TextMessageStart(message_id=answer, role="assistant")]
            text += [
                TextMessageContent(message_id=answer, delta="Here is what I found. ") for _ in range(rng.randint(5, 25))
            ]
            text.append(TextMessageEnd(message_id=answer))
            await self._stream(bridge, now, thread, run_id, text)
            if failure == "error":
                bridge.publish(thread, run_id, RunError(message="the model provider timed out", timestamp=now()))
            else:
                bridge.notify_agent_completed(thread, run_id)
        finally:
            self._runs.pop(key, None)


# ---------------------------------------------------------------------- the command


def add_parser(subparsers: _Subparsers) -> None:
    """Register ``agentwatch serve`` (its handler is :func:`run`)."""
    parser = subparsers.add_parser(
        "serve",
        help="run a demo backend with Hypercorn: /ws, health, metrics and the live dashboard",
        description="Serve the agentwatch runtime over HTTP and WebSockets with Hypercorn: the live dashboard at /, "
        "the subscribe/resume WebSocket at /ws, /livez /readyz /health /metrics. See docs/embedding.md.",
        epilog="exit status: 0 stopped by SIGTERM, 130 stopped by Ctrl-C (SIGINT), 2 usage error",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop (default asyncio)"
    )
    parser.add_argument(
        "--simulate", type=_agents, default=0, metavar="N", help="run N simulated agents and clients (default 0)"
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", help="runtime configuration (default: demo thresholds of a few seconds)"
    )
    parser.set_defaults(handler=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer port, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be within 0..65535, got {value}")
    return value


def _agents(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer number of agents, got {text!r}") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be within 0..10000, got {value}")
    return value


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Run ``agentwatch serve`` until SIGINT or SIGTERM; return the exit code."""
    missing = [name for name in _SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return _usage_error(f"missing {', '.join(missing)}: pip install 'agentwatch[serve]'")
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        return _usage_error("--backend trio needs trio installed")
    try:
        config = load_config(args.config) if args.config is not None else DEMO_CONFIG
    except ConfigError as exc:
        return _usage_error(f"--config: {exc}")
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        return _usage_error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with sock:
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        simulated = f", {args.simulate} simulated agents" if args.simulate else ""
        print(f"{PROG}: listening on http://{host}:{port}/ ({args.backend}{simulated})", flush=True)
        received = anyio.run(_serve, config, sock, args.simulate, backend=args.backend)
    print(f"{PROG}: stopped", flush=True)
    return EXIT_INTERRUPTED if received == signal.SIGINT else EXIT_OK


async def _serve(config: RuntimeConfig, sock: socket.socket, agents: int) -> int | None:
    from .asgi import create_app, graceful_shutdown_trigger, runtime_of  # needs the extra

    traffic = DemoTraffic(agents) if agents else None
    app: Starlette = create_app(
        config,
        dashboard=True,
        fault_injection=True,
        runs_source=traffic.runs if traffic is not None else None,
    )
    stop = anyio.Event()
    received: list[int] = []

    async with anyio.create_task_group() as tasks:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    received.append(signum)
                    stop.set()
                    return

        async def simulate() -> None:
            assert traffic is not None
            while True:  # the runtime starts in Hypercorn's lifespan task
                if app.state.runtime is not None:
                    break
                await anyio.sleep(0.01)
            with anyio.CancelScope() as scope:
                simulation.append(scope)
                await traffic.run(runtime_of(app))

        simulation: list[anyio.CancelScope] = []

        async def stopped() -> None:
            await stop.wait()
            # Agents stop first, so that the drain that follows flushes a stream that no longer grows.
            for scope in simulation:
                scope.cancel()

        tasks.start_soon(watch_signals)
        if traffic is not None:
            tasks.start_soon(simulate)
        await serve_hypercorn(app, sock, shutdown_trigger=graceful_shutdown_trigger(app, stopped))
        tasks.cancel_scope.cancel()
    with contextlib.suppress(IndexError):
        return received[0]
    return None
