"""The requantization rule of flightgen.isa.numerics, pinned by hand-derived golden vectors and
checked against an independent exact model (Python fractions)."""

import math
from fractions import Fraction

import numpy as np
import pytest

from flightgen.isa.numerics import ACT_MAX, ACT_MIN, requant_params, requantize

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# (acc, mult, shift, expected): each expected value worked out by hand from
# clip(round_half_even(acc * mult / 2**shift), -128, 127).
GOLDEN = [
    (5, 1, 1, 2),  # 2.5 -> 2 (even)
    (7, 1, 1, 4),  # 3.5 -> 4 (even)
    (3, 1, 1, 2),  # 1.5 -> 2
    (1, 1, 1, 0),  # 0.5 -> 0
    (-1, 1, 1, 0),  # -0.5 -> 0
    (-5, 1, 1, -2),  # -2.5 -> -2
    (-7, 1, 1, -4),  # -3.5 -> -4
    (10, 1, 2, 2),  # 2.5 -> 2
    (11, 1, 2, 3),  # 2.75 -> 3
    (9, 1, 2, 2),  # 2.25 -> 2
    (-9, 1, 2, -2),  # -2.25 -> -2
    (100, 3, 2, 75),  # exact
    (253, 1, 1, 126),  # 126.5 -> 126
    (255, 1, 1, 127),  # 127.5 -> 128 -> saturates to 127
    (254, 1, 1, 127),  # 127 exactly
    (-256, 1, 1, -128),  # -128 exactly
    (-257, 1, 1, -128),  # -128.5 -> -128 (even), no saturation needed
    (-259, 1, 1, -128),  # -129.5 -> -130 -> saturates to -128
    (INT32_MAX, 65535, 0, 127),  # largest product saturates
    (INT32_MIN, 65535, 0, -128),
    (INT32_MIN, 1, 24, -128),  # -128 exactly
    (INT32_MIN, 1, 25, -64),
    (INT32_MAX, 1, 31, 1),  # 0.99999... -> 1
    (INT32_MIN, 32768, 47, 0),  # -2**46 / 2**47 = -0.5 -> 0 (even)
    (INT32_MIN, 65535, 47, -1),  # -0.99998 -> -1
    (INT32_MIN, 65535, 48, 0),  # -0.49999 -> 0
    (INT32_MAX, 65535, 63, 0),  # every shift >= 48 gives 0
    (12345, 0, 0, 0),  # zero multiplier
]


@pytest.mark.parametrize(("acc", "mult", "shift", "expected"), GOLDEN)
def test_golden(acc, mult, shift, expected):
    assert requantize(np.array([acc]), mult, shift)[0] == expected


def exact_requantize(acc, mult, shift):
    """Independent model: exact rational arithmetic, Python's round() (half to even)."""
    return max(ACT_MIN, min(ACT_MAX, round(Fraction(acc * mult, 2**shift))))


def test_matches_exact_model():
    rng = np.random.default_rng(20261121)
    acc = rng.integers(INT32_MIN, INT32_MAX, size=20000, endpoint=True)
    acc[::2] >>= rng.integers(0, 31, size=10000)  # plenty of small accumulators too
    mult = rng.integers(0, 65535, size=20000, endpoint=True)
    shift = rng.integers(0, 63, size=20000, endpoint=True)
    shift[::3] = rng.integers(0, 8, size=len(shift[::3])) + np.ceil(
        np.log2(np.abs(acc[::3] * mult[::3]) + 1)).astype(np.int64) - 7
    shift = np.clip(shift, 0, 63)
    got = requantize(acc, mult, shift)
    expected = [exact_requantize(int(a), int(m), int(s))
                for a, m, s in zip(acc, mult, shift, strict=True)]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int8))
    assert got.dtype == np.int8


def test_broadcasts_beat_parameters_over_lanes():
    acc = np.array([[4, 5, 6], [-4, -5, -6]])
    got = requantize(acc, np.array([[1], [1]]), np.array([[1], [2]]))
    np.testing.assert_array_equal(got, [[2, 2, 3], [-1, -1, -2]])


@pytest.mark.parametrize(("args", "error", "message"), [
    ((2**31, 1, 0), ValueError, r"^acc must lie in \[-2147483648, 2147483647\], not 2147483648$"),
    ((0, -1, 0), ValueError, r"^mult must lie in \[0, 65535\], not -1$"),
    ((0, 1, 64), ValueError, r"^shift must lie in \[0, 63\], not 64$"),
    ((1.5, 1, 0), TypeError, r"^acc must be an integer array, not float64$"),
])
def test_rejects_values_outside_the_formats(args, error, message):
    with pytest.raises(error, match=message):
        requantize(*args)


def test_params_represent_scale_within_2_to_minus_16():
    rng = np.random.default_rng(7)
    for scale in np.exp2(rng.uniform(-45, 15.9, size=5000)):
        mult, shift = requant_params(scale)
        assert 2**15 <= mult < 2**16 and 0 <= shift <= 63
        assert abs(mult * 2.0**-shift - scale) <= scale * 2**-16


@pytest.mark.parametrize(("scale", "params"), [
    (1.0, (32768, 15)),
    (2.0**-10, (32768, 25)),
    (0.75, (49152, 16)),
    (65535.0, (65535, 0)),
    (2.0**-60, (8, 63)),  # below the normalised range: smaller multiplier at the largest shift
])
def test_params_exact_cases(scale, params):
    assert requant_params(scale) == params


@pytest.mark.parametrize(("scale", "message"), [
    (0.0, r"^requantization scale must be a finite positive number, not 0\.0$"),
    (-1.0, r"^requantization scale must be a finite positive number, not -1\.0$"),
    (math.nan, r"^requantization scale must be a finite positive number, not nan$"),
    (65536.0, r"^requantization scale 65536\.0 is too large \(must be below 65536\)$"),
])
def test_params_reject_bad_scales(scale, message):
    with pytest.raises(ValueError, match=message):
        requant_params(scale)


def test_params_and_requantize_agree_with_float_scaling():
    # The rounded result may differ from rint(acc * scale) only where the 2**-16 relative error
    # of the represented scale moves acc * scale across a rounding boundary: the difference is
    # then exactly one step, never more.
    rng = np.random.default_rng(3)
    acc = rng.integers(-(2**20), 2**20, size=4000)
    for scale in (1 / 300.0, 1 / 8191.0, 0.37):
        mult, shift = requant_params(scale)
        got = requantize(acc, mult, shift).astype(np.int64)
        ideal = np.clip(np.rint(acc * scale), ACT_MIN, ACT_MAX)
        assert np.abs(got - ideal).max() <= 1


def test_attention_weight_codes_split_into_two_int8_halves():
    """Every 15-bit code is 256 hi + lo with both halves INT8, and the two exact dot products
    combine to the whole one."""
    from flightgen.isa import attention as A

    codes = np.arange(-(2**14 - 1), 2**14)
    hi, lo = A.split(codes)
    np.testing.assert_array_equal(hi * 256 + lo, codes)
    assert hi.min() >= -128 and hi.max() <= 127 and lo.min() >= -128 and lo.max() <= 127
    rng = np.random.default_rng(5)
    w = rng.integers(-(2**14 - 1), 2**14, (3, 40))
    v = rng.integers(-127, 128, (40, 16))
    hi, lo = A.split(w)
    np.testing.assert_array_equal(A.combine(hi @ v, lo @ v), w @ v)
    weights = rng.integers(0, 2**40, (3, 40))
    codes, _ = A.weight_codes(weights)
    assert np.abs(codes).max() == 2**14 - 1
