from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any

import msgspec

logger = logging.getLogger("agentwatch.actors.deadletters")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One message that no actor will handle: whom it was for, why, and what it was (by type and repr)."""

    recipient: str
    reason: str
    message_type: str
    message: str


class DeadLetterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Dead-letter counts by reason, and the most recent sample."""

    total: int
    by_reason: dict[str, int]
    sample: tuple[DeadLetter, ...]


class DeadLetters:
    """Counts every message that will never be handled, by reason, and keeps a bounded sample of the latest ones.

    Reasons used by the runtime: ``stopped`` (tell to a stopped actor), ``detached`` (tell to a detached child),
    ``late_reply`` (an ask reply after the asker gave up), ``stale_timer`` (a timer of a replaced instance).
    Overflow drops are counted by the mailbox that dropped them, not here.
    """

    __slots__ = ("_by_reason", "_sample")

    def __init__(self, sample_size: int = 100) -> None:
        if sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {sample_size}")
        self._by_reason: Counter[str] = Counter()
        self._sample: deque[DeadLetter] = deque(maxlen=sample_size)

    def record(self, recipient: str, reason: str, message: Any) -> None:
        """Count one dead letter and keep it in the sample.

        :param recipient: the name of the actor it was meant for
        :param reason: why it is dead (see the class docstring)
        :param message: the message itself; only its type and a short repr are kept
        """
        self._by_reason[reason] += 1
        if self._sample.maxlen:
            text = repr(message)
            if len(text) > 200:
                text = text[:197] + "..."
            self._sample.append(
                DeadLetter(recipient=recipient, reason=reason, message_type=type(message).__name__, message=text)
            )
        logger.debug("dead letter to %s (%s): %s", recipient, reason, type(message).__name__)

    def count(self, reason: str | None = None) -> int:
        """Return how many dead letters were recorded, for one reason or in all."""
        if reason is None:
            return sum(self._by_reason.values())
        return self._by_reason[reason]

    def statistics(self) -> DeadLetterStatistics:
        """Return a frozen snapshot."""
        return DeadLetterStatistics(
            total=sum(self._by_reason.values()), by_reason=dict(self._by_reason), sample=tuple(self._sample)
        )
