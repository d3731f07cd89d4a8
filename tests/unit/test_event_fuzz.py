from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.chat._aliases import SEED_ALIASES
from actors.chat._events import (
    EVENT_CLASSES,
    AgentEvent,
    BaseEvent,
    InvalidEvent,
    TextMessageContent,
    encode_event,
    parse_event,
)
from tests.unit.test_events import SAMPLE_EVENTS

_FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_types = st.sampled_from(sorted(EVENT_CLASSES) + sorted(SEED_ALIASES)) | st.text(max_size=30) | _json
_field_names = st.sampled_from(
    [
        "threadId",
        "runId",
        "thread_id",
        "run_id",
        "toolCallId",
        "tool_call_id",
        "toolCallName",
        "tool_name",
        "messageId",
        "message_id",
        "delta",
        "content",
        "name",
        "value",
        "message",
        "stepName",
        "role",
        "timestamp",
        "metadata",
        "rawEvent",
        "outcome",
        "usage",
        "result",
    ]
) | st.text(max_size=10)
_objects = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    _types,
    st.dictionaries(_field_names, _json, max_size=8),
)


def _outcome(data: bytes | str) -> AgentEvent | InvalidEvent:
    """Parse, allowing only the two documented outcomes; any other exception fails the test."""
    try:
        event = parse_event(data)
    except InvalidEvent as error:
        caught = error
    else:
        assert isinstance(event, BaseEvent)
        return event
    assert caught.field is None or caught.field.startswith("$")
    assert caught.rule
    assert len(str(caught)) < 1000
    return caught


def _encode_any(value: Any) -> bytes:
    # Hypothesis integers may exceed what msgspec encodes; those frames are written by hand.
    try:
        return msgspec.json.encode(value)
    except OverflowError:
        return str(value).encode()


class TestParseEventFuzz:
    @_FUZZ
    @given(value=_json)
    def test_random_json_value_yields_event_or_invalid_event(self, value: Any) -> None:
        result = _outcome(_encode_any(value))
        if not isinstance(value, dict):
            assert isinstance(result, InvalidEvent)

    @_FUZZ
    @given(obj=_objects)
    def test_random_object_with_plausible_fields_yields_event_or_invalid_event(self, obj: dict[str, Any]) -> None:
        result = _outcome(_encode_any(obj))
        if isinstance(result, BaseEvent):
            # Anything accepted is a well-formed event: it re-encodes and decodes to itself.
            assert parse_event(encode_event(result)) == result

    @_FUZZ
    @given(event=st.sampled_from(SAMPLE_EVENTS), data=st.data())
    def test_truncated_valid_frame_is_invalid(self, event: AgentEvent, data: st.DataObject) -> None:
        frame = encode_event(event)
        cut = data.draw(st.integers(0, len(frame) - 1))
        result = _outcome(frame[:cut])
        assert isinstance(result, InvalidEvent)
        assert result.field is None  # a cut frame is never JSON, whatever it held

    @_FUZZ
    @given(event=st.sampled_from(SAMPLE_EVENTS), data=st.data())
    def test_each_field_replaced_by_a_wrong_value_yields_event_or_invalid_event(
        self, event: AgentEvent, data: st.DataObject
    ) -> None:
        wire = msgspec.json.decode(encode_event(event))
        key = data.draw(st.sampled_from(sorted(wire)))
        wire[key] = data.draw(_json)
        result = _outcome(_encode_any(wire))
        if isinstance(result, InvalidEvent) and key != "type" and result.field is not None:
            # The error names the field that was broken (or something inside it).
            assert result.field.startswith(f"$.{key}")

    @_FUZZ
    @given(first=_types, second=_types, fields=st.dictionaries(_field_names, _json, max_size=4))
    def test_duplicate_type_keys_yield_event_or_invalid_event(
        self, first: Any, second: Any, fields: dict[str, Any]
    ) -> None:
        body = _encode_any(fields)[1:-1]
        frame = b'{"type":' + _encode_any(first) + (b"," + body if body else b"") + b',"type":' + _encode_any(second)
        _outcome(frame + b"}")

    @_FUZZ
    @given(raw=st.binary(max_size=200))
    def test_random_bytes_yield_event_or_invalid_event(self, raw: bytes) -> None:
        _outcome(raw)

    @_FUZZ
    @given(text=st.text(alphabet=st.characters(), max_size=200))
    def test_random_text_including_surrogates_yields_event_or_invalid_event(self, text: str) -> None:
        _outcome(text)

    @pytest.mark.parametrize("size", [10_000, 500_000, 1_100_000])
    def test_huge_strings_are_accepted_within_the_limit_and_rejected_beyond(self, size: int) -> None:
        frame = encode_event(TextMessageContent(message_id="m", delta="x" * size))
        result = _outcome(frame)
        assert isinstance(result, InvalidEvent) is (len(frame) > 1024 * 1024)

    @_FUZZ
    @given(junk=st.text(min_size=1, max_size=50), size=st.integers(2_000, 200_000))
    def test_huge_unknown_values_produce_short_messages(self, junk: str, size: int) -> None:
        result = _outcome(msgspec.json.encode({"type": junk * (size // len(junk))}))
        assert isinstance(result, InvalidEvent)
        assert len(str(result)) < 300
