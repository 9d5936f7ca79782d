"""The compute units of the core: the matrix unit (the matrix engine between buffer lines) and
the vector unit (the SFU and the block quantizer between buffer lines).

Each unit takes resolved instructions (:data:`flightgen.hw.dispatch.decoded_layout`) on
``cmd`` and answers each with one ``done`` transfer carrying its
:class:`~flightgen.isa.machine.ErrorCode`, sent once every result line has been written, so
the sequencer may release the instruction's tokens. A count of zero answers at once.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.instructions import FORMATS, Opcode
from ..isa.machine import ErrorCode
from ..isa.numerics import ACT_GROUP
from ..isa.vector import B_IS_VECTOR, READS_B, VectorOp
from .beats import BeatReader, BeatWriter, line_write_layout, read_port_signature
from .dispatch import decoded_layout
from .mpe import ERROR_CODES, MatrixEngine
from .quantizer import BlockQuantizer
from .sfu import SpecialFunctionUnit

__all__ = ["MatrixUnit", "VectorUnit"]


def _fields(m, view, values):
    """Drive the fields of a struct ``view`` from ``values`` (name -> value), bit for bit
    (enum-shaped fields take raw values)."""
    layout = data.Layout.cast(view.shape())
    raw = view.as_value()
    for name, value in values.items():
        field = layout[name]
        m.d.comb += raw[field.offset:field.offset + field.width].eq(value)


def _issue(m, items, start):
    """Offer each ``(stream, payload, needed)`` once from the cycle ``start`` is high until it
    is taken (``payload`` a value or a dict of fields); return a signal that is high once every
    needed one has been taken."""
    taken = []
    for index, (port, payload, needed) in enumerate(items):
        pending = Signal(name=f"pending{index}")
        with m.If(start):
            m.d.sync += pending.eq(needed)
        m.d.comb += port.valid.eq(pending)
        if isinstance(payload, dict):
            _fields(m, port.payload, payload)
        else:
            m.d.comb += port.payload.eq(payload)
        with m.If(port.valid & port.ready):
            m.d.sync += pending.eq(0)
        taken.append(pending)
    done = Signal()
    m.d.comb += done.eq(~Cat(*taken).any())
    return done


class MatrixUnit(wiring.Component):
    """Execute ``MATRIX`` instructions: stream their beats from ``ACT``, ``WGT`` and ``META``
    into a :class:`~flightgen.hw.mpe.MatrixEngine` and its output beats into ``VEC``.

    Members
    -------
    cmd : In(stream.Signature(decoded_layout))
    done : Out(stream.Signature(ErrorCode))
    act, wgt, mask, scale : Out(read_port_signature(line_bits))
    w : Out(stream.Signature(line_write_layout(line_bits)))  (toward ``VEC``)
    clear : In(1)  (empties the engine, at the start of a run)
    """

    def __init__(self, config):
        self.config = config
        port = read_port_signature(config.line_bits)
        super().__init__({
            "cmd": In(stream.Signature(decoded_layout)),
            "done": Out(stream.Signature(ErrorCode)),
            "act": Out(port), "wgt": Out(port), "mask": Out(port), "scale": Out(port),
            "w": Out(stream.Signature(line_write_layout(config.line_bits))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        bits = c.beat_bits
        engine = MatrixEngine(c.chain, c.vpus, c.max_blocks * ACT_GROUP)
        m.submodules.engine = ResetInserter({"sync": self.clear})(engine)
        readers = {}
        for name, stream_name in (("act", "act"), ("wgt", "weights"), ("mask", "masks"),
                                  ("scale", "scales")):
            reader = BeatReader(c.line_bits, bits[stream_name])
            m.submodules[f"{name}_reader"] = readers[name] = reader
            wiring.connect(m, reader.read, wiring.flipped(getattr(self, name)))
            wiring.connect(m, reader.o, getattr(engine, stream_name))
        m.submodules.writer = writer = BeatWriter(c.line_bits, bits["out"])
        m.d.comb += [writer.i.valid.eq(engine.out.valid), writer.i.payload.eq(engine.out.payload),
                     engine.out.ready.eq(writer.i.ready)]
        wiring.connect(m, writer.w, wiring.flipped(self.w))

        entry = Signal(decoded_layout)
        f = FORMATS[Opcode.MATRIX](entry.word)
        start = Signal()
        busy = Signal()
        error_before = Signal(3)
        command = {"mode": f.mode, "keep": f.keep, "bits": f.bits, "signed": f.signed,
                   "load": f.load, "raw": f.raw, "blocks": f.blocks, "groups": f.groups}
        issued = _issue(m, [
            (engine.cmd, command, 1),
            (readers["act"].cmd, {"line": f.act, "beats": entry.matrix.act}, 1),
            (readers["wgt"].cmd, {"line": f.wgt, "beats": entry.matrix.weights}, 1),
            (readers["mask"].cmd, {"line": f.mask, "beats": entry.matrix.masks}, 1),
            (readers["scale"].cmd, {"line": f.scale, "beats": entry.matrix.scales}, 1),
            (writer.cmd, {"line": f.out, "beats": f.groups}, 1),
        ], start)
        finished = issued & writer.cmd.ready & Cat(*(r.cmd.ready for r in readers.values())).all()

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    new = FORMATS[Opcode.MATRIX](self.cmd.payload.word)
                    m.d.sync += [entry.eq(self.cmd.payload), error_before.eq(engine.error)]
                    with m.If((new.blocks == 0) | (new.groups == 0)):
                        m.next = "ANSWER"
                    with m.Else():
                        m.d.comb += start.eq(1)
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += busy.eq(1)
                with m.If(finished & ~start):
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                bad = (engine.error == ERROR_CODES["bad_mask"]) & (error_before == 0)
                m.d.comb += [self.done.valid.eq(1),
                             self.done.payload.eq(Mux(bad, ErrorCode.BAD_MASK, ErrorCode.NONE))]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m


def _act_beat_layout(geometry):
    return data.StructLayout({
        "codes": data.ArrayLayout(8, geometry.row_codes),
        "scales": data.ArrayLayout(24, geometry.chain // 4),
    })


class VectorUnit(wiring.Component):
    """Execute ``VECTOR`` (the SFU) and ``QUANT`` (the block quantizer) instructions between
    buffer lines. Lanes past a vector's end are read as 0 and written as 0.

    Members
    -------
    cmd : In(stream.Signature(decoded_layout))
    done : Out(stream.Signature(ErrorCode))
    a, b : Out(read_port_signature(line_bits))  (``VEC``)
    w_vec : Out(stream.Signature(line_write_layout(line_bits)))
    w_act : Out(stream.Signature(line_write_layout(line_bits)))
    clear : In(1)
    """

    def __init__(self, config):
        self.config = config
        port = read_port_signature(config.line_bits)
        write = stream.Signature(line_write_layout(config.line_bits))
        super().__init__({
            "cmd": In(stream.Signature(decoded_layout)),
            "done": Out(stream.Signature(ErrorCode)),
            "a": Out(port), "b": Out(port), "w_vec": Out(write), "w_act": Out(write),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, g = self.config, self.config.geometry
        lanes = c.lanes
        bits = c.beat_bits
        sfu = SpecialFunctionUnit(lanes, c.vector_max)
        quantizer = BlockQuantizer(lanes, ACT_GROUP)
        m.submodules.sfu = ResetInserter({"sync": self.clear})(sfu)
        m.submodules.quantizer = ResetInserter({"sync": self.clear})(quantizer)
        m.submodules.a_reader = a_reader = BeatReader(c.line_bits, bits["vector"])
        m.submodules.b_reader = b_reader = BeatReader(c.line_bits, bits["operand"])
        m.submodules.bv_reader = bv_reader = BeatReader(c.line_bits, bits["vector"])
        m.submodules.vec_writer = vec_writer = BeatWriter(c.line_bits, bits["vector"])
        m.submodules.act_writer = act_writer = BeatWriter(c.line_bits, bits["act"])
        wiring.connect(m, a_reader.read, wiring.flipped(self.a))
        # one read port for both b readers (a command uses one of them)
        b_vector = Signal()
        m.d.comb += [self.b.en.eq(b_reader.read.en | bv_reader.read.en),
                     self.b.addr.eq(Mux(b_vector, bv_reader.read.addr, b_reader.read.addr)),
                     b_reader.read.data.eq(self.b.data), bv_reader.read.data.eq(self.b.data)]
        wiring.connect(m, vec_writer.w, wiring.flipped(self.w_vec))
        wiring.connect(m, act_writer.w, wiring.flipped(self.w_act))

        entry = Signal(decoded_layout)
        is_quant = Signal()
        v = FORMATS[Opcode.VECTOR](entry.word)
        q = FORMATS[Opcode.QUANT](entry.word)
        length = Mux(is_quant, q.length, v.length)
        log_lanes = lanes.bit_length() - 1
        beats = Signal(17)
        m.d.comb += beats.eq((length + lanes - 1) >> log_lanes)
        act_beats = Signal(17)
        m.d.comb += act_beats.eq((q.length + g.row_codes - 1) >> (g.row_codes.bit_length() - 1))
        reads_b = Signal()
        with m.Switch(v.op):
            for op in VectorOp:
                with m.Case(op.value):
                    m.d.comb += [reads_b.eq(op in READS_B and op not in B_IS_VECTOR),
                                 b_vector.eq(op in B_IS_VECTOR)]

        # Lane masks: element index of each lane of the beat in flight on each stream.
        def masked(m, payload, index, width, name):
            out = Signal(width * lanes, name=name)
            payload = payload.as_value() if isinstance(payload, data.View) else payload
            for lane in range(lanes):
                keep = (index * lanes + lane) < length
                m.d.comb += out[lane * width:(lane + 1) * width].eq(
                    Mux(keep, payload[lane * width:(lane + 1) * width], 0))
            return out

        a_index = Signal(17)
        b_index = Signal(17)
        o_index = Signal(17)
        a_data = masked(m, a_reader.o.payload, a_index, 32, "a_masked")
        # a vector b becomes entries with weight 0
        widened = Signal(48 * lanes)
        for lane in range(lanes):
            m.d.comb += widened[48 * lane:48 * lane + 32].eq(
                bv_reader.o.payload[32 * lane:32 * (lane + 1)])
        b_data = masked(m, Mux(b_vector, widened, b_reader.o.payload), b_index, 48, "b_masked")
        b_valid = Mux(b_vector, bv_reader.o.valid, b_reader.o.valid)
        with m.If(a_reader.o.valid & a_reader.o.ready):
            m.d.sync += a_index.eq(a_index + 1)
        with m.If(b_valid & sfu.b.ready):
            m.d.sync += b_index.eq(b_index + 1)

        # VECTOR: a, b -> SFU -> out (masked) -> VEC
        m.d.comb += [sfu.a.payload.eq(a_data), sfu.b.payload.eq(b_data),
                     sfu.b.valid.eq(b_valid), b_reader.o.ready.eq(sfu.b.ready & ~b_vector),
                     bv_reader.o.ready.eq(sfu.b.ready & b_vector)]
        sfu_out = masked(m, sfu.out.payload, o_index, 32, "out_masked")
        m.d.comb += [vec_writer.i.payload.eq(sfu_out), vec_writer.i.valid.eq(sfu.out.valid),
                     sfu.out.ready.eq(vec_writer.i.ready)]
        with m.If(sfu.out.valid & sfu.out.ready):
            m.d.sync += o_index.eq(o_index + 1)

        # QUANT: a (masked, then zero beats to a whole activation beat) -> quantizer -> packer
        padding = Signal(17)  # zero beats still to send after the vector
        q_in_index = Signal(17)
        with m.If(is_quant):
            with m.If(q_in_index < beats):
                m.d.comb += [quantizer.i.valid.eq(a_reader.o.valid),
                             quantizer.i.payload.eq(a_data),
                             a_reader.o.ready.eq(quantizer.i.ready)]
            with m.Else():
                m.d.comb += [quantizer.i.valid.eq(padding != 0), quantizer.i.payload.eq(0)]
                with m.If(quantizer.i.valid & quantizer.i.ready):
                    m.d.sync += padding.eq(padding - 1)
            with m.If(quantizer.i.valid & quantizer.i.ready):
                m.d.sync += q_in_index.eq(q_in_index + 1)
        with m.Else():
            m.d.comb += [sfu.a.valid.eq(a_reader.o.valid), a_reader.o.ready.eq(sfu.a.ready)]

        per_act = g.row_codes // lanes  # quantizer beats per activation beat
        per_group = ACT_GROUP // lanes  # quantizer beats per scale
        packed = Signal(_act_beat_layout(g))
        slot = Signal(range(per_act))
        full = Signal()
        with m.If(quantizer.o.valid & quantizer.o.ready):
            qo = quantizer.o.payload
            for k in range(per_act):
                with m.If(slot == k):
                    for lane in range(lanes):
                        m.d.sync += packed.codes[k * lanes + lane].eq(qo.codes[lane])
                    if k % per_group == 0:
                        m.d.sync += packed.scales[k // per_group].eq(
                            Cat(qo.mult, qo.exp[:8]))
            m.d.sync += slot.eq(Mux(slot == per_act - 1, 0, slot + 1))
            with m.If(slot == per_act - 1):
                m.d.sync += full.eq(1)
        m.d.comb += [quantizer.o.ready.eq(~full),
                     act_writer.i.valid.eq(full), act_writer.i.payload.eq(packed)]
        with m.If(act_writer.i.valid & act_writer.i.ready):
            m.d.sync += full.eq(0)

        start = Signal()
        valid = Mux(v.valid > v.length, v.length, v.valid)
        sfu_cmd = {"op": v.op, "length": v.length, "valid": valid, "frac": v.frac,
                   "eps": v.eps, "position": v.position}
        issued = _issue(m, [
            (sfu.cmd, sfu_cmd, ~is_quant),
            (a_reader.cmd, {"line": Mux(is_quant, q.src, v.a), "beats": beats}, 1),
            (b_reader.cmd, {"line": v.b, "beats": beats}, ~is_quant & reads_b),
            (bv_reader.cmd, {"line": v.b, "beats": beats}, ~is_quant & b_vector),
            (vec_writer.cmd, {"line": v.out, "beats": beats}, ~is_quant),
            (act_writer.cmd, {"line": q.dst, "beats": act_beats}, is_quant),
        ], start)
        finished = (issued & a_reader.cmd.ready & b_reader.cmd.ready & bv_reader.cmd.ready &
                    vec_writer.cmd.ready &
                    act_writer.cmd.ready)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    word = self.cmd.payload.word
                    quant = word[:4] == Opcode.QUANT.value
                    count = Mux(quant, FORMATS[Opcode.QUANT](word).length,
                                FORMATS[Opcode.VECTOR](word).length)
                    m.d.sync += [entry.eq(self.cmd.payload), is_quant.eq(quant),
                                 a_index.eq(0), b_index.eq(0), o_index.eq(0), q_in_index.eq(0),
                                 slot.eq(0)]
                    with m.If(count == 0):
                        m.next = "ANSWER"
                    with m.Else():
                        m.next = "START"
            with m.State("START"):
                # one cycle for the lengths to settle, then the padding count
                m.d.comb += start.eq(1)
                m.d.sync += padding.eq(act_beats * per_act - beats)
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(finished):
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(ErrorCode.NONE)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m
