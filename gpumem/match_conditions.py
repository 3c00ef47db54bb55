"""The webhook's CEL matchConditions, rendered from the policy.

The API server evaluates these before it calls the webhook, and only a pod for which they are
true is sent. They must send every pod the webhook would change or deny: each pod that asks
for a resource that makes a GPU pod in the policy (`gpuResourceNames` and `gpumemResourceName`,
what `gpumem.demand` reads), and each pod that could reach a GPU without asking
(`deviceEnvNames`, `gpuRuntimeClassNames`, `allowResourceClaims`: what webhook.decide denies).
A name in the policy but not in the CEL would let such pods through unjudged with nothing
failing. So the CEL is never written by hand; `python -m gpumem match-conditions` writes it
into manifests/base/mutatingwebhook.yaml, and a test fails when the file and the policy
differ.

Expression shape (the Helm chart renders the same string from its policy value; keep the two
byte for byte equal). With the names N1..Nk — every `gpuResourceNames` entry in policy order,
then `gpumemResourceName`, a repeated name kept once at its first place — let T(N, M) be
`'N' in M` for a name and `M.exists(r, r.startsWith('P'))` for a pattern `P*`, and

    REQ  = T(N1, c.resources.requests) || ... || T(Nk, c.resources.requests)
    LIM  = T(N1, c.resources.limits) || ... || T(Nk, c.resources.limits)
    TEST = has(c.resources) && ((has(c.resources.requests) && (REQ)) ||
           (has(c.resources.limits) && (LIM)))
    GPU  = object.spec.containers.exists(c, TEST) ||
           (has(object.spec.initContainers) && object.spec.initContainers.exists(c, TEST))

and the one condition, named `gpu-request-or-access`, is GPU followed by ` || ACCESS` for each
of `access_parts` (the device variables on containers, then on init containers, the
RuntimeClasses, the claims), laid out one per line after a `||` line (`condition_lines`),
joined with single spaces exactly at those line breaks (a folded block scalar does that; no
other whitespace). In a Go template: `{{ $req := list }}{{ range $names }}{{ $req = append $req
(printf "'%s' in c.resources.requests" .) }}{{ end }}` and `join " || " $req`, likewise for
limits, then the fixed text around them.

Why this shape:
- It cannot raise on a valid Pod. An evaluation error counts as a webhook failure, which under
  failurePolicy Fail rejects the pod. `containers` is required by Pod validation;
  `initContainers`, `resources`, `requests`, `limits`, `env`, `runtimeClassName` and
  `resourceClaims` are optional and each is guarded by has() before it is read (has() guards
  only its last step, hence one per level).
- Requests and limits both: an extended resource may be given as a limit alone (the request
  defaults to it), and the webhook reads both. Init containers too, since the webhook counts
  them (sidecars and plain init containers).
- Names are literal map keys and patterns literal prefixes: the policy validates each as a
  Kubernetes resource name or such a name's start followed by `*` (gpumem.policy), so none
  can contain a quote or a backslash.
- One condition, not one per concern: matchConditions are AND-ed, and a pod is to be sent when
  any of them holds.
- The access tests read only names (which variable, which class, whether a claim exists),
  never values: `NVIDIA_VISIBLE_DEVICES=void` is sent and answered "not a GPU pod". A CPU pod
  without those is still admitted without a call.
- Bounded cost. Kubernetes allows at most 64 matchConditions per webhook (admissionregistration
  validation), compiles each when the configuration is written, and gives all of a webhook's
  conditions one runtime cost budget per request (RuntimeCELCostBudgetMatchConditions,
  2,500,000; strict cost enforcement for webhooks is on by default since 1.32). A map lookup
  costs a constant, so a pod costs about (2 x names + 6) per container whose resources it
  reads, plus (variables + 2) per env entry and a scan of the keys per pattern; MAX_NAMES
  bounds each list. A pod past the budget gets an evaluation error, which failurePolicy Fail
  turns into a rejection: never a bypass. tests/e2e/test_match_conditions.py has the real
  kube-apiserver accept MAX_NAMES names and send exactly the pods gpumem.demand counts as GPU
  pods, and the access cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpumem.marked_block import replace_marked
from gpumem.policy import Policy

CONDITION_NAME = "gpu-request-or-access"

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
    return " || ".join(_test(name, f"c.resources.{field}") for name in names)


def _test(name: str, resources: str) -> str:
    """A name is a key lookup; a pattern (`vendor.example/prefix*`) a scan of the keys."""
    if name.endswith("*"):
        return f"{resources}.exists(r, r.startsWith('{name[:-1]}'))"
    return f"'{name}' in {resources}"


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
    return [{"name": CONDITION_NAME, "expression": expression_with_access(policy)}]


def render_block(policy: Policy, indent: int = 4) -> str:
    """The `matchConditions:` YAML of one webhook, between its markers, at `indent` spaces
    (the webhook's own keys' indentation)."""
    pad = " " * indent
    lines = [
        f"{pad}{BEGIN_MARKER}: rendered from policy.yaml by `make match-conditions`",
        f"{pad}matchConditions:",
        f"{pad}  - name: {CONDITION_NAME}",
        f"{pad}    expression: >-",
        *(f"{pad}      {line}" for line in condition_lines(policy)),
        f"{pad}{END_MARKER}",
    ]
    return "\n".join(lines) + "\n"


def replace_block(text: str, policy: Policy) -> str:
    """`text` (a MutatingWebhookConfiguration's YAML) with the marked block rendered anew from
    the policy; everything outside the markers is kept byte for byte."""
    return replace_marked(
        text,
        BEGIN_MARKER,
        END_MARKER,
        lambda indent: render_block(policy, indent),
        MatchConditionsError,
    )


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


def access_parts(policy: Policy) -> tuple[str, ...]:
    """The CEL tests, OR-ed after the GPU request test, that are true for a pod that may reach
    a GPU without a GPU request: a container (init or app) that sets one of the policy's
    deviceEnvNames, a pod naming one of its gpuRuntimeClassNames, or one with DRA
    resourceClaims (unless allowResourceClaims). The webhook denies those (webhook.decide),
    but only a pod the conditions send is ever judged, and matchConditions are AND-ed: so they
    are part of the one condition, not conditions of their own.

    Every optional field is has()-guarded and the literals are validated names (env names,
    RuntimeClass names), so none can raise on a valid Pod. The value of the variable is left
    to the webhook (void, none and empty give no card): the CEL only decides who is asked.
    """
    for listed, what in (
        (policy.device_env_names, "deviceEnvNames"),
        (policy.gpu_runtime_class_names, "gpuRuntimeClassNames"),
    ):
        if len(listed) > MAX_NAMES:
            raise MatchConditionsError(
                f"the policy names {len(listed)} {what}; the webhook's matchConditions test "
                f"at most {MAX_NAMES}"
            )
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
    return tuple(parts)


def condition_lines(policy: Policy) -> tuple[str, ...]:
    """The one condition as it is laid out in the YAML file: the GPU request test, then each
    access test after its own `||` line."""
    lines = list(expression_lines(resource_names(policy)))
    for part in access_parts(policy):
        lines += ["||", part]
    return tuple(lines)


def expression_with_access(policy: Policy) -> str:
    """The one condition: a GPU request, or a way to a GPU without one."""
    return " ".join(condition_lines(policy))
