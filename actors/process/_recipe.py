from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgspec
import msgspec.inspect

from actors._ref import ActorRef

from ._tell_runs import WireForm

F = TypeVar("F", bound=Callable[..., Any])

_SCHEMA_ATTRIBUTE: Final = "__agentwatch_schema__"
_ARGS_ENCODER: Final = msgspec.msgpack.Encoder()


class MessageSchema:
    """The messages that cross the process boundary for one actor type, and the reply type of each ask.

    A worker decodes what it receives by type: each message type listed here gets a code (its index), so the wire
    carries the code and the message's own encoding, and the receiving side decodes it as exactly that type (a
    ``StampedEvent`` arrives as a ``StampedEvent``, with its nested event, not as a dict).

    :param accepts: the message types the actor may be told or asked from the parent (msgspec-encodable types,
        usually Structs); anything else told to its ref is dropped as a dead letter (reason ``not_in_schema``)
    :param replies: request type -> reply type, for the requests that are asks: the host waits for their reply and
        returns it, decoded as that type (a ``list[X]`` or any type msgspec decodes works). An ask of a type not
        listed here is forwarded as a tell and answered ``None`` at once
    :param sends: the message types the actor may tell or ask actors of the parent system (through
        :func:`parent_ref`)
    :param send_replies: request type -> reply type for the actor's asks to the parent (undeclared: decoded untyped)
    :param wire_forms: compact forms in which types of ``accepts`` are told to the worker (see :class:`WireForm`);
        a type without one crosses whole
    :raises TypeError: when a type is not a msgspec-decodable type, or a wire form does not fit its type
    :raises ValueError: when a type is listed twice, a reply or a wire form is declared for a type not in
        accepts/sends, a wire form for a type that is asked (in ``replies``), or two wire forms for one type
    """

    __slots__ = ("_accept_codes", "_send_codes", "accepts", "replies", "send_replies", "sends", "wire_forms")

    def __init__(
        self,
        *,
        accepts: Sequence[type],
        replies: Mapping[type, Any] | None = None,
        sends: Sequence[type] = (),
        send_replies: Mapping[type, Any] | None = None,
        wire_forms: Sequence[WireForm] = (),
    ) -> None:
        self.accepts = tuple(accepts)
        self.replies = dict(replies or {})
        self.sends = tuple(sends)
        self.send_replies = dict(send_replies or {})
        forms = tuple(wire_forms)
        for form in forms:
            if not isinstance(form, WireForm):
                raise TypeError(f"MessageSchema.wire_forms must hold WireForms, got {type(form).__name__}")
        #: Message type -> its WireForm (see :class:`WireForm`).
        self.wire_forms = {form.message_type: form for form in forms}
        if len(self.wire_forms) != len(forms):
            raise ValueError("MessageSchema.wire_forms has two forms for one type")
        for field, types in (("accepts", self.accepts), ("sends", self.sends)):
            for tp in types:
                _require_decodable(f"MessageSchema.{field}", tp)
                if types.count(tp) > 1:
                    raise ValueError(f"MessageSchema.{field} lists {tp.__qualname__} twice")
        for field, listed, mapping in (
            ("replies", self.accepts, self.replies),
            ("send_replies", self.sends, self.send_replies),
        ):
            for request, reply in mapping.items():
                if request not in listed:
                    owner = "accepts" if field == "replies" else "sends"
                    raise ValueError(
                        f"MessageSchema.{field} declares a reply to {getattr(request, '__qualname__', request)!r}, "
                        f"which is not in {owner}"
                    )
                _require_decodable(f"MessageSchema.{field}[{request.__qualname__}]", reply)
        for form in self.wire_forms.values():
            name = form.message_type.__qualname__
            if form.message_type not in self.accepts:
                raise ValueError(f"MessageSchema.wire_forms has a form for {name}, which is not in accepts")
            if form.message_type in self.replies:
                raise ValueError(
                    f"MessageSchema.wire_forms has a form for {name}, which is asked (in replies): a wire form is "
                    "for told messages, an ask carries its message whole"
                )
            _require_decodable(f"MessageSchema.wire_forms[{name}]", form.wire_type)
        self._accept_codes = {tp: code for code, tp in enumerate(self.accepts)}
        self._send_codes = {tp: code for code, tp in enumerate(self.sends)}

    @property
    def accept_codes(self) -> dict[type, int]:
        """Type -> wire code of every type in ``accepts`` (read-only by convention)."""
        return self._accept_codes

    def accept_code(self, message: object) -> int | None:
        """The wire code of a message the actor accepts, or None when its type is not in ``accepts``."""
        return self._accept_codes.get(type(message))

    def send_code(self, message: object) -> int | None:
        """The wire code of a message the actor may send to the parent, or None when its type is not in ``sends``."""
        return self._send_codes.get(type(message))

    def __repr__(self) -> str:
        names = ", ".join(tp.__qualname__ for tp in self.accepts)
        return f"<MessageSchema accepts=({names})>"


def _require_decodable(field: str, tp: Any) -> None:
    try:
        info = msgspec.inspect.type_info(tp)
    except (TypeError, NameError) as exc:
        raise TypeError(f"{field}: {tp!r} is not a type msgspec can decode ({exc})") from None
    for custom in _custom_types(info, set()):
        # ActorRefs cross as names (a MessagePack extension); any other class would not decode on the other side.
        if not issubclass(custom, ActorRef):
            raise TypeError(
                f"{field}: {getattr(tp, '__qualname__', tp)!r} contains {custom.__qualname__}, which msgspec "
                "cannot encode: messages crossing a process boundary hold msgspec types (and ActorRefs) only"
            )


