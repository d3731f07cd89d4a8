from __future__ import annotations

import itertools

import anyio
import msgspec


class FaultRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the fault history.

    :param at: loop time in seconds (virtual in tests and simulations)
    :param target: the actor, client or component the line is about
    :param fault: the fault's name (``crash``, ``slow_reader``, ...) or ``supervision`` for observed tree events
    :param action: ``inject``, ``trigger`` (the fault took effect once), ``effect`` (a consequence observed: a
        restart, a close code, a resume) or ``revert``
    :param injection: which injection the line belongs to (0 for lines that belong to none)
    """

    at: float
    target: str
    fault: str
    action: str
    detail: str = ""
    injection: int = 0


class FaultHistory:
    """Append-only record of every injection, its triggers, the effects observed and its revert."""

    def __init__(self) -> None:
        self.records: list[FaultRecord] = []
        self._injections = itertools.count(1)

    def __len__(self) -> int:
        return len(self.records)

    def new_injection(self) -> int:
        """A fresh injection id, to tie an injection's lines together."""
        return next(self._injections)

    def record(
        self,
        target: str,
        fault: str,
        action: str,
        detail: str = "",
        *,
        at: float | None = None,
        injection: int = 0,
    ) -> FaultRecord:
        """Append one record, stamped with the current loop time unless ``at`` is given.

        :raises ValueError: when ``action`` is not one of inject, trigger, effect, revert
        """
        if action not in _ACTIONS:
            raise ValueError(f"action must be one of {', '.join(sorted(_ACTIONS))}, got {action!r}")
        record = FaultRecord(
            at=self._now() if at is None else at,
            target=target,
            fault=fault,
            action=action,
            detail=detail,
            injection=injection,
        )
        self.records.append(record)
        return record

    def _now(self) -> float:
        try:
            return anyio.current_time()
        except RuntimeError:
            # Outside any event loop (a fixture's teardown reverting what a test left applied): the history's own
            # latest time, so that it never goes backwards.
            return self.records[-1].at if self.records else 0.0

    def select(
        self, *, action: str | None = None, fault: str | None = None, target: str | None = None
    ) -> list[FaultRecord]:
        """The records matching every filter given, in order."""
        return [
            r
            for r in self.records
            if (action is None or r.action == action)
            and (fault is None or r.fault == fault)
            and (target is None or r.target == target)
        ]

    def triggers(self, fault: str | None = None, target: str | None = None) -> list[FaultRecord]:
        """The ``trigger`` records, optionally of one fault kind and/or one target."""
        return self.select(action="trigger", fault=fault, target=target)

    def effects(self, fault: str | None = None, target: str | None = None) -> list[FaultRecord]:
        """The ``effect`` records, optionally of one fault kind and/or one target."""
        return self.select(action="effect", fault=fault, target=target)

    def count(self, fault: str | None = None, target: str | None = None) -> int:
        """How many times a fault took effect."""
        return len(self.triggers(fault, target))

    def to_jsonl(self) -> bytes:
        """The history as JSON lines (one record per line), for a test report or a bug attachment."""
        return b"".join(_encoder.encode(record) + b"\n" for record in self.records)


_ACTIONS = frozenset({"inject", "trigger", "effect", "revert"})
_encoder = msgspec.json.Encoder()
