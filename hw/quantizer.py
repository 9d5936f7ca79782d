"""Block quantizer: FX vectors to INT8 codes with one scale per group, as the matrix engine
takes its activations (and the KV cache its keys and values).

Computes :func:`flightgen.isa.numerics.quantize_per_group` bit for bit (each group exactly as
:func:`~flightgen.isa.numerics.quantize_per_token`):

1. ``A = max |v|`` over the group; ``d = max(bit_length(A) - 24, 0)``; ``v' = round(v / 2**d)``
   (so ``A' = round(A / 2**d)``: rounding half to even is odd-symmetric and monotonic);
2. ``(r, e) = reciprocal(max(A', 1))``, by a pipelined restoring divider (17 quotient bits);
3. ``code = clip(round(v' * 127 r * 2**e), -127, 127)``;
4. scale ``= normalize_scale(div_round(A' * 2**s, 127), d - s)`` with
   ``s = max(23 - bit_length(A'), 0)``; the division by 127 is a multiply by
   ``ceil(2**33 / 127)`` (exact below 2**26) and a remainder check.

Dataflow: beats are collected into one of several group slots of a buffer while the group's
peak accumulates; the group's scalars go through a fixed pipeline; then the slot is read back
and the codes leave, one output beat per input beat, each carrying its group's scale.
"""

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..isa.numerics import QUANT_INPUT_BITS, SCALE_BITS, quantize_per_group
from .arith import bit_length, clamp, halve_shift, round_half_even

__all__ = ["BlockQuantizer", "quantized_layout"]

