"""Pure parsing of Prometheus query answers into vramguard's telemetry: from instant queries,
per node, per card (one GPU UUID on one node) and per pod, and which card each pod holds; from
range queries (`vramguard recommend`), each pod's usage step by step over a window.

Cards: a series that carries a GPU UUID (`UUID` as dcgm-exporter writes it, `uuid` as the node
agent does) is one card's. Exporters that map pods repeat a card's series, with the same value,
once per pod on it (dcgm-exporter with --kubernetes-virtual-gpus), and newer dcgm-exporters add
per-pod DCGM_FI_DEV_FB_USED series beside the card's own: so the series of one (node, UUID) are
one card, never a sum. Its sample is the newest series; among equally new ones the cautious
value wins (the least free or total memory, the most used), which is the card's own figure when
the others are per-pod parts of it. Series without a UUID are summed per node, as they always
were (a custom query that aggregates, an exporter that labels nodes only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from gpumem.nodes import GfdCards
from gpumem.recommend import UsageHistory
from gpumem.state import CardSample, PodKey, Sample, TelemetryReading

MIB = 1 << 20
Unit = Literal["MiB", "bytes"]
LabelSet = frozenset[tuple[str, str]]
CardKey = tuple[str, str]  # (Node name, GPU UUID)
# Prometheus renames a target label that clashes with a scraped one to exported_<name>; for
# pod-level exporters the exported_* labels are the ones naming the workload pod.
POD_LABELS = (("exported_namespace", "exported_pod"), ("namespace", "pod"))
UUID_LABELS = ("UUID", "uuid")
INDEX_LABEL = "gpu"
# dcgm-exporter labels a MIG instance's series with its parent GPU's UUID and the instance's
# GPU_I_ID: the instances of one GPU have different values, so they are not repeats of one
# card. They stay summed per node, as before cards existed.
MIG_INSTANCE_LABEL = "GPU_I_ID"


class TelemetryError(Exception):
    """A fetch that failed or answered something that is not an instant vector."""


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    value: float
    timestamp: float

    @property
    def label_set(self) -> LabelSet:
        # timestamp() drops the metric name; match its series on the other labels. Built from
        # the items in C, not a generator over them: a poll asks it of every series twice.
        labels = self.labels
        items = frozenset(labels.items())
        name = labels.get("__name__")
        return items if name is None else items - {("__name__", name)}


@dataclass(frozen=True)
class Parsed:
    series: list[Series]
    problems: list[str]


def parse_vector(answer: object) -> Parsed:
    """Parse an instant-query answer: the result list (what custom_query returns) or the whole
    API response. Raises TelemetryError when it is not a vector at all; a series with a bad
    value is skipped and described in problems."""
    result = _result_list(answer)
    series = []
    problems = []
    for item in result:
        if not isinstance(item, Mapping):
            problems.append(f"not a series: {item!r:.80}")
            continue
        labels = item.get("metric")
        point = item.get("value")
        if (
            not isinstance(labels, Mapping)
            or not isinstance(point, Sequence)
            or isinstance(point, str)
            or len(point) != 2
        ):
            problems.append(f"not a series: {item!r:.80}")
            continue
        try:
            timestamp = float(point[0])
            value = float(point[1])
        except (TypeError, ValueError):
            problems.append(f"unreadable sample {point!r:.80}")
            continue
        if not math.isfinite(timestamp) or not math.isfinite(value) or value < 0:
            problems.append(f"unusable value {point[1]!r} in {dict(labels)!r:.80}")
            continue
        series.append(Series(_text_labels(labels), value, timestamp))
    return Parsed(series, problems)


_TEXT = frozenset({str})


def _text_labels(labels: Mapping[object, object]) -> dict[str, str]:
    """A copy of a series' labels with every name and value a str. Prometheus sends strings,
    so the copy is made in C and only checked (by type, in C); anything else is converted one
    label at a time. A poll of 5,000 nodes copies tens of thousands of labels."""
    copied = dict(labels)
    if set(map(type, copied)) <= _TEXT and set(map(type, copied.values())) <= _TEXT:
        return copied  # type: ignore[return-value]  # checked just above
    return {str(k): str(v) for k, v in copied.items()}


def _result_list(answer: object, result_type: str = "vector") -> Sequence[object]:
    if isinstance(answer, Mapping):
        if answer.get("status") not in (None, "success"):
            raise TelemetryError(f"query failed: {answer.get('error', answer.get('status'))}")
        data = answer.get("data", answer)
        if not isinstance(data, Mapping) or data.get("resultType") not in (None, result_type):
            what = "an instant vector" if result_type == "vector" else "a range matrix"
            raise TelemetryError(f"query did not return {what}")
        answer = data.get("result")
    if not isinstance(answer, list):
        raise TelemetryError(f"query did not return a list of series: {answer!r:.80}")
    return answer


def sample_times(parsed: Parsed) -> dict[LabelSet, float]:
    """Scrape time per series, from the answer of a timestamp(<query>) query."""
    return {s.label_set: s.value for s in parsed.series}


def to_mib(value: float, unit: Unit, round_up: bool) -> int:
    mib = value / MIB if unit == "bytes" else value
    return math.ceil(mib) if round_up else math.floor(mib)


def node_of(labels: Mapping[str, str], node_labels: Sequence[str]) -> str | None:
    """The Node name of a series: the first of node_labels it carries."""
    for label in node_labels:
        value = labels.get(label)
        if value:
            # instance is host:port; a bare host is what can match a Node name.
            return value.rsplit(":", 1)[0] if label == "instance" and ":" in value else value
    return None


def uuid_of(labels: Mapping[str, str]) -> str | None:
    """The GPU UUID of a card's series; None for a series that is not one card's."""
    if labels.get(MIG_INSTANCE_LABEL):
        return None
    for label in UUID_LABELS:
        value = labels.get(label)
        if value:
            return value
    return None


def pod_of(labels: Mapping[str, str]) -> PodKey | None:
    for namespace_label, pod_label in POD_LABELS:
        namespace, pod = labels.get(namespace_label), labels.get(pod_label)
        if namespace and pod:
            return (namespace, pod)
    return None


@dataclass(frozen=True)
class CardFigure:
    """One card's figure from one query: its sample in MiB and the exporter's GPU index."""

    sample: Sample
    index: str | None


@dataclass(frozen=True)
class DeviceFigures:
    """One per-GPU (or per-node) query's answer: per node, each card counted once, and per
    card where the series carry a UUID."""

    nodes: dict[str, Sample]
    cards: dict[CardKey, CardFigure]
    problems: list[str]


def device_figures(
    parsed: Parsed,
    node_labels: Sequence[str],
    unit: Unit,
    times: Mapping[LabelSet, float],
    round_up: bool,
) -> DeviceFigures:
    """Cards and node sums of a free, used or total query. round_up: the figure is memory in
    use (rounded up; the highest of a card's equally new series wins), else free or total
    memory (rounded down; the lowest wins). A node's sample is as old as its oldest card."""
    sums: dict[str, float] = {}
    oldest: dict[str, float] = {}

    def add(node: str, value: float, sampled_at: float) -> None:
        sums[node] = sums.get(node, 0.0) + value
        oldest[node] = min(oldest.get(node, sampled_at), sampled_at)

    chosen: dict[CardKey, tuple[Series, float]] = {}
    index: dict[CardKey, str] = {}
    problems = []
    for s in parsed.series:
        node = node_of(s.labels, node_labels)
        if node is None:
            problems.append(f"no node label ({', '.join(node_labels)}) in {dict(s.labels)!r:.80}")
            continue
        sampled_at = _sampled_at(s, times)
        uuid = uuid_of(s.labels)
        if uuid is None:
            add(node, s.value, sampled_at)
            continue
        key = (node, uuid)
        best = chosen.get(key)
        if (
            best is None
            or sampled_at > best[1]
            or (sampled_at == best[1] and _more_cautious(s.value, best[0].value, round_up))
        ):
            chosen[key] = (s, sampled_at)
        if s.labels.get(INDEX_LABEL):
            index.setdefault(key, s.labels[INDEX_LABEL])
    cards = {}
    for key, (s, sampled_at) in chosen.items():
        add(key[0], s.value, sampled_at)
        cards[key] = CardFigure(
            Sample(to_mib(s.value, unit, round_up), sampled_at),
            s.labels.get(INDEX_LABEL) or index.get(key),
        )
    nodes = {
        node: Sample(to_mib(total, unit, round_up), oldest[node]) for node, total in sums.items()
    }
    return DeviceFigures(nodes, cards, problems)


def _more_cautious(value: float, than: float, round_up: bool) -> bool:
    return value > than if round_up else value < than


def _sampled_at(s: Series, times: Mapping[LabelSet, float]) -> float:
    return min(s.timestamp, times.get(s.label_set, s.timestamp))


def pod_samples(
    parsed: Parsed, unit: Unit, times: Mapping[LabelSet, float]
) -> tuple[dict[PodKey, Sample], list[str]]:
    """Sum per-process series per pod; a pod's sum is as old as its oldest series."""
    sums: dict[PodKey, float] = {}
    oldest: dict[PodKey, float] = {}
    problems = []
    for s in parsed.series:
        key = pod_of(s.labels)
        if key is None:
            problems.append(f"no namespace/pod labels in {dict(s.labels)!r:.80}")
            continue
        sums[key] = sums.get(key, 0.0) + s.value
        sampled_at = _sampled_at(s, times)
        oldest[key] = min(oldest.get(key, sampled_at), sampled_at)
    return {
        key: Sample(to_mib(total, unit, round_up=True), oldest[key]) for key, total in sums.items()
    }, problems


# --- Which card a pod holds ---------------------------------------------------------------------


def card_claims(series: Iterable[Series]) -> dict[PodKey, set[str]]:
    """The GPU UUIDs each pod is named beside, in series that carry both (dcgm-exporter's pod
    mapping, a per-pod exporter's uuid label, the node agent's assignment series)."""
    claims: dict[PodKey, set[str]] = {}
    for s in series:
        pod, uuid = pod_of(s.labels), uuid_of(s.labels)
        if pod is not None and uuid is not None:
            claims.setdefault(pod, set()).add(uuid)
    return claims


def pod_cards(
    labelled: Mapping[PodKey, set[str]],
    assigned: Mapping[PodKey, set[str]],
    assignment_source: str = "the assignment query",
) -> tuple[dict[PodKey, str], list[str]]:
    """Which card each pod holds. The assignment query (the node agent reads the kubelet's
    PodResources: exact) wins over pod labels on the other series; a pod one source names
    beside two UUIDs is left out, counted as a problem: an unassigned pod counts against every
    card of its node, which is safe, a wrong card is not."""
    cards: dict[PodKey, str] = {}
    problems = []
    for pod in sorted(labelled.keys() | assigned.keys()):
        uuids, source = (
            (assigned[pod], assignment_source)
            if pod in assigned
            else (labelled[pod], "exporter pod labels")
        )
        if len(uuids) == 1:
            cards[pod] = next(iter(uuids))
        else:
            problems.append(
                f"pod {pod[0]}/{pod[1]} on {len(uuids)} GPUs in {source} "
                f"({', '.join(sorted(uuids))}): its card is left unknown"
            )
    return cards, problems


# --- Range queries: a pod's usage over a window ---------------------------------------------


@dataclass(frozen=True)
class RangeSeries:
    labels: Mapping[str, str]
    # (time, value) per step of the range query.
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ParsedRange:
    series: list[RangeSeries]
    problems: list[str]


def parse_matrix(answer: object) -> ParsedRange:
    """Parse a range-query answer: the result list (what custom_query_range returns) or the
    whole API response. Raises TelemetryError when it is not a matrix at all; a point with
    a bad value is skipped and described in problems (once per series)."""
    series = []
    problems = []
    for item in _result_list(answer, "matrix"):
        labels = item.get("metric") if isinstance(item, Mapping) else None
        values = item.get("values") if isinstance(item, Mapping) else None
        if not isinstance(labels, Mapping) or not isinstance(values, list):
            problems.append(f"not a range series: {item!r:.80}")
            continue
        points = []
        bad = None
        for point in values:
            try:
                timestamp, value = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError, KeyError):
                bad = point
                continue
            if not math.isfinite(timestamp) or not math.isfinite(value) or value < 0:
                bad = point
                continue
            points.append((timestamp, value))
        if bad is not None:
            problems.append(f"unusable point {bad!r:.40} in {dict(labels)!r:.80}")
        series.append(RangeSeries(_text_labels(labels), tuple(points)))
    return ParsedRange(series, problems)


