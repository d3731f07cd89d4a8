from __future__ import annotations

import gc
import time
from typing import Any

import anyio
from _common import BACKENDS, emit, figure, median, parse_args, progress

from actors import Actor, open_actor_system
from supervisors import ChildSpec, start_supervisor

#: Dynamic children per measurement; the figure compares the per-child cost at the largest and smallest size.
SIZES = (1_000, 5_000, 10_000)
#: The same ratio of sizes for ``--quick``.
QUICK_SIZES = (500, 2_500, 5_000)
#: What is timed, per child. The headline figures include CPython's cyclic GC exactly as it runs by default.
PHASES = ("start", "stop")
#: CPython's generations; gen 2 is the full collection, which rescans every live tracked object.
GENERATIONS = (0, 1, 2)


class GcPauses:
    """Counts CPython's cyclic garbage collections and adds up their time, per generation (``gc.callbacks``).

    Every live actor is a few dozen GC-tracked objects (its ref, mailbox, task, coroutines, events) and a full
    collection scans them all: the collector's share of a phase is measured, not guessed, so that the runtime's own
    scaling can be read apart from the collector's. Observing changes nothing: the collections are CPython's own.
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(GENERATIONS, 0.0)
        self.count = dict.fromkeys(GENERATIONS, 0)
        self._began = 0.0

    @property
    def total(self) -> float:
        """Seconds spent in collections of any generation."""
        return sum(self.seconds.values())

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        generation = info["generation"]
        self.seconds[generation] += time.perf_counter() - self._began
        self.count[generation] += 1


class Idle(Actor[Any]):
    """A trivial child: it only waits for messages."""

    async def receive(self, message: Any) -> None:
        return None


async def start_and_stop(size: int) -> dict[str, float]:
    """Start ``size`` dynamic children one ``start_child`` at a time, then stop the supervisor (and so all of them).

    :return: µs per child for ``start`` and ``stop``; the GC pauses within each, per child (``gc start``,
        ``gc stop``) and per generation in ms for the whole phase (``gc2 ms start``...); and the number of
        collections of each generation (``gc2 count start``...)
    """
    specs = [ChildSpec(f"child-{i}", Idle) for i in range(size)]
    async with open_actor_system() as system:
        supervisor = await start_supervisor(system, name="scale")
        with GcPauses() as start_gc:
            start = time.perf_counter()
            for spec in specs:
                await supervisor.start_child(spec)
            started = time.perf_counter()
        counts = await supervisor.count_children()
        assert counts.active == size, counts
        with GcPauses() as stop_gc:
            resumed = time.perf_counter()
            await supervisor.stop()
            stopped = time.perf_counter()
        assert system.names() == [], "a child outlived its supervisor"
    per_child = 1e6 / size
    result = {
        "start": (started - start) * per_child,
        "stop": (stopped - resumed) * per_child,
        "gc start": start_gc.total * per_child,
        "gc stop": stop_gc.total * per_child,
    }
    for phase, pauses in (("start", start_gc), ("stop", stop_gc)):
        for generation in GENERATIONS:
            result[f"gc{generation} count {phase}"] = pauses.count[generation]
            result[f"gc{generation} ms {phase}"] = pauses.seconds[generation] * 1e3
    return result


def measure(runs: int, sizes: tuple[int, ...]) -> dict[tuple[str, str, int], list[float]]:
    """One block of every (backend, size) per run, the order reversed on every other run, after a warm-up block.

    Each block runs in an event loop of its own and starts from the same GC state: a full ``gc.collect()`` first,
    which frees the previous block's garbage and resets every generation's count, so that no block pays for
    another's garbage or inherits a collection that was nearly due.

    :return: (quantity, backend, size) -> the samples; quantities as :func:`start_and_stop` returns them, plus
        ``start without gc`` and ``stop without gc`` (the phase minus the collector's pauses within it)
    """
    order = [(backend, size) for backend in BACKENDS for size in sizes]
    progress("warm-up: one block of each backend at the smallest size, discarded")
    for backend in BACKENDS:
        gc.collect()
        anyio.run(start_and_stop, sizes[0], backend=backend)
    samples: dict[tuple[str, str, int], list[float]] = {}
    for run in range(runs):
        for backend, size in order if run % 2 == 0 else reversed(order):
            gc.collect()
            result = anyio.run(start_and_stop, size, backend=backend)
            for phase in PHASES:
                result[f"{phase} without gc"] = result[phase] - result[f"gc {phase}"]
            for quantity, value in result.items():
                samples.setdefault((quantity, backend, size), []).append(value)
        progress(
            f"run {run + 1}/{runs}: "
            + ", ".join(
                f"{backend} {size}: start {samples['start', backend, size][-1]:.1f} "
                f"(gc {samples['gc start', backend, size][-1]:.1f}) "
                f"stop {samples['stop', backend, size][-1]:.1f} "
                f"(gc {samples['gc stop', backend, size][-1]:.1f}) µs/child"
                for backend, size in order
            )
        )
    return samples


async def heap_census(size: int) -> dict[str, float]:
    """Untimed: GC-tracked objects per live child, cyclic garbage per stopped child, and full-collection pauses.

    ``tracked per child``: the growth of ``gc.get_objects()`` from the supervisor alone to ``size`` live children,
    after a full collection (so only live objects count). ``cyclic garbage per child``: what stopping them all left
    for the collector (counted with the collector paused, then collected): anything above zero reaches the oldest
    generation with the children and waits there for a full collection. ``full collection ms``: one
    ``gc.collect()`` with ``size`` children live; ``... after gc.freeze() ms``: the same once ``gc.freeze()`` has
    moved everything live to the permanent generation (the operational recommendation in docs/performance.md).
    """
    async with open_actor_system() as system:
        supervisor = await start_supervisor(system, name="census")
        gc.collect()
        before = len(gc.get_objects())
        for i in range(size):
            await supervisor.start_child(ChildSpec(f"child-{i}", Idle))
        gc.collect()
        live = len(gc.get_objects())
        began = time.perf_counter()
        gc.collect()
        full_ms = (time.perf_counter() - began) * 1e3
        gc.freeze()
        try:
            began = time.perf_counter()
            gc.collect()
            frozen_ms = (time.perf_counter() - began) * 1e3
        finally:
            gc.unfreeze()
        gc.disable()
        try:
            await supervisor.stop()
            stopped = len(gc.get_objects())
        finally:
            gc.enable()
        gc.collect()
        after = len(gc.get_objects())
    return {
        "tracked per child": (live - before) / size,
        "cyclic garbage per child": (stopped - after) / size,
        "full collection ms": full_ms,
        "full collection after gc.freeze() ms": frozen_ms,
    }


def main() -> None:
    args = parse_args("Start and stop a supervisor's dynamic children at 1k, 5k and 10k: µs per child must stay flat.")
    sizes = QUICK_SIZES if args.quick else SIZES
    smallest, largest = sizes[0], sizes[-1]
    progress(f"supervisor scale bench: {args.runs} runs, sizes {sizes}")
    samples = measure(args.runs, sizes)
    figures = [
        figure(
            f"{quantity} per child, {largest} vs {smallest} children",
            backend,
            "µs/child",
            samples[quantity, backend, largest],
            samples[quantity, backend, smallest],
            "<= 1.5",
        )
        for quantity in PHASES
        for backend in BACKENDS
    ]
    # Context, not the headline: the same phases with the collector's pauses subtracted.
    without_gc = [
        figure(
            f"{phase} without gc per child, {largest} vs {smallest} children",
            backend,
            "µs/child",
            samples[f"{phase} without gc", backend, largest],
            samples[f"{phase} without gc", backend, smallest],
            "<= 1.5",
        )
        for phase in PHASES
        for backend in BACKENDS
    ]
    per_generation = [
        f"gc{generation} {what} {phase}" for phase in PHASES for generation in GENERATIONS for what in ("count", "ms")
    ]
    per_size: dict[str, Any] = {
        f"{quantity}/{backend}": {str(size): round(median(samples[quantity, backend, size]), 3) for size in sizes}
        for quantity in (*PHASES, "start without gc", "stop without gc", "gc start", "gc stop", *per_generation)
        for backend in BACKENDS
    }
    progress(f"heap census at {smallest} and {largest} children (untimed)")
    census: dict[str, Any] = {}
    for backend in BACKENDS:
        for size in (smallest, largest):
            gc.collect()
            result = anyio.run(heap_census, size, backend=backend)
            census[f"{backend}/{size}"] = {name: round(value, 3) for name, value in result.items()}
    emit(
        "supervisor_scale",
        figures,
        without_gc=without_gc,
        runs=args.runs,
        quick=args.quick,
        sizes=list(sizes),
        per_size=per_size,
        heap_census=census,
        gc_threshold=list(gc.get_threshold()),
    )


if __name__ == "__main__":
    main()
