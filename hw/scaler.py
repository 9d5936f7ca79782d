"""Block scaler: applies weight-group scales, zero-points and activation block scales to the
matrix engine's integer block partials, and accumulates rows in FX.

For every 32-block ``b`` of a row, the chain delivers the integer dot product ``P`` of the
block's INT8 activation codes with the weight codes, and the sum ``X`` of the activation codes
the row keeps. With the weight group's float16 scale ``d`` and minimum ``m`` (both decoded
exactly as ``mantissa * 2**e``) and the activation block scale ``(mult, exp)``, the block
contributes::

    c = saturate_52(round_half_even((d * P + m * X) * mult * 2**(exp + 16)))

on the accumulator grid of 2**-32, and the row's result is
``saturate_32(round_half_even(sum_b c / 2**16))`` in FX. This is
:func:`flightgen.isa.weights.linear` bit for bit: the real value of each block term is the
same as in the numpy grid (which aligns a row's scales to its smallest exponent), so both round
it identically.
"""

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..isa.numerics import ACC_BITS, mul_round_shift
from ..isa.numerics import saturate as saturate_values
from ..isa.weights import LINEAR_ACC_FRAC, LINEAR_TERM_BITS
from .arith import StepShift, halve_shift, round_half_even, saturate

__all__ = ["BlockScaler", "block_input_layout", "PARTIAL_BITS", "SUM_BITS", "decode_half"]

#: Width of a block partial ``P``: 32 products of a 9-bit code and an 8-bit activation.
PARTIAL_BITS = 22
#: Width of a block activation sum ``X``: 32 codes of 8 bits.
SUM_BITS = 14
_FX_FRAC = 16
#: float16 value = mantissa * 2**exponent, exponent in [_EXP_MIN, _EXP_MIN + 29].
_EXP_MIN = -24
_EXP_SPREAD = 29
#: Accumulator: LINEAR_TERM_BITS plus headroom for 4096 blocks (K up to 131072).
ACCUMULATOR_BITS = LINEAR_TERM_BITS + 12
#: Aligned term ``d P 2**a + m X 2**b``: the wider product, shifted by up to the spread.
_TERM_BITS = 64
#: The contribution's right shift, clamped (beyond: the same result) to
#: ``[-_MAX_LEFT, _MAX_RIGHT]``; its low bits (``_FINE`` of them) shift the activation
#: multiplier left in the DSPs, the rest picks one of a few windows (no shifter of the
#: product): ``arith.StepShift``.
_MAX_RIGHT, _MAX_LEFT = 82, 63
_FINE = 3


def block_input_layout(lanes):
    """One block of every lane.

    Members
    -------
    partial : ArrayLayout(signed(22), lanes)
        ``P`` per lane.
    sums : ArrayLayout(signed(14), lanes)
        ``X`` per lane.
    scale, minimum : ArrayLayout(unsigned(16), lanes)
        The lane's weight-group float16 scale and minimum, raw bits.
    mult : ArrayLayout(unsigned(16), lanes); exp : ArrayLayout(signed(8), lanes)
        The lane's activation block scale.
    first, last : unsigned(1)
        The block is the first / last of its row (all lanes run in step).
    """
    return data.StructLayout({
        "partial": data.ArrayLayout(signed(PARTIAL_BITS), lanes),
        "sums": data.ArrayLayout(signed(SUM_BITS), lanes),
        "scale": data.ArrayLayout(unsigned(16), lanes),
        "minimum": data.ArrayLayout(unsigned(16), lanes),
        "mult": data.ArrayLayout(unsigned(16), lanes),
        "exp": data.ArrayLayout(signed(8), lanes),
        "first": 1,
        "last": 1,
    })


def decode_half(bits):
    """An exact float16 as ``(signed 12-bit mantissa, exponent)``: value = mantissa * 2**exp,
    exponent ``max(field, 1) - 25`` (subnormals share the smallest exponent)."""
    field = bits[10:15]
    magnitude = bits[:10] | ((field != 0).as_unsigned() << 10)
    mantissa = Mux(bits[15], -magnitude, magnitude)
    exponent = Mux(field == 0, 1, field) - 25
    return mantissa, exponent


