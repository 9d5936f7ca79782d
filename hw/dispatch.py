"""The dispatcher's hardware: the instruction decoder and the token matrix.

:class:`Decoder` resolves and checks one instruction word exactly as
:func:`flightgen.isa.machine.resolve` does (same error codes, same resolved fields), so a word
the ISA simulator refuses is refused here with the same :class:`~flightgen.isa.machine.
ErrorCode`. :class:`TokenMatrix` holds the tokens outstanding between every pair of units.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.instructions import (
    ADAPTIVE,
    FORMATS,
    OPCODE_UNIT,
    REGISTERS,
    WORD_BITS,
    Buffer,
    Opcode,
    SysOp,
    Unit,
)
from ..isa.machine import BANKED, ErrorCode
from ..isa.matrix import BITS_CODES, KEEP_CODES, MatrixMode
from ..isa.numerics import ACT_GROUP
from ..isa.vector import B_IS_VECTOR, READS_B, VectorOp
from .mpe import supports

__all__ = ["Decoder", "TokenMatrix", "decoded_layout", "matrix_beats_layout", "UNITS"]

#: Units with a queue (SYS runs in the dispatcher).
UNITS = (Unit.LOAD, Unit.STORE, Unit.MATRIX, Unit.VECTOR)
_COUNT_BITS = 40

#: Beats of each matrix-engine stream of a command (computed once, by the decoder).
matrix_beats_layout = data.StructLayout({
    "act": _COUNT_BITS, "weights": _COUNT_BITS, "masks": _COUNT_BITS, "scales": _COUNT_BITS,
})

decoded_layout = data.StructLayout({
    "word": WORD_BITS,  # adaptive fields resolved, their multipliers 0
    "pc": 32,
    "unit": Unit,
    "error": ErrorCode,
    "matrix": matrix_beats_layout,
})


def _ceil_shift(value, shift):
    """``ceil(value / 2**shift)`` for a non-negative ``shift`` known at elaboration."""
    if shift <= 0:
        return value << -shift
    return (value + ((1 << shift) - 1)) >> shift


class Decoder(wiring.Component):
    """Resolve and check instruction words.

    Contract
    --------
    * One ``i`` transfer (a word and its ``pc``) gives one ``o`` transfer four cycles later at
      the earliest: the word with its adaptive fields replaced by ``f + f_mul * r[reg]`` (the
      multipliers cleared), the executing unit, the error code of
      :func:`flightgen.isa.machine.resolve` (``NONE`` for a legal word) and, for ``MATRIX``,
      the beats of each stream.
    * ``registers`` must be stable while a word is being decoded.
    * One word at a time; ``o`` obeys the stream rules. Reset empties it.

    Parameters
    ----------
    config : flightgen.isa.machine.CoreConfig

    Members
    -------
    i : In(stream.Signature({"word": 256, "pc": 32}))
    registers : In(ArrayLayout(32, 7))
    o : Out(stream.Signature(decoded_layout))
    """

    def __init__(self, config):
        self.config = config
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"word": WORD_BITS, "pc": 32}))),
            "registers": In(data.ArrayLayout(32, REGISTERS - 1)),
            "o": Out(stream.Signature(decoded_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        c, g = self.config, self.config.geometry
        word = Signal(WORD_BITS)
        pc = Signal(32)
        stage = Signal(range(4))
        out = Signal(decoded_layout)
        m.d.comb += [self.o.payload.eq(out), self.i.ready.eq(stage == 0),
                     self.o.valid.eq(stage == 3)]

        opcode = word[:4]
        header = FORMATS[Opcode.SYS](word).header
        reg = header.reg
        value = Signal(32)
        m.d.comb += value.eq(Mux(reg == 0, 0, self.registers.as_value().word_select(
            (reg - 1)[:3], 32)))

        # Stage 1: adaptive fields.
        resolved = Signal(WORD_BITS)
        overflow = Signal()
        with m.Switch(opcode):
            for op in Opcode:
                with m.Case(op.value):
                    view = FORMATS[op](word)
                    new = Signal(WORD_BITS, name=f"resolved_{op.name.lower()}")
                    m.d.comb += new.eq(word)
                    bad = []
                    for name in ADAPTIVE[op]:
                        imm, mul = getattr(view, name), getattr(view, f"{name}_mul")
                        total = Signal(len(imm) + 1 + len(mul) + 32, name=f"{name}_{op.name}")
                        m.d.comb += total.eq(imm + mul * value)
                        bad.append(total[len(imm):] != 0)
                        target = FORMATS[op](new)
                        m.d.comb += [getattr(target, name).eq(total),
                                     getattr(target, f"{name}_mul").eq(0)]
                    m.d.comb += [resolved.eq(new), overflow.eq(Cat(*bad).any() if bad else 0)]

        r = Signal(WORD_BITS)
        r_overflow = Signal()

        # Stage 2 (on the resolved word): counts, spans and checks.
        error = Signal(ErrorCode)
        beats = Signal(matrix_beats_layout)
        bad_field = Signal()
        misaligned = Signal()
        out_of_range = Signal()

        def span(line, count, bits, lines):
            """Whether ``count`` beats of ``bits`` from ``line`` run past ``lines`` (never when
            ``count`` is 0)."""
            per = c.beat_lines(bits)
            return (count != 0) & ((line + count * per) > lines)

        load = FORMATS[Opcode.LOAD](r)
        tr_bad = Signal()
        m.d.comb += tr_bad.eq((load.port >= c.hbm_ports) | (load.count2 == 0) |
                              (load.count3 == 0))
        items = Signal(_COUNT_BITS + 24)
        m.d.comb += items.eq(load.length * load.count2 * load.count3)
        # a striped transfer: at most load_lanes ports, port aligned; a striped LOAD also
        # into WGT or META, line and length aligned
        stripe_low = Signal(3)  # 2**stripe - 1
        with m.Switch(load.stripe):
            for code in range(4):
                with m.Case(code):
                    m.d.comb += stripe_low.eq((1 << code) - 1)
        stripe_bad, load_stripe_bad = Signal(), Signal()
        widest = c.load_lanes.bit_length() - 1
        # (when every stripe code is supported, no comparison: lint flags a constant one)
        too_wide = load.stripe > widest if widest < (1 << len(load.stripe)) - 1 else Const(0)
        m.d.comb += [
            stripe_bad.eq((load.stripe != 0) & (
                too_wide | (load.port & stripe_low).any() |
                (load.port + stripe_low >= c.hbm_ports))),
            load_stripe_bad.eq(stripe_bad | (load.stripe != 0) & (
                ~load.buffer.as_value().matches(*(b.value for b in BANKED)) |
                ((load.line | load.length) & stripe_low).any())),
        ]
        depth = Signal(17)
        with m.Switch(load.buffer):
            for b in Buffer:
                with m.Case(b.value):
                    m.d.comb += depth.eq(c.lines(b))
        step = c.line_bytes.bit_length() - 1
        mat = FORMATS[Opcode.MATRIX](r)
        vec = FORMATS[Opcode.VECTOR](r)
        qnt = FORMATS[Opcode.QUANT](r)
        sys = FORMATS[Opcode.SYS](r)

        # matrix stream beats (as flightgen.isa.matrix.MatrixStreams)
        keep_log = Signal(3)  # log2 of the kept columns of 16
        with m.Switch(mat.keep):
            for keep, code in KEEP_CODES.items():
                with m.Case(code):
                    m.d.comb += keep_log.eq(keep.bit_length() - 1)
        bits_log = Signal(2)
        with m.Switch(mat.bits):
            for bits, code in BITS_CODES.items():
                with m.Case(code):
                    m.d.comb += bits_log.eq(bits.bit_length() - 1)
        mv = mat.mode == MatrixMode.MV.value
        log_l = g.chain.bit_length() - 1
        log_v = g.vpus.bit_length() - 1
        # steps = floor(blocks * 32 * keep / (16 L)) = floor(blocks * 2 * keep / L)
        steps = Signal(_COUNT_BITS)
        m.d.comb += steps.eq((mat.blocks << (keep_log + 1)) >> log_l)
        work = Signal(_COUNT_BITS + 20)
        m.d.comb += work.eq(mat.groups * steps)
        # weights: MV ceil(work * bits / 8); MM ceil(work * bits / (16 V))
        wbits = Signal(_COUNT_BITS + 24)
        m.d.comb += wbits.eq(work << bits_log)
        wbeats = Mux(mv, _ceil_shift(wbits, 3), _ceil_shift(wbits, 4 + log_v))
        # masks: MV ceil(2 work / keep); MM ceil(2 work / (keep V)); none when dense
        mbeats = Signal(_COUNT_BITS + 24)
        with m.Switch(keep_log):
            for k in (1, 2, 3):
                with m.Case(k):
                    m.d.comb += mbeats.eq(Mux(mv, _ceil_shift(work << 1, k),
                                              _ceil_shift(work << 1, k + log_v)))
        act_per_token = _ceil_shift(mat.blocks * ACT_GROUP, g.row_codes.bit_length() - 1)
        abeats = Mux(mat.load, Mux(mv, act_per_token, act_per_token << (log_v + 1)), 0)
        # scales: one beat per 2**(wgroup + pair) blocks of each row group
        per_beat = mat.wgroup + mat.pair  # log2 of the blocks per beat
        scale_rows = (mat.blocks + (Const(1, 5) << per_beat) - 1) >> per_beat
        sbeats = Mux(mat.raw, 0, mat.groups * scale_rows)
        m.d.comb += [beats.act.eq(abeats), beats.weights.eq(wbeats),
                     beats.masks.eq(Mux(mat.keep == KEEP_CODES[16], 0, mbeats)),
                     beats.scales.eq(sbeats)]
        bb = c.beat_bits
        vlen_beats = _ceil_shift(vec.length, (2 * g.vpus).bit_length() - 1)
        qsrc_beats = _ceil_shift(qnt.length, (2 * g.vpus).bit_length() - 1)
        qdst_beats = _ceil_shift(qnt.length, g.row_codes.bit_length() - 1)
        reads_b = Signal()  # a parameter operand
        reads_bv = Signal()  # a vector operand
        with m.Switch(vec.op):
            for op in VectorOp:
                with m.Case(op.value):
                    m.d.comb += [reads_b.eq(op in READS_B and op not in B_IS_VECTOR),
                                 reads_bv.eq(op in B_IS_VECTOR)]

        with m.Switch(r[:4]):
            with m.Case(Opcode.LOAD.value):
                m.d.comb += [
                    bad_field.eq(tr_bad | load_stripe_bad),
                    misaligned.eq((load.addr[:step] != 0) | (load.stride2[:step] != 0) |
                                  (load.stride3[:step] != 0)),
                    out_of_range.eq(load.line + items > depth),
                ]
            with m.Case(Opcode.STORE.value):
                unstored = ~load.buffer.as_value().matches(*(b.value for b in c.stored)) \
                    if len(c.stored) < len(Buffer) else Const(0)  # (lint: no constant compare)
                m.d.comb += [
                    bad_field.eq(tr_bad | stripe_bad | unstored),
                    out_of_range.eq(load.line + _ceil_shift(items, step) > depth),
                ]
            with m.Case(Opcode.MATRIX.value):
                active = (mat.blocks != 0) & (mat.groups != 0)
                m.d.comb += [
                    bad_field.eq((mat.bits == 3) | (mat.blocks > c.max_blocks) |
                                 ~supports(mat, c.keeps, c.matrix_modes, c.code_bits) |
                                 (mat.wgt[:c.load_lanes.bit_length() - 1] != 0)),
                    out_of_range.eq(active & (
                        span(mat.act, beats.act, bb["act"], c.act_lines) |
                        span(mat.wgt, beats.weights, bb["weights"], c.wgt_lines) |
                        span(mat.mask, beats.masks, bb["masks"], c.meta_lines) |
                        span(mat.scale, beats.scales, bb["scales"], c.meta_lines) |
                        span(mat.out, mat.groups, bb["out"], c.vec_lines))),
                ]
            with m.Case(Opcode.VECTOR.value):
                active = vec.length != 0
                m.d.comb += [
                    bad_field.eq((vec.length > c.vector_max) |
                                 ((vec.op == VectorOp.ROPE.value) & vec.length[0])),
                    out_of_range.eq(active & (
                        span(vec.a, vlen_beats, bb["vector"], c.vec_lines) |
                        (reads_b & span(vec.b, vlen_beats, bb["operand"], c.vec_lines)) |
                        (reads_bv & span(vec.b, vlen_beats, bb["vector"], c.vec_lines)) |
                        span(vec.out, vlen_beats, bb["vector"], c.vec_lines))),
                ]
            with m.Case(Opcode.QUANT.value):
                active = qnt.length != 0
                m.d.comb += [
                    bad_field.eq(qnt.length > c.max_blocks * ACT_GROUP),
                    out_of_range.eq(active & (
                        span(qnt.src, qsrc_beats, bb["vector"], c.vec_lines) |
                        span(qnt.dst, qdst_beats, bb["act"], c.act_lines))),
                ]
            with m.Case(Opcode.TOKEN.value):
                tok = FORMATS[Opcode.TOKEN](r)
                count = _ceil_shift(tok.length, (2 * g.vpus).bit_length() - 1)
                acts = _ceil_shift(tok.length, g.row_codes.bit_length() - 1)
                m.d.comb += [
                    bad_field.eq(tok.length > c.max_blocks * ACT_GROUP),
                    out_of_range.eq((tok.length != 0) & (
                        span(tok.src, count, bb["vector"], c.vec_lines) |
                        span(tok.dst, acts, bb["act"], c.act_lines) |
                        span(tok.scale, 1, bb["vector"], c.vec_lines) |
                        (tok.fold & (span(tok.sc, count, bb["vector"], c.vec_lines) |
                                     span(tok.lo, acts, bb["act"], c.act_lines))))),
                ]
            with m.Case(Opcode.RESCALE.value):
                res = FORMATS[Opcode.RESCALE](r)
                count = _ceil_shift(res.length, (2 * g.vpus).bit_length() - 1)
                m.d.comb += out_of_range.eq((res.length != 0) & (
                    span(res.x, count, bb["vector"], c.vec_lines) |
                    span(res.y, count, bb["vector"], c.vec_lines) |
                    span(res.a, 1, bb["vector"], c.vec_lines) |
                    span(res.out, count, bb["vector"], c.vec_lines)))
            with m.Case(Opcode.SYS.value):
                operands = (sys.peers != 0) | (sys.slot != 0) | (sys.addr != 0) | \
                    (sys.value != 0)
                plain = sys.op.as_value().matches(SysOp.SYNC.value, SysOp.HALT.value)
                if c.barrier:
                    barrier = sys.op == SysOp.BARRIER
                    m.d.comb += [
                        bad_field.eq(Mux(barrier, (sys.peers == 0) | (sys.peers > c.max_peers) |
                                         (sys.slot >= sys.peers), ~plain | operands)),
                        misaligned.eq(barrier & (sys.addr[:step] != 0)),
                    ]
                else:  # BARRIER is illegal on a core without the barrier
                    m.d.comb += bad_field.eq(~plain | operands)

        rh = FORMATS[Opcode.SYS](r).header
        unit = Signal(Unit)
        own = Signal()
        reserved = Signal()
        legal = Signal()
        with m.Switch(r[:4]):
            for op in Opcode:
                with m.Case(op.value):
                    u = OPCODE_UNIT[op].value
                    m.d.comb += [unit.eq(u), own.eq((rh.wait | rh.release)[u]),
                                 reserved.eq(FORMATS[op](r).reserved != 0), legal.eq(1)]
        m.d.comb += error.eq(
            Mux(~legal, ErrorCode.ILLEGAL_OPCODE,
                Mux((rh.spare != 0) | reserved | own | r_overflow | bad_field,
                    ErrorCode.BAD_FIELD,
                    Mux(misaligned, ErrorCode.MISALIGNED,
                        Mux(out_of_range, ErrorCode.BUFFER_RANGE, ErrorCode.NONE)))))

        with m.Switch(stage):
            with m.Case(0):
                with m.If(self.i.valid):
                    m.d.sync += [word.eq(self.i.payload.word), pc.eq(self.i.payload.pc),
                                 stage.eq(1)]
            with m.Case(1):
                m.d.sync += [r.eq(resolved), r_overflow.eq(overflow), stage.eq(2)]
            with m.Case(2):
                m.d.sync += [out.word.eq(r), out.pc.eq(pc), out.unit.eq(unit),
                             out.error.eq(error), out.matrix.eq(beats), stage.eq(3)]
            with m.Case(3):
                with m.If(self.o.ready):
                    m.d.sync += stage.eq(0)
        return m


class TokenMatrix(wiring.Component):
    """Tokens outstanding from each unit to each other unit (``limit`` at most per pair).

    Contract
    --------
    * ``available[d]`` bit ``s``: a token from unit ``s`` waits for unit ``d``.
      ``full[s]`` bit ``d``: the pair ``s -> d`` holds ``limit`` tokens.
    * In a cycle with ``take[d]`` bit ``s`` high, one token of ``s -> d`` is taken (the caller
      checks ``available`` first); with ``give[s]`` bit ``d`` high one is added (the caller
      checks ``full``). Both may happen to one pair in the same cycle. Updates show the next
      cycle.
    * ``clear`` empties every pair (at the start of a run).
    """

    def __init__(self, units, limit):
        self.units, self.limit = units, limit
        super().__init__({
            "available": Out(data.ArrayLayout(units, units)),
            "full": Out(data.ArrayLayout(units, units)),
            "take": In(data.ArrayLayout(units, units)),
            "give": In(data.ArrayLayout(units, units)),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.units
        for s in range(n):
            for d in range(n):
                if s == d:
                    continue
                count = Signal(range(self.limit + 1), name=f"tokens_{s}_{d}")
                up, down = self.give[s][d], self.take[d][s]
                m.d.comb += [self.available[d][s].eq(count != 0),
                             self.full[s][d].eq(count == self.limit)]
                with m.If(self.clear):
                    m.d.sync += count.eq(0)
                with m.Elif(up & ~down):
                    m.d.sync += count.eq(count + 1)
                with m.Elif(down & ~up):
                    m.d.sync += count.eq(count - 1)
        return m

