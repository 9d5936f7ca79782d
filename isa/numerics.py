"""Numeric formats and their exact integer semantics.

This module is the single source of truth for how numbers are represented and rounded. The
compiler uses it to quantize, the hardware generator takes its widths from it, and every
reference and test computes expected values with it. Each function here *is* the specification:
the hardware must produce the same bits.

Requantization (INT32 accumulator to INT8 activation)
-----------------------------------------------------
An accumulator ``acc`` (signed, :data:`ACC_BITS` bits) is scaled by a fixed-point factor
``mult * 2**-shift`` and rounded to an INT8 activation::

    y = saturate_int8(round_half_even(acc * mult / 2**shift))

* ``mult`` is unsigned, :data:`REQUANT_MULT_BITS` bits; ``shift`` is unsigned,
  :data:`REQUANT_SHIFT_BITS` bits (0..63). Every encodable pair is legal.
* The product ``acc * mult`` is exact (at most 48 bits with sign).
* Rounding is **round half to even** (convergent rounding): exact halves go to the even
  neighbour, so requantization has no bias however many times it is applied. This is the rounding
  of :func:`numpy.rint`, which lets float references use the same rule.
* The result saturates to [-128, 127].
* Because ``|acc * mult| < 2**47``, any ``shift >= 48`` rounds to 0; hardware may clamp the shift
  to 48 without changing a result.

:func:`requant_params` turns a real scale into ``(mult, shift)`` with ``mult`` normalised into
[2**15, 2**16), so the factor is represented with a relative error of at most 2**-16.
"""

import math

import numpy as np

__all__ = [
    "ACC_BITS",
    "ACT_BITS",
    "ACT_MIN",
    "ACT_MAX",
    "REQUANT_MULT_BITS",
    "REQUANT_SHIFT_BITS",
    "REQUANT_SHIFT_LIMIT",
    "mul_round_shift",
    "saturate",
    "requantize",
    "requant_params",
    "SCALE_BITS",
    "bit_length",
    "normalize_scale",
    "div_round",
    "reciprocal",
    "rsqrt",
    "scale_mul",
    "quantize_per_token",
    "ACT_GROUP",
    "quantize_per_group",
]

#: Width of a MAC accumulator (signed).
ACC_BITS = 32
#: Width of an activation (signed).
ACT_BITS = 8
ACT_MIN = -(2 ** (ACT_BITS - 1))
ACT_MAX = 2 ** (ACT_BITS - 1) - 1
#: Width of the requantization multiplier (unsigned).
REQUANT_MULT_BITS = 16
#: Width of the requantization shift (unsigned).
REQUANT_SHIFT_BITS = 6
#: Shifts at or above this value all give 0 (``|acc * mult| < 2**(REQUANT_SHIFT_LIMIT - 1)``).
REQUANT_SHIFT_LIMIT = ACC_BITS + REQUANT_MULT_BITS

_ACC_MIN = -(2 ** (ACC_BITS - 1))
_ACC_MAX = 2 ** (ACC_BITS - 1) - 1


def _check_range(name, values, lo, hi):
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, not {values.dtype}")
    if values.size and (values.min() < lo or values.max() > hi):
        bad = values[(values < lo) | (values > hi)].flat[0]
        raise ValueError(f"{name} must lie in [{lo}, {hi}], not {int(bad)}")
    return values.astype(np.int64)


def _as_int_array(values):
    values = np.asarray(values)
    if values.dtype == object:
        return values
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"expected integers, not {values.dtype}")
    return values.astype(np.int64)


def _round_shift_exact(product, shift):
    """Round half to even of ``product / 2**shift`` on Python integers (any size)."""
    if shift <= 0:
        return product << -shift
    quotient = product >> shift
    twice = (product - (quotient << shift)) << 1
    half = 1 << shift
    return quotient + (1 if twice > half or (twice == half and quotient & 1) else 0)


