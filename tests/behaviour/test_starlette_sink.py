from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import pytest
from starlette.websockets import WebSocketDisconnect, WebSocketState

from supervisors._asgi_ws import StarletteSink
from supervisors._eager_send import start_eagerly

if TYPE_CHECKING:
    from collections.abc import Generator

    from starlette.websockets import WebSocket

pytestmark = pytest.mark.anyio


class FakeWebSocket:
    """What StarletteSink uses of a Starlette WebSocket, over an ASGI send that waits while ``held``."""

    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.client_state = WebSocketState.CONNECTED
        self.frames: list[str] = []
        self.closed_with: int | None = None
        self.held = False
        self.released = anyio.Event()

    async def _send(self, message: dict[str, Any]) -> None:
        # As Hypercorn's send: returns without waiting unless the client applies backpressure.
        if self.held:
            await self.released.wait()
        self.frames.append(message["text"])

    async def send(self, message: dict[str, Any]) -> None:
        await self._send(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code

    def release(self) -> None:
        self.held = False
        self.released.set()


def sink_over(websocket: FakeWebSocket) -> StarletteSink:
    return StarletteSink(cast("WebSocket", websocket))


def on_asyncio() -> bool:
    from sniffio import current_async_library

    return current_async_library() == "asyncio"


class TestStarletteSinkFastPath:
    async def test_nowait_send_sends_at_once_on_asyncio_and_defers_on_trio(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        if on_asyncio():
            sink.send_text_nowait("a")
            assert websocket.frames == ["a"]
        else:
            # trio's traps belong to the task that made them: the bridge's task never runs the send.
            with pytest.raises(anyio.WouldBlock):
                sink.send_text_nowait("a")
            assert websocket.frames == []

    async def test_send_left_in_flight_is_finished_once_by_the_writer(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("b")  # in flight (asyncio) or not started (trio): either way the writer's
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("c")  # the lock is held by "b": nothing overtakes it
        async with anyio.create_task_group() as tasks:

            async def writer() -> None:
                await sink.send_text("b")  # the frame the bridge handed over with WouldBlock
                await sink.send_text("c")

            tasks.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            assert websocket.frames == []
            websocket.release()
        assert websocket.frames == ["b", "c"]

    async def test_control_frame_finishes_the_send_in_flight_first_without_duplicates(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("event")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sink.send_text, "control")  # the endpoint's control frame
            await anyio.wait_all_tasks_blocked()
            websocket.release()
        await sink.send_text("event")  # the writer's send of the handed-over frame, after the control frame
        if on_asyncio():
            assert websocket.frames == ["event", "control"]  # in flight first, sent once
        else:
            assert websocket.frames == ["control", "event"]

    async def test_close_sends_the_frame_in_flight_before_closing(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("last")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sink.close, 1001, "bye")
            await anyio.wait_all_tasks_blocked()
            # On asyncio the close waits for the frame in flight; on trio nothing was in flight.
            assert websocket.closed_with == (None if on_asyncio() else 1001)
            websocket.release()
        assert websocket.closed_with == 1001
        assert websocket.frames == (["last"] if on_asyncio() else [])

    async def test_cancelled_writer_cancels_the_send_in_flight(self) -> None:
        websocket = FakeWebSocket()
        sink = sink_over(websocket)
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("stuck")
        with anyio.move_on_after(0.05):
            await sink.send_text("stuck")
        # The lock is free again: a later frame goes out once the client reads.
        websocket.release()
        await sink.send_text("next")
        assert websocket.frames == ["next"]


class YieldingWebSocket(FakeWebSocket):
    """Its ASGI send first gives the loop one turn with a bare ``yield`` (asyncio's sleep(0)), then sends."""

    async def _send(self, message: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()  # on asyncio: sleep(0), whose one step yields None
        self.frames.append(message["text"])


class AwaitableSendWebSocket(FakeWebSocket):
    """Its ASGI send is a plain function returning an awaitable that is not a coroutine (as some servers' are)."""

    def _send(self, message: dict[str, Any]) -> Any:
        return _Appending(self, message["text"])


class _Appending:
    def __init__(self, websocket: FakeWebSocket, frame: str) -> None:
        self._websocket = websocket
        self._frame = frame

    def __await__(self) -> Generator[Any, Any, None]:
        if self._websocket.held:
            yield from self._websocket.released.wait().__await__()
        self._websocket.frames.append(self._frame)


class FailingWebSocket(FakeWebSocket):
    """Its ASGI send raises as a server's does when the client has gone, while ``failing``."""

    failing = False

    async def _send(self, message: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionResetError("client gone")
        self.frames.append(message["text"])


class TestStarletteSinkEagerStep:
    # asyncio only: the eager step exists only there (the trio side is the first test of TestStarletteSinkFastPath).
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_send_that_yields_none_is_left_in_flight_not_taken_as_done(self) -> None:
        websocket = YieldingWebSocket()
        sink = sink_over(websocket)
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("a")  # it waited (a bare yield): in flight, holding the lock
        assert websocket.frames == []
        await sink.send_text("a")  # the writer's send of the handed-over frame finishes it, once
        await sink.send_text("b")
        assert websocket.frames == ["a", "b"]

    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_send_returning_a_plain_awaitable_goes_through_the_fast_path(self) -> None:
        websocket = AwaitableSendWebSocket()
        sink = sink_over(websocket)
        sink.send_text_nowait("a")
        assert websocket.frames == ["a"]
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_text_nowait("b")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sink.send_text, "b")
            await anyio.wait_all_tasks_blocked()
            websocket.release()
        assert websocket.frames == ["a", "b"]

    async def test_failing_send_releases_the_lock_and_reports_a_lost_connection(self) -> None:
        websocket = FailingWebSocket()
        sink = sink_over(websocket)
        websocket.failing = True
        if on_asyncio():
            with pytest.raises(WebSocketDisconnect) as lost:
                sink.send_text_nowait("a")
            assert lost.value.code == 1006
            assert websocket.application_state is WebSocketState.DISCONNECTED
        else:
            with pytest.raises(anyio.WouldBlock):
                sink.send_text_nowait("a")
        # The lock was released: the next send is not kept waiting.
        websocket.failing = False
        websocket.application_state = WebSocketState.CONNECTED
        with anyio.fail_after(5):
            await sink.send_text("next")
        assert websocket.frames == ["next"]


class BinaryWebSocket(FakeWebSocket):
    """Records binary frames (as text, for comparison); its ASGI send raises as a server's does while ``failing``."""

    failing = False

    async def _send(self, message: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionResetError("client gone")
        if self.held:
            await self.released.wait()
        self.frames.append(message["bytes"].decode())


class TestStarletteSinkBinaryFrames:
    async def test_binary_frames_take_the_fast_path_and_queue_behind_the_one_in_flight(self) -> None:
        websocket = BinaryWebSocket()
        sink = sink_over(websocket)
        if on_asyncio():
            sink.send_bytes_nowait(b"a")
        else:
            with pytest.raises(anyio.WouldBlock):
                sink.send_bytes_nowait(b"a")
            await sink.send_bytes(b"a")
        assert websocket.frames == ["a"]
        websocket.held = True
        with pytest.raises(anyio.WouldBlock):
            sink.send_bytes_nowait(b"b")
        with pytest.raises(anyio.WouldBlock):
            sink.send_bytes_nowait(b"c")  # the lock is held by "b": nothing overtakes it
        async with anyio.create_task_group() as tasks:

            async def writer() -> None:
                await sink.send_bytes(b"b")  # the frame handed over with WouldBlock: sent once
                await sink.send_bytes(b"c")

            tasks.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            assert websocket.frames == ["a"]
            websocket.release()
        assert websocket.frames == ["a", "b", "c"]

    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_failing_binary_send_releases_the_lock_and_reports_a_lost_connection(self) -> None:
        websocket = BinaryWebSocket()
        sink = sink_over(websocket)
        websocket.failing = True
        with pytest.raises(WebSocketDisconnect) as lost:
            sink.send_bytes_nowait(b"a")
        assert lost.value.code == 1006
        assert websocket.application_state is WebSocketState.DISCONNECTED
        websocket.failing = False
        websocket.application_state = WebSocketState.CONNECTED
        with anyio.fail_after(5):
            await sink.send_bytes(b"next")
        assert websocket.frames == ["next"]


class TestStartEagerly:
    async def test_coroutine_that_never_waits_completes_in_the_call(self) -> None:
        done: list[int] = []

        async def quick() -> None:
            done.append(1)

        assert start_eagerly(quick()) is None
        assert done == [1]

    # asyncio only: the sink runs sends eagerly only there (a trio wait names the task that started it, so its
    # rest could not be finished by another task); the trio side is the first test of TestStarletteSinkFastPath.
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_rest_of_a_waiting_coroutine_runs_in_the_awaiting_task(self) -> None:
        gate = anyio.Event()
        steps: list[str] = []

        async def waits() -> None:
            steps.append("before")
            await gate.wait()
            steps.append("after")

        in_flight = start_eagerly(waits())
        assert in_flight is not None
        assert steps == ["before"]
        async with anyio.create_task_group() as tasks:

            async def finish() -> None:
                await in_flight

            tasks.start_soon(finish)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert steps == ["before", "after"]
        with pytest.raises(RuntimeError, match="only once"):
            await in_flight
