from __future__ import annotations

from typing import TYPE_CHECKING, cast

import anyio
import pytest
from sniffio import current_async_library
from starlette.websockets import WebSocketState

from actors.chat._connection import nowait_send
from supervisors._asgi_ws import StarletteSink
from tests.behaviour.test_starlette_sink import FakeWebSocket, sink_over

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

pytestmark = pytest.mark.anyio


class TestStarletteSinkOffersTheFastPath:
    async def test_fast_path_offered_on_asyncio_only(self) -> None:
        sink = sink_over(FakeWebSocket())
        on_asyncio = current_async_library() == "asyncio"
        assert sink.sends_nowait is on_asyncio
        assert (nowait_send(sink, "text") is not None) is on_asyncio

    async def test_sink_without_the_servers_send_offers_no_fast_path(self) -> None:
        class BareWebSocket:
            application_state = WebSocketState.CONNECTED

        sink = StarletteSink(cast("WebSocket", BareWebSocket()))
        assert sink.sends_nowait is False
        assert nowait_send(sink, "text") is None


class TestStarletteSinkLockAroundTheFastPath:
    # The fast path exists on asyncio only (trio's side: test_fast_path_offered_on_asyncio_only).
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_send_completed_at_once_leaves_the_lock_free(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        sink.send_text_nowait("a")
        sink.send_text_nowait("b")  # not refused: the first one did not keep the lock
        with anyio.fail_after(5):
            await sink.send_text("c")
        assert websocket.frames == ["a", "b", "c"]

    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_send_left_waiting_holds_the_lock_until_finished(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("a")  # in flight, holding the lock
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("b")
        websocket.held = False
        websocket.released.set()
        with anyio.fail_after(5):
            await sink.send_text("a")  # the writer's send of the frame in flight finishes it, once
            await sink.send_text("b")
        sink.send_text_nowait("c")
        assert websocket.frames == ["a", "b", "c"]
