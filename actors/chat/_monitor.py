from __future__ import annotations

import heapq
import logging
import operator
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec

from actors import Actor, ActorError, ActorRef

from ._alert_sinks import AlertSink, call_sync_sink
from ._anomaly import Anomaly, AnomalyKind, ReportedKeys
from ._audit import AuditResult, AuditVerdict, FlowWindow, cross_validate, flow_judgeable
from ._components import ComponentHealthChanged, ComponentReport, ProbeComponent, live_proxy
from ._detection import RunTracker
from ._events import StampedEvent, stamp
from ._finished_runs import FinishedRuns

# The monitor's protocol (settings, messages, reports) and the seed API's handle have modules of their own; every
# name is still importable from here, where it was defined before (actors.chat and the application tree import it).
from ._monitor_handle import (
    ChatEventMonitorHandle as ChatEventMonitorHandle,
    ProxyStarter as ProxyStarter,
    ProxyStopper as ProxyStopper,
)
from ._monitor_messages import (
    AuditSummary as AuditSummary,
    CheckHealth as CheckHealth,
    GetAlerts as GetAlerts,
    GetAuditSummary as GetAuditSummary,
    JudgeReport as JudgeReport,
    MonitorConfig as MonitorConfig,
    MonitorHealth as MonitorHealth,
    MonitorMessage as MonitorMessage,
    RecordEvent as RecordEvent,
    RegisterComponent as RegisterComponent,
    RegisteredComponent as RegisteredComponent,
    SetMonitoring as SetMonitoring,
    UnregisterComponent as UnregisterComponent,
    _AuditRound,
    _Tick,
)
from ._tap import DeliveryProgress, ReplaySnapshot

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger("agentwatch.monitor")

#: Poisoned taps a MonitorMemory keeps (a bug that fails on every event of a kind fills it; the cap bounds it).
_POISONED_KEPT = 64

_by_observed_at = operator.attrgetter("observed_at")

"""Called once per anomaly (sync or async). A sink that raises or hangs never stops detection."""


class MonitorMemory:
    """What outlives a monitor instance: reported anomaly keys, recent alerts, registrations, audit results.

    The application tree creates it once and hands it to every monitor instance it starts, so an anomaly reported
    before a crash is never reported again after the restart, and registered components stay registered.
    """

    def __init__(self, config: MonitorConfig | None = None) -> None:
        config = config or MonitorConfig()
        self.reported = ReportedKeys(config.reported_keys)
        self.alerts: deque[Anomaly] = deque(maxlen=config.alert_history)
        self.by_kind: Counter[str] = Counter()
        self.components: dict[str, RegisteredComponent] = {}
        self.audits: dict[str, AuditResult] = {}
        self.mismatch_since: dict[str, int] = {}
        self.claims: dict[str, str] = {}
        self.instances = 0
        self.rebuilt_events = 0
        # Anomalies found while monitoring was paused, and so not reported.
        self.suppressed = 0
        # The newest tapped event any instance observed. The tap is one FIFO mailbox fed by one bridge that stamps
        # observed_at from a monotonic clock, so a replayed event stamped after it was never seen: a restarted
        # instance observes those as new (reporting what they reveal) instead of replaying them silently.
        self.last_tapped: StampedEvent | None = None
        # Events reported directly are in no replay ring: the memory keeps the most recent ones for the rebuild.
        self.direct: deque[StampedEvent] = deque(maxlen=config.direct_replay)
        # Runs seen to finish: a ring may lose a run's RUN_FINISHED and keep later events of it.
        self.finished = FinishedRuns(config.finished_runs)
        # Tapped events an instance failed on, as (thread_id, seq): the rebuild of the next one skips them instead
        # of failing on them again (a restart loop). The most recent _POISONED_KEPT; all of them are counted.
        self.poisoned: dict[tuple[str, int], None] = {}
        self.poisoned_total = 0

    def poison(self, tap: StampedEvent) -> None:
        """Remember that an instance failed on ``tap``: the next instance's rebuild skips it."""
        self.poisoned_total += 1
        poisoned = self.poisoned
        poisoned[(tap.thread_id, tap.seq)] = None
        if len(poisoned) > _POISONED_KEPT:
            del poisoned[next(iter(poisoned))]


