"""Special functions in fixed point: the exact definitions the SFU implements.

Values are **FX** numbers: signed integers with :data:`FX_FRAC` (16) fractional bits, held in
int32 by the hardware (range about +-32768) and int64 in these definitions. Probabilities and
sigmoid-like results are **unsigned Q0.16** (65536 is 1.0). Every rounding goes through
:func:`flightgen.isa.numerics.mul_round_shift` (round half to even).

Tables (``2**-f``, sigmoid, normal CDF, quarter sine) are computed once with Python's
``decimal`` at 40 digits and rounded half to even, so they do not depend on the platform's
libm; ``tests/test_special.py`` pins them by checksum. Every function is defined for its whole
input range (saturating where noted).
"""

import decimal

import numpy as np

from .numerics import div_round, mul_round_shift, reciprocal, rsqrt, saturate

__all__ = [
    "FX_FRAC", "ONE", "to_fx", "from_fx", "saturate_fx",
    "EXP_FRAC", "POW2_TABLE", "SIGMOID_TABLE", "NORMAL_CDF_TABLE", "SINE_TABLE",
    "exp_neg", "softmax", "sigmoid", "silu", "normal_cdf", "gelu",
    "rope_frequencies", "rope_cos_sin", "rope", "add", "mul",
    "rms_norm", "layer_norm", "rms_norm_fixed", "layer_norm_fixed", "norm_weight", "eps_fixed",
    "LOG2E", "LOG2E_FRAC", "SIGMOID_RANGE", "SIGMOID_STEP_BITS", "CDF_RANGE", "CDF_STEP_BITS",
    "PHASE_BITS", "TRIG_FRAC",
]

#: Fractional bits of an FX value.
FX_FRAC = 16
#: 1.0 in FX and in Q0.16.
ONE = 1 << FX_FRAC
_FX_MIN, _FX_MAX = -(2**31), 2**31 - 1

_CONTEXT = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)


