"""Claims with intervals: is condition A better than B, by how much, and how sure are we?

Two ways to get the 95% interval of a difference, one per kind of evidence:

* `compare(a, b)`: per-item scores (exact match 0/1, a per-example loss) of two conditions on the
  *same* items, for one seed (`[item, ...]`) or several (`[[item, ...], ...]`, one list per seed).
  Paired bootstrap: resample items (and, with several seeds, seeds first), the same draws for both.
* `compare_seeds(a, b)`: one number per seed (a run's validation loss), paired by seed: a Student-t
  interval over the per-seed differences (with 3 seeds it is wide, as it should be).

Both return a `Difference`; `str()` of it is the sentence a notebook prints, `supports(">")` what an
assert checks. A claim is made only in the direction the interval supports; an interval that holds
0 reads "no detectable difference".

>>> d = compare([1, 1, 1, 0, 1, 1, 1, 1] * 10, [0, 1, 0, 0, 1, 0, 0, 1] * 10, ("clean", "noisy"))
>>> d.supports(">"), round(d.delta, 3)
(True, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Difference:
    """`mean_a - mean_b` with its `confidence` interval [`low`, `high`] over `n_items` × `n_seeds`.
    `percent=True` prints rates as percentages and their differences as points."""
    names: tuple[str, str]
    mean_a: float
    mean_b: float
    delta: float
    low: float
    high: float
    n_items: int
    n_seeds: int
    confidence: float = 0.95
    percent: bool = False

    @property
    def direction(self) -> str:
        """'>' when the whole interval is above 0, '<' when below, '~' when it holds 0."""
        return ">" if self.low > 0 else "<" if self.high < 0 else "~"

    def supports(self, direction: str) -> bool:
        """Whether the interval supports `direction` ('>', '<', or '~' for no detectable difference).

        >>> compare_seeds([2.0, 2.1, 2.2], [3.0, 3.2, 3.1]).supports("<")
        True
        """
        if direction not in (">", "<", "~"):
            raise ValueError(f"direction must be '>', '<' or '~', not {direction!r}")
        return self.direction == direction

    def within(self, bound: float) -> bool:
        """Whether the whole interval lies inside ±`bound`: the two conditions differ by less than
        `bound` (an equivalence claim, "within 15 points", that an interval can support).

        >>> compare([1, 0, 1, 1] * 50, [1, 0, 1, 0] * 50).within(0.4), compare([1] * 50, [0] * 50).within(0.4)
        (True, False)
        """
        return -bound < self.low and self.high < bound

    def _number(self, x: float, signed: bool = False, decimals: int | None = None) -> str:
        sign = "+" if signed else ""
        if self.percent:
            return f"{x * 100:{sign}.{1 if decimals is None else decimals}f}" + (" pts" if signed else "%")
        return f"{x:{sign}.3g}" if decimals is None else f"{x:{sign}.{decimals}f}"

    def brief(self, decimals: int | None = None) -> str:
        """The difference and its interval in a few characters, for a table cell.

        >>> compare_seeds([2.0, 2.1, 2.2], [3.0, 3.2, 3.1]).brief()
        '-1 (-1.25 to -0.752)'
        >>> compare([1, 1, 0, 1] * 20, [0, 1, 0, 0] * 20).brief()
        '+50.0 pts (+38.8 to +61.3)'
        """
        low, high = (self._number(x, True, decimals).removesuffix(" pts") for x in (self.low, self.high))
        return f"{self._number(self.delta, True, decimals)} ({low} to {high})"

    def text(self, decimals: int | None = None) -> str:
        """The sentence a notebook prints. `decimals`: digits after the point (of percentage points
        for rates); by default 1 for rates and 3 significant digits otherwise. A number that moves
        between machines (a live run's) is printed no finer than it is reproducible: `f"{d:.0}"` is
        `d.text(0)`.

        >>> f"{compare([1, 1, 0, 1] * 20, [0, 1, 0, 0] * 20, ('a', 'b')):.0}"
        'a > b: 75% vs 25% (Δ +50 pts, 95% CI +39 pts to +61 pts; 80 items)'
        """
        a, b = self.names
        size = f"{self.n_items} items" + (f" × {self.n_seeds} seeds" if self.n_seeds > 1 else "")
        if self.n_items <= 1:
            size = f"{self.n_seeds} seeds"
        def number(x: float, signed: bool = False) -> str:
            return self._number(x, signed, decimals)

        interval = (f"Δ {number(self.delta, True)}, {self.confidence:.0%} CI "
                    f"{number(self.low, True)} to {number(self.high, True)}; {size}")
        values = f"{number(self.mean_a)} vs {number(self.mean_b)}"
        if self.direction == "~":
            return f"no detectable difference between {a} and {b}: {values} ({interval})"
        return f"{a} {self.direction} {b}: {values} ({interval})"

    def __str__(self) -> str:
        return self.text()

    def __format__(self, spec: str) -> str:
        if not spec:
            return self.text()
        if not spec.startswith(".") or not spec[1:].isdigit():
            raise ValueError(f"a Difference formats as '.N' (N decimals), not {spec!r}")
        return self.text(int(spec[1:]))


def _per_seed(scores) -> np.ndarray:
    """Scores as a float array of shape (seeds, items)."""
    x = np.asarray(scores, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"scores must be [item, ...] or [[item, ...], ...] (one list per seed), got shape {x.shape}")
    return x


def compare(a, b, names: tuple[str, str] = ("A", "B"), *, confidence: float = 0.95, resamples: int = 10_000,
            percent: bool | None = None, paired: bool = True, seed: int = 0) -> Difference:
    """Bootstrap interval of `mean(a) - mean(b)` over per-item scores.

    `a`, `b`: `[item, ...]` (one seed) or `[[item, ...], ...]` (one list per seed). Paired (the
    default): the same items in the same order in every list; each resample draws seeds with
    replacement (when there are several), then items with replacement, the same draws for both
    conditions, and averages the differences, so the percentile interval holds both the item sampling
    and the seed-to-seed spread. `paired=False`: `a` and `b` score different items (their counts may
    differ); the seeds are still drawn together, the items of each side on their own.
    `percent` (default: whether the scores are all 0/1) prints rates in percent.

    >>> str(compare([1, 0, 1, 1], [1, 0, 1, 1], ("x", "y")))
    'no detectable difference between x and y: 75.0% vs 75.0% (Δ +0.0 pts, 95% CI +0.0 pts to +0.0 pts; 4 items)'
    >>> compare([1] * 15 + [0] * 5, [1] * 2 + [0] * 18, ("x10", "x1"), paired=False).supports(">")
    True
    """
    xa, xb = _per_seed(a), _per_seed(b)
    if xa.shape != xb.shape and (paired or len(xa) != len(xb)):
        raise ValueError(f"compare{'' if paired else ' (unpaired)'} needs the same seeds{' × items' if paired else ''} "
                         f"in both conditions, got {xa.shape} and {xb.shape}")
    rng = np.random.default_rng(seed)
    n_seeds = len(xa)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else np.zeros((resamples, 1), int)

    def draw(x: np.ndarray) -> np.ndarray:
        items = rng.integers(0, x.shape[1], size=(resamples, n_seeds, x.shape[1]))
        return x[seeds[:, :, None], items].mean(axis=(1, 2))

    boot = draw(xa - xb) if paired else draw(xa) - draw(xb)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    if percent is None:
        percent = bool(np.isin(np.concatenate([xa.ravel(), xb.ravel()]), (0.0, 1.0)).all())
    n_items = xa.shape[1] if paired else min(xa.shape[1], xb.shape[1])
    return Difference(tuple(names), float(xa.mean()), float(xb.mean()), float(xa.mean() - xb.mean()), float(low),
                      float(high), n_items, n_seeds, confidence, percent)


def compare_seeds(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("A", "B"), *,
                  confidence: float = 0.95, percent: bool = False) -> Difference:
    """Student-t interval of `mean(a) - mean(b)` from one number per seed, paired by seed (`a[i]` and
    `b[i]` come from runs with seed i): for run-level measures such as a validation loss.

    >>> d = compare_seeds([1.0, 1.1, 0.9], [1.05, 1.0, 1.0], ("lora", "full"))
    >>> d.direction, round(d.delta, 3)
    ('~', -0.017)
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape or xa.ndim != 1 or len(xa) < 2:
        raise ValueError(f"compare_seeds needs one number per seed for each condition (2 seeds or more), "
                         f"got shapes {xa.shape} and {xb.shape}")
    diff = xa - xb
    n = len(diff)
    from scipy.stats import t as student_t  # here: scipy.stats takes half a second to import

    t = float(student_t.ppf(0.5 + confidence / 2, n - 1))
    half = t * diff.std(ddof=1) / math.sqrt(n)
    return Difference(tuple(names), float(xa.mean()), float(xb.mean()), float(diff.mean()),
                      float(diff.mean() - half), float(diff.mean() + half), 1, n, confidence, percent)