def _custom_types(node: msgspec.inspect.Type, seen: set[type]) -> Iterator[type]:
    """Every class in a msgspec type tree that msgspec does not know how to encode (its ``CustomType`` leaves)."""
    if isinstance(node, msgspec.inspect.CustomType):
        yield node.cls
        return
    owner = getattr(node, "cls", None)
    if isinstance(owner, type):
        if owner in seen:
            return  # a recursive type: already walked
        seen.add(owner)
    for field in getattr(node, "fields", ()):
        yield from _custom_types(field.type, seen)
    for name in ("item_type", "key_type", "value_type", "type"):
        child = getattr(node, name, None)
        if isinstance(child, msgspec.inspect.Type):
            yield from _custom_types(child, seen)
    for name in ("types", "item_types"):
        for child in getattr(node, name, ()):
            yield from _custom_types(child, seen)


def worker_factory(schema: MessageSchema) -> Callable[[F], F]:
    """Mark a module-level function (or Actor class) as buildable in a worker process, with its message schema.

    The function builds the actor; its parameters must be annotated with msgspec-decodable types, since the worker
    decodes the :class:`ActorRecipe`'s arguments by those annotations.

    :param schema: the message types the built actor exchanges with the parent
    """
    if not isinstance(schema, MessageSchema):
        raise TypeError(f"worker_factory takes a MessageSchema, got {type(schema).__name__}")

    def mark(factory: F) -> F:
        setattr(factory, _SCHEMA_ATTRIBUTE, schema)
        return factory

    return mark


def resolve_target(target: str) -> tuple[Callable[..., Any], MessageSchema]:
    """Import ``"package.module:qualified.name"`` and return the factory and its schema.

    :raises ValueError: when the reference is malformed, cannot be imported, or names no ``@worker_factory``
    """
    if not isinstance(target, str):
        raise TypeError(f"ActorRecipe.target must be a str 'package.module:callable', got {type(target).__name__}")
    module_name, colon, qualname = target.partition(":")
    if not colon or not module_name or not qualname:
        raise ValueError(f"ActorRecipe.target must be 'package.module:callable', got {target!r}")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"ActorRecipe.target {target!r} cannot be imported: {exc}") from None
    schema = getattr(found, _SCHEMA_ATTRIBUTE, None)
    if not callable(found) or not isinstance(schema, MessageSchema):
        raise ValueError(
            f"ActorRecipe.target {target!r} must name a callable decorated with @worker_factory(schema), "
            f"got {type(found).__name__}"
        )
    return found, schema


def argument_types(factory: Callable[..., Any], count: int, target: str) -> tuple[Any, ...]:
    """The annotated types of the first ``count`` positional parameters of ``factory`` (``Any`` if unannotated).

    :raises ValueError: when ``factory`` takes fewer positional arguments, or an annotation does not resolve
    """
    signature = inspect.signature(factory)
    positional = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    if count > len(positional) and not any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        raise ValueError(f"ActorRecipe.args: {target} takes {len(positional)} positional arguments, got {count}")
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except NameError as exc:
        raise ValueError(
            f"ActorRecipe.target {target}: a parameter annotation does not resolve at run time ({exc}); import the "
            "type outside `if TYPE_CHECKING:`, since the worker decodes the arguments by their annotations"
        ) from None
    return tuple(hints.get(parameter.name, Any) for parameter in positional[:count])


class ActorRecipe:
    """How to build an actor anywhere: an importable factory reference plus msgspec-encodable arguments.

    A lambda or a closure cannot cross a process boundary; a recipe can. Calling it builds the actor in this
    process (so the same ChildSpec runs with ``isolation="task"`` too); a worker process imports the same factory
    and decodes the arguments by the factory's annotations.

    :param target: ``"package.module:callable"``, a function or Actor class decorated with :func:`worker_factory`
    :param args: positional arguments, each encodable with MessagePack and decodable as its parameter's annotation
    :raises ValueError: when the target does not import or is not a ``@worker_factory``, or an argument does not
        survive the round trip through MessagePack as its annotated type
    :raises TypeError: when ``target`` is not a str
    """

    __slots__ = ("args", "encoded_args", "schema", "target")

    def __init__(self, target: str, *args: Any) -> None:
        factory, schema = resolve_target(target)
        types = argument_types(factory, len(args), target)
        try:
            encoded = _ARGS_ENCODER.encode(args)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValueError(f"ActorRecipe.args of {target} must be msgspec-encodable (MessagePack): {exc}") from None
        try:
            decode_args(encoded, types)
        except msgspec.ValidationError as exc:
            raise ValueError(
                f"ActorRecipe.args of {target} do not decode as the factory's annotations {types}: {exc}"
            ) from None
        self.target = target
        self.args = args
        self.encoded_args = encoded
        self.schema = schema

    def __call__(self) -> Any:
        """Build the actor in this process, with the original argument objects."""
        factory, _ = resolve_target(self.target)
        return factory(*self.args)

    def __repr__(self) -> str:
        return f"ActorRecipe({self.target!r}, {len(self.args)} args)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActorRecipe):
            return NotImplemented
        return self.target == other.target and self.encoded_args == other.encoded_args

    def __hash__(self) -> int:
        return hash((self.target, self.encoded_args))


def decode_args(encoded: bytes, types: tuple[Any, ...]) -> tuple[Any, ...]:
    """Decode recipe arguments as the factory's parameter types (what the worker does before calling it)."""
    if not types:
        return ()
    decoded: tuple[Any, ...] = msgspec.msgpack.decode(encoded, type=tuple[types])  # type: ignore[valid-type]
    return decoded
