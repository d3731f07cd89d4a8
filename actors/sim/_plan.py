from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Final

import msgspec

from actors.chat._detection import DetectionThresholds
from actors.sim._faults import FaultClass, FaultSpec, FaultSpecError, occurrence_times
from actors.sim._scripts import AgentProfile, ErrorRoom, ScriptStep, ThreadScript, burst_script, burst_span

if TYPE_CHECKING:
    from collections.abc import Iterator


class SlowWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A client reads ``delay`` seconds per frame from ``at`` to ``until`` (``slow_client``)."""

    at: float
    until: float
    delay: float


class Outage(msgspec.Struct, frozen=True, kw_only=True):
    """A client disconnects at ``at`` and resumes ``offline_for`` seconds later (``client_disconnect``)."""

    at: float
    offline_for: float


class ClientPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One simulated client: the threads it follows and the faults done to it (times in seconds after the start).

    :param seed: seeds the client's reconnect jitter
    :param send_failures: times after which its connection's next send raises (``bridge_connection_errors``)
    """

    client_id: str
    threads: tuple[str, ...]
    seed: int = 0
    slow: tuple[SlowWindow, ...] = ()
    outages: tuple[Outage, ...] = ()
    send_failures: tuple[float, ...] = ()


class RuntimeFault(msgspec.Struct, frozen=True, kw_only=True):
    """A fault the driver does to the runtime at ``at`` seconds after the start (options in seconds).

    :param spec: the ``--fault`` text it comes from
    :param burst: (``monitor_crash``) crash this many times in a row, each as soon as the monitor is back
    """

    at: float
    name: str
    spec: str = ""
    burst: int | None = None
    duration: float | None = None
    delay: float | None = None
    seconds: float | None = None
    messages: int | None = None


class SimulationSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that decides a simulation's traffic and faults; the same spec always plans the same simulation.

    :param duration: seconds of traffic (no run starts after it; the last ones finish)
    :param threads: chat threads carrying agent runs (threads carrying injected error bursts come on top)
    :param clients: simulated clients (each follows ``subscriptions`` threads; every thread has a follower)
    :param threads_per_agent: threads one SimulatedAgent actor drives
    """

    seed: int = 0
    duration: float = 60.0
    threads: int = 10
    clients: int = 5
    faults: tuple[FaultSpec, ...] = ()
    thresholds: DetectionThresholds = msgspec.field(default_factory=DetectionThresholds)
    profile: AgentProfile = msgspec.field(default_factory=AgentProfile)
    threads_per_agent: int = 8
    subscriptions: tuple[int, int] = (1, 3)

    def __post_init__(self) -> None:
        if isinstance(self.duration, bool) or not isinstance(self.duration, int | float) or not self.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration!r}")
        for name in ("threads", "clients", "threads_per_agent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name != "clients" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name != 'clients' else 0}, got {value!r}")
        low, high = self.subscriptions
        if not 1 <= low <= high:
            raise ValueError(f"subscriptions must be (low, high) with 1 <= low <= high, got {self.subscriptions!r}")


#: Defaults of the fault options, in seconds (``messages``: count).
FAULT_DEFAULTS: Final[dict[str, dict[str, float]]] = {
    "slow_client": {"duration": 20.0, "delay": 0.5},
    "lying_component": {"duration": 25.0},
    "monitor_block": {"seconds": 0.2},
    "monitor_flood": {"messages": 10_000},
    "malformed_input": {"messages": 1_000},
}


class SimulationPlan:
    """A planned simulation: thread scripts (iterated lazily), client plans and the runtime-fault schedule.

    Pure and deterministic: :func:`plan_simulation` with the same spec gives the same plan.
    """

    def __init__(
        self,
        spec: SimulationSpec,
        scripts: dict[str, ThreadScript],
        bursts: dict[str, tuple[float, ...]],
        clients: tuple[ClientPlan, ...],
        runtime_faults: tuple[RuntimeFault, ...],
        scheduled: dict[str, int],
    ) -> None:
        self.spec = spec
        #: Per ``--fault`` (by its text): occurrences planned by count, every or at (a share is drawn as it runs).
        self.scheduled = scheduled
        self._scripts = scripts
        self._bursts = bursts
        self.clients = clients
        self.runtime_faults = runtime_faults

    @property
    def burst_times(self) -> tuple[float, ...]:
        """When each injected error burst starts (seconds after the start)."""
        return tuple(time for times in self._bursts.values() for time in times)

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Every thread, agent threads first, then burst threads."""
        return (*self._scripts, *self._bursts)

    def script(self, thread_id: str) -> Iterator[ScriptStep]:
        """A fresh iterator over the thread's steps, in time order."""
        if thread_id in self._bursts:
            return burst_script(thread_id, self._bursts[thread_id], self.spec.thresholds, until=self.spec.duration)
        return iter(self._scripts[thread_id])

    def agent_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(agent id, its threads)`` for every SimulatedAgent to start."""
        size = self.spec.threads_per_agent
        ids = tuple(self._scripts)
        groups = [(f"agent-{k // size}", ids[k : k + size]) for k in range(0, len(ids), size)]
        if self._bursts:
            groups.append(("agent-bursts", tuple(self._bursts)))
        return groups


def plan_simulation(spec: SimulationSpec) -> SimulationPlan:
    """Plan the traffic and the fault schedule of a simulation.

    :raises FaultSpecError: when a fault's schedule does not fit the traffic (named, with the rule)
    """
    seed = spec.seed
    duration = spec.duration
    thresholds = spec.thresholds
    rng = random.Random(f"{seed}:plan")
    thread_ids = tuple(f"t{index:03d}" for index in range(spec.threads))

    tickets: dict[str, list[tuple[float, str]]] = {thread_id: [] for thread_id in thread_ids}
    shares: list[tuple[str, float]] = []
    burst_times: list[float] = []
    runtime: list[RuntimeFault] = []
    client_events: list[tuple[str, float, FaultSpec]] = []
    scheduled: dict[str, int] = {}
    for fault in spec.faults:
        times = occurrence_times(fault, duration, random.Random(f"{seed}:fault:{fault.text}"))
        if fault.share is None:
            scheduled[fault.text] = scheduled.get(fault.text, 0) + len(times)
        fault_class = fault.fault_class
        if fault_class is FaultClass.RUN:
            if fault.share is not None:
                shares.append((fault.name, fault.share))
            for at in times:
                tickets[rng.choice(thread_ids)].append((at, fault.name))
        elif fault_class is FaultClass.STREAM:
            burst_times.extend(times)
        elif fault_class is FaultClass.RUNTIME:
            defaults = FAULT_DEFAULTS.get(fault.name, {})
            runtime.extend(
                RuntimeFault(
                    at=at,
                    name=fault.name,
                    spec=fault.text,
                    burst=fault.burst,
                    duration=fault.duration if fault.duration is not None else defaults.get("duration"),
                    delay=fault.delay if fault.delay is not None else defaults.get("delay"),
                    seconds=fault.seconds if fault.seconds is not None else defaults.get("seconds"),
                    messages=fault.messages if fault.messages is not None else _int(defaults.get("messages")),
                )
                for at in times
            )
        else:
            if spec.clients == 0:
                raise FaultSpecError(f"--fault {fault.text!r}: {fault.name}: needs at least one client (--clients)")
            client_events.extend((fault.name, at, fault) for at in times)

    burst_times.sort()
    span = burst_span(thresholds)
    apart = 2 * thresholds.error_burst_window + span
    for earlier, later in itertools.pairwise(burst_times):
        if later - earlier < apart:
            texts = ", ".join(repr(fault.text) for fault in spec.faults if fault.name == "error_burst")
            raise FaultSpecError(
                f"--fault {texts}: error_burst: bursts must be at least {apart:g} s apart to be told apart (twice the "
                f"error_burst_window of {thresholds.error_burst_window:g} s, plus the burst); two are "
                f"{later - earlier:.3g} s apart"
            )
    errors = ErrorRoom(seed, spec.threads, thresholds, [(t, t + span) for t in burst_times])
    scripts = {
        thread_id: ThreadScript(
            thread_id,
            index,
            seed=seed,
            until=duration,
            thresholds=thresholds,
            profile=spec.profile,
            tickets=tickets[thread_id],
            shares=shares,
            errors=errors,
        )
        for index, thread_id in enumerate(thread_ids)
    }
    bursts = {"burst": tuple(burst_times)} if burst_times else {}
    clients = _plan_clients(spec, rng, (*thread_ids, *bursts), client_events)
    runtime.sort(key=lambda fault: fault.at)
    return SimulationPlan(spec, scripts, bursts, clients, tuple(runtime), scheduled)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _plan_clients(
    spec: SimulationSpec,
    rng: random.Random,
    thread_ids: tuple[str, ...],
    scheduled: list[tuple[str, float, FaultSpec]],
) -> tuple[ClientPlan, ...]:
    count = spec.clients
    if count == 0:
        return ()
    client_ids = [f"c{index:03d}" for index in range(count)]
    follows: list[list[str]] = [[] for _ in client_ids]
    # Every thread has at least one follower, so every event is owed to some client.
    for index, thread_id in enumerate(thread_ids):
        follows[index % count].append(thread_id)
    for threads in follows:
        wanted = rng.randint(*spec.subscriptions)
        others = [thread_id for thread_id in thread_ids if thread_id not in threads]
        rng.shuffle(others)
        threads.extend(others[: max(0, wanted - len(threads))])
    slow: list[list[SlowWindow]] = [[] for _ in client_ids]
    outages: list[list[Outage]] = [[] for _ in client_ids]
    failures: list[list[float]] = [[] for _ in client_ids]
    occurrences = [(name, at, fault, rng.randrange(count)) for name, at, fault in scheduled]
    for fault in spec.faults:
        if fault.fault_class is FaultClass.CLIENT and fault.share is not None:
            share_rng = random.Random(f"{spec.seed}:share:{fault.text}")
            occurrences.extend(
                (fault.name, share_rng.uniform(0.05, 0.85) * spec.duration, fault, index)
                for index in range(count)
                if share_rng.random() < fault.share
            )
    for name, at, fault, index in occurrences:
        if name == "slow_client":
            defaults = FAULT_DEFAULTS["slow_client"]
            length = fault.duration if fault.duration is not None else defaults["duration"]
            delay = fault.delay if fault.delay is not None else defaults["delay"]
            slow[index].append(SlowWindow(at=at, until=at + length, delay=delay))
        elif name == "client_disconnect":
            offline = fault.duration if fault.duration is not None else rng.uniform(0.5, 5.0)
            outages[index].append(Outage(at=at, offline_for=offline))
        else:
            failures[index].append(at)
    return tuple(
        ClientPlan(
            client_id=client_id,
            threads=tuple(follows[index]),
            seed=spec.seed,
            slow=tuple(sorted(slow[index], key=lambda window: window.at)),
            outages=tuple(sorted(outages[index], key=lambda outage: outage.at)),
            send_failures=tuple(sorted(failures[index])),
        )
        for index, client_id in enumerate(client_ids)
    )
