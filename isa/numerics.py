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
    "requantize",
    "requant_params",
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
    shift = np.minimum(shift, REQUANT_SHIFT_LIMIT)  # larger shifts round to 0 just the same
    product = acc * mult  # exact: |product| < 2**47
    quotient = product >> shift  # floor division by 2**shift
    remainder = product - (quotient << shift)  # in [0, 2**shift)
    twice = remainder << 1  # compared with 2**shift: above half, half, below half
    half = np.left_shift(1, shift)
    round_up = (twice > half) | ((twice == half) & (quotient & 1 == 1))
    result = quotient + round_up
    return np.clip(result, ACT_MIN, ACT_MAX).astype(np.int8)


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
