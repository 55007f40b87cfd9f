"""The columnar packing path (`packed_blocks`, `pack_columns`, `pack_dataset_columnar`): the same rows as
`pack_examples`."""

import random

import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_helpers.collators import PackedCollator
from sft_helpers.packing import pack_columns, pack_dataset_columnar, pack_examples, packed_blocks


def _examples(lengths: list[int], weights: bool = True) -> list[dict]:
    """Examples whose tokens are all distinct (their global position), labels a function of the
    token (-100 on every third), so a misplaced or repeated token, or a label shifted against its
    token, shows."""
    out, next_token = [], 0
    for n in lengths:
        ids = list(range(next_token, next_token + n))
        next_token += n
        e = {"input_ids": ids, "labels": [-100 if t % 3 == 0 else t + 1 for t in ids], "task": "x"}
        if weights:
            e["loss_weights"] = [t / 4 for t in ids]
        out.append(e)
    return out


def _table(examples: list[dict]) -> pa.Table:
    keys = [k for k in ("input_ids", "labels", "loss_weights", "task") if k in examples[0]]
    return pa.table({k: [e[k] for e in examples] for k in keys})


CASES = [("bfd", None, "raise"), ("bfd", 3, "split"), ("bfd", None, "truncate"), ("ffd", None, "split"),
         ("ffd", 1, "truncate"), ("sequential", 2, "split")]


@pytest.mark.parametrize("strategy,shuffle_seed,overflow", CASES)
@given(lengths=st.lists(st.integers(min_value=1, max_value=90), min_size=1, max_size=80),
       weights=st.booleans())
@settings(max_examples=25, deadline=None)
def test_columnar_rows_are_the_rows_of_pack_examples(strategy, shuffle_seed, overflow, lengths, weights):
    if overflow == "raise":
        lengths = [min(n, 64) for n in lengths]
    examples = _examples(lengths, weights)
    rows, _ = pack_examples(examples, 64, strategy=strategy, overflow=overflow, shuffle_seed=shuffle_seed)
    packed = pack_columns(_table(examples), 64, strategy=strategy, overflow=overflow, shuffle_seed=shuffle_seed)
    assert packed.to_pylist() == rows


@pytest.mark.parametrize("strategy,shuffle_seed,overflow", CASES)
def test_a_few_hundred_examples_give_the_same_rows_and_stats_as_pack_examples(strategy, shuffle_seed, overflow):
    rng = random.Random(7)
    limit = 256 if overflow == "raise" else 400
    examples = _examples([min(int(rng.lognormvariate(0, 1) * 30) + 1, limit) for _ in range(400)])
    kwargs = {"strategy": strategy, "overflow": overflow, "shuffle_seed": shuffle_seed}
    rows, stats = pack_examples(examples, 256, **kwargs)
    packed, columnar_stats = pack_dataset_columnar(examples, 256, **kwargs)
    assert packed.column_names == ["input_ids", "labels", "loss_weights", "seq_lengths"]
    assert packed[:] == {k: [r[k] for r in rows] for k in packed.column_names}
    assert columnar_stats == stats and (stats["overflow"] > 0) == (overflow != "raise")


def test_every_token_once_with_its_label_and_no_row_over_max_length():
    lengths = [5, 130, 64, 1, 70, 200, 33, 64, 2]
    examples = _examples(lengths, weights=False)
    packed = pack_columns(_table(examples), 64, overflow="split").to_pydict()
    tokens = [t for row in packed["input_ids"] for t in row]
    assert sorted(tokens) == list(range(sum(lengths)))  # each token exactly once
    for ids, labels, seq in zip(packed["input_ids"], packed["labels"], packed["seq_lengths"]):
        assert labels == [-100 if t % 3 == 0 else t + 1 for t in ids]
        assert len(ids) == sum(seq) <= 64
        start = 0
        for n in seq:  # every sample (or piece) is a run of consecutive tokens of one example
            assert ids[start:start + n] == list(range(ids[start], ids[start] + n))
            start += n


def test_sliced_and_chunked_tables_gather_from_the_right_offsets():
    """A table sliced from a bigger one keeps the whole value buffer (its offsets do not start at 0),
    and a dataset's table may come in several chunks: a gather that ignored either would be off."""
    examples = _examples([7, 3, 12, 5, 9, 4, 8, 6])
    table = _table(examples)
    rows, _ = pack_examples(examples[3:], 16)
    assert pack_columns(table.slice(3), 16).to_pylist() == rows
    chunked = pa.concat_tables([table.slice(3, 2), table.slice(5)])
    assert chunked["input_ids"].num_chunks == 2
    assert pack_columns(chunked, 16).to_pylist() == rows


