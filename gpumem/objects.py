"""Reading raw Kubernetes objects (camelCase dicts as the API sends them) defensively.

Both services keep API objects as dicts so unknown fields survive; these accessors give the
parts they read without trusting the shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def mapping(value: object) -> Mapping[str, Any]:
    """The value if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def sequence(value: object) -> list[Any]:
    """The value if it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's metadata, or an empty mapping."""
    return mapping(obj.get("metadata"))


def metadata_text(obj: Mapping[str, Any], key: str) -> str:
    """A string field of the object's metadata (name, namespace, uid, resourceVersion); ""
    where missing or not a string."""
    value = metadata(obj).get(key)
    return value if isinstance(value, str) else ""
