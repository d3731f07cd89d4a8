from __future__ import annotations

import time
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
from _common import BACKENDS, emit, figure, interleaved, optional_module, parse_args, peer, progress

from actors import Actor, open_actor_system


class Echo(Actor[int]):
    """A trivial actor: answers every ask with the message it got."""

    async def receive(self, message: int) -> int:
        return message


async def actor_ask(asks: int) -> float:
    """Sequential asks to an idle actor (default timeout, so the timeout machinery is measured too); µs per ask."""
    async with open_actor_system() as system:
        ref = await system.start(Echo)
        await anyio.lowlevel.checkpoint()  # the actor is now asleep on its empty mailbox
        ask = ref.ask
        start = time.perf_counter()
        for i in range(asks):
            reply = await ask(i)
            assert reply == i, (reply, i)
        elapsed = time.perf_counter() - start
    return elapsed / asks * 1e6


class _Slot:
    """What the two bare tasks of the floor share: the request to answer and the events of the round trip."""

    __slots__ = ("reply", "reply_ready", "request", "request_ready")

    def __init__(self) -> None:
        self.request = 0
        self.reply = 0
        self.request_ready = anyio.Event()
        self.reply_ready = anyio.Event()


async def event_round_trip(asks: int) -> float:
    """The floor: two bare tasks hand a value over and back with two anyio Events created per round trip."""
    slot = _Slot()

    async def serve() -> None:
        while True:
            await slot.request_ready.wait()
            slot.request_ready = anyio.Event()  # the next round trip's request event, before answering
            slot.reply = slot.request
            slot.reply_ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await anyio.lowlevel.checkpoint()  # the server is now asleep on its request event
        start = time.perf_counter()
        for i in range(asks):
            reply_ready = slot.reply_ready = anyio.Event()
            slot.request = i
            slot.request_ready.set()
            await reply_ready.wait()
            assert slot.reply == i, (slot.reply, i)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return elapsed / asks * 1e6


def pykka_ask(pykka: Any, asks: int) -> float:
    """Sequential asks to a Pykka ThreadingActor that echoes; µs per ask."""

    class PykkaEcho(pykka.ThreadingActor):  # type: ignore[misc]  # an optional peer, typed Any
        def on_receive(self, message: Any) -> Any:
            return message

    ref = PykkaEcho.start()
    try:
        ask = ref.ask
        start = time.perf_counter()
        for i in range(asks):
            ask(i)
        return (time.perf_counter() - start) / asks * 1e6
    finally:
        ref.stop()


def main() -> None:
    args = parse_args("Actor ask round trip against two bare tasks handing a value over and back with Events.")
    asks = 5_000 if args.quick else 20_000
    pykka = optional_module("pykka")
    with_pykka = pykka is not None
    measurements: dict[str, Any] = {}
    for backend in BACKENDS:
        measurements[f"ask/{backend}"] = partial(anyio.run, actor_ask, asks, backend=backend)
        measurements[f"ask floor/{backend}"] = partial(anyio.run, event_round_trip, asks, backend=backend)
    pykka_asks = asks // 4
    if with_pykka:
        measurements["pykka"] = partial(pykka_ask, pykka, pykka_asks)
    progress(f"ask bench: {args.runs} runs, {asks} asks per sample, pykka={with_pykka}")
    samples = interleaved(args.runs, measurements)
    figures = [
        figure("ask round trip", backend, "µs", samples[f"ask/{backend}"], samples[f"ask floor/{backend}"], "<= 1.5")
        for backend in BACKENDS
    ]
    peers: list[dict[str, Any]] = []
    if with_pykka:
        peers.append(peer("pykka ThreadingActor ask round trip", "threads", "µs", samples["pykka"], asks=pykka_asks))
    emit(
        "ask", figures, runs=args.runs, quick=args.quick, asks_per_sample=asks, peers=peers, pykka_available=with_pykka
    )


if __name__ == "__main__":
    main()
