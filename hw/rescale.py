"""Attention rescaler: the matrix engine's raw INT32 dot products of attention to FX.

Computes, bit for bit, the two integer-to-FX steps of :mod:`flightgen.isa.attention`:

* ``SCORES``: :func:`~flightgen.isa.attention.scores`, ``acc * q_scale * k_scale[t] *
  attn_scale`` with the scale product renormalised after each multiplication
  (:func:`~flightgen.isa.numerics.scale_mul`), then rounded half to even and saturated to FX;
* ``OUTPUT``: :func:`~flightgen.isa.attention.output` of
  :func:`~flightgen.isa.attention.combine`, ``(256 hi + lo) * w_scale`` to FX.

Datapath, per lane (a fixed pipeline with one enable):

1. ``a_mult * k_mult`` (16x16) and ``v = mode ? 256 hi + lo : acc`` (41 bits);
2. to 4. normalise to a 16-bit multiplier (``bit_length``, a left shift that puts the leading
   one at bit 31, round half to even on the guard and sticky bits, carry);
5. times ``c_mult`` (16x16); 6. to 8. normalise again, or take ``w_scale`` in ``OUTPUT``,
   and the final right shift ``16 - exp``;
9. the shift clamped and split, ``8 q - f`` with ``0 <= f < 8`` (:class:`~flightgen.hw.arith.
   StepShift`); ``v * (mult << f)`` as two partial products, ``v[0:24] * (mult << f)``
   (unsigned 24x23) and ``v[24:41] * (mult << f)`` (signed 17 x unsigned 23);
10. their sum ``p`` (64 bits);
11. ``p * 2**-8q`` rounded half to even and saturated to 32 bits: one of 13 fixed windows of
    ``p`` (a multiplexer, no shifter); 12. a register (the block's latency stays 13);
13. lanes past the length zeroed.
"""

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.attention import combine, output, scores
from ..isa.numerics import ACC_BITS, SCALE_BITS
from ..isa.special import FX_FRAC
from .arith import StepShift, bit_length

__all__ = ["RescaleMode", "AttentionRescaler", "rescale_command_layout", "rescale_input_layout",
           "scale_word"]

_EXP_BITS = 8  # exponent of a scale as the quantizers produce it (signed)
_FX_BITS = 32  # an FX value (signed)
#: Exponents inside the pipeline: two products of scales reach [-414, 415].
_WIDE_EXP_BITS = 11
_PRODUCT_BITS = 2 * SCALE_BITS  # a product of two multipliers (unsigned)
#: ``256 hi + lo`` of two signed 32-bit accumulators needs 41 signed bits.
_VALUE_BITS = ACC_BITS + 9
#: Low part of the value in the final product's split (unsigned, so 25 bits signed).
_SPLIT = 24
#: ``|v * mult| < 2**56``: the final product fits 57 signed bits, and right shifts of 57 or
#: more all round to 0.
_P_BITS = _VALUE_BITS + SCALE_BITS
_MAX_RIGHT = _P_BITS
#: Left shifts of 32 or more saturate every nonzero product.
_MAX_LEFT = _FX_BITS
#: The final shift is split ``8 q - f``: ``f`` (3 bits) shifts the multiplier left inside the
#: product, ``q`` picks a window of the product (``arith.StepShift``).
_FINE = 3


class RescaleMode(enum.Enum, shape=1):
    """What a command computes."""
    #: Attention scores from ``q . k`` dot products.
    SCORES = 0
    #: Attention output from the two halves of ``w . v``.
    OUTPUT = 1


def rescale_command_layout():
    """Layout of an :class:`AttentionRescaler` command.

    Members
    -------
    mode : RescaleMode
        ``SCORES`` or ``OUTPUT``.
    length : unsigned(16)
        Elements of the vector; the command takes ``ceil(length / lanes)`` input beats (none
        for 0).
    a_mult, a_exp : unsigned(16), signed(8)
        ``SCORES``: the query's scale; ``OUTPUT``: the weights' scale ``w_scale``.
    c_mult, c_exp : unsigned(16), signed(8)
        ``SCORES``: the attention scale (``rsqrt(head_dim)``); ``OUTPUT``: unused.
    """
    return data.StructLayout({
        "mode": RescaleMode,
        "length": unsigned(16),
        "a_mult": unsigned(SCALE_BITS),
        "a_exp": signed(_EXP_BITS),
        "c_mult": unsigned(SCALE_BITS),
        "c_exp": signed(_EXP_BITS),
    })