def mul_round_shift(value, mult, shift):
    """Return ``round_half_even(value * mult / 2**shift)``, computed exactly.

    This is the one rounding rule of flightgen: every rescale, requantization and fixed-point
    operation rounds through it. ``shift`` may be negative (an exact left shift). Arguments
    broadcast; the result is int64 when it fits, else a Python-integer (object) array.
    """
    value, mult, shift = _as_int_array(value), _as_int_array(mult), _as_int_array(shift)
    value, mult, shift = np.broadcast_arrays(value, mult, shift)
    exact_bits = 0
    if value.size and value.dtype != object and mult.dtype != object:
        exact_bits = int(np.abs(value).max()).bit_length() + int(np.abs(mult).max()).bit_length()
    if value.dtype == object or mult.dtype == object or shift.dtype == object or \
            exact_bits > 61 or (shift.size and (shift.min() < 0 and
                                                 exact_bits - int(shift.min()) > 61)):
        out = np.empty(value.shape, dtype=object)
        for index in np.ndindex(value.shape):
            out[index] = _round_shift_exact(int(value[index]) * int(mult[index]),
                                            int(shift[index]))
        return _narrow(out)
    product = value * mult  # exact: below 2**61
    left = np.maximum(-shift, 0)
    right = np.minimum(np.maximum(shift, 0), 62)  # |product| < 2**61: shifts >= 62 give 0
    quotient = product >> right
    twice = (product - (quotient << right)) << 1
    half = np.left_shift(1, right)
    rounded = quotient + ((twice > half) | ((twice == half) & (quotient & 1 == 1)))
    return np.where(shift > 0, rounded, product << left)


def _narrow(values):
    """Return an int64 array if every value fits, else the object array unchanged."""
    if values.size == 0:
        return values.astype(np.int64)
    low, high = min(values.flat), max(values.flat)
    if -(2**63) <= low and high < 2**63:
        return values.astype(np.int64)
    return values


def saturate(values, bits):
    """Clip integers (int64 or Python-integer arrays) to the signed ``bits``-bit range."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = np.asarray(values)
    if values.dtype == object:
        return np.array([min(max(int(v), low), high) for v in values.flat],
                        dtype=np.int64).reshape(values.shape)
    return np.clip(values, low, high)


def requantize(acc, mult, shift):
    """Requantize INT32 accumulators to INT8 activations.

    Parameters
    ----------
    acc : array_like of int
        Accumulators, each in the signed :data:`ACC_BITS`-bit range.
    mult : array_like of int
        Multipliers in [0, 2**16), broadcast against ``acc``.
    shift : array_like of int
        Right shifts in [0, 63], broadcast against ``acc``.

    Returns
    -------
    numpy.ndarray of int8
        ``clip(round_half_even(acc * mult / 2**shift), -128, 127)``.

    Raises
    ------
    TypeError
        If an argument is not integer.
    ValueError
        If a value lies outside its format's range.
    """
    acc = _check_range("acc", acc, _ACC_MIN, _ACC_MAX)
    mult = _check_range("mult", mult, 0, 2**REQUANT_MULT_BITS - 1)
    shift = _check_range("shift", shift, 0, 2**REQUANT_SHIFT_BITS - 1)
    return saturate(mul_round_shift(acc, mult, shift), ACT_BITS).astype(np.int8)


def requant_params(scale):
    """Choose the ``(mult, shift)`` pair that represents a real scale factor.

    ``mult`` is normalised into [2**15, 2**16) (the largest shift that fits), so
    ``mult * 2**-shift`` equals ``scale`` within a relative error of 2**-16. Scales too small for
    a normalised multiplier at the largest shift get a smaller ``mult`` (possibly 0).

    Raises
    ------
    ValueError
        If ``scale`` is not a finite positive number, or is too large to represent
        (``scale >= 2**16 - 0.5``).
    """
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError(f"requantization scale must be a finite positive number, not {scale!r}")
    fraction, exponent = math.frexp(scale)  # scale = fraction * 2**exponent, fraction in [0.5, 1)
    shift = REQUANT_MULT_BITS - exponent
    mult = round(fraction * 2**REQUANT_MULT_BITS)  # round half to even, in [2**15, 2**16]
    if mult == 2**REQUANT_MULT_BITS:
        mult, shift = mult >> 1, shift - 1
    max_shift = 2**REQUANT_SHIFT_BITS - 1
    if shift > max_shift:
        mult, shift = round(math.ldexp(scale, max_shift)), max_shift
    if shift < 0:
        raise ValueError(
            f"requantization scale {scale!r} is too large (must be below {2**REQUANT_MULT_BITS})"
        )
    return mult, shift


# Scales -------------------------------------------------------------------------------------
#
# A scale is a pair of integer arrays (mult, exp) standing for mult * 2**exp, with mult
# normalised into [2**15, 2**16) (or 0 for a zero scale). Scales of per-token activations,
# reciprocals and reciprocal square roots all use this form; products are renormalised with
# round half to even.

SCALE_BITS = 16


def bit_length(values):
    """Bit length of each non-negative integer (0 for 0), exactly, for int64 arrays."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and values.min() < 0:
        raise ValueError("bit_length needs non-negative integers")
    length = np.zeros(values.shape, dtype=np.int64)
    rest = values.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = rest >= (1 << step)
        length += np.where(big, step, 0)
        rest = np.where(big, rest >> step, rest)
    return length + (rest > 0)


