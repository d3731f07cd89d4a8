from ._asgi_ws import Grant, StarletteSink, TokenAuthorizer
from ._backoff import Backoff, BackoffState, CooldownPhase, CooldownState
from ._config import BridgeSettings, ConfigError, RuntimeConfig, SupervisionSettings, load_config
from ._dashboard import RunInFlight
from ._events import SupervisionEventStream, SupervisorEvent, SupervisorEventKind
from ._exceptions import (
    ChildRunning,
    ChildStartError,
    DuplicateChild,
    InvalidChildSpec,
    RestartIntensityExceeded,
    SupervisorError,
    UnknownChild,
)
from ._intensity import RestartWindow
from ._replay import (
    REPORT_VERSION,
    AnomalyRecord,
    InvalidTraceLine,
    JsonReportWriter,
    ReplayReport,
    ReplayStats,
    TableReportWriter,
    TraceReplay,
)
from ._sim_driver import simulate_on_both_backends
from ._sim_intensity import DetachForecast, predict_detaches
from ._sim_presets import FigureChecks
from ._sim_process_faults import ProcessFaultOutcome, inject_into_process_monitor
from ._spec import (
    AutoShutdown,
    ChildSpec,
    Restart,
    Shutdown,
    Strategy,
    should_restart,
    validate_intensity,
    validate_significant,
)
from ._strategies import RestartPlan, auto_shutdown_triggered, restart_plan
from ._supervisor import Supervisor
from ._supervisor_messages import ChildBlockedLoop, ChildCounts, ChildInfo, ChildState, SupervisorHealth
from ._supervisor_ref import SupervisorRef, start_supervisor, supervisor_spec
from ._watchdog import LoopBlock, LoopLagWatchdog, open_loop_watchdog
from .app import Runtime, RuntimeHealth, open_runtime
from .asgi import RuntimeHost, create_app, graceful_shutdown_trigger, runtime_of
from .serve import bind_socket, serve_hypercorn
from .simulate import PRESETS, SimulationSettings, preset_settings, simulate

__all__ = [
    "PRESETS",
    "REPORT_VERSION",
    "AnomalyRecord",
    "AutoShutdown",
    "Backoff",
    "BackoffState",
    "BridgeSettings",
    "ChildBlockedLoop",
    "ChildCounts",
    "ChildInfo",
    "ChildRunning",
    "ChildSpec",
    "ChildStartError",
    "ChildState",
    "ConfigError",
    "CooldownPhase",
    "CooldownState",
    "DetachForecast",
    "DuplicateChild",
    "FigureChecks",
    "Grant",
    "InvalidChildSpec",
    "InvalidTraceLine",
    "JsonReportWriter",
    "LoopBlock",
    "LoopLagWatchdog",
    "ProcessFaultOutcome",
    "ReplayReport",
    "ReplayStats",
    "Restart",
    "RestartIntensityExceeded",
    "RestartPlan",
    "RestartWindow",
    "RunInFlight",
    "Runtime",
    "RuntimeConfig",
    "RuntimeHealth",
    "RuntimeHost",
    "Shutdown",
    "SimulationSettings",
    "StarletteSink",
    "Strategy",
    "SupervisionEventStream",
    "SupervisionSettings",
    "Supervisor",
    "SupervisorError",
    "SupervisorEvent",
    "SupervisorEventKind",
    "SupervisorHealth",
    "SupervisorRef",
    "TableReportWriter",
    "TokenAuthorizer",
    "TraceReplay",
    "UnknownChild",
    "auto_shutdown_triggered",
    "bind_socket",
    "create_app",
    "graceful_shutdown_trigger",
    "inject_into_process_monitor",
    "load_config",
    "open_loop_watchdog",
    "open_runtime",
    "predict_detaches",
    "preset_settings",
    "restart_plan",
    "runtime_of",
    "serve_hypercorn",
    "should_restart",
    "simulate",
    "simulate_on_both_backends",
    "start_supervisor",
    "supervisor_spec",
    "validate_intensity",
    "validate_significant",
]
