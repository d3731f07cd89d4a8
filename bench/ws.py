from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import BACKENDS, emit, figure, median, parse_args, progress

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: Concurrent WebSocket clients, one thread each.
CLIENTS = 100
#: The paced load for the latency figure: events per second over all threads (a fraction of what either server
#: sustains, so that latency is the path's, not a queue's).
PACED_RATE = 2000
MODES = ("bridge", "bare")
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------- the servers
# Each server runs in a subprocess of its own (one core for the server, one for the clients): `ws.py --serve MODE
# --backend B` prints its port, then serves until its stdin closes. POST /bench/run starts a producer.


def _serve(mode: str, backend: str) -> None:
    import anyio
    import anyio.lowlevel
    import msgspec

    from actors.chat._events import Custom, RunFinished, RunStarted, stamp
    from supervisors.asgi import create_app, graceful_shutdown_trigger, runtime_of
    from supervisors.serve import bind_socket, serve_hypercorn

    request_decoder = msgspec.json.Decoder(dict[str, Any])

    def events(thread: str, run: str, count: int) -> list[Any]:
        items: list[Any] = [RunStarted(thread_id=thread, run_id=run)]
        items += [Custom(name="bench", value=0) for _ in range(count)]
        items.append(RunFinished(thread_id=thread, run_id=run))
        return items

    async def produce(params: dict[str, Any], emit_one: Callable[[str, str, Any], Awaitable[None] | None]) -> None:
        # Round robin over the threads; an event's `value` is the producer's monotonic clock when it was handed on,
        # so the client measures the whole path (bridge or bare sender, Hypercorn, the socket, its own parsing).
        threads = [f"{params['prefix']}-{i}" for i in range(params["clients"])]
        run = params["prefix"]
        per_thread = params["per_thread"]
        rate = params.get("rate")
        plan = [events(thread, run, per_thread) for thread in threads]
        total = sum(len(p) for p in plan)
        start = time.monotonic()
        index = 0
        for step in range(per_thread + 2):
            for thread, items in zip(threads, plan, strict=True):
                event = items[step]
                if rate is not None:
                    due = start + index / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await anyio.sleep(delay)
                if type(event) is Custom:
                    event = Custom(name="bench", value=time.monotonic_ns())
                pending = emit_one(thread, run, event)
                if pending is not None:
                    await pending
                index += 1
                if rate is None and index % 128 == 0:
                    await anyio.lowlevel.checkpoint()  # let the writers run, as a busy backend would
        assert index == total

    sock = bind_socket("127.0.0.1", 0)
    print(f"PORT {sock.getsockname()[1]}", flush=True)

    if mode == "bridge":
        watch = create_app()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/bench/run":
                params = await _read_json(receive, request_decoder)
                await _respond(send, 202)
                bridge = runtime_of(watch).bridge
                await produce(params, bridge.publish)
                return
            await watch(scope, receive, send)

    else:
        connections: dict[str, Any] = {}
        seqs: dict[str, int] = {}

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (message := await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            elif scope["type"] == "http":
                params = await _read_json(receive, request_decoder)
                await _respond(send, 202)
                if scope["path"] == "/bench/run":

                    async def send_frame(thread: str, run: str, event: Any) -> None:
                        # The floor: number and encode the event, send one frame. Nothing else.
                        seq = seqs[thread] = seqs.get(thread, 0) + 1
                        frame = stamp(event, thread_id=thread, run_id=run, seq=seq, observed_at=0).frame
                        await connections[thread]({"type": "websocket.send", "text": frame.decode()})

                    await produce(params, send_frame)
            elif scope["type"] == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.accept"})
                message = await receive()
                thread = msgspec.json.decode(message["text"])["subscribe"]["threadId"]
                connections[thread] = send
                await send({"type": "websocket.send", "text": '{"type":"CUSTOM","name":"agentwatch.subscribed"}'})
                while (await receive())["type"] != "websocket.disconnect":
                    pass
                connections.pop(thread, None)

    async def until_stdin_closes() -> None:
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)

    async def main() -> None:
        trigger = graceful_shutdown_trigger(watch, until_stdin_closes) if mode == "bridge" else until_stdin_closes
        await serve_hypercorn(app, sock, shutdown_trigger=trigger, graceful_timeout=1.0)

    profile_to = os.environ.get("AGENTWATCH_BENCH_PROFILE")
    if profile_to:  # for whoever investigates a figure: cProfile of this server process
        import cProfile

        cProfile.runctx("anyio.run(main, backend=backend)", globals(), locals(), f"{profile_to}.{mode}.{backend}")
    else:
        anyio.run(main, backend=backend)


