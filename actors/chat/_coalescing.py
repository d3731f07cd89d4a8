from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from actors.chat._events import (
    AgentEvent,
    ReasoningMessageContent,
    StampedEvent,
    TextMessageContent,
    ToolCallArgs,
    encode_event,
)

# Coalescing, a connection writer's remedy for a backlog: consecutive deltas of one stream (a text or reasoning
# message, a tool call's arguments) in a writer's queue become one event. Plain functions over a queue of stamped
# events, tested without a writer.


def _delta_key(item: StampedEvent) -> tuple[str, type[Any], str] | None:
    """What identifies the stream a delta belongs to (thread, event type, message or tool call); None if no delta."""
    event = item.event
    kind = type(event)
    if kind is TextMessageContent or kind is ReasoningMessageContent:
        return (item.thread_id, kind, event.message_id)  # type: ignore[union-attr]
    if kind is ToolCallArgs:
        return (item.thread_id, kind, event.tool_call_id)  # type: ignore[union-attr]
    return None


def _merge(run: list[StampedEvent]) -> StampedEvent:
    """One stamped event carrying the concatenated deltas of ``run`` (consecutive deltas of one stream).

    It keeps the last event's ``seq`` (the client resumes after it) and adds ``metadata.firstSeq``, the first seq
    it covers, so a client can check that its stream has no gap; ``observed_at`` is the oldest event's, so the
    frame's latency is that of its oldest content.
    """
    first, last = run[0], run[-1]
    last_event: Any = last.event
    first_meta = first.event.metadata or {}
    first_seq = first_meta.get("firstSeq", first.seq)
    delta = "".join(item.event.delta for item in run)  # type: ignore[union-attr]
    event: AgentEvent = msgspec.structs.replace(
        last_event, delta=delta, metadata={**(last_event.metadata or {}), "firstSeq": first_seq}
    )
    return StampedEvent(
        thread_id=last.thread_id,
        run_id=last.run_id,
        seq=last.seq,
        observed_at=first.observed_at,
        event=event,
        frame=encode_event(event),
        fan_out=last.fan_out,
    )


def coalesce(items: deque[StampedEvent]) -> tuple[deque[StampedEvent], int]:
    """Merge each run of consecutive deltas of the same message or tool call (same thread) into one event.

    Nothing else is touched: lifecycle and boundary events keep their place, so per-thread order is unchanged.

    :return: the merged queue and how many events were folded into another (``len(items) - len(result)``)
    """
    merged = coalesce_carried(items, None)
    return merged, len(items) - len(merged)


def coalesce_carried(items: deque[StampedEvent], carried: dict[int, int] | None) -> deque[StampedEvent]:
    """:func:`coalesce`, keeping ``carried`` (``id(frame)`` → events the frame carries, for merged frames only)
    up to date when given: a merged frame carries what each of its parts carried."""
    merged: deque[StampedEvent] = deque()
    run: list[StampedEvent] = []
    run_key: tuple[str, type[Any], str] | None = None
    for item in items:
        key = _delta_key(item)
        if key is not None and key == run_key:
            run.append(item)
            continue
        if run:
            merged.append(_fold(run, carried))
        run = [item]
        run_key = key
    if run:
        merged.append(_fold(run, carried))
    return merged


def _fold(run: list[StampedEvent], carried: dict[int, int] | None) -> StampedEvent:
    if len(run) == 1:
        return run[0]
    frame = _merge(run)
    if carried is not None:
        carried[id(frame)] = sum(carried.pop(id(part), 1) for part in run)
    return frame
