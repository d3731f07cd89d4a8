from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from actors.chat._detection import DetectionThresholds
from supervisors._exceptions import SupervisorError

if TYPE_CHECKING:
    from pathlib import Path

# `[monitor]` takes exactly the DetectionThresholds fields, each optional (absent: the default). Built from the
# struct itself so a threshold added there is configurable here without a second list to keep in step.
_MonitorTable: Final[type[msgspec.Struct]] = msgspec.defstruct(
    "MonitorTable",
    [(field.name, field.type | None, None) for field in msgspec.structs.fields(DetectionThresholds)],
    kw_only=True,
    forbid_unknown_fields=True,
)


class _ConfigFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Unknown top-level tables are rejected so that a misspelt `[moniter]` is an error, not silent defaults; a
    # subcommand that needs its own table adds it here.
    monitor: _MonitorTable | None = None  # type: ignore[valid-type]


_at_path: Final = re.compile(r"^(?P<rule>.*?) - at `\$\.monitor(?:\.(?P<key>[^`]*))?`$", re.DOTALL)
_unknown: Final = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_rule_of_field: Final = re.compile(r"^(?P<key>[a-z_]+) (?P<rule>must .*)$", re.DOTALL)


class InvalidConfig(SupervisorError, ValueError):
    """A configuration file that cannot be used; the message names the file, the key and the rule.

    :param path: the file.
    :param key: the key at fault (``[monitor] stuck_tool_after``), or None when the file as a whole is.
    :param rule: what is wrong, in words.
    """

    def __init__(self, path: str, key: str | None, rule: str) -> None:
        self.path = path
        self.key = key
        self.rule = rule
        super().__init__(f"{path}: {key}: {rule}" if key is not None else f"{path}: {rule}")


def load_detection_thresholds(path: str | Path) -> DetectionThresholds:
    """Read :class:`DetectionThresholds` from the ``[monitor]`` table of a TOML file.

    Keys are the field names (``stuck_tool_after = 10``, durations in seconds); absent keys keep their defaults,
    and a file without ``[monitor]`` gives the defaults.

    :raises InvalidConfig: when the file cannot be read, is not TOML, has an unknown table or key, or a value of
        the wrong type or out of range; the message names the key and the rule.
    """
    name = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise InvalidConfig(name, None, "no such file") from None
    except OSError as exc:
        raise InvalidConfig(name, None, f"cannot be read: {exc.strerror or exc}") from None
    return parse_detection_thresholds(data, source=name)


def parse_detection_thresholds(data: bytes | str, *, source: str = "<config>") -> DetectionThresholds:
    """Read :class:`DetectionThresholds` from the ``[monitor]`` table of a TOML document.

    :param source: how messages name the document (a file name).
    :raises InvalidConfig: as for :func:`load_detection_thresholds`.
    """
    try:
        config = msgspec.toml.decode(data, type=_ConfigFile)
    except msgspec.ValidationError as exc:
        raise _invalid(source, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidConfig(source, None, f"not valid TOML: {exc}") from None
    if config.monitor is None:
        return DetectionThresholds()
    given: dict[str, Any] = {
        name: value for name in config.monitor.__struct_fields__ if (value := getattr(config.monitor, name)) is not None
    }
    try:
        return DetectionThresholds(**given)
    except ValueError as exc:
        match = _rule_of_field.match(str(exc))
        if match is None:
            raise InvalidConfig(source, "[monitor]", str(exc)) from None
        raise InvalidConfig(source, f"[monitor] {match['key']}", match["rule"]) from None


def _invalid(source: str, message: str) -> InvalidConfig:
    match = _at_path.match(message)
    if match is None:
        unknown = _unknown.match(message)
        if unknown is not None:
            return InvalidConfig(source, None, f"unknown table or key {unknown['key']!r} (known: [monitor])")
        return InvalidConfig(source, None, message)
    rule, key = match["rule"], match["key"]
    unknown = _unknown.match(rule)
    if unknown is not None:
        known = ", ".join(field.name for field in msgspec.structs.fields(DetectionThresholds))
        return InvalidConfig(source, f"[monitor] {unknown['key']}", f"unknown key (known: {known})")
    rule = rule.replace("`", "")
    rule = rule[:1].lower() + rule[1:]
    return InvalidConfig(source, "[monitor]" if key is None else f"[monitor] {key}", rule)
