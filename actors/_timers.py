from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import MailboxFull
from ._ref import TimerFire

if TYPE_CHECKING:
    from ._incarnation import Incarnation


class Timer:
    """A pending ``send_after`` or ``send_every``. Cancelled by :meth:`cancel`, or with the instance that set it."""

    __slots__ = ("_fired", "_scope", "interval")

    def __init__(self, interval: float | None) -> None:
        self._scope = anyio.CancelScope()
        self._fired = 0
        #: ``None`` for a one-shot timer
        self.interval = interval

    @property
    def fired(self) -> int:
        """How many times this timer has delivered its message."""
        return self._fired

    @property
    def active(self) -> bool:
        """True until the timer is cancelled or, for a one-shot timer, has fired."""
        return not self._scope.cancel_called and not (self.interval is None and self._fired)

    def cancel(self) -> None:
        """Stop the timer; a message it already queued is still delivered (to the same instance only)."""
        self._scope.cancel()

    async def run(self, incarnation: Incarnation, delay: float, message: Any) -> None:
        ref = incarnation.ref
        with self._scope:
            deadline = anyio.current_time() + delay
            await anyio.sleep_until(deadline)
            _fire(ref, TimerFire(incarnation, message))
            self._fired += 1
            interval = self.interval
            if interval is None:
                return
            # Fixed-rate: the k-th firing is due at delay + k * interval, so handler time never adds drift.
            while True:
                deadline += interval
                await anyio.sleep_until(deadline)
                _fire(ref, TimerFire(incarnation, message))
                self._fired += 1


def _fire(ref: Any, fire: TimerFire) -> None:
    # A timer must never raise into the runtime's task group: under Overflow.REJECT a full mailbox refuses the
    # tick, which the mailbox has already counted as rejected; the timer simply fires again next time.
    with contextlib.suppress(MailboxFull):
        ref.tell(fire)
