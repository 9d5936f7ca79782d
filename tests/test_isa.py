"""The ISA: formats, assembler/disassembler, the checks of the dispatcher and the ISA
simulator's semantics, against the unit definitions in flightgen.isa (matrix, vector,
numerics)."""

import json
import os

import numpy as np
import pytest
from amaranth.lib import data

from flightgen.isa.assembly import AssemblyError, assemble, assemble_line, disassemble_word
from flightgen.isa.instructions import (
    FORMATS,
    WORD_BITS,
    Buffer,
    Opcode,
    Unit,
    decode_fields,
    encode,
    fields,
)
from flightgen.isa.machine import (
    SIM_CORE,
    CoreConfig,
    ErrorCode,
    IllegalInstruction,
    Machine,
    resolve,
    run_group,
)
from flightgen.isa.matrix import BITS_CODES, MatrixMode, MatrixOperation, scale_blocks
from flightgen.isa.numerics import quantize_per_group
from flightgen.isa.vector import B_IS_VECTOR, VectorOp
from flightgen.isa.weights import GroupQuantized, linear
from flightgen.sim.programs import ProgramBuilder
from flightgen.sim.stimulus import matrix_operation, vector_operation

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))


@pytest.fixture
def rng():
    print(f"seed {SEED} (set FLIGHTGEN_SEED to reproduce)")
    return np.random.default_rng(SEED)


# -- formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("opcode", list(FORMATS))
def test_format_fills_the_word_without_overlap(opcode):
    covered = np.zeros(WORD_BITS, int)
    for _, offset, width in fields(opcode):
        covered[offset:offset + width] += 1
    np.testing.assert_array_equal(covered, np.ones(WORD_BITS, int))
    assert data.Layout.cast(FORMATS[opcode]).size == WORD_BITS
    assert fields(opcode)[0] == ("header.opcode", 0, 4)


def test_encode_decode_round_trip(rng):
    for opcode in FORMATS:
        values = {name.removeprefix("header."): int(rng.integers(0, 1 << min(width, 62)))
                  for name, _, width in fields(opcode) if name != "header.opcode"}
        word = encode(opcode, values)
        decoded_opcode, decoded = decode_fields(word)
        assert decoded_opcode == opcode
        assert {k: v for k, v in decoded.items() if k != "opcode"} == values


def test_encode_rejects_bad_fields():
    with pytest.raises(ValueError, match=r"^load field length must be 0 to 65535, not 65536$"):
        encode(Opcode.LOAD, {"length": 1 << 16})
    with pytest.raises(ValueError, match=r"^quant has no field 'port'$"):
        encode(Opcode.QUANT, {"port": 1})


def test_illegal_opcodes_decode_to_none():
    for code in range(16):
        opcode, _ = decode_fields(code)
        assert (opcode is None) == (code not in {o.value for o in Opcode})


# -- assembler / disassembler ------------------------------------------------------------------

PROGRAM = """
load   buffer=wgt line=4 port=1 addr=0x4000 length=16 count2=2 stride2=0x1000 release=matrix
matrix mode=mm keep=8 bits=4 signed=1 load=1 blocks=18 groups=2+r1*3 act=1 wgt=4 mask=5 \
scale=6 out=7 wait=load
vector op=rmsnorm length=576 frac=14 eps=0x3e8 a=8 b=16 out=24 release=store
quant  length=r3*32 src=0 dst=2
store  buffer=vec line=24 port=0 addr=0x1000+r2*64 length=64 wait=vector
sync   wait=store release=load
halt
"""


def test_assembler_fields_and_round_trip():
    words = assemble(PROGRAM.replace("\\\n", ""))
    assert len(words) == 7
    _, f = decode_fields(words[1])
    assert (f["mode"], f["keep"], f["bits"], f["signed"], f["groups"], f["groups_mul"],
            f["reg"], f["wait"]) == (MatrixMode.MM.value, 1, 1, 1, 2, 3, 1, 1 << Unit.LOAD.value)
    _, f = decode_fields(words[4])
    assert (f["addr"], f["addr_mul"], f["reg"], f["count2"], f["count3"]) == (0x1000, 64, 2, 1, 1)
    for word in words:
        assert assemble_line(disassemble_word(word)) == word


