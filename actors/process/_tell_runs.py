from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._recipe import MessageSchema

# The messages told to a process-isolated actor cross to its worker in runs: one item per run of messages of one
# type, whose body is the list of their encodings, instead of one item each. A Struct type may also declare a
# WireForm: some of its fields, sent as columns (one list per field) from which the worker rebuilds the messages.
# The parent then encodes a few flat values per message instead of the message's whole tree (the bridge's taps:
# the stamp and the event's JSON frame, not the event struct as well, which the frame already is).

#: Exceptions a rebuild raises for values it cannot make a message of (that message is dropped and logged).
REBUILD_ERRORS: Final[tuple[type[Exception], ...]] = (msgspec.DecodeError, ValueError, TypeError)

_astuple: Final = msgspec.structs.astuple


class WireForm:
    """A compact form in which the parent sends a Struct type to a worker: some of its fields, rebuilt there.

    For a message that carries a value derived from others (a ``StampedEvent`` carries its event and the event's
    JSON frame): a run of such messages crosses as one column per named field, which the parent reads with a few
    C calls per message (no Python code runs per message), and ``rebuild`` makes each message again in the
    worker. Used for plain tells; asks carry their message whole.

    :param message_type: the msgspec Struct type the form is for
    :param fields: the names of its fields that cross, in order
    :param rebuild: called in the worker with one message's values of those fields, as positional arguments in
        that order (decoded as their annotated types), returns the message; it raises ``msgspec.DecodeError``,
        ``ValueError`` or ``TypeError`` for values it cannot make a message of (that message is dropped and
        logged, the rest of its run delivered)
    :raises TypeError: when ``message_type`` is not a Struct type, ``fields`` is not a sequence of str or names a
        field the type does not have, or ``rebuild`` is not callable
    :raises ValueError: when ``fields`` is empty or names a field twice
    """

    __slots__ = ("_columns", "fields", "message_type", "rebuild", "row_type", "wire_type")

    def __init__(self, message_type: type, fields: Sequence[str], rebuild: Callable[..., Any]) -> None:
        if not (isinstance(message_type, type) and issubclass(message_type, msgspec.Struct)):
            raise TypeError(f"WireForm.message_type must be a msgspec Struct type, got {message_type!r}")
        if isinstance(fields, str) or not all(isinstance(name, str) for name in fields):
            raise TypeError(f"WireForm.fields must be a sequence of field names (str), got {fields!r}")
        if not fields:
            raise ValueError("WireForm.fields must name at least one field")
        if len(set(fields)) != len(fields):
            raise ValueError(f"WireForm.fields must name each field once, got {list(fields)}")
        if not callable(rebuild):
            raise TypeError(f"WireForm.rebuild must be callable, got {type(rebuild).__name__}")
        declared = msgspec.structs.fields(message_type)
        position = {field.name: index for index, field in enumerate(declared)}
        missing = [name for name in fields if name not in position]
        if missing:
            raise TypeError(f"WireForm.fields: {message_type.__qualname__} has no field {', '.join(missing)}")
        self.message_type = message_type
        self.fields = tuple(fields)
        self.rebuild = rebuild
        # Where each named field sits in ``msgspec.structs.astuple(message)`` (the declaration order).
        self._columns = tuple(position[name] for name in fields)
        types = [declared[position[name]].type for name in fields]
        #: One message's values, in the order of ``fields``: what the worker checks a row of a malformed run as.
        self.row_type: Any = tuple.__class_getitem__(tuple(types))
        #: What a run crosses as: one list per field.
        self.wire_type: Any = tuple.__class_getitem__(tuple(list[tp] for tp in types))  # type: ignore[valid-type]

    def pack(self, messages: list[Any]) -> list[tuple[Any, ...]]:
        """The columns of a run: for each named field, the messages' values of it, in order (in the parent)."""
        if not messages:
            return [() for _ in self._columns]
        # astuple reads a Struct's slots in C; zip turns the rows into columns in C: no Python code runs per
        # message. The columns left out (the event) are never encoded.
        columns = list(zip(*map(_astuple, messages), strict=True))
        return [columns[index] for index in self._columns]

    def __repr__(self) -> str:
        rebuild = getattr(self.rebuild, "__qualname__", self.rebuild)
        return f"WireForm({self.message_type.__qualname__}, {list(self.fields)}, {rebuild})"