def _position(run: list[StampedEvent], tap: StampedEvent | None, index: int) -> int:
    """Where ``tap``, found at ``index`` of the taps ingested, is in ``run`` (from which those were filtered);
    0 when it is None (the run's first message, which the handler failed on before ingesting any)."""
    if tap is None:
        return 0
    if index < len(run) and run[index] is tap:
        return index  # nothing was filtered out: the usual case
    # Filtered taps come from later in the run: its first occurrence from there on (the same object may be twice).
    return next(position for position in range(index, len(run)) if run[position] is tap)


# -- the actor ----------------------------------------------------------------------------------------------------


class ChatEventMonitor(Actor[MonitorMessage]):
    """Watches the bridge's tap for the failures that raise no exception, and audits registered components.

    Fed by the bridge with one non-blocking ``tell`` per event (the very same StampedEvent the connections get).
    Per-run state machines and deadline heaps live in :class:`RunTracker`; this actor adds time (a tick every
    ``check_interval``), alert delivery, audits, and recovery: a restarted instance rebuilds in-flight state from
    the bridge's replay rings and never reports an anomaly twice (``memory`` outlives instances).
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        *,
        memory: MonitorMemory | None = None,
        bridge: ActorRef[Any] | None = None,
        sinks: Sequence[AlertSink] = (),
        dispatcher: ActorRef[Any] | None = None,
    ) -> None:
        self.config = config or MonitorConfig()
        self.memory = memory if memory is not None else MonitorMemory(self.config)
        self.bridge = bridge
        self.sinks = tuple(sinks)
        self.dispatcher = dispatcher
        self.tracker = RunTracker(self.config.thresholds, finished_runs=self.memory.finished)
        self._flow = FlowWindow()
        # How much of the tracker's ingest counts is already in the flow window (see the flow property).
        self._flow_ingested = 0
        self._flow_routed = 0
        self.enabled = True
        # After a rebuild, events of these threads up to this seq were already replayed from the rings: events
        # queued in our mailbox during the restart are skipped instead of being observed twice.
        self._replayed_through: dict[str, int] = {}
        self._pending_audits: dict[int, tuple[str, int]] = {}
        self._audit_ids = 0
        self._direct_seq: dict[str, int] = {}

    @property
    def flow(self) -> FlowWindow:
        """What the tap has shown of the bridge's event flow since the last conclusive audit (the audit's evidence).

        The tap's events are counted once, by the tracker's ingest; they are added to the window here, when it is
        read, rather than on the hot path (two more counters per event cost the monitor ~10% of its ingest).
        """
        flow = self._flow
        tracker = self.tracker
        ingested, routed = tracker.ingested, tracker.ingested_routed
        flow.tapped += ingested - self._flow_ingested
        flow.routed += routed - self._flow_routed
        self._flow_ingested, self._flow_routed = ingested, routed
        return flow

    async def on_start(self) -> None:
        self.memory.instances += 1
        snapshot: list[StampedEvent] = []
        if self.bridge is not None:
            try:
                snapshot = list(await self.bridge.ask(ReplaySnapshot(), timeout=self.config.rebuild_timeout))
            except (ActorError, TimeoutError) as exc:
                logger.warning("monitor: no replay snapshot from the bridge (%s); rebuilding without it", exc)
        if snapshot or self.memory.direct:
            # In slices, with a checkpoint between them: the bridge shares this event loop, and a rebuild held in
            # one piece stalled it (and every other actor) for as long as the rings took to replay. Taps that
            # arrive meanwhile wait in our mailbox; those the snapshot already holds are skipped by seq.
            for _ in self._rebuild(snapshot):
                await anyio.lowlevel.checkpoint()
            # Deadlines that passed while we were down fire on this tick: queued behind whatever reached our
            # mailbox meanwhile (delivery confirmations included), so that is handled first.
            self.ref.tell(_Tick())
        self.send_every(self.config.check_interval, _Tick())
        if self.config.audit_interval > 0:
            self.send_every(self.config.audit_interval, _AuditRound())

    def _rebuild(self, snapshot: list[StampedEvent]) -> Iterator[None]:
        """Restore in-flight state from the replay rings (and the memory's direct records) after a (re)start.

        A generator: it yields after every ``rebuild_slice`` events' worth of work, for the caller to let the
        loop run. Nothing of the memory changes before the last slice, so an instance killed half way leaves the
        next one the same memory to rebuild from.

        What the previous instance saw is replayed silently: it already reported what those events revealed at
        once, and a run whose head the ring dropped must not look like a missing start. Deadlines that passed are
        reported (unless reported before). Runs it saw finish, including ones whose completion the ring lost
        (``memory.finished``), are restored as finished without a replay. Replayed events the previous instance
        never saw (tapped while it was down) are observed as new, in time order, so an orphan or duplicate
        completion sent during the restart is still reported, once.
        """
        memory = self.memory
        tracker = self.tracker
        slice_events = self.config.rebuild_slice
        last = memory.last_tapped
        seen: list[StampedEvent] = list(memory.direct)
        # Unseen events by thread: a ring is oldest first, so merging the threads puts them in time order without
        # one sort of them all in a single slice.
        unseen: dict[str, list[StampedEvent]] = {}
        unseen_count = 0
        first_unseen: int | None = None
        # A thread's oldest replayed event, and its newest seq (events of the thread up to it still queued in our
        # mailbox are skipped), in the same pass.
        heads: dict[str, StampedEvent] = {}
        through: dict[str, int] = {}
        newest: StampedEvent | None = None
        budget = slice_events
        poisoned = memory.poisoned
        for stamped in snapshot:
            thread_id = stamped.thread_id
            if poisoned and (thread_id, stamped.seq) in poisoned:
                continue  # an instance failed on it: replaying it would fail this one too
            # With no event seen yet (the very first tap crashed or hung the previous instance), every replayed
            # event is new to the monitor.
            if last is None or (
                stamped.observed_at > last.observed_at or (thread_id == last.thread_id and stamped.seq > last.seq)
            ):
                events = unseen.get(thread_id)
                if events is None:
                    unseen[thread_id] = [stamped]
                else:
                    events.append(stamped)
                unseen_count += 1
                if first_unseen is None or stamped.observed_at < first_unseen:
                    first_unseen = stamped.observed_at
            else:
                seen.append(stamped)  # an event stamped in the same ms on another thread counts as seen
            head = heads.get(thread_id)
            if head is None or stamped.seq < head.seq:
                heads[thread_id] = stamped
            if stamped.seq > through.get(thread_id, 0):
                through[thread_id] = stamped.seq
            # The last of the newest ms, not the first: a ring is oldest first, so on its thread that is the
            # highest seq of that ms, and the next rebuild takes every event up to it for seen. (The first would
            # leave the later events of its thread and ms "unseen", to be observed a second time.)
            if newest is None or stamped.observed_at >= newest.observed_at:
                newest = stamped
            budget -= 1
            if not budget:
                budget = slice_events
                yield
        # Deadlines are advanced only as far as what the previous instance had seen. Confirmations of later
        # deliveries are still queued in our mailbox (DeliveryProgress, advanced to its own time as it is handled):
        # advancing to "now" here would call delivered events undelivered. The first tick advances to now.
        horizon = last.observed_at if last is not None else (first_unseen or 0)
        tracker.defer_finished_runs()  # recorded with last_tapped, in the last slice
        found = list(
            (
                yield from tracker.rebuild_in_slices(
                    seen, horizon, already_reported=memory.reported, slice_events=slice_events
                )
            )
        )
        if unseen:
            # A thread's oldest replayed event with seq > 1 may not be the first of its run (the ring is bounded):
            # its run cannot be called a missing start.
            truncated = {(head.thread_id, head.run_id) for head in heads.values() if head.seq > 1}
            flow = self.flow
            for events in unseen.values():
                events.sort(key=_by_observed_at)  # a no-op pass for a ring; any order is accepted
                budget -= len(events)
                if budget <= 0:
                    budget = slice_events
                    yield
            for stamped in heapq.merge(*unseen.values(), key=_by_observed_at):
                found.extend(
                    anomaly
                    for anomaly in tracker.observe(stamped)
                    if anomaly.kind is not AnomalyKind.MISSING_AGENT_STARTED
                    or (anomaly.thread_id, anomaly.run_id) not in truncated
                )
                flow.tapped += 1
                if stamped.fan_out:
                    flow.routed += 1
                    tracker.expect_delivery(stamped.thread_id, stamped.seq, stamped.observed_at)
                budget -= 1
                if budget <= 0:
                    budget = slice_events
                    yield
        self._replayed_through = through
        tracker.record_finished_runs()
        if newest is not None and (last is None or newest.observed_at >= last.observed_at):
            memory.last_tapped = newest
        for stamped in memory.direct:
            self._direct_seq[stamped.thread_id] = max(stamped.seq, self._direct_seq.get(stamped.thread_id, 0))
        memory.rebuilt_events += len(snapshot) + len(memory.direct)
        if memory.instances > 1:
            logger.info(
                "monitor: rebuilt from %d replayed events (%d unseen before the restart), %d runs in flight",
                len(snapshot),
                unseen_count,
                tracker.statistics().runs_in_flight,
            )
        self._report(found)

    async def receive(self, message: MonitorMessage) -> Any:
        # The tap is the hot path: test for it before the general dispatch (a match on Structs costs ~0.3 µs), and
        # handle it here rather than in a method of its own (a call per event is ~5% of the monitor's ingest).
        if type(message) is StampedEvent:
            # The taps queued right behind this one are ingested in the same pass: the drain loop's dispatch and
            # a receive call per event were a fifth of the monitor's cost per event (bench/monitor.py). They are
            # observed even while monitoring is paused (only reports are held back): a resumed monitor whose runs
            # moved on unseen would raise false stale threads and missing starts.
            # Taken as a list, not lazily: resuming an iterator per tap was ~5% of the monitor's instructions per
            # event. What a failure leaves unhandled is given back (requeue) for the next instance.
            run = self.take_queued_list(StampedEvent)
            run.insert(0, message)
            tracker = self.tracker
            tracker.last_taken = None
            try:
                taps = [tap for tap in run if not self._replayed(tap)] if self._replayed_through else run
                found = tracker.ingest(taps)
            except BaseException as exc:
                # First what cannot fail: the taps behind the one that raised go back to the head of the mailbox,
                # for the next instance, and the one that raised is poisoned (its rebuild skips it instead of
                # failing on it again). Then what the taps before it revealed is reported: the next instance
                # replays those silently.
                failed = tracker.last_taken
                self.requeue(run[_position(run, failed, tracker.last_index) + 1 :])
                if isinstance(exc, Exception):
                    if failed is not None:
                        self.memory.poison(failed)
                    self._report(tracker.found_before_failure)
                raise
            finally:
                if tracker.last_taken is not None:
                    self.memory.last_tapped = tracker.last_taken
            if found:
                self._report(found)
            return None
        match message:
            case DeliveryProgress():
                self._on_progress(message)
            case RecordEvent():
                self._record(message)
            case _Tick():
                self._on_tick()
            case _AuditRound():
                self._start_audit_round()
            case ComponentReport():
                self._on_report(message)
            case ComponentHealthChanged():
                self.memory.claims[message.component_id] = message.status
            case JudgeReport():
                return self._judge(message)
            case SetMonitoring():
                self.enabled = message.enabled
            case CheckHealth():
                return self._health()
            case RegisterComponent():
                self.memory.components[message.component.component_id] = message.component
            case UnregisterComponent():
                self.memory.components.pop(message.component_id, None)
                self.memory.audits.pop(message.component_id, None)
                self.memory.claims.pop(message.component_id, None)
                self.memory.mismatch_since.pop(message.component_id, None)
            case GetAuditSummary():
                return self._summary()
            case GetAlerts():
                return list(self.memory.alerts)
            case StampedEvent():  # handled above; here only so the match is exhaustive for the type checker
                return None
            case _:
                logger.warning("monitor: ignoring unknown message %r", type(message).__name__)
        return None

    # -- detection ------------------------------------------------------------------------------------------------

    def _replayed(self, message: StampedEvent) -> bool:
        """Whether a tapped event was already replayed from the rings by the rebuild (it is then skipped)."""
        replayed = self._replayed_through
        through = replayed.get(message.thread_id)
        if through is None:
            return False
        if message.seq <= through:
            return True
        del replayed[message.thread_id]  # the first event past the replayed ones: the thread is caught up
        return False

    def _on_progress(self, progress: DeliveryProgress) -> None:
        tracker = self.tracker
        if progress.resync:
            # The re-report that comes with a replay snapshot: deliveries made before it (perhaps while no monitor
            # was attached) are confirmed first; only what is still unconfirmed can then be overdue.
            confirmed = tracker.confirm_deliveries(progress.confirmed)
        due = tracker.advance(self.clock.now_ms() if progress.at is None else progress.at)
        if due:
            self._report(due)
        if not progress.resync:
            # A confirmation that comes after the delivery deadline is late even if no tick ran in between. Judged
            # as of when the bridge made the report: the time it waited in this mailbox is not the bridge's delay.
            confirmed = tracker.confirm_deliveries(progress.confirmed)
        # Delivered: what the bridge's writers actually sent. A confirmation can jump (a client that resumed is
        # confirmed from where it subscribed) with nothing read by anyone, so jumps are only counted for a
        # hand-made report that does not say.
        flow = self._flow  # neither reads the tap's counts: no need to bring them up to date
        flow.delivered += confirmed if progress.delivered is None else progress.delivered
        flow.delivery_progressed(progress.confirmed, progress.unsubscribed)
        for thread_id in progress.unsubscribed:
            tracker.thread_has_no_subscribers(thread_id)

    def _record(self, message: RecordEvent) -> None:
        # Direct records get their own per-thread numbering; they are never routed, so never "undelivered".
        seq = self._direct_seq.get(message.thread_id, 0) + 1
        self._direct_seq[message.thread_id] = seq
        observed = message.observed_at if message.observed_at is not None else self.clock.now_ms()
        stamped = stamp(
            message.event, thread_id=message.thread_id, run_id=message.run_id, seq=seq, observed_at=observed
        )
        self.memory.direct.append(stamped)
        due = self.tracker.advance(observed)
        if due:
            self._report(due)
        found = self.tracker.observe(stamped)
        if found:
            self._report(found)

    def _on_tick(self) -> None:
        now = self.clock.now_ms()
        found = self.tracker.advance(now)
        if found:
            self._report(found)
        expired = [audit_id for audit_id, (_, deadline) in self._pending_audits.items() if deadline <= now]
        for audit_id in expired:
            component_id, _ = self._pending_audits.pop(audit_id)
            if component_id in self.memory.components:  # not unregistered while its audit was pending
                self._conclude(self._unresponsive(component_id, audit_id, now))

    def _report(self, anomalies: Sequence[Anomaly]) -> None:
        memory = self.memory
        for anomaly in anomalies:
            if anomaly.kind is AnomalyKind.UNDELIVERED_EVENT and anomaly.seq is not None:
                # Evidence for the audits of the component the tap comes from: the thread is stalled until a
                # confirmation reaches this seq (kept across audit windows: it is the state of delivery now).
                self.flow.delivery_stalled(anomaly.thread_id, anomaly.seq)
            if not self.enabled:
                memory.suppressed += 1
                continue
            if not memory.reported.add(anomaly.key):
                continue
            memory.alerts.append(anomaly)
            memory.by_kind[anomaly.kind.value] += 1
            logger.warning(
                "anomaly %s severity=%s thread=%s run=%s tool_call=%s: %s",
                anomaly.kind.value,
                anomaly.severity.value,
                anomaly.thread_id,
                anomaly.run_id,
                anomaly.tool_call_id,
                anomaly.detail,
            )
            if self.dispatcher is not None:
                self.dispatcher.tell(anomaly)
            else:
                for sink in self.sinks:
                    call_sync_sink(sink, anomaly)

    # -- audits ---------------------------------------------------------------------------------------------------

    def _start_audit_round(self) -> None:
        now = self.clock.now_ms()
        timeout_ms = int(self.config.audit_timeout * 1000)
        components = self.memory.components
        for component_id, component in list(components.items()):
            proxy = live_proxy(component.proxy, self.system)
            if proxy is not component.proxy:  # the branch was re-attached: its proxies were started anew
                components[component_id] = msgspec.structs.replace(component, proxy=proxy)
            self._audit_ids += 1
            self._pending_audits[self._audit_ids] = (component_id, now + timeout_ms)
            proxy.tell(ProbeComponent(reply_to=self.ref, audit_id=self._audit_ids))

    def _on_report(self, report: ComponentReport) -> None:
        if self._pending_audits.pop(report.audit_id, None) is None:
            return  # a late report for an audit already concluded as unresponsive
        self._judge_report(report, periodic=True)

    def _judge(self, message: JudgeReport) -> AuditResult:
        if message.unresponsive or message.report is None:
            result = self._unresponsive(message.component_id, 0, self.clock.now_ms())
            self._conclude(result)
            return result
        return self._judge_report(message.report, periodic=False)

    def _judge_report(self, report: ComponentReport, *, periodic: bool) -> AuditResult:
        """Cross-validate a report; return the verdict that stands (see ``conclusive`` below)."""
        memory = self.memory
        policy = self.config.audit
        if report.error is None:
            memory.claims[report.component_id] = report.status
        component = memory.components.get(report.component_id)
        flow = self.flow if component is not None and component.observes_flow else None
        result = cross_validate(report, flow=flow, policy=policy, at=self.clock.now_ms())
        # A "consistent" verdict for a healthy claim proves honesty only if the flow was enough to judge: with too
        # few events routed, or the routed ones still in flight, the window neither ends a lying episode (that
        # would report the same lie again after every quiet spell) nor is it discarded (its evidence carries over).
        conclusive = (
            flow is None
            or result.verdict is not AuditVerdict.CONSISTENT
            or report.status != "healthy"
            or flow_judgeable(flow, policy)
        )
        if not conclusive and report.component_id in memory.mismatch_since:
            standing = memory.audits.get(report.component_id)
            if standing is not None:
                return standing
        self._conclude(result)
        if periodic and flow is not None and conclusive:
            flow.reset()
        return result

    def _unresponsive(self, component_id: str, audit_id: int, now: int) -> AuditResult:
        return AuditResult(
            component_id=component_id,
            audit_id=audit_id,
            at=now,
            claimed=self.memory.claims.get(component_id, "unknown"),
            verdict=AuditVerdict.UNRESPONSIVE,
            findings=(f"did not report its health within {self.config.audit_timeout} s",),
        )

    def _conclude(self, result: AuditResult) -> None:
        memory = self.memory
        memory.audits[result.component_id] = result
        if result.verdict is not AuditVerdict.MISMATCH:
            memory.mismatch_since.pop(result.component_id, None)
            return
        # One anomaly per episode of lying: a component that keeps lying is reported once, and again only after
        # it has been seen honest in between.
        since = memory.mismatch_since.setdefault(result.component_id, result.at)
        self._report(
            [
                Anomaly(
                    kind=AnomalyKind.HEALTH_CLAIM_MISMATCH,
                    severity=AnomalyKind.HEALTH_CLAIM_MISMATCH.default_severity,
                    # Not about one thread: the key names the component, so each component lies "once per episode".
                    thread_id=f"component:{result.component_id}",
                    run_id=None,
                    detected_at=result.at,
                    detail=f"{result.component_id}: " + "; ".join(result.findings),
                    window_start=since,
                )
            ]
        )

    # -- reports --------------------------------------------------------------------------------------------------

    def _health(self) -> MonitorHealth:
        stats = self.ref.statistics()
        reasons: list[str] = []
        capacity = stats.mailbox.capacity
        if stats.queued > capacity // 2:
            reasons.append(f"backlog {stats.queued} of {capacity}")
        if stats.dropped_total:
            reasons.append(f"{stats.dropped_total} tapped events dropped by a full mailbox")
        if not self.enabled:
            reasons.append("monitoring is stopped")
        tracker = self.tracker.statistics()
        return MonitorHealth(
            status="degraded" if reasons else "healthy",
            reasons=tuple(reasons),
            monitoring=self.enabled,
            backlog=stats.queued,
            tap_drops=stats.dropped_total,
            events_observed=tracker.events_observed,
            runs_in_flight=tracker.runs_in_flight,
            anomalies_by_kind=dict(self.memory.by_kind),
            components={cid: r.verdict.value for cid, r in self.memory.audits.items()},
            instance=self.memory.instances,
            tracker=tracker,
            suppressed_while_paused=self.memory.suppressed,
        )

    def _summary(self) -> AuditSummary:
        memory = self.memory
        audits = {cid: memory.audits.get(cid) for cid in memory.components}
        return AuditSummary(
            total_components=len(audits),
            healthy=sum(1 for r in audits.values() if r is not None and r.verdict is AuditVerdict.CONSISTENT),
            mismatched=tuple(cid for cid, r in audits.items() if r is not None and r.verdict is AuditVerdict.MISMATCH),
            unresponsive=tuple(
                cid for cid, r in audits.items() if r is not None and r.verdict is AuditVerdict.UNRESPONSIVE
            ),
            components=audits,
            claims={cid: memory.claims[cid] for cid in memory.components if cid in memory.claims},
        )
