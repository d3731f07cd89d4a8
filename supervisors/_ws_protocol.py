from __future__ import annotations

import re
from typing import Annotated, Any, Final

import msgspec

from actors.chat._events import Custom, encode_event

#: Client frames longer than this are answered with an error frame, unread.
MAX_CLIENT_FRAME: Final = 64 * 1024

_ThreadId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class AuthRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``{"auth": {"token": "..."}}``: the first frame of a connection when the app requires a token."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class SubscribeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """``{"subscribe": {"threadId": "t1", "afterSeq": 41}}``: join a thread; with ``afterSeq``, resume after it."""

    thread_id: _ThreadId
    after_seq: Annotated[int, msgspec.Meta(ge=0)] | None = None


class UnsubscribeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """``{"unsubscribe": {"threadId": "t1"}}``: leave a thread."""

    thread_id: _ThreadId


ClientRequest = AuthRequest | SubscribeRequest | UnsubscribeRequest
"""Every request a client may send on ``/ws``."""


class _ClientFrame(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The wire shape is externally tagged ({"subscribe": {...}}), which msgspec does not decode as a union:
    # one optional field per request, and exactly one of them must be present.
    auth: AuthRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: UnsubscribeRequest | None = None


_decoder: Final = msgspec.json.Decoder(_ClientFrame)
_REQUEST_KEYS: Final = ("auth", "subscribe", "unsubscribe")


class BadFrame(ValueError):
    """A client frame that is not a valid request; ``str()`` reads ``$.subscribe.threadId: expected str, got int``.

    :param field: JSON path of the offending field (``$`` when the frame as a whole is at fault)
    :param rule: the rule the frame broke, in words
    """

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


_AT_PATH: Final = re.compile(r"^(?P<rule>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_MISSING: Final = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")
_UNKNOWN: Final = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_QUOTED: Final = re.compile(r"`([^`]*)`")
_MAX_RULE: Final = 200


def _clip(text: str) -> str:
    # msgspec echoes input (unknown keys); a huge key must not become a huge error frame.
    return text if len(text) <= _MAX_RULE else text[: _MAX_RULE - 3] + "..."


def _bad_frame_from(error: msgspec.ValidationError) -> BadFrame:
    match = _AT_PATH.match(str(error))
    assert match is not None  # the pattern matches any string
    rule, path = match["rule"], match["path"] or "$"
    if (missing := _MISSING.match(rule)) is not None:
        return BadFrame(f"{path}.{_clip(missing['name'])}", "missing required field")
    if (unknown := _UNKNOWN.match(rule)) is not None:
        allowed = ", ".join(_REQUEST_KEYS) if path == "$" else "see docs/embedding.md"
        return BadFrame(f"{path}.{_clip(unknown['name'])}", f"unknown field (allowed: {allowed})")
    rule = _QUOTED.sub(r"\1", rule)
    return BadFrame(path, _clip(rule[:1].lower() + rule[1:]))


def decode_client_frame(data: str | bytes) -> ClientRequest:
    """Validate one client frame and return the request it carries.

    :raises BadFrame: when the frame is too large, not JSON, or not exactly one valid request; the error names
        the offending field. Nothing else escapes for any content of ``data``.
    """
    if len(data) > MAX_CLIENT_FRAME:
        raise BadFrame("$", f"frame is over the {MAX_CLIENT_FRAME}-byte limit")
    try:
        frame = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _bad_frame_from(exc) from None
    except msgspec.DecodeError as exc:
        raise BadFrame("$", f"not valid JSON: {_clip(str(exc))}") from None
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise BadFrame("$", "frame is not valid UTF-8") from None
    except RecursionError:
        raise BadFrame("$", "frame is nested too deeply") from None
    present = [request for request in (frame.auth, frame.subscribe, frame.unsubscribe) if request is not None]
    if len(present) != 1:
        raise BadFrame("$", f"exactly one of {', '.join(_REQUEST_KEYS)} is required, got {len(present)}")
    return present[0]


# ---------------------------------------------------------------- server control frames

#: ``CUSTOM`` event names of the frames the front end itself sends (they carry no ``metadata.seq``).
CONNECTED: Final = "agentwatch.connected"
SUBSCRIBED: Final = "agentwatch.subscribed"
UNSUBSCRIBED: Final = "agentwatch.unsubscribed"
ERROR: Final = "agentwatch.error"


def control_frame(name: str, value: dict[str, Any]) -> str:
    """An AG-UI ``CUSTOM`` event frame (so AG-UI clients parse it), as WebSocket text."""
    return encode_event(Custom(name=name, value=value)).decode()


def error_frame(code: str, message: str, *, field: str | None = None) -> str:
    """``{"type":"CUSTOM","name":"agentwatch.error","value":{"code":...,"field":...,"message":...}}``."""
    value: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        value["field"] = field
    return control_frame(ERROR, value)
