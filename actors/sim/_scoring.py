from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from actors.sim._scripts import GroundTruth

if TYPE_CHECKING:
    from collections.abc import Sequence


class Detection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One anomaly the monitor reported (the fields of ``Anomaly`` that scoring and the report need)."""

    kind: str
    thread_id: str
    run_id: str | None
    tool_call_id: str | None
    detected_at: int
    detail: str = ""


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """Anomalies of ``kind`` a runtime fault legitimately causes as a side effect (a slow client's events really
    are undelivered), on ``threads`` (None: any thread) between ``start`` and ``end`` (ms): not false positives."""

    kind: str
    fault: str
    start: int
    end: int
    threads: frozenset[str] | None = None


class KindScore(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Detection of one anomaly kind against ground truth.

    :param injected: ground-truth occurrences; :param detected: anomalies reported
    :param explained: reported anomalies that a runtime fault caused as a side effect (not false positives)
    :param precision: ``tp / (tp + fp)``, None when nothing of the kind was reported except explained ones
    :param recall: ``tp / injected``, None when nothing was injected
    :param latency_p50_ms: median of ``detected_at - due_at`` over the true positives (None without any)
    """

    kind: str
    injected: int
    detected: int
    true_positives: int
    false_positives: int
    explained: int
    missed: int
    precision: float | None
    recall: float | None
    latency_p50_ms: int | None
    latency_max_ms: int | None


class Scoring(msgspec.Struct, frozen=True, kw_only=True):
    """Scores per kind, plus the ground truth that was missed and the detections nobody injected."""

    kinds: tuple[KindScore, ...]
    missed: tuple[GroundTruth, ...]
    false_positives: tuple[Detection, ...]
    explained: dict[str, int]


def score(
    truth: Sequence[GroundTruth], detections: Sequence[Detection], explanations: Sequence[Explanation] = ()
) -> Scoring:
    """Match detections to ground truth, kind by kind.

    A detection matches an unmatched ground-truth entry of its kind and thread whose run and tool call it names (an
    entry without a run or call matches any) and that was due at or before the detection (1 ms tolerance for ms
    rounding); among several it takes the latest due. An unmatched detection covered by an :class:`Explanation`
    counts as explained; any other is a false positive. Each entry matches at most one detection.
    """
    pools: dict[tuple[str, str], list[GroundTruth]] = {}
    for entry in sorted(truth, key=lambda item: item.due_at):
        pools.setdefault((entry.kind, entry.thread_id), []).append(entry)
    matched: dict[str, list[int]] = {}
    false_positives: list[Detection] = []
    explained: dict[str, int] = {}
    explained_kinds: dict[str, int] = {}
    detected: dict[str, int] = {}
    for detection in sorted(detections, key=lambda item: (item.detected_at, item.kind, item.thread_id)):
        detected[detection.kind] = detected.get(detection.kind, 0) + 1
        pool = pools.get((detection.kind, detection.thread_id), [])
        best: int | None = None
        for index, entry in enumerate(pool):
            if entry.due_at > detection.detected_at + 1:
                break
            if (entry.run_id is None or entry.run_id == detection.run_id) and (
                entry.tool_call_id is None or entry.tool_call_id == detection.tool_call_id
            ):
                best = index
        if best is not None:
            entry = pool.pop(best)
            matched.setdefault(entry.kind, []).append(detection.detected_at - entry.due_at)
            continue
        cause = next(
            (
                explanation
                for explanation in explanations
                if explanation.kind == detection.kind
                and explanation.start <= detection.detected_at <= explanation.end
                and (explanation.threads is None or detection.thread_id in explanation.threads)
            ),
            None,
        )
        if cause is not None:
            explained[cause.fault] = explained.get(cause.fault, 0) + 1
            explained_kinds[detection.kind] = explained_kinds.get(detection.kind, 0) + 1
        else:
            false_positives.append(detection)
    missed = sorted((entry for pool in pools.values() for entry in pool), key=lambda item: item.due_at)
    injected: dict[str, int] = {}
    for entry in truth:
        injected[entry.kind] = injected.get(entry.kind, 0) + 1
    fp_by_kind: dict[str, int] = {}
    for detection in false_positives:
        fp_by_kind[detection.kind] = fp_by_kind.get(detection.kind, 0) + 1
    kinds = []
    for kind in sorted({*injected, *detected}):
        latencies = sorted(matched.get(kind, []))
        tp = len(latencies)
        fp = fp_by_kind.get(kind, 0)
        total = injected.get(kind, 0)
        kinds.append(
            KindScore(
                kind=kind,
                injected=total,
                detected=detected.get(kind, 0),
                true_positives=tp,
                false_positives=fp,
                explained=explained_kinds.get(kind, 0),
                missed=total - tp,
                precision=tp / (tp + fp) if tp + fp else None,
                recall=tp / total if total else None,
                latency_p50_ms=latencies[(len(latencies) - 1) // 2] if latencies else None,
                latency_max_ms=latencies[-1] if latencies else None,
            )
        )
    return Scoring(
        kinds=tuple(kinds), missed=tuple(missed), false_positives=tuple(false_positives), explained=explained
    )
