"""INT32 to INT8 requantizer."""

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.numerics import (
    ACC_BITS,
    ACT_BITS,
    REQUANT_MULT_BITS,
    REQUANT_SHIFT_BITS,
    REQUANT_SHIFT_LIMIT,
    requantize,
)
from .arith import halve_shift, round_half_even, saturate

__all__ = ["Requantizer", "requant_input_layout"]


def requant_input_layout(lanes):
    """Layout of one input beat of a :class:`Requantizer` with ``lanes`` lanes.

    Members
    -------
    acc : ArrayLayout(signed(32), lanes)
        Accumulators, one per lane.
    mult : unsigned(16)
        Multiplier shared by the lanes of this beat.
    shift : unsigned(6)
        Right shift shared by the lanes of this beat.
    """
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(ACC_BITS), lanes),
        "mult": unsigned(REQUANT_MULT_BITS),
        "shift": unsigned(REQUANT_SHIFT_BITS),
    })


class Requantizer(wiring.Component):
    """Requantize INT32 accumulators to INT8 activations.

    Computes :func:`flightgen.isa.numerics.requantize` bit for bit:
    ``clip(round_half_even(acc * mult / 2**shift), -128, 127)`` on every lane of a beat, with the
    beat's ``mult`` and ``shift`` (per-token or per-tensor scales arrive beat by beat).

    Contract
    --------
    * Latency: :attr:`LATENCY` cycles from an input transfer to the output beat being valid.
    * Throughput: one beat per cycle while ``o_stream`` is ready.
    * Backpressure: the pipeline advances as a whole. ``i_stream.ready`` is high when the output
      register is empty or being read (``~o_stream.valid | o_stream.ready``), so a stalled sink
      stops the pipeline without losing or duplicating a beat. ``o_stream`` obeys the Amaranth
      stream rules: valid does not depend on ready, and a valid beat holds until it is taken.
    * Reset: the pipeline empties; no output beat is valid after reset.

    Parameters
    ----------
    lanes : int
        Accumulators per beat, at least 1.

    Members
    -------
    i_stream : In(stream.Signature(requant_input_layout(lanes)))
        Accumulators with the beat's multiplier and shift.
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        INT8 activations, lane for lane.

    Raises
    ------
    TypeError
        If ``lanes`` is not an integer.
    ValueError
        If ``lanes`` is less than 1.
    """

    #: Cycles from an input transfer to its output beat becoming valid.
    LATENCY = 3

    def __init__(self, lanes=1):
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            raise TypeError(f"lanes must be an integer, not {lanes!r}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "i_stream": In(stream.Signature(requant_input_layout(lanes))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(ACT_BITS), lanes))),
        })

    @property
    def lanes(self):
        """Accumulators per beat."""
        return self._lanes

    def reference(self, acc, mult, shift):
        """Compute the output beats for the given input beats (numpy).

        ``acc`` has shape ``(beats, lanes)``; ``mult`` and ``shift`` have shape ``(beats,)``.
        Returns an int8 array of shape ``(beats, lanes)``.
        """
        acc = np.asarray(acc)
        if acc.ndim != 2 or acc.shape[1] != self.lanes:
            raise ValueError(f"acc must have shape (beats, {self.lanes}), not {acc.shape}")
        return requantize(acc, np.asarray(mult)[:, None], np.asarray(shift)[:, None])

    def expected_cycles(self, beats):
        """Cycles to requantize ``beats`` beats with a source that never idles and a sink that
        is always ready: from the cycle of the first input transfer to the cycle of the last
        output transfer, both included."""
        return beats + self.LATENCY if beats else 0

    def elaborate(self, platform):
        m = Module()
        i_beat, o_beat = self.i_stream.payload, self.o_stream.payload
        product_bits = ACC_BITS + REQUANT_MULT_BITS  # |acc * mult| < 2**47

        # Whole-pipeline enable: advance unless a valid output beat is waiting for the sink.
        advance = Signal()
        valid = Signal(self.LATENCY)
        m.d.comb += [
            advance.eq(~self.o_stream.valid | self.o_stream.ready),
            self.i_stream.ready.eq(advance),
            self.o_stream.valid.eq(valid[-1]),
        ]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i_stream.valid, valid[:-1]))

        # Stage 1: exact product; shifts of 48 and more all round to 0, so clamp them.
        product = [Signal(signed(product_bits), name=f"product{n}") for n in range(self.lanes)]
        shift1 = Signal(range(REQUANT_SHIFT_LIMIT + 1))
        with m.If(advance):
            for lane in range(self.lanes):
                m.d.sync += product[lane].eq(i_beat.acc[lane] * i_beat.mult)
            m.d.sync += shift1.eq(
                Mux(i_beat.shift >= REQUANT_SHIFT_LIMIT, REQUANT_SHIFT_LIMIT, i_beat.shift))

        # Stage 2: shift (product * 2) right, so bit 0 of the result is the guard bit (the bit
        # worth one half); the sticky bit says whether anything below the guard bit was set.
        shifted = [Signal(signed(product_bits + 1), name=f"shifted{n}") for n in range(self.lanes)]
        sticky = [Signal(name=f"sticky{n}") for n in range(self.lanes)]
        with m.If(advance):
            for lane in range(self.lanes):
                halved, below = halve_shift(product[lane], shift1)
                m.d.sync += [shifted[lane].eq(halved), sticky[lane].eq(below)]

        # Stage 3: round half to even, then saturate.
        with m.If(advance):
            for lane in range(self.lanes):
                rounded = round_half_even(shifted[lane], sticky[lane])
                m.d.sync += o_beat[lane].eq(saturate(rounded, ACT_BITS))
        return m
