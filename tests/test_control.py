"""ControlSlave (the Vitis ap_ctrl_hs AXI4-Lite control slave) in amaranth.sim, against the
pure-Python ControlModel, under random AXI4-Lite valid and ready delays; RegisterMap layout and
validation; the AXI signatures."""

from collections import deque

import numpy as np
import pytest
from amaranth import Module, Shape
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import Flow
from amaranth.sim import Simulator

from flightgen.hw.axi import (
    BOUNDARY,
    BURST_INCR,
    MAX_BURST_BEATS,
    RESP_DECERR,
    RESP_EXOKAY,
    RESP_OKAY,
    RESP_SLVERR,
    axi4_lite_signature,
    axi4_signature,
)
from flightgen.hw.control import (
    AP_DONE,
    AP_IDLE,
    AP_READY,
    AP_START,
    AUTO_RESTART,
    CONTROL,
    GIE,
    IER,
    ISR,
    ControlModel,
    ControlSlave,
    Register,
    RegisterMap,
)
from flightgen.sim.runner import resolve_seed

MAP = RegisterMap(("program", "hbm0", "hbm1"),
                  ("length", "r1", "r2", "r3", "r4", "r5", "r6", "r7"),
                  (("error", 8), ("error_pc", 32), ("cycles", 64)))
MAP_END = 0x58  # first byte after the example map's last register
#: Byte address of every 32-bit word of an argument register of MAP.
ARG_WORDS = [0x10 + 4 * k for k in range(6)] + [0x28 + 4 * k for k in range(8)]
STATUS_WORDS = [0x48, 0x4C, 0x50, 0x54]


def make_rng(name):
    seed = resolve_seed(f"control-{name}")
    print(f"seed {seed} (reproduce with FLIGHTGEN_SEED={seed})")
    return np.random.default_rng(seed)


# -- AXI4-Lite master and a fake core, as amaranth.sim testbenches ------------------------------

class Write:
    def __init__(self, addr, data, strb, aw_delay, w_delay):
        self.addr, self.data, self.strb = addr, data, strb
        self.aw_delay, self.w_delay = aw_delay, w_delay
        self.resp = None
        self.done = False


class Read:
    def __init__(self, addr, ar_delay):
        self.addr, self.ar_delay = addr, ar_delay
        self.data = self.resp = None
        self.done = False


