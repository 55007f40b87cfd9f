"""Packers: property tests (hypothesis) on random length lists."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_helpers.packing import pack_bfd, pack_ffd, pack_sequential, packing_stats

PACKERS = [pack_sequential, pack_ffd, pack_bfd]
lengths_st = st.lists(st.integers(min_value=1, max_value=80), min_size=0, max_size=200)


@pytest.mark.parametrize("pack", PACKERS)
@given(lengths=lengths_st, max_length=st.integers(min_value=16, max_value=128))
@settings(max_examples=60, deadline=None)
def test_every_sample_once_and_no_bin_over_max_length(pack, lengths, max_length):
    result = pack(lengths, max_length, overflow="split")
    pieces = [p for b in result.bins for p in b]
    covered = {}
    for i, s, e in pieces:
        covered.setdefault(i, []).append((s, e))
    assert sorted(covered) == list(range(len(lengths)))
    for i, spans in covered.items():  # the pieces of a sample tile it exactly
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == lengths[i]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(sum(e - s for _, s, e in b) <= max_length for b in result.bins)
    assert result.overflow == [i for i, n in enumerate(lengths) if n > max_length]


@given(lengths=lengths_st, max_length=st.integers(min_value=80, max_value=160))
@settings(max_examples=100, deadline=None)
def test_bfd_never_uses_more_bins_than_ffd(lengths, max_length):
    assert len(pack_bfd(lengths, max_length).bins) <= len(pack_ffd(lengths, max_length).bins)


@given(lengths=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=100))
@settings(max_examples=60, deadline=None)
def test_overflow_policies_are_honoured_and_counted(lengths):
    max_length = 64
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        with pytest.raises(ValueError, match=f"sample {too_long[0]} has"):
            pack_bfd(lengths, max_length)
    truncated = pack_bfd(lengths, max_length, overflow="truncate")
    assert truncated.overflow == too_long
    assert packing_stats(truncated)["tokens"] == sum(min(n, max_length) for n in lengths)
    split = pack_bfd(lengths, max_length, overflow="split")
    assert packing_stats(split)["tokens"] == sum(lengths) and packing_stats(split)["overflow"] == len(too_long)


def test_bfd_fills_rows_better_than_sequential_on_a_long_tail():
    import random

    rng = random.Random(0)
    lengths = [int(rng.paretovariate(1.2) * 30) % 2000 + 1 for _ in range(3000)]
    bfd, seq = packing_stats(pack_bfd(lengths, 2048)), packing_stats(pack_sequential(lengths, 2048))
    assert bfd["efficiency"] > 0.99 and bfd["rows"] < seq["rows"]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="positive"):
        pack_bfd([3, 0], 8)
    with pytest.raises(ValueError, match="overflow must be"):
        pack_ffd([3], 8, overflow="wrap")
