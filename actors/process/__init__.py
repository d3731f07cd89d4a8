from ._host import ProcessHost
from ._options import (
    HeartbeatMissed,
    ProcessFault,
    ProcessIsolation,
    WorkerExited,
    WorkerFailed,
    WorkerStartTimeout,
)
from ._recipe import ActorRecipe, MessageSchema, worker_factory
from ._tell_runs import WireForm
from ._wire import RemoteError
from ._worker import ParentRef, parent_ref

__all__ = [
    "ActorRecipe",
    "HeartbeatMissed",
    "MessageSchema",
    "ParentRef",
    "ProcessFault",
    "ProcessHost",
    "ProcessIsolation",
    "RemoteError",
    "WireForm",
    "WorkerExited",
    "WorkerFailed",
    "WorkerStartTimeout",
    "parent_ref",
    "worker_factory",
]
