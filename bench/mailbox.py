from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from _common import BACKENDS, alternate, emit, figure, optional_module, parse_args, peer, progress, repeated

from actors import Actor, MailboxSpec, open_actor_system

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.streams.memory import MemoryObjectReceiveStream

#: Messages told per chunk; the producer yields once per chunk so that the consumer can catch up. Same for the floor.
CHUNK = 256
#: Tells per timed batch in the "tell cost" figure: the default mailbox's capacity (the floor stream holds as many).
COST_BATCH = MailboxSpec().capacity


class Tally:
    """What a consumer counts, and the event it sets when the count reaches the target of the current block."""

    __slots__ = ("count", "done", "target")

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = anyio.Event()

    def expect(self, messages: int) -> anyio.Event:
        """Arm the next block: return the event set once ``messages`` more have been counted."""
        self.target = self.count + messages
        self.done = anyio.Event()
        return self.done


class Counter(Actor[int]):
    """The trivial actor under test: counts each message, exactly as the floor's consumer does."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def receive(self, message: int) -> None:
        tally = self.tally
        tally.count += 1
        if tally.count == tally.target:
            tally.done.set()


async def consume(receive: MemoryObjectReceiveStream[int], tally: Tally) -> None:
    """The floor's consumer: drain with ``receive_nowait`` until WouldBlock, then one ``await receive()``."""
    try:
        while True:
            try:
                while True:
                    receive.receive_nowait()
                    tally.count += 1
                    if tally.count == tally.target:
                        tally.done.set()
            except anyio.WouldBlock:
                pass
            await receive.receive()
            tally.count += 1
            if tally.count == tally.target:
                tally.done.set()
    except anyio.EndOfStream:
        return


async def produce(send_one: Callable[[int], None], tally: Tally, messages: int) -> float:
    """One throughput block, the same for actor and floor: ``messages`` in chunks, one yield per chunk; msg/s."""
    done = tally.expect(messages)
    start = time.perf_counter()
    for _ in range(messages // CHUNK):
        for i in range(CHUNK):
            send_one(i)
        await anyio.lowlevel.checkpoint()
    await done.wait()
    return messages / (time.perf_counter() - start)


async def tell_batch(send_one: Callable[[int], None], tally: Tally) -> float:
    """One cost batch: COST_BATCH calls in a tight loop (the consumer cannot run meanwhile); ns per call."""
    done = tally.expect(COST_BATCH)
    start = time.perf_counter_ns()
    for i in range(COST_BATCH):
        send_one(i)
    elapsed = time.perf_counter_ns() - start
    await done.wait()  # drained before the next batch, so the next one starts from an empty queue too
    return elapsed / COST_BATCH


async def measure_backend(blocks: int, block_messages: int) -> dict[str, float]:
    """Both figures and both floors on the current backend, block by block in one event loop."""
    actor_tally, stream_tally = Tally(), Tally()
    cost_actor_tally, cost_stream_tally = Tally(), Tally()
    # Capacity for a whole block: the figure measures hand-off, never the overflow policy.
    send, receive = anyio.create_memory_object_stream[int](max_buffer_size=block_messages)
    cost_send, cost_receive = anyio.create_memory_object_stream[int](max_buffer_size=COST_BATCH)
    async with open_actor_system() as system, anyio.create_task_group() as tg:
        ref = await system.start(lambda: Counter(actor_tally), mailbox=MailboxSpec(capacity=block_messages))
        cost_ref = await system.start(lambda: Counter(cost_actor_tally))  # the default mailbox
        tg.start_soon(consume, receive, stream_tally)
        tg.start_soon(consume, cost_receive, cost_stream_tally)
        await anyio.lowlevel.checkpoint()  # every consumer now sleeps on its empty queue
        # send_nowait raises WouldBlock on a full buffer, so a floor that dropped anything would fail loudly.
        result = await alternate(
            blocks,
            {
                "throughput": lambda: produce(ref.tell, actor_tally, block_messages),
                "throughput floor": lambda: produce(send.send_nowait, stream_tally, block_messages),
            },
        )
        result |= await alternate(
            blocks,
            {
                "cost": lambda: tell_batch(cost_ref.tell, cost_actor_tally),
                "cost floor": lambda: tell_batch(cost_send.send_nowait, cost_stream_tally),
            },
        )
        for actor in (ref, cost_ref):
            stats = actor.statistics()
            assert stats.dropped_total == 0, f"the mailbox dropped messages: {stats.dropped}"
            assert stats.sent == stats.processed, stats
        assert actor_tally.count == stream_tally.count == blocks * block_messages
        assert cost_actor_tally.count == cost_stream_tally.count == blocks * COST_BATCH
        send.close()
        cost_send.close()
    return result


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
    # Many short blocks (about a millisecond each): a block that the OS scheduler preempts (another process's time
    # slice on this shared machine) is an outlier that the median ignores, as long as most blocks run undisturbed.
    blocks = 30 if args.quick else 100
    block_messages = CHUNK * 8  # whole chunks: producer and floor send exactly the same messages
    pykka = optional_module("pykka")
    pykka_messages = 10_000 if args.quick else 50_000

    def measure(run: int) -> dict[str, float]:
        samples: dict[str, float] = {}
        for backend in BACKENDS if run % 2 == 0 else reversed(BACKENDS):
            result = anyio.run(measure_backend, blocks, block_messages, backend=backend)
            samples |= {f"{name}/{backend}": value for name, value in result.items()}
        if pykka is not None:
            samples["pykka"] = pykka_throughput(pykka, pykka_messages)
        return samples

    progress(f"mailbox bench: {args.runs} runs of {blocks} blocks of {block_messages} messages, pykka={bool(pykka)}")
    samples = repeated(args.runs, measure)
    figures = []
    for backend in BACKENDS:
        throughput, floor = samples[f"throughput/{backend}"], samples[f"throughput floor/{backend}"]
        figures.append(figure("tell throughput", backend, "msg/s", throughput, floor, ">= 0.6"))
        cost, floor = samples[f"cost/{backend}"], samples[f"cost floor/{backend}"]
        figures.append(figure("tell cost", backend, "ns", cost, floor, "<= 2.5"))
    peers = []
    if pykka is not None:
        peers.append(
            peer("pykka ThreadingActor tell throughput", "threads", "msg/s", samples["pykka"], messages=pykka_messages)
        )
    emit(
        "mailbox",
        figures,
        runs=args.runs,
        quick=args.quick,
        blocks_per_run=blocks,
        messages_per_throughput_block=block_messages,
        chunk=CHUNK,
        tells_per_cost_block=COST_BATCH,
        peers=peers,
        pykka_available=pykka is not None,
    )


if __name__ == "__main__":
    main()