class Harness:
    """An AXI4-Lite master with independent AW+W, B, AR and R engines (so writes and reads may be
    in flight together and several writes may be outstanding), a fake core, and a monitor that
    checks the slave's side of the AXI4-Lite rules and counts every transfer.

    With probability ``stall`` an address or data half is delayed by 1 to 3 cycles, and ``bready``
    or ``rready`` is low in a cycle. Address and data lines carry garbage while not valid.

    The fake core drops ``idle`` from the cycle after a ``start`` pulse until :meth:`done`; the
    harness keeps a :class:`ControlModel` in step with the operations it performs.
    """

    def __init__(self, dut, rng, stall=0.3):
        self.dut, self.bus, self.rng, self.stall = dut, dut.axil, rng, stall
        self.model = ControlModel(dut.register_map)
        self.writes, self.reads = deque(), deque()
        self.pending_b, self.pending_r = deque(), deque()
        self.issued_writes = self.issued_reads = 0
        self.errors = []
        self.cycle = 0
        self.transfers = {"aw": [], "w": [], "b": [], "ar": [], "r": [], "start": []}
        self.hold_busy = False  # the test holds the core's idle input low

    def benches(self):
        return [self._aw_w_engine, self._b_engine, self._ar_engine, self._r_engine,
                self._monitor]

    def _delay(self):
        return int(self.rng.integers(1, 4)) if self.rng.random() < self.stall else 0

    def _garbage(self, bits):
        return int(self.rng.integers(0, 1 << bits))

    # Non-blocking issue, and waiting.

    def write_nowait(self, addr, data, strb=0xF, aw_delay=None, w_delay=None):
        op = Write(addr, data, strb, self._delay() if aw_delay is None else aw_delay,
                   self._delay() if w_delay is None else w_delay)
        self.writes.append(op)
        self.issued_writes += 1
        return op

    def read_nowait(self, addr, ar_delay=None):
        op = Read(addr, self._delay() if ar_delay is None else ar_delay)
        self.reads.append(op)
        self.issued_reads += 1
        return op

    async def wait(self, ctx, *ops, timeout=500):
        for _ in range(timeout):
            if all(op.done for op in ops):
                break
            await ctx.tick()
        else:
            raise AssertionError(f"transactions not completed after {timeout} cycles")
        for op in ops:
            assert op.resp == RESP_OKAY

    # Blocking operations that keep the model in step and check read data against it.

    async def write(self, ctx, addr, data, strb=0xF, **delays):
        await self.wait(ctx, self.write_nowait(addr, data, strb, **delays))
        self.model.write(addr, data, strb)

    async def read(self, ctx, addr, **delays):
        op = self.read_nowait(addr, **delays)
        await self.wait(ctx, op)
        expected = self.model.read(addr)
        assert op.data == expected, f"read {addr:#x}: got {op.data:#x}, expected {expected:#x}"
        return op.data

    async def done(self, ctx):
        """The core pulses ``done`` for one cycle and becomes idle (unless held busy).

        A core finishes only runs it has started, so first wait for the start pulses the model
        expects (``start`` follows the write of ``ap_start`` by a few cycles).
        """
        for _ in range(10):
            if len(self.transfers["start"]) >= self.model.starts:
                break
            await ctx.tick()
        ctx.set(self.dut.done, 1)
        ctx.set(self.dut.idle, not self.hold_busy)
        await ctx.tick()
        ctx.set(self.dut.done, 0)
        self.model.done()

    async def set_idle(self, ctx, idle):
        self.hold_busy = not idle
        ctx.set(self.dut.idle, idle)
        self.model.set_idle(idle)
        await ctx.tick()

    async def settle(self, ctx, cycles=5):
        for _ in range(cycles):
            await ctx.tick()

    def check_outputs(self, ctx):
        """The level outputs and the start count agree with the model (after settling)."""
        args = ctx.get(self.dut.args)
        for name, value in self.model.args.items():
            assert int(args[name]) == value, f"args.{name}"
        assert ctx.get(self.dut.interrupt) == self.model.interrupt
        assert len(self.transfers["start"]) == self.model.starts

    def check_final(self, ctx):
        assert self.errors == []
        counts = {name: len(cycles) for name, cycles in self.transfers.items()}
        assert counts["aw"] == counts["w"] == counts["b"] == self.issued_writes
        assert counts["ar"] == counts["r"] == self.issued_reads
        assert not self.writes and not self.reads and not self.pending_b and not self.pending_r
        self.check_outputs(ctx)

    # Engines.

    async def _aw_w_engine(self, ctx):
        bus = self.bus
        aw_bits, data_bits = len(bus.awaddr), len(bus.wdata)
        while True:
            if not self.writes:
                ctx.set(bus.awaddr, self._garbage(aw_bits))
                ctx.set(bus.wdata, self._garbage(data_bits))
                await ctx.tick()
                continue
            op = self.writes.popleft()
            aw_done = w_done = False
            cycle = 0
            while not (aw_done and w_done):
                aw_valid = not aw_done and cycle >= op.aw_delay
                w_valid = not w_done and cycle >= op.w_delay
                ctx.set(bus.awvalid, aw_valid)
                ctx.set(bus.awaddr, op.addr if aw_valid else self._garbage(aw_bits))
                ctx.set(bus.wvalid, w_valid)
                ctx.set(bus.wdata, op.data if w_valid else self._garbage(data_bits))
                ctx.set(bus.wstrb, op.strb if w_valid else self._garbage(4))
                _, _, aw_ready, w_ready = await ctx.tick().sample(bus.awready, bus.wready)
                aw_done |= aw_valid and bool(aw_ready)
                w_done |= w_valid and bool(w_ready)
                cycle += 1
            ctx.set(bus.awvalid, 0)
            ctx.set(bus.wvalid, 0)
            self.pending_b.append(op)

    async def _b_engine(self, ctx):
        bus = self.bus
        while True:
            ready = self.rng.random() >= self.stall
            ctx.set(bus.bready, ready)
            _, _, valid, resp = await ctx.tick().sample(bus.bvalid, bus.bresp)
            if valid and ready:
                if not self.pending_b:
                    self.errors.append(f"write response without a write, cycle {self.cycle}")
                    continue
                op = self.pending_b.popleft()
                op.resp, op.done = resp, True

    async def _ar_engine(self, ctx):
        bus = self.bus
        bits = len(bus.araddr)
        while True:
            if not self.reads:
                ctx.set(bus.araddr, self._garbage(bits))
                await ctx.tick()
                continue
            op = self.reads.popleft()
            for _ in range(op.ar_delay):
                ctx.set(bus.araddr, self._garbage(bits))
                await ctx.tick()
            ctx.set(bus.arvalid, 1)
            ctx.set(bus.araddr, op.addr)
            while True:
                _, _, ready = await ctx.tick().sample(bus.arready)
                if ready:
                    break
            ctx.set(bus.arvalid, 0)
            self.pending_r.append(op)

    async def _r_engine(self, ctx):
        bus = self.bus
        while True:
            ready = self.rng.random() >= self.stall
            ctx.set(bus.rready, ready)
            _, _, valid, data, resp = await ctx.tick().sample(bus.rvalid, bus.rdata, bus.rresp)
            if valid and ready:
                if not self.pending_r:
                    self.errors.append(f"read data without a read, cycle {self.cycle}")
                    continue
                op = self.pending_r.popleft()
                op.data, op.resp, op.done = data, resp, True

    async def _monitor(self, ctx):
        """Check the slave's outputs against the AXI4-Lite rules; count transfers; be the core."""
        bus, dut = self.bus, self.dut
        signals = (dut.start, bus.awvalid, bus.awready, bus.wvalid, bus.wready, bus.bvalid,
                   bus.bready, bus.bresp, bus.arvalid, bus.arready, bus.rvalid, bus.rready,
                   bus.rdata, bus.rresp)
        previous = None
        while True:
            _, _, *values = await ctx.tick().sample(*signals)
            (start, awvalid, awready, wvalid, wready, bvalid, bready, bresp, arvalid, arready,
             rvalid, rready, rdata, rresp) = values
            cycle = self.cycle
            self.cycle += 1
            for name, valid, ready in (("aw", awvalid, awready), ("w", wvalid, wready),
                                       ("b", bvalid, bready), ("ar", arvalid, arready),
                                       ("r", rvalid, rready)):
                if valid and ready:
                    self.transfers[name].append(cycle)
            if len(self.transfers["b"]) > min(len(self.transfers["aw"]), len(self.transfers["w"])):
                self.errors.append(f"write response before its address and data, cycle {cycle}")
            if len(self.transfers["r"]) > len(self.transfers["ar"]):
                self.errors.append(f"read data before its address, cycle {cycle}")
            if previous is not None:
                p_start, p_bvalid, p_bready, p_bresp = previous[0], *previous[5:8]
                p_rvalid, p_rready, p_rdata, p_rresp = previous[10:]
                if p_bvalid and not p_bready and (not bvalid or bresp != p_bresp):
                    self.errors.append(f"write response dropped or changed, cycle {cycle}")
                if p_rvalid and not p_rready and (not rvalid or (rdata, rresp) != (p_rdata,
                                                                                   p_rresp)):
                    self.errors.append(f"read data dropped or changed, cycle {cycle}")
                if start and p_start:
                    self.errors.append(f"start high for two cycles, cycle {cycle}")
            if start:
                self.transfers["start"].append(cycle)
                ctx.set(dut.idle, 0)  # the fake core is busy until done
            previous = values


