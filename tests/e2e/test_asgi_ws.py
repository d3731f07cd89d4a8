from __future__ import annotations

import base64
import json
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from httpx_ws import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from actors.chat._connection import CloseCode
from actors.chat._events import Custom, RunFinished, RunStarted
from supervisors.asgi import Grant, create_app, runtime_of

from ._server import frame, is_control, open_ws, running

if TYPE_CHECKING:
    from anyio.abc import SocketStream
    from httpx_ws import AsyncWebSocketSession
    from starlette.applications import Starlette

    from supervisors.asgi import RuntimeHost

pytestmark = pytest.mark.anyio

#: Every test here is bounded: a hang fails it within this many seconds instead of at pytest's global timeout.
LIMIT = 20


def publish(app: Starlette, thread_id: str, first: int, last: int) -> None:
    """Publish steps ``first..last`` (inclusive) of run ``r1`` on ``thread_id``: step i is seq i + 1 on a new thread
    whose first event was RUN_STARTED."""
    bridge = runtime_of(app).bridge
    for step in range(first, last + 1):
        bridge.publish(thread_id, "r1", Custom(name="step", value=step))


async def receive_event(ws: AsyncWebSocketSession) -> dict[str, Any]:
    """The next thread event, skipping the front end's own control frames."""
    while True:
        decoded = frame(await ws.receive_text())
        if not is_control(decoded):
            return decoded


async def subscribe(ws: AsyncWebSocketSession, thread_id: str, after_seq: int | None = None) -> dict[str, Any]:
    """Subscribe and return the ack; events that arrive before it are returned in ``ack["early"]``."""
    request: dict[str, Any] = {"threadId": thread_id}
    if after_seq is not None:
        request["afterSeq"] = after_seq
    await ws.send_text(json.dumps({"subscribe": request}))
    early: list[dict[str, Any]] = []
    while True:
        decoded = frame(await ws.receive_text())
        if decoded.get("name") == "agentwatch.subscribed":
            return {**decoded["value"], "early": early}
        if decoded.get("name") == "agentwatch.error":
            raise AssertionError(f"subscribe refused: {decoded}")
        if not is_control(decoded):
            early.append(decoded)


async def receive_until_closed(ws: AsyncWebSocketSession) -> tuple[list[dict[str, Any]], int]:
    """Every thread event until the server closes the connection, and the close code."""
    received: list[dict[str, Any]] = []
    while True:
        try:
            decoded = frame(await ws.receive_text())
        except WebSocketDisconnect as closed:
            return received, closed.code
        if not is_control(decoded):
            received.append(decoded)


async def connected(ws: AsyncWebSocketSession) -> dict[str, Any]:
    decoded = frame(await ws.receive_text())
    assert decoded["name"] == "agentwatch.connected", decoded
    value: dict[str, Any] = decoded["value"]
    return value


