"""Bin packing of sequence lengths into rows of at most `max_length` tokens (lesson 02).

Pure functions over a list of lengths, returning bins as lists of sample indices:

* `pack_sequential`: fill a row in order, start a new one when the next sample does not fit (naive);
* `pack_ffd`: first-fit decreasing (axolotl's multipack);
* `pack_bfd`: best-fit decreasing, the tightest row found by one shift of a bitset of free spaces
  (TRL's `bfd` strategy, here over the whole dataset rather than 1,000-example chunks).

Samples longer than `max_length` follow `overflow`: "raise", "truncate" (one bin, cut) or "split"
(pieces of `max_length`); every such sample is counted in `PackResult.overflow`.

`pack_examples` applies a packer to labelled examples (dicts from `masking.build_labels`) and returns
rows ready for `collators.PackedCollator`; `pack_dataset_columnar` (and `pack_columns` on an Arrow
table) makes the same rows as a `datasets.Dataset`, gathering the tokens from the Arrow buffers
in C: the path for large data. `padding_stats` measures what plain padded batches waste.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

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


def pack_wrapped(lengths: list[int], max_length: int, overflow: str = "split") -> PackResult:
    """The simplest packer: every sample end to end in one token stream, cut every `max_length`
    tokens (TRL's `packing_strategy="wrapped"`). Every row is full, but a sample that straddles a cut
    is split, and its later piece starts a row without the tokens before it (its prompt).

    >>> pack_wrapped([3, 3, 2, 2], 5).bins
    [[(0, 0, 3), (1, 0, 2)], [(1, 2, 3), (2, 0, 2), (3, 0, 2)]]
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, not {max_length}")
    bins, used = [[]], 0
    for i, n in enumerate(lengths):
        start = 0
        while start < n:
            if used == max_length:
                bins.append([])
                used = 0
            end = min(n, start + max_length - used)
            bins[-1].append((i, start, end))
            used += end - start
            start = end
    return PackResult(bins if bins[0] else [], max_length)


def cut_report(result: PackResult, examples: list[dict] | None = None, ignore_index: int = -100) -> dict:
    """What a packing cut: `samples_cut` (samples in more than one piece) and, with `examples`
    (labelled, in the packed order), `tokens_lost` (tokens in no row: a truncating packer's),
    `trained_tokens` and `trained_without_start`: trained tokens in a piece that does not begin its
    sample, trained with their prompt out of sight. A label equal to `ignore_index` is not trained.

    >>> cut_report(pack_wrapped([3, 3, 2, 2], 5), [{"labels": [-100, 1, 1]}] * 2 + [{"labels": [1, 1]}] * 2)
    {'samples_cut': 1, 'tokens_lost': 0, 'trained_tokens': 8, 'trained_without_start': 1}
    """
    pieces: dict[int, list[tuple[int, int]]] = {}
    for b in result.bins:
        for i, start, end in b:
            pieces.setdefault(i, []).append((start, end))
    report = {"samples_cut": sum(len(p) > 1 for p in pieces.values())}
    if examples is not None:
        kept = sum(e - s for p in pieces.values() for s, e in p)
        report["tokens_lost"] = sum(len(x["labels"]) for x in examples) - kept
        trained = [[label != ignore_index for label in x["labels"]] for x in examples]
        report["trained_tokens"] = sum(map(sum, trained))
        report["trained_without_start"] = sum(sum(trained[i][s:e]) for i, p in pieces.items()
                                              for s, e in p if s > 0)
    return report


def cut_pieces(result: PackResult, examples: list[dict], ignore_index: int = -100
               ) -> tuple[list[dict], list[dict]]:
    """The pieces a packing cut off the start of their sample that still train a token, twice:
    `(alone, in_context)`, each piece as its row trains it (its own tokens only, the prompt out of
    sight) and the same trained tokens scored after the whole start of their sample. Their losses
    (`training.example_losses`) say what the cut costs.

    >>> alone, in_context = cut_pieces(pack_wrapped([3, 3], 4), [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}] * 2)
    >>> alone, in_context
    ([{'input_ids': [6, 7], 'labels': [6, 7]}], [{'input_ids': [5, 6, 7], 'labels': [-100, -100, 7]}])
    """
    pieces = [(i, s, e) for b in result.bins for i, s, e in b
              if s > 0 and any(label != ignore_index for label in examples[i]["labels"][s + 1:e])]
    alone = [{"input_ids": examples[i]["input_ids"][s:e], "labels": examples[i]["labels"][s:e]}
             for i, s, e in pieces]
    in_context = [{"input_ids": examples[i]["input_ids"][:e],
                   "labels": [ignore_index] * (s + 1) + examples[i]["labels"][s + 1:e]} for i, s, e in pieces]
    return alone, in_context


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


def pack_bfd(lengths: list[int], max_length: int, overflow: str = "raise", decreasing: bool = True) -> PackResult:
    """Best-fit decreasing: longest first, each into the row whose free space fits it most tightly.
    Bit `s` of the Python int `free` is set when some row has exactly `s` free slots, so the tightest
    fit for a sample of `size` is the lowest set bit of `free >> size`: one shift and one bit trick
    per sample, in C (what TRL's segment tree finds in log2(max_length) Python steps). Among rows with
    the same free space, the last one to get it is filled first. With `decreasing=False`, samples are
    placed in the given order (online best fit).

    >>> pack_bfd([3, 3, 2, 2], 5).indices()
    [[0, 3], [1, 2]]
    """
    pieces, over = _pieces(lengths, max_length, overflow)
    bins: list[list] = []
    rows_with_space: dict[int, list[int]] = {}  # free space -> rows that have exactly that much
    free = 0
    for p in _decreasing(pieces) if decreasing else pieces:
        size = p[2] - p[1]
        fits = free >> size
        if fits:
            space = size + (fits & -fits).bit_length() - 1
            rows = rows_with_space[space]
            b = rows.pop()
            if not rows:
                free ^= 1 << space
            bins[b].append(p)
            left = space - size
        else:
            b, left = len(bins), max_length - size
            bins.append([p])
        if left:
            rows = rows_with_space.setdefault(left, [])
            if not rows:
                free |= 1 << left
            rows.append(b)
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


PACKERS = {"sequential": pack_sequential, "ffd": pack_ffd, "bfd": pack_bfd, "wrapped": pack_wrapped}
PACKED_KEYS = ("input_ids", "labels", "loss_weights")


def _pack_order(lengths: list[int], max_length: int, strategy: str, overflow: str,
                shuffle_seed: int | None) -> tuple[list[int], PackResult]:
    """`(order, result)`: the samples' order (shuffled with `shuffle_seed`, else as given) and the
    packing of their lengths in that order (longest first unless shuffled); `result`'s sample index
    `i` is sample `order[i]`. Shared by `pack_examples` and `pack_columns`, so both make the same rows."""
    import inspect
    import random

    if strategy not in PACKERS:
        raise ValueError(f"strategy must be one of {sorted(PACKERS)}, not {strategy!r}")
    order = list(range(len(lengths)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    lengths = [lengths[i] for i in order]
    packer = PACKERS[strategy]
    if "decreasing" not in inspect.signature(packer).parameters:  # a packer that keeps the given order
        return order, packer(lengths, max_length, overflow)
    return order, packer(lengths, max_length, overflow, decreasing=shuffle_seed is None)


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
    order, result = _pack_order([len(e["input_ids"]) for e in examples], max_length, strategy, overflow,
                                shuffle_seed)
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



def _gather(values: list[pa.Array], chunks: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> pa.Array:
    """The runs `values[chunks[k]][starts[k]:starts[k] + sizes[k]]` laid end to end, in one copy: from
    one chunk by Arrow (a list view over the values, flattened: no Python per run), from several by
    `np.concatenate` of numpy views.

    >>> import numpy as np, pyarrow as pa
    >>> v, k = [pa.array(range(10)), pa.array(range(100, 105))], np.array
    >>> _gather(v, k([0, 1, 0]), k([7, 0, 4]), k([2, 3, 1])).to_pylist()
    [7, 8, 100, 101, 102, 4]
    >>> _gather(v[:1], k([0, 0]), k([7, 4]), k([2, 1])).to_pylist()
    [7, 8, 4]
    """
    import numpy as np
    import pyarrow as pa

    if len(values) == 1:
        return pa.LargeListViewArray.from_arrays(starts, sizes, values[0]).flatten()
    arrays = [v.to_numpy() for v in values]  # no copy
    runs = [arrays[c][s:s + n] for c, s, n in zip(chunks.tolist(), starts.tolist(), sizes.tolist())]
    return pa.array(np.concatenate(runs or [arrays[0][:0]]), values[0].type)


def _list_column(chunks: list[pa.Array]) -> tuple[np.ndarray, np.ndarray, list[pa.Array]]:
    """`(starts, lengths, values)` of a list column given as chunks (Arrow list arrays, maybe
    sliced): where each example's list begins in its chunk's values, its length, and each chunk's
    values (the whole child array, no copy)."""
    import numpy as np

    offsets = [np.asarray(c.offsets, np.int64) for c in chunks]
    if any(c.null_count for c in chunks):
        raise ValueError("packed columns must have no null rows")
    return (np.concatenate([np.zeros(0, np.int64)] + [o[:-1] for o in offsets]),
            np.concatenate([np.zeros(0, np.int64)] + [np.diff(o) for o in offsets]),
            [c.values for c in chunks])


def packed_blocks(table: pa.Table, max_length: int, strategy: str = "bfd", overflow: str = "raise",
                  shuffle_seed: int | None = None, rows_per_block: int | None = None) -> Iterator[pa.Table]:
    """`pack_examples` on a `pyarrow.Table` of list columns (`input_ids`, and `labels` and
    `loss_weights` when present; other columns are dropped): the same rows, in the same order, as
    tables of `rows_per_block` rows (default: one table) with `seq_lengths`. The bins come from the
    same packers; each block's tokens are then copied by Arrow from the columns' values, the runs
    given by numpy arrays of offsets (`_gather`: no Python lists of tokens, no loop over samples, no
    copy of the input), in the columns' own types. There is always at least one block, maybe empty.

    >>> import pyarrow as pa
    >>> t = pa.table({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "labels": [[-100, 2, 3], [4, 5], [6, 7, 8, 9]]})
    >>> [b.to_pydict() for b in packed_blocks(t, 5, rows_per_block=1)][1]
    {'input_ids': [[1, 2, 3, 4, 5]], 'labels': [[-100, 2, 3, 4, 5]], 'seq_lengths': [[3, 2]]}
    """
    from itertools import chain

    import numpy as np
    import pyarrow as pa

    if "input_ids" not in table.column_names:
        raise ValueError(f"no input_ids column to pack (columns: {table.column_names})")
    keys = [k for k in PACKED_KEYS if k in table.column_names]
    types = [table.schema.field(k).type for k in keys]
    if not all(pa.types.is_list(t) or pa.types.is_large_list(t) for t in types):
        raise ValueError(f"columns to pack must be lists, not {dict(zip(keys, map(str, types)))}")
    table = table.select(keys)
    batches = table.to_batches() or [pa.RecordBatch.from_pylist([], table.schema)]  # aligned chunks, no copy
    columns = [_list_column([b.column(k) for b in batches]) for k in keys]
    lengths = columns[0][1]
    for k, (_, n, _) in zip(keys, columns):
        if not np.array_equal(n, lengths):
            raise ValueError(f"{k} and input_ids differ in length in some example")
    order, result = _pack_order(lengths.tolist(), max_length, strategy, overflow, shuffle_seed)
    pieces = np.fromiter(chain.from_iterable(chain.from_iterable(result.bins)), np.int64).reshape(-1, 3)
    samples, sizes = np.asarray(order, np.int64)[pieces[:, 0]], pieces[:, 2] - pieces[:, 1]
    chunk_of = np.repeat(np.arange(len(batches)), [b.num_rows for b in batches])[samples]
    begins = [starts[samples] + pieces[:, 1] for starts, _, _ in columns]
    row_pieces = np.cumsum([0] + [len(b) for b in result.bins])  # row r holds pieces row_pieces[r]:[r + 1]
    row_tokens = np.concatenate([[0], np.cumsum(sizes)])[row_pieces]
    step = rows_per_block or max(len(result.bins), 1)
    for r0 in range(0, max(len(result.bins), 1), step):
        r1 = min(r0 + step, len(result.bins))
        p0, p1 = row_pieces[r0], row_pieces[r1]
        out = {}
        for k, t, (_, _, values), begin in zip(keys, types, columns, begins):
            flat = _gather(values, chunk_of[p0:p1], begin[p0:p1], sizes[p0:p1])
            array, dtype = (pa.LargeListArray, np.int64) if pa.types.is_large_list(t) else (pa.ListArray, np.int32)
            out[k] = array.from_arrays((row_tokens[r0:r1 + 1] - row_tokens[r0]).astype(dtype), flat)
        out["seq_lengths"] = pa.ListArray.from_arrays((row_pieces[r0:r1 + 1] - p0).astype(np.int32),
                                                      sizes[p0:p1].astype(np.int32))
        yield pa.table(out)


def pack_columns(table: pa.Table, max_length: int, strategy: str = "bfd", overflow: str = "raise",
                 shuffle_seed: int | None = None, rows_per_block: int | None = 1000) -> pa.Table:
    """`packed_blocks` as one table (a chunk per block: the copies stay small and reuse their memory):
    `pack_examples`' rows from a `pyarrow.Table` of list columns.

    >>> import pyarrow as pa
    >>> t = pa.table({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "labels": [[-100, 2, 3], [4, 5], [6, 7, 8, 9]]})
    >>> packed = pack_columns(t, 5).to_pydict()
    >>> packed["input_ids"], packed["labels"], packed["seq_lengths"]
    ([[6, 7, 8, 9], [1, 2, 3, 4, 5]], [[6, 7, 8, 9], [-100, 2, 3, 4, 5]], [[4], [3, 2]])
    """
    import pyarrow as pa

    return pa.concat_tables(packed_blocks(table, max_length, strategy, overflow, shuffle_seed, rows_per_block))


def _write_arrow(blocks: Iterator[pa.Table], path: str) -> None:
    """Write tables (same schema) to an Arrow stream file, the format `Dataset.from_file` memory-maps;
    through a temporary name, so an interrupted write leaves no partial cache behind."""
    import os

    import pyarrow as pa

    with pa.OSFile(f"{path}.incomplete", "wb") as sink:
        writer = None
        for block in blocks:
            writer = writer or pa.ipc.new_stream(sink, block.schema)
            writer.write_table(block)
        writer.close()
    os.replace(f"{path}.incomplete", path)


def pack_dataset_columnar(data: Dataset | dict | list[dict], max_length: int, strategy: str = "bfd",
                          overflow: str = "raise", shuffle_seed: int | None = None,
                          cache_file_name: str | None = None, rows_per_block: int = 1000,
                          cache_dir: str | None = None) -> tuple[Dataset, dict]:
    """`pack_examples` for large data: returns `(dataset, stats)`, the same rows as a `datasets.Dataset`
    (columns `input_ids`, `labels`, `loss_weights` when present, and `seq_lengths`; what
    `PackedCollator` consumes) and the same `stats`. `data` is a `datasets.Dataset`, a dict of columns
    or a list of example dicts. A dataset on disk is packed `rows_per_block` rows at a time into an
    Arrow file next to it (or in `cache_dir`, or `cache_file_name`; a temporary one with
    `datasets.disable_caching()`),
    named by its fingerprint and the packing's arguments, and the result is memory-mapped from that
    file: packing the same data the same way again just reopens it. Other data is packed in memory
    (also `rows_per_block` rows at a time, a chunk each).

    >>> packed, stats = pack_dataset_columnar({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[1, 2, 3], [4, 5]]}, 5)
    >>> packed[0], stats["efficiency"]
    ({'input_ids': [1, 2, 3, 4, 5], 'labels': [1, 2, 3, 4, 5], 'seq_lengths': [3, 2]}, 1.0)
    """
    import os

    import pyarrow.compute as pc
    from datasets import Dataset
    from datasets.fingerprint import Hasher, get_temporary_cache_files_directory, is_caching_enabled

    if isinstance(data, list):
        data = {k: [e[k] for e in data] for k in PACKED_KEYS if k in (data[0] if data else {})}
    if isinstance(data, dict):
        data = Dataset.from_dict(data)
    args = {"max_length": max_length, "strategy": strategy, "overflow": overflow, "shuffle_seed": shuffle_seed}
    key = Hasher.hash([data._fingerprint, args, packed_blocks])  # the result's fingerprint
    if cache_file_name is None and data.cache_files:
        folder = (cache_dir or os.path.dirname(data.cache_files[0]["filename"]) if is_caching_enabled()
                  else get_temporary_cache_files_directory())
        os.makedirs(folder, exist_ok=True)
        cache_file_name = os.path.join(folder, f"packed-{key}.arrow")
    table = data.with_format("arrow")[:]
    if cache_file_name is None:  # given, a fingerprint spares `Dataset` hashing every token
        packed = Dataset(pack_columns(table, **args, rows_per_block=rows_per_block), fingerprint=key)
    else:
        if not os.path.exists(cache_file_name):
            _write_arrow(packed_blocks(table, **args, rows_per_block=rows_per_block), cache_file_name)
        packed = Dataset.from_file(cache_file_name)
    tokens = pc.sum(pc.list_value_length(packed.data["input_ids"])).as_py() or 0
    slots = len(packed) * max_length
    over = pc.sum(pc.greater(pc.list_value_length(table["input_ids"]), max_length)).as_py()
    return packed, {"rows": len(packed), "tokens": tokens, "efficiency": tokens / slots if slots else 1.0,
                    "padding_tokens": slots - tokens, "overflow": over or 0}


def pack_for_steps(examples: list[dict], samples_per_step: int = 16, rows_per_step: int = 2,
                   shuffle_seed: int | None = 0) -> tuple[list[dict], int]:
    """Pack examples into rows sized so that `rows_per_step` rows hold about `samples_per_step`
    average examples (never shorter than the longest example): a packed run then takes about as
    many steps as padded batches of `samples_per_step`. Returns `(rows, row_length)`.

    >>> rows, n = pack_for_steps([{"input_ids": [1] * 10, "labels": [1] * 10}] * 8, samples_per_step=4)
    >>> n, len(rows)
    (20, 4)
    """
    row_length = row_length_for_steps([len(e["input_ids"]) for e in examples], samples_per_step, rows_per_step)
    rows, _ = pack_examples(examples, row_length, shuffle_seed=shuffle_seed)
    return rows, row_length


def row_length_for_steps(lengths, samples_per_step: int, rows_per_step: int = 2) -> int:
    """The packed row length at which `rows_per_step` rows hold about `samples_per_step` examples of
    the mean length of `lengths`, never shorter than the longest one.

    >>> row_length_for_steps([10, 30], samples_per_step=4)
    40
    """
    total, count = int(sum(lengths)), len(lengths)
    return max(int(max(lengths)), round(samples_per_step * total / count / rows_per_step))


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
