from __future__ import annotations

from typing import Any

from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.websockets import WebSocket

from supervisors._asgi_ws import server_send

SCOPE: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}


async def _receive() -> dict[str, Any]:
    return {"type": "websocket.disconnect"}


def starlette_wrapped(send: Any) -> Any:
    """The send an endpoint gets from Starlette: ``send`` under its exception-handling wrapper."""
    captured: list[Any] = []

    async def endpoint(scope: Any, receive: Any, wrapped: Any) -> None:
        captured.append(wrapped)

    app = wrap_app_handling_exceptions(endpoint, WebSocket(SCOPE, _receive, send))
    # The endpoint returns at once: one step runs it, no event loop needed.
    assert next(app(SCOPE, _receive, send).__await__(), None) is None
    return captured[0]


async def server(message: dict[str, Any]) -> None:
    """Stands for the server's own ASGI send."""


class TestServerSend:
    def test_server_send_under_starlettes_wrappers_is_found(self) -> None:
        wrapped = starlette_wrapped(starlette_wrapped(server))
        assert wrapped is not server
        assert server_send(wrapped) is server

    def test_server_send_keeps_an_application_wrapper(self) -> None:
        async def middleware_send(message: dict[str, Any]) -> None:
            await server(message)  # an application's middleware: it may count, log or change frames

        assert server_send(starlette_wrapped(middleware_send)) is middleware_send
        assert server_send(middleware_send) is middleware_send

    def test_server_send_of_a_plain_send_is_itself(self) -> None:
        assert server_send(server) is server
