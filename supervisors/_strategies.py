from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from supervisors._exceptions import DuplicateChild, UnknownChild
from supervisors._spec import AutoShutdown, Restart, Strategy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class RestartPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a supervisor does after one child failed and is to be restarted.

    Carry it out in field order: stop ``stop`` (each with its own shutdown), forget ``remove``, then start
    ``start`` one by one. One failure charges one restart to the intensity, however many siblings the plan
    restarts (OTP's ``add_restart`` runs once per failure); siblings in ``remove`` consume nothing.

    :param failed: the child whose failure this plan answers; it has exited already, so it is never in
        ``stop``
    :param stop: the running siblings to stop, in reverse start order
    :param start: the children to start, in start order (the failed child first among them)
    :param remove: stopped siblings that are ``TEMPORARY``: they are removed, never restarted (OTP rule)
    """

    failed: str
    stop: tuple[str, ...]
    start: tuple[str, ...]
    remove: tuple[str, ...] = ()


def restart_plan(
    strategy: Strategy,
    children_in_start_order: Sequence[str],
    failed: str,
    *,
    restart_types: Mapping[str, Restart] | None = None,
) -> RestartPlan:
    """Plan the restart that ``strategy`` calls for when ``failed`` has failed and is to be restarted.

    Call it only when the failed child is to be restarted (see ``should_restart``): a child that is not
    restarted affects no sibling. OTP stops and restarts every sibling the strategy names, running or not;
    pass the ids the supervisor holds, and treat stopping a child that is not running as a no-op.

    :param strategy: the supervisor's restart strategy
    :param children_in_start_order: the supervisor's children, in start order
    :param failed: the id of the child that failed
    :param restart_types: every child's restart type, to move ``TEMPORARY`` siblings from ``start`` to
        ``remove``; ``None`` restarts every sibling that is stopped
    :return: the plan; ``ONE_FOR_ONE`` stops nothing and starts ``failed``; ``ONE_FOR_ALL`` stops every other
        child and starts them all; ``REST_FOR_ONE`` stops the children after ``failed`` and starts ``failed``
        and them
    :raises UnknownChild: when ``failed`` (or, with ``restart_types``, a stopped sibling) is not known
    :raises DuplicateChild: when an id appears twice in ``children_in_start_order``
    :raises ValueError: when ``restart_types`` says ``failed`` is ``TEMPORARY`` (a temporary child is never
        restarted)
    """
    order = tuple(children_in_start_order)
    seen: set[str] = set()
    for child_id in order:
        if child_id in seen:
            raise DuplicateChild(child_id)
        seen.add(child_id)
    if failed not in seen:
        raise UnknownChild(failed)
    position = order.index(failed)
    start: tuple[str, ...]
    stop: tuple[str, ...]
    if strategy is Strategy.ONE_FOR_ONE:
        start = (failed,)
        stop = ()
    elif strategy is Strategy.ONE_FOR_ALL:
        start = order
        stop = tuple(reversed(order[:position] + order[position + 1 :]))
    elif strategy is Strategy.REST_FOR_ONE:
        start = order[position:]
        stop = tuple(reversed(order[position + 1 :]))
    else:
        raise TypeError(f"strategy must be a Strategy member, got {strategy!r}")
    if restart_types is None:
        return RestartPlan(failed=failed, stop=stop, start=start)

    def restart_type(child_id: str) -> Restart:
        try:
            return restart_types[child_id]
        except KeyError:
            raise UnknownChild(child_id) from None

    if restart_type(failed) is Restart.TEMPORARY:
        raise ValueError(f"failed child {failed!r} is TEMPORARY: a temporary child is never restarted")
    removed = frozenset(child_id for child_id in stop if restart_type(child_id) is Restart.TEMPORARY)
    return RestartPlan(
        failed=failed,
        stop=stop,
        start=tuple(child_id for child_id in start if child_id not in removed),
        remove=tuple(child_id for child_id in order if child_id in removed),
    )


def auto_shutdown_triggered(
    auto_shutdown: AutoShutdown, *, exited_significant: bool, remaining_significant: int
) -> bool:
    """Whether a child's exit makes its supervisor shut itself down (OTP's ``do_auto_shutdown``).

    The caller decides which exits count, as OTP does: only a child that exited *on its own* and is *not
    restarted* (a ``TRANSIENT`` child's normal exit, any exit of a ``TEMPORARY`` child). ``terminate_child``,
    siblings stopped by a restart plan, and the supervisor's own shutdown never trigger it; do not call this
    for them.

    :param auto_shutdown: the supervisor's setting
    :param exited_significant: whether the child that exited is significant
    :param remaining_significant: significant children other than it that are still running (or restarting)
    :return: never for ``NEVER`` or a child that is not significant; always for ``ANY_SIGNIFICANT``; for
        ``ALL_SIGNIFICANT`` only when no significant child remains
    :raises ValueError: when ``remaining_significant`` is negative
    """
    if remaining_significant < 0:
        raise ValueError(f"remaining_significant must be >= 0, got {remaining_significant}")
    if auto_shutdown is AutoShutdown.NEVER or not exited_significant:
        return False
    if auto_shutdown is AutoShutdown.ANY_SIGNIFICANT:
        return True
    return remaining_significant == 0
