"""Token quantizer: one vector to codes with one scale, as attention quantizes q, k and v per
head (PLAIN) and its softmax weights times the value scales (FOLD).

Computes, bit for bit:

* PLAIN: :func:`flightgen.isa.numerics.quantize_per_token` (INT8 codes);
* FOLD: :func:`flightgen.isa.attention.fold` elementwise, then
  :func:`~flightgen.isa.attention.weight_codes` (15-bit codes), then
  :func:`~flightgen.isa.attention.split` into two INT8 halves.

Both are the same per-vector arithmetic with ``top = 2**(bits - 1) - 1`` (127 or 16383):

1. ``w = v`` (PLAIN) or ``w = saturate48(round(p * m * 2**e))`` (FOLD); ``A = max |w|``;
2. ``d = max(bit_length(A) - 24, 0)``, ``A' = round(A / 2**d)`` (rounding half to even is
   odd-symmetric and monotonic, so this is the peak of the narrowed vector);
3. ``(r, -s) = reciprocal(max(A', 1))`` and the scale quotient ``div_round(A' * 2**t, top)``
   with ``t = max(15 + bits - bit_length(A'), 0)``, both by an 18-step sequential restoring
   divider (once per vector);
4. ``code = clip(round(round(w / 2**d) * r * top / 2**s), -top, top)``; the multiply by ``top``
   is a shift and a subtraction after a 26 x 16-bit product.
"""

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.attention import FOLD_BITS, WEIGHT_BITS, fold, split, weight_codes
from ..isa.numerics import ACT_BITS, QUANT_INPUT_BITS, SCALE_BITS, quantize_per_token
from .arith import StepShift, bit_length, clamp, halve_shift, round_half_even

__all__ = ["TokenQuantizer", "command_layout", "input_layout", "output_layout", "scale_layout",
           "pack_scales"]

_VALUE_BITS = 32
_MULT_BITS = 16
#: Low bits of the fold's shift applied in its multiplier (arith.StepShift).
_FINE = 3
_EXP_BITS = 8
#: Length field of a command: vectors of 1 to 65535 elements.
_LENGTH_BITS = 16
#: ``top`` of each mode and ``log2(top + 1)`` (the multiply by ``top`` is a shift-subtract).
_TOP_SHIFT = {False: ACT_BITS - 1, True: WEIGHT_BITS - 1}
#: Quotient bits of both divisions: ``2**40 / D`` (at most 2**16) and ``X / top`` (below 2**18).
_DIVIDE_STEPS = 18
#: Normalised reciprocal divisor: ``A' * 2**(25 - n)`` lies in ``[2**24, 2**25)``.
_DIVISOR_BITS = QUANT_INPUT_BITS + 1
#: Narrowed values: ``|round(w / 2**d)| <= 2**24``.
_NARROW_BITS = QUANT_INPUT_BITS + 2
#: Cycles between the last pass-1 beat reaching the peak register and the first pass-2 beat:
#: narrowing the peak, normalising the divisors, the divider steps, rounding, normalising.
_SCALAR_CYCLES = 2 + _DIVIDE_STEPS + 2


def command_layout():
    """A command: ``length`` elements (1 to 65535), ``fold`` selects FOLD over PLAIN."""
    return data.StructLayout({"length": _LENGTH_BITS, "fold": 1})


def input_layout(lanes):
    """One input beat: ``lanes`` values and (FOLD only) their packed scales ``m | (e & 0xFF) <<
    16`` (``m`` unsigned 16 bits, ``e`` signed 8 bits)."""
    return data.StructLayout({"value": data.ArrayLayout(signed(_VALUE_BITS), lanes),
                              "scale": data.ArrayLayout(_MULT_BITS + _EXP_BITS, lanes)})