def test_disassembler_round_trips_every_word(rng):
    legal = [o.value for o in Opcode]
    for index in range(5000):
        word = int.from_bytes(rng.bytes(32), "little")
        if index % 2:
            word = (word & ~0xF) | int(rng.choice(legal))
        if index % 4 == 1:  # mostly-legal words: reserved bits clear
            word &= (1 << 180) - 1
            word &= ~(0x7F << 17)
        assert assemble_line(disassemble_word(word)) == word


@pytest.mark.parametrize("line, message", [
    ("jump 3", r"^line 1: unknown mnemonic 'jump': 'jump 3'$"),
    ("load length", r"^line 1: expected field=value, not 'length': 'load length'$"),
    ("load buffer=dram", r"^line 1: buffer must be one of vec, act, wgt, meta, not 'dram'"),
    ("load line=r1", r"^line 1: line is not adaptive: 'load line=r1'$"),
    ("load addr=r1 length=r2", r"^line 1: one instruction can use one length register"),
    ("load wait=dma", r"^line 1: unknown unit 'dma'"),
    ("quant length=70000", r"^line 1: quant field length must be 0 to 65535, not 70000"),
    ("quant length=1k", r"^line 1: bad value '1k' for length"),
    (".word 1 2", r"^line 1: .word takes one value"),
])
def test_assembler_errors(line, message):
    with pytest.raises(AssemblyError, match=message):
        assemble(line)


# -- the dispatcher's checks -----------------------------------------------------------------

def _check(line, registers=(0,) * 7, config=SIM_CORE):
    return resolve(config, assemble_line(line), registers)


@pytest.mark.parametrize("line, code, message", [
    (".word 0", ErrorCode.ILLEGAL_OPCODE, "illegal opcode 0"),
    (".word 0x8", ErrorCode.ILLEGAL_OPCODE, "illegal opcode 8"),
    ("halt reserved=1", ErrorCode.BAD_FIELD, "sys: reserved bits are set"),
    ("load spare=1", ErrorCode.BAD_FIELD, "load: reserved bits are set"),
    ("load wait=load", ErrorCode.BAD_FIELD, "cannot wait for or release to its own unit"),
    ("vector op=add release=vector length=1", ErrorCode.BAD_FIELD, "its own unit"),
    ("load port=2 length=1", ErrorCode.BAD_FIELD, "port 2 but the core has 2 HBM ports"),
    ("load length=1 count2=0", ErrorCode.BAD_FIELD, "count2 and count3 must be at least 1"),
    ("load length=0x1000+r1*255", ErrorCode.BAD_FIELD,
     r"length = 69376 \(with r1 = 256\) does not fit its 16 bits"),
    ("load addr=0x10 length=1", ErrorCode.MISALIGNED, "addr = 0x10 is not a multiple"),
    ("load stride2=0x30 length=1 count2=2", ErrorCode.MISALIGNED, "stride2 = 0x30"),
    ("load buffer=act line=251 length=3 count2=2", ErrorCode.BUFFER_RANGE,
     "lines 251 to 256 of ACT are past its 256 lines"),
    ("store buffer=vec line=1023 length=33", ErrorCode.BUFFER_RANGE, "lines 1023 to 1024"),
    ("matrix bits=2 blocks=65 groups=1", ErrorCode.BAD_FIELD, "65 blocks but the engine"),
    ("vector op=rope length=7", ErrorCode.BAD_FIELD, "the length must be even, not 7"),
    ("vector op=add length=257", ErrorCode.BAD_FIELD, "length 257 but the SFU holds 256"),
    ("quant length=2049", ErrorCode.BAD_FIELD, "length 2049 but the engine holds 2048"),
    (".word 0x300000f", ErrorCode.BAD_FIELD, "sys: unknown operation 3"),
    ("barrier peers=1", ErrorCode.BAD_FIELD, "sys: the core has no barrier"),
    ("sync peers=1", ErrorCode.BAD_FIELD, "sync has no operands"),
    ("halt value=r1", ErrorCode.BAD_FIELD, "halt has no operands"),
])
def test_dispatcher_checks(line, code, message):
    _refused(line, code, message, (256, 0, 0, 0, 0, 0, 0))


def _refused(line, code, message, registers, config=SIM_CORE):
    """The dispatcher refuses ``line`` with ``code`` and a message matching ``message``."""
    with pytest.raises(IllegalInstruction, match=message) as error:
        _check(line, registers, config)
    assert error.value.code == code


