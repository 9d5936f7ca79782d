"""BARRIER in the RTL: the barrier engine in amaranth.sim on an AXI memory model (flags already
there, a peer arriving later, timeout, error responses, stop, stalls, exact cycles), the whole
core in amaranth.sim, and a barrier core's Verilog on the C++ harness against the ISA
simulator (error codes and pcs, retired pcs, every HBM byte, what each instruction wrote)."""

import dataclasses
import os

import numpy as np
import pytest
from amaranth.sim import Simulator
from rtl import BENCHES, run_checked

from flightgen.hw.axi import RESP_SLVERR
from flightgen.hw.barrier import BARRIER_TIMEOUT, BarrierEngine
from flightgen.hw.core import Core, register_map
from flightgen.isa.assembly import assemble
from flightgen.isa.instructions import Unit
from flightgen.isa.machine import SIM_CORE, ErrorCode
from flightgen.sim.axi_model import AxiMemoryModel
from flightgen.sim.harness import DEFAULT_LATENCY, build_harness, run_program

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))
#: A core of a tensor-parallel group: SIM_CORE with the barrier (port 1 is the exchange port).
BARRIER_CORE = dataclasses.replace(SIM_CORE, barrier=True)
#: The barrier timeout of the test builds: short, so a barrier whose peers never come ends soon.
TIMEOUT = 2000
#: Bytes of the memory model.
MEMORY = 1 << 13


def make_rng(name):
    print(f"seed {SEED} (set FLIGHTGEN_SEED to reproduce)")
    return np.random.default_rng(SEED + sum(name.encode()))


def flags_line(values, line_bytes=32):
    """A flag line holding ``values`` as little-endian 32-bit words (the rest zero)."""
    line = np.zeros(line_bytes, np.uint8)
    line[:4 * len(values)] = np.frombuffer(np.array(values, "<u4").tobytes(), np.uint8)
    return line


def run_engine(commands, memory=None, *, line_bits=256, timeout=TIMEOUT, base=0,
               latency=(1, 1), stall=0.0, rng=None, peer=None, stop_at=None, limit=20_000):
    """Run ``commands`` (dicts of the command fields) one after the other on a
    :class:`BarrierEngine`; its memory model starts as ``memory``. ``peer`` is ``(cycle,
    address, bytes)``: written into the memory at that cycle, as another core would;
    ``stop_at`` raises ``stop`` from that cycle. Returns ``(answers, cycles, model)``: the
    ``done`` payloads, the cycles from each ``cmd`` transfer to its ``done`` transfer (both
    included), and the memory model. Fails after ``limit`` cycles."""
    rng = rng if rng is not None else np.random.default_rng(SEED)
    engine = BarrierEngine(line_bits, timeout)
    model = AxiMemoryModel(MEMORY, line_bits, rng, latency, stall)
    if memory is not None:
        model.memory[:] = memory
    answers, cycles = [], []

    async def bench(ctx):
        ctx.set(engine.base, base)
        ctx.set(engine.done.ready, 1)
        cycle = 0
        for fields in commands:
            ctx.set(engine.cmd.payload, fields)
            ctx.set(engine.cmd.valid, 1)
            started = None
            while True:
                if started is None and ctx.get(engine.cmd.ready):
                    started = cycle
                valid, payload = ctx.get(engine.done.valid), ctx.get(engine.done.payload)
                await ctx.tick()
                cycle += 1
                if started is not None:
                    ctx.set(engine.cmd.valid, 0)
                if valid:
                    answers.append(ErrorCode(payload))
                    cycles.append(cycle - started)
                    break
                assert cycle < limit, f"no answer in {limit} cycles"

    async def time(ctx):
        now = 0
        async for _ in ctx.tick():
            now += 1
            if peer is not None and now == peer[0]:
                at, data = peer[1], np.asarray(peer[2], np.uint8)
                model.memory[at:at + len(data)] = data
            if stop_at is not None and now >= stop_at:
                ctx.set(engine.stop, 1)

    async def serve(ctx):
        await model.serve(ctx, engine.axi)

    sim = Simulator(engine)
    sim.add_clock(4e-9)
    sim.add_testbench(bench)
    sim.add_process(time)
    sim.add_process(serve)
    sim.run()
    return answers, cycles, model


def command(addr=0, slot=0, peers=1, value=1):
    return {"addr": addr, "slot": slot, "peers": peers, "value": value}


# -- the engine ---------------------------------------------------------------------------------


