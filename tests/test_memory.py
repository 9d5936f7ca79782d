"""The memory engines in amaranth.sim against the ISA simulator: LOAD and STORE descriptors from
encoded instructions, run on AXI memory models with random latency and stalls, compared byte
for byte with flightgen.isa.machine.Machine; the burst rules, errors and bandwidth."""

import functools
import os
import sys

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.back import verilog
from amaranth.sim import Simulator

from flightgen.hw.axi import axi4_signature
from flightgen.hw.memory import (
    LoadEngine,
    StoreEngine,
    load_command_layout,
    store_command_layout,
)
from flightgen.isa.instructions import OPCODE_UNIT, Buffer, Opcode, encode
from flightgen.isa.machine import (
    CoreConfig,
    ErrorCode,
    IllegalInstruction,
    Machine,
    Resolved,
    resolve,
)
from flightgen.sim.axi_model import AxiMemoryModel, AxiViolation

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))
#: Bytes of each port's memory (the Machine's and the model's).
HBM = 0x10000


def make_rng(name):
    seed = SEED + sum(name.encode())
    print(f"seed {SEED} (set FLIGHTGEN_SEED to reproduce)")
    return np.random.default_rng(seed)


def command_of(config, opcode, **fields):
    """The resolved fields of an encoded LOAD/STORE (IllegalInstruction if the dispatcher
    would refuse it); the counts default to 1."""
    f = resolve(config, encode(opcode, {"count2": 1, "count3": 1, **fields})).fields
    layout = load_command_layout if opcode == Opcode.LOAD else store_command_layout
    return {name: f[name] for name in layout.members}


def execute(machine, opcode, command):
    """Run one resolved LOAD/STORE on the ISA simulator; its error code."""
    error, _ = machine.execute(Resolved(0, opcode, OPCODE_UNIT[opcode], 0, 0, command))
    return error


