"""The kube-scheduler extender wire types (k8s.io/kube-scheduler/extender/v1).

The Go structs carry no json tags, so the keys are the Go field names in PascalCase. Go encodes a
nil slice, map or pointer as null, so every list and map here also accepts null (read as empty).
Pod and Node objects stay raw dicts: the fit rule reads a few fields, and nodes handed back in a
filter result must keep every field the scheduler sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_pascal
from typing_extensions import TypedDict

from gpumem.objects import metadata_text

MAX_EXTENDER_PRIORITY: Final = 10
MIN_EXTENDER_PRIORITY: Final = 0

T = TypeVar("T")


def _null_as_empty_list(value: object) -> object:
    return [] if value is None else value


def _null_as_empty_dict(value: object) -> object:
    return {} if value is None else value


NullableList = Annotated[list[T], BeforeValidator(_null_as_empty_list)]
RawObject = dict[str, Any]


class _Wire(BaseModel):
    # Unknown keys are ignored: a newer scheduler may send fields this version does not know.
    model_config = ConfigDict(
        alias_generator=to_pascal,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


class NodeList(BaseModel):
    """A v1 NodeList (camelCase: it is a Kubernetes object, not an extender type)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    items: NullableList[RawObject] = []


class ExtenderArgs(_Wire):
    """The body of filter and prioritize: NodeNames when the extender is nodeCacheCapable,
    Nodes otherwise."""

    pod: RawObject
    nodes: NodeList | None = None
    node_names: list[str] | None = None

    @property
    def node_cache_capable(self) -> bool:
        return self.nodes is None and self.node_names is not None

    def candidate_names(self) -> list[str]:
        """Candidate node names in request order, from whichever form was sent."""
        if self.nodes is None:
            return list(self.node_names or ())
        return [node_name(node) for node in self.nodes.items]


class ExtenderFilterResult(_Wire):
    nodes: NodeList | None = None
    node_names: list[str] | None = None
    failed_nodes: dict[str, str] = {}
    failed_and_unresolvable_nodes: dict[str, str] = {}
    error: str = ""


class HostPriority(TypedDict):
    """One node's score. A TypedDict, not a model: /prioritize answers one per candidate node
    and a model instance each would cost more than scoring the node."""

    Host: str
    Score: int


HostPriorityList = TypeAdapter(list[HostPriority])


class ExtenderBindingArgs(_Wire):
    pod_name: str
    pod_namespace: str
    pod_uid: str = Field(alias="PodUID")
    node: str


class ExtenderBindingResult(_Wire):
    error: str = ""


class MetaPod(_Wire):
    uid: str = Field(alias="UID")


class Victims(_Wire):
    pods: NullableList[RawObject] = []
    num_pdb_violations: int = Field(default=0, alias="NumPDBViolations")


class MetaVictims(_Wire):
    pods: NullableList[MetaPod] = []
    num_pdb_violations: int = Field(default=0, alias="NumPDBViolations")


class ExtenderPreemptionArgs(_Wire):
    """NodeNameToMetaVictims when the extender is nodeCacheCapable, NodeNameToVictims
    otherwise; either way each victim is identified by its UID."""

    pod: RawObject
    node_name_to_victims: Annotated[dict[str, Victims], BeforeValidator(_null_as_empty_dict)] = {}
    node_name_to_meta_victims: Annotated[
        dict[str, MetaVictims], BeforeValidator(_null_as_empty_dict)
    ] = {}

    def victims_by_node(self) -> dict[str, MetaVictims]:
        """Both forms as UIDs; the meta form wins where a node appears in both."""
        merged = {
            node: MetaVictims(
                pods=[MetaPod(uid=pod_uid(pod)) for pod in victims.pods],
                num_pdb_violations=victims.num_pdb_violations,
            )
            for node, victims in self.node_name_to_victims.items()
        }
        merged.update(self.node_name_to_meta_victims)
        return merged


class ExtenderPreemptionResult(_Wire):
    node_name_to_meta_victims: dict[str, MetaVictims] = {}


def node_name(node: RawObject) -> str:
    return metadata_text(node, "name")


def pod_uid(pod: RawObject) -> str:
    return metadata_text(pod, "uid")


def pod_key(pod: RawObject) -> tuple[str, str]:
    """(namespace, name) of a raw pod; empty strings where missing."""
    return metadata_text(pod, "namespace"), metadata_text(pod, "name")