def _rounded(value, scale_bits):
    """round_half_even(value * 2**scale_bits) of a Decimal, as an int."""
    scaled = _CONTEXT.multiply(value, decimal.Decimal(2) ** scale_bits)
    return int(scaled.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


def _exp(x):
    return _CONTEXT.exp(decimal.Decimal(x))


def to_fx(values):
    """Round real values to FX (half to even), saturating to int32. For inputs and tests."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * ONE)
    return np.clip(scaled, _FX_MIN, _FX_MAX).astype(np.int64)


def from_fx(values, frac=FX_FRAC):
    """Real value of fixed-point integers."""
    return np.asarray(values, dtype=np.float64) / (1 << frac)


def saturate_fx(values):
    """Clip to the int32 range of FX (int64 or Python-integer arrays, of any size)."""
    values = np.asarray(values)
    if values.dtype == object:
        return saturate(values, 32)
    return np.clip(values.astype(np.int64), _FX_MIN, _FX_MAX)


# exp -------------------------------------------------------------------------------------------

#: Fractional bits of POW2_TABLE and of exp before its final rounding.
EXP_FRAC = 24
#: ``2**(-i / 256)`` in Q0.24 for i = 0..256 (257 entries).
POW2_TABLE = np.array([_rounded(_CONTEXT.power(decimal.Decimal(2), decimal.Decimal(-i) / 256),
                                EXP_FRAC) for i in range(257)], dtype=np.int64)
#: log2(e) with 24 fractional bits.
_LOG2E_FRAC = 24
_LOG2E = _rounded(decimal.Decimal(1) / _CONTEXT.ln(decimal.Decimal(2)), _LOG2E_FRAC)
#: log2(e) as used by :func:`exp_neg`: an integer with :data:`LOG2E_FRAC` fractional bits.
LOG2E, LOG2E_FRAC = _LOG2E, _LOG2E_FRAC


def _interpolate(table, index, fraction, fraction_bits):
    low = table[index]
    return low + mul_round_shift(table[index + 1] - low, fraction, fraction_bits)


def exp_neg(x, frac=FX_FRAC):
    """``exp(x)`` for FX ``x <= 0``, with ``frac`` fractional bits (default Q0.16, so
    ``exp_neg(0) = 65536``); ``frac`` may be at most 24.

    ``y = -x * log2(e)`` (FX, rounded); ``2**-frac(y)`` in Q0.24 from :data:`POW2_TABLE` with
    linear interpolation on the low 8 fraction bits; then one rounding right shift by
    ``floor(y) + 24 - frac``.
    """
    x = np.asarray(x, dtype=np.int64)
    if x.size and x.max() > 0:
        raise ValueError("exp_neg needs x <= 0")
    if not 0 <= frac <= EXP_FRAC:
        raise ValueError(f"exp_neg gives at most {EXP_FRAC} fractional bits, not {frac}")
    y = mul_round_shift(-x, _LOG2E, _LOG2E_FRAC)  # FX, below 2**32
    whole, fraction = y >> FX_FRAC, y & (ONE - 1)
    power = _interpolate(POW2_TABLE, fraction >> 8, fraction & 0xFF, 8)
    return mul_round_shift(power, 1, np.minimum(whole + EXP_FRAC - frac, 62))


def softmax(x, mask=None, axis=-1):
    """Softmax of FX scores along ``axis``, as Q0.16 probabilities.

    ``e_i = exp_neg(x_i - max, 24)`` (Q0.24) over the kept entries (``mask`` True; masked
    entries give 0), ``S = sum e_i``, ``p_i = round(e_i * 2**16 * r)`` with ``r`` the
    :func:`reciprocal` of ``S`` (rows up to 2**23 entries). A row with every entry masked gives
    all zeros. Two passes over the row: max and sum, then normalise.
    """
    x = np.moveaxis(np.asarray(x, dtype=np.int64), axis, -1)
    keep = np.ones(x.shape, dtype=bool) if mask is None else \
        np.moveaxis(np.broadcast_to(np.asarray(mask, dtype=bool), x.shape), axis, -1)
    any_kept = keep.any(axis=-1, keepdims=True)
    peak = np.where(keep, x, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
    peak = np.where(any_kept, peak, 0)
    e = np.where(keep, exp_neg(np.where(keep, x - peak, 0), EXP_FRAC), 0)
    total = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    rmult, rexp = reciprocal(total)
    p = mul_round_shift(e, rmult, -rexp - FX_FRAC)
    return np.moveaxis(np.where(any_kept, p, 0), -1, axis)


# sigmoid, SiLU, GELU --------------------------------------------------------------------------

_SIGMOID_RANGE, _SIGMOID_STEP_BITS = 16, 5  # table over [-16, 16) in steps of 1/32
_CDF_RANGE, _CDF_STEP_BITS = 8, 6  # table over [-8, 8) in steps of 1/64
#: Table ranges (``[-range, range)``) and step widths (``2**-step_bits``) of sigmoid and Phi.
SIGMOID_RANGE, SIGMOID_STEP_BITS = _SIGMOID_RANGE, _SIGMOID_STEP_BITS
CDF_RANGE, CDF_STEP_BITS = _CDF_RANGE, _CDF_STEP_BITS


def _sigmoid_value(x):
    return _CONTEXT.divide(1, 1 + _exp(-x))


_PI = decimal.Decimal("3.141592653589793238462643383279502884197")


def _normal_cdf_value(x):
    # Phi(x) = (1 + erf(x / sqrt 2)) / 2, erf by its Taylor series at 40 digits (|x| <= 8).
    with decimal.localcontext(_CONTEXT) as context:
        context.prec = 60  # the series alternates with terms up to ~1e12 at |x| = 8
        z = decimal.Decimal(x) / context.sqrt(decimal.Decimal(2))
        term, total, n = z, z, 0
        while abs(term) > decimal.Decimal(10) ** -50:
            n += 1
            term = term * (-z * z) / n
            total += term / (2 * n + 1)
        return (1 + total * 2 / context.sqrt(_PI)) / 2


def _table(function, half_range, step_bits):
    count = 2 * half_range * (1 << step_bits)
    with decimal.localcontext(_CONTEXT):
        return np.array([_rounded(function(decimal.Decimal(i) / (1 << step_bits) - half_range),
                                  16) for i in range(count + 1)], dtype=np.int64)


#: ``sigmoid(-16 + i/32)`` in Q0.16, i = 0..1024.
SIGMOID_TABLE = _table(_sigmoid_value, _SIGMOID_RANGE, _SIGMOID_STEP_BITS)
#: Standard normal CDF ``Phi(-8 + i/64)`` in Q0.16, i = 0..1024.
NORMAL_CDF_TABLE = _table(_normal_cdf_value, _CDF_RANGE, _CDF_STEP_BITS)


def _tabulated(x, table, half_range, step_bits):
    """Linear interpolation in a table over [-half_range, half_range); saturates outside."""
    x = np.asarray(x, dtype=np.int64)
    offset = np.clip(x + (half_range << FX_FRAC), 0, (2 * half_range << FX_FRAC) - 1)
    fraction_bits = FX_FRAC - step_bits
    value = _interpolate(table, offset >> fraction_bits, offset & ((1 << fraction_bits) - 1),
                         fraction_bits)
    return np.where(x >= half_range << FX_FRAC, table[-1], value)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` of FX ``x`` as Q0.16 (table + linear interpolation; 0 below
    -16 and 65536 from 16 up)."""
    return _tabulated(x, SIGMOID_TABLE, _SIGMOID_RANGE, _SIGMOID_STEP_BITS)


def silu(x):
    """``x * sigmoid(x)`` in FX."""
    x = np.asarray(x, dtype=np.int64)
    return saturate_fx(mul_round_shift(x, sigmoid(x), FX_FRAC))


def normal_cdf(x):
    """Standard normal CDF of FX ``x`` as Q0.16 (table + interpolation; saturates at +-8)."""
    return _tabulated(x, NORMAL_CDF_TABLE, _CDF_RANGE, _CDF_STEP_BITS)


def gelu(x):
    """Exact-form GELU ``x * Phi(x)`` in FX."""
    x = np.asarray(x, dtype=np.int64)
    return saturate_fx(mul_round_shift(x, normal_cdf(x), FX_FRAC))


# RoPE -----------------------------------------------------------------------------------------

_PHASE_BITS = 32
_TRIG_FRAC = 15
#: RoPE phase accumulator width (a full turn is 2**32) and cos/sin fractional bits (Q1.15).
PHASE_BITS, TRIG_FRAC = _PHASE_BITS, _TRIG_FRAC


def _sine_table():
    # sin by its Taylor series at 40 digits on [0, pi/2].
    values = []
    with decimal.localcontext(_CONTEXT):
        for j in range(1025):
            angle = _PI / 2 * j / 1024
            term, total, n = angle, angle, 1
            while abs(term) > decimal.Decimal(10) ** -45:
                term = -term * angle * angle / ((2 * n) * (2 * n + 1))
                total += term
                n += 1
            values.append(_rounded(total, _TRIG_FRAC))
    return np.array(values, dtype=np.int64)


#: ``sin(pi/2 * j/1024)`` in Q1.15 (32768 is 1.0), j = 0..1024.
SINE_TABLE = _sine_table()


def rope_frequencies(head_dim, theta):
    """Phase increment per position of each rotated pair, in turns with 32 fractional bits:
    ``round(2**32 * theta**(-2i/head_dim) / (2 pi))`` for i < head_dim / 2."""
    with decimal.localcontext(_CONTEXT):
        base = decimal.Decimal(repr(float(theta)))
        return np.array([_rounded(_CONTEXT.power(base, decimal.Decimal(-2 * i) / head_dim)
                                  / (2 * _PI), _PHASE_BITS) for i in range(head_dim // 2)],
                        dtype=np.int64)


def _quarter(position):
    """sin over a quarter turn; ``position`` in [0, 2**30] (2**30 is a quarter turn)."""
    index, fraction = position >> 20, position & ((1 << 20) - 1)
    return _interpolate(SINE_TABLE, np.minimum(index, 1023),
                        np.where(index >= 1024, 1 << 20, fraction), 20)


def rope_cos_sin(positions, frequencies):
    """``(cos, sin)`` in Q1.15 of ``phase = position * frequency mod 2**32`` (a phase
    accumulator), shape ``(len(positions), len(frequencies))``."""
    phase = (np.asarray(positions, dtype=np.int64)[:, None] *
             np.asarray(frequencies, dtype=np.int64)[None, :]) & ((1 << _PHASE_BITS) - 1)
    quadrant, within = phase >> 30, phase & ((1 << 30) - 1)
    rising, falling = _quarter(within), _quarter((1 << 30) - within)
    sin = np.choose(quadrant, [rising, falling, -rising, -falling])
    cos = np.choose(quadrant, [falling, -rising, -falling, rising])
    return cos, sin


def rope(x, positions, frequencies):
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` of FX vectors by ``rope_cos_sin``.

    ``x`` has shape ``(tokens, ..., head_dim)``; ``positions`` has one entry per token. Each
    output is ``round((a*c - b*s) / 2**15)`` or ``round((a*s + b*c) / 2**15)``, saturated.
    """
    x = np.asarray(x, dtype=np.int64)
    cos, sin = rope_cos_sin(positions, frequencies)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (cos.shape[1],)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = saturate_fx(mul_round_shift(a * cos - b * sin, 1, _TRIG_FRAC))
    out[..., 1::2] = saturate_fx(mul_round_shift(a * sin + b * cos, 1, _TRIG_FRAC))
    return out


# Element-wise ---------------------------------------------------------------------------------

def add(a, b):
    """Saturating FX addition."""
    return saturate_fx(np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64))


def mul(a, b):
    """FX multiplication: ``round(a * b / 2**16)``, saturated."""
    return saturate_fx(mul_round_shift(np.asarray(a, dtype=np.int64), np.asarray(b), FX_FRAC))


# Norms ----------------------------------------------------------------------------------------

#: Magnitude bits of a norm weight (see norm_weight).
NORM_WEIGHT_BITS = 16


def norm_weight(weight):
    """Represent float norm weights as ``(integers, frac)``: a per-tensor power-of-two scale
    that puts the largest magnitude just below 2**15 (round half to even)."""
    weight = np.asarray(weight, dtype=np.float64)
    peak = float(np.abs(weight).max())
    frac = 14 - int(np.floor(np.log2(peak))) if peak > 0 else 0
    values = np.rint(weight * 2.0**frac).astype(np.int64)
    if np.abs(values).max() >= 1 << (NORM_WEIGHT_BITS - 1):  # rounding reached 2**15
        frac -= 1
        values = np.rint(weight * 2.0**frac).astype(np.int64)
    return values, frac


def eps_fixed(eps):
    """A norm's epsilon in the units of a mean square of FX values (2**-32), rounded half to
    even, as :func:`rms_norm` and :func:`layer_norm` add it."""
    return _rounded(decimal.Decimal(repr(float(eps))), 2 * FX_FRAC)


def _inverse_rms(centred, epsilon):
    """Scale ``(mult, exp)`` of ``1 / sqrt(mean(c**2) + eps)`` for FX vectors ``c`` (last
    axis), ``epsilon`` from :func:`eps_fixed`: the real value is ``mult * 2**exp``."""
    n = centred.shape[-1]
    rows = centred.reshape(-1, n)
    narrowed, drops = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
    for index, row in enumerate(rows):
        squares = sum(int(v) * int(v) for v in row)  # exact: Python integers
        total = squares // n + epsilon  # mean square in FX**2 units (2**-32), plus eps
        drop = max(0, total.bit_length() - 61) + max(0, total.bit_length() - 61) % 2
        narrowed[index], drops[index] = max(total >> drop, 1), drop  # drop is even
    mult, exp = rsqrt(narrowed)
    exp = exp - drops // 2 + FX_FRAC  # 1/sqrt(v * 2**-32) = 2**16 / sqrt(v)
    return mult.reshape(centred.shape[:-1]), exp.reshape(centred.shape[:-1])


def rms_norm(x, weight, eps):
    """RMSNorm of FX vectors (last axis) times ``weight``, in FX.

    ``y_i = round(x_i * w_i * r)`` with ``w`` from :func:`norm_weight` and ``r`` the
    :func:`~flightgen.isa.numerics.rsqrt` of ``floor(sum(x**2) / n) + round(eps * 2**32)``
    (mean square in FX**2 units).
    """
    return rms_norm_fixed(x, *norm_weight(weight), eps_fixed(eps))


def rms_norm_fixed(x, w, w_frac, epsilon):
    """:func:`rms_norm` on the integers the SFU takes: weights ``w * 2**-w_frac`` and
    ``epsilon`` from :func:`eps_fixed`."""
    x = np.asarray(x, dtype=np.int64)
    rmult, rexp = _inverse_rms(x, epsilon)
    # x_i * w_i * r in FX: (X * 2**-16)(W * 2**-w_frac)(rmult * 2**rexp) * 2**16
    return saturate_fx(mul_round_shift(x * np.asarray(w, dtype=np.int64), rmult[..., None],
                                       (w_frac - rexp)[..., None]))


def layer_norm(x, weight, bias, eps):
    """LayerNorm of FX vectors (last axis): ``round((x_i - mean) * w_i * r) + b_i`` in FX.

    ``mean = round(sum(x) / n)``; ``r`` as in :func:`rms_norm` on the centred values; ``b`` is
    the bias rounded to FX.
    """
    return layer_norm_fixed(x, *norm_weight(weight), to_fx(bias), eps_fixed(eps))


def layer_norm_fixed(x, w, w_frac, bias, epsilon):
    """:func:`layer_norm` on the integers the SFU takes: weights ``w * 2**-w_frac``, the bias
    in FX and ``epsilon`` from :func:`eps_fixed`."""
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[-1]
    mean = div_round(x.sum(axis=-1), n)
    centred = x - mean[..., None]
    rmult, rexp = _inverse_rms(centred, epsilon)
    scaled = mul_round_shift(centred * np.asarray(w, dtype=np.int64), rmult[..., None],
                             (w_frac - rexp)[..., None])
    return saturate_fx(scaled + np.asarray(bias, dtype=np.int64))

