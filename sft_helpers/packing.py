"""Bin packing of sequence lengths into rows of at most `max_length` tokens (lesson 02, in progress).

Pure functions over a list of lengths, returning bins as lists of sample indices:

* `pack_sequential`: fill a row in order, start a new one when the next sample does not fit (naive);
* `pack_ffd`: first-fit decreasing (axolotl's multipack);
* `pack_bfd`: best-fit decreasing with a segment tree over free space, O(n log max_length) (TRL's
  `bfd` strategy, here over the whole dataset rather than 1,000-example chunks).

Samples longer than `max_length` follow `overflow`: "raise", "truncate" (one bin, cut) or "split"
(pieces of `max_length`); every such sample is counted in `PackResult.overflow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OVERFLOW = ("raise", "truncate", "split")


@dataclass
class PackResult:
    """Bins of `(sample index, start, end)` pieces, plus the samples that overflowed `max_length`."""

    bins: list[list[tuple[int, int, int]]]
    max_length: int
    overflow: list[int] = field(default_factory=list)

    def indices(self) -> list[list[int]]:
        """Bins as lists of sample indices."""
        return [[i for i, _, _ in b] for b in self.bins]


def _pieces(lengths: list[int], max_length: int, overflow: str) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Each sample as `(index, start, end)` pieces that fit in `max_length`, by the overflow policy."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, not {max_length}")
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, not {overflow!r}")
    pieces, over = [], []
    for i, n in enumerate(lengths):
        if n < 1:
            raise ValueError(f"sample {i} has length {n}; lengths must be positive")
        if n <= max_length:
            pieces.append((i, 0, n))
            continue
        over.append(i)
        if overflow == "raise":
            raise ValueError(f"sample {i} has {n} tokens, more than max_length={max_length} "
                             "(use overflow='truncate' or 'split')")
        if overflow == "truncate":
            pieces.append((i, 0, max_length))
        else:
            pieces += [(i, s, min(s + max_length, n)) for s in range(0, n, max_length)]
    return pieces, over


def pack_sequential(lengths: list[int], max_length: int, overflow: str = "raise") -> PackResult:
    """Naive packing: samples in their order, a new row whenever the next one does not fit.

    >>> pack_sequential([3, 3, 2, 2], 5).indices()
    [[0], [1, 2], [3]]
    """
    pieces, over = _pieces(lengths, max_length, overflow)
    bins, used = [], max_length
    for p in pieces:
        size = p[2] - p[1]
        if used + size > max_length:
            bins.append([])
            used = 0
        bins[-1].append(p)
        used += size
    return PackResult(bins, max_length, over)


def _decreasing(pieces):
    return sorted(pieces, key=lambda p: (-(p[2] - p[1]), p[0], p[1]))


def pack_ffd(lengths: list[int], max_length: int, overflow: str = "raise") -> PackResult:
    """First-fit decreasing: longest first, each into the first row with room (O(n · rows)).

    >>> pack_ffd([3, 3, 2, 2], 5).indices()
    [[0, 2], [1, 3]]
    """
    pieces, over = _pieces(lengths, max_length, overflow)
    bins, free = [], []
    for p in _decreasing(pieces):
        size = p[2] - p[1]
        for b, room in enumerate(free):
            if room >= size:
                bins[b].append(p)
                free[b] -= size
                break
        else:
            bins.append([p])
            free.append(max_length - size)
    return PackResult(bins, max_length, over)


class _FreeSpaceTree:
    """Segment tree over free-space values 0..capacity: finds the smallest free space ≥ a size."""

    def __init__(self, capacity: int):
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = [0] * (capacity + 1)
        self.has = [False] * (2 * self.size)  # node: some bin has a free space in its range

    def _set(self, space: int, present: bool):
        node = space + self.size
        self.has[node] = present
        node //= 2
        while node:
            self.has[node] = self.has[2 * node] or self.has[2 * node + 1]
            node //= 2

    def add(self, space: int):
        self.count[space] += 1
        if self.count[space] == 1:
            self._set(space, True)

    def remove(self, space: int):
        self.count[space] -= 1
        if self.count[space] == 0:
            self._set(space, False)

    def smallest_at_least(self, need: int) -> int | None:
        """The smallest free space ≥ `need` that some bin has, or None."""
        node, lo, hi = 1, 0, self.size - 1
        stack = []
        while True:
            if hi < need or not self.has[node]:
                if not stack:
                    return None
                node, lo, hi = stack.pop()
                continue
            if lo == hi:
                return lo
            mid = (lo + hi) // 2
            stack.append((2 * node + 1, mid + 1, hi))
            node, hi = 2 * node, mid


def pack_bfd(lengths: list[int], max_length: int, overflow: str = "raise") -> PackResult:
    """Best-fit decreasing: longest first, each into the row whose free space fits it most tightly
    (a segment tree over free space makes each placement O(log max_length)).

    >>> pack_bfd([3, 3, 2, 2], 5).indices()
    [[0, 3], [1, 2]]
    """
    pieces, over = _pieces(lengths, max_length, overflow)
    tree = _FreeSpaceTree(max_length)
    bins: list[list] = []
    rows_with_space: dict[int, list[int]] = {}
    for p in _decreasing(pieces):
        size = p[2] - p[1]
        space = tree.smallest_at_least(size)
        if space is None:
            bins.append([p])
            b, left = len(bins) - 1, max_length - size
        else:
            b = rows_with_space[space].pop()
            tree.remove(space)
            bins[b].append(p)
            left = space - size
        if left > 0:
            rows_with_space.setdefault(left, []).append(b)
            tree.add(left)
    return PackResult(bins, max_length, over)


def packing_stats(result: PackResult) -> dict:
    """Rows, real tokens, efficiency (real tokens / row slots), the empty slots left in the rows
    (`padding_tokens`) and how many samples overflowed `max_length`.

    >>> packing_stats(pack_bfd([3, 3, 2, 2], 5))
    {'rows': 2, 'tokens': 10, 'efficiency': 1.0, 'padding_tokens': 0, 'overflow': 0}
    """
    tokens = sum(e - s for b in result.bins for _, s, e in b)
    slots = len(result.bins) * result.max_length
    return {"rows": len(result.bins), "tokens": tokens, "efficiency": tokens / slots if slots else 1.0,
            "padding_tokens": slots - tokens, "overflow": len(result.overflow)}