def simulate(name, body, register_map=MAP, stall=0.3):
    """Run ``body(ctx, harness)`` on a fresh ControlSlave with an idle core, then settle and run
    the harness's final checks. Returns the harness."""
    dut = ControlSlave(register_map)
    harness = Harness(dut, make_rng(name), stall)

    async def main(ctx):
        ctx.set(dut.idle, 1)
        await ctx.tick()
        await body(ctx, harness)
        await harness.settle(ctx, 8)
        harness.check_final(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in harness.benches():
        sim.add_testbench(bench, background=True)
    sim.add_testbench(main)
    sim.run()
    return harness


def bits(rng, width):
    """A random ``width``-bit value (up to 64 bits)."""
    return int(rng.integers(0, 1 << width, dtype=np.uint64))


def random_strb(rng):
    return int(rng.integers(0, 16)) if rng.random() < 0.5 else 0xF


# -- register behaviour ---------------------------------------------------------------------

def test_reset_values():
    async def body(ctx, h):
        assert ctx.get(h.dut.start) == 0
        assert ctx.get(h.dut.interrupt) == 0
        assert await h.read(ctx, CONTROL) == AP_IDLE
        for addr in (GIE, IER, ISR, *ARG_WORDS, *STATUS_WORDS):
            assert await h.read(ctx, addr) == 0
        h.check_outputs(ctx)

    simulate("reset", body)


def test_arguments_read_back():
    async def body(ctx, h):
        rng = h.rng
        for _ in range(3):
            for addr in rng.permutation(ARG_WORDS):
                await h.write(ctx, int(addr), bits(rng, 32), random_strb(rng))
            for addr in rng.permutation(ARG_WORDS):
                await h.read(ctx, int(addr))
            h.check_outputs(ctx)
        # Full-word writes land exactly where the map says, low word first.
        values = {name: bits(rng, 64) for name in MAP.pointers}
        values |= {name: bits(rng, 32) for name in MAP.scalars}
        for name, value in values.items():
            await h.write(ctx, MAP.offset(name), value & 0xFFFF_FFFF)
            if name in MAP.pointers:
                await h.write(ctx, MAP.offset(name) + 4, value >> 32)
        args = ctx.get(h.dut.args)
        for name, value in values.items():
            assert int(args[name]) == value
        assert h.model.args == values

    simulate("arguments", body)


@pytest.mark.parametrize(("aw_delay", "w_delay"), [(0, 6), (6, 0), (0, 0), (3, 3)],
                         ids=["aw-first", "w-first", "together", "together-late"])
def test_address_and_data_in_any_order(aw_delay, w_delay):
    async def body(ctx, h):
        for addr in ARG_WORDS[:6]:
            await h.write(ctx, addr, bits(h.rng, 32), aw_delay=aw_delay,
                          w_delay=w_delay)
            await h.read(ctx, addr)
        h.check_outputs(ctx)

    simulate(f"order-{aw_delay}-{w_delay}", body)


def test_back_to_back_cycles():
    """With no delays and no backpressure, a write is accepted every cycle and a read every two
    cycles, with the documented latencies, while both run at once."""
    async def body(ctx, h):
        rng = h.rng
        writes = [h.write_nowait(addr, bits(rng, 32)) for addr in ARG_WORDS[:8]]
        # Read the other argument words while the writes are in flight (their values are known).
        reads = [h.read_nowait(addr) for addr in ARG_WORDS[8:]]
        await h.wait(ctx, *writes, *reads)
        for op in writes:
            h.model.write(op.addr, op.data)
        for op in reads:
            assert op.data == h.model.read(op.addr)
        t = h.transfers
        assert t["aw"] == t["w"] == list(range(t["aw"][0], t["aw"][0] + len(writes)))
        assert t["b"] == [c + ControlSlave.WRITE_LATENCY for c in t["aw"]]
        assert t["ar"] == list(range(t["ar"][0], t["ar"][0] + 2 * len(reads), 2))
        assert t["r"] == [c + ControlSlave.READ_LATENCY for c in t["ar"]]
        for addr in ARG_WORDS:
            await h.read(ctx, addr)

    simulate("back-to-back", body, stall=0)


def test_interleaved_writes_and_reads_under_delays():
    async def body(ctx, h):
        rng = h.rng
        for _ in range(4):
            written = [int(a) for a in rng.choice(ARG_WORDS, size=7, replace=False)]
            others = [a for a in ARG_WORDS + STATUS_WORDS + [GIE, IER] if a not in written]
            writes = [h.write_nowait(addr, bits(rng, 32), random_strb(rng))
                      for addr in written]
            reads = [h.read_nowait(int(addr)) for addr in rng.choice(others, size=6)]
            await h.wait(ctx, *writes, *reads)
            for op in reads:  # none of them reads a word being written
                assert op.data == h.model.read(op.addr)
            for op in writes:
                h.model.write(op.addr, op.data, op.strb)
            for addr in written:
                await h.read(ctx, addr)
            h.check_outputs(ctx)

    simulate("interleaved", body, stall=0.5)


def test_status_is_read_only():
    async def body(ctx, h):
        rng = h.rng
        for _ in range(3):
            values = {"error": bits(rng, 8),
                      "error_pc": bits(rng, 32),
                      "cycles": bits(rng, 64)}
            ctx.set(h.dut.status, values)
            h.model.status.update(values)
            assert await h.read(ctx, 0x48) == values["error"]
            assert await h.read(ctx, 0x4C) == values["error_pc"]
            assert await h.read(ctx, 0x50) == values["cycles"] & 0xFFFF_FFFF
            assert await h.read(ctx, 0x54) == values["cycles"] >> 32
            for addr in STATUS_WORDS:
                await h.write(ctx, addr, bits(rng, 32))
            for addr in STATUS_WORDS:
                await h.read(ctx, addr)
        h.check_outputs(ctx)

    simulate("status", body)


def test_unmapped_addresses():
    async def body(ctx, h):
        rng = h.rng
        for addr in ARG_WORDS + [GIE, IER]:
            await h.write(ctx, addr, bits(rng, 32))
        unmapped = [MAP_END, 0x800, 0xFFC] + [int(a) for a in rng.integers(MAP_END, 0x1000, 8)]
        for addr in unmapped:
            await h.write(ctx, addr, bits(rng, 32))
        for addr in unmapped:
            assert await h.read(ctx, addr) == 0
        for addr in ARG_WORDS + [GIE, IER, ISR]:
            await h.read(ctx, addr)
        h.check_outputs(ctx)

    simulate("unmapped", body)


def test_low_address_bits_are_ignored():
    async def body(ctx, h):
        await h.write(ctx, 0x2B, 0x1234_5678)  # the word at 0x28 ("length")
        assert h.model.args["length"] == 0x1234_5678
        assert await h.read(ctx, 0x29) == 0x1234_5678

    simulate("low-bits", body)


def test_start_pulses_once_per_host_start():
    async def body(ctx, h):
        first = h.write_nowait(CONTROL, AP_START, aw_delay=0, w_delay=0)
        await h.wait(ctx, first)
        h.model.write(CONTROL, AP_START)
        assert await h.read(ctx, CONTROL) == AP_START
        await h.settle(ctx)
        # The write took effect when its address and data were transferred.
        assert h.transfers["start"] == [h.transfers["aw"][-1] + ControlSlave.START_LATENCY]
        # A second start during the run, and a write of 0, change nothing.
        await h.write(ctx, CONTROL, AP_START)
        await h.write(ctx, CONTROL, 0)
        await h.settle(ctx, 10)
        assert len(h.transfers["start"]) == h.model.starts == 1
        assert await h.read(ctx, CONTROL) == AP_START
        await h.done(ctx)
        await h.settle(ctx, 10)
        assert len(h.transfers["start"]) == 1  # the start written during the run was its own
        assert await h.read(ctx, CONTROL) == AP_DONE | AP_READY | AP_IDLE
        assert await h.read(ctx, CONTROL) == AP_IDLE  # done and ready clear on read
        for run in range(2, 5):
            await h.write(ctx, CONTROL, AP_START, strb=int(h.rng.integers(0, 16)) | 1)
            await h.settle(ctx)
            assert len(h.transfers["start"]) == h.model.starts == run
            await h.done(ctx)
            assert await h.read(ctx, CONTROL) == AP_DONE | AP_READY | AP_IDLE
        # Without strobe bit 0 the control register ignores the write.
        await h.write(ctx, CONTROL, AP_START, strb=0xE)
        await h.settle(ctx)
        assert len(h.transfers["start"]) == 4
        h.check_outputs(ctx)

    simulate("start", body)


def test_idle_follows_the_input():
    async def body(ctx, h):
        await h.set_idle(ctx, 0)
        await h.settle(ctx, 2)
        assert await h.read(ctx, CONTROL) == 0
        await h.write(ctx, CONTROL, AP_START)
        await h.settle(ctx, 10)
        assert h.transfers["start"] == []  # the core is busy: the start waits
        assert await h.read(ctx, CONTROL) == AP_START
        await h.set_idle(ctx, 1)
        await h.settle(ctx)
        assert len(h.transfers["start"]) == h.model.starts == 1
        assert await h.read(ctx, CONTROL) == AP_START
        await h.done(ctx)
        await h.settle(ctx, 2)
        assert await h.read(ctx, CONTROL) == AP_DONE | AP_READY | AP_IDLE
        await h.set_idle(ctx, 0)
        await h.settle(ctx, 2)
        assert await h.read(ctx, CONTROL) == 0

    simulate("idle", body)


def test_done_in_the_cycle_of_a_control_read_is_not_lost():
    dut = ControlSlave(MAP)
    got = []

    async def bench(ctx):
        bus = dut.axil
        ctx.set(dut.idle, 1)
        ctx.set(bus.rready, 1)
        await ctx.tick()
        for done in (True, False):
            ctx.set(bus.arvalid, 1)
            ctx.set(bus.araddr, CONTROL)
            ctx.set(dut.done, done)
            await ctx.tick()
            ctx.set(bus.arvalid, 0)
            ctx.set(dut.done, 0)
            _, _, valid, value = await ctx.tick().sample(bus.rvalid, bus.rdata)
            assert valid
            got.append(value)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [AP_IDLE, AP_DONE | AP_READY | AP_IDLE]


def test_interrupts():
    async def body(ctx, h):
        await h.write(ctx, CONTROL, AP_START)
        await h.done(ctx)  # IER is 0: no interrupt status
        assert await h.read(ctx, ISR) == 0
        await h.write(ctx, IER, 1)
        await h.write(ctx, CONTROL, AP_START)
        await h.done(ctx)
        assert await h.read(ctx, ISR) == 1
        assert ctx.get(h.dut.interrupt) == 0  # GIE is 0
        await h.write(ctx, GIE, 1)
        assert ctx.get(h.dut.interrupt) == 1
        await h.write(ctx, ISR, 1)  # toggle on write: clear
        assert await h.read(ctx, ISR) == 0
        assert ctx.get(h.dut.interrupt) == 0
        await h.write(ctx, ISR, 2)  # toggle on write: set
        assert await h.read(ctx, ISR) == 2
        assert ctx.get(h.dut.interrupt) == 1
        await h.write(ctx, ISR, 3, strb=0xE)  # strobe bit 0 clear: ignored
        assert await h.read(ctx, ISR) == 2
        await h.write(ctx, ISR, 2)
        await h.write(ctx, IER, 0xFFFF_FFFF)
        assert await h.read(ctx, IER) == 3
        await h.write(ctx, CONTROL, AP_START)
        await h.done(ctx)
        assert await h.read(ctx, ISR) == 3
        assert ctx.get(h.dut.interrupt) == 1
        await h.write(ctx, GIE, 0xFFFF_FFFE)
        assert await h.read(ctx, GIE) == 0
        assert ctx.get(h.dut.interrupt) == 0
        h.check_outputs(ctx)

    simulate("interrupts", body)


def test_auto_restart():
    async def body(ctx, h):
        await h.write(ctx, CONTROL, AP_START | AUTO_RESTART)
        await h.settle(ctx)
        assert len(h.transfers["start"]) == 1
        assert await h.read(ctx, CONTROL) == AP_START | AUTO_RESTART
        for run in range(2, 5):
            await h.done(ctx)
            await h.settle(ctx)
            assert len(h.transfers["start"]) == h.model.starts == run
            assert await h.read(ctx, CONTROL) == AP_START | AP_DONE | AP_READY | AUTO_RESTART
        await h.write(ctx, CONTROL, 0)  # stop restarting; the current run goes on
        assert await h.read(ctx, CONTROL) == AP_START
        await h.done(ctx)
        await h.settle(ctx)
        assert len(h.transfers["start"]) == 4
        assert await h.read(ctx, CONTROL) == AP_DONE | AP_READY | AP_IDLE
        h.check_outputs(ctx)

    simulate("auto-restart", body)


@pytest.mark.parametrize("stall", [0.0, 0.4, 0.8])
def test_random_operations_against_the_model(stall):
    async def body(ctx, h):
        rng = h.rng
        kinds = ["write_arg", "read", "write_control", "write_irq", "done", "status",
                 "write_other", "pair"]
        weights = np.array([25, 25, 10, 10, 10, 5, 5, 12], dtype=float)
        readable = [CONTROL, GIE, IER, ISR] + ARG_WORDS + STATUS_WORDS
        for _ in range(300):
            kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
            if kind == "write_arg":
                await h.write(ctx, int(rng.choice(ARG_WORDS)) | int(rng.integers(0, 4)),
                              bits(rng, 32), random_strb(rng))
            elif kind == "read":
                addr = int(rng.choice(readable)) if rng.random() < 0.9 else \
                    int(rng.integers(MAP_END, 1 << 12))
                await h.read(ctx, addr)
            elif kind == "write_control":
                flags = int(rng.choice([AP_START, AP_START, AP_START | AUTO_RESTART,
                                        AUTO_RESTART, 0]))
                await h.write(ctx, CONTROL, flags | bits(rng, 32) & 0xFFFF_FF7E,
                              random_strb(rng))
                await h.settle(ctx)
            elif kind == "write_irq":
                await h.write(ctx, int(rng.choice([GIE, IER, ISR])), int(rng.integers(0, 8)),
                              random_strb(rng))
            elif kind == "done":
                if h.model.running or rng.random() < 0.1:
                    await h.done(ctx)
                    await h.settle(ctx)
            elif kind == "status":
                values = {name: bits(rng, width) for name, width in MAP.status}
                ctx.set(h.dut.status, values)
                h.model.status.update(values)
            elif kind == "write_other":
                addr = int(rng.choice(STATUS_WORDS)) if rng.random() < 0.5 else \
                    int(rng.integers(MAP_END, 1 << 12))
                await h.write(ctx, addr, bits(rng, 32), random_strb(rng))
            else:  # an argument write and a read of another word, in flight together
                addr = int(rng.choice(ARG_WORDS))
                other = int(rng.choice([a for a in readable if a != addr]))
                write = h.write_nowait(addr, bits(rng, 32), random_strb(rng))
                read = h.read_nowait(other)
                await h.wait(ctx, write, read)
                assert read.data == h.model.read(other)
                h.model.write(addr, write.data, write.strb)
            for _ in range(int(rng.integers(0, 3))):
                await ctx.tick()
            h.check_outputs(ctx)
        for addr in readable:
            await h.read(ctx, addr)

    harness = simulate(f"random-{stall}", body, stall=stall)
    assert harness.model.starts >= 3  # the sequence did exercise runs


# -- the register map ----------------------------------------------------------------------

def test_example_register_map():
    expected = [
        Register("control", 0x00, 4, "control"), Register("gie", 0x04, 4, "control"),
        Register("ier", 0x08, 4, "control"), Register("isr", 0x0C, 4, "control"),
        Register("program", 0x10, 8, "pointer"), Register("hbm0", 0x18, 8, "pointer"),
        Register("hbm1", 0x20, 8, "pointer"),
        *(Register(name, 0x28 + 4 * k, 4, "scalar") for k, name in enumerate(MAP.scalars)),
        Register("error", 0x48, 4, "status"), Register("error_pc", 0x4C, 4, "status"),
        Register("cycles", 0x50, 8, "status"),
    ]
    assert MAP.registers == expected
    assert MAP.offset("hbm1") == 0x20
    assert MAP.offset("r7") == 0x44
    assert MAP.offset("isr") == 0x0C
    assert MAP.size_bytes == MAP_END
    assert MAP.addr_width == 12
    with pytest.raises(KeyError, match="no register named 'nothing'"):
        MAP.offset("nothing")


def test_addr_width_grows_with_the_map():
    assert RegisterMap().addr_width == 12
    fits = RegisterMap(scalars=tuple(f"s{k}" for k in range((4096 - 0x10) // 4)))
    assert fits.size_bytes == 4096 and fits.addr_width == 12
    over = RegisterMap(scalars=tuple(f"s{k}" for k in range((4096 - 0x10) // 4 + 1)))
    assert over.addr_width == 13
    assert len(ControlSlave(over).axil.awaddr) == 13


def test_register_map_normalises_to_tuples():
    rmap = RegisterMap(["a"], ["b"], [["c", 3]])
    assert rmap == RegisterMap(("a",), ("b",), (("c", 3),))
    assert rmap.status == (("c", 3),)


@pytest.mark.parametrize(("args", "message"), [
    ((("program", "9lives"),), "register name must be a Python identifier without a leading "
                               "underscore, not '9lives'"),
    ((("_hidden",),), "register name must be a Python identifier without a leading underscore, "
                      "not '_hidden'"),
    ((("for",),), "register name must be a Python identifier without a leading underscore, "
                  "not 'for'"),
    (((1,),), "register name must be a Python identifier without a leading underscore, not 1"),
    ((("isr",),), "register name 'isr' is reserved for a control register"),
    (((), ("control",)), "register name 'control' is reserved for a control register"),
    ((("a",), ("b",), (("a", 8),)), "register name 'a' is used twice"),
    ((("a", "a"),), "register name 'a' is used twice"),
    ((("ab",), (), (("x", 0),)), "status 'x' width must be from 1 to 64, not 0"),
    (((), (), (("x", 65),)), "status 'x' width must be from 1 to 64, not 65"),
    (((), (), (("x",),)), r"status entries must be \(name, width\) pairs, not \('x',\)"),
    (("program",), "pointers must be a sequence of names, not 'program'"),
    (((), "length"), "scalars must be a sequence of names, not 'length'"),
    (((), (), "error"), r"status must be a sequence of \(name, width\) pairs, not 'error'"),
])
def test_register_map_validation(args, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        RegisterMap(*args)


def test_control_slave_takes_a_register_map():
    with pytest.raises(TypeError, match=r"^register map must be a RegisterMap, not \('a',\)$"):
        ControlSlave(("a",))


def test_reference_is_a_fresh_model():
    model = ControlSlave(MAP).reference()
    assert isinstance(model, ControlModel)
    assert model.read(CONTROL) == AP_IDLE
    assert model.args == dict.fromkeys(MAP.pointers + MAP.scalars, 0)


# -- conversion and the AXI signatures -------------------------------------------------------

@pytest.mark.parametrize("rmap", [MAP, RegisterMap(), RegisterMap(("p",), (), (("s", 33),))],
                         ids=["example", "empty", "small"])
def test_converts_to_verilog(rmap):
    text = verilog.convert(ControlSlave(rmap), name="control")
    for port in ("axil__awvalid", "axil__rdata", "start", "done", "idle", "interrupt"):
        assert port in text


def test_axi4_lite_signature_is_the_slave_side():
    sig = axi4_lite_signature(12)
    inputs = {"awvalid", "awaddr", "wvalid", "wdata", "wstrb", "bready", "arvalid", "araddr",
              "rready"}
    outputs = {"awready", "wready", "bvalid", "bresp", "arready", "rvalid", "rdata", "rresp"}
    assert {name for name, member in sig.members.items() if member.flow == Flow.In} == inputs
    assert {name for name, member in sig.members.items() if member.flow == Flow.Out} == outputs
    widths = {name: Shape.cast(member.shape).width for name, member in sig.members.items()}
    assert widths["awaddr"] == widths["araddr"] == 12
    assert widths["wdata"] == widths["rdata"] == 32 and widths["wstrb"] == 4
    assert widths["bresp"] == widths["rresp"] == 2
    assert Shape.cast(axi4_lite_signature(16, 64).members["wstrb"].shape).width == 8


def test_axi4_signature_is_the_master_side():
    sig = axi4_signature(64, 512, id_width=4)
    members = sig.members
    inputs = {name for name, member in members.items() if member.flow == Flow.In}
    assert inputs == {"awready", "wready", "bvalid", "bresp", "bid", "arready", "rvalid", "rdata",
                      "rresp", "rlast", "rid"}
    widths = {name: Shape.cast(member.shape).width for name, member in members.items()}
    for p in ("aw", "ar"):
        assert (widths[f"{p}addr"], widths[f"{p}len"], widths[f"{p}size"], widths[f"{p}burst"],
                widths[f"{p}id"], widths[f"{p}cache"], widths[f"{p}prot"], widths[f"{p}lock"],
                widths[f"{p}qos"]) == (64, 8, 3, 2, 4, 4, 3, 1, 4)
    assert widths["wdata"] == widths["rdata"] == 512 and widths["wstrb"] == 64
    assert widths["wlast"] == widths["rlast"] == 1 and widths["bid"] == widths["rid"] == 4
    assert len(members) == 11 + 5 + 4 + 11 + 6
    # A master and a slave connect.
    master = wiring.PureInterface(sig)
    slave = wiring.PureInterface(sig.flip())
    wiring.connect(Module(), master, slave)


def test_axi_constants():
    assert (RESP_OKAY, RESP_EXOKAY, RESP_SLVERR, RESP_DECERR) == (0, 1, 2, 3)
    assert (BURST_INCR, MAX_BURST_BEATS, BOUNDARY) == (1, 256, 4096)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: axi4_signature(32, 48), "AXI data width must be a power of two from 32 to 1024, "
                                     "not 48"),
    (lambda: axi4_signature(32, 16), "AXI data width must be a power of two from 32 to 1024, "
                                     "not 16"),
    (lambda: axi4_signature(32, 2048), "AXI data width must be a power of two from 32 to 1024, "
                                       "not 2048"),
    (lambda: axi4_signature(11, 32), "AXI address width must be from 12 to 64, not 11"),
    (lambda: axi4_signature(65, 32), "AXI address width must be from 12 to 64, not 65"),
    (lambda: axi4_signature(32, 32, 0), "AXI ID width must be from 1 to 32, not 0"),
    (lambda: axi4_lite_signature(8), "AXI address width must be from 12 to 64, not 8"),
    (lambda: axi4_lite_signature(12, 128), "AXI4-Lite data width must be 32 or 64, not 128"),
])
def test_axi_signature_validation(call, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        call()
