from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from actors import MailboxSpec
from actors.process import ActorRecipe, ProcessHost, ProcessIsolation

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._spec import ChildSpec, Shutdown

Isolation = Literal["task", "process"] | ProcessIsolation
"""Where a child runs: ``"task"`` (an actor in the supervisor's event loop), ``"process"`` (an actor in a worker
process of its own, watched by heartbeats, with :class:`ProcessIsolation`'s defaults), or a ``ProcessIsolation``
with other heartbeats and timeouts."""

_DEFAULT_MAILBOX = MailboxSpec()


def process_options(isolation: object) -> ProcessIsolation | None:
    """The process options of an ``isolation`` value, or None when the child runs as a task."""
    if isinstance(isolation, ProcessIsolation):
        return isolation
    if isolation == "process":
        return ProcessIsolation()
    return None


def isolation_problem(isolation: object, start: object, shutdown: float | Shutdown) -> tuple[str, str] | None:
    """Check a ChildSpec's ``isolation`` against its ``start`` and ``shutdown``: ``(field, rule)`` or None.

    A process-isolated child is built in another process, so ``start`` must be an :class:`ActorRecipe` (an
    importable reference plus encodable arguments): a lambda or a closure cannot cross the boundary. Its graceful
    stop (Stop frame, then SIGTERM) must fit in the shutdown timeout, or the supervisor would cancel the host first.
    """
    if isolation != "task" and isolation != "process" and not isinstance(isolation, ProcessIsolation):
        return "isolation", f"must be 'task', 'process' or a ProcessIsolation, got {isolation!r}"
    options = process_options(isolation)
    if options is None:
        return None
    if not isinstance(start, ActorRecipe):
        what = getattr(start, "__qualname__", type(start).__name__)
        return (
            "start",
            "must be an ActorRecipe('package.module:factory', *args) when isolation is 'process': the child is "
            f"built in a worker process, and a lambda or closure cannot cross a process boundary (got {what})",
        )
    if isinstance(shutdown, int | float) and 0 < shutdown < options.graceful_budget:
        return (
            "shutdown",
            f"must leave a process-isolated child its graceful stop: >= stop_timeout + terminate_timeout "
            f"({options.graceful_budget} s), Shutdown.BRUTAL or 0 to kill at once; got {shutdown!r}",
        )
    return None


def child_start(spec: ChildSpec) -> Callable[[], Any]:
    """What a supervisor calls to build the instance behind a child's ref.

    A task-isolated child: its ``start``. A process-isolated child: a :class:`ProcessHost`, the ordinary local actor
    that runs the recipe in a worker process, so the supervisor's strategies, intensity, backoff and detach rules
    apply to the worker unchanged.
    """
    options = process_options(spec.isolation)
    if options is None:
        return spec.start
    recipe = spec.start
    assert isinstance(recipe, ActorRecipe)  # checked by ChildSpec
    mailbox = spec.mailbox if isinstance(spec.mailbox, MailboxSpec) else _DEFAULT_MAILBOX
    handler_timeout = spec.handler_timeout

    def host() -> ProcessHost:
        return ProcessHost(recipe, options, handler_timeout=handler_timeout, mailbox_capacity=mailbox.capacity)

    return host


def instance_handler_timeout(spec: ChildSpec) -> float | None:
    """The handler deadline of the instance behind a child's ref.

    A process host forwards; the spec's deadline applies to the actor's handlers in the worker, where it is kept.
    The host's own deadline is longer: twice that, plus the heartbeat timeout. Its handlers wait for room in the
    outbox and for the answers of asks, which a live worker gives well within it (the worker's own deadline cuts a
    hung handler and reports it first, a stuck worker misses its heartbeats first); so it cuts only a host that is
    itself stuck, such as one a fault injector made hang.
    """
    options = process_options(spec.isolation)
    if options is None or spec.handler_timeout is None:
        return spec.handler_timeout
    return 2 * spec.handler_timeout + options.heartbeat_timeout
