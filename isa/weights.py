"""Group-quantized weight tensors: integer codes with per-group scales (and minimums).

A weight matrix of shape ``(N, K)`` (outputs, inputs) is split along ``K`` into groups of
``group`` consecutive inputs. Element ``w[n, k]`` of group ``g = k // group`` stands for::

    w[n, k] = scales[n, g] * codes[n, k] + mins[n, g]      (mins is 0 for symmetric groups)

Codes are integers: signed (``int8`` storage, range ``[-2**(bits-1), 2**(bits-1) - 1]``) or
unsigned (``[0, 2**bits - 1]``). Scales and minimums are IEEE binary16 (float16), the format GGUF
stores them in, so GGUF tensors load **exactly**:

========  ======  ========  ======  ===========================================
GGUF      bits    codes     group   value
========  ======  ========  ======  ===========================================
Q8_0      8       signed    32      ``d * q``
Q4_0      4       signed    32      ``d * (q - 8)``; stored here as code ``q - 8``
Q4_1      4       unsigned  32      ``d * q + m``
========  ======  ========  ======  ===========================================

:meth:`GroupQuantized.dequantize` gives the float32 values exactly as llama.cpp computes them
(``float32(d) * code + float32(m)``), which is what the float reference uses.
"""

from dataclasses import dataclass

import numpy as np

from .numerics import mul_round_shift, saturate

__all__ = ["GroupQuantized", "GGUF_BLOCK", "MAX_ROW_SPREAD", "LINEAR_ACC_FRAC", "LINEAR_TERM_BITS",
           "linear"]

#: Elements per GGUF Q8_0/Q4_0/Q4_1 block (= the group size along K).
GGUF_BLOCK = 32
#: Largest spread (in powers of two) between the smallest and largest float16 scale exponent
#: within one output row that :meth:`GroupQuantized.matmul` accumulates exactly in 64 bits.
MAX_ROW_SPREAD = 20


