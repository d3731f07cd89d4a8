from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
from _common import BACKENDS, alternate, emit, figure, optional_module, parse_args, peer, progress, repeated

from actors import Actor, ActorRef, open_actor_system


class Echo(Actor[int]):
    """A trivial actor: answers every ask with the message it got."""

    async def receive(self, message: int) -> int:
        return message


async def ask_block(ref: ActorRef[int], asks: int) -> float:
    """Sequential asks to an idle actor, with the default timeout (so its cost is measured too); µs per ask."""
    ask = ref.ask
    start = time.perf_counter()
    for i in range(asks):
        reply = await ask(i)
        assert reply == i, (reply, i)
    return (time.perf_counter() - start) / asks * 1e6


class Handover:
    """The floor's shared slot: the value handed over and back, and the two events of the current round trip."""

    __slots__ = ("reply", "reply_ready", "request", "request_ready")

    def __init__(self) -> None:
        self.request = 0
        self.reply = 0
        self.request_ready = anyio.Event()
        self.reply_ready = anyio.Event()


async def serve(slot: Handover) -> None:
    """The floor's server: a bare task that waits for a request event, answers, and sets the reply event."""
    while True:
        await slot.request_ready.wait()
        slot.request_ready = anyio.Event()  # the next round trip's request event, installed before answering
        slot.reply = slot.request
        slot.reply_ready.set()


async def handover_block(slot: Handover, asks: int) -> float:
    """The floor: a value over and back between two bare tasks, two Events created per round trip; µs each."""
    start = time.perf_counter()
    for i in range(asks):
        reply_ready = slot.reply_ready = anyio.Event()
        slot.request = i
        slot.request_ready.set()
        await reply_ready.wait()
        assert slot.reply == i, (slot.reply, i)
    return (time.perf_counter() - start) / asks * 1e6


async def measure_backend(blocks: int, asks: int) -> dict[str, float]:
    """The figure and its floor on the current backend, block by block in one event loop."""
    slot = Handover()
    async with open_actor_system() as system, anyio.create_task_group() as tg:
        ref = await system.start(Echo)
        tg.start_soon(serve, slot)
        await anyio.lowlevel.checkpoint()  # the actor and the server now sleep, waiting for work
        result = await alternate(
            blocks, {"ask": lambda: ask_block(ref, asks), "ask floor": lambda: handover_block(slot, asks)}
        )
        tg.cancel_scope.cancel()
    return result


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
    # Many short blocks (well under a millisecond each), so that the median ignores the blocks that the OS scheduler
    # preempted (another process's time slice on this shared machine costs a block several times its length).
    blocks = 60 if args.quick else 200
    asks = 50
    pykka = optional_module("pykka")
    pykka_asks = 1_000 if args.quick else 5_000

    def measure(run: int) -> dict[str, float]:
        samples: dict[str, float] = {}
        for backend in BACKENDS if run % 2 == 0 else reversed(BACKENDS):
            result = anyio.run(measure_backend, blocks, asks, backend=backend)
            samples |= {f"{name}/{backend}": value for name, value in result.items()}
        if pykka is not None:
            samples["pykka"] = pykka_ask(pykka, pykka_asks)
        return samples

    progress(f"ask bench: {args.runs} runs of {blocks} blocks of {asks} asks, pykka={bool(pykka)}")
    samples = repeated(args.runs, measure)
    figures = [
        figure("ask round trip", backend, "µs", samples[f"ask/{backend}"], samples[f"ask floor/{backend}"], "<= 1.5")
        for backend in BACKENDS
    ]
    peers = []
    if pykka is not None:
        peers.append(peer("pykka ThreadingActor ask round trip", "threads", "µs", samples["pykka"], asks=pykka_asks))
    emit(
        "ask",
        figures,
        runs=args.runs,
        quick=args.quick,
        blocks_per_run=blocks,
        asks_per_block=asks,
        peers=peers,
        pykka_available=pykka is not None,
    )


if __name__ == "__main__":
    main()
