"""The core's compute units in amaranth.sim, against the ISA simulator: a MATRIX, VECTOR or
QUANT instruction on buffer lines leaves the lines isa.machine.Machine leaves."""

import dataclasses
import os

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from flightgen.hw.dispatch import decoded_layout
from flightgen.hw.units import MatrixUnit, VectorUnit
from flightgen.isa.assembly import assemble_line
from flightgen.isa.instructions import Buffer, encode
from flightgen.isa.machine import SIM_CORE, ErrorCode, Machine, resolve
from flightgen.isa.matrix import MatrixMode, MatrixStreams
from flightgen.isa.vector import B_IS_VECTOR, VectorOp
from flightgen.sim.stimulus import matrix_operation, vector_operation

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))

# unit port -> buffer it reads; writer member -> buffer it writes
MATRIX_PORTS = {"act": Buffer.ACT, "wgt": Buffer.WGT, "mask": Buffer.META,
                "scale": Buffer.META}
MATRIX_WRITES = {"w": Buffer.VEC}
VECTOR_PORTS = {"a": Buffer.VEC, "b": Buffer.VEC}
VECTOR_WRITES = {"w_vec": Buffer.VEC, "w_act": Buffer.ACT, "w_lo": Buffer.ACT}


class _Bench(wiring.Component):
    """A unit with one memory per buffer, initialised from a Machine."""

    def __init__(self, unit, machine, ports, writes):
        self.unit, self.ports, self.writes = unit, ports, writes
        c = machine.config
        self.memories = {
            b: Memory(shape=c.line_bits, depth=c.lines(b),
                      init=[int.from_bytes(row.tobytes(), "little")
                            for row in machine.buffers[b]])
            for b in Buffer}
        super().__init__({"cmd": In(stream.Signature(decoded_layout)),
                          "done": Out(unit.done.signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = u = self.unit
        for b, mem in self.memories.items():
            m.submodules[f"mem_{b.name.lower()}"] = mem
        for name, b in self.ports.items():
            port = self.memories[b].read_port()
            member = getattr(u, name)
            m.d.comb += [port.en.eq(member.en), port.addr.eq(member.addr),
                         member.data.eq(port.data)]
        for name, b in self.writes.items():
            port = self.memories[b].write_port()
            member = getattr(u, name)
            m.d.comb += [port.en.eq(member.valid), port.addr.eq(member.payload.line),
                         port.data.eq(member.payload.data), member.ready.eq(1)]
        wiring.connect(m, wiring.flipped(self.cmd), u.cmd)
        wiring.connect(m, u.done, wiring.flipped(self.done))
        return m


def _decoded(config, word):
    r = resolve(config, word)
    fields = {k: v for k, v in r.fields.items() if k != "opcode"}
    beats = {"act": 0, "weights": 0, "masks": 0, "scales": 0}
    if r.opcode.name == "MATRIX" and r.fields["blocks"] and r.fields["groups"]:
        s = MatrixStreams(config.geometry, r.fields)
        beats = {"act": s.act, "weights": s.weights, "masks": s.masks, "scales": s.scales}
    return r, {"word": encode(r.opcode, fields), "pc": 0, "unit": r.unit.value,
               "error": 0, "matrix": beats}


def _run_unit(unit_class, ports, writes, machine, words, lines=True):
    """Run ``words`` on the unit (one after the other) and on the machine; compare the error
    codes and (with ``lines``) every line the unit may write."""
    c = machine.config
    bench = _Bench(unit_class(c), machine, ports, writes)
    answers = []

    async def drive(ctx):
        ctx.set(bench.unit.clear, 0)
        for word in words:
            _, payload = _decoded(c, word)
            ctx.set(bench.cmd.payload, payload)
            ctx.set(bench.cmd.valid, 1)
            await ctx.tick().until(bench.cmd.ready)
            ctx.set(bench.cmd.valid, 0)
            ctx.set(bench.done.ready, 1)
            code, = await ctx.tick().sample(bench.done.payload).until(bench.done.valid)
            ctx.set(bench.done.ready, 0)
            answers.append(ErrorCode(code))
        got = {b: [ctx.get(mem.data[i]) for i in range(c.lines(b))]
               for b, mem in bench.memories.items() if b in writes.values()}
        answers.append(got)

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    expected_codes = []
    for word in words:
        r = resolve(c, word)
        error, _ = machine.execute(r)
        expected_codes.append(error)
    got = answers.pop()
    assert answers == expected_codes
    for b, written in got.items():
        if not lines:
            break
        expected = [int.from_bytes(row.tobytes(), "little") for row in machine.buffers[b]]
        mismatch = [i for i, (x, y) in enumerate(zip(written, expected, strict=True)) if x != y]
        assert not mismatch, f"{b.name} lines differ from the ISA simulator: {mismatch[:8]}"


@pytest.mark.parametrize("mode", list(MatrixMode))
@pytest.mark.parametrize("weights, pattern, raw", [("int8", (16, 16), False),
                                                    ("int4-asym", (8, 16), False),
                                                    ("int2", (2, 16), True)])
def test_matrix_unit(mode, weights, pattern, raw):
    rng = np.random.default_rng(SEED)
    c = SIM_CORE
    machine = Machine(c)
    machine.buffers[Buffer.VEC][:] = rng.integers(0, 256, machine.buffers[Buffer.VEC].shape)
    op = matrix_operation(rng, c.geometry, mode, weights, pattern, raw=raw)
    bits = c.beat_bits
    machine.put_beats(Buffer.ACT, 3, op.beats["act"], bits["act"])
    machine.put_beats(Buffer.WGT, 5, op.beats["weights"], bits["weights"])
    machine.put_beats(Buffer.META, 7, op.beats["masks"], bits["masks"])
    machine.put_beats(Buffer.META, 100, op.beats["scales"], bits["scales"])
    f = op.command
    first = encode(3, {"mode": f["mode"].value, "keep": f["keep"], "bits": f["bits"],
                       "signed": f["signed"], "load": 1, "raw": int(raw), "blocks": f["blocks"],
                       "groups": f["groups"], "wgroup": f["wgroup"], "pair": f["pair"],
                       "act": 3, "wgt": 5, "mask": 7, "scale": 100, "out": 9})
    # the same weights again on the kept tile, to another place; then a no-op
    second = encode(3, {"mode": f["mode"].value, "keep": f["keep"], "bits": f["bits"],
                        "signed": f["signed"], "load": 0, "raw": int(raw),
                        "blocks": f["blocks"], "groups": f["groups"], "wgroup": f["wgroup"],
                        "pair": f["pair"], "wgt": 5, "mask": 7, "scale": 100, "out": 300})
    empty = assemble_line("matrix blocks=0 groups=3")
    _run_unit(MatrixUnit, MATRIX_PORTS, MATRIX_WRITES, machine, [first, second, empty])


def test_matrix_unit_bad_mask():
    rng = np.random.default_rng(SEED)
    c = SIM_CORE
    machine = Machine(c)
    op = matrix_operation(rng, c.geometry, MatrixMode.MV, "int8", (8, 16))
    bits = c.beat_bits
    masks = list(op.beats["masks"])
    masks[0] ^= 1  # one window keeps 7 or 9 columns
    machine.put_beats(Buffer.ACT, 0, op.beats["act"], bits["act"])
    machine.put_beats(Buffer.WGT, 0, op.beats["weights"], bits["weights"])
    machine.put_beats(Buffer.META, 0, masks, bits["masks"])
    machine.put_beats(Buffer.META, 100, op.beats["scales"], bits["scales"])
    f = op.command
    word = encode(3, {"mode": 0, "keep": f["keep"], "bits": f["bits"], "signed": f["signed"],
                      "load": 1, "blocks": f["blocks"], "groups": f["groups"],
                      "wgroup": f["wgroup"], "pair": f["pair"], "scale": 100, "out": 9})
    check = Machine(c)
    for b in Buffer:
        check.buffers[b][:] = machine.buffers[b]
    assert check.execute(resolve(c, word))[0] == ErrorCode.BAD_MASK
    # the unit answers BAD_MASK too (its results are unspecified, so not compared)
    _run_unit(MatrixUnit, MATRIX_PORTS, MATRIX_WRITES, machine, [word], lines=False)


#: 16-element beats into an SFU, a token quantizer and a rescaler of 4 lanes (each beat in
#: four parts, as on the U280).
NARROW = dataclasses.replace(SIM_CORE, vpus=8, vector_lanes=4)
#: Both datapath widths.
WIDTHS = pytest.mark.parametrize("c", [SIM_CORE, NARROW], ids=["as-wide", "narrow"])


@WIDTHS
@pytest.mark.parametrize("op", list(VectorOp))
def test_vector_unit(op, c):
    rng = np.random.default_rng(SEED + op.value)
    machine = Machine(c)
    machine.buffers[Buffer.VEC][:] = rng.integers(0, 256, machine.buffers[Buffer.VEC].shape)
    length = int(rng.integers(1, 30)) * (2 if op == VectorOp.ROPE else 1) + 1 - (
        op == VectorOp.ROPE)
    vop = vector_operation(rng, c.lanes, op, length)
    bits = c.beat_bits
    machine.put_beats(Buffer.VEC, 10, vop.beats["a"], bits["vector"])
    if op in B_IS_VECTOR:  # the b of ADD and MUL is a vector
        machine.write_vector(40, vop.b_values)
    else:
        machine.put_beats(Buffer.VEC, 40, vop.beats["b"], bits["operand"])
    f = vop.command
    word = assemble_line(f"vector op={op.name.lower()} length={f['length']} "
                         f"valid={f['valid'] + 3} frac={f['frac']} eps={f['eps']} "
                         f"position={f['position']} a=10 b=40 out=70")
    _run_unit(VectorUnit, VECTOR_PORTS, VECTOR_WRITES, machine, [word])


@WIDTHS
@pytest.mark.parametrize("length", [1, 40, 64, 200])
def test_quant_unit(length, c):
    rng = np.random.default_rng(SEED + length)
    machine = Machine(c)
    machine.buffers[Buffer.VEC][:] = rng.integers(0, 256, machine.buffers[Buffer.VEC].shape)
    machine.buffers[Buffer.ACT][:] = rng.integers(0, 256, machine.buffers[Buffer.ACT].shape)
    words = [assemble_line(f"quant length={length} src=20 dst=9"),
             assemble_line("quant length=0 src=20 dst=0")]
    _run_unit(VectorUnit, VECTOR_PORTS, VECTOR_WRITES, machine, words)


@pytest.mark.parametrize("first, second", [
    ("vector op=mul length=96 a=20 b=60 out=20", "quant length=96 src=20 dst=9"),
    ("vector op=add length=96 a=20 b=60 out=20", "quant length=64 src=20 dst=9"),
    ("vector op=silu length=32 a=20 out=20", "token length=40 src=20 dst=9 scale=100"),
    ("quant length=40 src=20 dst=9", "token fold=1 length=37 src=20 sc=60 dst=9 lo=30 "
                                     "scale=100"),
])
@WIDTHS
def test_vector_unit_commands_back_to_back(first, second, c):
    """A command must not take the previous command's leftover state (its element index and
    padding count) for its own: a QUANT after a VECTOR whose length left zero beats to pad
    once fed the quantizer an extra zero beat."""
    rng = np.random.default_rng(SEED)
    machine = Machine(c)
    machine.buffers[Buffer.VEC][:] = rng.integers(0, 256, machine.buffers[Buffer.VEC].shape)
    machine.buffers[Buffer.ACT][:] = rng.integers(0, 256, machine.buffers[Buffer.ACT].shape)
    machine.write_vector(20, rng.integers(-(1 << 20), 1 << 20, 128))
    machine.write_vector(60, rng.integers(1 << 15, 1 << 16, 128)
                         | ((rng.integers(-12, -4, 128) & 0xFF) << 16))
    words = [assemble_line(first), assemble_line(second)]
    _run_unit(VectorUnit, VECTOR_PORTS, VECTOR_WRITES, machine, words)


@WIDTHS
@pytest.mark.parametrize("fold, length", [(0, 16), (0, 5), (1, 6), (1, 37), (1, 70)])
def test_token_unit(fold, length, c):
    """TOKEN: one scale for the vector; codes (or the 15-bit codes' halves) as activation
    beats, the scale word to VEC."""
    rng = np.random.default_rng(SEED + length)
    machine = Machine(c)
    machine.buffers[Buffer.VEC][:] = rng.integers(0, 256, machine.buffers[Buffer.VEC].shape)
    machine.buffers[Buffer.ACT][:] = rng.integers(0, 256, machine.buffers[Buffer.ACT].shape)
    if fold:
        probs = rng.integers(0, 1 << 16, length)
        machine.write_vector(20, probs)
        words = (rng.integers(1 << 15, 1 << 16, length)
                 | ((rng.integers(-12, -4, length) & 0xFF) << 16))
        machine.write_vector(60, words)
    else:
        machine.write_vector(20, rng.integers(-(1 << 24), 1 << 24, length))
    words = [assemble_line(f"token fold={fold} length={length} src=20 sc=60 dst=9 lo=30 "
                           f"scale=100"),
             assemble_line("token length=0 src=20 dst=0 scale=0")]
    _run_unit(VectorUnit, VECTOR_PORTS, VECTOR_WRITES, machine, words)


@WIDTHS
@pytest.mark.parametrize("output, length", [(0, 7), (0, 40), (1, 16), (1, 3)])
def test_rescale_unit(output, length, c):
    rng = np.random.default_rng(SEED + 7 * length + output)
    machine = Machine(c)
    machine.buffers[Buffer.VEC][:] = rng.integers(0, 256, machine.buffers[Buffer.VEC].shape)
    machine.write_vector(20, rng.integers(-(1 << 20), 1 << 20, length))
    if output:
        machine.write_vector(60, rng.integers(-(1 << 20), 1 << 20, length))
    else:
        machine.write_vector(60, rng.integers(1 << 15, 1 << 16, length)
                             | ((rng.integers(-30, -20, length) & 0xFF) << 16))
    machine.write_vector(100, [int(rng.integers(1 << 15, 1 << 16)) | ((-20 & 0xFF) << 16)])
    words = [assemble_line(f"rescale output={output} length={length} x=20 y=60 a=100 "
                           f"c_mult=32768 c_exp={-17 & 0xFF} out=140")]
    _run_unit(VectorUnit, VECTOR_PORTS, VECTOR_WRITES, machine, words)
