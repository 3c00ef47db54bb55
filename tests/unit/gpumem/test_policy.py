import json
from pathlib import Path

import pytest

from gpumem.hints import HintRules
from gpumem.policy import Policy, PolicyError, load_policy, parse_policy, policy_schema
from gpumem.policy_file import PolicyFile

REPO = Path(__file__).resolve().parents[3]

SAMPLE = """
gpuResourceNames: ["nvidia.com/gpu"]
gpumemResourceName: "vramguard.io/gpumem"
schedulerName: "vramguard-scheduler"
excludedNamespaces: ["kube-system"]
defaults:
  priorityClassName: "tier-2-gpu"
  gpumemMiB: 1024
  maxGpumemMiB: 8192
  requireDeclaration: false
namespaces:
  immich: {priorityClassName: "tier-1-gpu", gpumemMiB: 3000}
  open: {maxGpumemMiB: null, priorityClassName: null}
namespaceLabels:
  tier: {"0": "tier-0-core", "1": "tier-1-cluster"}
"""


def test_issue_example_parses() -> None:
    policy = parse_policy(SAMPLE)
    assert policy.gpu_resource_names == ("nvidia.com/gpu",)
    assert policy.defaults.max_gpumem_mib == 8192
    assert policy.resource_names.gpumem == "vramguard.io/gpumem"


@pytest.mark.parametrize(
    ("namespace", "labels", "expected"),
    [
        ("immich", None, ("tier-1-gpu", "namespaces.immich", 3000, 8192)),
        ("other", None, ("tier-2-gpu", "defaults", 1024, 8192)),
        ("other", {"tier": "0"}, ("tier-0-core", "namespace label tier=0", 1024, 8192)),
        ("other", {"tier": "9"}, ("tier-2-gpu", "defaults", 1024, 8192)),
        # the namespace's own entry beats its label
        ("immich", {"tier": "0"}, ("tier-1-gpu", "namespaces.immich", 3000, 8192)),
        # an explicit null in the namespace entry switches the class and the cap off
        ("open", {"tier": "1"}, (None, "namespaces.open", 1024, None)),
    ],
)
def test_for_namespace(
    namespace: str, labels: dict[str, str] | None, expected: tuple[object, ...]
) -> None:
    rules = parse_policy(SAMPLE).for_namespace(namespace, labels)
    got = (
        rules.priority_class_name,
        rules.priority_class_source,
        rules.gpumem_mib,
        rules.max_gpumem_mib,
    )
    assert got == expected
    assert rules.excluded is False


def test_excluded_namespace() -> None:
    assert parse_policy(SAMPLE).for_namespace("kube-system").excluded is True


def test_empty_mapping_is_all_defaults() -> None:
    assert parse_policy("{}") == Policy()


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file_is_refused(text: str) -> None:
    with pytest.raises(PolicyError, match="the policy is empty"):
        parse_policy(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("defaults: {gpumemMiB: 0}", "defaults.gpumemMiB"),
        ("defaults: {gpumemMb: 10}", "defaults.gpumemMb: Extra inputs are not permitted"),
        ("gpuResourceNames: []", "gpuResourceNames"),
        ("gpuResourceNames: ['not a name']", "'not a name' is neither a valid resource name"),
        ("gpuResourceNames: ['*']", "'*' is neither a valid resource name nor a pattern"),
        ("gpuResourceNames: ['mig-*']", "nor a pattern (vendor.example/prefix*)"),
        ("gpuResourceNames: ['nvidia.com/m*g']", "neither a valid resource name"),
        ("gpuResourceNames: ['vramguard.io/*']", "must not also be listed in (or match)"),
        ("gpumemResourceName: nvidia.com/gpu", "must not also be listed"),
        ("namespaces: {Bad_NS: {}}", "'Bad_NS' is not a valid namespace name"),
        ("namespaces: {ok: {priorityClassName: UPPER}}", "namespaces.ok.priorityClassName"),
        ("extender: {staleMode: maybe}", "extender.staleMode"),
        ("extender: {telemetry: {preset: custom}}", "needs queries.freeMiB"),
        ("- a list", "top level must be a mapping"),
        ("defaults: {gpumemMiB: 900, maxGpumemMiB: 800}", "defaults: gpumemMiB 900 is above"),
        (
            "defaults: {gpumemMiB: 500, maxGpumemMiB: 800}\nnamespaces: {big: {gpumemMiB: 900}}",
            "namespaces.big: gpumemMiB 900 is above maxGpumemMiB 800",
        ),
        ("key: [unclosed", "not valid YAML"),
        ("defaults: {hints: {toolkitLimitFactor: 0.5}}", "defaults.hints.toolkitLimitFactor"),
        ("namespaces: {a: {hints: {cardMiB: 0}}}", "namespaces.a.hints.cardMiB"),
        ("namespaces: {a: {hints: {jaxx: true}}}", "namespaces.a.hints.jaxx: Extra inputs"),
    ],
)
def test_invalid_policy_names_the_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=None) as info:
        parse_policy(text, "policy.yaml")
    assert str(info.value).startswith("policy.yaml: ")
    assert message in str(info.value)


