"""kube.secrets: the Secret and caBundle I/O, its concurrency errors, and the objects' shapes."""

from __future__ import annotations

import base64

import pytest
import urllib3

from kube.secrets import (
    AlreadyExists,
    Conflict,
    KubernetesTLSStore,
    TLSStoreError,
    ca_bundle_patch,
    ca_bundles,
    object_annotations,
    resource_version,
    secret_body,
    secret_data,
)
from tests.unit.kube.fake_tls_api import FakeTLSAPI
from tests.unit.kube.fakes import api_error


def store(api: FakeTLSAPI) -> KubernetesTLSStore:
    return KubernetesTLSStore(
        api,
        api,
        namespace="vramguard",
        secret="vramguard-webhook-tls",
        webhook_configuration="vramguard",
    )


def body(**data: bytes | None) -> dict[str, object]:
    return secret_body(
        namespace="vramguard",
        name="vramguard-webhook-tls",
        data=data,
        annotations={"vramguard.io/ca-bundle-generation": "1"},
        labels={"app.kubernetes.io/part-of": "vramguard"},
    )


def test_a_missing_secret_or_configuration_reads_as_none() -> None:
    api = FakeTLSAPI()
    assert store(api).read_secret() is None
    assert store(api).read_webhook_configuration() is None
    assert [name for name, _, _ in api.calls] == [
        "read_namespaced_secret",
        "read_mutating_webhook_configuration",
    ]
    assert api.calls[0][1] == ("vramguard-webhook-tls", "vramguard")


def test_a_second_create_loses_with_already_exists() -> None:
    api = FakeTLSAPI()
    created = store(api).create_secret(body(**{"tls.crt": b"c", "tls.key": b"k"}))
    assert created["type"] == "kubernetes.io/tls"
    assert secret_data(created) == ({"tls.crt": b"c", "tls.key": b"k"}, [])
    with pytest.raises(AlreadyExists, match="already exists"):
        store(api).create_secret(body(**{"tls.crt": b"other"}))


def test_a_replace_from_a_stale_read_loses_with_conflict() -> None:
    api = FakeTLSAPI()
    tls = store(api)
    first = tls.create_secret(body(**{"tls.crt": b"1"}))
    second = tls.replace_secret(dict(first, data={"tls.crt": base64.b64encode(b"2").decode()}))
    assert resource_version(second) != resource_version(first)
    with pytest.raises(Conflict, match="the object has been modified"):
        tls.replace_secret(first)
    with pytest.raises(ValueError, match="blindly"):
        tls.replace_secret(body())


def test_the_ca_bundle_patch_sets_every_webhook_and_is_conditional() -> None:
    api = FakeTLSAPI()
    configuration = api.add_configuration(webhooks=2)
    tls = store(api)
    read = tls.read_webhook_configuration()
    assert read is not None
    patch = ca_bundle_patch(read, b"PEM", {"vramguard.io/ca-bundle-generation": "3"})
    assert patch == {
        "metadata": {
            "resourceVersion": configuration["metadata"]["resourceVersion"],
            "annotations": {"vramguard.io/ca-bundle-generation": "3"},
        },
        "webhooks": [
            {"name": "pods-0.vramguard.io", "clientConfig": {"caBundle": "UEVN"}},
            {"name": "pods-1.vramguard.io", "clientConfig": {"caBundle": "UEVN"}},
        ],
    }
    patched = tls.patch_webhook_configuration(patch)
    assert ca_bundles(patched) == [("pods-0.vramguard.io", b"PEM"), ("pods-1.vramguard.io", b"PEM")]
    # The service reference is kept: the merge is by webhook name, field by field.
    assert patched["webhooks"][0]["clientConfig"]["service"]["name"] == "x"
    assert object_annotations(patched) == {"vramguard.io/ca-bundle-generation": "3"}
    with pytest.raises(Conflict):
        tls.patch_webhook_configuration(patch)  # the resourceVersion it carries is gone


def test_errors_say_what_failed_and_why() -> None:
    api = FakeTLSAPI()
    api.failure = api_error(
        403, "Forbidden", 'secrets "vramguard-webhook-tls" is forbidden: cannot get'
    )
    with pytest.raises(TLSStoreError) as forbidden:
        store(api).read_secret()
    assert str(forbidden.value) == (
        "reading Secret vramguard/vramguard-webhook-tls: 403 "
        'secrets "vramguard-webhook-tls" is forbidden: cannot get'
    )
    connection = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPConnection("localhost"),
        "Failed to establish a new connection: [Errno 111] Connection refused",
    )
    api.failure = urllib3.exceptions.MaxRetryError(
        urllib3.HTTPConnectionPool("localhost"), "/api/v1/secrets", connection
    )
    with pytest.raises(TLSStoreError) as unreachable:
        store(api).patch_webhook_configuration({})
    assert str(unreachable.value) == (
        "patching MutatingWebhookConfiguration vramguard: cannot reach the API server: "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )


def test_a_body_built_on_a_read_keeps_what_is_not_ours() -> None:
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": "vramguard-webhook-tls",
            "namespace": "vramguard",
            "resourceVersion": "7",
            "labels": {"team": "gpu"},
            "annotations": {"note": "keep", "vramguard.io/rotate": "ca"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "data": {"extra": "eA==", "next-ca.crt": "eA=="},
    }
    built = secret_body(
        namespace="vramguard",
        name="vramguard-webhook-tls",
        data={"tls.crt": b"c", "next-ca.crt": None},
        annotations={"vramguard.io/rotate": None, "vramguard.io/ca-bundle-generation": "2"},
        labels={"app.kubernetes.io/part-of": "vramguard"},
        existing=existing,
    )
    assert built["data"] == {"extra": "eA==", "tls.crt": "Yw=="}
    assert built["metadata"] == {
        "name": "vramguard-webhook-tls",
        "namespace": "vramguard",
        "resourceVersion": "7",
        "labels": {"team": "gpu", "app.kubernetes.io/part-of": "vramguard"},
        "annotations": {"note": "keep", "vramguard.io/ca-bundle-generation": "2"},
    }
    assert existing["data"] == {"extra": "eA==", "next-ca.crt": "eA=="}, "the read is untouched"


def test_undecodable_values_are_named_not_raised() -> None:
    data, bad = secret_data({"data": {"tls.crt": "not base64!", "ca.crt": "Y2E="}})
    assert (data, bad) == ({"ca.crt": b"ca"}, ["tls.crt"])
    assert secret_data({"data": None}) == ({}, [])
    configuration = {"webhooks": [{"name": "a", "clientConfig": {"caBundle": "%%%"}}, "junk"]}
    assert ca_bundles(configuration) == [("a", b"")]
    with pytest.raises(ValueError, match="resourceVersion"):
        ca_bundle_patch({"webhooks": []}, b"", {})