def normalize_scale(value, exp):
    """Return the scale ``value * 2**exp`` normalised to a 16-bit multiplier.

    ``value`` is a non-negative integer array; rounding is half to even.
    """
    value = np.asarray(value, dtype=np.int64)
    exp = np.broadcast_to(np.asarray(exp, dtype=np.int64), value.shape)
    drop = bit_length(value) - SCALE_BITS
    mult = mul_round_shift(value, 1, drop)
    carry = mult == (1 << SCALE_BITS)  # rounding reached the next power of two
    mult = np.where(carry, mult >> 1, mult)
    exp = exp + drop + carry
    zero = value == 0
    return np.where(zero, 0, mult), np.where(zero, 0, exp)


def div_round(numerator, denominator):
    """Round half to even of ``numerator / denominator`` (integers, denominator > 0)."""
    numerator = np.asarray(numerator, dtype=np.int64)
    denominator = np.asarray(denominator, dtype=np.int64)
    quotient, remainder = np.divmod(numerator, denominator)
    twice = 2 * remainder
    up = (twice > denominator) | ((twice == denominator) & (quotient & 1 == 1))
    return quotient + up


def reciprocal(value):
    """Return the scale nearest ``1 / value`` for positive integers ``value < 2**47``.

    ``mult = round_half_even(2**s / value)`` with ``s = 15 + bit_length(value)``, so
    ``mult * 2**-s`` is within half a unit of the 16th significant bit (relative error at most
    2**-16). Hardware computes it with a sequential divider, once per vector.
    """
    value = np.asarray(value, dtype=np.int64)
    if value.size and (value.min() < 1 or value.max() >= 2**47):
        raise ValueError("reciprocal needs integers in [1, 2**47)")
    shift = SCALE_BITS - 1 + bit_length(value)
    mult = div_round(np.left_shift(1, shift), value)
    carry = mult == (1 << SCALE_BITS)
    return np.where(carry, mult >> 1, mult), -(shift - carry)


