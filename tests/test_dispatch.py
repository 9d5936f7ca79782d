"""The dispatcher's hardware against the ISA: the decoder refuses exactly what
flightgen.isa.machine.resolve refuses, with the same code, and resolves the same fields."""

import dataclasses
import os

import numpy as np
from amaranth.sim import Simulator

from flightgen.hw.dispatch import Decoder, TokenMatrix
from flightgen.isa.assembly import assemble
from flightgen.isa.instructions import ADAPTIVE, Opcode, decode_fields, encode, fields
from flightgen.isa.machine import SIM_CORE, CoreConfig, ErrorCode, IllegalInstruction, resolve
from flightgen.isa.matrix import MatrixStreams
from flightgen.sim.stimulus import random_instruction

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))


def _expected(word, registers, config):
    """(error, resolved word, matrix beats) from the ISA."""
    try:
        r = resolve(config, word, registers)
    except IllegalInstruction as error:
        return error.code, None, None
    # a BARRIER's port (the exchange port) is the core's, not an encoded field
    values = {k: v for k, v in r.fields.items()
              if k != "opcode" and not (k == "port" and r.opcode == Opcode.SYS)}
    resolved = encode(r.opcode, values)
    beats = None
    if r.opcode == Opcode.MATRIX and r.fields["blocks"] and r.fields["groups"]:
        s = MatrixStreams(config.geometry, r.fields)
        beats = (s.act, s.weights, s.masks, s.scales)
    return ErrorCode.NONE, resolved, beats


#: Spans that end exactly at a buffer's end (legal), then one line further (illegal).
BOUNDARIES = """
    load buffer=act line=250 length=3 count2=2
    load buffer=act line=251 length=3 count2=2
    store buffer=vec line=1023 length=32
    store buffer=vec line=1023 length=33
    matrix bits=8 signed=1 blocks=2 groups=4 out=1020
    matrix bits=8 signed=1 blocks=2 groups=4 out=1021
    matrix bits=8 signed=1 blocks=2 groups=4 wgt=992
    matrix bits=8 signed=1 blocks=2 groups=4 wgt=993
    matrix bits=8 keep=8 blocks=2 groups=4 mask=252
    matrix bits=8 keep=8 blocks=2 groups=4 mask=253
    matrix bits=8 blocks=2 groups=4 scale=248
    matrix bits=8 blocks=2 groups=4 scale=249
    matrix mode=mm bits=8 load=1 blocks=2 groups=4 act=244 raw=1
    matrix mode=mm bits=8 load=1 blocks=2 groups=4 act=245 raw=1
    vector op=add length=8 a=1022 b=1022 out=1022
    vector op=add length=8 a=1023
    vector op=add length=8 b=1023
    vector op=silu length=8 b=1023 out=5
    quant length=64 src=1008 dst=253
    quant length=64 dst=254
    quant length=64 src=1009
"""


def _words(rng, count):
    """Random words: a third fully random, a third legal opcodes with clear reserved bits and
    random small fields (most checks reachable), a third small legal-looking programs."""
    words = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            words.append(int.from_bytes(rng.bytes(32), "little"))
            continue
        bits = 12 if kind == 1 else 6
        opcode, values = random_instruction(rng, lambda name, width, bits=bits: bits,
                                            tokens=0.3)
        for name in values:
            if name.endswith("_mul") and rng.random() < 0.5:
                values[name] = 0
        if opcode in (Opcode.LOAD, Opcode.STORE) and rng.random() < 0.8:
            values["port"] &= 1
            values["count2"] = max(values["count2"], 1)
            values["count3"] = max(values["count3"], 1)
            if rng.random() < 0.6:
                for key in ("addr", "stride2", "stride3"):
                    values[key] &= ~31
        if rng.random() < 0.05:
            values["spare" if rng.random() < 0.5 else "reserved"] = 1
        words.append(encode(opcode, values))
    return words


