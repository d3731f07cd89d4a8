from __future__ import annotations

import inspect
import random
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from actors.chat._events import (
    DEFAULT_MAX_BYTES,
    RunFinished,
    RunStarted,
    TextMessageContent,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
    encode_event,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from actors.chat._events import AgentEvent


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """When to do something, in seconds from a start: the generator side of a fault run (seeded, reproducible).

    :param times: offsets in seconds, non-decreasing
    :param seed: the seed it was drawn with (kept for the report)
    """

    times: tuple[float, ...]
    seed: int | None = None

    def __post_init__(self) -> None:
        if any(later < earlier for earlier, later in zip(self.times, self.times[1:], strict=False)):
            raise ValueError("Schedule.times must be non-decreasing")
        if self.times and self.times[0] < 0:
            raise ValueError(f"Schedule.times must be >= 0, got {self.times[0]!r}")

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def random(cls, seed: int, *, count: int, horizon: float, min_gap: float = 0.0, start: float = 0.0) -> Schedule:
        """``count`` times drawn uniformly within ``[start, start + horizon]``, at least ``min_gap`` apart.

        :raises ValueError: when the gaps cannot fit in the horizon, or a number is out of range
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        if not horizon >= 0 or not min_gap >= 0 or not start >= 0:
            raise ValueError("horizon, min_gap and start must be >= 0 seconds")
        slack = horizon - max(0, count - 1) * min_gap
        if slack < 0:
            raise ValueError(f"{count} times {min_gap} s apart do not fit in {horizon} s")
        rng = random.Random(seed)
        # Draw in the horizon minus the mandatory gaps, sort, then spread them out by the gaps: uniform and exact.
        points = sorted(rng.uniform(0.0, slack) for _ in range(count))
        return cls(times=tuple(start + point + index * min_gap for index, point in enumerate(points)), seed=seed)

    @classmethod
    def every(cls, interval: float, *, count: int, start: float = 0.0, jitter: float = 0.0, seed: int = 0) -> Schedule:
        """``count`` times ``interval`` apart from ``start``, each moved by up to ``jitter`` of the interval.

        :raises ValueError: when ``interval`` is not > 0 or ``jitter`` is not within [0, 0.5)
        """
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if not 0 <= jitter < 0.5:
            raise ValueError(f"jitter must be within [0, 0.5), got {jitter!r}")
        rng = random.Random(seed)
        times = tuple(
            start + (index + 1) * interval + rng.uniform(-jitter, jitter) * interval for index in range(count)
        )
        return cls(times=times, seed=seed)


async def run_schedule(schedule: Schedule, action: Callable[[int], Any], *, origin: float | None = None) -> int:
    """Call ``action(i)`` at each time of ``schedule`` (awaiting it if it returns an awaitable).

    :param origin: the loop time the schedule's offsets count from (default: now)
    :return: how many actions returned a truthy value (e.g. :func:`~supervisors.faults.crash_once` that crashed)
    """
    origin = anyio.current_time() if origin is None else origin
    done = 0
    for index, offset in enumerate(schedule.times):
        await anyio.sleep_until(origin + offset)
        result = action(index)
        if inspect.isawaitable(result):
            awaited: Awaitable[Any] = result
            result = await awaited
        if result:
            done += 1
    return done


class FrameMutation(msgspec.Struct, frozen=True, kw_only=True):
    """One malformed frame and how it was made (every kind is invalid by construction).

    :param kind: ``truncated``, ``not_json``, ``invalid_utf8``, ``not_object``, ``unknown_type``, ``wrong_type``,
        ``missing_field``, ``too_deep``, ``oversize`` or ``bad_seed_alias``
    :param field: the field the mutation broke, when it broke one
    """

    kind: str
    frame: bytes
    field: str | None = None


MUTATION_KINDS: Final = (
    "truncated",
    "not_json",
    "invalid_utf8",
    "not_object",
    "unknown_type",
    "wrong_type",
    "missing_field",
    "too_deep",
    "oversize",
    "bad_seed_alias",
)

_BASES: Final[tuple[AgentEvent, ...]] = (
    RunStarted(thread_id="t-1", run_id="r-1"),
    TextMessageContent(message_id="m-1", delta="hello"),
    ToolCallStart(tool_call_id="call-1", tool_call_name="search"),
    ToolCallEnd(tool_call_id="call-1"),
    ToolCallResult(message_id="m-2", tool_call_id="call-1", content="3 hits"),
    RunFinished(thread_id="t-1", run_id="r-1"),
)


def _string_fields(event: AgentEvent) -> list[tuple[str, bool]]:
    """(wire name, required) of each field typed ``str`` or ``str | None``: an int there is always invalid."""
    info = msgspec.inspect.type_info(type(event))
    assert isinstance(info, msgspec.inspect.StructType)
    fields = []
    for field in info.fields:
        kind = field.type
        options = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        if all(isinstance(option, msgspec.inspect.StrType | msgspec.inspect.NoneType) for option in options) and any(
            isinstance(option, msgspec.inspect.StrType) for option in options
        ):
            fields.append((field.encode_name, field.required))
    return fields


def malformed_frames(
    seed: int,
    count: int,
    *,
    bases: Sequence[AgentEvent] = _BASES,
    kinds: Sequence[str] = MUTATION_KINDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[FrameMutation]:
    """Yield ``count`` malformed event frames, each invalid by construction, cycling through ``kinds``.

    Feed them to whatever takes frames from outside (``parse_event``, a WebSocket front end, a replay file): each
    must be rejected with an error that names the field or says what is wrong with the frame, and counted.

    :param bases: valid events the mutations start from
    :param max_bytes: the frame limit of the parser under test (``oversize`` frames are one byte over it)
    :raises ValueError: for an unknown kind, or no base events
    """
    unknown = [kind for kind in kinds if kind not in MUTATION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {MUTATION_KINDS}, got {list(kinds)!r}")
    if not bases:
        raise ValueError("bases must hold at least one valid event")
    rng = random.Random(seed)
    for index in range(count):
        kind = kinds[index % len(kinds)]
        base = bases[rng.randrange(len(bases))]
        yield _mutate(kind, base, rng, index, max_bytes)


def _mutate(kind: str, base: AgentEvent, rng: random.Random, index: int, max_bytes: int) -> FrameMutation:
    frame = encode_event(base)
    obj: dict[str, Any] = msgspec.json.decode(frame)
    if kind == "truncated":
        # Every non-empty strict prefix of a JSON object is incomplete (the closing brace is missing).
        return FrameMutation(kind=kind, frame=frame[: rng.randrange(1, len(frame))])
    if kind == "not_json":
        junk = "".join(rng.choice("abcdefxyz<>!@#%^&*() ") for _ in range(rng.randint(1, 40)))
        return FrameMutation(kind=kind, frame=b"<" + junk.encode())
    if kind == "invalid_utf8":
        at = rng.randrange(1, len(frame))
        return FrameMutation(kind=kind, frame=frame[:at] + b"\xff\xfe" + frame[at:])
    if kind == "not_object":
        scalar = rng.choice([b"[1,2,3]", b"42", b"null", b'"RUN_STARTED"', b"true", b"[]"])
        return FrameMutation(kind=kind, frame=scalar)
    if kind == "unknown_type":
        obj["type"] = f"NOT_AN_EVENT_{index}"
        return FrameMutation(kind=kind, frame=msgspec.json.encode(obj), field="$.type")
    if kind == "wrong_type":
        name, _ = rng.choice(_string_fields(base))
        obj[name] = rng.randint(-(10**6), 10**6)
        return FrameMutation(kind=kind, frame=msgspec.json.encode(obj), field=f"$.{name}")
    if kind == "missing_field":
        required = [name for name, needed in _string_fields(base) if needed and name in obj]
        name = rng.choice(required)
        del obj[name]
        return FrameMutation(kind=kind, frame=msgspec.json.encode(obj), field=f"$.{name}")
    if kind == "too_deep":
        depth = rng.randint(2_000, 4_000)
        return FrameMutation(
            kind=kind, frame=b'{"type":"CUSTOM","name":"deep","value":' + b"[" * depth + b"]" * depth + b"}"
        )
    if kind == "oversize":
        padding = "x" * (max_bytes + 1)
        return FrameMutation(
            kind=kind, frame=msgspec.json.encode({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": padding})
        )
    if kind == "bad_seed_alias":
        alias = rng.choice(["tool_executing", "tool_completed", "agent_thinking"])
        return FrameMutation(kind=kind, frame=msgspec.json.encode({"type": alias, "thread_id": rng.randint(0, 9)}))
    raise AssertionError(f"unknown mutation kind {kind!r}")  # pragma: no cover  (kinds are checked above)
