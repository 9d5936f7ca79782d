"""N:M structured sparsity: which weights a pruned matrix keeps, and how that is stored.

In an **N:M** sparse matrix every window of M consecutive inputs (along K) of a row keeps
exactly N weights; the others are zero. flightgen shares one pattern between the two
rows of a **row pair** (rows ``2r`` and ``2r + 1``): the matrix engine multiplies both rows of a
pair by the same activation in one DSP (see :mod:`flightgen.hw.chain`), so both must keep the
same columns.

Patterns (:data:`PATTERNS`): dense, 8:16, 4:16, 2:16 and 2:4. A 2:4 pattern is also an 8:16
pattern (each of the four 4-windows of a 16-window keeps 2), so the hardware runs 2:4 matrices
in its 8:16 mode.

Storage of the pattern: one **16-bit mask per 16-window per row pair** (bit ``j`` set when
column ``16w + j`` is kept). That is 0.5 bit per dense weight position for every N:16 pattern,
or ``16 / (2 N)`` bits per kept weight: 1 bit at 8:16 (and 2:4), 2 at 4:16, 4 at 2:16.
FlightLLM stores a 4-bit index per kept value.

The value of a pruned matrix is defined by :class:`flightgen.isa.weights.GroupQuantized` with
a ``mask``: pruned weights are exactly zero, and a group's minimum applies to kept weights only.
"""

import numpy as np

from .weights import GroupQuantized

__all__ = ["PATTERNS", "WINDOW", "ROWS_PER_PATTERN", "hardware_keep", "nm_mask", "check_nm",
           "prune", "window_masks"]

#: ``(N, M)`` patterns flightgen supports; ``(16, 16)`` is dense.
PATTERNS = ((16, 16), (8, 16), (4, 16), (2, 16), (2, 4))
#: Columns per mask window in storage and in the hardware.
WINDOW = 16
#: Rows sharing one pattern.
ROWS_PER_PATTERN = 2


def _check_pattern(n, m):
    if (n, m) not in PATTERNS:
        names = ", ".join(f"{a}:{b}" for a, b in PATTERNS)
        raise ValueError(f"sparsity must be one of {names}, not {n}:{m}")


def hardware_keep(n, m):
    """Weights kept per 16-window in the hardware mode that runs an ``n:m`` pattern."""
    _check_pattern(n, m)
    return n * WINDOW // m


def nm_mask(scores, n, m):
    """Keep, in every window of ``m`` columns of each row pair, the ``n`` columns with the
    largest summed score of the pair (ties: lower column first).

    ``scores`` is a non-negative float matrix ``(N, K)`` (e.g. ``|w|``, or Wanda's
    ``|w| * ||x||``); N must be even and ``m`` must divide K. Returns a bool mask ``(N, K)``.
    """
    _check_pattern(n, m)
    scores = np.asarray(scores, dtype=np.float64)
    rows, k = scores.shape
    if rows % ROWS_PER_PATTERN:
        raise ValueError(f"N:M patterns are shared by row pairs: {rows} rows is odd")
    if k % m:
        raise ValueError(f"window {m} does not divide the {k} inputs")
    pair = scores.reshape(rows // 2, 2, k // m, m).sum(axis=1)
    order = np.argsort(-pair, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(pair.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return np.repeat(keep.reshape(rows // 2, k), 2, axis=0)


def check_nm(mask, n, m):
    """Raise ``ValueError`` unless ``mask`` is an ``n:m`` pattern shared by row pairs."""
    _check_pattern(n, m)
    rows, k = mask.shape
    if rows % ROWS_PER_PATTERN or k % m:
        raise ValueError(f"a {n}:{m} mask needs an even row count and K a multiple of {m}, "
                         f"not {rows} x {k}")
    if np.any(mask[0::2] != mask[1::2]):
        row = int(np.argwhere(np.any(mask[0::2] != mask[1::2], axis=1))[0, 0]) * 2
        raise ValueError(f"rows {row} and {row + 1} do not share their sparsity pattern")
    counts = mask.reshape(rows, k // m, m).sum(-1)
    if np.any(counts != n):
        row, window = (int(v) for v in np.argwhere(counts != n)[0])
        raise ValueError(f"row {row} keeps {int(counts[row, window])} weights in window "
                         f"{window}, not {n} of {m}")


def prune(weight, n, m, scores=None):
    """Return ``weight`` pruned to an ``n:m`` pattern shared by row pairs.

    ``scores`` default to the magnitudes of the dequantized weights. The result keeps the codes,
    scales and minimums; pruned codes become 0 and the mask records what is kept.
    """
    if (n, m) == (16, 16):
        _check_pattern(n, m)
        return weight
    if scores is None:
        scores = np.abs(weight.dequantize())
    mask = nm_mask(scores, n, m)
    if weight.mask is not None:
        raise ValueError("the matrix is already pruned")
    codes = np.where(mask, weight.codes, 0).astype(weight.codes.dtype)
    return GroupQuantized(codes, weight.bits, weight.signed, weight.group, weight.scales,
                          weight.mins, mask)


def window_masks(mask):
    """The stored form of a pair-shared mask: ``uint16`` of shape ``(N // 2, K // 16)``, bit
    ``j`` of window ``w`` set when column ``16 w + j`` is kept."""
    rows, k = mask.shape
    if k % WINDOW:
        raise ValueError(f"K must be a multiple of {WINDOW} for mask windows, not {k}")
    bits = mask[0::2].reshape(rows // 2, k // WINDOW, WINDOW).astype(np.uint32)
    return (bits << np.arange(WINDOW, dtype=np.uint32)).sum(-1).astype(np.uint16)
