"""The ValidatingAdmissionPolicy that holds ephemeral containers to the device-variable rule,
rendered from the policy's `deviceEnvNames`.

Why it exists: the webhook denies, on Pod CREATE, a container that sets one of `deviceEnvNames`
(NVIDIA_VISIBLE_DEVICES by default) to a value that names cards without requesting a GPU
(webhook.decide `_gpu_access_denial`): the NVIDIA container runtime would hand it every card
named (`all`: every card of the node) outside any GPU-memory budget. Ephemeral containers
(`kubectl debug`) are not in the pod that was created: they are added later by an UPDATE of the
`pods/ephemeralcontainers` subresource, which the webhook is never sent (it sees Pod CREATE
only, and must keep it that way: UPDATE must never depend on vramguard being up). An ephemeral
container cannot have resources (Pod validation forbids them), so it can never request a GPU,
but it can set env. The API server itself closes that way in: a ValidatingAdmissionPolicy needs
no webhook, so it holds while vramguard is down.

The rule is the webhook's, for the containers that this request adds (an ephemeral container
already in oldObject was judged when it was added, and the API server refuses any change to
one; containers are matched by name, unique in a pod): a new ephemeral container is denied when
one of its `env` entries has a name in `deviceEnvNames` (exact, case-sensitive) and either a
`valueFrom` (its value is not known at admission) or a `value` other than "", "void" and "none"
(gpumem.policy.NO_DEVICES, the webhook's set; compared exactly as there, so `VOID` is
denied). No GPU request can excuse it, since an ephemeral container has none. `envFrom` is not
read, as the webhook does not read it for this rule either.

So the CEL is never written by hand: `python -m gpumem match-conditions` writes it into
manifests/base/ephemeral-containers-policy.yaml (the block between BEGIN_MARKER and END_MARKER),
and a test fails when the file and the policy differ. The Helm chart renders the same strings
in templates/_ephemeral.tpl (a test compares them byte for byte for several policies).

Expressions, with NAMES the policy's `deviceEnvNames` as a CEL list of string literals
(`['N1', 'N2']`, `[]` for none) and

    TEST = e.name in NAMES && (has(e.valueFrom) || (has(e.value) &&
           !(e.value in ['', 'void', 'none'])))

- variable `added`: the ephemeral containers this request adds (ADDED_EXPRESSION);
- variable `deviceEnv`: those of them with an env entry for which TEST holds:
  `variables.added.filter(c, has(c.env) && c.env.exists(e, TEST))`;
- validation `size(variables.deviceEnv) == 0`, reason Forbidden, with a messageExpression
  naming the first such container, its variable and value, and the namespace.

Each expression is its lines (the `*_lines` functions) joined by single spaces, as a folded
block scalar in the YAML file joins them.

Why this shape:
- It cannot raise on a valid Pod (failurePolicy Fail would turn an error into a denial):
  `ephemeralContainers` (in object and oldObject), `env`, `value` and `valueFrom` are optional
  and each is has()-guarded before it is read; `name` is required on containers and on env
  entries. The messageExpression runs only when the validation failed, so `deviceEnv` has a
  first element, and that element has an env entry for which TEST holds.
- Names are literals: the policy validates each as an environment variable name
  (`[A-Za-z_][A-Za-z0-9_]*`), so none can close a string literal early.
- An empty `deviceEnvNames` (the operator turned the rule off) keeps the objects, with `[]`
  for NAMES: `e.name in []` is false, so every request is admitted. The manifests and the
  chart then hold the same objects for every policy (no file that must come and go with a
  policy value, no chart condition), and the webhook, which also skips the rule then, agrees.
- Not judged, as the webhook's scope: kube-system, vramguard's own namespace and the node
  agent's, and the policy's `excludedNamespaces` (the webhook skips the rule there too), by
  the matchConstraints' namespaceSelector on `kubernetes.io/metadata.name`, which the API
  server sets on every Namespace and no user can change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gpumem.marked_block import replace_marked
from gpumem.policy import NO_DEVICES, Policy

POLICY_NAME = "vramguard-ephemeral-gpu-env"
SUBRESOURCE = "pods/ephemeralcontainers"

# Never judged whatever the policy says, as the webhook's namespaceSelector (the base's names;
# the chart uses its release's and the node agent's namespaces).
RELEASE_NAMESPACE = "vramguard"
NODE_AGENT_NAMESPACE = "vramguard-node"

BEGIN_MARKER = "# BEGIN ephemeralContainers"
END_MARKER = "# END ephemeralContainers"

ADDED_LINES: tuple[str, ...] = (
    "has(object.spec.ephemeralContainers) ?",
    "object.spec.ephemeralContainers.filter(c,",
    "!(has(oldObject.spec.ephemeralContainers) &&",
    "oldObject.spec.ephemeralContainers.exists(o, o.name == c.name))) :",
    "[]",
)
VALIDATION_EXPRESSION = "size(variables.deviceEnv) == 0"
# Shown when the messageExpression cannot be (a value with a line break, which the API server
# refuses in a message).
MESSAGE = (
    "an ephemeral container sets a GPU device variable (the policy's deviceEnvNames) to a "
    "value that names cards: ephemeral containers cannot request a GPU, so it would reach "
    "them outside any GPU-memory budget; leave the variable out or set it to void"
)


class EphemeralPolicyError(ValueError):
    """A policy or a file the ephemeral-container policy cannot be rendered from or into."""


def _literal(value: str) -> str:
    # The policy's validators refuse these already; a literal must never be closed early.
    if "'" in value or "\\" in value or "\n" in value:
        raise EphemeralPolicyError(f"{value!r} cannot be written as a CEL string literal")
    return f"'{value}'"


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(value) for value in values) + "]"


def env_test(policy: Policy) -> str:
    """TEST: true for an env entry `e` that hands the container cards."""
    return (
        f"e.name in {_list(policy.device_env_names)} && (has(e.valueFrom) || (has(e.value) && "
        f"!(e.value in {_list(NO_DEVICES)})))"
    )


def added_expression() -> str:
    """The ephemeral containers the request adds (not in oldObject, by name)."""
    return " ".join(ADDED_LINES)


def device_env_lines(policy: Policy) -> tuple[str, ...]:
    return ("variables.added.filter(c, has(c.env) &&", f"c.env.exists(e, {env_test(policy)}))")


def device_env_expression(policy: Policy) -> str:
    """The added ephemeral containers that set a device variable to cards."""
    return " ".join(device_env_lines(policy))


def message_lines(policy: Policy) -> tuple[str, ...]:
    return (
        "'ephemeral container ' + variables.deviceEnv[0].name + ' sets ' +",
        f"variables.deviceEnv[0].env.filter(e, {env_test(policy)}).map(e, e.name +",
        "(has(e.valueFrom) ? ' from valueFrom' : '=' + e.value))[0] +",
        "': ephemeral containers cannot request a GPU, so the container runtime would hand it",
        "those cards outside any GPU-memory budget; leave the variable out or set it to void",
        "(namespace ' + request.namespace + ')'",
    )


def message_expression(policy: Policy) -> str:
    return " ".join(message_lines(policy))


def excluded_namespaces(
    policy: Policy,
    release_namespace: str = RELEASE_NAMESPACE,
    node_agent_namespace: str = NODE_AGENT_NAMESPACE,
) -> list[str]:
    """The namespaces not judged, in the order the chart writes them: kube-system, vramguard's
    own, the node agent's, then the policy's excludedNamespaces; each once."""
    names = ["kube-system", release_namespace, node_agent_namespace, *policy.excluded_namespaces]
    return list(dict.fromkeys(names))


def policy_spec(
    policy: Policy,
    release_namespace: str = RELEASE_NAMESPACE,
    node_agent_namespace: str = NODE_AGENT_NAMESPACE,
) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy's spec, as the API object holds it."""
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["UPDATE"],
                    "resources": [SUBRESOURCE],
                }
            ],
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": excluded_namespaces(
                            policy, release_namespace, node_agent_namespace
                        ),
                    }
                ]
            },
        },
        "variables": [
            {"name": "added", "expression": added_expression()},
            {"name": "deviceEnv", "expression": device_env_expression(policy)},
        ],
        "validations": [
            {
                "expression": VALIDATION_EXPRESSION,
                "message": MESSAGE,
                "messageExpression": message_expression(policy),
                "reason": "Forbidden",
            }
        ],
    }


