"""Interleaved A/B timing: the two sides of a ratio run alternately in one process.

On a shared machine the load changes from second to second; timing kbitlaw for a minute and then
the reference for a minute compares two different machines (ratios swung 1.5x-3.6x between runs).
`ratio(top, bottom)` runs bottom, top, bottom, top ... (`pairs` pairs after one warm-up of each)
and reports the median of the per-pair ratios seconds(top) / seconds(bottom) with their range, so
a disturbance hits both sides of the pair it falls in.

    r = ratio(lambda: quantize(w), lambda: copy(w), pairs=7)
    print(r)            # "0.42 (0.40-0.44, 7 pairs)"
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    """Per-pair ratios seconds(top) / seconds(bottom), and each side's seconds, in run order."""

    ratios: tuple[float, ...]
    top_seconds: tuple[float, ...]
    bottom_seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-pair ratios: 0.1 means the pairs agree within 10%."""
        return (self.high - self.low) / self.median

    def inverse(self) -> Ratio:
        """bottom / top, pair by pair (a speed ratio from a time ratio)."""
        return Ratio(tuple(1 / r for r in self.ratios), self.bottom_seconds, self.top_seconds)

    def top_median(self) -> float:
        return statistics.median(self.top_seconds)

    def bottom_median(self) -> float:
        return statistics.median(self.bottom_seconds)

    def text(self, digits: int = 2) -> str:
        f = f".{digits}f"
        return f"{self.median:{f}} ({self.low:{f}}-{self.high:{f}}, {len(self.ratios)} pairs)"

    __str__ = text


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ratio(top: Callable[[], object], bottom: Callable[[], object], *, pairs: int = 5) -> Ratio:
    """seconds(top) / seconds(bottom) over `pairs` interleaved pairs, after one warm-up run of each."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    bottom()
    top()
    tops, bottoms = [], []
    for _ in range(pairs):
        bottoms.append(seconds(bottom))
        tops.append(seconds(top))
    return Ratio(tuple(t / b for t, b in zip(tops, bottoms, strict=True)), tuple(tops), tuple(bottoms))
