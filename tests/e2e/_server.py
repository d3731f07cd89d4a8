from __future__ import annotations

import json
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from supervisors.asgi import graceful_shutdown_trigger
from supervisors.serve import bind_socket, serve_hypercorn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from starlette.applications import Starlette


class Server:
    """A Hypercorn server running an app in the test's event loop, on a free loopback port."""

    def __init__(self, port: int, stop: anyio.Event) -> None:
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"
        self._stop = stop

    def stop(self) -> None:
        """Trigger the graceful shutdown (drain, close with 1001, lifespan shutdown)."""
        self._stop.set()


@asynccontextmanager
async def running(
    app: Any, *, drained_app: Starlette | None = None, ready_path: str = "/readyz"
) -> AsyncIterator[Server]:
    """Serve ``app`` with Hypercorn on 127.0.0.1 (port picked by binding port 0) until the block exits.

    :param drained_app: the agentwatch app to drain on shutdown when ``app`` is a parent app it is mounted in
    """
    sock = bind_socket("127.0.0.1", 0)
    stop = anyio.Event()
    server = Server(sock.getsockname()[1], stop)
    trigger = graceful_shutdown_trigger(drained_app if drained_app is not None else app, stop.wait)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                partial(serve_hypercorn, app, sock, shutdown_trigger=trigger, graceful_timeout=2.0, freeze_heap=False)
            )
            async with httpx.AsyncClient() as client:
                while True:  # until the lifespan has started and the bridge answers
                    try:
                        if (await client.get(server.http + ready_path)).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.02)
            try:
                yield server
            finally:
                stop.set()
    finally:
        sock.close()


def frame(text: str | bytes) -> dict[str, Any]:
    """Decode one server frame."""
    decoded: dict[str, Any] = json.loads(text)
    return decoded


def is_control(decoded: dict[str, Any]) -> bool:
    """A frame the front end sends itself (``CUSTOM`` named ``agentwatch.*``), not a thread event."""
    return decoded.get("type") == "CUSTOM" and str(decoded.get("name", "")).startswith("agentwatch.")


def open_ws(client: httpx.AsyncClient, url: str) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
    """An httpx-ws connection (typed: ``aconnect_ws`` is generic in its session class)."""
    session: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(url, client)
    return session