def rsqrt(value):
    """Return the scale nearest below ``1 / sqrt(value)`` for positive integers.

    ``mult = isqrt(2**(2s) // value)`` with ``s = 15 + ceil(bit_length(value) / 2)``: both
    steps round down, so ``mult * 2**-s`` is below the true value by less than 2**-15
    relative. Hardware uses a divider and a digit-by-digit square root, once per vector.
    """
    value = np.asarray(value, dtype=np.int64)
    if value.size and value.min() < 1:
        raise ValueError("rsqrt needs positive integers")
    mult = np.empty(value.shape, dtype=np.int64)
    exp = np.empty(value.shape, dtype=np.int64)
    for index in np.ndindex(value.shape):
        v = int(value[index])
        shift = SCALE_BITS - 1 + (v.bit_length() + 1) // 2
        m = math.isqrt((1 << (2 * shift)) // v)
        if m == 1 << SCALE_BITS:
            m, shift = m >> 1, shift - 1
        mult[index], exp[index] = m, -shift
    return mult, exp


def scale_mul(a, b):
    """Product of two scales ``(mult, exp)``, renormalised (round half to even)."""
    (am, ae), (bm, be) = a, b
    product = np.asarray(am, dtype=np.int64) * np.asarray(bm, dtype=np.int64)  # < 2**32
    return normalize_scale(product, np.asarray(ae) + np.asarray(be))


# Per-token INT8 activations -------------------------------------------------------------------

#: Magnitude bits kept before the per-token quantizer multiplies (see quantize_per_token).
QUANT_INPUT_BITS = 24


def quantize_per_token(values, axis=-1, bits=ACT_BITS):
    """Quantize integer vectors to INT8 codes with one scale per vector (absmax / 127).

    Along ``axis``: ``A = max |v|``; vectors wider than 24 bits are first rounded down to 24
    bits (``v' = round(v / 2**k)``); then ``codes = round(v' * 127 * r)`` with ``r`` the
    :func:`reciprocal` of ``A'``, clipped to [-127, 127]. The scale (the value of code 1, in the
    units of ``values``) is ``A' * 2**k / 127`` normalised, so ``codes * scale ~ values``.

    ``bits`` (8 by default, at most 16) sets the code width: codes lie in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` and the scale is ``A / (2**(bits-1) - 1)``.

    Returns
    -------
    codes : int8 (int16 above 8 bits) array, shape of ``values``
    scale : (mult, exp) arrays with ``axis`` removed; all-zero vectors get codes 0, scale 0.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"code width must be 2 to 16 bits, not {bits!r}")
    values = np.moveaxis(np.asarray(values, dtype=np.int64), axis, -1)
    peak = np.abs(values).max(axis=-1)
    drop = np.maximum(bit_length(peak) - QUANT_INPUT_BITS, 0)
    narrowed = mul_round_shift(values, 1, drop[..., None])
    peak = np.abs(narrowed).max(axis=-1)
    safe = np.maximum(peak, 1)
    rmult, rexp = reciprocal(safe)
    top = (1 << (bits - 1)) - 1
    codes = mul_round_shift(narrowed, (top * rmult)[..., None], (-rexp)[..., None])
    codes = np.clip(codes, -top, top).astype(np.int8 if bits <= 8 else np.int16)
    # scale = peak * 2**drop / top, as a normalised 16-bit multiplier
    shift = SCALE_BITS + bits - 1 - bit_length(safe)  # makes the quotient about 16 bits
    quotient = div_round(np.left_shift(safe, np.maximum(shift, 0)), top)
    scale = normalize_scale(quotient, drop - np.maximum(shift, 0))
    zero = peak == 0
    scale = (np.where(zero, 0, scale[0]), np.where(zero, 0, scale[1]))
    return np.moveaxis(codes, -1, axis), scale


#: Activation block: linear-layer inputs carry one scale per this many elements along K.
ACT_GROUP = 32


def quantize_per_group(values, group=ACT_GROUP):
    """Quantize vectors (last axis) to INT8 with one scale per block of ``group`` elements,
    each block exactly as :func:`quantize_per_token`.

    Returns ``codes`` (int8, shape of ``values``) and ``(mult, exp)`` of shape
    ``values.shape[:-1] + (K // group,)``.
    """
    values = np.asarray(values, dtype=np.int64)
    k = values.shape[-1]
    if k % group:
        raise ValueError(f"block size {group} does not divide the {k} elements")
    blocks = values.reshape(*values.shape[:-1], k // group, group)
    codes, scale = quantize_per_token(blocks)
    return codes.reshape(values.shape), scale