#: A core whose load unit takes four lines a cycle (WGT in four banks).
STRIPED = CoreConfig(chain=16, vpus=4, hbm_ports=6, load_lanes=4)


@pytest.mark.parametrize("line, message", [
    ("load buffer=wgt stripe=3 length=8", "a stripe of 8 ports but the load unit takes 4"),
    ("load buffer=act stripe=1 length=2", "only WGT and META are banked for striped loads, "
                                          "not ACT"),
    ("load buffer=wgt port=1 stripe=1 length=2", "port = 1 is not a multiple of the stripe 2"),
    ("load buffer=wgt line=2 stripe=2 length=4", "line = 2 is not a multiple of the stripe 4"),
    ("load buffer=wgt stripe=2 length=2+r1*1", r"length = 3 is not a multiple of the stripe 4"),
    ("load buffer=wgt port=4 stripe=2 length=4", "ports 4 to 7 but the core has 6 HBM ports"),
    ("store buffer=act stripe=3 length=4", "a stripe of 8 ports but the load unit takes 4"),
    ("store buffer=act port=1 stripe=1 length=4", "port = 1 is not a multiple of the stripe 2"),
    ("store buffer=vec port=4 stripe=2 length=3", "ports 4 to 7 but the core has 6 HBM ports"),
    ("matrix bits=4 wgt=2 blocks=2 groups=1", "wgt = 2 is not a multiple of WGT's 4 banks"),
])
def test_striped_load_checks(line, message):
    with pytest.raises(IllegalInstruction, match=message) as error:
        _check(line, (1, 0, 0, 0, 0, 0, 0), STRIPED)
    assert error.value.code == ErrorCode.BAD_FIELD


def test_striped_load_semantics():
    """Line ``i`` of a striped row is line ``i // s`` of port ``port + i % s``'s share; every
    row of every plane is striped alike; the span is the consecutive lines from ``line``."""
    rng = np.random.default_rng(5)
    machine = Machine(STRIPED, 1 << 14)
    for memory in machine.hbm:
        memory[:] = rng.integers(0, 256, memory.size, dtype=np.uint8)
    resolved = _check("load buffer=wgt line=8 port=2 stripe=1 addr=0x40 length=6 count2=2 "
                      "stride2=0x400 count3=2 stride3=0x1000", config=STRIPED)
    assert resolved.writes == ((Buffer.WGT, 8, 24),)
    assert machine.execute(resolved)[0] == ErrorCode.NONE
    lines = machine.buffers[Buffer.WGT][8:32]
    step = STRIPED.line_bytes
    for n in range(24):
        i3, i2, i = n // 12, n // 6 % 2, n % 6
        at = 0x40 + i3 * 0x1000 + i2 * 0x400 + i // 2 * step
        np.testing.assert_array_equal(lines[n], machine.hbm[2 + i % 2][at:at + step])
    past = _check("load buffer=wgt port=4 stripe=1 addr=0x3fe0 length=4", config=STRIPED)
    assert machine.execute(past)[0] == ErrorCode.AXI  # one port's share runs past its end