def rescale_input_layout(lanes):
    """Layout of one :class:`AttentionRescaler` input beat.

    Members
    -------
    x : ArrayLayout(signed(32), lanes)
        ``SCORES``: the raw dot products ``acc``; ``OUTPUT``: ``hi``, the dot products of the
        high halves of the weight codes.
    y : ArrayLayout(signed(32), lanes)
        ``SCORES``: each element's key scale as a :func:`scale_word` (mult in bits 0-15, exp in
        bits 16-23, upper bits ignored); ``OUTPUT``: ``lo``, the dot products of the low halves.
    """
    return data.StructLayout({
        "x": data.ArrayLayout(signed(ACC_BITS), lanes),
        "y": data.ArrayLayout(signed(ACC_BITS), lanes),
    })


def scale_word(mult, exp):
    """Pack scales into the ``y`` words of ``SCORES`` beats: ``mult | (exp & 0xFF) << 16``
    (int64 array, each value in [0, 2**24))."""
    mult, exp = np.asarray(mult, dtype=np.int64), np.asarray(exp, dtype=np.int64)
    return (mult & 0xFFFF) | ((exp & 0xFF) << 16)


def _round_up(top, guard, sticky):
    """Whether ``top`` (the kept bits) rounds up, half to even, given the guard bit (worth one
    half) and the sticky bit (anything below it)."""
    return guard & (sticky | top[0])


def _normalize(m, advance, product, exp, prefix):
    """:func:`flightgen.isa.numerics.normalize_scale` of the registered ``product`` (unsigned,
    32 bits) and ``exp`` in two pipeline stages and a combinational third: returns the
    expressions ``(mult, exp)`` for the caller to register."""
    length = bit_length(m, product, f"{prefix}_length_comb")
    product_a = Signal.like(product, name=f"{prefix}_product")
    exp_a = Signal.like(exp, name=f"{prefix}_exp_a")
    length_a = Signal.like(length, name=f"{prefix}_length")
    # stage a: bit length
    with m.If(advance):
        m.d.sync += [product_a.eq(product), exp_a.eq(exp), length_a.eq(length)]
    # stage b: leading one to bit 31; the exponent becomes exp + length - 16
    zeros = Signal(range(_PRODUCT_BITS + 1), name=f"{prefix}_zeros")
    normal = Signal(_PRODUCT_BITS, name=f"{prefix}_normal")
    exp_b = Signal.like(exp, name=f"{prefix}_exp_b")
    zero_b = Signal(name=f"{prefix}_zero")
    m.d.comb += zeros.eq(_PRODUCT_BITS - length_a)
    with m.If(advance):
        m.d.sync += [normal.eq(product_a << zeros), exp_b.eq(exp_a + length_a - SCALE_BITS),
                     zero_b.eq(length_a == 0)]
    # stage c: round the top 16 bits half to even; a carry to 2**16 renormalises
    top = normal[SCALE_BITS:]
    rounded = top + _round_up(top, normal[SCALE_BITS - 1], normal[:SCALE_BITS - 1].any())
    carry = rounded[SCALE_BITS]
    mult = Mux(carry, 1 << (SCALE_BITS - 1), rounded[:SCALE_BITS])
    return mult, Mux(zero_b, 0, exp_b + carry)


