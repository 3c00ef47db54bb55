"""Generate the Helm chart's derived files, the one way both the repository and its test do it:

    .venv/bin/python -m tests.unit.manifests.helm_schema

- ``values.schema.json``, from ``values.yaml``: every key it sets, with the type of its default
  (strings, integers, booleans, lists, nested maps), and no other key (a misspelt value fails
  `helm install` instead of being ignored). The exceptions are listed below by path: maps whose
  keys are the user's (labels, nodeSelector), Kubernetes structures passed through as they are
  (affinity, tolerations, resources), and the few values with a fixed set of choices. The
  ``policy`` value is validated by the policy's own JSON Schema (``gpumem.policy_schema``, the
  one ``make schema`` writes to gpumem/policy.schema.json), embedded whole: its ``$defs`` move to
  the root under a ``Policy`` prefix, and its references with them.
- ``files/``: copies of the kustomize sources the templates read with ``.Files.Get`` (a chart
  cannot read outside its folder, and a symbolic link makes every helm command print a warning):
  the scheduler's configuration and the PrometheusRule, whose ``{{ $labels }}`` are Prometheus's
  and must not go through Helm's templating.

The test (test_helm_chart.py) regenerates everything in memory and fails when a committed file
differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from gpumem.policy import policy_schema

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"
CHART = MANIFESTS / "helm" / "vramguard"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
# files/<name> in the chart: the source it copies, byte for byte.
COPIES = {
    "scheduler-config.yaml": MANIFESTS / "base" / "scheduler-config.yaml",
    "prometheusrule.yaml": MANIFESTS / "components" / "prometheus-rules" / "prometheusrule.yaml",
}
POLICY_PREFIX = "Policy"

Schema = dict[str, Any]

_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITIES: Schema = {
    "type": "object",
    "additionalProperties": {"type": ["string", "integer", "number"]},
}
_RESOURCES: Schema = {
    "type": "object",
    "properties": {"requests": _QUANTITIES, "limits": _QUANTITIES},
    "additionalProperties": False,
}
_PULL_POLICY: Schema = {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]}
# A value given as a Kubernetes API structure, passed to the pod spec as it is: the API server
# validates it (and the e2e apply test with it).
_KUBERNETES_MAP: Schema = {"type": "object"}
_KUBERNETES_LIST: Schema = {"type": "array", "items": {"type": "object"}}
_CIDR: Schema = {"type": "string", "pattern": r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"}

# By dotted path (fnmatch patterns): what the defaults' types cannot say.
OVERRIDES: Mapping[str, Schema] = {
    "commonLabels": _STRING_MAP,
    "commonAnnotations": _STRING_MAP,
    "podLabels": _STRING_MAP,
    "podAnnotations": _STRING_MAP,
    "*.labels": _STRING_MAP,
    "*.nodeSelector": _STRING_MAP,
    "*.affinity": _KUBERNETES_MAP,
    "*.tolerations": _KUBERNETES_LIST,
    "*.resources": _RESOURCES,
    "images.*.pullPolicy": _PULL_POLICY,
    "images.*.digest": {"type": "string", "pattern": r"^([a-z0-9]+:[0-9a-f]{32,})?$"},
    "images.pullSecrets": {"type": "array", "items": {"type": "string", "minLength": 1}},
    "certificates.mode": {"type": "string", "enum": ["selfManaged", "certManager", "provided"]},
    "networkPolicy.apiServerCIDRs": {"type": "array", "items": _CIDR, "minItems": 1},
    "*.replicas": {"type": "integer", "minimum": 1},
    "*Seconds": {"type": "integer", "minimum": 1},
    "nodeAgent.namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    "tests.namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
}


class ValuesError(Exception):
    """values.yaml holds something the generator has no rule for."""


def _override(path: str) -> Schema | None:
    for pattern, schema in OVERRIDES.items():
        if fnmatchcase(path, pattern):
            copied: Schema = json.loads(json.dumps(schema))  # the tables stay unshared
            return copied
    return None


def _inferred(path: str, value: Any) -> Schema:
    """The schema of one value: an override for its path, else the type of its default."""
    override = _override(path)
    if override is not None:
        return override
    # bool before int: in Python a bool is an int.
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "minimum": 0}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        kinds = {type(item) for item in value}
        if kinds != {str}:
            raise ValuesError(f"{path}: a list of {kinds or 'nothing'} needs an override")
        return {"type": "array", "items": {"type": "string"}}
    if isinstance(value, dict):
        return {
            "type": "object",
            "properties": {
                key: _inferred(f"{path}.{key}" if path else key, item)
                for key, item in value.items()
            },
            "additionalProperties": False,
        }
    raise ValuesError(f"{path}: {type(value).__name__} needs an override")


def _moved_refs(node: Any) -> Any:
    """The policy schema with every `#/$defs/X` reference pointing at `#/$defs/PolicyX`."""
    if isinstance(node, dict):
        return {
            key: (
                value.replace("#/$defs/", f"#/$defs/{POLICY_PREFIX}", 1)
                if key == "$ref" and isinstance(value, str)
                else _moved_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_moved_refs(item) for item in node]
    return node


def values_schema(values: Mapping[str, Any], policy: Mapping[str, Any]) -> Schema:
    """The chart's values schema: values.yaml's structure, the policy's schema for `policy`."""
    if "policy" not in values:
        raise ValuesError("values.yaml has no policy")
    moved = _moved_refs(dict(policy))
    definitions = moved.pop("$defs", {})
    dialect = moved.pop("$schema")
    root = _inferred("", {key: value for key, value in values.items() if key != "policy"})
    root["properties"]["policy"] = moved
    # Helm passes `global` to every chart, a subchart's parent's values included.
    root["properties"]["global"] = {"type": "object"}
    return {
        "$schema": dialect,
        "title": "vramguard chart values",
        **root,
        "$defs": {f"{POLICY_PREFIX}{name}": schema for name, schema in definitions.items()},
    }


def rendered_schema() -> str:
    values = yaml.safe_load(VALUES.read_text("utf-8"))
    schema = values_schema(values, policy_schema())
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def generated() -> dict[Path, bytes]:
    """Every derived file of the chart: where it goes, and its content."""
    files = {SCHEMA: rendered_schema().encode()}
    for name, source in COPIES.items():
        files[CHART / "files" / name] = source.read_bytes()
    return files


def write() -> list[Path]:
    written = []
    for path, content in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path.relative_to(REPO))
