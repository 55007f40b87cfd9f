"""The interval helper behind every compared claim: checked against scipy's bootstrap and Student-t,
and on data whose answer is known."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sft_helpers.stats import compare, compare_seeds


def test_one_seed_interval_matches_scipys_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.45).astype(float)
    b = (rng.random(300) < 0.35).astype(float)
    ours = compare(a, b, resamples=20_000)
    ref = scipy_stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True,
                                n_resamples=20_000, method="percentile", random_state=0).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.006) and ours.high == pytest.approx(ref.high, abs=0.006)
    assert ours.delta == pytest.approx(a.mean() - b.mean())


def test_unpaired_interval_matches_scipys_independent_bootstrap():
    """Different items on each side (lesson 06's x10 and x1 probes): each side resampled on its own."""
    rng = np.random.default_rng(4)
    a = (rng.random(40) < 0.7).astype(float)
    b = (rng.random(60) < 0.2).astype(float)
    ours = compare(a, b, paired=False, resamples=20_000)
    ref = scipy_stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=False,
                                n_resamples=20_000, method="percentile", random_state=0).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.01) and ours.high == pytest.approx(ref.high, abs=0.01)
    with pytest.raises(ValueError, match="same seeds"):
        compare(a, b)  # paired needs the same items


def test_pairing_narrows_the_interval_of_correlated_scores():
    rng = np.random.default_rng(2)
    a = rng.normal(size=200)
    b = a - 0.1 + rng.normal(scale=0.05, size=200)   # B is A minus 0.1, item by item
    d = compare(a, b)
    assert d.supports(">") and d.high - d.low < 0.03, d


def test_coverage_of_the_seed_interval_is_about_95_percent():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(2000):
        a, b = rng.normal(0.3, 1, 3), rng.normal(0.0, 1, 3)
        d = compare_seeds(a, b)
        hits += d.low <= 0.3 <= d.high
    assert 0.93 <= hits / 2000 <= 0.97, hits / 2000


def test_seed_interval_matches_scipys_t_interval():
    a, b = [2.1, 2.4, 2.2, 2.6], [2.0, 2.0, 2.3, 2.1]
    diff = np.subtract(a, b)
    low, high = scipy_stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=scipy_stats.sem(diff))
    d = compare_seeds(a, b)
    assert (d.low, d.high) == pytest.approx((low, high))


def test_seeds_widen_the_item_interval_when_seeds_disagree():
    rng = np.random.default_rng(4)
    items = rng.random(200) < 0.5
    same = [items.astype(float)] * 3
    # three seeds whose gap over B moves from +0.02 to +0.3: the seed spread must show in the interval
    spread = [np.where(rng.random(200) < p, 1.0, 0.0) for p in (0.52, 0.65, 0.8)]
    steady = compare(same, same)
    wide = compare(spread, same)
    one = compare(spread[1], same[1])
    assert steady.low == steady.high == 0 and steady.supports("~")
    assert wide.n_seeds == 3 and (wide.high - wide.low) > (one.high - one.low), (wide, one)


def test_text_says_the_direction_the_interval_supports():
    better = compare([1] * 60 + [0] * 40, [1] * 30 + [0] * 70, ("filtered", "noisy"))
    tie = compare([1, 0] * 20, [0, 1] * 20, ("exact", "near"))
    assert str(better).startswith("filtered > noisy: 60.0% vs 30.0% (Δ +30.0 pts, 95% CI +")
    assert str(tie).startswith("no detectable difference between exact and near: 50.0% vs 50.0%")
    loss = compare_seeds([1.2, 1.3, 1.25], [2.2, 2.1, 2.3], ("LoRA + embeddings", "adapters only"))
    assert str(loss).startswith("LoRA + embeddings < adapters only: 1.25 vs 2.2 (Δ -0.95, 95% CI -")
    assert loss.supports("<") and not loss.supports(">") and "3 seeds" in str(loss)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="same seeds × items"):
        compare([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="2 seeds or more"):
        compare_seeds([1.0], [2.0])
    with pytest.raises(ValueError, match="direction"):
        compare([1], [0]).supports(">=")


def test_a_difference_prints_no_finer_than_asked():
    """Live runs move between machines: a notebook prints their intervals to whole points or to a
    tenth of a nat (`f"{d:.0}"`, `f"{d:.1}"`); the default keeps one decimal of a point."""
    rates = compare([1, 1, 0, 1] * 20, [0, 1, 0, 0] * 20, ("a", "b"))
    assert f"{rates}" == str(rates) and "+50.0 pts" in str(rates)
    assert f"{rates:.0}" == "a > b: 75% vs 25% (Δ +50 pts, 95% CI +39 pts to +61 pts; 80 items)"
    losses = compare_seeds([3.61, 3.55, 3.7], [4.83, 4.9, 4.7], ("stopped", "50 epochs"))
    assert f"{losses:.1}".startswith("stopped < 50 epochs: 3.6 vs 4.8 (Δ -1.2, 95% CI -1.")
    with pytest.raises(ValueError, match="formats as"):
        f"{losses:>10}"


def test_within_asks_the_whole_interval_inside_the_bound():
    """A small difference measured on few items is not shown small: its interval is too wide."""
    small_many = compare([1, 0, 1, 1, 0] * 200, [1, 0, 1, 0, 0] * 200)
    small_few = compare([1, 0, 1, 1, 0], [1, 0, 1, 0, 0])
    assert small_many.delta == small_few.delta == pytest.approx(0.2)
    assert small_many.within(0.25) and not small_few.within(0.25)
    assert not small_many.within(0.2)  # the estimate itself sits on the bound
