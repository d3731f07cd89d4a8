from __future__ import annotations

import re
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import msgspec

from actors.chat._events import (
    AgentEvent,
    InvalidEvent,
    ReasoningStart,
    RunFinished,
    RunStarted,
    ToolCallEnd,
    ToolCallStart,
    _invalid_event_from,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

SEED_ALIASES: Final[Mapping[str, type[AgentEvent]]] = MappingProxyType(
    {
        "agent_started": RunStarted,
        "agent_thinking": ReasoningStart,
        "tool_executing": ToolCallStart,
        "tool_completed": ToolCallEnd,
        "agent_completed": RunFinished,
    }
)
"""Seed event name → the AG-UI event class it is accepted as (``tool_completed`` closes the call; the result, if
any, travels as a separate TOOL_CALL_RESULT)."""

# Every spelling a seed object may use for a field → the AG-UI wire name. Both the seed's snake_case and the
# AG-UI camelCase are accepted so a half-migrated producer works; anything else stays only in rawEvent.
_SPELLINGS: Final[Mapping[str, str]] = {
    "thread_id": "threadId",
    "threadId": "threadId",
    "run_id": "runId",
    "runId": "runId",
    "tool_call_id": "toolCallId",
    "toolCallId": "toolCallId",
    "tool_name": "toolCallName",
    "toolName": "toolCallName",
    "tool_call_name": "toolCallName",
    "toolCallName": "toolCallName",
    "parent_message_id": "parentMessageId",
    "parentMessageId": "parentMessageId",
    "message_id": "messageId",
    "messageId": "messageId",
    "result": "result",
    "timestamp": "timestamp",
    "metadata": "metadata",
    "raw_event": "rawEvent",
    "rawEvent": "rawEvent",
}
# How an error names a field the seed object left out: in the seed's own spelling.
_SEED_SPELLING: Final[Mapping[str, str]] = {
    "threadId": "thread_id",
    "runId": "run_id",
    "toolCallId": "tool_call_id",
    "toolCallName": "tool_name",
    "messageId": "message_id",
}
_RUN_SCOPED: Final = frozenset({RunStarted, RunFinished})
_PATH_HEAD = re.compile(r"^\$\.([^.\[]+)(.*)$", re.DOTALL)


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "bool"
        case int():
            return "int"
        case float():
            return "float"
        case str():
            return "str"
        case list():
            return "array"
        case _:
            return "object"


def _event_from_seed(obj: dict[str, Any]) -> AgentEvent:
    """Translate a decoded seed object (``{"type": "tool_executing", "tool_call_id": ..., ...}``) to its event.

    ``thread_id`` / ``run_id`` become fields of RUN_STARTED / RUN_FINISHED and ``metadata.threadId`` /
    ``metadata.runId`` of the others; the whole seed object is kept as ``rawEvent`` unless it carries its own.

    :raises InvalidEvent: when a field is missing or has the wrong type; the path uses the spelling the object
        used (``$.tool_name``), or the seed spelling for a missing field.
    :raises KeyError: when ``obj["type"]`` is not a seed name (the caller checks :data:`SEED_ALIASES`).
    """
    target = SEED_ALIASES[obj["type"]]
    wire: dict[str, Any] = {"type": target.__struct_config__.tag}
    sent_as: dict[str, str] = {}
    for key, value in obj.items():
        wire_key = _SPELLINGS.get(key)
        if wire_key is None:
            continue
        if wire_key in wire:
            raise InvalidEvent(f"$.{key}", f"given twice (also as {sent_as[wire_key]!r})")
        wire[wire_key] = value
        sent_as[wire_key] = key
    if target not in _RUN_SCOPED:
        _move_run_ids_to_metadata(wire, sent_as)
    if target is ReasoningStart and "messageId" not in wire:
        # The seed's thinking events carry no message id; derive one the run owns rather than reject them all.
        metadata = wire.get("metadata")
        run_id = metadata.get("runId") if isinstance(metadata, dict) else None
        if not isinstance(run_id, str):
            raise InvalidEvent("$.message_id", "missing required field (or give run_id to derive it)")
        wire["messageId"] = f"{run_id}:thinking"
    wire.setdefault("rawEvent", obj)
    try:
        return msgspec.convert(wire, target)
    except msgspec.ValidationError as exc:
        invalid = _invalid_event_from(exc)
        raise InvalidEvent(_seed_path(invalid.field, sent_as), invalid.rule) from None


def _move_run_ids_to_metadata(wire: dict[str, Any], sent_as: Mapping[str, str]) -> None:
    ids: dict[str, str] = {}
    for wire_key in ("threadId", "runId"):
        if wire_key not in wire:
            continue
        value = wire.pop(wire_key)
        if not isinstance(value, str):
            raise InvalidEvent(f"$.{sent_as[wire_key]}", f"expected str, got {_json_type(value)}")
        ids[wire_key] = value
    if not ids:
        return
    metadata = wire.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise InvalidEvent(f"$.{sent_as['metadata']}", f"expected object, got {_json_type(metadata)}")
    # The object's explicit fields win over same-named metadata keys: they are what the producer meant.
    wire["metadata"] = {**metadata, **ids}


def _seed_path(field: str | None, sent_as: Mapping[str, str]) -> str | None:
    match = _PATH_HEAD.match(field) if field is not None else None
    if match is None:
        return field
    head, rest = match[1], match[2]
    head = sent_as.get(head) or _SEED_SPELLING.get(head, head)
    return f"$.{head}{rest}"


def agent_started(
    thread_id: str, run_id: str, *, timestamp: int | None = None, metadata: dict[str, Any] | None = None
) -> RunStarted:
    """The seed's ``agent_started``: a RUN_STARTED event."""
    return RunStarted(thread_id=thread_id, run_id=run_id, timestamp=timestamp, metadata=metadata)


def agent_thinking(
    thread_id: str,
    run_id: str,
    *,
    message_id: str | None = None,
    timestamp: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> ReasoningStart:
    """The seed's ``agent_thinking``: a REASONING_START event naming its thread and run in metadata.

    :param message_id: the reasoning span's id; defaults to ``"{run_id}:thinking"`` as for seed input.
    """
    return ReasoningStart(
        message_id=message_id if message_id is not None else f"{run_id}:thinking",
        timestamp=timestamp,
        metadata=_with_run_ids(metadata, thread_id, run_id),
    )


def tool_executing(
    tool_call_id: str,
    tool_name: str,
    *,
    thread_id: str | None = None,
    run_id: str | None = None,
    parent_message_id: str | None = None,
    timestamp: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> ToolCallStart:
    """The seed's ``tool_executing``: a TOOL_CALL_START event (``tool_name`` is ``toolCallName`` on the wire)."""
    return ToolCallStart(
        tool_call_id=tool_call_id,
        tool_call_name=tool_name,
        parent_message_id=parent_message_id,
        timestamp=timestamp,
        metadata=_with_run_ids(metadata, thread_id, run_id),
    )


def tool_completed(
    tool_call_id: str,
    *,
    thread_id: str | None = None,
    run_id: str | None = None,
    timestamp: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> ToolCallEnd:
    """The seed's ``tool_completed``: a TOOL_CALL_END event; send a ToolCallResult too if the tool returned data."""
    return ToolCallEnd(
        tool_call_id=tool_call_id, timestamp=timestamp, metadata=_with_run_ids(metadata, thread_id, run_id)
    )


def agent_completed(
    thread_id: str,
    run_id: str,
    *,
    result: Any = None,
    timestamp: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> RunFinished:
    """The seed's ``agent_completed``: a RUN_FINISHED event (success outcome)."""
    return RunFinished(thread_id=thread_id, run_id=run_id, result=result, timestamp=timestamp, metadata=metadata)


def _with_run_ids(metadata: dict[str, Any] | None, thread_id: str | None, run_id: str | None) -> dict[str, Any] | None:
    if thread_id is None and run_id is None:
        return metadata
    merged = dict(metadata) if metadata is not None else {}
    if thread_id is not None:
        merged["threadId"] = thread_id
    if run_id is not None:
        merged["runId"] = run_id
    return merged
