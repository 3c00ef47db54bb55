"""PodDraft: copy-on-write edits of a raw object, sent as a jsonpatch diff."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.patching import JsonPath, PodDraft


def apply(original: dict[str, Any], draft: PodDraft) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(original, draft.patch())
    return result


EDITS = [
    pytest.param(
        {"spec": {"a": 1}},
        [("set", ("spec", "b"), "x")],
        [{"op": "add", "path": "/spec/b", "value": "x"}],
        id="add a member",
    ),
    pytest.param(
        {"spec": {"a": 1}},
        [("set", ("spec", "a"), 2)],
        [{"op": "replace", "path": "/spec/a", "value": 2}],
        id="replace a member",
    ),
    pytest.param(
        {"spec": {"a": 1}},
        [("remove", ("spec", "a"), None)],
        [{"op": "remove", "path": "/spec/a"}],
        id="remove a member",
    ),
    pytest.param(
        {"spec": {"a": 1}},
        [("remove", ("spec", "missing"), None), ("remove", ("nothing", "here"), None)],
        [],
        id="removing what is not there changes nothing",
    ),
    pytest.param(
        {"spec": {"a": 1}},
        [("set", ("spec", "a"), 1)],
        [],
        id="setting the same value sends no patch",
    ),
    pytest.param(
        {"spec": {}},
        [("set", ("spec", "resources", "limits", "vramguard.io/gpumem"), "1")],
        [
            {
                "op": "add",
                "path": "/spec/resources",
                "value": {"limits": {"vramguard.io/gpumem": "1"}},
            }
        ],
        id="missing parents are created",
    ),
    pytest.param(
        {"spec": {"resources": {"requests": None}}},
        [("set", ("spec", "resources", "requests", "a/b"), "1")],
        [{"op": "replace", "path": "/spec/resources/requests", "value": {"a/b": "1"}}],
        id="null parent becomes an object",
    ),
    pytest.param(
        {"spec": {"resources": {"limits": [], "requests": "x"}}},
        [
            ("set", ("spec", "resources", "limits", "a"), "1"),
            ("set", ("spec", "resources", "requests", "a"), "1"),
        ],
        [
            {"op": "replace", "path": "/spec/resources/limits", "value": {"a": "1"}},
            {"op": "replace", "path": "/spec/resources/requests", "value": {"a": "1"}},
        ],
        id="a list or a string where an object belongs becomes an object",
    ),
    pytest.param(
        {"c": [{"n": "x"}, {"n": "y", "r": {"a~b/c": "0"}}]},
        [("set", ("c", 1, "r", "a~b/c"), "1")],
        [{"op": "replace", "path": "/c/1/r/a~0b~1c", "value": "1"}],
        id="array item by index, pointer escaping of ~ and /",
    ),
    pytest.param(
        {"c": [{"n": "x"}]},
        [("append", ("c", 0, "env"), {"name": "A", "value": "1"})],
        [{"op": "add", "path": "/c/0/env", "value": [{"name": "A", "value": "1"}]}],
        id="append where there is no array adds one",
    ),
    pytest.param(
        {"c": [{"env": [{"name": "K", "value": "v"}]}]},
        [
            ("append", ("c", 0, "env"), {"name": "A", "value": "1"}),
            ("append", ("c", 0, "env"), {"name": "B", "value": "2"}),
        ],
        [
            {"op": "add", "path": "/c/0/env/1", "value": {"name": "A", "value": "1"}},
            {"op": "add", "path": "/c/0/env/2", "value": {"name": "B", "value": "2"}},
        ],
        id="appends to an array are adds past its end, in order; its items are not resent",
    ),
    pytest.param(
        {"c": [{"env": []}]},
        [("append", ("c", 0, "env"), "x"), ("set", ("c", 0, "name"), "n")],
        [
            {"op": "add", "path": "/c/0/env/0", "value": "x"},
            {"op": "add", "path": "/c/0/name", "value": "n"},
        ],
        id="append to an empty array",
    ),
    pytest.param(
        {"c": [{"env": None}]},
        [("append", ("c", 0, "env"), "x")],
        [{"op": "replace", "path": "/c/0/env", "value": ["x"]}],
        id="a null where an array belongs becomes one",
    ),
    pytest.param(
        {"c": [{"env": [{"name": "K", "value": "v"}]}]},
        [("set", ("c", 0, "env", 0, "value"), "w"), ("append", ("c", 0, "env"), "x")],
        [
            {"op": "replace", "path": "/c/0/env/0/value", "value": "w"},
            {"op": "add", "path": "/c/0/env/1", "value": "x"},
        ],
        id="an item changed in place and one appended",
    ),
]


@pytest.mark.parametrize(("original", "edits", "expected"), EDITS)
def test_edits(
    original: dict[str, Any], edits: list[tuple[str, JsonPath, Any]], expected: list[Any]
) -> None:
    before = copy.deepcopy(original)
    draft = PodDraft(original)
    for action, path, value in edits:
        if action == "set":
            draft.set(path, value)
        elif action == "append":
            draft.append(path, value)
        else:
            draft.remove(path)
    assert draft.patch() == expected
    assert original == before
    assert apply(original, draft) == draft.current


def test_unchanged_subtrees_stay_shared() -> None:
    original = {"spec": {"volumes": [{"name": "v"}], "containers": [{"name": "a"}, {"name": "b"}]}}
    draft = PodDraft(original)
    draft.set(("spec", "containers", 1, "image"), "x")
    assert draft.current["spec"]["volumes"] is original["spec"]["volumes"]
    assert draft.current["spec"]["containers"][0] is original["spec"]["containers"][0]
    assert draft.current["spec"]["containers"][1] is not original["spec"]["containers"][1]
    assert original["spec"]["containers"][1] == {"name": "b"}


def test_an_array_index_must_exist() -> None:
    draft = PodDraft({"spec": {"containers": {"0": {}}}})
    with pytest.raises(KeyError):
        draft.set(("spec", "containers", 0, "name"), "x")
    with pytest.raises(KeyError):
        PodDraft({"c": [{}]}).set(("c", 3), "x")


def test_get_reads_through_the_draft() -> None:
    draft = PodDraft({"spec": {"containers": [{"name": "a"}]}})
    assert draft.get(("spec", "containers", 0, "name")) == "a"
    assert draft.get(("spec", "containers", 5, "name")) is None
    assert draft.get(("spec", "containers", "x")) is None
    draft.set(("spec", "containers", 0, "name"), "b")
    assert draft.get(("spec", "containers", 0, "name")) == "b"


# --- property: whatever the draft does, the patch reproduces it on the original --------------

KEYS = st.sampled_from(["a", "b", "c/d", "e~f", "0", "spec"])
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "x", "1", "a/b"])
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


def _paths(doc: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    """Every path into doc, and one more key under each object."""
    found: list[JsonPath] = [prefix] if prefix else []
    if isinstance(doc, dict):
        found.append((*prefix, "new"))
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


@settings(max_examples=300, deadline=None)
@given(
    original=st.dictionaries(KEYS, DOCUMENTS, min_size=1, max_size=4),
    data=st.data(),
)
def test_patch_turns_the_original_into_the_draft(original: dict[str, Any], data: Any) -> None:
    before = copy.deepcopy(original)
    draft = PodDraft(original)
    for _ in range(data.draw(st.integers(1, 5))):
        paths = _paths(draft.current)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["remove", "set", "append"]))
        if action == "remove" and not isinstance(path[-1], int):
            draft.remove(path)
        elif action == "append" and (
            isinstance(draft.get(path), list) or _settable(draft.current, path)
        ):
            draft.append(path, data.draw(SCALARS))
        elif _settable(draft.current, path):
            draft.set(path, data.draw(SCALARS))
    assert original == before
    # Compared as JSON text: Python's == would let True pass for 1.
    assert _json(apply(original, draft)) == _json(draft.current)
    again = PodDraft(draft.current)
    assert again.patch() == []


def _json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)


def _settable(doc: Any, path: JsonPath) -> bool:
    # An array index must exist (the draft edits items in place; only append grows an array).
    node = doc
    for key in path[:-1]:
        container: Any = node  # a str key on a list fails here, as it should
        node = container[key] if isinstance(node, dict | list) else None
        if node is None:
            return True
    return not isinstance(node, list) or (isinstance(path[-1], int) and path[-1] < len(node))