def packers(schema: MessageSchema) -> list[Callable[[list[Any]], Any] | None]:
    """Per wire code of ``schema.accepts``: how the parent packs a run of told messages (None: sent as they are)."""
    forms = schema.wire_forms
    return [form.pack if (form := forms.get(tp)) is not None else None for tp in schema.accepts]


def pack_run(packer: Callable[[list[Any]], Any] | None, messages: list[Any]) -> Any:
    """What crosses for a run of told messages of one type (see :func:`packers`)."""
    return messages if packer is None else packer(messages)


class RunReader:
    """The worker's side: reads the body of a run of tells back into its messages, dropping only the bad ones.

    :param schema: the actor's message schema
    :param hooks: ``ext_hook`` and ``dec_hook`` for the decoders (refs across the boundary)
    """

    __slots__ = ("_elements", "_forms", "_runs")

    def __init__(self, schema: MessageSchema, **hooks: Any) -> None:
        self._runs: list[msgspec.msgpack.Decoder[Any]] = []
        self._elements: list[msgspec.msgpack.Decoder[Any] | None] = []
        self._forms: list[WireForm | None] = []
        for tp in schema.accepts:
            form = schema.wire_forms.get(tp)
            self._forms.append(form)
            if form is None:
                self._runs.append(msgspec.msgpack.Decoder(list[tp], **hooks))  # type: ignore[valid-type]
                self._elements.append(msgspec.msgpack.Decoder(tp, **hooks))
            else:
                self._runs.append(msgspec.msgpack.Decoder(form.wire_type, **hooks))
                self._elements.append(None)

    def read(self, code: int, body: bytes | msgspec.Raw) -> tuple[list[Any], list[str]]:
        """The messages of one run, in order, and why each message that could not be read was dropped.

        A run that decodes as a whole costs one decode; otherwise each of its messages is read on its own, so a
        malformed one costs itself, not its run (unless the run's very shape is broken).
        """
        if not 0 <= code < len(self._runs):
            return [], [f"a run of unknown message code {code}"]
        try:
            decoded: Any = self._runs[code].decode(body)
        except msgspec.DecodeError:
            return self._read_each(code, body)
        form = self._forms[code]
        if form is None:
            return decoded, []
        columns: tuple[list[Any], ...] = decoded
        if len({len(column) for column in columns}) > 1:
            return [], [f"a run of {form.message_type.__qualname__} whose columns differ in length"]
        try:
            return list(map(form.rebuild, *columns)), []
        except REBUILD_ERRORS:
            return self._rebuild_each(form, list(zip(*columns, strict=True)))

    def _read_each(self, code: int, body: bytes | msgspec.Raw) -> tuple[list[Any], list[str]]:
        form = self._forms[code]
        if form is not None:
            try:
                columns = msgspec.msgpack.decode(body)
            except msgspec.DecodeError as exc:
                return [], [f"a run that does not decode: {exc}"]
            name = form.message_type.__qualname__
            if (
                not isinstance(columns, list)
                or len(columns) != len(form.fields)
                or not all(isinstance(column, list) for column in columns)
                or len({len(column) for column in columns}) > 1
            ):
                return [], [f"a run of {name} that is not {len(form.fields)} columns of equal length"]
            return self._rebuild_each(form, list(zip(*columns, strict=True)))
        try:
            parts = msgspec.msgpack.decode(body, type=list[msgspec.Raw])
        except msgspec.DecodeError as exc:
            return [], [f"a run that is not a list: {exc}"]
        element = self._elements[code]
        assert element is not None
        messages: list[Any] = []
        errors: list[str] = []
        for part in parts:
            try:
                messages.append(element.decode(part))
            except msgspec.DecodeError as exc:
                errors.append(str(exc))
        return messages, errors

    @staticmethod
    def _rebuild_each(form: WireForm, rows: list[tuple[Any, ...]]) -> tuple[list[Any], list[str]]:
        messages: list[Any] = []
        errors: list[str] = []
        row_type = form.row_type
        rebuild = form.rebuild
        for row in rows:
            try:
                messages.append(rebuild(*msgspec.convert(row, row_type)))
            except REBUILD_ERRORS as exc:  # msgspec.ValidationError is a DecodeError
                errors.append(f"{form.message_type.__qualname__}: {type(exc).__name__}: {exc}")
        return messages, errors
