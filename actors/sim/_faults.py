from __future__ import annotations

import enum
import math
import re
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    import random


class FaultClass(enum.StrEnum):
    """Where a fault acts, which decides how its occurrences are chosen and who injects it."""

    #: Shapes one agent run (a share of runs, or the next run after each scheduled time).
    RUN = "run"
    #: Shapes the whole event stream at scheduled times (error bursts, on threads of their own).
    STREAM = "stream"
    #: Done to the runtime's actors by the simulation driver at scheduled times.
    RUNTIME = "runtime"
    #: Done to one simulated client (a share of clients, or one client at each scheduled time).
    CLIENT = "client"


class _Rule(msgspec.Struct, frozen=True):
    fault_class: FaultClass
    options: tuple[str, ...] = ()


#: Every fault ``--fault`` accepts, what it acts on, and the options it takes besides its schedule.
FAULT_CATALOG: Final[dict[str, _Rule]] = {
    "missing_agent_started": _Rule(FaultClass.RUN),
    "orphan_tool_completed": _Rule(FaultClass.RUN),
    "stuck_tool": _Rule(FaultClass.RUN),
    "stale_thread": _Rule(FaultClass.RUN),
    "high_latency": _Rule(FaultClass.RUN),
    "duplicate_completion": _Rule(FaultClass.RUN),
    "event_after_completion": _Rule(FaultClass.RUN),
    "error_burst": _Rule(FaultClass.STREAM),
    "monitor_crash": _Rule(FaultClass.RUNTIME, ("burst",)),
    "monitor_hang": _Rule(FaultClass.RUNTIME),
    "monitor_block": _Rule(FaultClass.RUNTIME, ("seconds",)),
    "monitor_flood": _Rule(FaultClass.RUNTIME, ("messages",)),
    "lying_component": _Rule(FaultClass.RUNTIME, ("duration",)),
    "malformed_input": _Rule(FaultClass.RUNTIME, ("messages",)),
    "slow_client": _Rule(FaultClass.CLIENT, ("duration", "delay")),
    "client_disconnect": _Rule(FaultClass.CLIENT, ("duration",)),
    "bridge_connection_errors": _Rule(FaultClass.CLIENT),
}

#: The monitor's scenarios (the faults that are themselves an anomaly kind), in catalog order.
SCENARIO_KINDS: Final = tuple(
    name for name, rule in FAULT_CATALOG.items() if rule.fault_class in (FaultClass.RUN, FaultClass.STREAM)
)
#: The scenarios injected into single runs.
RUN_SCENARIOS: Final = tuple(name for name, rule in FAULT_CATALOG.items() if rule.fault_class is FaultClass.RUN)


class FaultSpecError(ValueError):
    """A ``--fault`` spec that breaks a rule; the message names the fault and the rule."""


class FaultSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One ``--fault`` argument, parsed: which fault, how often, and its options (durations in seconds).

    Exactly one way of choosing occurrences is set: ``share`` (a share of runs or of clients), ``count`` (that many,
    spread over the traffic), ``every`` (a period, first at ``offset + every``) or ``at`` (explicit times).
    """

    name: str
    share: float | None = None
    count: int | None = None
    every: float | None = None
    at: tuple[float, ...] = ()
    offset: float = 0.0
    duration: float | None = None
    delay: float | None = None
    seconds: float | None = None
    messages: int | None = None
    burst: int | None = None
    text: str = ""

    @property
    def fault_class(self) -> FaultClass:
        """Where the fault acts."""
        return FAULT_CATALOG[self.name].fault_class


_DURATION: Final = re.compile(r"^(?P<value>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m|h)?$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Read ``500ms``, ``5s``, ``2m``, ``1h`` or a bare number of seconds.

    :raises ValueError: when ``text`` is not a non-negative number with an optional unit
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (a number with an optional unit ms, s, m or h)")
    return float(match["value"]) * _UNIT_SECONDS[match["unit"]]


def parse_fault(text: str) -> FaultSpec:
    """Parse ``NAME[:ARG[,ARG]...]`` where ARG is ``P%``, ``count=N``, ``every=DUR`` (with ``offset=DUR``: first at
    offset + every), ``at=DUR`` (repeatable), or an
    option of the fault (``duration=DUR``, ``delay=DUR``, ``seconds=DUR``, ``messages=N``, ``burst=N``); no ARG means
    ``count=1``.

    :raises FaultSpecError: naming the fault and the rule it broke
    """
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    rule = FAULT_CATALOG.get(name)
    if rule is None:
        known = ", ".join(FAULT_CATALOG)
        raise FaultSpecError(f"--fault {text!r}: unknown fault {name!r} (known: {known})")

    def fail(problem: str) -> FaultSpecError:
        return FaultSpecError(f"--fault {text!r}: {name}: {problem}")

    fields: dict[str, object] = {}
    at: list[float] = []
    schedules: list[str] = []
    for raw in (part.strip() for part in rest.split(",")) if rest.strip() else ():
        if not raw:
            raise fail("empty argument (write NAME:ARG,ARG)")
        if raw.endswith("%"):
            if rule.fault_class not in (FaultClass.RUN, FaultClass.CLIENT):
                raise fail(f"{raw} is a share, but {name} acts at scheduled times: give count=N, every=DUR or at=DUR")
            try:
                percent = float(raw[:-1])
            except ValueError:
                raise fail(f"{raw!r} is not a percentage") from None
            if not 0 < percent <= 100:
                raise fail(f"a share must be within (0, 100]%, got {raw}")
            what = "runs" if rule.fault_class is FaultClass.RUN else "clients"
            fields["share"] = percent / 100
            schedules.append(f"{raw} of {what}")
            continue
        key, eq, value = raw.partition("=")
        if not eq:
            raise fail(f"{raw!r} is neither P% nor key=value")
        key = key.strip()
        value = value.strip()
        if key in ("count", "messages", "burst"):
            if key != "count" and key not in rule.options:
                raise fail(f"{name} takes no option {key!r} (options: {', '.join(rule.options) or 'none'})")
            try:
                number = int(value)
            except ValueError:
                raise fail(f"{key} must be an int, got {value!r}") from None
            if number < 1:
                raise fail(f"{key} must be >= 1, got {number}")
            fields[key] = number
            if key == "count":
                schedules.append(raw)
            continue
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise fail(f"{key}: {exc}") from None
        if key == "every":
            if seconds <= 0:
                raise fail(f"every must be > 0 s, got {value!r}")
            fields["every"] = seconds
            schedules.append(raw)
        elif key == "offset":
            fields["offset"] = seconds
        elif key == "at":
            at.append(seconds)
            if "at" not in schedules:
                schedules.append("at")
        elif key in ("duration", "delay", "seconds"):
            if key not in rule.options:
                raise fail(f"{name} takes no option {key!r} (options: {', '.join(rule.options) or 'none'})")
            if seconds <= 0:
                raise fail(f"{key} must be > 0 s, got {value!r}")
            fields[key] = seconds
        else:
            raise fail(f"unknown argument {key!r} (use P%, count=N, every=DUR, at=DUR or an option of the fault)")
    if len(schedules) > 1:
        raise fail(f"give one schedule (P%, count=N, every=DUR or at=DUR), got {', '.join(schedules)}")
    if "offset" in fields and "every" not in fields:
        raise fail("offset shifts an every=DUR schedule: give every=DUR too")
    if at:
        fields["at"] = tuple(sorted(at))
    if not schedules:
        fields["count"] = 1
    return FaultSpec(name=name, text=text.strip(), **fields)  # type: ignore[arg-type]


#: ``every=`` and ``at=`` times are applied this long after their nominal time: off the grid of the runtime's own
#: ticks (0.1 s, 1 s, 10 s), so that what a fault hits never depends on the order of same-instant events, which
#: differs between event loops (a report must be the same on asyncio and trio).
FAULT_PHASE: Final = 0.0371


def occurrence_times(spec: FaultSpec, duration: float, rng: random.Random) -> list[float]:
    """The times (seconds after the start) at which a scheduled fault occurs; ``[]`` for a share.

    ``count=N`` spreads N times over 5%..85% of the traffic, one in each of N equal slices (jittered), so that each
    occurrence has time to become detectable before the traffic ends. ``every`` and ``at`` times are shifted by
    :data:`FAULT_PHASE`.

    :raises FaultSpecError: when a time is outside the traffic, or ``every`` is longer than it
    """
    if spec.share is not None:
        return []
    if spec.at:
        late = [t for t in spec.at if t >= duration]
        if late:
            raise FaultSpecError(
                f"--fault {spec.text!r}: {spec.name}: at={late[0]:g}s is not within the traffic (0 .. {duration:g} s)"
            )
        return [at + FAULT_PHASE for at in spec.at]
    if spec.every is not None:
        if spec.offset + spec.every >= duration:
            raise FaultSpecError(
                f"--fault {spec.text!r}: {spec.name}: every={spec.every:g}s"
                + (f" after offset={spec.offset:g}s" if spec.offset else "")
                + f" never fires within {duration:g} s of traffic"
            )
        return [
            spec.offset + spec.every * k + FAULT_PHASE
            for k in range(1, math.ceil(duration / spec.every) + 1)
            if spec.offset + spec.every * k < duration
        ]
    assert spec.count is not None
    low, high = 0.05 * duration, 0.85 * duration
    width = (high - low) / spec.count
    return [low + (k + rng.uniform(0.2, 0.8)) * width for k in range(spec.count)]
