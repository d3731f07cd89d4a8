from __future__ import annotations

import contextlib
import threading
import time
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
from _common import BACKENDS, emit, figure, interleaved, optional_module, parse_args, peer, progress

from actors import Actor, MailboxSpec, open_actor_system

#: Messages told per chunk; the producer yields once per chunk so the consumer can catch up. Same for the floor.
CHUNK = 256
#: Tells per timed batch in the "tell cost" figure; the mailbox and the floor stream hold exactly this many.
COST_BATCH = 10_000


class Counter(Actor[int]):
    """A trivial actor: counts messages and sets ``done`` when it has seen ``total``."""

    def __init__(self, total: int, done: anyio.Event) -> None:
        self.count = 0
        self.total = total
        self.done = done

    async def receive(self, message: int) -> None:
        self.count += 1
        if self.count == self.total:
            self.done.set()


# -- tell throughput -----------------------------------------------------------------------------------------------


async def actor_throughput(total: int) -> float:
    """Tell ``total`` messages in chunks to a trivial actor; return messages per second until all were handled."""
    done = anyio.Event()
    async with open_actor_system() as system:
        # Capacity for every message: the figure measures hand-off, never the overflow policy.
        ref = await system.start(lambda: Counter(total, done), mailbox=MailboxSpec(capacity=total))
        await anyio.lowlevel.checkpoint()  # the actor is now asleep on its empty mailbox
        tell = ref.tell
        chunks = range(0, total, CHUNK)
        start = time.perf_counter()
        for _ in chunks:
            for i in range(CHUNK):
                tell(i)
            await anyio.lowlevel.checkpoint()
        await done.wait()
        elapsed = time.perf_counter() - start
        stats = ref.statistics()
        assert stats.dropped_total == 0, f"the mailbox dropped messages: {stats.dropped}"
        assert stats.processed == total == stats.sent, stats
    return total / elapsed


async def stream_throughput(total: int) -> float:
    """The floor: the same producer over a raw memory object stream, drained in batches by a bare task."""
    send, receive = anyio.create_memory_object_stream[int](max_buffer_size=total)
    done = anyio.Event()
    received = 0

    async def consume() -> None:
        nonlocal received
        count = 0
        while True:
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    receive.receive_nowait()
                    count += 1
            if count == total:
                break
            await receive.receive()
            count += 1
        received = count
        done.set()

    async with anyio.create_task_group() as tg, send, receive:
        tg.start_soon(consume)
        await anyio.lowlevel.checkpoint()  # the consumer is now asleep on its empty stream
        send_nowait = send.send_nowait  # raises WouldBlock if the buffer were ever full: nothing is dropped
        chunks = range(0, total, CHUNK)
        start = time.perf_counter()
        for _ in chunks:
            for i in range(CHUNK):
                send_nowait(i)
            await anyio.lowlevel.checkpoint()
        await done.wait()
        elapsed = time.perf_counter() - start
    assert received == total, (received, total)
    return total / elapsed


# -- tell cost -----------------------------------------------------------------------------------------------------


async def actor_tell_cost(batches: int) -> float:
    """Median ns per ``tell`` over ``batches`` tight loops of COST_BATCH tells; the actor drains between batches."""
    done = anyio.Event()
    async with open_actor_system() as system:
        ref = await system.start(lambda: Counter(batches * COST_BATCH, done), mailbox=MailboxSpec(capacity=COST_BATCH))
        tell = ref.tell
        messages = range(COST_BATCH)
        costs: list[float] = []
        for _ in range(batches):
            await anyio.lowlevel.checkpoint()
            start = time.perf_counter_ns()
            for i in messages:
                tell(i)
            costs.append((time.perf_counter_ns() - start) / COST_BATCH)
            while ref.statistics().queued:
                await anyio.lowlevel.checkpoint()
        await done.wait()
        assert ref.statistics().dropped_total == 0, ref.statistics().dropped
    return sorted(costs)[len(costs) // 2]


async def stream_send_cost(batches: int) -> float:
    """The floor: ns per ``send_nowait`` on a raw memory object stream of the same size, drained the same way."""
    send, receive = anyio.create_memory_object_stream[int](max_buffer_size=COST_BATCH)

    async def consume() -> None:
        async for _ in receive:
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    receive.receive_nowait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        send_nowait = send.send_nowait
        messages = range(COST_BATCH)
        costs: list[float] = []
        for _ in range(batches):
            await anyio.lowlevel.checkpoint()
            start = time.perf_counter_ns()
            for i in messages:
                send_nowait(i)
            costs.append((time.perf_counter_ns() - start) / COST_BATCH)
            while send.statistics().current_buffer_used:
                await anyio.lowlevel.checkpoint()
        send.close()
    return sorted(costs)[len(costs) // 2]


# -- Pykka (optional peer) -----------------------------------------------------------------------------------------


def pykka_throughput(pykka: Any, total: int) -> float:
    """Tell ``total`` messages to a Pykka ThreadingActor that counts them; messages per second until all handled."""
    finished = threading.Event()

    class PykkaCounter(pykka.ThreadingActor):  # type: ignore[misc]  # an optional peer, typed Any
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def on_receive(self, message: Any) -> None:
            self.count += 1
            if self.count == total:
                finished.set()

    ref = PykkaCounter.start()
    try:
        tell = ref.tell
        start = time.perf_counter()
        for i in range(total):
            tell(i)
        finished.wait()
        return total / (time.perf_counter() - start)
    finally:
        ref.stop()


def main() -> None:
    args = parse_args("Actor mailbox: tell -> receive throughput and the caller's cost of tell, against raw streams.")
    total = CHUNK * (200 if args.quick else 4000)  # whole chunks, so producer and floor tell exactly the same
    batches = 5 if args.quick else 15
    pykka = optional_module("pykka")
    with_pykka = pykka is not None
    measurements: dict[str, Any] = {}
    for backend in BACKENDS:
        measurements[f"throughput/{backend}"] = partial(anyio.run, actor_throughput, total, backend=backend)
        measurements[f"throughput floor/{backend}"] = partial(anyio.run, stream_throughput, total, backend=backend)
        measurements[f"cost/{backend}"] = partial(anyio.run, actor_tell_cost, batches, backend=backend)
        measurements[f"cost floor/{backend}"] = partial(anyio.run, stream_send_cost, batches, backend=backend)
    pykka_total = 20_000 if args.quick else 100_000
    if with_pykka:
        measurements["pykka"] = partial(pykka_throughput, pykka, pykka_total)
    progress(f"mailbox bench: {args.runs} runs, {total} messages per throughput sample, pykka={with_pykka}")
    samples = interleaved(args.runs, measurements)
    figures = []
    for backend in BACKENDS:
        figures.append(
            figure(
                "tell throughput",
                backend,
                "msg/s",
                samples[f"throughput/{backend}"],
                samples[f"throughput floor/{backend}"],
                ">= 0.6",
            )
        )
        figures.append(
            figure("tell cost", backend, "ns", samples[f"cost/{backend}"], samples[f"cost floor/{backend}"], "<= 2.5")
        )
    peers: list[dict[str, Any]] = []
    if with_pykka:
        peers.append(
            peer("pykka ThreadingActor tell throughput", "threads", "msg/s", samples["pykka"], messages=pykka_total)
        )
    emit(
        "mailbox",
        figures,
        runs=args.runs,
        quick=args.quick,
        messages_per_throughput_sample=total,
        chunk=CHUNK,
        tells_per_cost_batch=COST_BATCH,
        cost_batches_per_sample=batches,
        peers=peers,
        pykka_available=with_pykka,
    )


if __name__ == "__main__":
    main()
