"""Two INT8 multiplies per DSP48E2: the packed multiplier of the sparse DSP chain.

Two activations ``a0`` and ``a1`` that share a weight ``w`` are packed into one wide operand,
``packed = a1 * 2**18 + a0``, and multiplied once (a 27 x 18 multiply: one DSP48E2). The
product holds both results: ``a0 * w`` in the low 18 bits (signed) and ``a1 * w`` above them.
When the low lane is negative it has borrowed one from the high lane, so the high lane is
corrected by adding the low lane's sign bit (Xilinx WP486).

A lane holds sums of several products as long as they stay within its 18 signed bits. With
flightgen's activation codes, which are symmetric (``|a| <= 127``, see
:func:`flightgen.isa.numerics.quantize_per_token`) and weights in ``[-128, 127]``, each product
is at most 16256 in magnitude, so a lane can accumulate :data:`LANE_PRODUCTS` = 8 products
(8 * 16256 < 2**17) before it must be extracted.
"""

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LANE_BITS", "LANE_PRODUCTS", "PACKED_BITS", "PackedMultiplier"]

#: Width of the low lane of a packed product.
LANE_BITS = 18
#: Products of |a| <= 127 and |w| <= 128 a lane accumulates without overflow.
LANE_PRODUCTS = ((1 << (LANE_BITS - 1)) - 1) // (127 * 128)
#: Width of the packed operand (the DSP48E2's 27-bit multiplier input).
PACKED_BITS = 27


class PackedMultiplier(wiring.Component):
    """Multiply two signed 8-bit activations by one shared signed 8-bit weight, using one
    multiplier.

    Contract
    --------
    * ``p0 = a0 * w`` and ``p1 = a1 * w`` exactly, for every 8-bit ``a0``, ``a1``, ``w``
      (proven exhaustively on the generated Verilog by ``tests/test_dsp_rtl.py``).
    * Latency :attr:`LATENCY` cycles while ``en`` is high (packed operand, product, corrected
      lanes are registered); the pipeline holds while ``en`` is low. One input set per cycle.
    * Reset clears the pipeline registers.

    Members
    -------
    en : In(1)
        Advance the pipeline.
    a0, a1 : In(signed(8))
        Activations.
    w : In(signed(8))
        Shared weight.
    p0, p1 : Out(signed(16))
        The two products, :attr:`LATENCY` enabled cycles after their inputs.
    """

    #: Enabled cycles from inputs to outputs.
    LATENCY = 3

    en: In(1)
    a0: In(signed(8))
    a1: In(signed(8))
    w: In(signed(8))
    p0: Out(signed(16))
    p1: Out(signed(16))

    @staticmethod
    def reference(a0, a1, w):
        """The two products (numpy or Python integers)."""
        return a0 * w, a1 * w

    def elaborate(self, platform):
        m = Module()
        packed = Signal(signed(PACKED_BITS))
        weight = Signal(signed(8))
        product = Signal(signed(PACKED_BITS + 8))
        with m.If(self.en):
            # Stage 1: pack (a pre-adder in the DSP): a1 * 2**18 + a0, sign-extended a0.
            m.d.sync += [packed.eq((self.a1 << LANE_BITS) + self.a0), weight.eq(self.w)]
            # Stage 2: one multiply.
            m.d.sync += product.eq(packed * weight)
            # Stage 3: split; the high lane takes back the borrow of a negative low lane.
            low = product[:LANE_BITS].as_signed()
            high = product[LANE_BITS:].as_signed() + low[-1]
            m.d.sync += [self.p0.eq(low), self.p1.eq(high)]
        return m
