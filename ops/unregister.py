"""`vramguard unregister-webhook`: delete vramguard's MutatingWebhookConfiguration.

    vramguard unregister-webhook [--name vramguard] [--kubeconfig FILE]

The first step of an uninstall. The configuration fails closed, so while it exists and the
webhook does not (its Service, pods or certificate already gone), the API server refuses every
GPU pod create. With the configuration deleted first, GPU pods are admitted unmutated while the
rest of vramguard is removed. The Helm chart runs this as its pre-delete hook; after
`kubectl delete -k`, run it (or `kubectl delete mutatingwebhookconfiguration vramguard`) first.

Exit status: 0 when the configuration is gone (deleted now, or there was none); 1 when the
delete failed (the message says why: forbidden, the API unreachable); 2 when the kubeconfig
cannot be used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kube.client import api_client
from kube.errors import WriteError
from kube.webhook_configurations import delete_mutating_webhook_configuration
from ops import common, readings
from ops.common import FAILED, OK

NAME = "unregister-webhook"
DEFAULT_CONFIGURATION = "vramguard"


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="delete vramguard's MutatingWebhookConfiguration (the first step of an uninstall)",
        description="Delete the MutatingWebhookConfiguration, so that the API server stops "
        "calling the webhook (it fails closed: without a webhook to answer, GPU pods would be "
        "refused) before anything else of vramguard is removed. Gone already counts as done.",
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_CONFIGURATION,
        help=f"the configuration's name (default {DEFAULT_CONFIGURATION})",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig (default: in-cluster, else ~/.kube/config)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        api = readings.connect(args.kubeconfig, api_client)
    except readings.ReadError as err:
        return common.fail(NAME, str(err), err.status)
    try:
        deleted = delete_mutating_webhook_configuration(api, args.name)
    except WriteError as err:
        return common.fail(NAME, err.problem, FAILED)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    if deleted:
        print(
            f"deleted MutatingWebhookConfiguration {args.name}: "
            "the API server no longer calls the webhook"
        )
    else:
        print(f"MutatingWebhookConfiguration {args.name} does not exist: nothing to do")
    return OK
