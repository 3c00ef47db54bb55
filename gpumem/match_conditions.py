"""The webhook's CEL matchConditions, rendered from the policy's resource names.

The API server evaluates these before it calls the webhook, and only a pod for which they are
true is sent. They must name exactly the resources that make a GPU pod in the policy
(`gpuResourceNames` and `gpumemResourceName`, what `gpumem.demand` reads): a name in the policy
but not in the CEL would let such pods through unmutated with nothing failing. So the CEL is
never written by hand; `python -m gpumem match-conditions` writes it into
manifests/base/mutatingwebhook.yaml, and a test fails when the file and the policy differ.

Expression shape (the Helm chart renders the same string from its policy value; keep the two
byte for byte equal). With the names N1..Nk — every `gpuResourceNames` entry in policy order,
then `gpumemResourceName`, a repeated name kept once at its first place — let

    REQ  = 'N1' in c.resources.requests || ... || 'Nk' in c.resources.requests
    LIM  = 'N1' in c.resources.limits || ... || 'Nk' in c.resources.limits
    TEST = has(c.resources) && ((has(c.resources.requests) && (REQ)) ||
           (has(c.resources.limits) && (LIM)))

and the one condition, named `requests-gpu-or-gpumem`, is

    object.spec.containers.exists(c, TEST) ||
    (has(object.spec.initContainers) && object.spec.initContainers.exists(c, TEST))

joined with single spaces exactly at the line breaks of EXPRESSION_LINES below (no other
whitespace). In a Go template: `{{ $req := list }}{{ range $names }}{{ $req = append $req
(printf "'%s' in c.resources.requests" .) }}{{ end }}` and `join " || " $req`, likewise for
limits, then the fixed text around them.

Why this shape:
- It cannot raise on a valid Pod. An evaluation error counts as a webhook failure, which under
  failurePolicy Fail rejects the pod. `containers` is required by Pod validation;
  `initContainers`, `resources`, `requests` and `limits` are optional and each is guarded by
  has() before it is read (has() guards only its last step, hence one per level).
- Requests and limits both: an extended resource may be given as a limit alone (the request
  defaults to it), and the webhook reads both. Init containers too, since the webhook counts
  them (sidecars and plain init containers).
- Names are literal map keys: the policy validates each as a Kubernetes resource name
  (gpumem.policy), so none can contain a quote or a backslash, and no pattern syntax exists to
  translate. (Should the policy ever accept patterns, they would need `startsWith` or `matches`
  over `c.resources.requests.exists(r, ...)` here.)
- One condition however many names. Kubernetes allows at most 64 matchConditions per webhook
  (admissionregistration validation), compiles each when the configuration is written, and
  gives all of a webhook's conditions one runtime cost budget per request
  (RuntimeCELCostBudgetMatchConditions, 2,500,000; strict cost enforcement for webhooks is on
  by default since 1.32). A map lookup costs a constant, so a pod costs about
  (2 x names + 6) per container whose resources it reads; MAX_NAMES keeps that under the
  budget for any pod with fewer than about 30,000 containers. A pod past it gets an evaluation
  error, which failurePolicy Fail turns into a rejection: never a bypass.
  tests/e2e/test_match_conditions.py has the real kube-apiserver accept MAX_NAMES names and
  send exactly the pods gpumem.demand counts as GPU pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpumem.policy import Policy

CONDITION_NAME = "requests-gpu-or-gpumem"

# A bound on the names the CEL tests, far above any real policy (one or two GPU resources and
# the gpumem one): 2 lists x 2 fields x MAX_NAMES lookups per container.
MAX_NAMES = 32

BEGIN_MARKER = "# BEGIN matchConditions"
END_MARKER = "# END matchConditions"


class MatchConditionsError(ValueError):
    """A policy or a file the conditions cannot be rendered from or into."""


def resource_names(policy: Policy) -> tuple[str, ...]:
    """The names the CEL tests, in the order it tests them: every GPU resource in policy order,
    then the GPU-memory resource; each once."""
    names = tuple(dict.fromkeys([*policy.gpu_resource_names, policy.gpumem_resource_name]))
    if len(names) > MAX_NAMES:
        raise MatchConditionsError(
            f"the policy names {len(names)} GPU resources; the webhook's matchConditions test "
            f"at most {MAX_NAMES}"
        )
    for name in names:
        # The policy's validator already refuses these; a literal must never be closed early.
        if "'" in name or "\\" in name or " " in name:
            raise MatchConditionsError(f"{name!r} cannot be written as a CEL string literal")
    return names


def _any_of(names: Sequence[str], field: str) -> str:
    return " || ".join(f"'{name}' in c.resources.{field}" for name in names)


def expression_lines(names: Sequence[str]) -> tuple[str, ...]:
    """The expression as it is laid out in the YAML file: its text is these lines joined with
    single spaces (a folded block scalar does exactly that)."""
    if not names:
        raise MatchConditionsError("at least one resource name is needed")
    container = (
        "has(c.resources) &&",
        "((has(c.resources.requests) &&",
        f"({_any_of(names, 'requests')})) ||",
        "(has(c.resources.limits) &&",
        f"({_any_of(names, 'limits')}))))",
    )
    return (
        f"object.spec.containers.exists(c, {container[0]}",
        *container[1:],
        "||",
        f"(has(object.spec.initContainers) && object.spec.initContainers.exists(c, {container[0]}",
        *container[1:-1],
        f"{container[-1]})",
    )


def expression(names: Sequence[str]) -> str:
    """The CEL expression, as the API server stores it."""
    return " ".join(expression_lines(names))


def match_conditions(policy: Policy) -> list[dict[str, str]]:
    """The webhook's matchConditions for this policy, as the API object holds them."""
    return [{"name": CONDITION_NAME, "expression": expression(resource_names(policy))}]


