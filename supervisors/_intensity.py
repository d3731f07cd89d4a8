from __future__ import annotations

from collections import deque

from supervisors._spec import validate_intensity


class RestartWindow:
    """A restart budget: at most ``intensity`` restarts within any ``period`` seconds (OTP's ``add_restart``).

    OTP keeps the restarts no older than ``now - period`` (inclusive), adds ``now`` and fails when more than
    ``intensity`` remain; this does the same, with float seconds where OTP truncates to whole seconds. A
    restart that exceeds the budget is still recorded, as in OTP. Only the newest ``intensity + 1`` restarts
    are kept: older ones can never change a verdict, so memory is O(intensity) however long it runs.

    Pure: the caller passes ``now`` from its monotonic clock (non-decreasing across calls).

    :param intensity: the most restarts allowed within ``period`` (int >= 0; 0 means the first restart fails)
    :param period: the window in seconds (finite, > 0)
    :raises TypeError: when ``intensity`` is not an int or ``period`` is not a number
    :raises ValueError: when ``intensity < 0`` or ``period`` is not finite and positive
    """

    __slots__ = ("_intensity", "_period", "_restarts")

    def __init__(self, intensity: int, period: float) -> None:
        validate_intensity(intensity, period)
        self._intensity = intensity
        self._period = float(period)
        # Oldest on the left; a full deque drops its oldest entry, exactly the one that cannot matter any more.
        self._restarts: deque[float] = deque(maxlen=intensity + 1)

    @property
    def intensity(self) -> int:
        """The most restarts allowed within :attr:`period`."""
        return self._intensity

    @property
    def period(self) -> float:
        """The window in seconds."""
        return self._period

    def add_restart(self, now: float) -> bool:
        """Record one restart at ``now``.

        :param now: the current time in seconds
        :return: ``True`` while the restarts within ``[now - period, now]``, this one included, number at most
            ``intensity``; ``False`` when this restart exceeds the budget (the supervisor gives up)
        :raises ValueError: when ``now`` is earlier than the last recorded restart (the clock is monotonic)
        """
        restarts = self._restarts
        if restarts and now < restarts[-1]:
            raise ValueError(f"now must not go backwards: {now!r} < last restart {restarts[-1]!r}")
        threshold = now - self._period
        while restarts and restarts[0] < threshold:
            restarts.popleft()
        restarts.append(now)
        return len(restarts) <= self._intensity

    def restarts_in_window(self, now: float) -> int:
        """How many recorded restarts lie within ``[now - period, now]``; does not record anything.

        :param now: the current time in seconds
        :return: the count, which saturates at ``intensity + 1`` (all a verdict ever needs)
        """
        threshold = now - self._period
        return sum(1 for restart in self._restarts if threshold <= restart <= now)

    def restarts(self, now: float) -> tuple[float, ...]:
        """The recorded restart times within ``[now - period, now]``, oldest first (for error reports).

        :param now: the current time in seconds
        :return: at most ``intensity + 1`` times
        """
        threshold = now - self._period
        return tuple(restart for restart in self._restarts if threshold <= restart <= now)

    def reset(self) -> None:
        """Forget every recorded restart (e.g. when a detached child is re-attached with a fresh budget)."""
        self._restarts.clear()
