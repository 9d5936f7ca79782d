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

__all__ = ["LANE_BITS", "LANE_PRODUCTS", "PACKED_BITS", "PackedMultiplier", "pack", "split"]

#: Width of the low lane of a packed product.
LANE_BITS = 18
#: Products of |a| <= 127 and |w| <= 128 a lane accumulates without overflow.
LANE_PRODUCTS = ((1 << (LANE_BITS - 1)) - 1) // (127 * 128)
#: Width of the packed operand (the DSP48E2's 27-bit multiplier input).
PACKED_BITS = 27


def pack(a0, a1):
    """The packed operand ``a1 * 2**18 + a0`` of two signed values of at most 9 bits; it fits
    :data:`PACKED_BITS` unless ``a1 = -256``."""
    return (a1.as_signed() << LANE_BITS) + a0.as_signed()


def split(product):
    """The two lanes of a packed product or of a sum of packed products: ``(low, high)``,
    with the high lane given back the borrow of a negative low lane. Exact while the low
    lane's true value fits :data:`LANE_BITS` signed bits."""
    low = product[:LANE_BITS].as_signed()
    return low, product[LANE_BITS:].as_signed() + low[-1]


class PackedMultiplier(wiring.Component):
    """Multiply two signed activations by one shared signed weight, using one multiplier.

    Parameters
    ----------
    width : int
        Operand width, 8 or 9 bits (the matrix engine's chain uses 9-bit codes:
        :mod:`flightgen.hw.chain`).

    Raises
    ------
    ValueError
        If ``width`` is not 8 or 9.

    Contract
    --------
    * ``p0 = a0 * w`` and ``p1 = a1 * w`` exactly, for every ``a0``, ``a1``, ``w`` of ``width``
      bits, except ``a1 = -256`` at 9 bits (the packed operand would leave 27 bits); proven
      exhaustively on the generated Verilog by ``tests/test_dsp_rtl.py``.
    * Latency :attr:`LATENCY` cycles while ``en`` is high (packed operand, product, corrected
      lanes are registered); the pipeline holds while ``en`` is low. One input set per cycle.
    * Reset clears the pipeline registers.

    Members
    -------
    en : In(1)
        Advance the pipeline.
    a0, a1 : In(signed(width))
        Activations.
    w : In(signed(width))
        Shared weight.
    p0, p1 : Out(signed(2 * width))
        The two products, :attr:`LATENCY` enabled cycles after their inputs.
    """

    #: Enabled cycles from inputs to outputs.
    LATENCY = 3

    def __init__(self, width=8):
        if width not in (8, 9):
            raise ValueError(f"operand width must be 8 or 9 bits, not {width!r}")
        self.width = width
        super().__init__({"en": In(1), "a0": In(signed(width)), "a1": In(signed(width)),
                          "w": In(signed(width)), "p0": Out(signed(2 * width)),
                          "p1": Out(signed(2 * width))})

    @staticmethod
    def reference(a0, a1, w):
        """The two products (numpy or Python integers)."""
        return a0 * w, a1 * w

    def elaborate(self, platform):
        m = Module()
        packed = Signal(signed(PACKED_BITS))
        weight = Signal(signed(self.width))
        product = Signal(signed(PACKED_BITS + self.width))
        with m.If(self.en):
            # Stage 1: pack (a pre-adder in the DSP): a1 * 2**18 + a0, sign-extended a0.
            m.d.sync += [packed.eq(pack(self.a0, self.a1)), weight.eq(self.w)]
            # Stage 2: one multiply.
            m.d.sync += product.eq(packed * weight)
            # Stage 3: split; the high lane takes back the borrow of a negative low lane.
            low, high = split(product)
            m.d.sync += [self.p0.eq(low), self.p1.eq(high)]
        return m
