"""Attention's numerics: the integer steps between the matrix engine's raw dot products, the
softmax and the INT8 KV cache.

One query head attends over ``L`` cached tokens whose keys and values are INT8 codes with one
scale per (token, head) (:func:`~flightgen.isa.numerics.quantize_per_token`):

1. ``acc[t] = sum_d q_code[d] * k_code[t, d]`` (exact, the matrix engine's ``raw`` mode).
2. :func:`scores`: ``acc * (q_scale * k_scale[t] * attn_scale)`` to FX, the scale product
   rounded after each multiplication (:func:`~flightgen.isa.numerics.scale_mul`).
3. softmax in Q0.16 (:func:`flightgen.isa.special.softmax`).
4. :func:`fold`: each token's value scale folded into its probability, ``w[t] = p[t] *
   v_scale[t]`` on a 2**-32 grid, then quantized per head to :data:`WEIGHT_BITS`-bit codes.
5. ``out[d] = sum_t w_code[t] * v_code[t, d]``: the codes split into two INT8 halves
   (:func:`split`), two exact raw passes, :func:`combine`.
6. :func:`output`: ``acc * w_scale`` to FX.
"""

import numpy as np

from .numerics import mul_round_shift, quantize_per_token, saturate, scale_mul
from .special import FX_FRAC, saturate_fx

__all__ = ["WEIGHT_BITS", "FOLD_BITS", "scores", "fold", "weight_codes", "split", "combine",
           "output"]

#: Code width of the attention weights in P @ V: 15 bits, so that every code ``c`` is
#: ``256 hi + lo`` with both halves INT8 (``hi`` in [-64, 64], ``lo`` in [-128, 127]).
WEIGHT_BITS = 15


def scores(acc, q_scale, k_scale, attn_scale):
    """FX scores from raw dot products: ``acc * mult * 2**(exp - 16)`` with ``(mult, exp) =
    scale_mul(scale_mul(q_scale, k_scale), attn_scale)``, saturated. Scales broadcast."""
    mult, exp = scale_mul(scale_mul(q_scale, k_scale), attn_scale)
    # q and k scales are in FX units: score = acc * mult * 2**exp * 2**-32, FX multiplies by 2**16
    return saturate_fx(mul_round_shift(acc, mult, FX_FRAC - np.asarray(exp)))


#: Bits of a folded attention weight: :func:`fold` saturates to this many signed bits (a
#: probability below 2**16 times a value scale below 2**24, the largest an FX vector's INT8
#: scale reaches, stays below 2**40, so no model value ever saturates).
FOLD_BITS = 48


def fold(probs, v_scale):
    """Attention weights on a 2**-32 grid: ``(P * 2**-16) * (v value scale * 2**-16) * 2**32 =
    P * mult * 2**exp`` (rounded half to even, saturated to :data:`FOLD_BITS` bits), one value
    scale per cached token (last axis)."""
    mult, exp = v_scale
    return saturate(mul_round_shift(probs, mult, -np.asarray(exp)), FOLD_BITS)


def weight_codes(weights):
    """Quantize folded weights per query head (last axis) to :data:`WEIGHT_BITS`-bit codes:
    ``(codes, (mult, exp))``."""
    return quantize_per_token(weights, bits=WEIGHT_BITS)


def split(codes):
    """``codes = 256 hi + lo`` with ``lo`` in [-128, 127] and ``hi`` in [-64, 64]: two INT8
    activation vectors for the matrix engine."""
    codes = np.asarray(codes, dtype=np.int64)
    lo = ((codes + 128) & 0xFF) - 128
    return (codes - lo) >> 8, lo


def combine(acc_hi, acc_lo):
    """The dot product of the whole codes from those of their halves: ``256 hi_acc + lo_acc``
    (exact in 64 bits)."""
    return (np.asarray(acc_hi, dtype=np.int64) << 8) + np.asarray(acc_lo, dtype=np.int64)


def output(acc, w_scale):
    """FX attention output: ``acc * mult * 2**(exp - 16)``, saturated (``w_scale`` per query
    head, broadcast over the last axis)."""
    mult, exp = w_scale
    return saturate_fx(mul_round_shift(acc, mult, FX_FRAC - np.asarray(exp)))
