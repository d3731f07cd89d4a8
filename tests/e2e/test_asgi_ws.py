from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from httpx_ws import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from actors.chat._events import Custom, RunFinished, RunStarted
from supervisors.asgi import Grant, create_app, runtime_of

from ._server import frame, is_control, open_ws, running

if TYPE_CHECKING:
    from httpx_ws import AsyncWebSocketSession
    from starlette.applications import Starlette

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