def pod_histories(parsed: ParsedRange, unit: Unit) -> tuple[dict[PodKey, UsageHistory], list[str]]:
    """Per pod, its usage at each step: the pod's series (one per process, container or card)
    summed at each step, in MiB rounded up, as pod_samples sums them at one instant."""
    sums: dict[PodKey, dict[float, float]] = {}
    problems = []
    for s in parsed.series:
        key = pod_of(s.labels)
        if key is None:
            problems.append(f"no namespace/pod labels in {dict(s.labels)!r:.80}")
            continue
        steps = sums.setdefault(key, {})
        for timestamp, value in s.points:
            steps[timestamp] = steps.get(timestamp, 0.0) + value
    histories = {
        key: UsageHistory(
            tuple((t, to_mib(total, unit, round_up=True)) for t, total in sorted(steps.items()))
        )
        for key, steps in sums.items()
    }
    return histories, problems


# --- Plausibility: readings no card can produce are dropped, not trusted ----------------------

Figure = Literal["free", "used", "total"]
RejectReason = Literal["negative", "above-total"]


@dataclass(frozen=True)
class Rejection:
    """One sample dropped from a reading: a free or used figure above the memory of the card
    (or of the node's cards) it is about, or a negative figure. An exporter bug or a spoofed
    series (free 1e308) would otherwise pass every pod on that node's live check."""

    node: str
    card: str | None  # the GPU UUID; None for a node-level sample
    figure: Figure
    mib: int
    reason: RejectReason
    limit_mib: int | None = None

    def describe(self) -> str:
        where = f"{self.node}/{self.card}" if self.card else self.node
        # A 1e308 reading in full would be a 300-digit number in the log.
        mib = f"{self.mib:.3g}" if abs(self.mib) >= 10**12 else str(self.mib)
        if self.reason == "negative":
            return f"{where}: {self.figure} {mib} MiB is negative: dropped"
        limit = "the card total" if self.card else "the node's card total"
        return f"{where}: {self.figure} {mib} MiB > {limit} {self.limit_mib} MiB: dropped"