def render_block(policy: Policy, indent: int = 4) -> str:
    """The `matchConditions:` YAML of one webhook, between its markers, at `indent` spaces
    (the webhook's own keys' indentation)."""
    pad = " " * indent
    lines = [
        f"{pad}{BEGIN_MARKER}: rendered from policy.yaml by `make match-conditions`",
        f"{pad}matchConditions:",
        f"{pad}  - name: {CONDITION_NAME}",
        f"{pad}    expression: >-",
        *(f"{pad}      {line}" for line in expression_lines(resource_names(policy))),
        f"{pad}{END_MARKER}",
    ]
    return "\n".join(lines) + "\n"


def replace_block(text: str, policy: Policy) -> str:
    """`text` (a MutatingWebhookConfiguration's YAML) with the marked block rendered anew from
    the policy; everything outside the markers is kept byte for byte."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.lstrip().startswith(BEGIN_MARKER)]
    ends = [i for i, line in enumerate(lines) if line.lstrip().startswith(END_MARKER)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise MatchConditionsError(
            f"expected one {BEGIN_MARKER!r} line followed by one {END_MARKER!r} line"
        )
    begin, end = begins[0], ends[0]
    indent = len(lines[begin]) - len(lines[begin].lstrip())
    return "".join([*lines[:begin], render_block(policy, indent), *lines[end + 1 :]])


def strategic_merge_patch(
    policy: Policy, configuration: str = "vramguard", webhook: str = "pods.vramguard.io"
) -> Mapping[str, object]:
    """A kustomize patch that gives an overlay's webhook the conditions of the overlay's own
    policy file: webhooks and their matchConditions merge by name, so only the expression
    changes."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration},
        "webhooks": [{"name": webhook, "matchConditions": match_conditions(policy)}],
    }


def access_expression(policy: Policy) -> str:
    """The CEL that is true for a pod that may reach a GPU without a GPU request: a container
    (init or app) that sets one of the policy's deviceEnvNames, a pod naming one of its
    gpuRuntimeClassNames, or one with DRA resourceClaims (unless allowResourceClaims). The
    webhook denies those (webhook.decide), but only a pod the conditions send is ever judged,
    so this must be OR-ed into the one condition (matchConditions are AND-ed): see
    `expression_with_access`. Not wired in yet: the Helm chart renders the same string in
    _helpers.tpl and must change with it (byte-equality test).

    Every optional field is has()-guarded and the literals are validated names (env names,
    RuntimeClass names), so it cannot raise on a valid Pod. The value of the variable is left
    to the webhook (void, none and empty give no card): the CEL only decides who is asked.
    """
    parts = []
    if policy.device_env_names:
        names = " || ".join(f"e.name == '{name}'" for name in policy.device_env_names)
        test = f"has(c.env) && c.env.exists(e, {names})"
        parts.append(f"object.spec.containers.exists(c, {test})")
        parts.append(
            f"(has(object.spec.initContainers) && object.spec.initContainers.exists(c, {test}))"
        )
    if policy.gpu_runtime_class_names:
        classes = ", ".join(f"'{name}'" for name in policy.gpu_runtime_class_names)
        parts.append(
            f"(has(object.spec.runtimeClassName) && object.spec.runtimeClassName in [{classes}])"
        )
    if not policy.allow_resource_claims:
        parts.append("(has(object.spec.resourceClaims) && size(object.spec.resourceClaims) > 0)")
    return " || ".join(parts)


def expression_with_access(policy: Policy) -> str:
    """The one condition once the access rules are sent too: a GPU request, or a way to a GPU
    without one."""
    access = access_expression(policy)
    gpu = expression(resource_names(policy))
    return f"{gpu} || {access}" if access else gpu
