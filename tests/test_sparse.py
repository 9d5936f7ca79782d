"""N:M sparsity (flightgen.isa.sparse) and the masked linear layer's semantics."""

import numpy as np
import pytest

from flightgen.isa.matrix import Geometry, MatrixMode, MatrixOperation
from flightgen.isa.numerics import quantize_per_group
from flightgen.isa.sparse import PATTERNS, check_nm, nm_mask, prune, window_masks
from flightgen.isa.weights import GroupQuantized, linear


@pytest.mark.parametrize("pattern", PATTERNS[1:])
def test_mask_keeps_the_largest_pair_scores(pattern):
    n, m = pattern
    rng = np.random.default_rng(n * m)
    scores = rng.random((6, 64))
    mask = nm_mask(scores, n, m)
    check_nm(mask, n, m)
    pair = scores.reshape(3, 2, 64 // m, m).sum(1)
    kept = mask[0::2].reshape(3, 64 // m, m)
    # every kept pair score is at least every dropped one in its window
    lowest_kept = np.where(kept, pair, np.inf).min(-1)
    highest_dropped = np.where(kept, -np.inf, pair).max(-1)
    assert np.all(lowest_kept >= highest_dropped)


def test_check_nm_names_the_problem():
    mask = nm_mask(np.random.default_rng(0).random((4, 32)), 8, 16)
    broken = mask.copy()
    broken[1, 0] = ~broken[1, 0]
    with pytest.raises(ValueError, match="^rows 0 and 1 do not share their sparsity pattern$"):
        check_nm(broken, 8, 16)
    broken[0, 0] = broken[1, 0]
    with pytest.raises(ValueError, match=r"^row 0 keeps \d+ weights in window 0, not 8 of 16$"):
        check_nm(broken, 8, 16)
    with pytest.raises(ValueError, match=r"^sparsity must be one of 16:16, 8:16, 4:16, 2:16, "
                                         r"2:4, not 3:16$"):
        nm_mask(np.ones((2, 16)), 3, 16)
    with pytest.raises(ValueError, match="^N:M patterns are shared by row pairs: 3 rows is odd$"):
        nm_mask(np.ones((3, 16)), 8, 16)


def test_two_four_is_an_eight_sixteen_pattern():
    mask = nm_mask(np.random.default_rng(1).random((2, 64)), 2, 4)
    check_nm(mask, 2, 4)
    check_nm(mask, 8, 16)


def test_window_masks_bits():
    mask = np.zeros((2, 32), bool)
    mask[:, [0, 3, 17, 31]] = True
    np.testing.assert_array_equal(window_masks(mask), [[0b1001, (1 << 1) | (1 << 15)]])


@pytest.mark.parametrize(("bits", "symmetric"), [(8, True), (4, False)])
def test_pruned_weights_are_exactly_zero(bits, symmetric):
    """A masked matrix computes like the dense one whose pruned values are zero: checked
    against an integer model that applies each kept weight's scale and minimum."""
    rng = np.random.default_rng(bits)
    weight = GroupQuantized.from_float(rng.normal(0, 0.1, (4, 64)), bits, 32, symmetric)
    pruned = prune(weight, 4, 16)
    assert not pruned.dequantize()[~pruned.mask].any()
    np.testing.assert_array_equal(pruned.dequantize()[pruned.mask],
                                  weight.dequantize()[pruned.mask])
    fx = rng.normal(0, 2**18, (3, 64)).astype(np.int64)
    codes, scale = quantize_per_group(fx)
    # the same result from the block products of an unmasked matrix whose minimums apply only
    # where the mask keeps: build it block by block in exact integers
    terms, row_exp = pruned.block_products(codes)
    d, m, _ = pruned.exact_terms()
    x = codes.astype(np.int64).reshape(3, 2, 32)
    w = pruned.codes.astype(np.int64).reshape(4, 2, 32)
    keep = pruned.mask.reshape(4, 2, 32)
    expected = (np.einsum("tbk,nbk->tnb", x, w) * d[None]
                + (0 if m is None else np.einsum("tbk,nbk->tnb", x, keep) * m[None]))
    np.testing.assert_array_equal(terms, expected)
    assert linear(codes, scale, pruned).shape == (3, 4)


def test_masked_codes_must_be_zero():
    weight = GroupQuantized.from_float(np.ones((2, 32)), 8, 32, True)
    mask = np.zeros((2, 32), bool)
    with pytest.raises(ValueError, match=r"^pruned weights \(mask False\) must have code 0$"):
        GroupQuantized(weight.codes, 8, True, 32, weight.scales, None, mask)


def test_operation_validates_its_operands():
    g = Geometry(8, 1)
    weight = GroupQuantized.from_float(np.ones((2, 64)), 3, 32, True)
    codes, scale = quantize_per_group(np.ones((1, 64), np.int64))
    with pytest.raises(ValueError, match="^the matrix engine takes 8, 4, 2-bit codes, not "
                                         "3-bit$"):
        MatrixOperation(g, MatrixMode.MV, weight, codes, scale)
    weight = GroupQuantized.from_float(np.ones((2, 64)), 8, 32, True)
    with pytest.raises(ValueError, match=r"^MV takes 1 to 1 activation vectors of 64 codes, "
                                         r"not shape \(2, 64\)$"):
        MatrixOperation(g, MatrixMode.MV, weight, np.repeat(codes, 2, 0),
                        tuple(np.repeat(v, 2, 0) for v in scale))
    with pytest.raises(ValueError, match="^chain length must be one of 8, 16, 32, 64, not 12$"):
        Geometry(12, 1)
    with pytest.raises(ValueError, match="^VPU count must be a power of two from 1 to 64, "
                                         "not 3$"):
        Geometry(8, 3)


def test_raw_operation_is_the_integer_product_of_the_codes():
    rng = np.random.default_rng(9)
    weight = prune(GroupQuantized.from_float(rng.normal(0, 1, (6, 64)), 4, 32, False), 8, 16)
    codes, scale = quantize_per_group(rng.normal(0, 2**20, (1, 64)).astype(np.int64))
    op = MatrixOperation(Geometry(8, 1), MatrixMode.MV, weight, codes, scale, raw=True)
    direct = codes.astype(np.int64) @ weight.codes.astype(np.int64).T
    np.testing.assert_array_equal(op.reference, direct)
    np.testing.assert_array_equal(op.expected.reshape(-1)[:6], direct[0])
    assert op.beats["scales"] == [] and op.command["raw"] == 1