class TestDeliveryOverRealSockets:
    async def test_httpx_ws_client_subscribed_receives_every_event_in_seq_order(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await connected(ws)
                ack = await subscribe(ws, "t1")
                assert ack["lastSeq"] == 0
                runtime_of(app).bridge.publish("t1", "r1", RunStarted(thread_id="t1", run_id="r1"))
                publish(app, "t1", 1, 300)
                runtime_of(app).bridge.publish("t1", "r1", RunFinished(thread_id="t1", run_id="r1"))
                received = [await receive_event(ws) for _ in range(302)]
        assert [event["metadata"]["seq"] for event in received] == list(range(1, 303))
        assert received[0]["type"] == "RUN_STARTED"
        assert [event["value"] for event in received[1:301]] == list(range(1, 301))
        assert received[-1]["type"] == "RUN_FINISHED"

    async def test_websockets_client_receives_every_event_in_seq_order(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with running(app) as server:

                def session() -> list[dict[str, Any]]:
                    with connect(server.ws + "/ws", open_timeout=5) as ws:
                        assert json.loads(ws.recv(timeout=5))["name"] == "agentwatch.connected"
                        ws.send(json.dumps({"subscribe": {"threadId": "t2"}}))
                        assert json.loads(ws.recv(timeout=5))["name"] == "agentwatch.subscribed"
                        anyio.from_thread.run_sync(publish, app, "t2", 1, 500)
                        return [json.loads(ws.recv(timeout=5)) for _ in range(500)]

                received = await anyio.to_thread.run_sync(session)
        assert [event["metadata"]["seq"] for event in received] == list(range(1, 501))
        assert [event["value"] for event in received] == list(range(1, 501))

    async def test_two_threads_each_connection_gets_only_its_own_thread(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as a,
                open_ws(client, server.ws + "/ws") as b,
            ):
                await connected(a)
                await connected(b)
                await subscribe(a, "ta")
                await subscribe(b, "tb")
                for step in range(1, 51):
                    publish(app, "ta", step, step)
                    publish(app, "tb", step, step)
                got_a = [await receive_event(a) for _ in range(50)]
                got_b = [await receive_event(b) for _ in range(50)]
        assert {event["metadata"]["threadId"] for event in got_a} == {"ta"}
        assert {event["metadata"]["threadId"] for event in got_b} == {"tb"}
        assert [event["metadata"]["seq"] for event in got_b] == list(range(1, 51))


class TestResume:
    async def test_abruptly_dropped_client_resumes_with_after_seq_and_loses_nothing(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with running(app) as server:
                subscribed = anyio.Event()
                async with anyio.create_task_group() as tasks:

                    async def publish_once_subscribed() -> None:
                        await subscribed.wait()
                        publish(app, "t3", 1, 100)

                    tasks.start_soon(publish_once_subscribed)
                    # The client reads 40 events and vanishes without a close handshake.
                    last_seen = await anyio.to_thread.run_sync(_subscribe_then, server.ws, "t3", subscribed, 40)
                # While it is away the thread moves on.
                publish(app, "t3", 101, 160)
                async with httpx.AsyncClient() as client, open_ws(client, server.ws + "/ws") as ws:
                    await connected(ws)
                    ack = await subscribe(ws, "t3", after_seq=last_seen)
                    received = ack["early"]
                    while len(received) < 160 - last_seen:
                        received.append(await receive_event(ws))
        assert last_seen == 40
        assert ack["replayPending"] == 120  # the replay owed, announced in the ack
        assert [event["metadata"]["seq"] for event in received] == list(range(41, 161))
        assert [event["value"] for event in received] == list(range(41, 161))

    async def test_resume_after_seq_beyond_the_ring_closes_4002(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with running(app) as server, httpx.AsyncClient() as client:
                publish(app, "t4", 1, 5)
                async with open_ws(client, server.ws + "/ws") as ws:
                    await connected(ws)
                    await ws.send_text(json.dumps({"subscribe": {"threadId": "t4", "afterSeq": 99}}))
                    with pytest.raises(WebSocketDisconnect) as closed:
                        await ws.receive_text()
        assert closed.value.code == 4002


class TestBridgeInitiatedClose:
    async def test_endpoint_stops_reading_when_the_bridge_closes_even_if_the_client_never_answers(self) -> None:
        app = create_app()
        host: RuntimeHost = app.state.agentwatch
        with anyio.fail_after(LIMIT):
            async with running(app) as server, await anyio.connect_tcp("127.0.0.1", server.port) as stream:
                client = _SilentClient(stream)
                await client.handshake(server.port)
                connection_id = (await client.control())["value"]["connectionId"]
                await client.send_text(json.dumps({"subscribe": {"threadId": "t7"}}))
                assert (await client.control())["name"] == "agentwatch.subscribed"
                assert host.gateway.statistics().open == 1
                # The application ends the connection through the bridge; the client reads the close frame and
                # neither answers it nor drops the socket, so no disconnect ever reaches the endpoint's receive.
                runtime_of(app).bridge.disconnect(connection_id, code=CloseCode.POLICY_VIOLATION, reason="kicked")
                code = await client.close_code()
                while host.gateway.statistics().open:  # noqa: ASYNC110 (a counter, not an event, to wait on)
                    await anyio.sleep(0.01)
        assert code == CloseCode.POLICY_VIOLATION


class _SilentClient:
    """A raw WebSocket client over one TCP stream that never answers a close frame (a client that hung)."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def handshake(self, port: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        await self._stream.send(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        await self._stream.send(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def next_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (opcode, payload): server frames are unmasked, and short here."""
        while True:
            buffer = self._buffer
            if len(buffer) >= 4:
                length, header = buffer[1] & 0x7F, 2
                assert length != 127, "no 64-bit frame lengths expected"
                if length == 126:
                    length, header = int.from_bytes(buffer[2:4], "big"), 4
                if len(buffer) >= header + length:
                    self._buffer = buffer[header + length :]
                    return buffer[0] & 0x0F, buffer[header : header + length]
            self._buffer += await self._stream.receive()

    async def control(self) -> dict[str, Any]:
        """The next text frame, decoded."""
        opcode, payload = await self.next_frame()
        assert opcode == 0x1, (opcode, payload)
        return frame(payload)

    async def close_code(self) -> int:
        """Read up to the server's close frame and return its code (without answering it)."""
        while True:
            opcode, payload = await self.next_frame()
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")


def _subscribe_then(url: str, thread_id: str, subscribed: anyio.Event, count: int) -> int:
    """Subscribe, read ``count`` events, then drop the TCP connection without a close handshake; return the last
    seq seen."""
    last = 0
    with connect(url + "/ws", open_timeout=5, close_timeout=0.5) as ws:
        assert json.loads(ws.recv(timeout=5))["name"] == "agentwatch.connected"
        ws.send(json.dumps({"subscribe": {"threadId": thread_id}}))
        assert json.loads(ws.recv(timeout=5))["name"] == "agentwatch.subscribed"
        anyio.from_thread.run_sync(subscribed.set)
        for _ in range(count):
            last = json.loads(ws.recv(timeout=5))["metadata"]["seq"]
        ws.socket.shutdown(socket.SHUT_RDWR)
    return last


def _grants(token: str) -> Grant | None:
    return {"alice-token": Grant(principal="alice", prefixes=("alice/",))}.get(token)


class TestAuthorisation:
    async def test_unknown_token_in_first_frame_is_closed_1008(self) -> None:
        app = create_app(authorize_token=_grants)
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await ws.send_text(json.dumps({"auth": {"token": "mallory-token"}}))
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_text()
                metrics = (await client.get(server.http + "/metrics")).text
        assert closed.value.code == 1008
        assert "agentwatch_ws_auth_refused_total 1.0" in metrics

    async def test_subscribe_before_auth_is_closed_1008(self) -> None:
        app = create_app(authorize_token=_grants)
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await ws.send_text(json.dumps({"subscribe": {"threadId": "alice/1"}}))
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_text()
        assert closed.value.code == 1008

    async def test_granted_token_joins_its_threads_and_is_closed_1008_on_another(self) -> None:
        app = create_app(authorize_token=_grants)
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await ws.send_text(json.dumps({"auth": {"token": "alice-token"}}))
                assert (await connected(ws))["principal"] == "alice"
                await subscribe(ws, "alice/chat")
                publish(app, "alice/chat", 1, 3)
                own = [await receive_event(ws) for _ in range(3)]
                await ws.send_text(json.dumps({"subscribe": {"threadId": "bob/chat"}}))
                _, code = await receive_until_closed(ws)
        assert [event["value"] for event in own] == [1, 2, 3]
        assert code == 1008

    async def test_bearer_header_authenticates_without_an_auth_frame(self) -> None:
        app = create_app(authorize_token=_grants)
        with anyio.fail_after(LIMIT):
            async with running(app) as server:

                def session() -> str:
                    headers = {"Authorization": "Bearer alice-token"}
                    with connect(server.ws + "/ws", additional_headers=headers, open_timeout=5) as ws:
                        principal: str = json.loads(ws.recv(timeout=5))["value"]["principal"]
                        return principal

                assert await anyio.to_thread.run_sync(session) == "alice"

    async def test_bridge_authorize_hook_refusal_closes_1008(self) -> None:
        app = create_app(authorize=lambda principal, thread_id: thread_id != "forbidden")
        with anyio.fail_after(LIMIT):
            async with running(app) as server:

                def session() -> int:
                    with connect(server.ws + "/ws", open_timeout=5) as ws:
                        ws.recv(timeout=5)
                        ws.send(json.dumps({"subscribe": {"threadId": "forbidden"}}))
                        with pytest.raises(ConnectionClosed) as closed:
                            ws.recv(timeout=5)
                    assert closed.value.rcvd is not None
                    return closed.value.rcvd.code

                assert await anyio.to_thread.run_sync(session) == 1008


class TestBadFrames:
    @pytest.mark.parametrize(
        ("sent", "field"),
        [
            pytest.param("not json", "$", id="not-json"),
            pytest.param('{"subscribe": {"threadId": 5}}', "$.subscribe.threadId", id="wrong-type"),
            pytest.param('{"subscribe": {}}', "$.subscribe.threadId", id="missing-field"),
            pytest.param('{"subscribe": {"threadId": "t", "afterSeq": -1}}', "$.subscribe.afterSeq", id="negative"),
            pytest.param('{"subcribe": {"threadId": "t"}}', "$.subcribe", id="unknown-request"),
            pytest.param("{}", "$", id="no-request"),
            pytest.param("[1, 2]", "$", id="not-an-object"),
        ],
    )
    async def test_bad_frame_is_answered_with_an_error_naming_the_field_and_the_connection_survives(
        self, sent: str, field: str
    ) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await connected(ws)
                await ws.send_text(sent)
                error = frame(await ws.receive_text())
                # Still serving: a valid request on the same connection works.
                await subscribe(ws, "t5")
                publish(app, "t5", 1, 2)
                events = [await receive_event(ws) for _ in range(2)]
        assert error["type"] == "CUSTOM"
        assert error["name"] == "agentwatch.error"
        assert error["value"]["code"] == "bad_frame"
        assert error["value"]["field"] == field
        assert [event["value"] for event in events] == [1, 2]

    async def test_bad_binary_frame_is_answered_too(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await connected(ws)
                await ws.send_bytes(b"\xff\xfe")
                error = frame(await ws.receive_text())
        assert error["value"]["field"] == "$"


class TestGracefulShutdown:
    async def test_shutdown_flushes_published_events_then_closes_1001(self) -> None:
        app = create_app()
        with anyio.fail_after(LIMIT):
            async with (
                running(app) as server,
                httpx.AsyncClient() as client,
                open_ws(client, server.ws + "/ws") as ws,
            ):
                await connected(ws)
                await subscribe(ws, "t6")
                publish(app, "t6", 1, 800)  # within the replay ring: a burst it can always catch up on
                server.stop()
                received, code = await receive_until_closed(ws)
        assert code == 1001
        # Every event published before the shutdown began reached the client before the close.
        seqs = [event["metadata"]["seq"] for event in received]
        firsts = [event["metadata"].get("firstSeq", event["metadata"]["seq"]) for event in received]
        assert seqs[-1] == 800
        assert firsts == [1, *(seq + 1 for seq in seqs[:-1])]