_FX_BITS = 32
_TOP = 127
#: Quotient bits of the reciprocal (``2**(15 + n) / v`` lies in ``(2**15, 2**16]``).
_RECIPROCAL_STEPS = SCALE_BITS + 1
#: Normalised divisor width: ``v * 2**(25 - n)`` lies in ``[2**24, 2**25)``.
_DIVISOR_BITS = QUANT_INPUT_BITS + 1
#: ``floor(x / 127) = (x * _MAGIC) >> 33`` for ``0 <= x < 2**26``.
_MAGIC = -(-(1 << 33) // _TOP)


def quantized_layout(lanes):
    """One output beat: ``lanes`` codes and their group's scale."""
    return data.StructLayout({
        "codes": data.ArrayLayout(signed(8), lanes),
        "mult": unsigned(SCALE_BITS),
        "exp": signed(8),
    })


class BlockQuantizer(wiring.Component):
    """Quantize FX beats of ``lanes`` values in groups of ``group`` values.

    Parameters
    ----------
    lanes : int
        Values per beat (a power of two, 1 to 64).
    group : int
        Values per scale: a multiple of ``lanes`` (32 for linear-layer inputs, the head size
        for the KV cache).

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Contract
    --------
    * ``o`` carries one beat per ``i`` beat, in order: the codes of the input beat's values and
      their group's ``(mult, exp)``, exactly :func:`~flightgen.isa.numerics.quantize_per_group`
      (an all-zero group has codes 0 and scale ``(0, 0)``).
    * Throughput one beat per cycle; a group's first output beat follows its last input beat by
      :attr:`LATENCY` cycles (no stalls). Both streams obey the Amaranth stream rules; reset
      empties the unit.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(32), lanes)))
    o : Out(stream.Signature(quantized_layout(lanes)))
    """

    def __init__(self, lanes=4, group=32):
        if not isinstance(lanes, int) or not 1 <= lanes <= 64 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two from 1 to 64, not {lanes!r}")
        if not isinstance(group, int) or group < lanes or group % lanes:
            raise ValueError(f"group must be a positive multiple of {lanes}, not {group!r}")
        self.lanes, self.group = lanes, group
        self.beats = group // lanes
        #: Scalar pipeline depth: drop and narrowing, the divider, rounding, the scale.
        self.scalar_latency = 2 + _RECIPROCAL_STEPS + 2
        #: Group slots: enough to keep collecting while the scalars of earlier groups finish.
        self.slots = 3 + -(-(self.scalar_latency + 2) // self.beats)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(_FX_BITS), lanes))),
            "o": Out(stream.Signature(quantized_layout(lanes))),
        })

    @property
    def LATENCY(self):  # noqa: N802
        """Cycles from a group's last input transfer to its first output transfer, less one:
        the peak register, the scalar pipeline, the result FIFO, the slot read and the code
        multiply and rounding."""
        return 1 + self.scalar_latency + 1 + 1 + 3

    def reference(self, values):
        """Codes and scales of ``values`` (numpy, shape ``(..., group * k)``)."""
        return quantize_per_group(values, self.group)

    def expected_cycles(self, beats):
        """Cycles to quantize ``beats`` beats (whole groups) with a source that never idles and
        a sink that is always ready, from the first input transfer to the last output transfer,
        both included: the input beats, the last group's latency, its other output beats."""
        return beats + self.LATENCY + self.beats - 1

    def elaborate(self, platform):
        m = Module()
        P, beats, slots = self.lanes, self.beats, self.slots
        buffer = Memory(shape=data.ArrayLayout(signed(_FX_BITS), P), depth=slots * beats,
                        init=[])
        m.submodules.buffer = buffer
        write = buffer.write_port()
        read = buffer.read_port()

        # -- collect: beats into the current slot, the peak of |v| --------------------------
        in_slot = Signal(range(slots))
        # at least one bit: a zero-width counter (one beat per group) becomes a [-1:0] wire
        in_beat = Signal(range(max(beats, 2)))
        in_flight = Signal(range(slots + 1))  # groups collected or collecting, not yet emitted
        peak = Signal(unsigned(_FX_BITS + 1))
        take = self.i.valid & self.i.ready
        magnitudes = [Mux(self.i.payload[k] < 0, -self.i.payload[k], self.i.payload[k])
                      for k in range(P)]
        while len(magnitudes) > 1:
            magnitudes = [Mux(a > b, a, b) for a, b in zip(magnitudes[::2], magnitudes[1::2],
                                                           strict=True)]
        beat_peak = magnitudes[0]
        group_done = take & (in_beat == beats - 1)
        emitted = Signal()  # a group's last output beat left this cycle
        m.d.comb += [self.i.ready.eq((in_beat != 0) | (in_flight < slots)),
                     write.addr.eq(in_slot * beats + in_beat), write.data.eq(self.i.payload),
                     write.en.eq(take)]
        with m.If(take):
            m.d.sync += [in_beat.eq(Mux(group_done, 0, in_beat + 1)),
                         peak.eq(Mux((in_beat == 0) | (beat_peak > peak), beat_peak, peak))]
            with m.If(group_done):
                m.d.sync += in_slot.eq(Mux(in_slot == slots - 1, 0, in_slot + 1))
        with m.If((take & (in_beat == 0)) & ~emitted):
            m.d.sync += in_flight.eq(in_flight + 1)
        with m.Elif(~(take & (in_beat == 0)) & emitted):
            m.d.sync += in_flight.eq(in_flight - 1)

        # -- scalars: a fixed pipeline, one group per cycle at most -------------------------
        valid = Signal(name="s_valid0")
        group_peak = Signal.like(peak)
        m.d.sync += valid.eq(group_done)
        m.d.sync += group_peak.eq(Mux(beat_peak > peak, beat_peak, peak)
                                  if beats > 1 else beat_peak)
        # stage 1: the drop and the narrowed peak
        length = bit_length(m, group_peak, "peak_length")
        drop = Signal(range(_FX_BITS + 2), name="drop")
        narrowed = Signal(unsigned(QUANT_INPUT_BITS + 1), name="narrowed_peak")
        d_now = Mux(length > QUANT_INPUT_BITS, length - QUANT_INPUT_BITS, 0).as_unsigned()[:6]
        halved, sticky = halve_shift(group_peak, d_now)
        valid1 = Signal(name="s_valid1")
        m.d.sync += [valid1.eq(valid), drop.eq(d_now), narrowed.eq(round_half_even(halved,
                                                                                   sticky))]
        # stage 2: safe value, its bit length n, the normalised divisor, the scale's dividend
        safe = Mux(narrowed == 0, 1, narrowed)
        n_now = bit_length(m, safe, "safe_length")
        valid2 = Signal(name="s_valid2")
        divisor = Signal(_DIVISOR_BITS, name="divisor")
        n = Signal(range(_DIVISOR_BITS + 1), name="n")
        zero = Signal(name="zero")
        dividend = Signal(unsigned(QUANT_INPUT_BITS + 2), name="scale_dividend")
        scale_shift = Signal(range(QUANT_INPUT_BITS), name="scale_shift")
        drop2 = Signal.like(drop, name="drop2")
        s_now = Mux(n_now < 23, 23 - n_now, 0).as_unsigned()[:5]
        normalise = (_DIVISOR_BITS - n_now).as_unsigned()[:5]
        m.d.sync += [valid2.eq(valid1), divisor.eq(safe << normalise),
                     n.eq(n_now), zero.eq(narrowed == 0), dividend.eq(safe << s_now),
                     scale_shift.eq(s_now), drop2.eq(drop)]
        # stages 3..19: the restoring divider, 2**40 / divisor, one quotient bit per stage
        remainder = Signal(_DIVISOR_BITS + 1, name="rem_init")
        m.d.comb += remainder.eq(1 << (_DIVISOR_BITS - 2))  # 2**23: below every divisor
        carried = {"divisor": divisor, "n": n, "zero": zero, "dividend": dividend,
                   "scale_shift": scale_shift, "drop": drop2}
        quotient = Signal(_RECIPROCAL_STEPS, name="q_init")
        m.d.comb += quotient.eq(0)
        step_valid = valid2
        for step in range(_RECIPROCAL_STEPS):
            trial = Cat(0, remainder)  # 2 * remainder (the dividend's remaining bits are 0)
            fits = trial >= carried["divisor"]
            nxt_r = Signal(_DIVISOR_BITS + 1, name=f"rem{step}")
            nxt_q = Signal(_RECIPROCAL_STEPS, name=f"q{step}")
            nxt_v = Signal(name=f"s_valid_div{step}")
            m.d.sync += [nxt_r.eq(Mux(fits, trial - carried["divisor"], trial)),
                         nxt_q.eq(Cat(fits, quotient[:-1])), nxt_v.eq(step_valid)]
            moved = {}
            for key, value in carried.items():
                moved[key] = Signal.like(value, name=f"{key}_d{step}")
                m.d.sync += moved[key].eq(value)
            carried, remainder, quotient, step_valid = moved, nxt_r, nxt_q, nxt_v
        # stage 20: round the reciprocal (2**16 carries into the exponent); the scale's
        # quotient by 127.
        twice = remainder << 1
        up = (twice > carried["divisor"]) | ((twice == carried["divisor"]) & quotient[0])
        mult_raw = quotient + up
        carry = mult_raw == (1 << SCALE_BITS)
        valid3 = Signal(name="s_valid3")
        r_mult = Signal(SCALE_BITS, name="r_mult")
        r_shift = Signal(range(64), name="r_shift")  # -exp of the reciprocal
        q127 = (carried["dividend"] * _MAGIC) >> 33
        rem127 = carried["dividend"] - q127 * _TOP
        q2 = Signal(unsigned(QUANT_INPUT_BITS + 2), name="q127")
        zero3 = Signal(name="zero3")
        scale_exp0 = Signal(signed(10), name="scale_exp0")
        m.d.sync += [valid3.eq(step_valid),
                     r_mult.eq(Mux(carry, mult_raw >> 1, mult_raw)),
                     r_shift.eq(SCALE_BITS - 1 + carried["n"] - carry),
                     q2.eq(q127 + (2 * rem127 > _TOP)), zero3.eq(carried["zero"]),
                     scale_exp0.eq(carried["drop"] - carried["scale_shift"])]
        drop3 = Signal.like(drop, name="drop3")
        m.d.sync += drop3.eq(carried["drop"])
        # stage 21: normalize the scale to 16 bits
        q2_length = bit_length(m, q2, "q2_length")
        extra = Mux(q2_length > SCALE_BITS, q2_length - SCALE_BITS, 0).as_unsigned()[:4]
        halved, sticky = halve_shift(q2, extra)
        normal = round_half_even(halved, sticky)
        top = normal == (1 << SCALE_BITS)
        result = Signal(data.StructLayout({"drop": range(_FX_BITS + 2), "r_mult": SCALE_BITS,
                                           "r_shift": 6, "mult": SCALE_BITS, "exp": signed(8),
                                           "zero": 1}))
        valid4 = Signal(name="s_valid4")
        m.d.sync += [valid4.eq(valid3),
                     result.drop.eq(drop3), result.r_mult.eq(r_mult),
                     result.r_shift.eq(r_shift), result.zero.eq(zero3),
                     result.mult.eq(Mux(zero3, 0, Mux(top, normal >> 1, normal))),
                     result.exp.eq(Mux(zero3, 0, scale_exp0 + extra + top))]

        # -- emit: the group's beats from its slot, codes P per cycle -------------------------
        m.submodules.results = results = SyncFIFO(width=len(result.as_value()), depth=slots)
        m.d.comb += [results.w_data.eq(result), results.w_en.eq(valid4)]
        scalars = data.View(result.shape(), results.r_data)
        out_slot = Signal(range(slots))
        out_beat = Signal(range(max(beats, 2)))
        advance = ~self.o.valid | self.o.ready
        issue = advance & results.r_rdy
        last_beat = out_beat == beats - 1
        m.d.comb += [read.addr.eq(out_slot * beats + out_beat), read.en.eq(advance),
                     results.r_en.eq(issue & last_beat), emitted.eq(issue & last_beat)]
        with m.If(issue):
            m.d.sync += out_beat.eq(Mux(last_beat, 0, out_beat + 1))
            with m.If(last_beat):
                m.d.sync += out_slot.eq(Mux(out_slot == slots - 1, 0, out_slot + 1))
        # e1: slot data arrives (read latency 1), scalars held beside it
        e_valid = Signal(name="e_valid1")
        e_scalars = Signal.like(result, name="e_scalars1")
        with m.If(advance):
            m.d.sync += [e_valid.eq(issue), e_scalars.eq(scalars)]
        # e2: narrow each value; e3: times 127 r; e4 (output register): round, clip
        narrowed_v = [Signal(signed(QUANT_INPUT_BITS + 2), name=f"v{k}") for k in range(P)]
        products = [Signal(signed(QUANT_INPUT_BITS + 2 + 23), name=f"p{k}") for k in range(P)]
        e2_valid, e3_valid = Signal(name="e_valid2"), Signal(name="e_valid3")
        e2_scalars = Signal.like(result, name="e_scalars2")
        e3_scalars = Signal.like(result, name="e_scalars3")
        with m.If(advance):
            m.d.sync += [e2_valid.eq(e_valid), e2_scalars.eq(e_scalars),
                         e3_valid.eq(e2_valid), e3_scalars.eq(e2_scalars),
                         self.o.valid.eq(e3_valid),
                         self.o.payload.mult.eq(e3_scalars.mult),
                         self.o.payload.exp.eq(e3_scalars.exp)]
            for k in range(P):
                halved, sticky = halve_shift(read.data[k], e_scalars.drop)
                m.d.sync += [narrowed_v[k].eq(round_half_even(halved, sticky)),
                             products[k].eq(narrowed_v[k] * (e2_scalars.r_mult * _TOP))]
                halved, sticky = halve_shift(products[k], e3_scalars.r_shift)
                code = round_half_even(halved, sticky)
                m.d.sync += self.o.payload.codes[k].eq(
                    Mux(e3_scalars.zero, 0,
                        clamp(code, -_TOP, _TOP)))
        return m


def reference_beats(quantizer, values):
    """The output beats of :class:`BlockQuantizer` for ``values`` (numpy): codes ``(beats,
    lanes)`` and per-beat ``(mult, exp)``."""
    values = np.asarray(values, dtype=np.int64).reshape(-1, quantizer.group)
    codes, (mult, exp) = quantize_per_group(values, quantizer.group)
    per_beat = quantizer.beats
    return (codes.reshape(-1, quantizer.lanes), np.repeat(mult.ravel(), per_beat),
            np.repeat(exp.ravel(), per_beat))
