from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from actors.chat._detection import DetectionThresholds
from actors.chat._monitor import MonitorConfig
from actors.sim._faults import parse_fault
from actors.sim._plan import SimulationSpec
from actors.sim._scripts import AgentProfile

from ._config import BridgeSettings, RuntimeConfig, SupervisionSettings


class FigureChecks(msgspec.Struct, frozen=True, kw_only=True):
    """What a reliability figure (docs/reliability.md) adds to a simulation: extra instruments and criteria.

    :param intensity_model: (figure 2) predict from the monitor's observed failures, with OTP's sliding windows at
        both levels, when the monitoring branch must be detached; compare with when it was; check the root never
        escalated and each detach was followed by a re-attach after the cool-down
    :param readiness_every: (figure 2) sample the runtime's health this often (seconds): while monitoring is detached
        the runtime must stay ready and say ``degraded``
    :param watch_loop: (figure 3) run the loop-lag watchdog (real clock): each ``monitor_block`` must be named
    :param monitor_pace: (figure 4) slow every monitor handler by this many seconds for the whole run
    :param monitor_mailbox: (figure 4) sample the monitor's mailbox every 10 ms: depth within its cap, every
        message accounted for, and every lifecycle event handled by the monitor
    :param min_overload: (figure 4) the taps offered to the monitor must be at least this many times what it can
        handle at ``monitor_pace``
    :param crashes_mid_anomaly: (figure 5) each injected anomaly reported exactly once (``check_exactly_once``), and
        each had a monitor crash between its cause and just after its report
    :param max_others_p99_ratio: (figure 6, with ``baseline``) the clients without a client fault keep a delivery
        latency p99 within this ratio of the same clients' in the fault-free run (a 1 ms bucket of slack)
    :param max_audit_intervals: (figure 7) every lie is flagged within this many audit intervals of its onset
    :param shutdown_within: (figure 9) when the last run has finished, shut the runtime down at once, mid-delivery:
        every client gets every event, its threads' terminal event last, then a 1001 close within this many seconds;
        the runtime leaves no actor and no task behind
    :param compare_backends: (figure 10) run the same settings on asyncio and on trio (virtual clock) and compare
        every client's delivery sequence, the alerts, and the reports
    """

    intensity_model: bool = False
    readiness_every: float | None = None
    watch_loop: bool = False
    monitor_pace: float | None = None
    monitor_mailbox: bool = False
    min_overload: float | None = None
    crashes_mid_anomaly: bool = False
    max_others_p99_ratio: float | None = None
    max_audit_intervals: float | None = None
    shutdown_within: float | None = None
    compare_backends: bool = False


class SimulationSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to run one simulation: the planned traffic and faults, the clock, and the runtime's configuration.

    :param clock: ``virtual`` (deterministic for a seed, runs as fast as the CPU allows) or ``real``
    :param sample_every: seconds between two samples of the runtime's health
    :param runtime: the application tree's configuration
    :param baseline: first run the same seed without any fault, and report the bridge's latency against it
    :param max_added_p99_ms: with ``baseline`` on the real clock: a criterion that the bridge's p99 latency exceeds
        the baseline's by at most this much
    :param min_applied: per fault name, a criterion that it took effect at least that many times
    :param checks: a reliability figure's extra instruments and criteria
    """

    spec: SimulationSpec = msgspec.field(default_factory=SimulationSpec)
    preset: str | None = None
    clock: Literal["virtual", "real"] = "virtual"
    sample_every: float = 10.0
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    baseline: bool = False
    max_added_p99_ms: float | None = None
    min_applied: dict[str, int] = msgspec.field(default_factory=dict)
    checks: FigureChecks = msgspec.field(default_factory=FigureChecks)


class Preset(msgspec.Struct, frozen=True, kw_only=True):
    """A named simulation: its size, its faults (``--fault`` syntax), its clock and its extra criteria (see
    :class:`SimulationSettings` for ``baseline``, ``max_added_p99_ms``, ``min_applied`` and ``checks``)."""

    description: str
    duration: float
    threads: int
    clients: int
    faults: tuple[str, ...]
    sample_every: float
    seed: int = 1
    clock: Literal["virtual", "real"] = "virtual"
    profile: AgentProfile = msgspec.field(default_factory=AgentProfile)
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    baseline: bool = False
    max_added_p99_ms: float | None = None
    min_applied: dict[str, int] = msgspec.field(default_factory=dict)
    checks: FigureChecks = msgspec.field(default_factory=FigureChecks)


_EVERY_SCENARIO_ONCE: Final = (
    "missing_agent_started:count=2",
    "orphan_tool_completed:count=2",
    "stuck_tool:count=2",
    "stale_thread:count=2",
    "high_latency:count=2",
    "duplicate_completion:count=2",
    "event_after_completion:count=2",
    "error_burst:count=2",
)

_DEMO_FAULTS: Final = (
    *_EVERY_SCENARIO_ONCE,
    "monitor_crash:count=4",
    "monitor_hang:count=1",
    "monitor_block:count=1,seconds=0.2",
    "monitor_flood:count=1",
    "lying_component:count=1",
    "malformed_input:count=1",
    "slow_client:count=2",
    "client_disconnect:count=4",
    "bridge_connection_errors:count=3",
)

#: A busy agent: a new run about a second after the last one (about 6.4 events per second per thread).
_BUSY: Final = AgentProfile(idle_mean=1.0)

#: The built-in presets (``--preset NAME``); ``--duration``, ``--threads``, ``--clients``, ``--seed`` override
#: their figures and each ``--fault`` is added to their faults. ``figN`` is figure N of docs/reliability.md.
PRESETS: Final[dict[str, Preset]] = {
    "demo": Preset(
        description="every fault once or more over 10 simulated minutes (what `make demo` runs; ~10 s of wall time)",
        duration=600.0,
        threads=24,
        clients=12,
        faults=_DEMO_FAULTS,
        sample_every=10.0,
    ),
    "soak": Preset(
        description="an hour of traffic on 100 threads with every fault recurring (virtual clock)",
        duration=3600.0,
        threads=100,
        clients=40,
        faults=(
            "missing_agent_started:0.3%",
            "orphan_tool_completed:0.3%",
            "stuck_tool:0.3%",
            "stale_thread:0.3%",
            "high_latency:0.3%",
            "duplicate_completion:0.3%",
            "event_after_completion:0.3%",
            "error_burst:every=600s",
            "monitor_crash:every=60s",
            "monitor_hang:every=900s",
            "monitor_block:count=2,seconds=0.1",
            "monitor_flood:every=1200s",
            "lying_component:count=2",
            "malformed_input:count=4",
            "slow_client:10%",
            "client_disconnect:30%",
            "bridge_connection_errors:10%",
        ),
        sample_every=60.0,
    ),
    # Figure 1: the monitor crashed 1,000 times while the bridge carries sustained load. Real clock: added latency
    # only exists in real time (on the virtual clock a handler takes no simulated time). The storm is as fast as the
    # monitor recovers: a crash is due every 20 ms and skipped while the previous one is still being recovered from
    # (each restart rebuilds from the replay rings, so it slows as they fill). The monitor's restart budget is raised
    # so that every crash is restarted rather than the branch detached.
    "fig1": Preset(
        description="monitor crash storm: 1,000+ monitor crashes under sustained load (real clock, ~3 min)",
        duration=75.0,
        threads=50,
        clients=25,
        faults=("monitor_crash:every=0.02s",),
        sample_every=5.0,
        clock="real",
        profile=_BUSY,
        runtime=RuntimeConfig(supervision=SupervisionSettings(monitor_intensity=10_000, monitor_period=10.0)),
        baseline=True,
        max_added_p99_ms=2.0,
        min_applied={"monitor_crash": 1000},
    ),
    # Figure 2: bursts of crashes at seeded times, each crash as soon as the monitor is back, against small budgets
    # (the CI test's: 2 monitor restarts in 1.005 s, 2 branch restarts in 10.005 s): 30 storms of nine crashes (the
    # branch fails three times within a second: detached) and 100 bursts of three (one branch failure: detached only
    # when two more fall within 10 s). A detached branch is re-attached after its cool-down (20 s, doubled after a
    # failed half-open probe, up to 80 s) and detached again at once if it fails within its probe (10.005 s).
    "fig2": Preset(
        description="restart-intensity exhaustion: the monitoring branch detached exactly at its budget, re-attached "
        "after the cool-down, dozens of times (virtual clock)",
        duration=1800.0,
        threads=20,
        clients=10,
        faults=("monitor_crash:count=30,burst=9", "monitor_crash:count=100,burst=3"),
        sample_every=10.0,
        runtime=RuntimeConfig(
            supervision=SupervisionSettings(
                monitor_intensity=2,
                monitor_period=1.005,
                monitoring_intensity=2,
                monitoring_period=10.005,
                detach_cooldown=20.0,
                max_detach_cooldown=80.0,
            )
        ),
        checks=FigureChecks(intensity_model=True, readiness_every=0.5037),
    ),
    # Figure 3: hangs (virtual time would do) and synchronous loop blocks (only real time shows them), together: nine
    # blocks of 0.3 s and nine hangs (the handler deadline at 1 s), the loop-lag watchdog at a 0.1 s threshold.
    "fig3": Preset(
        description="monitor hang and monitor loop-blocking: cancelled at the deadline, named by the watchdog, "
        "restarted; the bridge delivers throughout (real clock)",
        duration=60.0,
        threads=20,
        clients=10,
        # Alternating, 3 s apart: a hang (1 s to its deadline, then a restart) never overlaps a block.
        faults=("monitor_block:every=6s,seconds=0.3", "monitor_hang:every=6s,offset=3s"),
        sample_every=5.0,
        clock="real",
        profile=_BUSY,
        runtime=RuntimeConfig(supervision=SupervisionSettings(monitor_handler_timeout=1.0)),
        min_applied={"monitor_hang": 9, "monitor_block": 9},
        checks=FigureChecks(watch_loop=True),
    ),
    # Figure 4: the monitor handles one message per 7 ms (~143/s) while the bridge taps it ~340 events/s (2.4x), its
    # mailbox capped at 200, and flooded with 5,000 health queries four times on top.
    "fig4": Preset(
        description="monitor at 2x overload and flooded: mailbox within its cap, every message and event accounted "
        "for, no lifecycle event lost (virtual clock)",
        duration=300.0,
        threads=50,
        clients=25,
        faults=("monitor_flood:count=4,messages=5000",),
        sample_every=10.0,
        profile=_BUSY,
        runtime=RuntimeConfig(monitor_mailbox=200),
        checks=FigureChecks(monitor_pace=0.007, monitor_mailbox=True, min_overload=2.0),
    ),
    # Figure 5: every run scenario 15 times and two error bursts, with the monitor crashed every 0.4 s (the budget
    # raised so it is always restarted): well over 1,000 crashes, each anomaly with crashes between its cause and
    # its report.
    "fig5": Preset(
        description="detection under faults: every anomaly reported exactly once while the monitor is crashed "
        "1,000+ times mid-anomaly (virtual clock)",
        duration=600.0,
        threads=30,
        clients=15,
        faults=(
            "missing_agent_started:count=15",
            "orphan_tool_completed:count=15",
            "stuck_tool:count=15",
            "stale_thread:count=15",
            "high_latency:count=15",
            "duplicate_completion:count=15",
            "event_after_completion:count=15",
            "error_burst:count=2",
            "monitor_crash:every=0.4s",
        ),
        sample_every=10.0,
        runtime=RuntimeConfig(supervision=SupervisionSettings(monitor_intensity=100_000, monitor_period=1.0)),
        min_applied={"monitor_crash": 1000},
        checks=FigureChecks(crashes_mid_anomaly=True),
    ),
    # Figure 6: 50 clients on 10 busy threads; one of them reads 10 frames/s for 60 s (the bridge's writer queue 64,
    # slow consumers closed after 1 s behind, as in the CI test). Baseline: the same seed without the slow reader.
    "fig6": Preset(
        description="slow client isolation: one client reading 10 msg/s among 50; the others' p99 within 10% of "
        "the baseline; the slow one closed 4001 and resumed without loss (virtual clock)",
        duration=300.0,
        threads=10,
        clients=50,
        faults=("slow_client:count=1,duration=60s,delay=0.1s",),
        sample_every=10.0,
        profile=AgentProfile(idle_mean=0.5, delta_gap=0.02),
        runtime=RuntimeConfig(bridge=BridgeSettings(writer_queue_capacity=64, slow_consumer_after=1.0)),
        baseline=True,
        checks=FigureChecks(max_others_p99_ratio=1.1),
    ),
    # Figure 7: 30 episodes of the bridge delivering nothing while its registration claims healthy, at seeded times
    # (so at every phase of the audit cycle); audits every 2 s, undelivered after 1 s (the CI test's settings).
    "fig7": Preset(
        description="health-claim audit: a bridge delivering nothing while claiming healthy flagged within two audit "
        "intervals, every time; never while honest (virtual clock)",
        duration=1800.0,
        threads=20,
        clients=10,
        faults=("lying_component:count=30,duration=10s",),
        sample_every=10.0,
        runtime=RuntimeConfig(
            monitor=MonitorConfig(
                thresholds=DetectionThresholds(undelivered_after=1.0), check_interval=0.25, audit_interval=2.0
            )
        ),
        checks=FigureChecks(max_audit_intervals=2.0),
    ),
    # Figure 8: 100,000 fuzzed frames (ten kinds of damage), 1,000 at each of 100 times, through event validation,
    # the trace replay's line parser, and (one in ten) the bridge itself, while valid traffic streams.
    "fig8": Preset(
        description="malformed input: 100,000 fuzzed frames and lines each rejected with a clear error and counted, "
        "no restart, no valid event lost (virtual clock)",
        duration=300.0,
        threads=20,
        clients=10,
        faults=("malformed_input:count=100,messages=1000",),
        sample_every=10.0,
        min_applied={"malformed_input": 100},
    ),
    # Figure 9: busy threads; five clients turn slow readers (10 frames/s, never closed as slow consumers) in the
    # last 10 s of traffic, and the runtime shuts down the moment the last run has finished, with frames still queued
    # for them. (A reader that fell behind for minutes cannot be sent its backlog within 2 s at 10 frames/s, whatever
    # the bridge does: the figure's claim is about readers whose backlog fits the window; such a reader still gets
    # its 1001 in time, see docs/reliability.md.)
    "fig9": Preset(
        description="graceful shutdown mid-delivery: every client gets its terminal events then 1001 within 2 s; "
        "no actor or task left behind (virtual clock)",
        duration=120.0,
        threads=30,
        clients=30,
        faults=("slow_client:at=110s,at=112s,at=114s,at=116s,at=118s,duration=10m,delay=0.1s",),
        sample_every=10.0,
        profile=_BUSY,
        runtime=RuntimeConfig(bridge=BridgeSettings(slow_consumer_after=600.0, writer_queue_capacity=10_000)),
        checks=FigureChecks(shutdown_within=2.0),
    ),
    # Figure 10: the demo's every fault (monitor blocks excepted: they take wall time, not simulated time) at twice
    # its traffic, run on asyncio and on trio, compared frame by frame.
    "fig10": Preset(
        description="determinism: the same seed gives identical delivery sequences, alerts and reports on asyncio and "
        "trio (virtual clock, both backends in one command)",
        duration=600.0,
        threads=48,
        clients=24,
        faults=tuple(fault for fault in _DEMO_FAULTS if not fault.startswith("monitor_block")),
        sample_every=10.0,
        checks=FigureChecks(compare_backends=True),
    ),
}


def preset_settings(
    name: str, *, clock: Literal["virtual", "real"] | None = None, **overrides: Any
) -> SimulationSettings:
    """The settings of a preset, with ``duration``, ``threads``, ``clients``, ``seed`` or extra ``faults`` (specs)
    overridden (``clock``: the preset's own by default).

    :raises KeyError: when there is no such preset
    :raises FaultSpecError: when a fault spec is invalid
    """
    preset = PRESETS[name]
    faults = tuple(parse_fault(text) for text in (*preset.faults, *overrides.pop("faults", ())))
    spec = SimulationSpec(
        seed=overrides.pop("seed", preset.seed),
        duration=overrides.pop("duration", preset.duration),
        threads=overrides.pop("threads", preset.threads),
        clients=overrides.pop("clients", preset.clients),
        faults=faults,
        # The scripts are planned against the thresholds the runtime's monitor applies.
        thresholds=preset.runtime.monitor.thresholds,
        profile=preset.profile,
    )
    if overrides:
        raise TypeError(f"unknown overrides: {', '.join(overrides)}")
    return SimulationSettings(
        spec=spec,
        preset=name,
        clock=clock if clock is not None else preset.clock,
        sample_every=preset.sample_every,
        runtime=preset.runtime,
        baseline=preset.baseline,
        max_added_p99_ms=preset.max_added_p99_ms,
        min_applied=dict(preset.min_applied),
        checks=preset.checks,
    )
