"""The compute units of the core: the matrix unit (the matrix engine between buffer lines) and
the vector unit (the SFU, the block quantizer, the per-vector quantizer and the attention
rescaler between buffer lines).

Each unit takes resolved instructions (:data:`flightgen.hw.dispatch.decoded_layout`) on
``cmd`` and answers each with one ``done`` transfer carrying its
:class:`~flightgen.isa.machine.ErrorCode`, sent once every result line has been written, so
the sequencer may release the instruction's tokens. A count of zero answers at once.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.hdl import ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.instructions import FORMATS, Opcode
from ..isa.machine import ErrorCode
from ..isa.numerics import ACT_GROUP
from ..isa.vector import B_IS_VECTOR, READS_B, VectorOp
from .beats import BeatReader, BeatWriter, line_write_layout, read_port_signature
from .dispatch import decoded_layout
from .gearbox import Narrower, Widener
from .mpe import ERROR_CODES, MatrixEngine
from .quantizer import BlockQuantizer, quantized_layout
from .rescale import AttentionRescaler, rescale_input_layout
from .sfu import SpecialFunctionUnit
from .token_quantizer import TokenQuantizer
from .token_quantizer import input_layout as token_input_layout
from .token_quantizer import output_layout as token_output_layout

__all__ = ["MatrixUnit", "VectorUnit", "ActivationPacker"]


class _Command:
    """A command register for one stream: ``start(**fields)`` (in a state) offers it until it
    is taken; ``busy`` while offered."""

    def __init__(self, m, port, name):
        self.port = port
        self.pending = Signal(name=f"{name}_pending")
        self.payload = Signal(port.payload.shape(), name=f"{name}_payload")
        m.d.comb += [port.valid.eq(self.pending), port.payload.eq(self.payload)]
        with m.If(port.valid & port.ready):
            m.d.sync += self.pending.eq(0)

    def start(self, m, **fields):
        layout = data.Layout.cast(self.payload.shape())
        m.d.sync += self.pending.eq(1)
        for name, value in fields.items():
            field = layout[name]
            m.d.sync += self.payload.as_value()[field.offset:field.offset + field.width].eq(value)


class MatrixUnit(wiring.Component):
    """Execute ``MATRIX`` instructions: stream their beats from ``ACT``, ``WGT`` and ``META``
    into a :class:`~flightgen.hw.mpe.MatrixEngine` and its output beats into ``VEC``.

    Members
    -------
    cmd : In(stream.Signature(decoded_layout))
    done : Out(stream.Signature(ErrorCode))
    act, mask, scale : Out(read_port_signature(line_bits))
    wgt : Out(read_port_signature(load_lanes * line_bits))
        ``WGT`` by rows of its ``load_lanes`` banks: row ``r`` is lines ``r load_lanes`` to
        ``r load_lanes + load_lanes - 1`` (the first in the low bits), so the weights stream
        comes ``load_lanes`` lines a cycle (a ``MATRIX``'s ``wgt`` is a multiple of it).
    w : Out(stream.Signature(line_write_layout(line_bits)))  (toward ``VEC``)
    clear : In(1)  (empties the engine, at the start of a run)
    """

    def __init__(self, config):
        self.config = config
        port = read_port_signature(config.line_bits)
        super().__init__({
            "cmd": In(stream.Signature(decoded_layout)),
            "done": Out(stream.Signature(ErrorCode)),
            "act": Out(port), "mask": Out(port), "scale": Out(port),
            "wgt": Out(read_port_signature(config.load_lanes * config.line_bits)),
            "w": Out(stream.Signature(line_write_layout(config.line_bits))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        bits = c.beat_bits
        engine = MatrixEngine(c.chain, c.vpus, c.max_blocks * ACT_GROUP, keeps=c.keeps,
                              modes=c.matrix_modes, code_bits=c.code_bits)
        m.submodules.engine = ResetInserter({"sync": self.clear})(engine)
        readers = {}
        for name, stream_name in (("act", "act"), ("wgt", "weights"), ("mask", "masks"),
                                  ("scale", "scales")):
            width = c.line_bits * (c.load_lanes if name == "wgt" else 1)
            reader = BeatReader(width, bits[stream_name])
            m.submodules[f"{name}_reader"] = readers[name] = reader
            wiring.connect(m, reader.read, wiring.flipped(getattr(self, name)))
            wiring.connect(m, reader.o, getattr(engine, stream_name))
        m.submodules.writer = writer = BeatWriter(c.line_bits, bits["out"])
        m.d.comb += [writer.i.valid.eq(engine.out.valid), writer.i.payload.eq(engine.out.payload),
                     engine.out.ready.eq(writer.i.ready)]
        wiring.connect(m, writer.w, wiring.flipped(self.w))

        error_before = Signal(3)
        cmds = {name: _Command(m, port, name) for name, port in (
            ("engine", engine.cmd), ("act", readers["act"].cmd), ("wgt", readers["wgt"].cmd),
            ("mask", readers["mask"].cmd), ("scale", readers["scale"].cmd),
            ("out", writer.cmd))}
        finished = (Cat(*(~cmd.pending for cmd in cmds.values())).all() & writer.cmd.ready
                    & Cat(*(r.cmd.ready for r in readers.values())).all())

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    f = FORMATS[Opcode.MATRIX](self.cmd.payload.word)
                    beats = self.cmd.payload.matrix
                    m.d.sync += error_before.eq(engine.error)
                    with m.If((f.blocks == 0) | (f.groups == 0)):
                        m.next = "ANSWER"
                    with m.Else():
                        cmds["engine"].start(m, mode=f.mode, keep=f.keep, bits=f.bits,
                                             signed=f.signed, load=f.load, raw=f.raw,
                                             blocks=f.blocks, groups=f.groups,
                                             wgroup=f.wgroup, pair=f.pair)
                        for name, count in (("act", beats.act), ("wgt", beats.weights),
                                            ("mask", beats.masks), ("scale", beats.scales)):
                            line = getattr(f, name)
                            if name == "wgt":  # rows of the banks
                                line = line >> (c.load_lanes.bit_length() - 1)
                            cmds[name].start(m, line=line, beats=count)
                        cmds["out"].start(m, line=f.out, beats=f.groups)
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(finished):
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


class ActivationPacker(wiring.Component):
    """Collect beats of ``lanes`` INT8 codes (each with its 32-block's scale) into the matrix
    engine's activation beats (:mod:`flightgen.isa.matrix`): ``8 L / lanes`` input beats per
    output beat, the scale of each 32-block taken from its first beat. One beat per cycle in;
    an output beat waits until taken (stream rules); ``clear`` restarts at a beat boundary.

    Members
    -------
    i : In(stream.Signature(flightgen.hw.quantizer.quantized_layout(lanes)))
    o : Out(stream.Signature(act beat: codes then scales))
    clear : In(1)
    """

    def __init__(self, geometry, lanes):
        self.geometry, self.lanes = geometry, lanes
        super().__init__({"i": In(stream.Signature(quantized_layout(lanes))),
                          "o": Out(stream.Signature(_act_beat_layout(geometry))),
                          "clear": In(1)})

    def elaborate(self, platform):
        m = Module()
        g, lanes = self.geometry, self.lanes
        per_act = g.row_codes // lanes  # input beats per activation beat
        per_group = ACT_GROUP // lanes  # input beats per scale
        packed = Signal(_act_beat_layout(g))
        slot = Signal(range(max(per_act, 2)))
        full = Signal()
        with m.If(self.i.valid & self.i.ready):
            beat = self.i.payload
            for k in range(per_act):
                with m.If(slot == k):
                    for lane in range(lanes):
                        m.d.sync += packed.codes[k * lanes + lane].eq(beat.codes[lane])
                    if k % per_group == 0:
                        m.d.sync += packed.scales[k // per_group].eq(
                            Cat(beat.mult, beat.exp[:8]))
            m.d.sync += slot.eq(Mux(slot == per_act - 1, 0, slot + 1))
            with m.If(slot == per_act - 1):
                m.d.sync += full.eq(1)
        m.d.comb += [self.i.ready.eq(~full), self.o.valid.eq(full), self.o.payload.eq(packed)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(self.clear):
            m.d.sync += [slot.eq(0), full.eq(0)]
        return m


class VectorUnit(wiring.Component):
    """Execute the vector unit's instructions between buffer lines: ``VECTOR`` (the SFU),
    ``QUANT`` (the block quantizer), ``TOKEN`` (the per-vector quantizer) and ``RESCALE``
    (the attention rescaler). Lanes past a vector's end are read as 0 and written as 0.

    Members
    -------
    cmd : In(stream.Signature(decoded_layout))
    done : Out(stream.Signature(ErrorCode))
    a, b : Out(read_port_signature(line_bits))  (``VEC``)
    w_vec : Out(stream.Signature(line_write_layout(line_bits)))
    w_act, w_lo : Out(stream.Signature(line_write_layout(line_bits)))  (``ACT``)
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
            "w_lo": Out(write), "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, g = self.config, self.config.geometry
        lanes = c.lanes
        bits = c.beat_bits
        fresh = ResetInserter({"sync": self.clear})
        sfu = SpecialFunctionUnit(c.vector_datapath, c.vector_max)
        quantizer = BlockQuantizer(c.vector_datapath, ACT_GROUP)
        token = TokenQuantizer(c.vector_datapath)
        rescaler = AttentionRescaler(c.vector_datapath)
        m.submodules.sfu = fresh(sfu)
        m.submodules.quantizer = fresh(quantizer)
        m.submodules.token = fresh(token)
        m.submodules.rescaler = fresh(rescaler)
        m.submodules.a_reader = a_reader = BeatReader(c.line_bits, bits["vector"])
        m.submodules.b_reader = b_reader = BeatReader(c.line_bits, bits["operand"])
        m.submodules.bv_reader = bv_reader = BeatReader(c.line_bits, bits["vector"])
        m.submodules.vec_writer = vec_writer = BeatWriter(c.line_bits, bits["vector"])
        m.submodules.act_writer = act_writer = BeatWriter(c.line_bits, bits["act"])
        m.submodules.lo_writer = lo_writer = BeatWriter(c.line_bits, bits["act"])
        m.submodules.packer = packer = ActivationPacker(g, lanes)
        m.submodules.lo_packer = lo_packer = ActivationPacker(g, lanes)
        # the SFU, both quantizers and the rescaler behind gearboxes when narrower
        sfu_ports, sfu_gears = self._geared(m, "sfu", sfu, {
            "a": (32 * lanes, (32,)), "b": (48 * lanes, (48,)), "out": (32 * lanes, (32,))})
        quant_ports, quant_gears = self._geared(m, "quantizer", quantizer, {
            "i": (32 * lanes, (32,)),
            # a beat's codes, then its group scale (the bits every part of it shares)
            "o": (quantized_layout(lanes), (8,), quantized_layout(lanes).size - 8 * lanes)})
        quant_i, quant_o = quant_ports["i"], quant_ports["o"]
        sfu_a, sfu_b, sfu_o = sfu_ports["a"], sfu_ports["b"], sfu_ports["out"]
        token_ports, token_gears = self._geared(m, "token", token, {
            "i": (token_input_layout(lanes), (32, 24)), "o": (token_output_layout(lanes), (8, 8))})
        token_i, token_o = token_ports["i"], token_ports["o"]
        rescaler_ports, rescaler_gears = self._geared(m, "rescaler", rescaler, {
            "i": (rescale_input_layout(lanes), (32, 32)),
            "o": (data.ArrayLayout(signed(32), lanes), (32,))})
        rescaler_i, rescaler_o = rescaler_ports["i"], rescaler_ports["o"]
        gears = {**sfu_gears, **quant_gears, **token_gears, **rescaler_gears}
        log_narrow = c.vector_datapath.bit_length() - 1
        ratio = lanes // c.vector_datapath

        def parts(length):  # a gearbox command: the parts of a vector of ``length`` elements
            return (length + c.vector_datapath - 1) >> log_narrow

        wiring.connect(m, a_reader.read, wiring.flipped(self.a))
        wiring.connect(m, vec_writer.w, wiring.flipped(self.w_vec))
        wiring.connect(m, act_writer.w, wiring.flipped(self.w_act))
        wiring.connect(m, lo_writer.w, wiring.flipped(self.w_lo))
        wiring.connect(m, packer.o, act_writer.i)
        wiring.connect(m, lo_packer.o, lo_writer.i)

        # the instruction
        entry = Signal(decoded_layout)
        opcode = entry.word[:4]
        kind = Signal(2)  # 0 VECTOR, 1 QUANT, 2 TOKEN, 3 RESCALE
        v = FORMATS[Opcode.VECTOR](entry.word)
        q = FORMATS[Opcode.QUANT](entry.word)
        t = FORMATS[Opcode.TOKEN](entry.word)
        r = FORMATS[Opcode.RESCALE](entry.word)
        length = Signal(16)
        with m.Switch(opcode):
            for op, code, n in ((Opcode.VECTOR, 0, v.length), (Opcode.QUANT, 1, q.length),
                                (Opcode.TOKEN, 2, t.length), (Opcode.RESCALE, 3, r.length)):
                with m.Case(op.value):
                    m.d.comb += [kind.eq(code), length.eq(n)]
        log_lanes = lanes.bit_length() - 1
        beats = Signal(17)
        m.d.comb += beats.eq((length + lanes - 1) >> log_lanes)
        act_beats = Signal(17)
        m.d.comb += act_beats.eq((length + g.row_codes - 1) >> (g.row_codes.bit_length() - 1))
        per_act = g.row_codes // lanes
        reads_b = Signal()
        b_vector = Signal()
        with m.Switch(v.op):
            for op in VectorOp:
                with m.Case(op.value):
                    m.d.comb += [reads_b.eq(op in READS_B and op not in B_IS_VECTOR),
                                 b_vector.eq(op in B_IS_VECTOR)]
        fold = t.fold
        # the b port: parameter entries (b_reader) or a vector (bv_reader), one per command
        use_bv = Signal()
        m.d.comb += use_bv.eq(Mux(kind == 0, b_vector, 1))
        m.d.comb += [self.b.en.eq(b_reader.read.en | bv_reader.read.en),
                     self.b.addr.eq(Mux(use_bv, bv_reader.read.addr, b_reader.read.addr)),
                     b_reader.read.data.eq(self.b.data), bv_reader.read.data.eq(self.b.data)]

        # lane masks: the element index of each lane of the beat in flight
        def masked(payload, index, width, name):
            out = Signal(width * lanes, name=name)
            payload = payload.as_value() if isinstance(payload, data.View) else payload
            for lane in range(lanes):
                keep = (index * lanes + lane) < length
                m.d.comb += out[lane * width:(lane + 1) * width].eq(
                    Mux(keep, payload[lane * width:(lane + 1) * width], 0))
            return out

        a_index, b_index, o_index = Signal(17), Signal(17), Signal(17)
        a_data = masked(a_reader.o.payload, a_index, 32, "a_masked")
        widened = Signal(48 * lanes)
        for lane in range(lanes):
            m.d.comb += widened[48 * lane:48 * lane + 32].eq(
                bv_reader.o.payload[32 * lane:32 * (lane + 1)])
        b_data = masked(Mux(use_bv, widened, b_reader.o.payload), b_index, 48, "b_masked")
        bv_data = masked(bv_reader.o.payload, b_index, 32, "bv_masked")
        b_valid = Mux(use_bv, bv_reader.o.valid, b_reader.o.valid)
        b_take = Signal()
        m.d.comb += [b_reader.o.ready.eq(b_take & ~use_bv), bv_reader.o.ready.eq(b_take & use_bv)]
        with m.If(a_reader.o.valid & a_reader.o.ready):
            m.d.sync += a_index.eq(a_index + 1)
        with m.If(b_valid & b_take):
            m.d.sync += b_index.eq(b_index + 1)

        # VECTOR: a, b -> SFU -> (masked) -> VEC
        sfu_out = masked(sfu_o.payload, o_index, 32, "out_masked")
        m.d.comb += [sfu_a.payload.eq(a_data), sfu_b.payload.eq(b_data)]
        # QUANT: a (then zero beats to a whole activation beat) -> quantizer -> packer
        padding = Signal(17)  # zero beats still to send after the vector
        # a command's streams move only once START has reset the indices and the padding
        # (until then they hold the previous command's values)
        streaming = Signal()
        in_vector = Signal()
        m.d.comb += in_vector.eq(a_index < beats)
        # TOKEN: a (and b: the scale words) twice -> token quantizer -> packers (and scale)
        scale_word = Signal(32)
        # RESCALE: the scale word at a, then x (a) and y (b) -> rescaler -> VEC
        a_scale = Signal(32)
        latching = Signal()
        sending_scale = Signal()

        with m.Switch(kind):
            with m.Case(0):
                m.d.comb += [sfu_a.valid.eq(a_reader.o.valid), a_reader.o.ready.eq(sfu_a.ready),
                             sfu_b.valid.eq(b_valid), b_take.eq(sfu_b.ready),
                             vec_writer.i.valid.eq(sfu_o.valid),
                             vec_writer.i.payload.eq(sfu_out),
                             sfu_o.ready.eq(vec_writer.i.ready)]
            with m.Case(1):
                with m.If(in_vector):
                    m.d.comb += [quant_i.valid.eq(a_reader.o.valid),
                                 quant_i.payload.eq(a_data),
                                 a_reader.o.ready.eq(quant_i.ready)]
                with m.Else():
                    m.d.comb += [quant_i.valid.eq((padding != 0) & streaming),
                                 quant_i.payload.eq(0)]
                    with m.If(quant_i.valid & quant_i.ready):
                        m.d.sync += padding.eq(padding - 1)
                m.d.comb += [packer.i.valid.eq(quant_o.valid),
                             packer.i.payload.eq(quant_o.payload),
                             quant_o.ready.eq(packer.i.ready)]
            with m.Case(2):
                both = a_reader.o.valid & (bv_reader.o.valid | ~fold)
                m.d.comb += [token_i.valid.eq(both), token_i.payload.value.eq(a_data)]
                for lane in range(lanes):
                    m.d.comb += token_i.payload.scale[lane].eq(bv_data[32 * lane:32 * lane + 24])
                with m.If(token_i.valid & token_i.ready):
                    m.d.comb += [a_reader.o.ready.eq(1), b_take.eq(fold)]
                # codes to the packers (zero beats after the vector); the scale word to VEC
                pad_now = (o_index == beats) & (padding != 0) & streaming  # after the vector
                tokens_out = token_o.valid | pad_now
                codes = Mux(token_o.valid, token_o.payload.codes.as_value(), 0)
                ready = packer.i.ready & (lo_packer.i.ready | ~fold)
                m.d.comb += [packer.i.valid.eq(tokens_out & (lo_packer.i.ready | ~fold)),
                             packer.i.payload.codes.eq(codes),
                             lo_packer.i.valid.eq(tokens_out & fold & packer.i.ready),
                             token_o.ready.eq(ready)]
                with m.If(token_o.valid & ready):
                    m.d.sync += o_index.eq(o_index + 1)
                with m.If(~token_o.valid & pad_now & ready):
                    m.d.sync += padding.eq(padding - 1)
                m.d.comb += [token.scale.ready.eq(~sending_scale),
                             vec_writer.i.valid.eq(sending_scale),
                             vec_writer.i.payload.eq(scale_word)]
                with m.If(token.scale.valid & token.scale.ready):
                    m.d.sync += [sending_scale.eq(1),
                                 scale_word.eq(Cat(token.scale.payload.mult,
                                                   token.scale.payload.exp[:8]))]
                with m.If(vec_writer.i.valid & vec_writer.i.ready):
                    m.d.sync += sending_scale.eq(0)
            with m.Case(3):
                with m.If(latching):
                    m.d.comb += a_reader.o.ready.eq(1)
                    with m.If(a_reader.o.valid):
                        m.d.sync += [a_scale.eq(a_reader.o.payload[:32]), latching.eq(0)]
                with m.Else():
                    both = a_reader.o.valid & bv_reader.o.valid
                    m.d.comb += [rescaler_i.valid.eq(both),
                                 rescaler_i.payload.x.eq(a_data),
                                 rescaler_i.payload.y.eq(bv_data)]
                    with m.If(rescaler_i.valid & rescaler_i.ready):
                        m.d.comb += [a_reader.o.ready.eq(1), b_take.eq(1)]
                m.d.comb += [vec_writer.i.valid.eq(rescaler_o.valid),
                             vec_writer.i.payload.eq(rescaler_o.payload),
                             rescaler_o.ready.eq(vec_writer.i.ready)]
        with m.If(sfu_o.valid & sfu_o.ready):
            m.d.sync += o_index.eq(o_index + 1)
        # the low halves carry no block scales (the whole payload is driven here, so that no
        # bit of it is a constant-only process, which Verilator rejects)
        m.d.comb += lo_packer.i.payload.eq(
            Cat(Mux(token_o.valid, token_o.payload.lo.as_value(), 0),
                Const(0, len(lo_packer.i.payload.as_value()) - 8 * lanes)))

        # commands of the blocks, readers and writers
        cmds = {name: _Command(m, port, name) for name, port in (
            ("sfu", sfu.cmd), *((name, gear.cmd) for name, gear in gears.items()),
            ("token", token.cmd), ("rescaler", rescaler.cmd),
            ("a", a_reader.cmd), ("b", b_reader.cmd), ("bv", bv_reader.cmd),
            ("vec", vec_writer.cmd), ("act", act_writer.cmd), ("lo", lo_writer.cmd))}
        readers_idle = a_reader.cmd.ready & b_reader.cmd.ready & bv_reader.cmd.ready
        writers_idle = vec_writer.cmd.ready & act_writer.cmd.ready & lo_writer.cmd.ready
        idle = Cat(*(~cmd.pending for cmd in cmds.values())).all() & readers_idle & writers_idle

        def reset_indices():
            return [a_index.eq(0), b_index.eq(0), o_index.eq(0)]

        valid = Mux(v.valid > v.length, v.length, v.valid)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += entry.eq(self.cmd.payload)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [packer.clear.eq(1), lo_packer.clear.eq(1)]
                m.d.sync += reset_indices() + [
                    padding.eq(act_beats * per_act - beats),
                    sending_scale.eq(0), latching.eq(kind == 3)]
                with m.If(length == 0):
                    m.next = "ANSWER"
                with m.Elif(kind == 0):
                    cmds["sfu"].start(m, op=v.op, length=v.length, valid=valid, frac=v.frac,
                                      eps=v.eps, position=v.position)
                    if gears:  # the SFU takes every beat in parts
                        cmds["sfu_a"].start(m, parts=parts(v.length))
                        cmds["sfu_out"].start(m, parts=parts(v.length))
                        with m.If(reads_b | b_vector):
                            cmds["sfu_b"].start(m, parts=parts(v.length))
                    cmds["a"].start(m, line=v.a, beats=beats)
                    with m.If(reads_b):
                        cmds["b"].start(m, line=v.b, beats=beats)
                    with m.If(b_vector):
                        cmds["bv"].start(m, line=v.b, beats=beats)
                    cmds["vec"].start(m, line=v.out, beats=beats)
                    m.next = "RUN"
                with m.Elif(kind == 1):
                    if gears:  # every part of the vector's beats and of the zero beats after
                        cmds["quantizer_i"].start(m, parts=act_beats * per_act * ratio)
                        cmds["quantizer_o"].start(m, parts=act_beats * per_act * ratio)
                    cmds["a"].start(m, line=q.src, beats=beats)
                    cmds["act"].start(m, line=q.dst, beats=act_beats)
                    m.next = "RUN"
                with m.Elif(kind == 2):
                    cmds["token"].start(m, length=t.length, fold=t.fold)
                    if gears:  # pass 1 in parts; the codes of pass 2 joined
                        cmds["token_i"].start(m, parts=parts(t.length))
                        cmds["token_o"].start(m, parts=parts(t.length))
                    cmds["a"].start(m, line=t.src, beats=beats)
                    with m.If(fold):
                        cmds["bv"].start(m, line=t.sc, beats=beats)
                        cmds["lo"].start(m, line=t.lo, beats=act_beats)
                    cmds["act"].start(m, line=t.dst, beats=act_beats)
                    cmds["vec"].start(m, line=t.scale, beats=1)
                    m.next = "PASS"
                with m.Else():
                    cmds["a"].start(m, line=r.a, beats=1)
                    m.next = "SCALE"
            with m.State("PASS"):  # TOKEN: the second pass once the first has been read
                m.d.comb += streaming.eq(1)
                with m.If(~cmds["a"].pending & ~cmds["bv"].pending & readers_idle):
                    m.d.sync += reset_indices()
                    if gears:
                        cmds["token_i"].start(m, parts=parts(t.length))
                    cmds["a"].start(m, line=t.src, beats=beats)
                    with m.If(fold):
                        cmds["bv"].start(m, line=t.sc, beats=beats)
                    m.next = "RUN"
            with m.State("SCALE"):  # RESCALE: the scale word first
                m.d.comb += streaming.eq(1)
                with m.If(~latching):
                    m.d.sync += reset_indices()
                    cmds["rescaler"].start(m, mode=r.output, length=r.length,
                                           a_mult=a_scale[:16], a_exp=a_scale[16:24],
                                           c_mult=r.c_mult, c_exp=r.c_exp)
                    if gears:
                        cmds["rescaler_i"].start(m, parts=parts(r.length))
                        cmds["rescaler_o"].start(m, parts=parts(r.length))
                    cmds["a"].start(m, line=r.x, beats=beats)
                    cmds["bv"].start(m, line=r.y, beats=beats)
                    cmds["vec"].start(m, line=r.out, beats=beats)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += streaming.eq(1)
                with m.If(idle & ~sending_scale):
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(ErrorCode.NONE)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m

    def _geared(self, m, name, block, streams):
        """``block``'s ``streams`` as the unit sees them, with beats of ``lanes`` elements: the
        block's own when its datapath is as wide, otherwise the wide side of a gearbox to a
        datapath of ``vector_datapath`` lanes (a :class:`Narrower` for an input, a
        :class:`Widener` for an output). ``streams`` maps a port name to ``(shape of a wide
        beat, bits of an element of each of its fields[, bits every part of a beat shares])``.
        Returns the streams by port name and the gearboxes by ``"{name}_{port}"``."""
        c = self.config
        ports = {port: getattr(block, port) for port in streams}
        if c.vector_datapath == c.lanes:
            return ports, {}
        wide, gears = {}, {}
        for port, (shape, fields, *shared) in streams.items():
            inner = ports[port]
            element = sum(fields)
            shared = shared[0] if shared else 0
            end = stream.Signature(shape).create(path=(f"{name}_{port}_wide",))
            wide[port] = end
            if block.signature.members[port].flow == In:
                gear = Narrower(element * c.lanes, element * c.vector_datapath, fields)
                source, sink = end, gear.i
                m.d.comb += [gear.o.ready.eq(inner.ready), inner.valid.eq(gear.o.valid),
                             inner.payload.eq(gear.o.payload)]
            else:
                gear = Widener(element * c.vector_datapath + shared, element * c.lanes + shared,
                               fields, shared)
                source, sink = gear.o, end
                m.d.comb += [inner.ready.eq(gear.i.ready), gear.i.valid.eq(inner.valid),
                             gear.i.payload.eq(inner.payload)]
            m.d.comb += [sink.valid.eq(source.valid), sink.payload.eq(source.payload),
                         source.ready.eq(sink.ready)]
            gears[f"{name}_{port}"] = m.submodules[f"{name}_{port}"] = gear
        return wide, gears