def random_load(config, rng, striped=False):
    step = config.line_bytes
    while True:
        stripe = int(rng.integers(0, config.load_lanes.bit_length())) if striped else 0
        length = int(rng.choice([0, 1, 2, 3, 5, int(rng.integers(1, 40)),
                                 int(rng.integers(100, 200))]))
        count2, count3 = (int(x) for x in rng.integers(1, 4, 2))
        stride2 = int(rng.integers(0, 0x1800 // step)) * step
        stride3 = int(rng.integers(0, 0x3000 // step)) * step
        if rng.random() < 0.5:  # rows that start just before a 4 KiB boundary
            addr = int(rng.integers(1, 6)) * 0x1000 - int(rng.integers(1, 5)) * step
        else:
            addr = int(rng.integers(0, 0x6000 // step)) * step
        fields = dict(buffer=int(rng.integers(0, 4)), line=int(rng.integers(0, 64)),
                      port=int(rng.integers(0, config.hbm_ports)), addr=addr, length=length,
                      count2=count2, stride2=stride2, count3=count3, stride3=stride3)
        if stripe:  # into WGT, on aligned ports, lines and lengths
            s = 1 << stripe
            fields.update(stripe=stripe, buffer=Buffer.WGT.value, line=fields["line"] // s * s,
                          port=int(rng.integers(0, config.hbm_ports // s)) * s,
                          length=length // s * s)
        try:
            return command_of(config, Opcode.LOAD, **fields)
        except IllegalInstruction:
            continue


def random_store(config, rng, striped=False):
    while True:
        stripe = int(rng.integers(0, config.load_lanes.bit_length())) if striped else 0
        length = int(rng.choice([0, 1, 3, 7, int(rng.integers(1, 100)),
                                 int(rng.integers(100, 400))]))
        count2, count3 = (int(x) for x in rng.integers(1, 4, 2))
        stride2 = length + int(rng.integers(0, 300))  # rows do not overlap
        stride3 = count2 * stride2 + int(rng.integers(0, 300))
        if rng.random() < 0.5:  # rows that cross a 4 KiB boundary
            addr = int(rng.integers(1, 6)) * 0x1000 - int(rng.integers(1, max(2, length)))
        else:
            addr = int(rng.integers(0, 0x6000))
        fields = dict(buffer=int(rng.integers(0, 4)), line=int(rng.integers(0, 64)),
                      port=int(rng.integers(0, config.hbm_ports)), addr=addr, length=length,
                      count2=count2, stride2=stride2, count3=count3, stride3=stride3)
        if stripe:  # on aligned ports; logical addresses: s times as many
            s = 1 << stripe
            fields.update(stripe=stripe, addr=addr * s // 2,
                          port=int(rng.integers(0, config.hbm_ports // s)) * s)
        try:
            return command_of(config, Opcode.STORE, **fields)
        except IllegalInstruction:
            continue


def simulate(engine, commands, models, bases, backpressure=0.0, rng=None, buffers=None):
    """Run ``commands`` back to back on ``engine`` with one model per port. Returns, per
    command, the done payload, the cmd and done transfer cycles and (load engine) its
    ``(buffer, line, data)`` writes; and the source lines the store engine read."""
    results, writes, reads = [], [], []

    async def sink(ctx):  # the load engine's buffer writes
        while True:
            ready = not (backpressure and rng.random() < backpressure)
            ctx.set(engine.write.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(engine.write.valid,
                                                           engine.write.payload)
            if valid and ready:  # a striped transfer carries 2**stripe lines
                wide = int(payload.data).to_bytes(engine.lanes * engine.line_bytes, "little")
                for i in range(1 << int(payload.stripe)):
                    writes.append((int(payload.buffer), int(payload.line) + i,
                                   wide[i * engine.line_bytes:(i + 1) * engine.line_bytes]))

    async def read_port(ctx):  # the store engine's source: latency 1
        while True:
            _, _, enable, buffer, line = await ctx.tick().sample(
                engine.read_en, engine.read_buffer, engine.read_line)
            if enable:
                reads.append((buffer, line))
                ctx.set(engine.read_data, int.from_bytes(buffers[Buffer(buffer)][line].tobytes(),
                                                         "little"))

    async def main(ctx):
        cycle = 0

        async def wait(signal, payload):  # until ``signal`` is high: the cycle, ``payload``
            nonlocal cycle
            while True:
                _, _, high, value = await ctx.tick().sample(signal, payload)
                cycle += 1
                if high:
                    return cycle - 1, value

        for p, base in enumerate(bases):
            ctx.set(engine.base[p], base)
        ctx.set(engine.done.ready, 1)
        for command in commands:
            ctx.set(engine.cmd.payload, command)
            ctx.set(engine.cmd.valid, 1)
            start, _ = await wait(engine.cmd.ready, engine.cmd.payload)
            ctx.set(engine.cmd.valid, 0)
            end, error = await wait(engine.done.valid, engine.done.payload)
            results.append({"error": error, "start": start, "end": end, "writes": writes[:]})
            writes.clear()

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    for model, p in zip(models, range(engine.ports), strict=True):
        sim.add_process(functools.partial(model.serve, port=engine.axi[p]))
    if isinstance(engine, LoadEngine):
        sim.add_process(sink)
    else:
        sim.add_process(read_port)
    sim.add_testbench(main)
    sim.run()
    return results, reads


def check_loads(config, commands, results, machine):
    """Execute each command on ``machine`` and compare its buffer writes."""
    for command, result in zip(commands, results, strict=True):
        error = execute(machine, Opcode.LOAD, command)
        assert result["error"] == (error == ErrorCode.AXI)
        if error != ErrorCode.NONE:
            continue
        count = command["length"] * command["count2"] * command["count3"]
        assert [(b, line) for b, line, _ in result["writes"]] == [
            (command["buffer"], command["line"] + k) for k in range(count)]
        got = np.frombuffer(b"".join(d for _, _, d in result["writes"]), np.uint8)
        expected = machine.buffers[Buffer(command["buffer"])][
            command["line"]:command["line"] + count]
        np.testing.assert_array_equal(got.reshape(-1, config.line_bytes), expected)


def models_for(config, rng, latency, stall, bases=None, size=HBM):
    bases = bases or [0] * config.hbm_ports
    models = [AxiMemoryModel(base + size, config.line_bits, rng, latency, stall)
              for base in bases]
    for model in models:
        model.memory[:] = rng.integers(0, 256, len(model.memory), dtype=np.uint8)
    return models, bases


def machine_for(config, models, bases, size=HBM):
    machine = Machine(config, size)
    for p, (model, base) in enumerate(zip(models, bases, strict=True)):
        machine.hbm[p][:] = model.memory[base:base + size]
    return machine


# -- parameters --------------------------------------------------------------------------------

def test_parameters_are_validated():
    for engine in (LoadEngine, StoreEngine):
        with pytest.raises(ValueError, match=r"^line_bits must be 256 or 512, not 128$"):
            engine(128, 1)
        with pytest.raises(ValueError, match=r"^ports must be 1 to 32, not 0$"):
            engine(256, 0)
        with pytest.raises(ValueError, match=r"^ports must be 1 to 32, not 33$"):
            engine(256, 33)
        with pytest.raises(ValueError, match=r"^outstanding must be at least 1, not 0$"):
            engine(512, 2, outstanding=0)
    with pytest.raises(ValueError, match=r"^max_burst must be 1 to 64, not 128$"):
        LoadEngine(512, 1, max_burst=128)
    with pytest.raises(ValueError, match=r"^lanes must be 1, 2, 4 or 8 and at most the ports "
                                         r"\(2\), not 4$"):
        LoadEngine(512, 2, lanes=4)


def test_bursts_respect_the_rules():
    load, store = LoadEngine(256, 1), StoreEngine(512, 1)
    assert load.max_burst == 128 and LoadEngine(512, 1).max_burst == 64
    command = dict(buffer=0, line=0, port=0, addr=0xFC0, length=200, count2=2, stride2=0x2000,
                   count3=1, stride3=0)
    assert load.bursts(command) == [(0xFC0, 2), (0x1000, 128), (0x2000, 70), (0x2FC0, 2),
                                    (0x3000, 128), (0x4000, 70)]
    assert LoadEngine(256, 1, max_burst=16).bursts(command)[:3] == [(0xFC0, 2), (0x1000, 16),
                                                                     (0x1200, 16)]
    command.update(addr=0xFF3, length=0x1000 + 20, count2=1)
    assert store.bursts(command) == [(0, 0xFC0, 1), (0, 0x1000, 64), (0, 0x2000, 1)]
    assert store.bursts({**command, "length": 0}) == []


def test_converts_to_verilog():
    for engine in (LoadEngine(512, 2), StoreEngine(256, 3)):
        assert "module" in verilog.convert(engine, name=type(engine).__name__)


_AR = dict(arvalid=1, araddr=0x100, arlen=1, arsize=5, arburst=1)
_AW = dict(awvalid=1, awaddr=0x100, awlen=1, awsize=5, awburst=1)


@pytest.mark.parametrize(("cycles", "stall", "message"), [
    ([{**_AR, "araddr": 0xFE0}], 0.0, r"read at 0xfe0 of 2 beats crosses a 4 KiB boundary"),
    ([{**_AR, "arsize": 4}], 0.0, r"read at 0x100: size 4, not the full width 5"),
    ([{**_AW, "awburst": 0}], 0.0, r"write at 0x100: burst type 0, not INCR"),
    ([{"wvalid": 1}], 0.0, r"W beat before its address, cycle 0"),
    ([_AW, {"awvalid": 0, "wvalid": 1, "wlast": 1}], 0.0, r"WLAST 1 on beat 0 of 2, cycle 1"),
    ([_AR, {"arvalid": 0}], 1.0, r"ARVALID dropped before its transfer, cycle 1"),
    ([_AW, {"awaddr": 0x200}], 1.0, r"awaddr changed before its transfer, cycle 1"),
])
def test_model_checks_the_rules(cycles, stall, message):
    """The memory model refuses what the engines promise never to do."""
    bus = axi4_signature(64, 256).create()
    model = AxiMemoryModel(0x2000, 256, np.random.default_rng(0), stall=stall)

    async def master(ctx):
        for values in cycles:
            for name, value in values.items():
                ctx.set(getattr(bus, name), value)
            await ctx.tick()
        for _ in range(3):
            await ctx.tick()

    m = Module()
    m.domains.sync = ClockDomain()
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_process(functools.partial(model.serve, port=bus))
    sim.add_testbench(master)
    with pytest.raises(AxiViolation, match=f"^{message}$"):
        sim.run()


# -- LOAD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line_bits", [256, 512])
@pytest.mark.parametrize("pattern", ["fast", "stalls"])
def test_load_equals_machine(line_bits, pattern):
    """Random descriptors back to back on three ports (one with a base address), random
    latency and ready stalls, and backpressure on the buffer writes."""
    rng = make_rng(f"load{line_bits}{pattern}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=3)
    latency, stall, backpressure = (((1, 1), 0.0, 0.0) if pattern == "fast"
                                    else ((2, 30), 0.3, 0.3))
    commands = [random_load(config, rng) for _ in range(16)]
    commands[4] = {**commands[4], "length": 0}
    models, bases = models_for(config, rng, latency, stall, [0, 0x3000, 0])
    machine = machine_for(config, models, bases)
    engine = LoadEngine(line_bits, 3, outstanding=4)
    results, _ = simulate(engine, commands, models, bases, backpressure, rng)
    check_loads(config, commands, results, machine)
    check_bursts(engine, commands, models, bases)


def check_bursts(engine, commands, models, bases):
    """Each port's model saw exactly the bursts of the commands that use it (a striped
    command: the same bursts on each of its ports)."""
    for p, (model, base) in enumerate(zip(models, bases, strict=True)):
        assert model.reads == [(address - bases[c["port"]] + base, beats) for c in commands
                               if c["port"] <= p < c["port"] + (1 << c["stripe"])
                               for address, beats in engine.bursts(c, bases[c["port"]])]


@pytest.mark.parametrize("line_bits, lanes", [(256, 4), (512, 4), (512, 8)])
@pytest.mark.parametrize("pattern", ["fast", "stalls"])
def test_striped_load_equals_machine(line_bits, lanes, pattern, request):
    """Striped and plain descriptors mixed on ``lanes + 1`` ports of a four- or eight-lane
    engine (the board core's; two ports with base addresses): the lines equal the ISA
    simulator's, every port of a stripe sees the command's bursts, under random latency and
    stalls per port (a stripe's beats meet in lockstep) and backpressure."""
    rng = make_rng(f"striped{line_bits}{pattern}" + ("" if lanes == 4 else f"x{lanes}"))
    if lanes == 8:  # amaranth.sim compiles the eight lanes' selections to deep Python
        request.addfinalizer(functools.partial(sys.setrecursionlimit, sys.getrecursionlimit()))
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    ports = lanes + 1
    config = CoreConfig(line_bits=line_bits, chain=16 if lanes == 4 else 32, vpus=8,
                        hbm_ports=ports, load_lanes=lanes)
    latency, stall, backpressure = (((1, 1), 0.0, 0.0) if pattern == "fast"
                                    else ((2, 30), 0.3, 0.3))
    commands = [random_load(config, rng, striped=k % 3 != 2) for k in range(24)]
    assert {c["stripe"] for c in commands} == set(range(lanes.bit_length()))
    offsets = [0, 0x3000, 0, 0, 0x1000] + [0x2000 * (p % 2) for p in range(5, ports)]
    models, bases = models_for(config, rng, latency, stall, offsets)
    machine = machine_for(config, models, bases)
    engine = LoadEngine(line_bits, ports, outstanding=4, lanes=lanes)
    results, _ = simulate(engine, commands, models, bases, backpressure, rng)
    check_loads(config, commands, results, machine)
    check_bursts(engine, commands, models, bases)


def test_striped_load_rate():
    """A stripe of four ports with a fixed latency moves four lines a cycle: the cycles are
    :meth:`LoadEngine.expected_cycles`, a quarter of the plain load's beats."""
    rng = make_rng("stripedrate")
    config = CoreConfig(line_bits=512, chain=16, vpus=8, hbm_ports=4, load_lanes=4,
                        wgt_lines=4096)
    rows = 4096 // config.line_bytes * 4
    command = command_of(config, Opcode.LOAD, buffer=Buffer.WGT.value, addr=0x2000,
                         length=rows, count2=8, stride2=0x1000, stripe=2)
    models, bases = models_for(config, rng, (40, 40), 0.0, size=0x20000)
    machine = machine_for(config, models, bases, size=0x20000)
    engine = LoadEngine(512, 4, lanes=4)
    results, _ = simulate(engine, [command], models, bases)
    check_loads(config, [command], results, machine)
    assert all(model.r_beats == 8 * rows // 4 for model in models)
    cycles = results[0]["end"] - results[0]["start"] + 1
    assert cycles == engine.expected_cycles(command, 40)
    assert cycles < 8 * rows // 4 * 1.05 + 40


@pytest.mark.parametrize("line_bits", [256, 512])
def test_load_length_zero_and_errors(line_bits):
    """A row past the end of memory: DECERR, ``done`` reports 1 and the engine goes on."""
    rng = make_rng(f"loaderr{line_bits}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=1)
    step = config.line_bytes
    commands = [
        command_of(config, Opcode.LOAD, buffer=1, line=3, addr=0x100, length=0),
        command_of(config, Opcode.LOAD, buffer=0, line=0, addr=HBM - 4 * step, length=8),
        command_of(config, Opcode.LOAD, buffer=2, line=5, addr=0x40, length=4, count2=2,
                   stride2=0x1000),
        command_of(config, Opcode.LOAD, buffer=0, line=0, addr=HBM, length=3, count2=2),
        command_of(config, Opcode.LOAD, buffer=3, line=1, addr=HBM - 2 * step, length=2),
    ]
    models, bases = models_for(config, rng, (1, 8), 0.2)
    machine = machine_for(config, models, bases)
    results, _ = simulate(LoadEngine(line_bits, 1), commands, models, bases)
    assert [r["error"] for r in results] == [0, 1, 0, 1, 0]
    assert results[0]["writes"] == []
    assert len(results[1]["writes"]) == 8  # the lines are written all the same
    check_loads(config, commands, results, machine)


@pytest.mark.parametrize("line_bits", [256, 512])
def test_load_bandwidth(line_bits):
    """64 KiB in rows of 4 KiB from a memory with a fixed latency of 40 cycles: the R channel
    is busy at least 95% of the cycles from the first address to the last beat."""
    rng = make_rng(f"bandwidth{line_bits}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=1, wgt_lines=4096)
    rows = 4096 // config.line_bytes
    command = command_of(config, Opcode.LOAD, buffer=Buffer.WGT.value, addr=0x2000,
                         length=rows, count2=16, stride2=0x1000)
    models, bases = models_for(config, rng, (40, 40), 0.0, size=0x20000)
    machine = machine_for(config, models, bases, size=0x20000)
    engine = LoadEngine(line_bits, 1)
    results, _ = simulate(engine, [command], models, bases)
    check_loads(config, [command], results, machine)
    model = models[0]
    print(f"{line_bits}-bit: {model.r_beats} R beats in {model.last_r - model.first_ar + 1} "
          f"cycles: R utilisation {model.r_utilisation:.1%}")
    assert model.r_beats == 16 * rows
    assert model.r_utilisation >= 0.95
    assert results[0]["end"] - results[0]["start"] + 1 == engine.expected_cycles(command, 40)


@pytest.mark.parametrize(("length", "count2", "outstanding"), [(1, 40, 8), (3, 30, 2),
                                                               (130, 2, 8), (0, 1, 8)])
def test_load_expected_cycles(length, count2, outstanding):
    """Short bursts, where the outstanding limit bounds the rate, and long ones."""
    rng = make_rng("cycles")
    config = CoreConfig(hbm_ports=1)
    command = command_of(config, Opcode.LOAD, buffer=0, addr=0x1F00, length=length,
                         count2=count2, stride2=0x140)
    models, bases = models_for(config, rng, (20, 20), 0.0)
    machine = machine_for(config, models, bases)
    engine = LoadEngine(256, 1, outstanding=outstanding)
    results, _ = simulate(engine, [command], models, bases)
    check_loads(config, [command], results, machine)
    assert results[0]["end"] - results[0]["start"] + 1 == engine.expected_cycles(command, 20)


# -- STORE ---------------------------------------------------------------------------------------

def run_stores(config, commands, latency, stall, rng, bases=None, outstanding=8):
    models, bases = models_for(config, rng, latency, stall, bases)
    machine = machine_for(config, models, bases)
    for buffer in Buffer:
        machine.buffers[buffer][:] = rng.integers(0, 256, machine.buffers[buffer].shape,
                                                  dtype=np.uint8)
    engine = StoreEngine(config.line_bits, config.hbm_ports, outstanding,
                         lanes=config.load_lanes)
    results, reads = simulate(engine, commands, models, bases, buffers=machine.buffers)
    errors = [execute(machine, Opcode.STORE, command) for command in commands]
    return engine, models, bases, machine, results, reads, errors


@pytest.mark.parametrize("line_bits", [256, 512])
@pytest.mark.parametrize("pattern", ["fast", "stalls"])
def test_store_equals_machine(line_bits, pattern):
    """Random unaligned descriptors with odd lengths back to back on three ports (one with a
    base address), random latency and ready stalls."""
    rng = make_rng(f"store{line_bits}{pattern}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=3)
    latency, stall = ((1, 1), 0.0) if pattern == "fast" else ((2, 20), 0.3)
    commands = [random_store(config, rng) for _ in range(16)]
    commands[4] = {**commands[4], "length": 0}
    engine, models, bases, machine, results, reads, errors = run_stores(
        config, commands, latency, stall, rng, [0, 0x1000, 0], outstanding=3)
    assert errors == [ErrorCode.NONE] * len(commands)
    assert [r["error"] for r in results] == [0] * len(commands)
    check_stores(config, engine, commands, models, bases, reads, machine)


def check_stores(config, engine, commands, models, bases, reads, machine):
    """Each port's memory equals the ISA simulator's, each saw exactly its share of the
    commands' bursts, and the engine read only source lines whose bytes it stores."""
    for p, (model, base) in enumerate(zip(models, bases, strict=True)):
        np.testing.assert_array_equal(model.memory[base:], machine.hbm[p])
        assert model.writes == [(address, beats) for c in commands
                                for port, address, beats in engine.bursts(c, bases)
                                if port == p]
    spans = {(c["buffer"], c["line"] + k) for c in commands
             for k in range(-(-c["length"] * c["count2"] * c["count3"] // config.line_bytes))}
    assert set(reads) <= spans  # only lines whose bytes are stored are read


@pytest.mark.parametrize(("line_bits", "lanes"), [(256, 2), (512, 8)])
def test_striped_store_equals_machine(line_bits, lanes):
    """Random striped stores (and plain ones) back to back on a core whose load unit takes
    ``lanes`` lines a cycle: every line to its port of the stripe, bursts that end at each
    line, write responses from several ports at once; random latency and stalls; ports with
    unequal bases."""
    rng = make_rng(f"stripedstore{line_bits}{lanes}")
    ports = lanes + 2
    config = CoreConfig(line_bits=line_bits, chain=32, vpus=16, hbm_ports=ports,
                        load_lanes=lanes)
    commands = [random_store(config, rng, striped=True) for _ in range(16)]
    assert any(c["stripe"] for c in commands) and not all(c["stripe"] for c in commands)
    bases = [0x40 * p * (p % 3) for p in range(ports)]
    engine, models, bases, machine, results, reads, errors = run_stores(
        config, commands, (2, 20), 0.3, rng, bases, outstanding=5)
    assert errors == [ErrorCode.NONE] * len(commands)
    assert [r["error"] for r in results] == [0] * len(commands)
    check_stores(config, engine, commands, models, bases, reads, machine)


@pytest.mark.parametrize("line_bits", [256, 512])
def test_store_errors(line_bits):
    """Bursts past the end of memory: DECERR, ``done`` reports 1, nothing hangs; the other
    commands still land."""
    rng = make_rng(f"storeerr{line_bits}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=1)
    commands = [
        command_of(config, Opcode.STORE, buffer=0, line=0, addr=0x123, length=77, count2=2,
                   stride2=0x801),
        command_of(config, Opcode.STORE, buffer=1, line=2, addr=HBM + 5, length=40),
        command_of(config, Opcode.STORE, buffer=2, line=0, addr=0x3FF0, length=0),
        command_of(config, Opcode.STORE, buffer=3, line=1, addr=HBM - 0x1800, length=0x100,
                   count2=2, stride2=0x1800),  # the first row lands, the second does not
        command_of(config, Opcode.STORE, buffer=0, line=4, addr=0x5001, length=130),
    ]
    _, models, _, machine, results, _, errors = run_stores(config, commands, (1, 6), 0.2, rng)
    assert [r["error"] for r in results] == [0, 1, 0, 1, 0]
    assert [e == ErrorCode.AXI for e in errors] == [False, True, False, True, False]
    execute(machine, Opcode.STORE, {**commands[3], "count2": 1})  # what reached the memory
    np.testing.assert_array_equal(models[0].memory, machine.hbm[0])


@pytest.mark.parametrize("line_bits", [256, 512])
def test_store_throughput(line_bits):
    """An aligned store runs a beat per cycle, an unaligned one a beat per two (a cycle per
    source read) and a cycle per burst."""
    rng = make_rng(f"storerate{line_bits}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=1)
    commands = [command_of(config, Opcode.STORE, buffer=0, line=0, addr=addr, length=0x1000)
                for addr in (0x2000, 0x2003)]
    engine, models, _, machine, results, _, _ = run_stores(config, commands, (1, 1), 0.0, rng)
    np.testing.assert_array_equal(models[0].memory, machine.hbm[0])
    beats = [sum(b for _, _, b in engine.bursts(c)) for c in commands]
    cycles = [r["end"] - r["start"] + 1 for r in results]
    print(f"{line_bits}-bit stores: {beats} beats in {cycles} cycles")
    assert cycles == [engine.expected_cycles(c, 1) for c in commands]
    assert cycles[0] <= beats[0] + 10
    assert cycles[1] <= 2 * beats[1] + 10


@pytest.mark.parametrize(("line_bits", "outstanding", "latency"), [(256, 1, 9), (256, 8, 30),
                                                                   (512, 2, 1), (512, 3, 20)])
def test_store_expected_cycles(line_bits, outstanding, latency):
    """Random descriptors, no stalls: the cycle counts are exactly the documented ones, the
    outstanding limit included."""
    rng = make_rng(f"storecycles{line_bits}{outstanding}")
    config = CoreConfig(line_bits=line_bits, hbm_ports=1)
    commands = [random_store(config, rng) for _ in range(6)]
    engine, models, _, machine, results, _, _ = run_stores(config, commands, (latency, latency),
                                                          0.0, rng, outstanding=outstanding)
    np.testing.assert_array_equal(models[0].memory, machine.hbm[0])
    assert [r["end"] - r["start"] + 1 for r in results] == [
        engine.expected_cycles(c, latency) for c in commands]


def test_striped_store_expected_cycles():
    """Striped descriptors, no stalls: a burst per line, each on its port, and the cycle
    counts the documented ones."""
    rng = make_rng("stripedstorecycles")
    config = CoreConfig(line_bits=512, chain=32, vpus=16, hbm_ports=4, load_lanes=4)
    commands = [random_store(config, rng, striped=True) for _ in range(8)]
    engine, models, bases, machine, results, reads, _ = run_stores(config, commands, (20, 20),
                                                                   0.0, rng, outstanding=4)
    check_stores(config, engine, commands, models, bases, reads, machine)
    assert [r["end"] - r["start"] + 1 for r in results] == [
        engine.expected_cycles(c, 20) for c in commands]
