"""Free capacity of the cluster during one pass, indexed so that finding a node is cheap.

Cores are counted in integer millicores so that sums are exact and a node is never
over-committed by rounding. Nodes are bucketed by label set; inside a bucket the nodes are
kept in two sorted lists (by free cores and by free memory), so a request that fits
nowhere is rejected in O(1) and best fit or worst fit is found by a bounded scan from a
binary-search starting point instead of a scan of every node.

A node that already holds an instance's image is preferred (`prefer_image`): pulling or
building an image takes seconds to minutes, far more than a slightly looser packing.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence

from .model import NodeState

MILLI = 1000


def millicores(cores: float) -> int:
    """Cores as integer millicores (the unit the core computes in)."""
    return round(cores * MILLI)


class Bucket:
    """The available nodes sharing one label set, sorted by free cores and free memory.

    A `closed` bucket is held for an execution that waited too long: nothing ranked
    after it may take room there.
    """

    __slots__ = ("by_cores", "by_memory", "closed", "labels")

    def __init__(self, labels: frozenset[str]) -> None:
        self.labels = labels
        self.by_cores: list[tuple[int, int, int]] = []
        self.by_memory: list[tuple[int, int]] = []
        self.closed = False

    def can_fit(self, cores: int, memory: int) -> bool:
        """Whether some node of the bucket may hold the request (a quick necessary test)."""
        return (
            not self.closed
            and bool(self.by_cores)
            and self.by_cores[-1][0] >= cores
            and self.by_memory[-1][0] >= memory
        )


class Cluster:
    """Free cores and memory per node for one pass, with a fitting index per label set."""

    __slots__ = (
        "_eligible",
        "_holders",
        "_wc",
        "_wm",
        "available",
        "buckets",
        "cap_c",
        "cap_m",
        "count",
        "free_c",
        "free_m",
        "index",
        "labels",
        "names",
        "node_bucket",
        "node_images",
    )

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.cap_c: list[int] = []
        self.cap_m: list[int] = []
        self.available: list[bool] = []
        self.labels: list[frozenset[str]] = []
        self._holders: dict[str, list[int]] = {}  # image -> the nodes holding it
        self.node_images: list[frozenset[str]] = []
        for node in nodes:
            if node.name in self.index:
                continue
            self.index[node.name] = len(self.names)
            self.names.append(node.name)
            self.cap_c.append(millicores(node.cores))
            self.cap_m.append(node.memory)
            self.available.append(node.available)
            self.labels.append(node.labels)
            self.node_images.append(node.images)
            for image in node.images:
                self._holders.setdefault(image, []).append(self.index[node.name])
        self.free_c = list(self.cap_c)
        self.free_m = list(self.cap_m)
        self.count = [0] * len(self.names)
        self.buckets: list[Bucket] = []
        self.node_bucket: list[Bucket | None] = [None] * len(self.names)
        self._eligible: dict[frozenset[str], list[Bucket]] = {}
        # Weights that make a core and a byte comparable: a fraction of the largest node.
        self._wc = 1.0 / max(self.cap_c, default=1) if any(self.cap_c) else 1.0
        self._wm = 1.0 / max(self.cap_m, default=1) if any(self.cap_m) else 1.0

    def hold(self, idx: int, cores: int, memory: int) -> None:
        """Account an instance already placed before the index is built."""
        self.free_c[idx] -= cores
        self.free_m[idx] -= memory
        self.count[idx] += 1

    def build_index(self) -> None:
        """Bucket the available nodes by label set once the existing holdings are in."""
        by_labels: dict[frozenset[str], Bucket] = {}
        for idx, labels in enumerate(self.labels):
            if not self.available[idx]:
                continue
            bucket = by_labels.get(labels)
            if bucket is None:
                bucket = by_labels[labels] = Bucket(labels)
                self.buckets.append(bucket)
            bucket.by_cores.append((self.free_c[idx], self.free_m[idx], idx))
            bucket.by_memory.append((self.free_m[idx], idx))
            self.node_bucket[idx] = bucket
        for bucket in self.buckets:
            bucket.by_cores.sort()
            bucket.by_memory.sort()

    def copy(self) -> Cluster:
        """A cluster of its own for a pass, with this one's free room and index: what
        never changes in a pass (the nodes) is shared, the rest copied."""
        new = Cluster.__new__(Cluster)
        new.names, new.index, new.labels = self.names, self.index, self.labels
        new.cap_c, new.cap_m, new.available = self.cap_c, self.cap_m, self.available
        new._holders, new.node_images = self._holders, self.node_images
        new._wc, new._wm = self._wc, self._wm
        new.free_c = list(self.free_c)
        new.free_m = list(self.free_m)
        new.count = list(self.count)
        new.buckets = []
        node_bucket: list[Bucket | None] = [None] * len(self.names)
        for bucket in self.buckets:
            mine = Bucket(bucket.labels)
            mine.by_cores = list(bucket.by_cores)
            mine.by_memory = list(bucket.by_memory)
            new.buckets.append(mine)
            for _, idx in mine.by_memory:
                node_bucket[idx] = mine
        new.node_bucket = node_bucket
        new._eligible = {}
        return new

    def refit(self, idx: int, old_c: int, old_m: int) -> None:
        """Move node `idx` in its bucket's order after its free room was set directly
        (it was `old_c`, `old_m`)."""
        bucket = self.node_bucket[idx]
        new_c, new_m = self.free_c[idx], self.free_m[idx]
        if bucket is None or (new_c == old_c and new_m == old_m):
            return
        by_c, by_m = bucket.by_cores, bucket.by_memory
        del by_c[bisect_left(by_c, (old_c, old_m, idx))]
        insort(by_c, (new_c, new_m, idx))
        if new_m != old_m:
            del by_m[bisect_left(by_m, (old_m, idx))]
            insort(by_m, (new_m, idx))

    def eligible(self, labels: frozenset[str]) -> list[Bucket]:
        """The buckets whose label set includes `labels`."""
        found = self._eligible.get(labels)
        if found is None:
            found = [b for b in self.buckets if labels <= b.labels]
            self._eligible[labels] = found
        return found

    def change(self, idx: int, cores: int, memory: int, containers: int) -> None:
        """Take (positive) or give back (negative) resources on a node, keeping the index."""
        old_c, old_m = self.free_c[idx], self.free_m[idx]
        new_c, new_m = old_c - cores, old_m - memory
        self.free_c[idx], self.free_m[idx] = new_c, new_m
        self.count[idx] += containers
        self.refit(idx, old_c, old_m)

    def open_to(self, idx: int) -> bool:
        """Whether node `idx` may receive something new (available, bucket not closed)."""
        bucket = self.node_bucket[idx]
        return bucket is not None and not bucket.closed

    def close(self, labels: frozenset[str]) -> bool:
        """Close every bucket a request with `labels` could use; True if all are closed."""
        for bucket in self.eligible(labels):
            bucket.closed = True
        return all(b.closed for b in self.buckets)

    def reopen(self) -> None:
        """Open every bucket again."""
        for bucket in self.buckets:
            bucket.closed = False

    # -- choosing a node -------------------------------------------------------------

    def best_fit(self, cores: int, memory: int, labels: frozenset[str]) -> int:
        """The fitting node left with the least room (cores and memory together), or -1.

        Walks the free-cores order upwards one group of equal free cores at a time: in a
        group the first node with enough memory is the group's best, and no group further
        up can beat a score already below its leftover cores.
        """
        wc, wm = self._wc, self._wm
        best, best_score = -1, float("inf")
        for bucket in self.eligible(labels):
            if not bucket.can_fit(cores, memory):
                continue
            by_c = bucket.by_cores
            n = len(by_c)
            i = bisect_left(by_c, (cores, memory))
            while i < n:
                fc, fm, idx = by_c[i]
                dc = (fc - cores) * wc
                if dc >= best_score:
                    break
                if fm >= memory:
                    score = dc + (fm - memory) * wm
                    if score < best_score:
                        best, best_score = idx, score
                    i = bisect_left(by_c, (fc + 1, memory), i + 1)
                else:
                    i = bisect_left(by_c, (fc, memory), i + 1)
        return best

    def worst_fit(self, cores: int, memory: int, labels: frozenset[str]) -> int:
        """The fitting node left with the most room (cores and memory together), or -1.

        Walks the free-cores order downwards one group of equal free cores at a time (the
        last node of a group has its most memory).
        """
        wc, wm = self._wc, self._wm
        best, best_score = -1, -1.0
        for bucket in self.eligible(labels):
            if not bucket.can_fit(cores, memory):
                continue
            by_c = bucket.by_cores
            top_m = (bucket.by_memory[-1][0] - memory) * wm
            i = len(by_c) - 1
            while i >= 0:
                fc, fm, idx = by_c[i]
                if fc < cores:
                    break
                dc = (fc - cores) * wc
                if dc + top_m <= best_score:
                    break
                if fm >= memory:
                    score = dc + (fm - memory) * wm
                    if score > best_score:
                        best, best_score = idx, score
                i = bisect_left(by_c, (fc,), 0, i) - 1
        return best

    def by_count(self, cores: int, memory: int, labels: frozenset[str], most: bool) -> int:
        """The fitting node with the fewest (or most) containers: the original placement."""
        best, best_count = -1, -1
        for bucket in self.eligible(labels):
            if not bucket.can_fit(cores, memory):
                continue
            for _fc, fm, idx in bucket.by_cores[bisect_left(bucket.by_cores, (cores,)) :]:
                if fm < memory:
                    continue
                count = self.count[idx]
                better = count > best_count if most else count < best_count
                if best < 0 or better or (count == best_count and idx < best):
                    best, best_count = idx, count
        return best

    def prefer_image(
        self, chosen: int, cores: int, memory: int, labels: frozenset[str], image: str, spread: bool
    ) -> int:
        """The node to use instead of ``chosen`` (the policy's pick, -1 for none) so that
        a node already holding ``image`` wins: ``chosen`` itself when it holds it or no
        fitting node does, else the fitting holder the policy likes best (least room left,
        or most with ``spread``). Costs a look at the holders only when ``chosen`` is
        not one of them."""
        holders = self._holders.get(image) if image else None
        if chosen < 0 or not holders or image in self.node_images[chosen]:
            return chosen
        wc, wm = self._wc, self._wm
        best, best_score = chosen, 0.0
        for idx in holders:
            fc, fm = self.free_c[idx], self.free_m[idx]
            if fc < cores or fm < memory or not self.open_to(idx) or not labels <= self.labels[idx]:
                continue
            score = (fc - cores) * wc + (fm - memory) * wm
            if best == chosen or (score > best_score if spread else score < best_score):
                best, best_score = idx, score
        return best

    def weights(self) -> tuple[float, float]:
        """Per-millicore and per-byte weights that make cores and memory comparable."""
        return self._wc, self._wm