def _folded(pad: str, key: str, lines: Sequence[str]) -> list[str]:
    return [f"{pad}{key}: >-", *(f"{pad}  {line}" for line in lines)]


def render_block(policy: Policy, indent: int = 2) -> str:
    """The policy-dependent part of the ValidatingAdmissionPolicy's spec (matchConstraints,
    variables, validations), between its markers, at `indent` spaces (the spec's keys')."""
    pad = " " * indent
    namespaces = ", ".join(f'"{name}"' for name in excluded_namespaces(policy))
    lines = [
        f"{pad}{BEGIN_MARKER}: rendered from policy.yaml by `make match-conditions`",
        f"{pad}matchConstraints:",
        f"{pad}  resourceRules:",
        f'{pad}    - apiGroups: [""]',
        f'{pad}      apiVersions: ["v1"]',
        f'{pad}      operations: ["UPDATE"]',
        f'{pad}      resources: ["{SUBRESOURCE}"]',
        f"{pad}  namespaceSelector:",
        f"{pad}    matchExpressions:",
        f"{pad}      - key: kubernetes.io/metadata.name",
        f"{pad}        operator: NotIn",
        f"{pad}        values: [{namespaces}]",
        f"{pad}variables:",
        f"{pad}  - name: added",
        *_folded(f"{pad}    ", "expression", ADDED_LINES),
        f"{pad}  - name: deviceEnv",
        *_folded(f"{pad}    ", "expression", device_env_lines(policy)),
        f"{pad}validations:",
        f"{pad}  - expression: {VALIDATION_EXPRESSION}",
        *_folded(f"{pad}    ", "message", _wrap(MESSAGE)),
        *_folded(f"{pad}    ", "messageExpression", message_lines(policy)),
        f"{pad}    reason: Forbidden",
        f"{pad}{END_MARKER}",
    ]
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 80) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def replace_block(text: str, policy: Policy) -> str:
    """`text` (the policy's YAML file) with the marked block rendered anew from the policy;
    everything outside the markers is kept byte for byte."""
    return replace_marked(
        text,
        BEGIN_MARKER,
        END_MARKER,
        lambda indent: render_block(policy, indent),
        EphemeralPolicyError,
    )


def strategic_merge_patch(policy: Policy) -> Mapping[str, object]:
    """A kustomize patch that gives an overlay's ValidatingAdmissionPolicy the rules of the
    overlay's own policy file (these lists have no merge key: the patch replaces them)."""
    spec = policy_spec(policy)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {key: spec[key] for key in ("matchConstraints", "variables", "validations")},
    }