def test_patterns_match_by_prefix_names_exactly() -> None:
    names = parse_policy("gpuResourceNames: [nvidia.com/gpu, nvidia.com/mig-*]").resource_names
    assert names.gpu == {"nvidia.com/gpu"}
    assert names.gpu_prefixes == ("nvidia.com/mig-",)
    for resource, gpu in [
        ("nvidia.com/gpu", True),
        ("nvidia.com/mig-1g.10gb", True),
        ("nvidia.com/mig-", True),
        ("nvidia.com/gpu.shared", False),
        ("nvidia.com/mig", False),
        ("amd.com/gpu", False),
    ]:
        assert names.is_gpu_resource(resource) is gpu, resource
    assert names.marks_gpu("vramguard.io/gpumem")
    assert not names.is_gpu_resource("vramguard.io/gpumem")


def test_load_policy_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"defaults: {priorityClassName: \xff}")
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_policy(path)


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_shipped_policy_is_valid() -> None:
    policy = load_policy(REPO / "manifests/base/policy.yaml")
    assert policy.for_namespace("immich").gpumem_mib == 3000


def test_committed_schema_is_current() -> None:
    committed = json.loads((REPO / "gpumem/policy.schema.json").read_text())
    assert committed == policy_schema(), "run `make schema` and commit the result"


def test_policy_file_reload_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults: {gpumemMiB: 100}")
    source = PolicyFile(path)
    assert source.reload_if_changed() is None

    path.write_text("defaults: {gpumemMiB: 200}")
    outcome = source.reload_if_changed()
    assert outcome is not None
    assert outcome.ok
    assert source.current.defaults.gpumem_mib == 200

    path.write_text("defaults: {gpumemMiB: -1}")
    outcome = source.reload_if_changed()
    assert outcome is not None
    assert not outcome.ok
    assert "defaults.gpumemMiB" in (outcome.error or "")
    assert source.current.defaults.gpumem_mib == 200
    assert source.reload_if_changed() is None, "a broken edit is reported once"

    path.unlink()
    outcome = source.reload_if_changed()
    assert outcome is not None
    assert not outcome.ok
    assert source.current.defaults.gpumem_mib == 200
    assert source.reload_if_changed() is None, "a missing file is reported once"

    path.write_text("defaults: {gpumemMiB: 300}")
    outcome = source.reload_if_changed()
    assert outcome is not None
    assert outcome.ok
    assert source.last_error is None
    assert source.current.defaults.gpumem_mib == 300


def test_policy_file_first_load_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("schedulerName: [1]")
    with pytest.raises(PolicyError, match="schedulerName"):
        PolicyFile(path)


HINTS = """
defaults:
  hints: {cardMiB: 15360, containerToolkit: true}
namespaces:
  ml: {hints: {jax: true, toolkitLimitFactor: 1.25}}
  other-card: {hints: {cardMiB: 24576, dryRun: true}}
  no-card: {hints: {cardMiB: null, jax: true}}
  switched-off: {hints: {containerToolkit: false}}
  plain: {gpumemMiB: 2000}
"""


@pytest.mark.parametrize(
    ("namespace", "expected"),
    [
        (
            "ml",
            HintRules(container_toolkit=True, toolkit_limit_factor=1.25, jax=True, card_mib=15360),
        ),
        (
            "other-card",
            HintRules(
                container_toolkit=True,
                dry_run=True,
                card_mib=24576,
                card_source="namespaces.other-card.hints.cardMiB",
            ),
        ),
        (
            "no-card",
            HintRules(
                container_toolkit=True,
                jax=True,
                card_mib=None,
                card_source="namespaces.no-card.hints.cardMiB",
            ),
        ),
        ("switched-off", HintRules(card_mib=15360)),
        ("plain", HintRules(container_toolkit=True, card_mib=15360)),
        ("unlisted", HintRules(container_toolkit=True, card_mib=15360)),
    ],
)
def test_hints_resolve_field_by_field(namespace: str, expected: HintRules) -> None:
    assert parse_policy(HINTS).for_namespace(namespace).hints == expected


def test_hints_are_off_unless_the_policy_says_so() -> None:
    assert not Policy().for_namespace("any").hints.enabled
    assert (
        not load_policy(REPO / "manifests/base/policy.yaml").for_namespace("immich").hints.enabled
    )


def test_the_bypass_switches_as_written_in_yaml() -> None:
    policy = parse_policy(
        "minGpumemMiB: 256\nallowNodeName: true\nallowedSchedulerNames: [batch]\n"
        "defaults: {allowedPriorityClasses: null, maxPriority: 1000, "
        "disallowedPriorityClass: deny}\n"
        "namespaces: {a: {allowedPriorityClasses: [x], maxPriority: null}}\n"
    )
    assert (policy.min_gpumem_mib, policy.allow_node_name) == (256, True)
    assert policy.allowed_scheduler_names == ("batch",)
    rules = policy.for_namespace("a")
    assert (rules.allowed_priority_classes, rules.max_priority) == (("x",), None)
    assert rules.disallowed_priority_class == "deny"
    other = policy.for_namespace("b")
    assert (other.allowed_priority_classes, other.max_priority) == (None, 1000)


def test_defaults_are_closed() -> None:
    rules = parse_policy("{}").for_namespace("a")
    assert rules.allowed_priority_classes == ()
    assert parse_policy("{}").min_gpumem_mib == 1
    assert parse_policy("{}").allow_node_name is False


@pytest.mark.parametrize(
    "text",
    [
        "minGpumemMiB: 0",
        "minGpumemMiB: 2048",  # above the default gpumemMiB of 1024
        "allowedSchedulerNames: ['Bad Name']",
        "defaults: {allowedPriorityClasses: ['UPPER']}",
        "defaults: {maxPriority: 3000000000}",
        "defaults: {disallowedPriorityClass: keep}",
    ],
)
def test_bad_bypass_settings_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)