def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^line_bits must be 256 or 512, not 128$"):
        BarrierEngine(128)
    with pytest.raises(ValueError, match=r"^barrier timeout must be a positive number of "
                                         r"cycles, not 0$"):
        BarrierEngine(256, 0)
    with pytest.raises(ValueError, match=r"^barrier timeout must be a positive number of "
                                         r"cycles, not 0$"):
        Core(BARRIER_CORE, barrier_timeout=0)
    assert BarrierEngine(256).timeout == BARRIER_TIMEOUT


@pytest.mark.parametrize("line_bits", [256, 512])
@pytest.mark.parametrize("latency", [1, 40])
def test_flags_already_there(line_bits, latency):
    """Peers 1..8 whose flags are already at or above the value (equal, above, the top of the
    32-bit range): the barrier writes its own flag and passes at its first read, in exactly
    :meth:`BarrierEngine.expected_cycles`, writing nothing but its 4 bytes."""
    line_bytes = line_bits // 8
    memory = make_rng("already").integers(0, 256, MEMORY, dtype=np.uint8)
    value = 0x80000005
    addr, base = 0x400, 0x800
    flags = [value, value + 1, 0xFFFFFFFF, value, value + 7, value, 0xFFFFFFFE, value]
    memory[base + addr:base + addr + line_bytes] = flags_line(flags, line_bytes)
    commands = [command(addr, slot=peers - 1, peers=peers, value=value) for peers in range(1, 9)]
    before = memory.copy()
    answers, cycles, model = run_engine(commands, memory, line_bits=line_bits, base=base,
                                        latency=(latency, latency))
    assert answers == [ErrorCode.NONE] * 8
    assert cycles == [BarrierEngine.expected_cycles(latency)] * 8
    expected = before.copy()
    for c in commands:  # each writes value at its slot
        at = base + addr + 4 * c["slot"]
        expected[at:at + 4] = np.frombuffer(np.uint32(value).tobytes(), np.uint8)
    np.testing.assert_array_equal(model.memory, expected)
    assert model.reads == [(base + addr, 1)] * 8 and model.writes == [(base + addr, 1)] * 8
    assert model.bytes_written == 4 * 8


def test_unsigned_comparison():
    """A flag of 0x7FFFFFFF is below a value of 0x80000000 (unsigned): the barrier waits, and
    times out."""
    memory = np.zeros(MEMORY, np.uint8)
    memory[:8] = flags_line([0, 0x7FFFFFFF])[:8]
    answers, _, _ = run_engine([command(0, slot=0, peers=2, value=0x80000000)], memory,
                               timeout=200)
    assert answers == [ErrorCode.BARRIER]
    assert BarrierEngine.reference(flags_line([0x80000000, 0x7FFFFFFF]), 2, 0x80000000) is False
    assert BarrierEngine.reference(flags_line([0x80000000, 0x80000000]), 2, 0x80000000) is True


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_waits_for_a_late_peer(stall):
    """Peer 2 of 3 arrives 500 cycles after the barrier started (its flag written into the
    memory, as another core would): the barrier keeps reading the flag line, and passes
    after the flag is there, not before."""
    rng = make_rng(f"late{stall}")
    value = 258
    memory = np.zeros(MEMORY, np.uint8)
    memory[0x100:0x100 + 12] = flags_line([0, 300, 257])[:12]  # slot 0 is ours; peer 2 is late
    answers, cycles, model = run_engine(
        [command(0x100, slot=0, peers=3, value=value)], memory, latency=(1, 12), stall=stall,
        rng=rng, peer=(500, 0x108, np.frombuffer(np.uint32(value).tobytes(), np.uint8)),
        timeout=5000)
    assert answers == [ErrorCode.NONE]
    assert 500 < cycles[0] < 600
    assert len(model.reads) > 10  # it polled
    assert all(r == (0x100, 1) for r in model.reads)
    assert model.memory[0x100:0x104].view("<u4")[0] == value


@pytest.mark.parametrize("timeout", [1, 300])
def test_timeout(timeout):
    """A peer that never comes: the barrier ends with BARRIER at its first failed read at or
    after ``timeout`` cycles (here within one poll of it), its own flag written."""
    latency = 10
    answers, cycles, model = run_engine([command(0x40, slot=1, peers=2, value=9),
                                         command(0x40, slot=1, peers=2, value=0)],
                                        timeout=timeout, latency=(latency, latency))
    assert answers == [ErrorCode.BARRIER, ErrorCode.NONE]  # the next command starts afresh
    poll = latency + 2
    assert max(timeout, BarrierEngine.expected_cycles(latency)) <= cycles[0]
    assert cycles[0] <= max(timeout, BarrierEngine.expected_cycles(latency)) + poll
    assert model.memory[0x44:0x48].view("<u4")[0] == 0  # the second wrote 0 over the first


