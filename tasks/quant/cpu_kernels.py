"""Fused CPU kernels (numba) for round-to-nearest (one pass for the block absmax, one to round) and
for GPTQ's column loop.

blockwise.py's torch path runs ~10 elementwise ops and two index_select gathers per value; on a CPU
each gather alone costs ~0.4-0.9 ns per value (index_select is a scalar loop), so the torch path
cannot get near memory bandwidth. These kernels do the same arithmetic, value by value, in one
compiled loop: u = x * inverse (float32), the lookup of nearest.py's table (key = bits >> SHIFT +
HALF, up = u > mids[key], vals[2 * key + up]) and the multiply by the block's scale, so their results
are bit-identical to the torch path (tests/test_quantize.py runs both). Codebooks too dense for a
table use a binary search on the midpoints (ties to the lower value, as torch.bucketize).

The scales themselves (fp16 / bf16 absmax, E8M0, E4M3) stay in torch: they are one value per block.

numba's threading layers are not all safe to enter from two threads at once (Prefect may run tasks in
threads), so every launch holds one process-wide lock; each launch uses as many threads as torch
does. Its OpenMP layer shares torch's libgomp (its own work queue ran 2x slower beside torch's
spinning OpenMP threads) and sets the OpenMP thread count when it starts, so `_launch` puts torch's
back: a process limited to one thread stays at one.

`available()` is False where numba is missing or KBITLAW_KERNELS=torch: callers then use the torch
path (also the path on GPUs).

GPTQ (`gptq_batch`): the reference rounds one column at a time with ~10 torch ops on [rows] vectors,
Python-bound at these sizes; rows are independent given H⁻¹, so the kernel gives each thread whole
rows and runs a lazy batch's columns in one loop, with the same float32 operations in the same order.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from kbitlaw.quant.nearest import HALF, SHIFT

try:  # numba is a dependency; without it (an unsupported Python, say) the torch path runs
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    numba = None

_LOCK = threading.Lock()


def available() -> bool:
    """True when the numba kernels can run (numba imports and KBITLAW_KERNELS is not 'torch')."""
    return numba is not None and os.environ.get("KBITLAW_KERNELS", "numba") != "torch"


if numba is not None:
    try:

        @njit(parallel=True, cache=True, nogil=True)
        def _row_absmax(bits, out_bits):  # pragma: no cover - compiled
            # max |x| per row of float32 values, on their bit patterns ([rows, width] int32): with the sign
            # bit cleared, integer order is float order and every NaN is above inf, so a NaN anywhere
            # gives NaN (as torch.amax); an integer max vectorizes where a float max with a NaN test does not.
            for r in prange(bits.shape[0]):
                row, top = bits[r], np.int32(0)
                for i in range(row.shape[0]):
                    top = max(top, row[i] & np.int32(0x7FFFFFFF))
                out_bits[r] = top

        @njit(parallel=True, cache=True, nogil=True)
        def _round_table(src, dst, scale, inverse, mids, vals):  # pragma: no cover - compiled
            for r in prange(src.shape[0]):
                row, out, s, inv = src[r], dst[r], scale[r], inverse[r]
                for i in range(row.shape[0]):
                    u = np.float32(row[i] * inv)
                    key = (u.view(np.int32) >> SHIFT) + HALF
                    up = 1 if u > mids[key] else 0
                    out[i] = np.float32(vals[2 * key + up] * s)

        @njit(cache=True, nogil=True, inline="always")
        def _bucket(mids, u):  # pragma: no cover - compiled
            # torch.bucketize(u, mids): how many midpoints are below u (ties lower); NaN -> len(mids)
            lo, hi = 0, mids.shape[0]
            while lo < hi:
                m = (lo + hi) >> 1
                if not (mids[m] >= u):
                    lo = m + 1
                else:
                    hi = m
            return lo

        @njit(parallel=True, cache=True, nogil=True)
        def _round_search(src, dst, scale, inverse, codebook, mids):  # pragma: no cover - compiled
            for r in prange(src.shape[0]):
                row, out, s, inv = src[r], dst[r], scale[r], inverse[r]
                for i in range(row.shape[0]):
                    out[i] = np.float32(codebook[_bucket(mids, np.float32(row[i] * inv))] * s)

        @njit(parallel=True, cache=True, nogil=True)
        def _gptq_batch_table(W1, Q1, Err1, Hinv1, S1, Sinv1, mids, vals):  # pragma: no cover - compiled
            # gptq.py's column loop over one lazy batch; rows are independent, so each thread takes rows
            for r in prange(W1.shape[0]):
                w_row, width = W1[r], W1.shape[1]
                for i in range(width):
                    w = w_row[i]
                    u = np.float32(w * Sinv1[r, i])
                    key = (u.view(np.int32) >> SHIFT) + HALF
                    up = 1 if u > mids[key] else 0
                    q = np.float32(vals[2 * key + up] * S1[r, i])
                    Q1[r, i] = q
                    err = np.float32(np.float32(w - q) / Hinv1[i, i])
                    for j in range(i, width):
                        w_row[j] = np.float32(w_row[j] - np.float32(err * Hinv1[i, j]))
                    Err1[r, i] = err

        @njit(parallel=True, cache=True, nogil=True)
        def _gptq_batch_search(W1, Q1, Err1, Hinv1, S1, Sinv1, codebook, mids):  # pragma: no cover
            for r in prange(W1.shape[0]):
                w_row, width = W1[r], W1.shape[1]
                for i in range(width):
                    w = w_row[i]
                    u = np.float32(w * Sinv1[r, i])
                    q = np.float32(codebook[_bucket(mids, u)] * S1[r, i])
                    Q1[r, i] = q
                    err = np.float32(np.float32(w - q) / Hinv1[i, i])
                    for j in range(i, width):
                        w_row[j] = np.float32(w_row[j] - np.float32(err * Hinv1[i, j]))
                    Err1[r, i] = err
    except RuntimeError:  # numba found no writable cache directory: use the torch path
        numba = None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _launch(kernel, *args) -> None:
    """Run a parallel kernel with torch's thread count, one launch at a time, and leave torch's as it was."""
    with _LOCK:
        threads = torch.get_num_threads()
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, threads)))
        try:
            kernel(*args)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


def row_absmax(rows: torch.Tensor) -> torch.Tensor:
    """max |x| of every row of a contiguous float32 [rows, width] CPU tensor, as [rows, 1] float32."""
    out = torch.empty(rows.shape[0], 1, dtype=torch.float32)
    _launch(_row_absmax, _np(rows.view(torch.int32)), _np(out.view(torch.int32)).reshape(-1))
    return out


def round_rows(
    rows: torch.Tensor,
    dst: torch.Tensor,
    scale: torch.Tensor,
    inverse: torch.Tensor,
    codebook: torch.Tensor,
    table,
) -> None:
    """dst[r] = nearest codebook value of rows[r] * inverse[r], times scale[r] (float32 CPU tensors,
    [rows, width] contiguous; dst may be rows itself); `table`: nearest.py's NearestTable or None."""
    args = (_np(rows), _np(dst), _np(scale).reshape(-1), _np(inverse).reshape(-1))
    if table is not None:
        _launch(_round_table, *args, _np(table.mids), _np(table.vals))
    else:
        cb = codebook.float().contiguous()
        _launch(_round_search, *args, _np(cb), _np((cb[:-1] + cb[1:]) / 2))


def gptq_batch(
    W1: torch.Tensor,
    Err1: torch.Tensor,
    Hinv1: torch.Tensor,
    S1: torch.Tensor,
    Sinv1: torch.Tensor,
    codebook: torch.Tensor,
    table,
) -> torch.Tensor:
    """GPTQ's column loop over one lazy batch (gptq.py) for a batch whose block scales are all fixed
    (S1, Sinv1: [rows, width]): rounds each column, writes its scaled error to Err1 and moves it onto
    the batch's later columns of W1, both in place (contiguous float32 CPU tensors). Returns the
    rounded batch."""
    if not (W1.is_contiguous() and Err1.is_contiguous()):
        raise ValueError("gptq_batch updates W1 and Err1 in place: they must be contiguous")
    Q1 = torch.empty_like(W1)
    args = (_np(W1), _np(Q1), _np(Err1), *(_np(t.contiguous()) for t in (Hinv1, S1, Sinv1)))
    if table is not None:
        _launch(_gptq_batch_table, *args, _np(table.mids), _np(table.vals))
    else:
        cb = codebook.float().contiguous()
        _launch(_gptq_batch_search, *args, _np(cb), _np((cb[:-1] + cb[1:]) / 2))
    return Q1