async def _read_json(receive: Any, decoder: Any) -> dict[str, Any]:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    decoded: dict[str, Any] = decoder.decode(body) if body else {}
    return decoded


async def _respond(send: Any, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


# ---------------------------------------------------------------------------------------------------- the clients


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


class BenchClient(asyncio.Protocol):
    """A minimal WebSocket client: it parses frame headers, counts frames and reads each event's send time.

    Much cheaper per frame than a full client library, so that the server, not the client, is what is measured.
    """

    def __init__(self, host: str, port: int, thread: str) -> None:
        self.request = (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.subscribe = _masked_text('{"subscribe":{"threadId":"%s"}}' % thread)  # noqa: UP031
        self.buffer = bytearray()
        self.upgraded = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.expected = 0
        self.received = 0
        self.done: asyncio.Future[float] | None = None
        self.latencies: list[int] | None = None
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def expect(self, count: int, *, latencies: bool) -> asyncio.Future[float]:
        self.expected = count
        self.received = 0
        self.latencies = [] if latencies else None
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buffer[:end]:
                raise RuntimeError(f"handshake refused: {bytes(buffer[:end])!r}")
            del buffer[: end + 4]
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(self.subscribe)
        offset = 0
        size = len(buffer)
        while size - offset >= 2:
            length = buffer[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                header = 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                header = 10
            end = offset + header + length
            if end > size:
                break
            opcode = buffer[offset] & 0x0F
            if opcode == 1:
                self._frame(buffer, offset + header, end, now)
            elif opcode == 8:
                self.close_code = int.from_bytes(buffer[offset + header : offset + header + 2], "big")
            offset = end
        if offset:
            del buffer[:offset]

    def _frame(self, buffer: bytearray, start: int, end: int, now: int) -> None:
        if not self.subscribed.done():
            if buffer.find(b"agentwatch.subscribed", start, end) >= 0:
                self.subscribed.set_result(None)
            return
        self.received += 1
        latencies = self.latencies
        if latencies is not None:
            at = buffer.rfind(b'"value":', start, end)
            if at >= 0:
                latencies.append(now - int(buffer[at + 8 : end - 1]))
        if self.received == self.expected and self.done is not None and not self.done.done():
            self.done.set_result(time.monotonic())


class Server:
    """One server subprocess and its connected clients."""

    def __init__(self, mode: str, backend: str) -> None:
        self.mode = mode
        self.backend = backend
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--backend", backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.port = 0
        self.clients: list[BenchClient] = []
        self.runs = 0

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{self.mode}/{self.backend} server did not start: {line!r}")
        self.port = int(line.split()[1])
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        else:
            raise RuntimeError(f"{self.mode}/{self.backend} server is not reachable")
        # The bridge server answers only once its lifespan has started: wait for /readyz there.
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            path = "/readyz" if self.mode == "bridge" else "/"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            status = await reader.readline()
            writer.close()
            if b" 200 " in status or (self.mode == "bare" and status):
                break
            await asyncio.sleep(0.05)
        for index in range(count):
            client = BenchClient("127.0.0.1", self.port, f"c-{index}")
            await loop.create_connection(lambda client=client: client, "127.0.0.1", self.port)  # type: ignore[misc]
            self.clients.append(client)
        await asyncio.gather(*(client.subscribed for client in self.clients))

    async def run(self, per_thread: int, rate: float | None, *, limit: float = 60.0) -> tuple[float, list[int]]:
        """Start a producer on the server and wait for every client to get its events.

        :return: (events per second from the request to the last frame, every latency sample in ns)
        """
        self.runs += 1
        expected = per_thread + 2
        done = [client.expect(expected, latencies=rate is not None) for client in self.clients]
        gc.collect()
        body = (
            '{"prefix":"c","clients":%d,"per_thread":%d%s}'  # noqa: UP031
            % (len(self.clients), per_thread, f',"rate":{rate}' if rate is not None else "")
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.monotonic()
        writer.write(
            b"POST /bench/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await reader.readline()
        try:
            finished = await asyncio.wait_for(asyncio.gather(*done), limit)
        except TimeoutError:
            short = [(c.received, c.close_code) for c in self.clients if c.received < expected]
            raise RuntimeError(
                f"{self.mode}/{self.backend}: {len(short)} clients short of {expected} events after {limit} s "
                f"(received, close code): {short[:5]}"
            ) from None
        writer.close()
        latencies = [sample for client in self.clients for sample in (client.latencies or [])]
        return expected * len(self.clients) / (max(finished) - started), latencies

    def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _p99_ms(samples: list[int]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6


async def measure(servers: dict[str, Server], runs: int, burst: int, paced_seconds: float) -> dict[str, list[float]]:
    backend = servers["bridge"].backend
    try:
        for server in servers.values():
            await server.connect(CLIENTS)
        samples: dict[str, list[float]] = {}
        per_thread_paced = max(1, int(PACED_RATE * paced_seconds / CLIENTS))
        # A warm-up run of each (discarded): imports, first connections' buffers, the JIT-less interpreter's caches.
        for server in servers.values():
            await server.run(burst // 4, None)
        for run in range(runs):
            order = MODES if run % 2 == 0 else MODES[::-1]
            for mode in order:
                rate, _ = await servers[mode].run(burst, None)
                samples.setdefault(f"eps/{mode}", []).append(rate)
            for mode in order:
                _, latencies = await servers[mode].run(per_thread_paced, PACED_RATE)
                samples.setdefault(f"p99/{mode}", []).append(_p99_ms(latencies))
                samples.setdefault(f"p50/{mode}", []).append(median(latencies) / 1e6)
            progress(
                f"{backend} run {run + 1}/{runs}: "
                + ", ".join(f"{name}={values[-1]:.4g}" for name, values in sorted(samples.items()))
            )
        return samples
    finally:
        for server in servers.values():
            server.close()


def main() -> None:
    if "--serve" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--serve", choices=MODES, required=True)
        parser.add_argument("--backend", choices=BACKENDS, required=True)
        serve_args = parser.parse_args()
        _serve(serve_args.serve, serve_args.backend)
        return
    args = parse_args(
        "Events/s and p99 latency over real WebSockets on loopback with 100 clients: through the bridge (create_app "
        "under Hypercorn) vs a bare Hypercorn ASGI sender (the floor), both backends."
    )
    burst = 50 if args.quick else 300
    paced_seconds = 0.25 if args.quick else 1.0
    figures: list[dict[str, Any]] = []
    context: dict[str, Any] = {}
    # Every server starts at once (their start-ups overlap); each backend's pair is then measured in turn.
    started = {backend: {mode: Server(mode, backend) for mode in MODES} for backend in BACKENDS}
    for backend in BACKENDS:
        samples = asyncio.run(measure(started[backend], args.runs, burst, paced_seconds))
        figures.append(
            figure(
                "events/s over WebSockets, 100 clients",
                backend,
                "events/s",
                samples["eps/bridge"],
                samples["eps/bare"],
                ">= 0.8",
            )
        )
        figures.append(
            figure(
                f"p99 latency at {PACED_RATE} events/s, 100 clients",
                backend,
                "ms",
                samples["p99/bridge"],
                samples["p99/bare"],
                "<= 1.25",
            )
        )
        context[f"p50_latency_ms/{backend}"] = {
            "bridge": round(median(samples["p50/bridge"]), 3),
            "bare": round(median(samples["p50/bare"]), 3),
        }
    emit(
        "ws",
        figures,
        runs=args.runs,
        quick=args.quick,
        sizes={
            "clients": CLIENTS,
            "burst_events_per_thread": burst,
            "paced_rate": PACED_RATE,
            "paced_seconds": paced_seconds,
        },
        **context,
    )


if __name__ == "__main__":
    main()
