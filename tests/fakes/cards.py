"""The fake cards' UUIDs, one function for every fake that names a card: the GPU exporter,
the device plugin (which hands the UUIDs to the kubelet) and the fake NVML (which the node
agent reads them from). When all three say the same UUID, the kubelet's PodResources, NVML
and the metrics agree on which card a pod holds, as they do on a real GPU node."""

from __future__ import annotations

import uuid


def card_uuid(node: str, index: int) -> str:
    """The UUID of card ``index`` of ``node``: stable across runs, so a test can name the card
    in what it expects (`gpu 1 (GPU-8f3c…)`)."""
    name = node if index == 0 else f"{node}/gpu{index}"  # card 0 keeps the one-card UUID
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, name)}"
