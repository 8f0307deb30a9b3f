"""bench/pairs.py: the two sides of a ratio alternate in one process, after one warm-up of each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# Loaded from its file: putting bench/ on sys.path would let bench/datasets.py shadow Hugging Face's
# `datasets` for every later test in this worker.
_spec = importlib.util.spec_from_file_location(
    "bench_pairs", Path(__file__).resolve().parents[1] / "bench" / "pairs.py"
)
pairs = sys.modules["bench_pairs"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(pairs)
Ratio, ratio = pairs.Ratio, pairs.ratio


def test_sides_alternate_and_each_pair_gives_one_ratio():
    calls = []
    r = ratio(lambda: calls.append("top"), lambda: calls.append("bottom"), pairs=3)
    assert calls == ["bottom", "top"] + ["bottom", "top"] * 3  # warm-up, then interleaved pairs
    assert len(r.ratios) == len(r.top_seconds) == len(r.bottom_seconds) == 3
    assert all(x == t / b for x, t, b in zip(r.ratios, r.top_seconds, r.bottom_seconds, strict=True))


def test_median_range_spread_and_inverse():
    r = Ratio(ratios=(2.0, 1.0, 4.0), top_seconds=(2.0, 1.0, 4.0), bottom_seconds=(1.0, 1.0, 1.0))
    assert (r.median, r.low, r.high, r.spread) == (2.0, 1.0, 4.0, 1.5)
    assert r.inverse().ratios == (0.5, 1.0, 0.25) and r.inverse().median == 0.5
    assert str(r) == "2.00 (1.00-4.00, 3 pairs)"
    with pytest.raises(ValueError, match="pairs"):
        ratio(lambda: None, lambda: None, pairs=0)
