from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from actors import MailboxSpec, Overflow
from actors.chat._health import HealthThresholds
from actors.chat._monitor import MonitorConfig
from actors.process import ProcessIsolation

if TYPE_CHECKING:
    from actors.chat._detection import DetectionThresholds


def _positive(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive number, got {value!r}")


class BridgeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The bridge's data settings (what a TOML file may set; hooks such as ``authorize`` are passed in code)."""

    replay_capacity: int = 1024
    replay_max_age: float = 300.0
    writer_queue_capacity: int = 256
    slow_consumer_after: float = 5.0
    coalesce_at: int | None = 32
    tick_interval: float = 0.1
    health_window: float = 10.0
    frame_kind: Literal["text", "bytes"] = "text"
    thresholds: HealthThresholds = msgspec.field(default_factory=HealthThresholds)
    mailbox_capacity: int = 100_000
    tap_shed_at: float | None = 0.5


class SupervisionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Restart budgets of the application tree.

    :param root_intensity: restarts of the bridge the root tolerates within ``root_period`` before it gives up
    :param monitoring_intensity: restarts of the monitoring branch within ``monitoring_period`` before it is
        detached (it never escalates: ``critical=False``)
    :param monitor_intensity: restarts of the monitor within ``monitor_period`` before the branch itself fails
    :param detach_cooldown: first cool-down before a detached monitoring branch is re-attached (doubles after a
        failed probe, up to ``max_detach_cooldown``)
    :param monitor_handler_timeout: a monitor handler running longer is cancelled and counted as a failure (hang)
    """

    root_intensity: int = 3
    root_period: float = 5.0
    monitoring_intensity: int = 3
    monitoring_period: float = 30.0
    monitor_intensity: int = 20
    monitor_period: float = 10.0
    detach_cooldown: float = 30.0
    max_detach_cooldown: float = 600.0
    monitor_handler_timeout: float = 5.0
    sink_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("root_intensity", "monitoring_intensity", "monitor_intensity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"supervision.{name} must be an int >= 0, got {value!r}")
        for name in (
            "root_period",
            "monitoring_period",
            "monitor_period",
            "detach_cooldown",
            "max_detach_cooldown",
            "monitor_handler_timeout",
            "sink_timeout",
        ):
            _positive("supervision", name, getattr(self, name))
        if self.max_detach_cooldown < self.detach_cooldown:
            raise ValueError(
                f"supervision.max_detach_cooldown must be >= detach_cooldown ({self.detach_cooldown}), "
                f"got {self.max_detach_cooldown}"
            )


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything :func:`open_runtime` needs, in one struct; loadable from TOML with :func:`load_config`.

    :param monitor_mailbox: the monitor's mailbox capacity; the bridge's taps beyond it are dropped and counted
    :param monitor_lifecycle_reserve: the fraction of ``monitor_mailbox`` (0 <= f < 1) kept for the bridge's
        lifecycle taps (``RUN_*``, ``TOOL_CALL_*``): other senders, and content taps, see a mailbox that much
        smaller, so that a flood of other messages cannot make the monitor miss a run or tool-call boundary
    :param monitor_isolation: where the monitor runs: ``"task"`` (an actor in the same event loop) or
        ``"process"`` (a worker process of its own: a monitor that spins, blocks or crashes cannot touch the bridge's
        event loop; it is restarted, and rebuilt from the replay rings, like a task monitor)
    :param monitor_process: the heartbeats, stop timeouts and CPU priority of the monitor's worker process
        (``"process"`` only); by default it runs 10 nice levels below the bridge's process
    """

    bridge: BridgeSettings = msgspec.field(default_factory=BridgeSettings)
    monitor: MonitorConfig = msgspec.field(default_factory=MonitorConfig)
    supervision: SupervisionSettings = msgspec.field(default_factory=SupervisionSettings)
    monitor_mailbox: int = 100_000
    monitor_lifecycle_reserve: float = 0.25
    monitor_isolation: Literal["task", "process"] = "task"
    monitor_process: ProcessIsolation = msgspec.field(default_factory=lambda: ProcessIsolation(nice=10))

    def __post_init__(self) -> None:
        if (
            isinstance(self.monitor_mailbox, bool)
            or not isinstance(self.monitor_mailbox, int)
            or self.monitor_mailbox < 1
        ):
            raise ValueError(f"monitor_mailbox must be an int >= 1, got {self.monitor_mailbox!r}")
        reserve = self.monitor_lifecycle_reserve
        if isinstance(reserve, bool) or not isinstance(reserve, int | float) or not 0 <= reserve < 1:
            raise ValueError(f"monitor_lifecycle_reserve must be a number >= 0 and < 1, got {reserve!r}")

    @property
    def monitor_mailbox_spec(self) -> MailboxSpec:
        """The monitor's mailbox: ``monitor_mailbox`` slots, drop-newest, with the lifecycle taps' reserved lane."""
        return MailboxSpec(
            capacity=self.monitor_mailbox,
            overflow=Overflow.DROP_NEWEST,
            reserved=min(self.monitor_mailbox - 1, int(self.monitor_mailbox * self.monitor_lifecycle_reserve)),
        )


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key and the rule."""


def load_config(source: str | Path | bytes) -> RuntimeConfig:
    """Read a RuntimeConfig from a TOML file (a path) or TOML text (bytes).

    Unknown keys are errors (a typo must not be silently ignored).

    :raises ConfigError: naming the key at fault and the rule, e.g. ``$.monitor.thresholds.stuck_tool_after``
    """
    if isinstance(source, bytes):
        data, where = source, "<config>"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
        where = str(path)
    try:
        return msgspec.toml.decode(data, type=RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc


def thresholds_with(base: DetectionThresholds, **overrides: float | None) -> DetectionThresholds:
    """A copy of ``base`` with the given thresholds replaced (``None`` keeps the base value)."""
    changes = {name: value for name, value in overrides.items() if value is not None}
    return msgspec.structs.replace(base, **changes) if changes else base
