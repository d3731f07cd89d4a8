from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from actors.chat._events import Custom, decode_event
from supervisors._asgi_ws import Grant
from supervisors._ws_protocol import (
    MAX_CLIENT_FRAME,
    AuthRequest,
    BadFrame,
    SubscribeRequest,
    UnsubscribeRequest,
    control_frame,
    decode_client_frame,
    error_frame,
)


class TestDecodeClientFrame:
    def test_subscribe_with_after_seq_decodes_to_a_subscribe_request(self) -> None:
        request = decode_client_frame('{"subscribe": {"threadId": "t1", "afterSeq": 41}}')
        assert request == SubscribeRequest(thread_id="t1", after_seq=41)

    def test_subscribe_without_after_seq_is_a_fresh_subscribe(self) -> None:
        assert decode_client_frame(b'{"subscribe": {"threadId": "t1"}}') == SubscribeRequest(thread_id="t1")

    def test_auth_and_unsubscribe_decode(self) -> None:
        assert decode_client_frame('{"auth": {"token": "s3cret"}}') == AuthRequest(token="s3cret")
        assert decode_client_frame('{"unsubscribe": {"threadId": "t"}}') == UnsubscribeRequest(thread_id="t")

    @pytest.mark.parametrize(
        ("frame", "field", "rule"),
        [
            pytest.param("nope", "$", "not valid JSON", id="not-json"),
            pytest.param("[]", "$", "expected object, got array", id="array"),
            pytest.param("{}", "$", "exactly one of auth, subscribe, unsubscribe", id="empty"),
            pytest.param(
                '{"subscribe": {"threadId": "a"}, "unsubscribe": {"threadId": "a"}}',
                "$",
                "exactly one of",
                id="two-requests",
            ),
            pytest.param('{"subscribe": {"threadId": 1}}', "$.subscribe.threadId", "expected str, got int", id="type"),
            pytest.param('{"subscribe": {}}', "$.subscribe.threadId", "missing required field", id="missing"),
            pytest.param('{"subscribe": {"threadId": ""}}', "$.subscribe.threadId", "length >= 1", id="empty-id"),
            pytest.param(
                '{"subscribe": {"threadId": "t", "afterSeq": -1}}', "$.subscribe.afterSeq", ">= 0", id="negative"
            ),
            pytest.param(
                '{"subscribe": {"threadId": "t", "afterSeq": true}}', "$.subscribe.afterSeq", "got bool", id="bool"
            ),
            pytest.param('{"subscribe": {"threadId": "t", "x": 1}}', "$.subscribe.x", "unknown field", id="extra"),
            pytest.param('{"publish": {}}', "$.publish", "unknown field (allowed: auth, subscribe", id="unknown"),
            pytest.param('{"auth": {"token": ""}}', "$.auth.token", "length >= 1", id="empty-token"),
            pytest.param(b"\xff\xfe", "$", "", id="not-utf8"),
        ],
    )
    def test_bad_frame_names_the_field_and_the_rule(self, frame: str | bytes, field: str, rule: str) -> None:
        with pytest.raises(BadFrame) as error:
            decode_client_frame(frame)
        assert error.value.field == field
        assert rule in error.value.rule
        assert str(error.value) == f"{field}: {error.value.rule}"

    def test_frame_over_the_limit_is_rejected_before_parsing(self) -> None:
        frame = json.dumps({"subscribe": {"threadId": "x" * MAX_CLIENT_FRAME}})
        with pytest.raises(BadFrame, match="limit"):
            decode_client_frame(frame)

    def test_huge_unknown_key_is_clipped_in_the_rule(self) -> None:
        with pytest.raises(BadFrame) as error:
            decode_client_frame(json.dumps({"k" * 5000: 1}))
        assert len(str(error.value)) < 400

    @given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
    def test_any_input_decodes_or_raises_bad_frame_only(self, data: str | bytes) -> None:
        outcome: object
        try:
            outcome = decode_client_frame(data)
        except BadFrame as error:
            outcome = error
        assert isinstance(outcome, AuthRequest | SubscribeRequest | UnsubscribeRequest | BadFrame)
        if isinstance(outcome, BadFrame):
            assert outcome.field.startswith("$")


class TestControlFrames:
    def test_control_and_error_frames_are_agui_custom_events(self) -> None:
        event = decode_event(error_frame("bad_frame", "expected str", field="$.subscribe.threadId"))
        assert event == Custom(
            name="agentwatch.error",
            value={"code": "bad_frame", "message": "expected str", "field": "$.subscribe.threadId"},
        )
        ack = json.loads(control_frame("agentwatch.subscribed", {"threadId": "t", "lastSeq": 3}))
        assert ack == {"type": "CUSTOM", "name": "agentwatch.subscribed", "value": {"threadId": "t", "lastSeq": 3}}
        assert "metadata" not in ack  # no seq: not part of any thread's stream


class TestGrant:
    def test_grant_without_threads_or_prefixes_allows_every_thread(self) -> None:
        assert Grant(principal="p").allows("anything")

    def test_grant_allows_listed_threads_and_prefixes_only(self) -> None:
        grant = Grant(principal="alice", threads=frozenset({"shared"}), prefixes=("alice/",))
        assert grant.allows("shared")
        assert grant.allows("alice/chat-1")
        assert not grant.allows("bob/chat-1")
        assert not grant.allows("alice")

    def test_grant_with_an_empty_thread_set_allows_nothing(self) -> None:
        assert not Grant(principal="p", threads=frozenset()).allows("t")

    def test_grant_needs_a_principal(self) -> None:
        with pytest.raises(ValueError, match=r"Grant\.principal must be a non-empty str"):
            Grant(principal="")