def output_layout(lanes):
    """One output beat: PLAIN codes (``lo`` 0), or FOLD high halves (``codes``) and low halves
    (``lo``)."""
    return data.StructLayout({"codes": data.ArrayLayout(signed(8), lanes),
                              "lo": data.ArrayLayout(signed(8), lanes)})


def scale_layout():
    """A vector's scale ``mult * 2**exp``."""
    return data.StructLayout({"mult": SCALE_BITS, "exp": signed(_EXP_BITS)})


def pack_scales(mult, exp):
    """Pack per-element scales ``(m, e)`` into the 24-bit ``scale`` field of :func:`input_layout`
    (numpy, int64)."""
    mult = np.asarray(mult, dtype=np.int64)
    exp = np.asarray(exp, dtype=np.int64)
    return (mult & 0xFFFF) | ((exp & 0xFF) << _MULT_BITS)


def _unpack_scales(scales):
    scales = np.asarray(scales, dtype=np.int64)
    mult = scales & 0xFFFF
    exp = ((scales >> _MULT_BITS) & 0xFF) ^ 0x80
    return mult, exp - 0x80


class _State(enum.Enum, shape=3):
    IDLE = 0
    PASS1 = 1
    SCALAR = 2
    PASS2 = 3
    SCALE = 4


class TokenQuantizer(wiring.Component):
    """Quantize one vector per command, ``lanes`` elements per beat, in two passes.

    Parameters
    ----------
    lanes : int
        Elements per beat (a power of two, 1 to 64).

    Raises
    ------
    ValueError
        If ``lanes`` is out of range.

    Contract
    --------
    * A ``cmd`` transfer ``(length, fold)`` starts a vector of ``length`` elements. The vector
      then arrives on ``i`` twice, ``ceil(length / lanes)`` beats each time: pass 1 finds the
      peak, pass 2 produces the codes. Lanes past ``length`` in the last beat are ignored
      (treated as 0; their outputs are 0). ``scale`` is used by FOLD only.
    * ``o`` carries one beat per pass-2 beat, in order: PLAIN, ``codes`` are
      :func:`~flightgen.isa.numerics.quantize_per_token` of the values and ``lo`` is 0; FOLD,
      ``codes`` and ``lo`` are the halves ``hi, lo`` of :func:`~flightgen.isa.attention.split`
      of :func:`~flightgen.isa.attention.weight_codes` of :func:`~flightgen.isa.attention.fold`
      of the values and scales. After the command's last ``o`` transfer, ``scale`` carries the
      vector's ``(mult, exp)`` (an all-zero vector: codes 0, scale ``(0, 0)``). The exponent
      always fits: it lies in [-29, 18] for every input (PLAIN values of 32 bits narrow by at
      most 8 bits, FOLD weights of :data:`~flightgen.isa.attention.FOLD_BITS` bits by at most
      24), so it is neither saturated nor wrapped.
    * A ``length`` of 0 is a no-op: no ``i`` beat is read, no ``o`` beat sent, ``scale`` is
      ``(0, 0)``.
    * One command at a time: ``cmd`` is ready only when the previous command's scale has left.
    * Throughput: each pass takes one beat per cycle; between the passes the unit spends
      :attr:`SCALAR_CYCLES` cycles on the reciprocal. A pass-2 beat leaves on ``o``
      :attr:`LATENCY` cycles after its ``i`` transfer (no stalls); :meth:`expected_cycles`
      gives a whole command. All streams obey the Amaranth stream rules (``i.ready`` follows
      ``o.ready`` combinationally during pass 2); stalls on ``i`` and backpressure on ``o`` and
      ``scale`` never lose or duplicate data. Reset returns the unit to idle.

    Members
    -------
    cmd : In(stream.Signature(command_layout()))
    i : In(stream.Signature(input_layout(lanes)))
    o : Out(stream.Signature(output_layout(lanes)))
    scale : Out(stream.Signature(scale_layout()))
    """

    #: Cycles spent between the passes (the reciprocal and the scale).
    SCALAR_CYCLES = _SCALAR_CYCLES
    #: Cycles from a pass-2 ``i`` transfer to its ``o`` transfer (no stalls): the input
    #: register, the fold product, the fold shift, the narrowing, the reciprocal product, the
    #: multiply by ``top``, the rounding (output register).
    LATENCY = 7
    #: Cycles from the last pass-1 ``i`` transfer to the first cycle of the scalars: the input
    #: register, the fold product, the fold shift, the lane maximum, the peak register.
    PEAK_LATENCY = 5

    def __init__(self, lanes=4):
        if not isinstance(lanes, int) or not 1 <= lanes <= 64 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two from 1 to 64, not {lanes!r}")
        self.lanes = lanes
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "i": In(stream.Signature(input_layout(lanes))),
            "o": Out(stream.Signature(output_layout(lanes))),
            "scale": Out(stream.Signature(scale_layout())),
        })

    def beats(self, length):
        """Beats of each pass for a vector of ``length`` elements."""
        return -(-length // self.lanes)

    def expected_cycles(self, length):
        """Cycles of one command with sources that never idle and sinks always ready, from the
        ``cmd`` transfer to the ``scale`` transfer, both included: the command, pass 1, the
        peak pipeline, the scalars, pass 2, the output pipeline, the scale:
        ``2 * beats + PEAK_LATENCY + SCALAR_CYCLES + LATENCY + 1`` (``2 * beats + 35``; 2 for
        length 0). The next command's ``cmd`` transfer can follow in the next cycle."""
        if length == 0:
            return 2
        # the cmd cycle, pass 1 (its last beat at cycle `beats`), the peak, the scalars, pass 2
        # (its last beat `beats - 1` cycles after its first), its last output, the scale
        beats = self.beats(length)
        return 2 * beats + self.PEAK_LATENCY + self.SCALAR_CYCLES + self.LATENCY + 1

    def reference(self, values, scales=None, fold=False):
        """Expected outputs for one vector (numpy).

        ``values`` are the ``length`` elements; ``scales`` (FOLD only) are packed 24-bit
        scales (:func:`pack_scales`) or a pair ``(m, e)`` of arrays. Returns ``(codes, lo,
        (mult, exp))``: PLAIN codes and ``lo`` 0, or FOLD high and low halves.
        """
        return reference(values, scales, fold)

    def elaborate(self, platform):
        m = Module()
        P = self.lanes

        state = Signal(_State)
        length = Signal(_LENGTH_BITS)
        fold_mode = Signal()
        left = Signal(_LENGTH_BITS + 1)  # elements not yet read in the current pass
        peak = Signal(unsigned(FOLD_BITS + 1))  # max |w| <= 2**47, one more bit: no sign
        result = Signal(scale_layout())
        advance = ~self.o.valid | self.o.ready  # the whole datapath moves together
        pass1_done = Signal()
        m.d.comb += [self.scale.payload.eq(result),
                     self.scale.valid.eq(state == _State.SCALE),
                     self.cmd.ready.eq(state == _State.IDLE)]

        # -- input: both passes read beats while elements are left --------------------------
        reading = ((state == _State.PASS1) | (state == _State.PASS2)) & (left != 0)
        m.d.comb += self.i.ready.eq(reading & advance)
        take = self.i.valid & self.i.ready
        with m.If(take):
            m.d.sync += left.eq(Mux(left > P, left - P, 0))

        # -- the datapath: a pipeline enabled by `advance` ----------------------------------
        s0_valid, s0_last = Signal(), Signal()
        values = [Signal(signed(_VALUE_BITS), name=f"value{k}") for k in range(P)]
        scales = [Signal(_MULT_BITS + _EXP_BITS, name=f"scale{k}") for k in range(P)]
        s1_valid, s1_last = Signal(), Signal()
        # the fold shift: its fine part in the multiplier, the rest picks a window
        splits = [StepShift(-scales[k][_MULT_BITS:].as_signed(), max_right=FOLD_BITS,
                            max_left=FOLD_BITS, fine_bits=_FINE) for k in range(P)]
        products = [Signal(signed(FOLD_BITS + (1 << _FINE) - 1), name=f"fold_product{k}")
                    for k in range(P)]
        steps = [Signal(splits[k].steps_shape, name=f"fold_steps{k}") for k in range(P)]
        s2_valid, s2_last = Signal(), Signal()
        weights = [Signal(signed(FOLD_BITS), name=f"w{k}") for k in range(P)]
        s3_valid, s3_last = Signal(), Signal()
        beat_peak = Signal(unsigned(FOLD_BITS))
        narrowed = [Signal(signed(_NARROW_BITS), name=f"narrowed{k}") for k in range(P)]
        s4_valid, s4_last = Signal(), Signal()
        scaled = [Signal(signed(_NARROW_BITS + SCALE_BITS), name=f"scaled{k}")
                  for k in range(P)]
        s5_valid, s5_last = Signal(), Signal()
        topped = [Signal(signed(_NARROW_BITS + SCALE_BITS + _TOP_SHIFT[True] + 1),
                         name=f"topped{k}") for k in range(P)]
        o_last = Signal()

        # scalars, fixed during pass 2
        drop = Signal(range(FOLD_BITS - QUANT_INPUT_BITS + 1))
        r_mult = Signal(SCALE_BITS)
        r_shift = Signal(range(SCALE_BITS + _DIVISOR_BITS + 1))

        with m.If(advance):
            # s0: the input register; lanes past the length read as 0
            m.d.sync += [s0_valid.eq(take), s0_last.eq(left <= P)]
            for k in range(P):
                keep = take & (left > k)
                m.d.sync += [values[k].eq(Mux(keep, self.i.payload.value[k], 0)),
                             scales[k].eq(self.i.payload.scale[k])]
            # s1: the fold product (PLAIN: the value itself)
            m.d.sync += [s1_valid.eq(s0_valid), s1_last.eq(s0_last)]
            for k in range(P):
                mult = scales[k][:_MULT_BITS] << splits[k].fine
                m.d.sync += [products[k].eq(Mux(fold_mode, values[k] * mult, values[k])),
                             steps[k].eq(Mux(fold_mode, splits[k].steps, 0))]
            # s2: the fold shift, rounded, saturated to FOLD_BITS
            m.d.sync += [s2_valid.eq(s1_valid), s2_last.eq(s1_last)]
            for k in range(P):
                m.d.sync += weights[k].eq(splits[k].round(products[k], steps[k], FOLD_BITS))
            # s3: pass 1, the beat's peak; pass 2, the narrowed values
            m.d.sync += [s3_valid.eq(s2_valid), s3_last.eq(s2_last)]
            magnitudes = [Mux(w < 0, -w, w).as_unsigned() for w in weights]
            while len(magnitudes) > 1:
                magnitudes = [Mux(a > b, a, b)
                              for a, b in zip(magnitudes[::2], magnitudes[1::2], strict=True)]
            m.d.sync += beat_peak.eq(magnitudes[0])
            for k in range(P):
                halved, sticky = halve_shift(weights[k], drop)
                m.d.sync += narrowed[k].eq(round_half_even(halved, sticky))
            # s4: times the reciprocal (a 26 x 17-bit product); pass-2 beats only go on
            m.d.sync += [s4_valid.eq(s3_valid & (state == _State.PASS2)), s4_last.eq(s3_last)]
            for k in range(P):
                m.d.sync += scaled[k].eq(narrowed[k] * r_mult)
            # s5: times top = 2**t - 1
            m.d.sync += [s5_valid.eq(s4_valid), s5_last.eq(s4_last)]
            for k in range(P):
                m.d.sync += topped[k].eq(
                    Mux(fold_mode, scaled[k] << _TOP_SHIFT[True],
                        scaled[k] << _TOP_SHIFT[False]) - scaled[k])
            # output register: round, clip, split
            m.d.sync += [self.o.valid.eq(s5_valid), o_last.eq(s5_last)]
            for k in range(P):
                halved, sticky = halve_shift(topped[k], r_shift)
                code = Signal(signed(WEIGHT_BITS + 1), name=f"code{k}")
                rounded = round_half_even(halved, sticky)
                top = Mux(fold_mode, (1 << _TOP_SHIFT[True]) - 1, (1 << _TOP_SHIFT[False]) - 1)
                m.d.comb += code.eq(clamp(rounded, -top, top))
                lo = code[:8].as_signed()
                hi = (code + 128) >> 8  # (code - lo) / 256
                m.d.sync += [self.o.payload.codes[k].eq(Mux(fold_mode, hi, code[:8])),
                             self.o.payload.lo[k].eq(Mux(fold_mode, lo, 0))]

        # pass 1: the running peak
        with m.If(s3_valid & (state == _State.PASS1)):
            m.d.sync += peak.eq(Mux(beat_peak > peak, beat_peak, peak))
            m.d.comb += pass1_done.eq(s3_last)

        # -- scalars: a sequence of SCALAR_CYCLES cycles between the passes -----------------
        step = Signal(range(_SCALAR_CYCLES))
        n = Signal(range(_DIVISOR_BITS + 1))
        narrow_peak = Signal(_DIVISOR_BITS)  # A' <= 2**24
        zero = Signal()
        exp0 = Signal(signed(_EXP_BITS))  # d - t
        divisor = Signal(_DIVISOR_BITS)
        r_rem = Signal(_DIVISOR_BITS + 1)
        r_quo = Signal(_DIVIDE_STEPS)
        top_shift = _TOP_SHIFT[True] + 1
        s_rem = Signal(top_shift + 1)
        s_quo = Signal(_DIVIDE_STEPS)
        s_low = Signal(_DIVIDE_STEPS)  # the dividend's bits still to shift in
        quotient = Signal(_DIVIDE_STEPS + 1)  # div_round(A' * 2**t, top)
        divide_top = Mux(fold_mode, (1 << _TOP_SHIFT[True]) - 1, (1 << _TOP_SHIFT[False]) - 1)

        with m.If(state == _State.SCALAR):
            m.d.sync += step.eq(step + 1)
            with m.If(step == 0):  # the narrowing of the peak
                peak_length = bit_length(m, peak, "peak_length")
                d_now = Mux(peak_length > QUANT_INPUT_BITS, peak_length - QUANT_INPUT_BITS,
                            0).as_unsigned()[:len(drop)]
                halved, sticky = halve_shift(peak, d_now)
                m.d.sync += [drop.eq(d_now), narrow_peak.eq(round_half_even(halved, sticky))]
            with m.Elif(step == 1):  # normalised divisors, the dividends
                safe = Mux(narrow_peak == 0, 1, narrow_peak)
                n_now = bit_length(m, safe, "safe_length")
                t_full = Mux(fold_mode, SCALE_BITS + WEIGHT_BITS - 1,
                             SCALE_BITS + ACT_BITS - 1) - n_now
                t_now = Mux(t_full > 0, t_full, 0).as_unsigned()[:5]
                dividend = Signal(top_shift + 1 + _DIVIDE_STEPS, name="scale_dividend")
                m.d.comb += dividend.eq(safe << t_now)
                m.d.sync += [n.eq(n_now), zero.eq(narrow_peak == 0),
                             exp0.eq(drop - t_now),
                             divisor.eq(safe << (_DIVISOR_BITS - n_now).as_unsigned()[:5]),
                             r_rem.eq(1 << (SCALE_BITS - 1 + _DIVISOR_BITS - _DIVIDE_STEPS)),
                             r_quo.eq(0),
                             s_rem.eq(dividend[_DIVIDE_STEPS:]), s_low.eq(dividend),
                             s_quo.eq(0)]
            with m.Elif(step < 2 + _DIVIDE_STEPS):  # 2**40 / divisor and dividend / top
                r_trial = Cat(0, r_rem)
                r_fits = r_trial >= divisor
                s_trial = Cat(s_low[-1], s_rem)
                s_fits = s_trial >= divide_top
                m.d.sync += [r_rem.eq(Mux(r_fits, r_trial - divisor, r_trial)),
                             r_quo.eq(Cat(r_fits, r_quo)),
                             s_rem.eq(Mux(s_fits, s_trial - divide_top, s_trial)),
                             s_quo.eq(Cat(s_fits, s_quo)),
                             s_low.eq(s_low << 1)]
            with m.Elif(step == 2 + _DIVIDE_STEPS):  # round both quotients
                r_twice = r_rem << 1
                r_up = (r_twice > divisor) | ((r_twice == divisor) & r_quo[0])
                r_raw = r_quo + r_up
                carry = r_raw == (1 << SCALE_BITS)
                s_twice = s_rem << 1
                s_up = (s_twice > divide_top) | ((s_twice == divide_top) & s_quo[0])
                m.d.sync += [r_mult.eq(Mux(carry, r_raw >> 1, r_raw)),
                             r_shift.eq(SCALE_BITS - 1 + n - carry),
                             quotient.eq(s_quo + s_up)]
            with m.Else():  # normalise the scale to 16 bits
                q_length = bit_length(m, quotient, "quotient_length")
                extra = Mux(q_length > SCALE_BITS, q_length - SCALE_BITS, 0).as_unsigned()[:2]
                halved, sticky = halve_shift(quotient, extra)
                normal = round_half_even(halved, sticky)
                over = normal == (1 << SCALE_BITS)
                m.d.sync += [result.mult.eq(Mux(zero, 0, Mux(over, normal >> 1, normal))),
                             result.exp.eq(Mux(zero, 0, exp0 + extra + over)),
                             state.eq(_State.PASS2), left.eq(length), step.eq(0)]

        # -- control ------------------------------------------------------------------------
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.cmd.valid):
                    m.d.sync += [length.eq(self.cmd.payload.length),
                                 fold_mode.eq(self.cmd.payload.fold),
                                 left.eq(self.cmd.payload.length), peak.eq(0), step.eq(0),
                                 result.mult.eq(0), result.exp.eq(0)]
                    m.d.sync += state.eq(Mux(self.cmd.payload.length == 0, _State.SCALE,
                                             _State.PASS1))
            with m.Case(_State.PASS1):
                with m.If(pass1_done):
                    m.d.sync += state.eq(_State.SCALAR)
            with m.Case(_State.PASS2):
                with m.If(self.o.valid & self.o.ready & o_last):
                    m.d.sync += state.eq(_State.SCALE)
            with m.Case(_State.SCALE):
                with m.If(self.scale.ready):
                    m.d.sync += state.eq(_State.IDLE)
        return m


def reference(values, scales=None, fold_mode=False):
    """Expected outputs of :class:`TokenQuantizer` for one vector (numpy), from the ISA
    functions: ``(codes, lo, (mult, exp))`` (see :meth:`TokenQuantizer.reference`)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, (np.int64(0), np.int64(0))
    if not fold_mode:
        codes, (mult, exp) = quantize_per_token(values)
        return codes.astype(np.int64), np.zeros_like(values), (mult, exp)
    if isinstance(scales, tuple):
        mult, exp = (np.asarray(part, dtype=np.int64).ravel() for part in scales)
    else:
        mult, exp = _unpack_scales(np.asarray(scales).ravel())
    codes, (w_mult, w_exp) = weight_codes(fold(values, (mult, exp)))
    hi, lo = split(codes)
    return hi, lo, (w_mult, w_exp)
