"""/filter's per-node decisions kept for the /prioritize that follows it.

kube-scheduler calls an extender's /filter and then, for the same pod and the nodes that passed
every filter, its /prioritize. Both run the same fit rule on every candidate node; /prioritize
needs the headroom /filter already computed. FitMemo is /filter's answer for one pod, and
RecentFits keeps the last few by pod UID (one scheduler filters and scores one pod at a time,
so a handful covers several schedulers sharing the extender).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from gpumem.fit import Limits
from gpumem.state import NodeState

# How long after /filter its headrooms stand in for /prioritize's own fit check (FitMemo):
# kube-scheduler scores a pod's filtered nodes milliseconds after filtering them; a node whose
# telemetry turned stale since is ranked as filter saw it, as it was passed on what filter saw.
MEMO_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class FitMemo:
    """What /filter decided for one pod, for /prioritize: kube-scheduler asks /prioritize about
    the nodes that passed /filter, for the same pod, right after it. A node whose state is the
    same object as when /filter read it (the store replaces a node's state whenever anything
    in it changes) keeps /filter's headroom; any other node is checked again."""

    need: int
    limits: Limits
    decided_at: float
    nodes: Mapping[str, NodeState]  # the snapshot's nodes /filter read
    headrooms: Mapping[str, int]  # FilterResult.headrooms

    def reusable(self, need: int, limits: Limits, now: float) -> bool:
        return (
            self.need == need
            and self.limits == limits
            and 0 <= now - self.decided_at <= MEMO_SECONDS
        )


# Memos kept. Each holds one int per passed node (5,000 nodes: about 0.4 MiB) and the node
# states /filter read, which a store refresh since would otherwise free: so few, and none
# kept past MEMO_SECONDS once the next pod is filtered.
RECENT_FITS = 4


class RecentFits:
    """The last RECENT_FITS memos by pod UID, none older than MEMO_SECONDS at the last keep.
    Used on the event loop only."""

    def __init__(self, size: int = RECENT_FITS) -> None:
        self._size = size
        self._memos: OrderedDict[str, FitMemo] = OrderedDict()

    def keep(self, uid: str, memo: FitMemo) -> None:
        if not uid:
            return
        memos = self._memos
        memos[uid] = memo
        memos.move_to_end(uid)
        while len(memos) > self._size:
            memos.popitem(last=False)
        while memos:
            oldest = next(iter(memos.values()))
            if memo.decided_at - oldest.decided_at <= MEMO_SECONDS:
                break
            memos.popitem(last=False)

    def get(self, uid: str) -> FitMemo | None:
        return self._memos.get(uid) if uid else None

    def __len__(self) -> int:
        return len(self._memos)
