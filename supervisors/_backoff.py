from __future__ import annotations

import enum
import math
import random

import msgspec

#: Seconds of tolerance when judging whether a half-open probe stayed up long enough (see ``_probe_passed``).
_PROBE_SLACK = 1e-6


def _require_finite(owner: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{field} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{field} must be finite, got {value!r}")
    return float(value)


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """How long a supervisor waits before restarting a failed child: exponential, capped, jittered.

    The ``k``-th restart of a failure streak waits ``min * 2**k`` seconds, capped at ``max``, then multiplied
    by a factor drawn uniformly from ``[1 - jitter, 1 + jitter]`` and capped at ``max`` again, so every delay
    lies in ``[min * (1 - jitter), max]``. A streak ends (``k`` goes back to 0) once the child has stayed up
    for more than ``reset_after`` seconds.

    :param min: the first delay in seconds (> 0)
    :param max: the cap on every delay in seconds (>= min, finite)
    :param jitter: the relative spread of the random factor (0 <= jitter < 1); it de-synchronises siblings
        that fail together
    :param reset_after: seconds a restarted child must stay up for its next failure to start a new streak
        (> 0)
    :param max_restarts: the most restarts in one streak; the next failure gets no delay (``None``: no limit)
    """

    min: float = 0.1
    max: float = 30.0
    jitter: float = 0.2
    reset_after: float = 60.0
    max_restarts: int | None = None

    def __post_init__(self) -> None:
        low = _require_finite("Backoff", "min", self.min)
        high = _require_finite("Backoff", "max", self.max)
        jitter = _require_finite("Backoff", "jitter", self.jitter)
        reset_after = _require_finite("Backoff", "reset_after", self.reset_after)
        if low <= 0:
            raise ValueError(f"Backoff.min must be > 0, got {self.min!r}")
        if high < low:
            raise ValueError(f"Backoff.max must be >= Backoff.min ({self.min!r}), got {self.max!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"Backoff.jitter must satisfy 0 <= jitter < 1, got {self.jitter!r}")
        if reset_after <= 0:
            raise ValueError(f"Backoff.reset_after must be > 0, got {self.reset_after!r}")
        if self.max_restarts is not None:
            if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
                raise TypeError(f"Backoff.max_restarts must be an int or None, got {type(self.max_restarts).__name__}")
            if self.max_restarts < 0:
                raise ValueError(f"Backoff.max_restarts must be >= 0 or None, got {self.max_restarts}")


class BackoffState:
    """The backoff of one child: call :meth:`next_delay` once per failure, with the current time.

    Pure and deterministic given ``rng``: it reads no clock and starts no task; the caller passes ``now`` (the
    supervisor's monotonic clock, non-decreasing) and sleeps for the returned delay itself.

    :param backoff: the configuration
    :param rng: the source of jitter; pass a seeded ``random.Random`` for reproducible delays (default: a
        fresh, unseeded one)
    """

    __slots__ = ("_attempts", "_backoff", "_base", "_rng", "_up_since")

    def __init__(self, backoff: Backoff, rng: random.Random | None = None) -> None:
        self._backoff = backoff
        self._rng = rng if rng is not None else random.Random()
        self._base = backoff.min
        self._attempts = 0
        # When the child is due back up (the last failure plus its delay): "stayed up for reset_after" is
        # measured from here, not from the failure, so a long delay is never mistaken for a quiet period.
        self._up_since: float | None = None

    @property
    def backoff(self) -> Backoff:
        """The configuration."""
        return self._backoff

    @property
    def attempts(self) -> int:
        """Restarts handed out in the current failure streak."""
        return self._attempts

    def next_delay(self, now: float) -> float | None:
        """Record one failure at ``now`` and return how long to wait before restarting the child.

        If the child had stayed up for more than ``reset_after`` seconds since its last restart, the streak
        starts over at ``min`` first.

        :param now: the current time in seconds (the supervisor's clock)
        :return: the delay in seconds, within ``[min * (1 - jitter), max]``; ``None`` when the streak has
            already used ``max_restarts`` restarts (the caller gives up: escalates or detaches the child).
            Calling again before the streak ends keeps returning ``None``.
        """
        config = self._backoff
        if self._up_since is not None and now - self._up_since > config.reset_after:
            self.reset()
        if config.max_restarts is not None and self._attempts >= config.max_restarts:
            return None
        delay = self._base
        if config.jitter:
            delay *= self._rng.uniform(1.0 - config.jitter, 1.0 + config.jitter)
        delay = min(delay, config.max)
        self._attempts += 1
        # Doubling a capped base (rather than computing min * 2**k) cannot overflow however long the streak.
        self._base = min(self._base * 2.0, config.max)
        self._up_since = now + delay
        return delay

    def reset(self) -> None:
        """Forget the current streak: the next failure waits about ``min`` again (after a manual restart)."""
        self._base = self._backoff.min
        self._attempts = 0
        self._up_since = None


class CooldownPhase(enum.Enum):
    """Where a non-critical child is in its detach / re-attach cycle (circuit-breaker states)."""

    #: Running normally (closed): never detached, or its last probe passed.
    ATTACHED = "attached"
    #: Stopped after exhausting its own restart budget (open); waiting for its cool-down to pass.
    DETACHED = "detached"
    #: Re-attached after a cool-down but not yet up for ``stable_after`` seconds (half-open).
    PROBING = "probing"


class CooldownState:
    """The cool-down of one non-critical child between detach and re-attach, circuit-breaker style.

    The first detach waits ``initial`` seconds. After the cool-down the supervisor re-attaches the child as a
    half-open probe (:meth:`on_reattach`); a probe that is detached again before it has stayed up for
    ``stable_after`` seconds failed, and doubles the cool-down (capped at ``maximum``); a probe that stays up
    that long passed, and the cool-down goes back to ``initial``. During a probe the supervisor is expected to
    detach again on the child's first failure, instead of spending a fresh restart budget on it.

    Pure: the caller passes ``now`` (its monotonic clock) and schedules the re-attach itself.

    :param initial: the first cool-down in seconds (> 0); ``ChildSpec.detach_cooldown``
    :param maximum: the cap on the cool-down in seconds (>= initial); ``ChildSpec.max_detach_cooldown``
    :param stable_after: seconds a re-attached child must stay up for its probe to pass (>= 0);
        ``ChildSpec.period``
    :raises ValueError: when a value breaks the rule above
    """

    __slots__ = (
        "_cooldown",
        "_initial",
        "_maximum",
        "_phase",
        "_probe_started",
        "_reattach_at",
        "_stable_after",
    )

    def __init__(self, initial: float, maximum: float, *, stable_after: float) -> None:
        initial = _require_finite("CooldownState", "initial", initial)
        maximum = _require_finite("CooldownState", "maximum", maximum)
        stable_after = _require_finite("CooldownState", "stable_after", stable_after)
        if initial <= 0:
            raise ValueError(f"CooldownState.initial must be > 0, got {initial!r}")
        if maximum < initial:
            raise ValueError(f"CooldownState.maximum must be >= initial ({initial!r}), got {maximum!r}")
        if stable_after < 0:
            raise ValueError(f"CooldownState.stable_after must be >= 0, got {stable_after!r}")
        self._initial = initial
        self._maximum = maximum
        self._stable_after = stable_after
        self._cooldown = initial
        self._phase = CooldownPhase.ATTACHED
        self._reattach_at: float | None = None
        self._probe_started: float | None = None

    @property
    def phase(self) -> CooldownPhase:
        """Where the child is in the cycle."""
        return self._phase

    @property
    def cooldown(self) -> float:
        """The cool-down in seconds the last detach used (``initial`` before the first, and after a pass)."""
        return self._cooldown

    @property
    def reattach_at(self) -> float | None:
        """When the detached child is due to be re-attached; ``None`` unless it is detached."""
        return self._reattach_at

    def on_detach(self, now: float) -> float:
        """Record that the child was detached at ``now``; return when to re-attach it.

        :param now: the current time in seconds
        :return: the re-attach time, ``now + cooldown``
        :raises RuntimeError: when the child is already detached
        """
        if self._phase is CooldownPhase.DETACHED:
            raise RuntimeError("on_detach called for a child that is already detached")
        if self._phase is CooldownPhase.PROBING:
            if self._probe_passed(now):
                self._cooldown = self._initial
            else:
                self._cooldown = min(self._cooldown * 2.0, self._maximum)
        self._phase = CooldownPhase.DETACHED
        self._probe_started = None
        self._reattach_at = now + self._cooldown
        return self._reattach_at

    def on_reattach(self, now: float) -> None:
        """Record that the child was re-attached at ``now``: its half-open probe starts.

        :param now: the current time in seconds (may be earlier than :attr:`reattach_at` for a manual restart)
        :raises RuntimeError: when the child is not detached
        """
        if self._phase is not CooldownPhase.DETACHED:
            raise RuntimeError(f"on_reattach called for a child that is {self._phase.value}, not detached")
        self._phase = CooldownPhase.PROBING
        self._probe_started = now
        self._reattach_at = None

    @property
    def probe_due(self) -> float | None:
        """When the running half-open probe will have stayed up ``stable_after`` seconds; ``None`` if none runs."""
        started = self._probe_started
        return None if started is None else started + self._stable_after

    def probe_passed(self, now: float) -> bool:
        """Close the probe if the child has stayed up for ``stable_after`` seconds by ``now``.

        :param now: the current time in seconds
        :return: ``True`` on the call that closes the probe (the cool-down is back to ``initial`` and the phase
            is ``ATTACHED``); ``False`` otherwise, including when there is no probe running
        """
        if self._phase is not CooldownPhase.PROBING or not self._probe_passed(now):
            return False
        self._phase = CooldownPhase.ATTACHED
        self._probe_started = None
        self._cooldown = self._initial
        return True

    def reset(self) -> None:
        """Back to attached with the initial cool-down (e.g. after the child was deleted and added again)."""
        self._phase = CooldownPhase.ATTACHED
        self._cooldown = self._initial
        self._reattach_at = None
        self._probe_started = None

    def _probe_passed(self, now: float) -> bool:
        # A microsecond of slack: the check is timed to fire exactly ``stable_after`` after the re-attach, and
        # ``(t + d) - t`` may come out a hair under ``d`` in floating point (863.785 - 853.78 < 10.005).
        started = self._probe_started
        return started is not None and now - started >= self._stable_after - _PROBE_SLACK
