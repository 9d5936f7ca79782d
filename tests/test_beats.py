"""Beats to and from buffer lines: BeatReader, BeatWriter and WriteArbiter against a memory,
under random backpressure."""

import os

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from flightgen.hw.beats import BeatReader, BeatWriter, WriteArbiter, span_layout

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))


class _ReaderBench(wiring.Component):
    def __init__(self, line_bits, beat_bits, init):
        self.reader = BeatReader(line_bits, beat_bits)
        self.init = init
        super().__init__({"cmd": In(stream.Signature(span_layout)),
                          "o": Out(stream.Signature(beat_bits))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = r = self.reader
        m.submodules.mem = mem = Memory(shape=r.line_bits, depth=len(self.init), init=self.init)
        port = mem.read_port()
        m.d.comb += [port.en.eq(r.read.en), port.addr.eq(r.read.addr),
                     r.read.data.eq(port.data)]
        wiring.connect(m, wiring.flipped(self.cmd), r.cmd)
        wiring.connect(m, r.o, wiring.flipped(self.o))
        return m


def _run(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("line_bits, beat_bits", [(256, 128), (256, 256), (256, 560),
                                                  (512, 1120)])
def test_reader_streams_beats_under_backpressure(line_bits, beat_bits):
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    lines = [int.from_bytes(rng.bytes(line_bits // 8), "little") for _ in range(64)]
    dut = _ReaderBench(line_bits, beat_bits, lines)
    per = -(-beat_bits // line_bits)
    commands = [(int(rng.integers(0, 10)), int(rng.integers(0, 64 // per - 10)))
                for _ in range(6)] + [(3, 0), (0, 1)]
    got = []

    async def bench(ctx):
        for start, beats in commands:
            ctx.set(dut.cmd.payload, {"line": start, "beats": beats})
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            out = []
            while len(out) < beats:
                ready = bool(rng.random() < 0.7)
                ctx.set(dut.o.ready, ready)
                if ready and ctx.get(dut.o.valid):
                    out.append(ctx.get(dut.o.payload))
                await ctx.tick()
            ctx.set(dut.o.ready, 0)
            for _ in range(3):
                assert not ctx.get(dut.o.valid)  # no extra beat
                await ctx.tick()
            got.append(out)

    _run(dut, bench)
    mask = (1 << beat_bits) - 1
    for (start, beats), out in zip(commands, got, strict=True):
        expected = [sum(lines[start + b * per + j] << (j * line_bits) for j in range(per)) & mask
                    for b in range(beats)]
        assert out == expected


def test_reader_full_rate():
    lines = list(range(1, 41))
    dut = _ReaderBench(256, 256, lines)
    stamps = []

    async def bench(ctx):
        ctx.set(dut.cmd.payload, {"line": 0, "beats": 32})
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        for cycle in range(60):
            if ctx.get(dut.o.valid):
                stamps.append((cycle, ctx.get(dut.o.payload)))
            await ctx.tick()

    _run(dut, bench)
    assert [v for _, v in stamps] == lines[:32]
    assert stamps[-1][0] - stamps[0][0] == 31  # back to back


class _WriterBench(wiring.Component):
    def __init__(self, line_bits, beat_bits, writers):
        self.writers = [BeatWriter(line_bits, beat_bits) for _ in range(writers)]
        self.arbiter = WriteArbiter(writers, line_bits)
        self.mem = Memory(shape=line_bits, depth=64, init=[])
        members = {}
        for k in range(writers):
            members[f"cmd{k}"] = In(stream.Signature(span_layout))
            members[f"i{k}"] = In(stream.Signature(beat_bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.arbiter = a = self.arbiter
        m.submodules.mem = self.mem
        port = self.mem.write_port()
        m.d.comb += [port.en.eq(a.en), port.addr.eq(a.addr), port.data.eq(a.data)]
        for k, w in enumerate(self.writers):
            m.submodules[f"writer{k}"] = w
            wiring.connect(m, wiring.flipped(getattr(self, f"cmd{k}")), w.cmd)
            wiring.connect(m, wiring.flipped(getattr(self, f"i{k}")), w.i)
            wiring.connect(m, w.w, getattr(a, f"i{k}"))
        return m


@pytest.mark.parametrize("beat_bits", [128, 560])
def test_writers_share_a_port(beat_bits):
    rng = np.random.default_rng(SEED)
    line_bits, writers, beats = 256, 3, 5
    per = -(-beat_bits // line_bits)
    dut = _WriterBench(line_bits, beat_bits, writers)
    data = [[int.from_bytes(rng.bytes(beat_bits // 8), "little") for _ in range(beats)]
            for _ in range(writers)]
    finished = []
    contents = {}

    def writer(k):
        async def bench(ctx):
            cmd, beat_stream = getattr(dut, f"cmd{k}"), getattr(dut, f"i{k}")
            ctx.set(cmd.payload, {"line": k * beats * per, "beats": beats})
            ctx.set(cmd.valid, 1)
            await ctx.tick().until(cmd.ready)
            ctx.set(cmd.valid, 0)
            await ctx.tick()
            for value in data[k]:
                while rng.random() < 0.3:
                    await ctx.tick()
                ctx.set(beat_stream.payload, value)
                ctx.set(beat_stream.valid, 1)
                await ctx.tick().until(beat_stream.ready)
                ctx.set(beat_stream.valid, 0)
            await ctx.tick().until(cmd.ready)
            finished.append(k)
            if len(finished) == writers:
                await ctx.tick()
                for line in range(writers * beats * per):
                    contents[line] = ctx.get(dut.mem.data[line])
        return bench

    _run(dut, *(writer(k) for k in range(writers)))
    for k in range(writers):
        for b, value in enumerate(data[k]):
            for j in range(per):
                line = k * beats * per + b * per + j
                assert contents[line] == (value >> (j * line_bits)) & ((1 << line_bits) - 1)