def test_stop_ends_the_wait():
    """``stop`` (the dispatcher stopped on an earlier error) ends a waiting barrier with
    BARRIER after the read in flight."""
    answers, cycles, _ = run_engine([command(0, slot=0, peers=2, value=1)], stop_at=100,
                                    timeout=10_000, latency=(5, 5))
    assert answers == [ErrorCode.BARRIER]
    assert 100 <= cycles[0] < 100 + 10


def test_error_responses():
    """A flag line past the end of the memory: the write gets DECERR, the barrier ends with
    AXI without reading; the next barrier works."""
    answers, _, model = run_engine([command(MEMORY, peers=1, value=3),
                                    command(MEMORY - 32, peers=1, value=3)])
    assert answers == [ErrorCode.AXI, ErrorCode.NONE]
    assert model.reads == [(MEMORY - 32, 1)]


class _ReadErrors(AxiMemoryModel):
    """A memory whose reads answer SLVERR (its writes are fine)."""

    def read_beat(self, burst):
        burst.resp = RESP_SLVERR  # before the model drives RRESP
        return 0


def test_read_error_response():
    """An error response on the flag line's read: AXI."""
    engine = BarrierEngine(256, 1000)
    model = _ReadErrors(MEMORY, 256, np.random.default_rng(SEED), (3, 3), 0.0)
    answers = []

    async def bench(ctx):
        ctx.set(engine.cmd.payload, command(0, peers=1, value=0))
        ctx.set(engine.cmd.valid, 1)
        ctx.set(engine.done.ready, 1)
        await ctx.tick()
        ctx.set(engine.cmd.valid, 0)
        for _ in range(200):
            valid, payload = ctx.get(engine.done.valid), ctx.get(engine.done.payload)
            await ctx.tick()
            if valid:
                answers.append(ErrorCode(payload))
                return
        raise AssertionError("no answer in 200 cycles")

    async def serve(ctx):
        await model.serve(ctx, engine.axi)

    sim = Simulator(engine)
    sim.add_clock(4e-9)
    sim.add_testbench(bench)
    sim.add_process(serve)
    sim.run()
    assert answers == [ErrorCode.AXI]
    assert model.memory[:4].view("<u4")[0] == 0 and model.bytes_written == 4