@dataclass(frozen=True, eq=False)
class GroupQuantized:
    """A weight matrix quantized in groups along its last axis.

    Members
    -------
    codes : ndarray of int8 (signed) or uint8 (unsigned), shape (N, K)
    bits : int
        Code width, 2 to 8.
    signed : bool
        Whether codes are signed.
    group : int
        Elements per group along K; divides K.
    scales : ndarray of float16, shape (N, K // group)
    mins : ndarray of float16, shape (N, K // group), or None for symmetric groups
    mask : ndarray of bool, shape (N, K), or None for a dense matrix
        Kept positions of a pruned (sparse) matrix. A pruned weight is exactly zero, whatever
        its group's minimum; its code must be 0. :mod:`flightgen.isa.sparse` makes and checks
        N:M masks.
    """

    codes: np.ndarray
    bits: int
    signed: bool
    group: int
    scales: np.ndarray
    mins: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"code width must be 2 to 8 bits, not {self.bits!r}")
        codes = self.codes
        if codes.ndim != 2:
            raise ValueError(f"codes must be a matrix, not shape {codes.shape}")
        n, k = codes.shape
        if self.group < 1 or k % self.group:
            raise ValueError(f"group size {self.group} does not divide the {k} inputs")
        expected = np.int8 if self.signed else np.uint8
        if codes.dtype != expected:
            raise TypeError(f"{'signed' if self.signed else 'unsigned'} codes must be "
                            f"{np.dtype(expected).name}, not {codes.dtype}")
        lo, hi = self.code_range
        if codes.size and (codes.min() < lo or codes.max() > hi):
            raise ValueError(f"codes must lie in [{lo}, {hi}] for {self.bits}-bit "
                             f"{'signed' if self.signed else 'unsigned'} codes")
        for name in ("scales", "mins"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.dtype != np.float16 or value.shape != (n, k // self.group):
                raise ValueError(f"{name} must be float16 of shape {(n, k // self.group)}, not "
                                 f"{value.dtype} {value.shape}")
        if self.mask is not None:
            if self.mask.dtype != np.bool_ or self.mask.shape != (n, k):
                raise ValueError(f"mask must be bool of shape {(n, k)}, not {self.mask.dtype} "
                                 f"{self.mask.shape}")
            if np.any(codes[~self.mask]):
                raise ValueError("pruned weights (mask False) must have code 0")

    @property
    def shape(self):
        """``(N, K)``."""
        return self.codes.shape

    @property
    def code_range(self):
        """``(lowest, highest)`` code."""
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    @property
    def symmetric(self):
        """``True`` when the groups have no minimum (offset)."""
        return self.mins is None

    @property
    def bits_per_weight(self):
        """Storage cost per weight including the float16 scales (and minimums)."""
        per_group = 16 * (1 if self.mins is None else 2)
        return self.bits + per_group / self.group

    def dequantize(self):
        """Return the float32 values, computed as llama.cpp does."""
        n, k = self.shape
        codes = self.codes.astype(np.float32).reshape(n, k // self.group, self.group)
        values = codes * self.scales.astype(np.float32)[..., None]
        if self.mins is not None:
            values = values + self.mins.astype(np.float32)[..., None]
        values = values.reshape(n, k)
        return values if self.mask is None else np.where(self.mask, values, np.float32(0))

    def rows(self, index):
        """Return the rows ``index`` (e.g. token ids of an embedding) as a new tensor."""
        return GroupQuantized(self.codes[index], self.bits, self.signed, self.group,
                              self.scales[index],
                              None if self.mins is None else self.mins[index],
                              None if self.mask is None else self.mask[index])

    @classmethod
    def from_gguf_blocks(cls, kind, raw, shape):
        """Decode raw GGUF block bytes of type ``kind`` (``"Q8_0"``, ``"Q4_0"``, ``"Q4_1"``).

        Parameters
        ----------
        raw : ndarray of uint8
            The tensor's bytes, ``N * K / 32`` blocks.
        shape : (N, K)

        Raises
        ------
        ValueError
            If the byte count does not match the shape, or ``kind`` is not one of the above.
        """
        n, k = shape
        if k % GGUF_BLOCK:
            raise ValueError(f"{kind} rows must be a multiple of {GGUF_BLOCK}, not {k}")
        layout = {"Q8_0": (2, 32), "Q4_0": (2, 16), "Q4_1": (4, 16)}
        if kind not in layout:
            raise ValueError(f"unsupported GGUF block type {kind}")
        header, payload = layout[kind]
        blocks = n * k // GGUF_BLOCK
        block_bytes = header + payload
        if raw.size != blocks * block_bytes:
            raise ValueError(f"{kind} tensor of shape {shape} needs {blocks * block_bytes} "
                             f"bytes, not {raw.size}")
        raw = raw.reshape(blocks, block_bytes)
        scales = raw[:, 0:2].copy().view(np.float16).reshape(n, k // GGUF_BLOCK)
        mins = None
        if kind == "Q4_1":
            mins = raw[:, 2:4].copy().view(np.float16).reshape(n, k // GGUF_BLOCK)
        data = raw[:, header:]
        if kind == "Q8_0":
            codes = data.view(np.int8).reshape(n, k)
            return cls(np.ascontiguousarray(codes), 8, True, GGUF_BLOCK, scales)
        # 4-bit: byte j holds element j (low nibble) and element j + 16 (high nibble).
        nibbles = np.concatenate([data & 0x0F, data >> 4], axis=1).reshape(n, k)
        if kind == "Q4_0":
            return cls((nibbles.astype(np.int8) - 8), 4, True, GGUF_BLOCK, scales)
        return cls(nibbles.astype(np.uint8), 4, False, GGUF_BLOCK, scales, mins)

    @classmethod
    def from_float(cls, values, bits, group, symmetric):
        """Quantize a float matrix into groups along its last axis (round half to even).

        Symmetric groups: ``scale = fp16(max|w| / (2**(bits-1) - 1))`` and signed codes
        ``round(w / scale)``. Asymmetric groups: ``scale = fp16((max - min) / (2**bits - 1))``,
        ``min = fp16(min)`` and unsigned codes ``round((w - min) / scale)``. Codes are clipped
        to their range; computed in float64 from the float32 values.
        """
        values = np.asarray(values, dtype=np.float32)
        n, k = values.shape
        if k % group:
            raise ValueError(f"group size {group} does not divide the {k} inputs")
        grouped = values.astype(np.float64).reshape(n, k // group, group)
        if symmetric:
            top = (1 << (bits - 1)) - 1
            scales = (np.abs(grouped).max(-1) / top).astype(np.float16)
            safe = np.where(scales == 0, 1, scales.astype(np.float64))[..., None]
            codes = np.clip(np.rint(grouped / safe), -top - 1, top).astype(np.int8)
            return cls(codes.reshape(n, k), bits, True, group, scales)
        top = (1 << bits) - 1
        low = grouped.min(-1).astype(np.float16)
        scales = ((grouped.max(-1) - low.astype(np.float64)) / top).astype(np.float16)
        safe = np.where(scales == 0, 1, scales.astype(np.float64))[..., None]
        codes = np.clip(np.rint((grouped - low.astype(np.float64)[..., None]) / safe), 0, top)
        return cls(codes.astype(np.uint8).reshape(n, k), bits, False, group, scales, low)

    def exact_terms(self):
        """Integer form of the scales on a per-row power-of-two grid.

        Returns ``(D, M, E)``: ``D`` and ``M`` (``None`` when symmetric) are int64 arrays of
        shape ``(N, K // group)`` and ``E`` has shape ``(N,)``, with
        ``scales[n, g] == D[n, g] * 2**E[n]`` and ``mins[n, g] == M[n, g] * 2**E[n]`` exactly.

        Raises
        ------
        ValueError
            If a row's scales spread over more than :data:`MAX_ROW_SPREAD` powers of two.
        """
        parts = [self.scales] + ([] if self.mins is None else [self.mins])
        mantissas, exponents = [], []
        for part in parts:
            fraction, exponent = np.frexp(part.astype(np.float64))  # part = fraction * 2**e
            mantissas.append(np.rint(fraction * 2**11).astype(np.int64))  # exact: 11 bits
            exponents.append(np.where(fraction == 0, np.iinfo(np.int64).max,
                                      exponent.astype(np.int64) - 11))
        row_exp = np.minimum.reduce([e.min(axis=1) for e in exponents])
        row_exp = np.where(row_exp == np.iinfo(np.int64).max, 0, row_exp)
        terms = []
        for mantissa, exponent in zip(mantissas, exponents, strict=True):
            shift = np.where(mantissa == 0, 0, exponent - row_exp[:, None])
            if shift.size and shift.max() > MAX_ROW_SPREAD:
                row = int(np.argmax(shift.max(axis=1)))
                raise ValueError(f"row {row} has group scales {int(shift.max())} powers of two "
                                 f"apart; at most {MAX_ROW_SPREAD} accumulate exactly")
            terms.append(mantissa << shift)
        return terms[0], (terms[1] if len(terms) > 1 else None), row_exp

    def prepare(self, block=32):
        """Precompute what :meth:`block_products` needs for activation blocks of ``block``
        elements (which must divide the group): the exact scale terms repeated per block, and
        the codes as floats grouped for BLAS. Keep it with the tensor when multiplying
        repeatedly."""
        n, k = self.shape
        if self.group % block:
            raise ValueError(f"activation block {block} does not divide the group {self.group}")
        d, m, row_exp = self.exact_terms()
        repeat = self.group // block
        d = np.repeat(d, repeat, axis=1)
        m = None if m is None else np.repeat(m, repeat, axis=1)
        # A block's dot product of INT8 activations with codes is an integer below
        # block * 2**15 at every step; float32 holds integers exactly below 2**24.
        dtype = np.float32 if block * 2**15 < 2**24 else np.float64
        grouped = self.codes.astype(dtype).reshape(n, k // block, block)
        kept = None
        if self.mask is not None and m is not None:
            kept = self.mask.astype(dtype).reshape(n, k // block, block).transpose(1, 2, 0)
            kept = np.ascontiguousarray(kept)
        return (d, m, row_exp), np.ascontiguousarray(grouped.transpose(1, 2, 0)), block, kept

    def block_products(self, x, prepared=None):
        """Exact per-block products of INT8 activation codes with this weight matrix.

        ``x`` is an int8 array ``(T, K)``. Returns ``(terms, E)``: int64 ``terms`` of shape
        ``(T, N, K // block)`` and row exponents ``E`` ``(N,)``, where block ``b`` of row ``n``
        contributes exactly ``terms[t, n, b] * 2**E[n]`` (times the block's activation scale):
        ``terms = D[n,b] * P[t,n,b] + M[n,b] * X[t,n,b]`` with ``P`` the block's integer dot
        product and ``X`` the block's sum of activation codes over the positions row ``n`` keeps
        (all of them when the matrix is dense).
        """
        (d, m, row_exp), grouped, block, kept = (prepared if prepared is not None
                                                 else self.prepare())
        x = np.asarray(x)
        t, k = x.shape
        blocks = k // block
        # Block dot products in floating point: every partial sum is an integer the format
        # holds exactly (see prepare), so BLAS is exact in any summation order.
        xb = x.astype(grouped.dtype).reshape(t, blocks, block).transpose(1, 0, 2)
        partial = np.matmul(xb, grouped).astype(np.int64).transpose(1, 2, 0)  # (T, N, blocks)
        terms = partial * d[None]
        if m is not None and kept is not None:
            sums = np.matmul(xb, kept).astype(np.int64).transpose(1, 2, 0)  # (T, N, blocks)
            terms = terms + sums * m[None]
        elif m is not None:
            sums = x.astype(np.int64).reshape(t, blocks, block).sum(-1)  # (T, blocks)
            terms = terms + sums[:, None, :] * m[None]
        return terms, row_exp


#: Fractional bits of the linear layer's accumulator (units of 2**-32 of the real value).
LINEAR_ACC_FRAC = 32
#: Each block's contribution to the accumulator saturates to this many signed bits. A
#: contribution that large is 16 times the FX range, so saturating it changes no result the
#: model can produce except where other blocks would cancel it; it bounds the hardware's
#: accumulator to ``LINEAR_TERM_BITS + log2(blocks)`` bits.
LINEAR_TERM_BITS = 52
_FX_FRAC = 16
#: Block terms per slice (T * N * blocks) when evaluating :func:`linear`, to bound memory.
_SLICE = 1 << 22


def linear(codes, scale, weight, prepared=None):
    """The matrix engine's linear layer: INT8 activation blocks times group-quantized weights,
    in FX (16 fractional bits).

    ``codes`` (int8, ``(T, K)``) and ``scale`` (``(mult, exp)``, ``(T, K // block)``, in FX
    units) come from :func:`flightgen.isa.numerics.quantize_per_group`. Each block's exact term
    (:meth:`GroupQuantized.block_products`) is rescaled by the block's activation scale and
    rounded once onto the accumulator grid of 2**-32, ``c = round(term * mult * 2**(E + exp +
    16))``, saturated to :data:`LINEAR_TERM_BITS` signed bits; the row sums ``sum_b c``
    exactly and rounds once more to FX (saturating).
    """
    prepared = prepared if prepared is not None else weight.prepare()
    mult, exp = scale
    t = len(codes)
    n, k = weight.shape
    step = max(1, _SLICE // max(1, n * (k // prepared[2])))
    out = np.empty((t, n), dtype=np.int64)
    for start in range(0, t, step):
        rows = slice(start, start + step)
        terms, row_exp = weight.block_products(codes[rows], prepared)
        shift = -(row_exp[None, :, None] + exp[rows][:, None, :] + LINEAR_ACC_FRAC - _FX_FRAC)
        contributions = saturate(mul_round_shift(terms, mult[rows][:, None, :], shift),
                                 LINEAR_TERM_BITS)
        total = contributions.sum(axis=-1)
        out[rows] = saturate(mul_round_shift(total, 1, LINEAR_ACC_FRAC - _FX_FRAC), 32)
    return out