def test_each_column_is_read_at_its_own_offsets_whatever_its_chunks():
    """Columns of one table need not share value buffers, offsets or chunk boundaries, and each chunk
    has a value buffer of its own."""
    ids = pa.chunked_array([pa.array([[1, 2]]), pa.ListArray.from_arrays([0, 1, 3], [3, 4, 5])])
    labels = pa.ListArray.from_arrays([4, 6, 7, 9], [9, 9, 9, 9, -100, 2, 3, -100, 5])
    table = pa.table({"input_ids": ids, "labels": pa.chunked_array([labels])})
    expected = {"input_ids": [[1, 2], [4, 5, 3]], "labels": [[-100, 2], [-100, 5, 3]], "seq_lengths": [[2], [2, 1]]}
    assert pack_columns(table, 3).to_pydict() == expected
    assert pack_columns(table.slice(0, 0), 3).num_rows == 0


def test_keeps_the_columns_types_and_refuses_what_it_cannot_pack():
    table = pa.table({"input_ids": pa.array([[1, 2], [3]], pa.list_(pa.int32())),
                      "labels": pa.array([[1, 2], [3]], pa.large_list(pa.int64()))})
    packed = pack_columns(table, 4)
    assert packed.schema.types == [pa.list_(pa.int32()), pa.large_list(pa.int64()), pa.list_(pa.int32())]
    with pytest.raises(ValueError, match="labels and input_ids differ in length"):
        pack_columns(pa.table({"input_ids": [[1, 2], [3]], "labels": [[1], [3, 4]]}), 4)
    with pytest.raises(ValueError, match="sample 0 has 5 tokens, more than max_length=4"):
        pack_columns(pa.table({"input_ids": [[1, 2, 3, 4, 5]]}), 4)
    with pytest.raises(ValueError, match="no input_ids column"):
        pack_columns(pa.table({"labels": [[1]]}), 4)
    with pytest.raises(ValueError, match="strategy must be one of"):
        pack_columns(table, 4, strategy="best")


def test_a_batch_of_columnar_rows_equals_a_batch_of_list_rows():
    examples = _examples([9, 4, 17, 3, 11, 6, 2, 14])
    rows, _ = pack_examples(examples, 24, shuffle_seed=0)
    packed, _ = pack_dataset_columnar(examples, 24, shuffle_seed=0)
    collate = PackedCollator(pad_token_id=0, max_length=24)
    expected = collate(rows)
    for fmt in (None, "numpy", "torch"):
        batch = collate(list(packed.with_format(fmt)))
        assert batch.keys() == expected.keys()
        for k, v in expected.items():
            assert torch.equal(batch[k], v) if torch.is_tensor(v) else batch[k] == v, k


def test_blocks_of_rows_are_the_rows_in_order():
    examples = _examples([9, 4, 17, 3, 11, 6, 2, 14, 5, 8, 1, 19, 7, 12, 3, 16, 10, 4, 13, 6])
    rows, _ = pack_examples(examples, 20, overflow="split", shuffle_seed=4)
    blocks = list(packed_blocks(_table(examples), 20, overflow="split", shuffle_seed=4, rows_per_block=3))
    assert [len(b) for b in blocks] == [3] * (len(rows) // 3) + [len(rows) % 3] and len(rows) % 3
    assert [r for b in blocks for r in b.to_pylist()] == rows


def test_a_dataset_on_disk_packs_into_a_memory_mapped_cache_that_is_reused(tmp_path):
    from datasets import Dataset, load_from_disk

    examples = _examples([5, 9, 3, 12, 7, 15, 2, 8])
    Dataset.from_list(examples).save_to_disk(tmp_path / "data")
    data = load_from_disk(tmp_path / "data")
    packed, stats = pack_dataset_columnar(data, 16, rows_per_block=1)
    rows, expected_stats = pack_examples(examples, 16)
    assert packed.cache_files and packed[:] == {k: [r[k] for r in rows] for k in packed.column_names}
    assert stats == expected_stats
    again, _ = pack_dataset_columnar(data, 16)
    assert again.cache_files == packed.cache_files and again[:] == packed[:]
    other, _ = pack_dataset_columnar(data, 16, shuffle_seed=1)
    assert other.cache_files != packed.cache_files  # another packing, another cache file
    packed.save_to_disk(tmp_path / "packed")
    assert load_from_disk(tmp_path / "packed")[:] == packed[:]