def _decode(config, words, registers):
    """Run ``words`` through the Decoder; return (error, resolved word, beats, pc) each."""
    dut = Decoder(config)
    got = []

    async def bench(ctx):
        for word, regs in zip(words, registers, strict=True):
            ctx.set(dut.registers, list(regs))
            ctx.set(dut.i.payload, {"word": word, "pc": len(got)})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, 1)
            payload, = await ctx.tick().sample(dut.o.payload).until(dut.o.valid)
            ctx.set(dut.o.ready, 0)
            got.append((ErrorCode(payload.error), int(payload.word), payload.matrix,
                        int(payload.pc)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_decoder_matches_the_isa_on_random_words():
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    config = SIM_CORE
    words = _words(rng, 900) + assemble("""
        load buffer=wgt line=4 port=1 addr=0x4000 length=16 count2=2 stride2=0x1000
        matrix mode=mm keep=8 bits=4 blocks=18 groups=2+r1*3 act=1 wgt=4 mask=5 scale=6
        vector op=rope length=r1*2 a=8 b=16 out=24
        quant length=r3*32 src=0 dst=2
        store buffer=vec line=24 port=0 addr=0x1003+r2*64 length=64
        halt""") + assemble(BOUNDARIES)
    registers = [tuple(int(v) for v in rng.integers(0, 40, 6)) + (1 << 31,)
                 for _ in words]
    got = _decode(config, words, registers)
    seen = {code: 0 for code in ErrorCode}
    for index, (word, regs) in enumerate(zip(words, registers, strict=True)):
        error, resolved, beats = _expected(word, regs, config)
        g_error, g_word, g_beats, g_pc = got[index]
        seen[error] += 1
        assert g_pc == index
        assert g_error == error, (index, hex(word), error, g_error)
        if error == ErrorCode.NONE:
            assert g_word == resolved, (index, hex(word))
            if beats is not None:
                assert (g_beats.act, g_beats.weights, g_beats.masks, g_beats.scales) == beats
    print({code.name: n for code, n in seen.items()})
    for code in (ErrorCode.NONE, ErrorCode.ILLEGAL_OPCODE, ErrorCode.BAD_FIELD,
                 ErrorCode.MISALIGNED, ErrorCode.BUFFER_RANGE):
        assert seen[code] >= 5, f"the fuzz reached {code.name} only {seen[code]} times"


def test_decoder_refuses_the_matrix_modes_a_reduced_engine_lacks():
    """A core whose engine runs MV only, dense and 8:16, INT8 and INT4 (the board
    configuration's) refuses MM, 4:16 / 2:16 and INT2 commands as BAD_FIELD, like the ISA;
    the rest resolve alike."""
    config = dataclasses.replace(SIM_CORE, keeps=(16, 8), modes=("mv",), code_bits=(8, 4))
    words = assemble("\n".join(
        f"matrix mode={mode} keep={keep} bits={bits} blocks=2 groups=3 wgroup=64 pair=1"
        for bits in (4, 2) for mode in ("mv", "mm") for keep in (16, 8, 4, 2)))
    registers = [(0,) * 7] * len(words)
    got = _decode(config, words, registers)
    expected = [_expected(word, regs, config) for word, regs in zip(words, registers, strict=True)]
    assert [e[0] for e in expected] == [ErrorCode.NONE] * 2 + [ErrorCode.BAD_FIELD] * 14
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (error, resolved, beats), (_, word, g_beats, _) in zip(expected, got, strict=True):
        if error == ErrorCode.NONE:
            assert word == resolved
            assert (g_beats.act, g_beats.weights, g_beats.masks, g_beats.scales) == beats


def test_decoder_refuses_stores_from_buffers_without_a_store_port():
    """A core whose store unit reads VEC and ACT only (the board configuration's) refuses a
    STORE from WGT or META as BAD_FIELD, like the ISA; loads into them still resolve."""
    config = dataclasses.replace(SIM_CORE, store_buffers=("vec", "act"))
    words = assemble("\n".join(
        [f"store buffer={b} line=2 port=1 addr=0x40 length=64" for b in ("vec", "act", "wgt",
                                                                       "meta")] +
        [f"load buffer={b} line=2 port=1 addr=0x40 length=2" for b in ("wgt", "meta")]))
    registers = [(0,) * 7] * len(words)
    got = _decode(config, words, registers)
    expected = [_expected(word, regs, config) for word, regs in zip(words, registers, strict=True)]
    assert [e[0] for e in expected] == [ErrorCode.NONE] * 2 + [ErrorCode.BAD_FIELD] * 2 + [
        ErrorCode.NONE] * 2
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (error, resolved, _), (_, word, _, _) in zip(expected, got, strict=True):
        if error == ErrorCode.NONE:
            assert word == resolved


def test_decoder_checks_striped_loads_like_the_isa():
    """A core with a four-lane load unit: striped loads and stores, each of their checks, and
    MATRIX weight lines off the banks resolve (or fail) as in the ISA; random words too."""
    rng = np.random.default_rng(SEED + 9)
    config = CoreConfig(chain=16, vpus=4, hbm_ports=6, load_lanes=4)
    words = assemble("""
        load buffer=wgt line=8 port=2 stripe=1 addr=0x400 length=6+r1*2 count2=2
        load buffer=meta line=4 port=0 stripe=2 length=8
        load buffer=wgt stripe=3 length=8
        load buffer=vec stripe=1 length=2
        load buffer=wgt port=1 stripe=1 length=2
        load buffer=wgt line=2 stripe=2 length=4
        load buffer=wgt stripe=2 length=2+r1*1
        load buffer=wgt port=4 stripe=2 length=4
        load buffer=wgt port=4 stripe=1 length=4
        store buffer=act line=3 port=4 stripe=1 length=5
        store buffer=vec port=0 stripe=2 length=3+r1*1
        store buffer=wgt stripe=3 length=4
        store buffer=wgt port=2 stripe=2 length=4
        store buffer=wgt port=4 stripe=2 length=4
        matrix bits=4 wgt=2 blocks=2 groups=1
        matrix bits=4 wgt=8 blocks=2 groups=1""")
    words += _words(rng, 300)
    registers = [(1, 0, 0, 0, 0, 0, 0)] * 16 + [
        tuple(int(v) for v in rng.integers(0, 40, 6)) + (1 << 31,) for _ in words[16:]]
    got = _decode(config, words, registers)
    expected = [_expected(word, regs, config) for word, regs in zip(words, registers, strict=True)]
    assert [e[0] for e in expected[:16]] == [ErrorCode.NONE] * 2 + [ErrorCode.BAD_FIELD] * 6 + [
        ErrorCode.NONE] * 3 + [ErrorCode.BAD_FIELD] * 3 + [ErrorCode.BAD_FIELD, ErrorCode.NONE]
    for index, ((error, resolved, beats), (g_error, word, g_beats, _)) in enumerate(
            zip(expected, got, strict=True)):
        assert g_error == error, (index, hex(words[index]), error, g_error)
        if error == ErrorCode.NONE:
            assert word == resolved
            if beats is not None:
                assert (g_beats.act, g_beats.weights, g_beats.masks, g_beats.scales) == beats


def test_decoder_checks_barriers_like_the_isa():
    """BARRIER and SYS operands on a core with the barrier and on one without: each check
    (peers, slot, alignment, a too wide value, operands of SYNC and HALT) gives the ISA's
    code, legal barriers resolve alike; random SYS words too."""
    rng = np.random.default_rng(SEED + 11)
    words = assemble("""
        barrier peers=3 slot=1 addr=0x40 value=2+r5*256 wait=store release=load
        barrier peers=8 slot=7 addr=0xffffffffe0 value=0xffffffff
        barrier peers=1
        barrier peers=0
        barrier peers=9
        barrier peers=2 slot=2
        barrier peers=2 addr=0x10
        barrier peers=2 value=0x10000+r7*0xffff
        sync peers=1
        halt value=3
        sync
        halt""")
    sys_words = []
    while len(sys_words) < 200:
        word = _words(rng, 3)[1]
        if word & 0xF == Opcode.SYS.value:
            sys_words.append(word)
    words += sys_words
    registers = [(1, 0, 0, 0, 7, 0, 0x10000)] * len(words)
    for config in (dataclasses.replace(SIM_CORE, barrier=True), SIM_CORE):
        got = _decode(config, words, registers)
        expected = [_expected(w, r, config) for w, r in zip(words, registers, strict=True)]
        if config.barrier:
            assert [e[0] for e in expected[:12]] == [ErrorCode.NONE] * 3 + [
                ErrorCode.BAD_FIELD] * 3 + [ErrorCode.MISALIGNED] + [ErrorCode.BAD_FIELD] * 3 + [
                ErrorCode.NONE] * 2
        else:
            assert [e[0] for e in expected[:10]] == [ErrorCode.BAD_FIELD] * 10
        for index, ((error, resolved, _), (g_error, word, _, _)) in enumerate(
                zip(expected, got, strict=True)):
            assert g_error == error, (index, hex(words[index]), error, g_error)
            if error == ErrorCode.NONE:
                assert word == resolved


def test_token_matrix_counts_and_limits():
    dut = TokenMatrix(3, 2)

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert ctx.get(dut.available[1][0]) == 0
        ctx.set(dut.give[0], 0b010)  # 0 -> 1
        await ctx.tick()
        await ctx.tick()
        assert ctx.get(dut.available[1][0]) == 1 and ctx.get(dut.full[0][1]) == 1
        ctx.set(dut.give[0], 0b010)
        ctx.set(dut.take[1], 0b001)  # take and give in one cycle: still 2
        await ctx.tick()
        ctx.set(dut.give[0], 0)
        assert ctx.get(dut.full[0][1]) == 1
        await ctx.tick()
        await ctx.tick()
        assert ctx.get(dut.available[1][0]) == 0 and ctx.get(dut.full[0][1]) == 0
        ctx.set(dut.take[1], 0)
        assert ctx.get(dut.available[2][0]) == 0 and ctx.get(dut.available[0][1]) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_adaptive_fields_listed_exist():
    for opcode, names in ADAPTIVE.items():
        known = {n.removeprefix("header.") for n, _, _ in fields(opcode)}
        for name in names:
            assert name in known and f"{name}_mul" in known
    assert decode_fields(0) == (None, {})


ATTENTION_BOUNDARIES = """
    token length=64 src=1008 dst=253 scale=1023
    token length=64 src=1009
    token length=64 dst=254
    token length=64 scale=1024
    token fold=1 length=64 sc=1008 lo=253
    token fold=1 length=64 sc=1009
    token fold=1 length=64 lo=254
    token fold=0 length=64 sc=1009 lo=254
    token length=2049
    rescale length=8 x=1022 y=1022 a=1023 out=1022
    rescale length=8 x=1023
    rescale length=8 y=1023
    rescale length=8 out=1023
    rescale length=0 out=1023
"""


def test_decoder_matches_the_isa_on_attention_instructions():
    """TOKEN and RESCALE at the buffers' ends and past them, and random ones."""
    rng = np.random.default_rng(SEED)
    config = SIM_CORE
    words = assemble(ATTENTION_BOUNDARIES)
    for _ in range(200):
        opcode = (Opcode.TOKEN, Opcode.RESCALE)[int(rng.integers(2))]
        _, values = random_instruction(rng, lambda name, width: 11, tokens=0.1, opcode=opcode)
        words.append(encode(opcode, values))
    registers = [(0,) * 6 + (1 << 31,)] * len(words)
    got = _decode(config, words, registers)
    for index, word in enumerate(words):
        error, resolved, _ = _expected(word, registers[index], config)
        assert got[index][0] == error, (index, hex(word), error, got[index][0])
        if error == ErrorCode.NONE:
            assert got[index][1] == resolved