def test_striped_store_semantics():
    """A striped store's addresses are logical: byte ``b`` goes to line ``b // L // s`` of
    port ``port + b // L % s`` (byte ``b % L`` of it), rows of any length and alignment; a
    striped load of the same ports reads the logical lines back in order."""
    rng = np.random.default_rng(6)
    machine = Machine(STRIPED, 1 << 14)
    for memory in machine.hbm:
        memory[:] = rng.integers(0, 256, memory.size, dtype=np.uint8)
    before = [memory.copy() for memory in machine.hbm]
    machine.buffers[Buffer.ACT][:] = rng.integers(0, 256, machine.buffers[Buffer.ACT].shape)
    step = STRIPED.line_bytes
    resolved = _check("store buffer=act line=3 port=4 stripe=1 addr=0x1f3 length=150 count2=3 "
                      "stride2=0x301 count3=2 stride3=0x1000", config=STRIPED)
    assert resolved.reads == ((Buffer.ACT, 3, -(-900 // step)),)
    assert machine.execute(resolved)[0] == ErrorCode.NONE
    source = machine.buffers[Buffer.ACT][3:].ravel()
    want = [memory.copy() for memory in before]
    n = 0
    for i3 in range(2):
        for i2 in range(3):
            for k in range(150):
                b = 0x1f3 + i3 * 0x1000 + i2 * 0x301 + k
                want[4 + b // step % 2][b // step // 2 * step + b % step] = source[n]
                n += 1
    for got, expected in zip(machine.hbm, want, strict=True):
        np.testing.assert_array_equal(got, expected)
    back = _check("load buffer=wgt line=0 port=4 stripe=1 addr=0 length=128", config=STRIPED)
    assert machine.execute(back)[0] == ErrorCode.NONE
    logical = machine.buffers[Buffer.WGT][:128].ravel()
    np.testing.assert_array_equal(logical[0x1f3:0x1f3 + 150], source[:150])
    past = _check("store buffer=act port=2 stripe=1 addr=0x8000 length=1", config=STRIPED)
    assert machine.execute(past)[0] == ErrorCode.AXI  # logical 32 KiB: line 256 of port 2
    np.testing.assert_array_equal(machine.hbm[2], want[2])


def test_matrix_bits_code_3_is_illegal():
    word = encode(Opcode.MATRIX, {"bits": 3, "blocks": 1, "groups": 1})
    with pytest.raises(IllegalInstruction, match="unknown code width 3") as error:
        resolve(SIM_CORE, word)
    assert error.value.code == ErrorCode.BAD_FIELD


def test_adaptive_fields_resolve_from_registers():
    resolved = _check("load buffer=wgt addr=0x100+r2*0x40 length=2+r2*3", (0, 5, 0, 0, 0, 0, 0))
    assert resolved.fields["addr"] == 0x100 + 5 * 0x40
    assert resolved.fields["length"] == 17
    assert resolved.writes == ((Buffer.WGT, 0, 17),)


def test_core_config_validation():
    with pytest.raises(ValueError, match=r"^line_bits must be 256 or 512, not 128$"):
        CoreConfig(line_bits=128)
    with pytest.raises(ValueError, match=r"^vec_lines must be a power of two from 1 to 65536"):
        CoreConfig(vec_lines=1000)
    with pytest.raises(ValueError, match=r"^max_blocks must be a multiple of 2 below 65536"):
        CoreConfig(max_blocks=3)
    with pytest.raises(ValueError, match=r"^hbm_ports must be 1 to 32, not 0$"):
        CoreConfig(hbm_ports=0)
    with pytest.raises(ValueError, match=r"^keeps must hold 16 and distinct values"):
        CoreConfig(keeps=(16, 16))
    with pytest.raises(ValueError, match=r"^modes must be a sequence of 'mv', 'mm'"):
        CoreConfig(modes=("mx",))
    with pytest.raises(ValueError, match=r"^load_lanes must be a power of two from 1 to 2 "):
        CoreConfig(chain=16, vpus=2, hbm_ports=4, load_lanes=4)  # a weight beat of 2 lines
    with pytest.raises(ValueError, match=r"^load_lanes must be a power of two from 1 to 4 "):
        CoreConfig(chain=16, vpus=4, hbm_ports=6, load_lanes=3)
    with pytest.raises(ValueError, match=r"^store_buffers must name one or more of vec, act, "
                                         r"wgt, meta, not 'vec'$"):
        CoreConfig(store_buffers="vec")
    with pytest.raises(ValueError, match=r"^store_buffers must name one or more"):
        CoreConfig(store_buffers=())
    with pytest.raises(ValueError, match=r"^code_bits must hold 8 and distinct values"):
        CoreConfig(code_bits=(4,))
    reduced = CoreConfig(keeps=[8, 16], modes=["mv"], store_buffers=["act", "vec"],
                         code_bits=[4, 8])  # as read back from JSON
    assert (reduced.keeps, reduced.modes) == ((16, 8), ("mv",))
    assert (reduced.store_buffers, reduced.code_bits) == (("vec", "act"), (8, 4))
    assert {"store_buffers", "code_bits"}.isdisjoint(CoreConfig().to_dict())  # as before
    assert CoreConfig(**json.loads(json.dumps(reduced.to_dict()))) == reduced


def test_a_reduced_engine_makes_other_matrix_commands_illegal():
    config = CoreConfig(keeps=(16, 8), modes=("mv",), code_bits=(8, 4))
    assert resolve(config, assemble_line("matrix keep=8 blocks=1 groups=1")).fields["keep"] == 1
    for line, message in (("matrix keep=4 blocks=1 groups=1", "runs N:16 for N in 16, 8, not 4"),
                          ("matrix mode=mm blocks=1 groups=1", "the engine has no MM mode"),
                          ("matrix bits=2 blocks=1 groups=1",
                           "the engine unpacks INT8, INT4 codes, not INT2")):
        with pytest.raises(IllegalInstruction, match=message) as error:
            resolve(config, assemble_line(line))
        assert error.value.code == ErrorCode.BAD_FIELD


def test_a_core_without_a_store_port_on_a_buffer_refuses_stores_from_it():
    config = CoreConfig(store_buffers=("vec", "act"))
    assert resolve(config, assemble_line("load buffer=wgt length=1")).fields["buffer"] == 2
    for name in ("wgt", "meta"):
        with pytest.raises(IllegalInstruction, match=f"^store: the store unit reads VEC, ACT, "
                                                     f"not {name.upper()}$") as error:
            resolve(config, assemble_line(f"store buffer={name} length=32"))
        assert error.value.code == ErrorCode.BAD_FIELD


# -- the simulator ---------------------------------------------------------------------------

def test_load_and_store_patterns(rng):
    m = Machine(SIM_CORE, hbm_bytes=1 << 16)
    m.hbm[1][:] = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    program = assemble("""
        load  buffer=act line=3 port=1 addr=0x200 length=2 count2=3 stride2=0x400 count3=2 \
stride3=0x2000 release=store
        store buffer=act line=3 port=0 addr=0x105 length=7 count2=5 stride2=0x33 count3=2 \
stride3=0x801 wait=load
        halt""".replace("\\\n", ""))
    result = m.run(program)
    assert result.error == ErrorCode.NONE, result.message
    src = m.hbm[1]
    rows = [src[0x200 + i3 * 0x2000 + i2 * 0x400:][:64] for i3 in range(2) for i2 in range(3)]
    expected_lines = np.concatenate(rows).reshape(-1, 32)
    np.testing.assert_array_equal(m.buffers[Buffer.ACT][3:15], expected_lines)
    expected = np.zeros(1 << 16, np.uint8)
    flat = expected_lines.ravel()
    for index, (i3, i2) in enumerate((a, b) for a in range(2) for b in range(5)):
        start = 0x105 + i3 * 0x801 + i2 * 0x33
        expected[start:start + 7] = flat[7 * index:7 * index + 7]
    np.testing.assert_array_equal(m.hbm[0], expected)
    assert sorted(e.pc for e in result.trace) == [0, 1, 2]


WIDTHS = {code: bits for bits, code in BITS_CODES.items()}


@pytest.mark.parametrize("mode", list(MatrixMode))
@pytest.mark.parametrize("pattern", [(16, 16), (8, 16), (2, 4)])
@pytest.mark.parametrize(("weights", "group", "scale_beats"), [
    ("int4-asym", 32, 1), ("int4", 128, 8), ("int8-asym", 64, 2), ("int2", 96, 2)])
def test_matrix_through_load_and_store(rng, mode, pattern, weights, group, scale_beats):
    """A matrix command through LOAD, MATRIX and STORE equals linear(), in every scale format
    (one scales beat per ``scale_beats`` 32-blocks: a group of 32/64/128/256 takes one word,
    symmetric groups two per word, other groups one word per block)."""
    c = SIM_CORE
    g = c.geometry
    op = matrix_operation(rng, g, mode, weights, pattern, group=group)
    assert scale_blocks(op.command) == scale_beats
    assert len(op.beats["scales"]) == op.groups * -(-op.blocks // scale_beats)
    builder = ProgramBuilder(c, 1 << 18)  # lays the beats out in HBM as a LOAD brings them
    bits = c.beat_bits
    loads = []
    for stream, buffer in (("act", "act"), ("weights", "wgt"), ("masks", "meta"),
                           ("scales", "meta")):
        if op.beats[stream]:
            address, lines = builder.put_beats(0, op.beats[stream], bits[stream])
            line = 128 if stream == "scales" else 0
            loads.append((stream, f"load buffer={buffer} line={line} port=0 addr={address:#x} "
                          f"length={lines}"))
    m = Machine(c, hbm_bytes=1 << 18)
    for port, image in enumerate(builder.hbm):
        m.hbm[port][:] = image
    f = op.command
    text = "\n".join(t for _, t in loads[:-1]) + "\n" + loads[-1][1] + " release=matrix\n"
    text += (f"matrix mode={MatrixMode(f['mode']).name.lower()} keep={op.keep} "
             f"bits={WIDTHS[f['bits']]} signed={f['signed']} load=1 blocks={f['blocks']} "
             f"groups={f['groups']} wgroup={32 << f['wgroup']} pair={f['pair']} act=0 wgt=0 "
             f"mask=0 scale=128 out=16 wait=load release=store\n")
    lines_out = op.groups * c.beat_lines(bits["out"])
    text += (f"store buffer=vec line=16 port=1 addr=0 length={lines_out * c.line_bytes} "
             f"wait=matrix\nhalt\n")
    result = m.run(assemble(text))
    assert result.error == ErrorCode.NONE, result.message
    out = m.hbm[1][:lines_out * c.line_bytes].reshape(op.groups, -1)[:, :4 * g.lanes]
    got = out.copy().view(np.int32).astype(np.int64)
    np.testing.assert_array_equal(got, op.expected)


def test_quant_then_matrix_is_the_linear_layer(rng):
    """FX vector -> QUANT -> MATRIX (MV) equals linear(quantize_per_group(x))."""
    c = SIM_CORE
    g = c.geometry
    k, rows = 96, 8
    x = rng.integers(-(1 << 22), 1 << 22, k)
    codes, scale = quantize_per_group(x[None])
    weight = GroupQuantized.from_float(rng.normal(0, 0.05, (rows, k)), 8, 32, True)
    op = MatrixOperation(g, MatrixMode.MV, weight, codes, scale)
    m = Machine(c, hbm_bytes=1 << 16)
    m.write_vector(0, x)
    bits = c.beat_bits
    for stream, buffer in (("weights", Buffer.WGT), ("scales", Buffer.META)):
        m.put_beats(buffer, 0, op.beats[stream], bits[stream])
    program = assemble(f"""
        quant length={k} src=0 dst=0 release=matrix
        matrix mode=mv bits=8 signed=1 load=1 blocks={op.blocks} groups={op.groups} pair=1 \
out=64 wait=vector
        halt""".replace("\\\n", ""))
    result = m.run(program)
    assert result.error == ErrorCode.NONE, result.message
    got = m.read_vector(64, op.groups * g.lanes)[:rows]
    np.testing.assert_array_equal(got, linear(codes, scale, weight)[0])


@pytest.mark.parametrize("op", list(VectorOp))
def test_vector_ops(rng, op):
    c = SIM_CORE
    length = int(rng.integers(1, 40)) * (2 if op == VectorOp.ROPE else 1)
    vop = vector_operation(rng, c.lanes, op, length)
    m = Machine(c)
    m.put_beats(Buffer.VEC, 0, vop.beats["a"], 32 * c.lanes)
    if op in B_IS_VECTOR:  # an FX vector
        m.write_vector(100, vop.b_values)
    elif vop.beats["b"]:  # parameter entries
        m.put_beats(Buffer.VEC, 100, vop.beats["b"], 48 * c.lanes)
    f = vop.command
    program = assemble(f"vector op={op.name.lower()} length={f['length']} valid={f['valid']} "
                       f"frac={f['frac']} eps={f['eps']} position={f['position']} a=0 b=100 "
                       f"out=200\nhalt")
    result = m.run(program)
    assert result.error == ErrorCode.NONE, result.message
    np.testing.assert_array_equal(m.read_vector(200, length), vop.expected)


# -- tokens, queues and errors -----------------------------------------------------------------

def test_tokens_order_dependent_work():
    """A store that waits for the load sees the loaded data; the program halts cleanly."""
    m = Machine(SIM_CORE, hbm_bytes=1 << 12)
    m.hbm[0][:64] = np.arange(64)
    program = assemble("""
        load  buffer=vec line=0 port=0 addr=0 length=2 release=store
        store buffer=vec line=0 port=1 addr=0x100 length=64 wait=load
        halt""")
    result = m.run(program)
    assert result.error == ErrorCode.NONE
    np.testing.assert_array_equal(m.hbm[1][0x100:0x140], np.arange(64))


def test_deadlock_is_an_error_at_the_lowest_blocked_pc():
    program = assemble("""
        load  buffer=vec length=1 wait=store
        store buffer=vec length=1 wait=load
        halt""")
    result = Machine(SIM_CORE, hbm_bytes=1 << 12).run(program)
    assert (result.error, result.error_pc) == (ErrorCode.DEADLOCK, 0)


def test_program_end_without_halt():
    result = Machine(SIM_CORE, hbm_bytes=1 << 12).run(assemble("sync\nsync"))
    assert (result.error, result.error_pc) == (ErrorCode.PROGRAM_END, 2)


def test_axi_error_past_the_memory():
    program = assemble("load buffer=vec addr=0x1000 length=1\nhalt")
    result = Machine(SIM_CORE, hbm_bytes=1 << 12).run(program)
    assert (result.error, result.error_pc) == (ErrorCode.AXI, 0)


def test_illegal_instruction_after_queued_work_still_runs_the_work():
    m = Machine(SIM_CORE, hbm_bytes=1 << 12)
    m.hbm[0][:32] = 7
    result = m.run(assemble("load buffer=vec line=5 length=1\n.word 0x9\nhalt"))
    assert (result.error, result.error_pc) == (ErrorCode.ILLEGAL_OPCODE, 1)
    np.testing.assert_array_equal(m.buffers[Buffer.VEC][5], np.full(32, 7))


def test_token_limit_is_part_of_the_semantics():
    """Eight queued loads take eight of 24 tokens; the other 16 outstanding releases exceed a
    limit of 15, so the dispatcher waits forever before it queues the loads that would take
    them: a deadlock at limit 15, none at 16."""
    lines = (["load buffer=vec length=1 wait=sys"] * 8 + ["sync release=load"] * 24
             + ["load buffer=vec length=1 wait=sys"] * 16 + ["halt"])
    program = assemble("\n".join(lines))
    limited = Machine(CoreConfig(token_limit=15), hbm_bytes=1 << 12).run(program)
    assert limited.error == ErrorCode.DEADLOCK
    assert Machine(CoreConfig(token_limit=16), hbm_bytes=1 << 12).run(program).error == \
        ErrorCode.NONE


def test_queue_depth_is_part_of_the_semantics():
    """A load waiting for a later store's token behind a full load queue deadlocks exactly
    when the queue is too short to let the dispatcher reach the store."""
    body = ["load buffer=vec length=1 wait=store"] + ["load buffer=vec length=1"] * 8
    program = assemble("\n".join(body + ["store buffer=vec length=1 release=load", "halt"]))
    short = Machine(CoreConfig(queue_depth=8), hbm_bytes=1 << 12).run(program)
    deep = Machine(CoreConfig(queue_depth=9), hbm_bytes=1 << 12).run(program)
    assert (short.error, short.error_pc) == (ErrorCode.DEADLOCK, 0)
    assert deep.error == ErrorCode.NONE


def test_random_words_never_crash_the_simulator(rng):
    """Fuzz: random words (half with legal opcodes and clear reserved bits) end in a clean
    error or a clean halt, never an exception."""
    legal = [o.value for o in Opcode]
    for _ in range(300):
        words = []
        for _ in range(int(rng.integers(1, 6))):
            word = int.from_bytes(rng.bytes(32), "little")
            if rng.random() < 0.7:
                word = (word & ~0xF) | int(rng.choice(legal))
                word &= ~(0x7F << 17)
                word &= (1 << int(rng.integers(24, 200))) - 1
            words.append(word)
        result = Machine(SIM_CORE, hbm_bytes=1 << 12).run(words, registers=tuple(
            int(v) for v in rng.integers(0, 64, 7)))
        assert isinstance(result.error, ErrorCode)
        assert result.error != ErrorCode.NONE or any(
            decode_fields(w)[0] == Opcode.SYS for w in words)


def test_docs_match_the_definitions():
    """docs/isa.md carries the generated field tables and documents every error code."""
    from pathlib import Path

    from flightgen.isa.instructions import format_tables

    text = (Path(__file__).parent.parent / "docs" / "isa.md").read_text()
    start, end = text.index("<!-- formats -->\n") + 17, text.index("<!-- /formats -->")
    assert text[start:end] == format_tables()
    for code in ErrorCode:
        assert f"| {code.value} | `{code.name}` |" in text
    example = text[text.index("## Assembly"):]
    example = example[example.index("```\n") + 4:]
    example = example[:example.index("```")]
    words = assemble(example)
    assert [assemble_line(disassemble_word(w)) for w in words] == words


# -- BARRIER: the cores of a tensor-parallel group -------------------------------------------

_BARRIER_CORE = CoreConfig(barrier=True)


@pytest.mark.parametrize("line, code, message", [
    ("barrier peers=0", ErrorCode.BAD_FIELD, r"peers = 0: a barrier meets 1 to 8 cores"),
    ("barrier peers=9", ErrorCode.BAD_FIELD, r"peers = 9"),
    ("barrier peers=2 slot=2", ErrorCode.BAD_FIELD, "slot 2 but the barrier meets 2 cores"),
    ("barrier peers=2 addr=0x10", ErrorCode.MISALIGNED, "addr = 0x10 is not a multiple"),
    ("barrier peers=2 value=0x10000+r1*0xffff", ErrorCode.BAD_FIELD, "value = 4294967296"),
])
def test_barrier_checks(line, code, message):
    _refused(line, code, message, (0x10000, 0, 0, 0, 0, 0, 0), _BARRIER_CORE)


def _exchange_programs(cores):
    """Each core stores one line of its own to the exchange port, meets the others, then
    loads every core's line."""
    return [assemble(f"""
        store buffer=vec line=0 port=1 addr={64 + 32 * slot} length=32 release=sys
        barrier peers={cores} slot={slot} addr=0 value=1+r5*256 wait=store release=load
        load buffer=vec line=1 port=1 addr=64 length={cores} wait=sys
        halt""") for slot in range(cores)]


def _group(cores, shared):
    machines = []
    for slot in range(cores):
        machine = Machine(_BARRIER_CORE, 4096)
        machine.hbm[_BARRIER_CORE.exchange_port] = shared
        machine.buffers[Buffer.VEC][0] = np.arange(32) + 100 * slot
        machines.append(machine)
    return machines


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0)])
def test_a_group_exchanges_through_hbm_behind_a_barrier(order):
    shared = np.zeros(4096, np.uint8)
    machines = _group(3, shared)
    programs = _exchange_programs(3)
    results = run_group([machines[i] for i in order], [programs[i] for i in order],
                        (0, 0, 0, 0, 2, 0, 0))
    lines = (np.arange(32)[None, :] + 100 * np.arange(3)[:, None]).astype(np.uint8)
    for machine, result in zip([machines[i] for i in order], results, strict=True):
        assert result.error == ErrorCode.NONE, result.message
        np.testing.assert_array_equal(machine.buffers[Buffer.VEC][1:4], lines)
        assert [e.pc for e in result.unit_trace(Unit.SYS)] == [1, 3]
    # every flag holds the barrier's value: 1 + 256 * r5
    np.testing.assert_array_equal(shared[:12].view("<u4"), [513] * 3)


def test_a_barrier_whose_peers_never_come_is_an_error():
    shared = np.zeros(4096, np.uint8)
    machine = _group(1, shared)[0]
    result = machine.run(_exchange_programs(3)[0], (0,) * 7)
    assert (result.error, result.error_pc) == (ErrorCode.BARRIER, 1)
    # two of a group of three: both stop at their barrier
    results = run_group(_group(2, shared), _exchange_programs(3)[:2], (0,) * 7)
    assert [(r.error, r.error_pc) for r in results] == [(ErrorCode.BARRIER, 1)] * 2
    # a stale flag of an earlier step (value 1 + 256 * 2) does not satisfy a later one
    shared[:12] = np.array([513] * 3, "<u4").view(np.uint8)
    result = _group(1, shared)[0].run(_exchange_programs(3)[0], (0, 0, 0, 0, 3, 0, 0))
    assert result.error == ErrorCode.BARRIER


def test_a_barrier_flag_past_the_memory_is_an_axi_error():
    machine = Machine(_BARRIER_CORE, 4096)
    result = machine.run(assemble("barrier peers=1 addr=0x1000\nhalt"), (0,) * 7)
    assert (result.error, result.error_pc) == (ErrorCode.AXI, 0)
    result = machine.run(assemble("barrier peers=1 addr=0xfe0 value=7\nhalt"), (0,) * 7)
    assert result.error == ErrorCode.NONE
    assert int(machine.hbm[1][0xfe0:0xfe4].view("<u4")[0]) == 7