class AttentionRescaler(wiring.Component):
    """Rescale attention's raw dot products to FX, one vector per command.

    Computes bit for bit, on every element ``t < length`` of a command's vector::

        SCORES: scores(x[t], (a_mult, a_exp), (k_mult[t], k_exp[t]), (c_mult, c_exp))
        OUTPUT: output(combine(x[t], y[t]), (a_mult, a_exp))

    (:mod:`flightgen.isa.attention`), where ``k_mult[t]``, ``k_exp[t]`` are bits 0-15 and 16-23
    (signed) of ``y[t]``. Every value of every field is legal: any multiplier 0..65535
    (normalised or not, or zero), any exponent -128..127, any 32-bit ``x`` and ``y``.

    Contract
    --------
    * A command on ``cmd`` takes ``ceil(length / lanes)`` beats from ``i``, element ``t`` in
      lane ``t % lanes`` of beat ``t // lanes``, and gives as many beats on ``o``, in order;
      lanes past ``length`` in the last beat are 0 whatever the input holds there. A command of
      length 0 takes no beats and gives none.
    * Latency: :attr:`LATENCY` cycles from an input transfer to its output beat being valid.
    * Throughput: one beat per cycle while ``o`` is ready. The first beat of a command can be
      taken the cycle after its command transfer; one more command is held while a command
      runs, so commands sent ahead follow each other without an idle cycle (a zero-length
      command costs one cycle).
    * Backpressure: the pipeline advances as a whole; ``i.ready`` is high while a command runs
      and the output register is empty or being read. All three streams obey the Amaranth
      stream rules (``cmd.ready`` depends on neither ``cmd.valid`` nor the other streams); no
      beat is lost or duplicated under any pattern of gaps and stalls.
    * Reset: the pipeline and the command slots empty; no output beat is valid after reset.
    * Multipliers per lane: two 16x16 unsigned (the scale products) and two for ``v * mult``,
      24x16 unsigned and 17x16 signed-by-unsigned: four products, each within a 27x18 DSP.

    Parameters
    ----------
    lanes : int
        Elements per beat: a power of two from 1 to 64.

    Members
    -------
    cmd : In(stream.Signature(rescale_command_layout()))
        One command per vector.
    i : In(stream.Signature(rescale_input_layout(lanes)))
        The vector, ``lanes`` elements per beat.
    o : Out(stream.Signature(ArrayLayout(signed(32), lanes)))
        FX results, one beat per input beat.

    Raises
    ------
    ValueError
        If ``lanes`` is not a power of two from 1 to 64.
    """

    #: Cycles from an input transfer to its output beat becoming valid.
    LATENCY = 13

    def __init__(self, lanes=4):
        if (not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= 64
                or lanes & (lanes - 1)):
            raise ValueError(f"lanes must be a power of two from 1 to 64, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "cmd": In(stream.Signature(rescale_command_layout())),
            "i": In(stream.Signature(rescale_input_layout(lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(_FX_BITS), lanes))),
        })

    @property
    def lanes(self):
        """Elements per beat."""
        return self._lanes

    def reference(self, mode, x, y, a, c):
        """The results of one command (numpy, int64), from :mod:`flightgen.isa.attention`.

        ``x`` and ``y`` are the command's ``length`` elements (1-D); ``a`` and ``c`` are
        ``(mult, exp)`` pairs; ``mode`` a :class:`RescaleMode` or its value.
        """
        mode = RescaleMode(mode)
        x, y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"x and y must be vectors of one length, not {x.shape} and "
                             f"{y.shape}")
        a, c = (int(a[0]), int(a[1])), (int(c[0]), int(c[1]))
        k_exp = (y >> SCALE_BITS) & 0xFF
        k_scale = (y & 0xFFFF, k_exp - ((k_exp & 0x80) << 1))
        if mode is RescaleMode.OUTPUT:
            return output(combine(x, y), a)
        return scores(x, a, k_scale, c)

    def expected_cycles(self, length):
        """Cycles for a command of ``length`` elements with a source that never idles and a
        sink that is always ready, from its first input transfer to its last output transfer,
        both included (0 for an empty command)."""
        beats = -(-length // self.lanes)
        return beats + self.LATENCY if beats else 0

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes

        # -- pipeline enable --------------------------------------------------------------
        advance = Signal()
        valid = Signal(self.LATENCY)
        take = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            self.o.valid.eq(valid[-1]),
        ]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(take, valid[:-1]))

        # -- commands: the running one, and one held behind it -----------------------------
        layout = rescale_command_layout()
        current = Signal(layout)  # current.length counts the elements still to take
        active = Signal()
        held = Signal(layout)
        held_valid = Signal()
        last = current.length <= lanes
        m.d.comb += [
            self.cmd.ready.eq(~held_valid),
            self.i.ready.eq(active & advance),
            take.eq(self.i.valid & self.i.ready),
        ]
        with m.If(take):
            m.d.sync += current.length.eq(current.length - lanes)
        with m.If(~active | (take & last)):
            with m.If(held_valid):
                m.d.sync += [current.eq(held), active.eq(held.length != 0), held_valid.eq(0)]
            with m.Elif(self.cmd.valid):
                m.d.sync += [current.eq(self.cmd.payload),
                             active.eq(self.cmd.payload.length != 0)]
            with m.Else():
                m.d.sync += active.eq(0)
        with m.Elif(self.cmd.valid & self.cmd.ready):
            m.d.sync += [held.eq(self.cmd.payload), held_valid.eq(1)]

        # -- per-beat controls, carried along the pipeline ----------------------------------
        control_layout = data.StructLayout({
            "mode": RescaleMode,
            "a_mult": unsigned(SCALE_BITS),
            "a_exp": signed(_EXP_BITS),
            "c_mult": unsigned(SCALE_BITS),
            "c_exp": signed(_EXP_BITS),
            "mask": unsigned(lanes),
        })
        control = [Signal(control_layout, name=f"control{n}") for n in range(self.LATENCY)]
        m.d.comb += [
            control[0].mode.eq(current.mode),
            control[0].a_mult.eq(current.a_mult),
            control[0].a_exp.eq(current.a_exp),
            control[0].c_mult.eq(current.c_mult),
            control[0].c_exp.eq(current.c_exp),
            control[0].mask.eq(Cat(current.length > lane for lane in range(lanes))),
        ]
        with m.If(advance):
            m.d.sync += [control[n].eq(control[n - 1]) for n in range(1, self.LATENCY)]

        for lane in range(lanes):
            self._lane(m, advance, control, lane)
        return m

    def _lane(self, m, advance, control, lane):
        """The datapath of one lane; ``control[n]`` holds the controls of stage ``n``'s beat."""
        x, y = self.i.payload.x[lane], self.i.payload.y[lane]
        output_mode = [c.mode == RescaleMode.OUTPUT for c in control]

        def stage(shape, name):
            return Signal(shape, name=f"l{lane}_{name}")

        # the value v, waiting in a delay line until stage 8
        value = [stage(signed(_VALUE_BITS), f"value{n}") for n in range(1, 9)]
        with m.If(advance):
            m.d.sync += value[0].eq(Mux(output_mode[0], (x << 8) + y, x))
            m.d.sync += [value[n].eq(value[n - 1]) for n in range(1, len(value))]

        # stage 1: q_mult * k_mult, exponents added
        product1 = stage(unsigned(_PRODUCT_BITS), "product1")
        exp1 = stage(signed(_WIDE_EXP_BITS), "exp1")
        with m.If(advance):
            m.d.sync += [product1.eq(control[0].a_mult * y[:SCALE_BITS]),
                         exp1.eq(control[0].a_exp + y[SCALE_BITS:SCALE_BITS + 8].as_signed())]

        # stages 2 to 4: normalise
        mult4 = stage(unsigned(SCALE_BITS), "mult4")
        exp4 = stage(signed(_WIDE_EXP_BITS), "exp4")
        mult, exp = _normalize(m, advance, product1, exp1, f"l{lane}_first")
        with m.If(advance):
            m.d.sync += [mult4.eq(mult), exp4.eq(exp)]

        # stage 5: times the attention scale
        product5 = stage(unsigned(_PRODUCT_BITS), "product5")
        exp5 = stage(signed(_WIDE_EXP_BITS), "exp5")
        with m.If(advance):
            m.d.sync += [product5.eq(mult4 * control[4].c_mult),
                         exp5.eq(exp4 + control[4].c_exp)]

        # stages 6 to 8: normalise, or take the command's scale in OUTPUT mode; the final
        # right shift 16 - exp
        mult8 = stage(unsigned(SCALE_BITS), "mult8")
        shift8 = stage(signed(_WIDE_EXP_BITS + 1), "shift8")
        mult, exp = _normalize(m, advance, product5, exp5, f"l{lane}_second")
        with m.If(advance):
            m.d.sync += [mult8.eq(Mux(output_mode[7], control[7].a_mult, mult)),
                         shift8.eq(FX_FRAC - Mux(output_mode[7], control[7].a_exp, exp))]

        # stage 9: the shift split 8 q - f; the two partial products of v * (mult << f)
        v = value[-1]
        split = StepShift(shift8, max_right=_MAX_RIGHT, max_left=_MAX_LEFT, fine_bits=_FINE)
        scaled = mult8 << split.fine
        low9 = stage(unsigned(_SPLIT + len(scaled)), "low9")
        high9 = stage(signed(_VALUE_BITS - _SPLIT + len(scaled) + 1), "high9")
        steps9 = stage(split.steps_shape, "steps9")
        with m.If(advance):
            m.d.sync += [low9.eq(v[:_SPLIT] * scaled),
                         high9.eq(v[_SPLIT:].as_signed() * scaled),
                         steps9.eq(split.steps)]

        # stage 10: p = v * (mult << f)
        p10 = stage(signed(_P_BITS + split.step - 1), "p10")
        steps10 = stage(split.steps_shape, "steps10")
        with m.If(advance):
            m.d.sync += [p10.eq((high9 << _SPLIT) + low9), steps10.eq(steps9)]

        # stage 11: p * 2**-8q rounded half to even and saturated to FX (a window of p);
        # stage 12: registered once more, so that the latency stays 13
        rounded11 = stage(signed(_FX_BITS), "rounded11")
        result12 = stage(signed(_FX_BITS), "result12")
        with m.If(advance):
            m.d.sync += [rounded11.eq(split.round(p10, steps10, _FX_BITS)),
                         result12.eq(rounded11)]

        # stage 13: lanes past the length give 0
        with m.If(advance):
            m.d.sync += self.o.payload[lane].eq(Mux(control[12].mask[lane], result12, 0))
