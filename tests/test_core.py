"""The whole core in amaranth.sim on small programs, against the ISA simulator (the fast tier;
the Verilator benches in test_core_rtl.py run the same checks on the Verilog at length)."""

import os

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.control import AP_DONE, AP_START, CONTROL
from flightgen.hw.core import Core, register_map
from flightgen.isa.assembly import assemble
from flightgen.isa.machine import SIM_CORE, CoreConfig, ErrorCode
from flightgen.sim.axi_model import AxiMemoryModel
from flightgen.sim.system import CoreRun, compare, simulate

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))
HBM_BYTES = 1 << 14


async def _write(ctx, bus, addr, value):
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.wdata, value & 0xFFFFFFFF)
    ctx.set(bus.wstrb, 0xF)
    ctx.set(bus.awvalid, 1)
    ctx.set(bus.wvalid, 1)
    ctx.set(bus.bready, 1)
    aw = w = False
    while not (aw and w):
        aw_now, w_now = ctx.get(bus.awready), ctx.get(bus.wready)
        await ctx.tick()
        aw, w = aw or aw_now, w or w_now
        if aw:
            ctx.set(bus.awvalid, 0)
        if w:
            ctx.set(bus.wvalid, 0)
    await ctx.tick().until(bus.bvalid)
    ctx.set(bus.bready, 0)


async def _read(ctx, bus, addr):
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arvalid, 1)
    await ctx.tick().until(bus.arready)
    ctx.set(bus.arvalid, 0)
    ctx.set(bus.rready, 1)
    value, = await ctx.tick().sample(bus.rdata).until(bus.rvalid)
    ctx.set(bus.rready, 0)
    return value