class BlockScaler(wiring.Component):
    """Scale and accumulate block partials of ``lanes`` lanes in lockstep.

    Contract
    --------
    * A valid input with ``last`` set produces, :attr:`LATENCY` enabled cycles later, ``o_valid``
      with every lane's FX row result in ``o_value``; the accumulation restarts at an input with
      ``first`` set. A row's blocks arrive in order, one per enabled cycle at most.
    * With ``raw`` high (stable for a whole command) the scales are ignored: the result is
      ``saturate_32(sum_b P)``, the exact integer dot product.
    * The pipeline advances only while ``en`` is high; reset empties it.

    Parameters
    ----------
    lanes : int

    Members
    -------
    en : In(1)
    raw : In(1)
    i_valid : In(1)
    i_block : In(block_input_layout(lanes))
    o_valid : Out(1)
    o_value : Out(ArrayLayout(signed(32), lanes))
    """

    #: Enabled cycles from a row's last block to its result.
    LATENCY = 6

    def __init__(self, lanes):
        self.lanes = lanes
        super().__init__({
            "en": In(1),
            "raw": In(1),
            "i_valid": In(1),
            "i_block": In(block_input_layout(lanes)),
            "o_valid": Out(1),
            "o_value": Out(data.ArrayLayout(signed(ACC_BITS), lanes)),
        })

    @staticmethod
    def reference(partial, sums, scale, minimum, mult, exp):
        """FX row results (numpy) for blocks of one row: every argument has shape
        ``(blocks, lanes)``; ``scale`` and ``minimum`` are float16 arrays."""
        shape = np.shape(partial)
        d_fraction, d_exp = np.frexp(np.asarray(scale, np.float64))
        m_fraction, m_exp = np.frexp(np.asarray(minimum, np.float64))
        d = np.rint(d_fraction * 2**11).astype(np.int64)
        m = np.rint(m_fraction * 2**11).astype(np.int64)
        low = np.minimum(d_exp, m_exp) - 11
        term = (np.asarray(partial, np.int64) * (d << (d_exp - 11 - low))
                + np.asarray(sums, np.int64) * (m << (m_exp - 11 - low)))
        shift = -(low + np.asarray(exp) + LINEAR_ACC_FRAC - _FX_FRAC)
        c = saturate_values(mul_round_shift(term, np.asarray(mult), shift), LINEAR_TERM_BITS)
        total = c.reshape(shape).sum(axis=0)
        return saturate_values(mul_round_shift(total, 1, LINEAR_ACC_FRAC - _FX_FRAC), ACC_BITS)

    def elaborate(self, platform):
        m = Module()
        lanes, i = self.lanes, self.i_block
        valid = Signal(self.LATENCY)
        first = Signal(self.LATENCY)
        last = Signal(self.LATENCY)
        with m.If(self.en):
            m.d.sync += [valid.eq(valid << 1 | self.i_valid),
                         first.eq(first << 1 | i.first), last.eq(last << 1 | i.last)]
        m.d.comb += self.o_valid.eq(valid[-1] & last[-1])

        for lane in range(lanes):
            def stage(shape, name, lane=lane):
                return Signal(shape, name=f"{name}{lane}")

            # 1: decode the float16 scale and minimum; one narrow product each.
            pd, pm = stage(signed(PARTIAL_BITS + 12), "pd"), stage(signed(SUM_BITS + 12), "pm")
            ed, em = stage(signed(7), "ed"), stage(signed(7), "em")
            mult1, exp1 = stage(unsigned(16), "mult1_"), stage(signed(8), "exp1_")
            d_mant, d_exp = decode_half(i.scale[lane])
            m_mant, m_exp = decode_half(i.minimum[lane])
            # 2: align the two products to the smaller exponent and add (exact): the one of
            # the larger exponent shifted left by the difference.
            term, shift2 = stage(signed(_TERM_BITS), "term"), stage(signed(10), "shift")
            mult2 = stage(unsigned(16), "mult2_")
            low = Mux(ed < em, ed, em)
            d_wider = ed >= em
            wider, other = Mux(d_wider, pd, pm), Mux(d_wider, pm, pd)
            spread = Mux(d_wider, ed - em, em - ed).as_unsigned()[:5]
            # 3: times the activation multiplier, shifted left by the fine part of the
            # contribution's right shift (exact); the rest in steps of 2**_FINE.
            split = StepShift(shift2, max_right=_MAX_RIGHT, max_left=_MAX_LEFT,
                              fine_bits=_FINE)
            product = stage(signed(_TERM_BITS + 16 + split.step - 1), "product")
            steps = stage(split.steps_shape, "steps")
            # 4: round half to even onto the 2**-32 grid, saturate to LINEAR_TERM_BITS.
            contribution = stage(signed(LINEAR_TERM_BITS), "c")
            scaled = split.round(product, steps, LINEAR_TERM_BITS)
            # raw: the partial itself, delayed to the contribution stage
            partial3 = stage(signed(PARTIAL_BITS), "partial3_")
            partials = [stage(signed(PARTIAL_BITS), f"partial{k}_") for k in (1, 2)]
            # 5: accumulate the row; 6: round to FX (or, raw, saturate the integer sum).
            acc = stage(signed(ACCUMULATOR_BITS), "acc")
            fx_halved, fx_sticky = halve_shift(acc, LINEAR_ACC_FRAC - _FX_FRAC)
            with m.If(self.en):
                m.d.sync += [
                    pd.eq(i.partial[lane] * d_mant), pm.eq(i.sums[lane] * m_mant),
                    ed.eq(d_exp), em.eq(m_exp), mult1.eq(i.mult[lane]), exp1.eq(i.exp[lane]),
                    term.eq((wider << spread) + other),
                    shift2.eq(-(low + exp1 + LINEAR_ACC_FRAC - _FX_FRAC)), mult2.eq(mult1),
                    product.eq(term * (mult2 << split.fine)), steps.eq(split.steps),
                    partials[0].eq(i.partial[lane]), partials[1].eq(partials[0]),
                    partial3.eq(partials[1]),
                    contribution.eq(Mux(self.raw, partial3,
                                        scaled)),
                    self.o_value[lane].eq(Mux(
                        self.raw, saturate(acc, ACC_BITS),
                        saturate(round_half_even(fx_halved, fx_sticky), ACC_BITS))),
                ]
                with m.If(valid[3]):
                    m.d.sync += acc.eq(Mux(first[3], 0, acc) + contribution)
        return m
