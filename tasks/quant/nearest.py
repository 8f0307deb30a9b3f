"""Exact nearest-value rounding to a codebook (codebooks.py), by table lookup.

`NearestTable` rounds to any codebook without a binary search: the top bits of a float32 (sign,
exponent, leading mantissa bits) name a bin that contains at most one midpoint between codebook
values, so one table lookup, one comparison and a second lookup give the exact nearest value.

A float32's bit pattern shifted right by SHIFT keeps the sign, the exponent and the leading
23 - SHIFT mantissa bits: a bin of consecutive floats, relatively 2^-10 wide. The table stores
per bin the (at most one) midpoint inside it and the codebook values on either side, so
    key = (bits >> SHIFT) + HALF;  up = x > mid[key];  value = vals[2 * key + up]
is exactly the nearest codebook value with ties going to the lower one (= torch.bucketize on the
midpoints), at the cost of two gathers instead of a data-dependent binary search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from kbitlaw.quant.codebooks import fixed_codebook

SHIFT = 13
N_BINS = 1 << (32 - SHIFT)
HALF = N_BINS // 2


@dataclass(frozen=True)
class NearestTable:
    """Lookup tables for one codebook (on one device); see `build_table` and `round_unit`."""

    codebook: torch.Tensor  # sorted values
    mids: torch.Tensor  # [N_BINS] the midpoint inside each bin, +inf where there is none
    vals: torch.Tensor  # [2 * N_BINS] codebook value below / above that midpoint


def _bin_edges() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smallest and largest float of every bin, in ascending value order, and each bin's key."""
    keys = torch.arange(N_BINS, dtype=torch.int64)
    lo_bits = ((keys - HALF) << SHIFT).to(torch.int32)
    a = lo_bits.view(torch.float32)
    b = (lo_bits | ((1 << SHIFT) - 1)).view(torch.float32)
    vmin, vmax = torch.minimum(a, b), torch.maximum(a, b)
    # NaN/inf bins (exponent all ones) sort as +-inf; their values are overwritten with NaN later.
    nonfinite = ~torch.isfinite(a)
    sign = torch.where(lo_bits < 0, -1.0, 1.0)
    vmin = torch.where(nonfinite, sign * math.inf, vmin)
    vmax = torch.where(nonfinite, sign * math.inf, vmax)
    # Negative keys run from -0 towards -inf: reversing them and appending the positive keys sorts
    # every bin by value.
    order = torch.cat([torch.arange(HALF - 1, -1, -1), torch.arange(HALF, N_BINS)])
    return vmin[order], vmax[order], order


def _count_below(mids: torch.Tensor, ascending: torch.Tensor) -> torch.Tensor:
    """For each value of a sorted tensor, how many midpoints are strictly below it.

    Searching the C midpoints in the sorted values (not the reverse) keeps this O(N + C log N).
    """
    first_above = torch.searchsorted(ascending, mids, right=True)
    return torch.bincount(first_above, minlength=ascending.numel() + 1)[:-1].cumsum(0)


@lru_cache(maxsize=1)
def _cached_bin_edges() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bin_edges()


def build_table(codebook: torch.Tensor, ties: str = "lower") -> NearestTable | None:
    """Nearest-value tables for a sorted codebook; None if some bin holds two midpoints.

    None only happens for codebooks with values closer than ~2^-10 relative (e.g. a quantile codebook
    of nearly discrete data); callers then fall back to torch.bucketize.
    ties: "lower" (a value exactly on a midpoint takes the lower entry) or "even" (the entry whose
    magnitude has an even index among the codebook's magnitudes: round half to even for a float or
    integer grid in its own units, where midpoints are exact and consecutive codes alternate parity).
    """
    device = codebook.device
    cb = codebook.detach().float().cpu().unique()  # sorted, distinct
    mids = (cb[:-1] + cb[1:]) / 2
    if ties == "even":  # x > nextafter(mid, -inf)  <=>  x >= mid: the tie goes up
        magnitudes = cb[cb >= 0]
        odd = torch.searchsorted(magnitudes, cb.abs()) % 2 == 1
        up = ~odd[1:]
        mids = torch.where(up, torch.nextafter(mids, torch.tensor(-math.inf)), mids)
    elif ties != "lower":
        raise ValueError(f"ties must be 'lower' or 'even', got {ties!r}")
    vmin, vmax, order = _cached_bin_edges()
    lo_sorted, hi_sorted = _count_below(mids, vmin), _count_below(mids, vmax)
    lo, hi = torch.empty_like(lo_sorted), torch.empty_like(hi_sorted)
    lo[order], hi[order] = lo_sorted, hi_sorted
    if bool((hi - lo > 1).any()):
        return None
    split = hi > lo
    mid_ext = torch.cat([mids, torch.tensor([math.inf])])
    mid_per_bin = torch.where(split, mid_ext[lo], torch.tensor(math.inf))
    below = cb[lo]
    above = cb[torch.where(split, lo + 1, lo)]
    vals = torch.stack([below, above], dim=1).reshape(-1)
    lowest = ((torch.arange(N_BINS) - HALF) << SHIFT).to(torch.int32).view(torch.float32)
    vals.view(N_BINS, 2)[~torch.isfinite(lowest)] = math.nan  # inf/nan inputs give NaN
    return NearestTable(codebook=cb.to(device), mids=mid_per_bin.to(device), vals=vals.to(device))


@lru_cache(maxsize=128)
def fixed_table(
    dtype: str, k: int, e: int | None, device: torch.device, *, ocp: bool = False
) -> NearestTable:
    """Cached table of a fixed codebook on a device (fixed codebooks always have a table)."""
    table = build_table(fixed_codebook(dtype, k, e, ocp=ocp).to(device))
    assert table is not None, f"{dtype}{k}: codebook too dense for the lookup table"
    return table


def round_unit(x: torch.Tensor, table: NearestTable, key: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """Replace the float32 values of x (already divided by their scale) by the nearest codebook value.

    key (int32) and mid (float32) are scratch buffers shaped like x, reused across chunks so that a
    chunk allocates nothing. Ties go to the lower codebook value. Non-finite x gives NaN.
    """
    torch.bitwise_right_shift(x.view(torch.int32), SHIFT, out=key)
    key.add_(HALF)
    torch.index_select(table.mids, 0, key.view(-1), out=mid.view(-1))
    # x > mid  <=>  mid - x < 0: its sign bit, arithmetic-shifted, is -1 (above) or 0 (at or below)
    above = mid.sub_(x).view(torch.int32).bitwise_right_shift_(31)
    key.add_(key).sub_(above)  # 2 * key + (x > mid)
    return torch.index_select(table.vals, 0, key.view(-1), out=x.view(-1)).view_as(x)


def round_unit_bucketize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """round_unit for codebooks too dense for a table: a binary search per value (slow, exact)."""
    idx = torch.bucketize(x, (codebook[:-1] + codebook[1:]) / 2)
    return torch.index_select(codebook, 0, idx.view(-1), out=x.view(-1)).view_as(x)
