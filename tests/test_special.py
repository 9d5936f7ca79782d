"""Special functions (flightgen.isa.special): pinned bit-exactly, checked on hand-derivable
values and structural properties, and bounded against float64 over their input ranges."""

import hashlib
import math

import numpy as np
import pytest

from flightgen.isa import numerics as N
from flightgen.isa import special as S

ONE = S.ONE


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.int64).tobytes()).hexdigest()[:16]


# Golden pins. These digests are of the tables and of each function on a fixed input grid.
# They change only when the definition changes, and then the RTL must change with it:
# regenerate them deliberately with the expressions below and say so in the commit.
def grid():
    return np.arange(-(24 << 16), 24 << 16, 997, dtype=np.int64)  # 3,156 FX values in +-24


def vectors(rows, width, magnitude=8):
    """Seeded FX vectors: ``rows`` x ``width`` values within +-magnitude."""
    rng = np.random.default_rng(20261121)
    return rng.integers(-(magnitude << 16), magnitude << 16, size=(rows, width))


GOLDEN = {
    "POW2_TABLE": (lambda: S.POW2_TABLE, "32fb875ae40407f1"),
    "SIGMOID_TABLE": (lambda: S.SIGMOID_TABLE, "d7aa14f743f5a6d7"),
    "NORMAL_CDF_TABLE": (lambda: S.NORMAL_CDF_TABLE, "a5a5f8f1abbe0eca"),
    "SINE_TABLE": (lambda: S.SINE_TABLE, "47223c45faac8006"),
    "exp_neg": (lambda: S.exp_neg(-np.abs(grid())), "4836e494c2425dc7"),
    "sigmoid": (lambda: S.sigmoid(grid()), "6e937454fa2ae635"),
    "silu": (lambda: S.silu(grid()), "3f1c1b8db03af8e2"),
    "gelu": (lambda: S.gelu(grid()), "07ca2c4fc0654cb9"),
    "softmax": (lambda: S.softmax(vectors(300, 30), np.tril(np.ones((30, 30), bool))[
        np.arange(300) % 30]), "ed1cc83cf590c468"),
    "rope": (lambda: S.rope(vectors(300, 128).reshape(300, 2, 64), np.arange(300) * 7,
                            S.rope_frequencies(64, 1e4)), "bc40b83d6145a873"),
    "rms_norm": (lambda: S.rms_norm(vectors(200, 64), np.linspace(-2, 3, 64), 1e-5),
                 "94c5c15408f2ae33"),
    "layer_norm": (lambda: S.layer_norm(vectors(200, 64), np.linspace(-2, 3, 64),
                                        np.linspace(1, -1, 64), 1e-5), "724d28104dd8f733"),
    "mul": (lambda: S.mul(grid(), grid()[::-1] // 7), "99eefc27301c922d"),
    "reciprocal": (lambda: np.concatenate(N.reciprocal(np.abs(grid()) + 1)), "729aff4e037a29e6"),
    "rsqrt": (lambda: np.concatenate(N.rsqrt(np.abs(grid()[::50]) + 1)), "b1a10182aa16f510"),
    "quantize_per_group": (lambda: np.concatenate([
        N.quantize_per_group(vectors(200, 64, 1 << 10))[0].ravel(),
        *(part.ravel() for part in N.quantize_per_group(vectors(200, 64, 1 << 10))[1])]),
        "0f65799f1f0e8858"),
    "rope_cos_sin": (lambda: np.concatenate(S.rope_cos_sin(np.arange(0, 8192, 3),
                                                           S.rope_frequencies(64, 1e5))),
                     "2c2fe1dbdc21a289"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    compute, expected = GOLDEN[name]
    assert digest(compute()) == expected, f"{name} changed: {digest(compute())}"


def test_tables_are_float64_values_rounded():
    # Each entry is the rounded real value: within half an LSB (the 40-digit computation makes
    # it correctly rounded; float64 here is only good to ~1e-16 relative).
    i = np.arange(257)
    assert np.abs(S.POW2_TABLE - 2.0 ** (-i / 256) * 2**S.EXP_FRAC).max() <= 0.5 + 1e-6
    x = np.arange(1025) / 32 - 16
    assert np.abs(S.SIGMOID_TABLE - ONE / (1 + np.exp(-x))).max() <= 0.5 + 1e-9
    x = np.arange(1025) / 64 - 8
    phi = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    assert np.abs(S.NORMAL_CDF_TABLE - ONE * phi).max() <= 0.5 + 1e-9
    j = np.arange(1025)
    assert np.abs(S.SINE_TABLE - np.sin(np.pi / 2 * j / 1024) * 2**15).max() <= 0.5 + 1e-9


# Values that follow from the definitions by hand.
def test_hand_derived_values():
    assert S.exp_neg(np.array([0]))[0] == ONE
    ln2 = S.to_fx([-math.log(2)])  # y rounds to exactly 1.0: one halving
    assert S.exp_neg(ln2)[0] == ONE // 2
    assert S.exp_neg(np.array([-(40 << 16)]))[0] == 0
    assert S.sigmoid(np.array([0]))[0] == ONE // 2  # table entry 512 = 0.5 exactly
    assert S.sigmoid(np.array([16 << 16, -(16 << 16) - 1]))[[0, 1]].tolist() == [ONE, 0]
    assert S.silu(np.array([0]))[0] == 0 and S.gelu(np.array([0]))[0] == 0
    assert S.normal_cdf(np.array([0]))[0] == ONE // 2
    assert S.SINE_TABLE[[0, 1024]].tolist() == [0, 1 << 15]


def test_rope_at_position_zero_is_the_identity():
    x = np.random.default_rng(0).integers(-2**30, 2**30, size=(1, 3, 16))
    np.testing.assert_array_equal(S.rope(x, [0], S.rope_frequencies(16, 1e4)), x)


def test_rope_quarter_turns_are_exact():
    # A frequency of 2**30 (a quarter turn per position) hits the table ends exactly.
    cos, sin = S.rope_cos_sin(np.arange(5), np.array([1 << 30]))
    assert cos[:, 0].tolist() == [32768, 0, -32768, 0, 32768]
    assert sin[:, 0].tolist() == [0, 32768, 0, -32768, 0]


def test_softmax_properties():
    rng = np.random.default_rng(1)
    x = S.to_fx(rng.standard_normal((64, 37)) * 5)
    p = S.softmax(x)
    # each p_i is within 1 LSB of e_i/S (reciprocal error 2**-16 relative plus rounding), so a
    # row sums to 65536 within the row length
    assert (np.abs(p.sum(-1) - ONE) <= 37).all()
    np.testing.assert_array_equal(S.softmax(np.zeros((2, 8), np.int64)), np.full((2, 8), ONE // 8))
    mask = np.tril(np.ones((5, 5), bool))
    masked = S.softmax(x[:5, :5], mask)
    assert (masked[~mask] == 0).all() and masked[0, 0] == ONE
    assert (S.softmax(x[:2, :4], np.zeros((2, 4), bool)) == 0).all()
    # shifting every score by the same amount changes nothing (max subtraction)
    np.testing.assert_array_equal(S.softmax(x + 12345), p)


def test_norms_of_constant_and_zero_vectors():
    x = np.full((1, 64), 3 << 16)
    y = S.rms_norm(x, np.ones(64), 1e-5)
    assert np.abs(y - ONE).max() <= 2  # 3 / sqrt(9 + 1e-5) = 0.99999944
    assert (S.rms_norm(np.zeros((1, 64), np.int64), np.ones(64), 1e-5) == 0).all()
    z = S.layer_norm(x, np.ones(64), np.full(64, 0.5), 1e-5)
    assert (z == ONE // 2).all()  # centred values are exactly 0, only the bias remains


# Error bounds against float64. Each bound is the function's worst case over its range with a
# stated reason; scripts/numerics_error.py prints the measured values for docs/numerics.md.
def fx_grid(low, high, count):
    values = S.to_fx(np.linspace(low, high, count))
    return values, S.from_fx(values)


def test_exp_error():
    xf, x = fx_grid(-30, 0, 100001)
    # table entries and interpolation are each within half an LSB of Q0.24; the final rounding
    # to Q0.16 adds half an LSB: below 1 LSB of Q0.16
    assert np.abs(S.exp_neg(xf) - np.exp(x) * ONE).max() < 1.0


def test_sigmoid_silu_gelu_error():
    xf, x = fx_grid(-24, 24, 200001)
    sig = 1 / (1 + np.exp(-x))
    phi = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    # interpolation error h**2/8 * max|f''| is 0.77 LSB (sigmoid, h = 1/32) and 0.48 LSB
    # (Phi, h = 1/64), plus half an LSB of table rounding and half of output rounding
    assert np.abs(S.sigmoid(xf) - sig * ONE).max() < 1.8
    assert np.abs(S.normal_cdf(xf) - phi * ONE).max() < 1.5
    # x * f(x): the Q0.16 error of f scaled by |x| <= 24 would be ~40 LSB, but f's error
    # vanishes where |x| is large (f saturates exactly); measured 6.8 and 3.4 LSB
    assert np.abs(S.silu(xf) - x * sig * ONE).max() < 8
    assert np.abs(S.gelu(xf) - x * phi * ONE).max() < 4


def test_rope_error():
    freqs = S.rope_frequencies(64, 100000.0)
    cos, sin = S.rope_cos_sin(np.arange(8192), freqs)
    angles = np.outer(np.arange(8192), 100000.0 ** (-np.arange(32) * 2 / 64))
    # table rounding (0.5 LSB of Q1.15), interpolation (h**2/8 = 3e-7) and the phase
    # increment's rounding (< pos * 2**-33 turns = 6e-6 rad at 8191) stay below 1.2 LSB
    assert np.abs(cos - np.cos(angles) * 2**15).max() < 1.2
    assert np.abs(sin - np.sin(angles) * 2**15).max() < 1.2


def test_softmax_error():
    rng = np.random.default_rng(2)
    x = S.from_fx(S.to_fx(rng.standard_normal((200, 300)) * 6))
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    # Q0.24 exponentials keep the sum to ~2**-16 relative; the reciprocal adds 2**-16
    assert np.abs(S.softmax(S.to_fx(x)) - probs * ONE).max() < 1.5


def test_norm_error():
    rng = np.random.default_rng(3)
    v = S.from_fx(S.to_fx(rng.standard_normal((50, 576)) * rng.uniform(0.01, 30, (50, 1))))
    w = rng.uniform(-3, 3, 576)
    ref = v / np.sqrt((v**2).mean(-1, keepdims=True) + 1e-5) * w
    peak = np.abs(ref).max(-1, keepdims=True) * ONE
    # rsqrt is within 2**-15 relative, the 16-bit weights within 2**-15: about 6e-5 of the
    # row's peak (plus half an LSB of output rounding)
    assert (np.abs(S.rms_norm(S.to_fx(v), w, 1e-5) - ref * ONE) / peak).max() < 8e-5


def test_quantize_per_token_error_and_edges():
    rng = np.random.default_rng(4)
    t = rng.integers(-2**40, 2**40, size=(500, 64)) >> rng.integers(0, 38, size=(500, 1))
    codes, (mult, exp) = N.quantize_per_token(t)
    assert np.abs(codes).max(-1).min() >= 126  # the peak maps to (almost exactly) 127
    step = np.abs(t).max(-1, keepdims=True) / 127
    # half a code of rounding, plus the reciprocal's 2**-16 and the 24-bit narrowing
    assert (np.abs(codes * (mult * 2.0**exp)[:, None] - t) / step).max() < 0.51
    codes, scale = N.quantize_per_token(np.zeros((2, 8), np.int64))
    assert (codes == 0).all() and (scale[0] == 0).all()
    exact = np.array([[127, -127, 0, 1]]) * 1000
    np.testing.assert_array_equal(N.quantize_per_token(exact)[0], [[127, -127, 0, 1]])


def test_reciprocal_and_rsqrt_are_exact_integer_definitions():
    values = np.array([1, 2, 3, 5, 7, 255, 65535, 2**20 + 1, 2**46 + 7])
    mult, exp = N.reciprocal(values)
    for v, m, e in zip(values.tolist(), mult.tolist(), exp.tolist(), strict=True):
        assert 2**15 <= m < 2**16
        shift = -e
        assert abs(m * v - 2**shift) <= v / 2  # m is the nearest integer to 2**shift / v
    mult, exp = N.rsqrt(values)
    for v, m, e in zip(values.tolist(), mult.tolist(), exp.tolist(), strict=True):
        assert m == math.isqrt((1 << (-2 * e)) // v)
    with pytest.raises(ValueError, match="reciprocal needs integers in"):
        N.reciprocal(np.array([0]))
