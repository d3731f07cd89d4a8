import logging

from ._actor import Actor
from ._clock import Clock
from ._deadletters import DeadLetter, DeadLetters, DeadLetterStatistics
from ._exceptions import (
    ActorError,
    ActorFailed,
    ActorNameTaken,
    ActorNotFound,
    ActorStartError,
    ActorStopped,
    AskTimeout,
    MailboxFull,
)
from ._incarnation import HandlerTimeout
from ._mailbox import MailboxSpec, MailboxStatistics, Overflow
from ._message import ExitKind, ExitReason, Message, Terminated
from ._ref import ActorRef, ActorStatistics, Interceptor, RefState
from ._system import ActorSystem, open_actor_system
from ._timers import Timer
from ._virtual_time import VirtualTimeEventLoop, virtual_time_backend

# Library logging: records go to whatever the application configures, never to stderr by default.
logging.getLogger("agentwatch").addHandler(logging.NullHandler())

__all__ = [
    "Actor",
    "ActorError",
    "ActorFailed",
    "ActorNameTaken",
    "ActorNotFound",
    "ActorRef",
    "ActorStartError",
    "ActorStatistics",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Clock",
    "DeadLetter",
    "DeadLetterStatistics",
    "DeadLetters",
    "ExitKind",
    "ExitReason",
    "HandlerTimeout",
    "Interceptor",
    "MailboxFull",
    "MailboxSpec",
    "MailboxStatistics",
    "Message",
    "Overflow",
    "RefState",
    "Terminated",
    "Timer",
    "VirtualTimeEventLoop",
    "open_actor_system",
    "virtual_time_backend",
]