def run_core(words, hbm, registers=(0,) * 7, config=SIM_CORE, stall=0.2, latency=(1, 6),
             max_cycles=60_000, **options):
    """Run a program on the core in amaranth.sim (``options`` go to :class:`Core`); return
    (status dict, HBM images, trace). A barrier core's ``sync`` master reaches the exchange
    port's memory (every pointer is 0 here)."""
    rng = np.random.default_rng(SEED)
    core = Core(config, **options)
    regs = register_map(config)
    program = AxiMemoryModel(1 << 12, config.line_bits, rng, latency, stall)
    program.memory[:len(words) * 32] = np.frombuffer(
        b"".join(int(w).to_bytes(32, "little") for w in words), np.uint8)
    ports = []
    for image in hbm:
        model = AxiMemoryModel(len(image), config.line_bits, rng, latency, stall)
        model.memory[:] = image
        ports.append(model)
    status, trace = {}, []

    async def host(ctx):
        bus = core.control
        await _write(ctx, bus, regs.offset("length"), len(words))
        for index, value in enumerate(registers, 1):
            await _write(ctx, bus, regs.offset(f"r{index}"), value)
        await _write(ctx, bus, CONTROL, AP_START)
        for _ in range(max_cycles // 10):
            if await _read(ctx, bus, CONTROL) & AP_DONE:
                break
            await ctx.tick().repeat(8)
        else:
            raise AssertionError(f"the core did not finish in {max_cycles} cycles")
        for name in ("error", "error_pc", "retired"):
            status[name] = await _read(ctx, bus, regs.offset(name))

    async def probe(ctx):
        if not os.environ.get("FLIGHTGEN_PROBE"):
            return
        names = list(core.probes)
        cycle = 0
        async for _, _, *values in ctx.tick().sample(*core.probes.values()):
            print(cycle, " ".join(f"{k}={int(v) if not hasattr(v, 'value') else v.value}"
                                  for k, v in zip(names, values, strict=True)))
            cycle += 1
            if cycle == int(os.environ["FLIGHTGEN_PROBE"]):
                return

    async def tracer(ctx):
        cycle = 0
        async for _, _, raw in ctx.tick().sample(core.retire.as_value()):
            cycle += 1
            for unit in range(5):
                entry = (raw >> (33 * unit)) & ((1 << 33) - 1)
                if entry & 1:
                    trace.append((unit, entry >> 1, cycle))

    sim = Simulator(core)
    sim.add_clock(4e-9)
    sim.add_testbench(host)
    sim.add_process(tracer)
    sim.add_process(probe)
    def server(model, port):
        async def serve(ctx):
            await model.serve(ctx, port)
        return serve

    sim.add_process(server(program, core.program))
    for p, model in enumerate(ports):
        sim.add_process(server(model, core.hbm[p]))
    if config.barrier:
        sync = AxiMemoryModel(0, config.line_bits, rng, latency, stall)
        sync.memory = ports[config.exchange_port].memory  # the same bytes
        sim.add_process(server(sync, core.sync))
    sim.run()
    return status, [m.memory for m in ports], trace


def check(words, hbm, registers=(0,) * 7, config=SIM_CORE, **kwargs):
    """Run on the core in amaranth.sim and on the ISA simulator; compare them as the Verilator
    benches do (:func:`flightgen.sim.system.compare`)."""
    machine, expected = simulate(config, words, hbm, registers)
    status, images, trace = run_core(words, hbm, registers, config=config, **kwargs)
    run = CoreRun(ErrorCode(status["error"]), status["error_pc"], 0, status["retired"],
                  np.array(trace, np.int64).reshape(-1, 3))
    compare(run, expected, images, machine)
    if expected.error == ErrorCode.NONE:
        assert status["retired"] == len(expected.trace)
    return status


def _images(rng):
    return [rng.integers(0, 256, HBM_BYTES, dtype=np.uint8) for _ in range(SIM_CORE.hbm_ports)]


@pytest.mark.parametrize("line_bits", [256, 512])
def test_load_store_with_tokens(line_bits):
    rng = np.random.default_rng(SEED)
    words = assemble("""
        load  buffer=vec line=3 port=1 addr=0x200 length=2 count2=3 stride2=0x400 release=store
        store buffer=vec line=3 port=0 addr=0x1005 length=150 count2=1 wait=load release=sys
        load  buffer=wgt line=0 port=0 addr=0x40+r1*64 length=1+r1 release=store
        store buffer=wgt line=0 port=1 addr=0x3003 length=7 count2=9 stride2=0x21 wait=load
        sync  wait=store
        halt""")
    check(words, _images(rng), registers=(3, 5, 0, 0, 0, 0, 0),
          config=CoreConfig(line_bits=line_bits))


def test_a_store_from_a_buffer_without_a_store_port_stops_the_core():
    """The board configuration's store unit reads VEC and ACT only: their stores run (equal
    to the ISA simulator), a STORE from WGT stops the core with BAD_FIELD."""
    rng = np.random.default_rng(SEED)
    words = assemble("""
        load  buffer=vec line=3 port=1 addr=0x200 length=2 release=store
        load  buffer=act line=1 port=0 addr=0x40 length=3 release=store
        load  buffer=wgt line=0 port=0 addr=0x40 length=1
        store buffer=vec line=3 port=0 addr=0x1005 length=60 wait=load
        store buffer=act line=1 port=1 addr=0x2000 length=96 wait=load
        store buffer=wgt line=0 port=1 addr=0x3000 length=32
        halt""")
    status = check(words, _images(rng), config=CoreConfig(store_buffers=("vec", "act")))
    assert ErrorCode(status["error"]) == ErrorCode.BAD_FIELD


@pytest.mark.parametrize("program, code", [
    ("load buffer=vec length=1\n.word 0x9\nhalt", ErrorCode.ILLEGAL_OPCODE),
    ("load buffer=vec addr=0x10 length=1\nhalt", ErrorCode.MISALIGNED),
    ("load buffer=vec length=1 wait=store\nhalt", ErrorCode.DEADLOCK),
    ("sync\nsync", ErrorCode.PROGRAM_END),
    ("load buffer=vec addr=0x4000 length=1\nhalt", ErrorCode.AXI),
])
def test_errors_stop_the_core(program, code):
    rng = np.random.default_rng(SEED)
    status = check(assemble(program), _images(rng))
    assert ErrorCode(status["error"]) == code
