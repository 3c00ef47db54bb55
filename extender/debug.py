"""The extender's GET /debug/snapshot: per node what the fit rule sees, as one pydantic model.

The extender writes it (extender.app, through describe_snapshot) and `vramguard status
--extender-url` reads it back (DebugSnapshot.model_validate), so both sides agree on one shape.
The keys are camelCase with MiB and Seconds spelt out (`capacityMiB`, `telemetryAgeSeconds`),
as `vramguard status -o json` spells the figures it shares with it.

A node with several cards (gpumem.state.NodeState.cards) also lists its cards, and each of its
pods says which card it holds (`card`, a GPU UUID, null while unassigned). A one-card node has
neither key, so its JSON is what it was before cards existed.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from gpumem.state import CardState, NodeState, Snapshot


class _Debug(BaseModel):
    # Unknown keys are ignored: a newer extender may say more than this reader knows.
    model_config = ConfigDict(
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


class DebugTelemetry(_Debug):
    source: str
    failing: bool
    error: str | None
    # None until the first fetch.
    age_seconds: float | None = Field(alias="ageSeconds")


class DebugPod(_Debug):
    namespace: str
    name: str
    uid: str
    declared_mib: int = Field(alias="declaredMiB")
    used_mib: int | None = Field(alias="usedMiB")
    warming_up: bool = Field(alias="warmingUp")
    # Unix time the warm-up window ends; None when the pod has not started.
    warm_until: float | None = Field(alias="warmUntil")
    # The UUID of the card the pod holds, None while unassigned; only serialized on a node
    # with several cards (DebugNode drops it elsewhere).
    card: str | None = None


class DebugReservation(_Debug):
    namespace: str
    name: str
    uid: str
    mib: int
    expires_in_seconds: float = Field(alias="expiresInSeconds")


class DebugCard(_Debug):
    """One card of a node with several (gpumem.state.CardState)."""

    # The exporter's GPU index, else the card's position on the node ("1": "gpu 1").
    index: str
    # None for a card known only from GPU Feature Discovery's count.
    uuid: str | None
    capacity_mib: int | None = Field(alias="capacityMiB")
    total_mib: int | None = Field(alias="totalMiB")
    declared_mib: int = Field(alias="declaredMiB")
    replicas: int
    live_free_mib: int | None = Field(alias="liveFreeMiB")
    live_used_mib: int | None = Field(alias="liveUsedMiB")
    telemetry_age_seconds: float | None = Field(alias="telemetryAgeSeconds")
    # namespace/name of the pods known to hold the card.
    pods: list[str]


class DebugNode(_Debug):
    known: bool
    capacity_mib: int | None = Field(alias="capacityMiB")
    capacity_source: str = Field(alias="capacitySource")
    declared_mib: int = Field(alias="declaredMiB")
    reserved_mib: int = Field(alias="reservedMiB")
    not_yet_using_mib: int = Field(alias="notYetUsingMiB")
    live_free_mib: int | None = Field(alias="liveFreeMiB")
    live_used_mib: int | None = Field(alias="liveUsedMiB")
    telemetry_age_seconds: float | None = Field(alias="telemetryAgeSeconds")
    pods: list[DebugPod]
    reservations: list[DebugReservation]
    # Empty on a one-card node, and absent from its JSON.
    cards: list[DebugCard] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _one_card_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Readers of the one-card JSON (scripts, dashboards) see the keys they always saw.
        data: dict[str, Any] = handler(self)
        if not self.cards:
            del data["cards"]
            for pod in data["pods"]:
                del pod["card"]
        return data


class DebugSnapshot(_Debug):
    version: int
    synced: bool
    telemetry: DebugTelemetry
    nodes: dict[str, DebugNode]


def describe_snapshot(snapshot: Snapshot, now: float, only: str | None = None) -> dict[str, Any]:
    """The snapshot as the JSON of /debug/snapshot (`only`: that node alone)."""
    return debug_snapshot(snapshot, now, only).model_dump(mode="json")


def debug_snapshot(snapshot: Snapshot, now: float, only: str | None = None) -> DebugSnapshot:
    telemetry = snapshot.telemetry
    nodes = snapshot.nodes
    if only is not None:
        nodes = {only: nodes[only]} if only in nodes else {}
    return DebugSnapshot(
        version=snapshot.version,
        synced=snapshot.synced,
        telemetry=DebugTelemetry(
            source=telemetry.source,
            failing=telemetry.failing,
            error=telemetry.error,
            age_seconds=(
                None if telemetry.fetched_at is None else round(now - telemetry.fetched_at, 1)
            ),
        ),
        nodes={name: debug_node(state, now) for name, state in sorted(nodes.items())},
    )


def debug_node(node: NodeState, now: float) -> DebugNode:
    live = node.live
    return DebugNode(
        known=node.known,
        capacity_mib=node.capacity.mib,
        capacity_source=node.capacity.source,
        declared_mib=node.declared_mib,
        reserved_mib=node.reserved_mib(now),
        not_yet_using_mib=node.not_yet_using_mib(now),
        live_free_mib=None if live is None else live.free_mib,
        live_used_mib=None if live is None else live.used_mib,
        telemetry_age_seconds=None if live is None else round(live.age(now), 1),
        pods=[
            DebugPod(
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                declared_mib=pod.declared_mib,
                used_mib=pod.used_mib,
                warming_up=pod.warming(now),
                warm_until=None if math.isinf(pod.warm_until) else pod.warm_until,
                card=pod.card,
            )
            for pod in node.pods
        ],
        reservations=[
            DebugReservation(
                namespace=r.namespace,
                name=r.name,
                uid=r.uid,
                mib=r.mib,
                expires_in_seconds=round(r.expires_at - now, 1),
            )
            for r in node.reservations
            if r.expires_at > now
        ],
        cards=[debug_card(card, now) for card in node.cards],
    )


def debug_card(card: CardState, now: float) -> DebugCard:
    live = card.live
    return DebugCard(
        index=card.index,
        uuid=card.uuid,
        capacity_mib=card.capacity_mib,
        total_mib=card.total_mib,
        declared_mib=card.declared_mib,
        replicas=card.replicas,
        live_free_mib=None if live is None else live.free_mib,
        live_used_mib=None if live is None else live.used_mib,
        telemetry_age_seconds=None if live is None else round(live.age(now), 1),
        pods=[f"{pod.namespace}/{pod.name}" for pod in card.pods],
    )