@pytest.mark.parametrize("line_bits", [256, 512])
def test_random_barriers_under_stalls(line_bits):
    """Random barriers back to back (random slots, peers, values, flag lines; a third of them
    with a peer missing, which time out) under 30% stalls and latencies of 1 to 30: each
    answer is the reference's, and the memory is the ISA's (each barrier's own flag)."""
    rng = make_rng(f"random{line_bits}")
    line_bytes = line_bits // 8
    peers_max = min(8, line_bytes // 4)
    memory = rng.integers(0, 256, MEMORY, dtype=np.uint8)
    expected = memory.copy()
    commands, wanted = [], []
    for line in rng.choice(MEMORY // line_bytes, 12, replace=False):  # distinct flag lines
        peers = int(rng.integers(1, peers_max + 1))
        slot = int(rng.integers(0, peers))
        addr = int(line) * line_bytes
        value = int(rng.integers(0, 1 << 32))
        flags = expected[addr:addr + line_bytes].copy().view("<u4")
        flags[slot] = value
        if rng.random() < 0.6:  # the others are there
            flags[:peers] = np.maximum(flags[:peers], value)
            flags[slot] = value
        expected[addr:addr + line_bytes] = flags.view(np.uint8)
        memory[addr:addr + line_bytes] = flags.view(np.uint8)
        memory[addr + 4 * slot:addr + 4 * slot + 4] = 0  # ours is written by the barrier
        commands.append(command(addr, slot, peers, value))
        met = BarrierEngine.reference(expected[addr:addr + line_bytes], peers, value)
        wanted.append(ErrorCode.NONE if met else ErrorCode.BARRIER)
    answers, _, model = run_engine(commands, memory, line_bits=line_bits, latency=(1, 30),
                                   stall=0.3, rng=rng, timeout=400, limit=200_000)
    assert answers == wanted
    np.testing.assert_array_equal(model.memory, expected)


# -- the core in amaranth.sim -------------------------------------------------------------------

#: A barrier on its own flag, between a store and a load on the exchange port ordered through
#: SYS (the load reads the stored bytes and the flag line back; a store puts them on port 0),
#: then a barrier of two whose other flag is already there.
EXCHANGE = """
    load    buffer=vec line=0 port=0 addr=0x0 length=2 release=store
    store   buffer=vec line=0 port=1 addr=0x200 length=64 wait=load release=sys
    barrier peers=1 slot=0 addr=0x1000 value=5+r1*256 wait=store release=load
    load    buffer=vec line=4 port=1 addr=0x200 length=1 count2=2 stride2=0xe00 wait=sys \
release=store
    store   buffer=vec line=4 port=0 addr=0x800 length=64 wait=load release=sys
    barrier peers=2 slot=1 addr=0x1020 value=6+r1*256 wait=store
    halt
""".replace("\\\n", "")
#: (program, error, its pc): a peer that never comes, after queued work; a flag line past the
#: memory; an earlier error while a barrier waits (the lower pc wins, the barrier stops).
FAILURES = [
    ("barrier peers=2 slot=0 addr=0x40 value=1\nhalt", ErrorCode.BARRIER, 0),
    ("load buffer=vec length=2 release=sys\nbarrier peers=2 slot=1 addr=0x40 value=1 "
     "wait=load\nhalt", ErrorCode.BARRIER, 1),
    ("barrier peers=1 addr=0x4000 value=1\nhalt", ErrorCode.AXI, 0),
    ("load buffer=vec addr=0x4000 length=1\nbarrier peers=2 addr=0x40 value=1\nhalt",
     ErrorCode.AXI, 0),
]


def exchange_images(rng, size):
    """Random HBM images whose flag lines at 0x1000 and 0x40 are zero and whose flag at 0x1020
    (slot 0) is already high."""
    hbm = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(BARRIER_CORE.hbm_ports)]
    exchange = hbm[BARRIER_CORE.exchange_port]
    exchange[0x1000:0x1040] = 0
    exchange[0x40:0x60] = 0
    exchange[0x1020:0x1024] = flags_line([0xFFFFFFF0])[:4]
    return hbm


def test_core_barrier_register_map():
    """A barrier core has the ``sync`` master and its pointer after the ``hbm`` pointers; a
    core without has neither."""
    assert register_map(BARRIER_CORE).pointers == ("program", "hbm0", "hbm1", "sync")
    assert register_map(SIM_CORE).pointers == ("program", "hbm0", "hbm1")
    assert "sync" in Core(BARRIER_CORE).signature.members
    assert "sync" not in Core(SIM_CORE).signature.members


@pytest.mark.parametrize("stall", [0.0, 0.2])
def test_core_exchange(stall):
    """The core in amaranth.sim equals the ISA simulator on :data:`EXCHANGE`."""
    from test_core import HBM_BYTES, check

    rng = make_rng(f"core{stall}")
    status = check(assemble(EXCHANGE), exchange_images(rng, HBM_BYTES), (3, 0, 0, 0, 0, 0, 0),
                   config=BARRIER_CORE, stall=stall, barrier_timeout=TIMEOUT)
    assert ErrorCode(status["error"]) == ErrorCode.NONE


@pytest.mark.parametrize("program, code, pc", FAILURES)
def test_core_barrier_errors(program, code, pc):
    """Each of :data:`FAILURES` ends with the ISA simulator's error and pc, and the core
    finishes (the last one with the default timeout: ``stop`` ends the waiting barrier)."""
    from test_core import HBM_BYTES, check

    timeout = BARRIER_TIMEOUT if code == ErrorCode.AXI else 300
    status = check(assemble(program), exchange_images(make_rng("errors"), HBM_BYTES),
                   config=BARRIER_CORE, barrier_timeout=timeout, max_cycles=20_000)
    assert (ErrorCode(status["error"]), status["error_pc"]) == (code, pc)


# -- the Verilog on the C++ harness (one build for every test: BARRIER_CORE, TIMEOUT) ---------

#: AXI conditions: (ready stall probability, read latency range).
CONDITIONS = {"fast": (0.0, (1, 1)), "stalled": (0.3, (1, 40))}
#: Bytes of each port's memory on the harness.
HBM_BYTES = 1 << 14


@pytest.mark.verilator
@pytest.mark.parametrize("bench", BENCHES)
@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_exchange_on_the_verilog(bench, condition):
    """:data:`EXCHANGE` on the Verilog equals the ISA simulator: error, each unit's retired
    pcs, every HBM byte, and (harness) what each instruction wrote, the barriers' flags
    included (their retirement comes after their flag write)."""
    stall, latency = CONDITIONS[condition]
    rng = make_rng(f"exchange-{condition}")
    run = run_checked(bench, BARRIER_CORE, assemble(EXCHANGE), exchange_images(rng, HBM_BYTES),
                      (3, 0, 0, 0, 0, 0, 0), stall=stall, latency=latency, seed=SEED,
                      name=f"barrier-{condition}", barrier_timeout=TIMEOUT)
    assert run.error == ErrorCode.NONE
    assert run.unit_trace(Unit.SYS) == [2, 5, 6]


@pytest.mark.verilator
@pytest.mark.parametrize("program, code, pc", FAILURES)
def test_barrier_errors_on_the_verilog(program, code, pc):
    """Each of :data:`FAILURES` on the harness: the ISA simulator's error and pc; a barrier
    whose peer never comes ends within :data:`TIMEOUT` cycles and a poll."""
    run = run_checked("harness", BARRIER_CORE, assemble(program),
                      exchange_images(make_rng("errors"), HBM_BYTES), latency=(40, 40),
                      barrier_timeout=TIMEOUT)
    assert (run.error, run.error_pc) == (code, pc)
    if code == ErrorCode.BARRIER:
        assert TIMEOUT < run.cycles < TIMEOUT + 400


def barrier_cost(latency):
    """Cycles a BARRIER whose peers are there (peers=1) costs on the harness with a fixed
    memory ``latency``: the run of two barriers and HALT against the run of two SYNCs and
    HALT, halved; and the cycles between the two barriers' retirements."""
    executable = build_harness(BARRIER_CORE, barrier_timeout=TIMEOUT)
    hbm = [np.zeros(HBM_BYTES, np.uint8) for _ in range(BARRIER_CORE.hbm_ports)]
    barriers = assemble("barrier peers=1 addr=0x40 value=1\nbarrier peers=1 addr=0x80 value=2\n"
                        "halt")
    syncs = assemble("sync\nsync\nhalt")
    run, _ = run_program(executable, BARRIER_CORE, barriers, hbm, check=True, latency=latency)
    plain, _ = run_program(executable, BARRIER_CORE, syncs, hbm, latency=latency)
    sys_cycles = [int(r["cycle"]) for r in run.retirements if r["unit"] == Unit.SYS.value]
    return (run.cycles - plain.cycles) / 2, sys_cycles[1] - sys_cycles[0]


@pytest.mark.verilator
def test_barrier_cycles():
    """A BARRIER whose peers are already there holds the dispatcher for the engine's cycles
    and one more (the release of its tokens): :meth:`BarrierEngine.expected_cycles` of
    ``latency + 1``, because the harness's memory (as the cocotb bench's) shows a response
    ``latency + 1`` cycles after the transfer it answers, the amaranth.sim model ``latency``
    cycles. Instead of a SYNC (which the decoder's four cycles per word bound), it costs the
    run 4 cycles less than that: 84 at the default latency of 40."""
    for latency in (DEFAULT_LATENCY, 1):
        cost, interval = barrier_cost(latency)
        print(f"latency {latency}: {interval} cycles between two barriers' retirements; a "
              f"BARRIER costs {cost} cycles more than a SYNC")
        assert interval == BarrierEngine.expected_cycles(latency + 1) + 1
        assert cost == interval - 4


@pytest.mark.verilator
def test_a_compiled_tensor_parallel_step_on_the_verilog(tmp_path):
    """A tiny model's decode step compiled for a tensor-parallel "group" of one barrier core
    (its 8 trades each store a slice to the exchange port, pass a BARRIER and load the whole
    vector back) on the Verilog equals the ISA simulator, and the cycle model holds it within
    3%, barriers included (:attr:`flightgen.sim.perf.Timing.barrier`)."""
    from test_perf import compiled_step

    from flightgen.compiler.target import Target
    from flightgen.sim.perf import estimate

    target = Target("barrier", BARRIER_CORE, channel_bytes=1 << 24, parallel="tensor")
    words, hbm, registers = compiled_step(tmp_path, target)
    run = run_checked("harness", BARRIER_CORE, words, hbm, registers, latency=(40, 40),
                      name="tp-step", barrier_timeout=TIMEOUT)
    assert run.error == ErrorCode.NONE
    assert len(run.unit_trace(Unit.SYS)) == 8 + 1  # 4 barriers per layer, 2 layers, HALT
    predicted = estimate(BARRIER_CORE, words, registers).cycles
    error = predicted / run.cycles - 1
    print(f"RTL {run.cycles} cycles, model {predicted} ({100 * error:+.2f}%)")
    assert abs(error) <= 0.03