def plausible_reading(
    reading: TelemetryReading, card_memory: Mapping[str, GfdCards | None]
) -> tuple[TelemetryReading, list[Rejection]]:
    """The reading without its implausible samples, and what was dropped.

    A card's limit is its reported total (a non-negative one), else its GPU Feature Discovery
    memory (card_memory, by Node name); a node's is its reported total, else GFD memory times
    the card count. Free and used above the limit, and any negative figure, are dropped; a
    figure with no known limit is kept unless negative. A dropped sample leaves the node or
    card without live telemetry, which the policy's staleMode then decides.
    """
    rejections: list[Rejection] = []

    def vet(
        node: str, card: str | None, figure: Figure, sample: Sample | None, limit: int | None
    ) -> Sample | None:
        if sample is None:
            return None
        if sample.mib < 0:
            rejections.append(Rejection(node, card, figure, sample.mib, "negative"))
            return None
        if figure != "total" and limit is not None and sample.mib > limit:
            rejections.append(Rejection(node, card, figure, sample.mib, "above-total", limit))
            return None
        return sample

    cards: dict[str, dict[str, CardSample]] = {}
    for node, by_uuid in reading.cards.items():
        gfd = card_memory.get(node)
        kept: dict[str, CardSample] = {}
        for uuid, card in by_uuid.items():
            total = vet(node, uuid, "total", card.total, None)
            limit = total.mib if total is not None else (gfd.memory_mib if gfd else None)
            kept[uuid] = CardSample(
                card.uuid,
                card.index,
                vet(node, uuid, "free", card.free, limit),
                vet(node, uuid, "used", card.used, limit),
                total,
            )
        cards[node] = kept

    def node_limit(node: str, total: Sample | None) -> int | None:
        if total is not None:
            return total.mib
        gfd = card_memory.get(node)
        if gfd is None or gfd.count == 0:
            return None
        return gfd.memory_mib * (gfd.count if gfd.count is not None else 1)

    totals = {
        node: vetted
        for node, sample in reading.total.items()
        if (vetted := vet(node, None, "total", sample, None)) is not None
    }
    free = {
        node: vetted
        for node, sample in reading.free.items()
        if (vetted := vet(node, None, "free", sample, node_limit(node, totals.get(node))))
        is not None
    }
    used = {
        node: vetted
        for node, sample in reading.used.items()
        if (vetted := vet(node, None, "used", sample, node_limit(node, totals.get(node))))
        is not None
    }
    if not rejections:
        return reading, []
    return (
        replace(reading, free=free, used=used, total=totals, cards=cards),
        rejections,
    )
