"""Bin packing of sequence lengths into rows of at most `max_length` tokens (lesson 02).

Pure functions over a list of lengths, returning bins as lists of sample indices:

* `pack_sequential`: fill a row in order, start a new one when the next sample does not fit (naive);
* `pack_ffd`: first-fit decreasing (axolotl's multipack);
* `pack_bfd`: best-fit decreasing with a segment tree over free space, O(n log max_length) (TRL's
  `bfd` strategy, here over the whole dataset rather than 1,000-example chunks).

Samples longer than `max_length` follow `overflow`: "raise", "truncate" (one bin, cut) or "split"
(pieces of `max_length`); every such sample is counted in `PackResult.overflow`.

`pack_examples` applies a packer to labelled examples (dicts from `masking.build_labels`) and returns
rows ready for `collators.PackedCollator`; `padding_stats` measures what plain padded batches waste.
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
    """Longest first; equal sizes keep their order (a stable sort)."""
    return sorted(pieces, key=lambda p: p[2] - p[1], reverse=True)


def pack_ffd(lengths: list[int], max_length: int, overflow: str = "raise", decreasing: bool = True) -> PackResult:
    """First-fit decreasing: longest first, each into the first row with room (O(n · rows)).

    >>> pack_ffd([3, 3, 2, 2], 5).indices()
    [[0, 2], [1, 3]]
    """
    pieces, over = _pieces(lengths, max_length, overflow)
    bins, free = [], []
    for p in _decreasing(pieces) if decreasing else pieces:
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
    """Segment tree over free-space values 1..capacity: each leaf holds its value when some row has
    exactly that much free space (else 0), each node the max of its children, so the smallest free
    space ≥ a size is one walk down from the root (as in TRL's `_SegmentTree`)."""

    def __init__(self, capacity: int):
        self.size = 1 << max(capacity - 1, 0).bit_length()
        self.tree = [0] * (2 * self.size)
        self.count = [0] * (capacity + 1)

    def _set(self, space: int, value: int):
        i = self.size + space - 1
        tree = self.tree
        tree[i] = value
        while i > 1:
            i >>= 1
            left, right = tree[2 * i], tree[2 * i + 1]
            tree[i] = left if left >= right else right

    def add(self, space: int):
        self.count[space] += 1
        if self.count[space] == 1:
            self._set(space, space)

    def remove(self, space: int):
        self.count[space] -= 1
        if self.count[space] == 0:
            self._set(space, 0)

    def smallest_at_least(self, need: int) -> int | None:
        """The smallest free space ≥ `need` that some row has, or None."""
        tree = self.tree
        if tree[1] < need:
            return None
        i = 1
        while i < self.size:
            i = 2 * i if tree[2 * i] >= need else 2 * i + 1
        return tree[i]


def pack_bfd(lengths: list[int], max_length: int, overflow: str = "raise", decreasing: bool = True) -> PackResult:
    """Best-fit decreasing: longest first, each into the row whose free space fits it most tightly
    (a segment tree over free space makes each placement O(log max_length)). With
    `decreasing=False`, samples are placed in the given order (online best fit).

    >>> pack_bfd([3, 3, 2, 2], 5).indices()
    [[0, 3], [1, 2]]
    """
    pieces, over = _pieces(lengths, max_length, overflow)
    tree = _FreeSpaceTree(max_length)
    bins: list[list] = []
    rows_with_space: dict[int, list[int]] = {}
    for p in _decreasing(pieces) if decreasing else pieces:
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


PACKERS = {"sequential": pack_sequential, "ffd": pack_ffd, "bfd": pack_bfd}
PACKED_KEYS = ("input_ids", "labels", "loss_weights")


def pack_examples(examples: list[dict], max_length: int, strategy: str = "bfd", overflow: str = "raise",
                  shuffle_seed: int | None = None) -> tuple[list[dict], dict]:
    """Pack labelled examples into rows of at most `max_length` tokens; returns `(rows, stats)`.

    Each row concatenates its samples' `input_ids`, `labels` (and `loss_weights` if present) and keeps
    `seq_lengths`, the length of each sample in it, from which `PackedCollator` restarts the
    positions and masks the first label of every sample. `stats` is `packing_stats` of the packing
    (rows, efficiency, padding slots, overflowed samples). A split sample's pieces become separate
    samples (each piece starts again at position 0 and loses the context before it).

    With `shuffle_seed`, the examples are shuffled and packed in that order, not longest first
    (online best/first fit): rows then mix short and long examples instead of holding similar
    lengths together, at a slightly lower efficiency. On the course data the sorted rows trained
    markedly worse per step (lesson 02 measures it), so training should use shuffled packing.

    >>> rows, stats = pack_examples([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
    ...                              {"input_ids": [4, 5], "labels": [4, 5]}], max_length=5)
    >>> rows[0]["input_ids"], rows[0]["seq_lengths"], stats["efficiency"]
    ([1, 2, 3, 4, 5], [3, 2], 1.0)
    """
    import random

    if strategy not in PACKERS:
        raise ValueError(f"strategy must be one of {sorted(PACKERS)}, not {strategy!r}")
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    lengths = [len(examples[i]["input_ids"]) for i in order]
    if strategy == "sequential":
        result = pack_sequential(lengths, max_length, overflow)
    else:
        result = PACKERS[strategy](lengths, max_length, overflow, decreasing=shuffle_seed is None)
    keys = [k for k in PACKED_KEYS if k in (examples[0] if examples else {})]
    rows = []
    for b in result.bins:
        row = {k: [] for k in keys} | {"seq_lengths": []}
        for i, start, end in b:
            example = examples[order[i]]
            for k in keys:
                row[k] += list(example[k][start:end])
            row["seq_lengths"].append(end - start)
        rows.append(row)
    return rows, packing_stats(result)


def pack_for_steps(examples: list[dict], samples_per_step: int = 16, rows_per_step: int = 2,
                   shuffle_seed: int | None = 0) -> tuple[list[dict], int]:
    """Pack examples into rows sized so that `rows_per_step` rows hold about `samples_per_step`
    average examples (never shorter than the longest example): a packed run then takes about as
    many steps as padded batches of `samples_per_step`. Returns `(rows, row_length)`.

    >>> rows, n = pack_for_steps([{"input_ids": [1] * 10, "labels": [1] * 10}] * 8, samples_per_step=4)
    >>> n, len(rows)
    (20, 4)
    """
    lengths = [len(e["input_ids"]) for e in examples]
    row_length = max(max(lengths), round(samples_per_step * sum(lengths) / len(lengths) / rows_per_step))
    rows, _ = pack_examples(examples, row_length, shuffle_seed=shuffle_seed)
    return rows, row_length


def padding_stats(lengths: list[int], batch_size: int, group_by_length: bool = False, seed: int = 0) -> dict:
    """What right-padding to the longest sample of each batch costs: batches, real tokens, slots,
    efficiency (real / slots) and pad tokens, for random batches or, with `group_by_length`, the
    batches transformers' length-grouped sampler (`train_sampling_strategy="group_by_length"`) makes.

    >>> lengths = [10, 1] * 200
    >>> [round(padding_stats(lengths, 4, group_by_length=g)["efficiency"], 2) for g in (False, True)]
    [0.59, 0.98]
    """
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    g = torch.Generator().manual_seed(seed)
    order = (get_length_grouped_indices(lengths, batch_size, generator=g) if group_by_length
             else torch.randperm(len(lengths), generator=g).tolist())
    batches = [[lengths[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    tokens, slots = sum(lengths), sum(max(b) * len(b) for b in batches)
    return {"batches": len(batches), "tokens": tokens, "slots": slots,
            "efficiency": tokens / slots if slots else 1.0, "padding_tokens": slots - tokens}


def long_tailed_lengths(n: int = 10_000, max_length: int = 2048, median: int = 200, seed: int = 0) -> list[int]:
    """`n` sample lengths from a log-normal distribution (median `median`, a long right tail),
    clipped to 1..max_length: the shape of real chat SFT data, for packing benchmarks.

    >>> xs = long_tailed_lengths(1000)
    >>> min(xs) >= 1 and max(xs) <= 2048, sorted(xs)[500] > 100
    (True, True)
    """
    import random

    rng = random.Random(seed)
    return [max(1, min(max_length, round(rng.lognormvariate(0, 1) * median))) for _ in range(n)]
