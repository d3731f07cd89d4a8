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
#: The same ratio of sizes for ``--quick`` (the whole run stays under 20 s).
QUICK_SIZES = (500, 2_500, 5_000)
#: What is measured, per child: with CPython's cyclic GC as it runs, and with its pauses taken out.
PHASES = ("start", "stop")


class GcPauses:
    """Adds up the time CPython's cyclic garbage collector runs (``gc.callbacks``), to report it apart.

    Every live actor is dozens of GC-tracked objects, and a full collection scans them all: the collector's share
    of a phase is measured, not guessed, so that the runtime's own scaling can be read apart from the collector's.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.full_collections = 0
        self._began = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.total += time.perf_counter() - self._began
        if info["generation"] == 2:
            self.full_collections += 1


class Idle(Actor[Any]):
    """A trivial child: it only waits for messages."""

    async def receive(self, message: Any) -> None:
        return None


async def start_and_stop(size: int) -> dict[str, float]:
    """Start ``size`` dynamic children one ``start_child`` at a time, then stop the supervisor (and so all of them).

    :return: µs per child for ``start`` and ``stop``, the GC pauses within each (``gc start``, ``gc stop``), and
        the full collections during both (``full collections``, a count)
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
    return {
        "start": (started - start) * per_child,
        "stop": (stopped - resumed) * per_child,
        "gc start": start_gc.total * per_child,
        "gc stop": stop_gc.total * per_child,
        "full collections": start_gc.full_collections + stop_gc.full_collections,
    }


def measure(runs: int, sizes: tuple[int, ...]) -> dict[tuple[str, str, int], list[float]]:
    """One sample of every (backend, size) per run, alternating the order so that no size always goes first.

    :return: (quantity, backend, size) -> the samples; quantities as :func:`start_and_stop` returns them, plus
        ``start without gc`` and ``stop without gc`` (the phase minus the collector's pauses within it)
    """
    order = [(backend, size) for backend in BACKENDS for size in sizes]
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
                f"stop {samples['stop', backend, size][-1]:.1f} µs/child"
                for backend, size in order
            )
        )
    return samples


def main() -> None:
    args = parse_args("Start and stop a supervisor's dynamic children at 1k, 5k and 10k: µs per child must stay flat.")
    sizes = QUICK_SIZES if args.quick else SIZES
    progress(f"supervisor scale bench: {args.runs} runs, sizes {sizes}")
    samples = measure(args.runs, sizes)
    smallest, largest = sizes[0], sizes[-1]
    quantities = (*PHASES, *(f"{phase} without gc" for phase in PHASES))
    figures = [
        figure(
            f"{quantity} per child, {largest} vs {smallest} children",
            backend,
            "µs/child",
            samples[quantity, backend, largest],
            samples[quantity, backend, smallest],
            "<= 1.5",
        )
        for quantity in quantities
        for backend in BACKENDS
    ]
    per_size: dict[str, Any] = {
        f"{quantity}/{backend}": {str(size): round(median(samples[quantity, backend, size]), 3) for size in sizes}
        for quantity in (*quantities, "gc start", "gc stop", "full collections")
        for backend in BACKENDS
    }
    emit("supervisor_scale", figures, runs=args.runs, quick=args.quick, sizes=list(sizes), per_size=per_size)


if __name__ == "__main__":
    main()
