"""cocotb bench: the requantizer's Verilog against :func:`flightgen.isa.numerics.requantize`.

Runs inside the simulator (see :func:`flightgen.sim.runner.run`). ``FLIGHTGEN_PARAMS`` holds the
:class:`~flightgen.hw.requant.Requantizer` parameters as JSON; ``FLIGHTGEN_RANDOM_BEATS`` sets
how many random beats follow the directed edge cases in each stall configuration.
"""

import json
import os
import warnings
import zlib

import cocotb
import numpy as np
from amaranth.hdl import UnusedElaboratable
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from ...hw.requant import Requantizer
from ..stimulus import requant_beats
from .streams import STALL_PATTERNS, CycleCounter, StreamSink, StreamSource, stall_pattern

# The component is built here only as a model (layouts, reference, cycles), never elaborated.
warnings.simplefilter("ignore", UnusedElaboratable)

PARAMS = json.loads(os.environ.get("FLIGHTGEN_PARAMS", "{}"))
RANDOM_BEATS = int(os.environ.get("FLIGHTGEN_RANDOM_BEATS", "2000"))
#: Cycles allowed per beat before a run is declared hung (generous: heavy stalls on both sides
#: need about 16 cycles per beat on average).
CYCLES_PER_BEAT_LIMIT = 64


class RequantTB:
    """Clock, reset, a source on ``i_stream`` and a sink on ``o_stream``."""

    def __init__(self, dut, idle="none", backpressure="none", salt=""):
        self.dut = dut
        self.model = Requantizer(**PARAMS)
        members = self.model.signature.members
        self.in_layout = members["i_stream"].signature.members["payload"].shape
        self.out_layout = members["o_stream"].signature.members["payload"].shape
        self.seed = cocotb.RANDOM_SEED
        self.rng = np.random.default_rng([self.seed, zlib.crc32(salt.encode())])
        Clock(dut.clk, 10, unit="ns").start()
        self.counter = CycleCounter(dut.clk)
        self.source = StreamSource(dut, "i_stream", dut.clk, self.counter,
                                   idle=stall_pattern(idle, self.rng))
        self.sink = StreamSink(dut, "o_stream", dut.clk, self.counter,
                               backpressure=stall_pattern(backpressure, self.rng),
                               reset=dut.rst)

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 2)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def pack(self, acc, mult, shift):
        """Raw payload bits of each input beat."""
        return [
            self.in_layout.const({"acc": [int(v) for v in row], "mult": int(m), "shift": int(s)})
            .as_bits()
            for row, m, s in zip(acc, mult, shift, strict=True)
        ]

    def unpack(self, payloads):
        """INT8 lanes of each output beat, shape ``(beats, lanes)``."""
        lanes = self.model.lanes
        out = [self.out_layout.from_bits(p) for p in payloads]
        return np.array([[beat[i] for i in range(lanes)] for beat in out],
                        dtype=np.int64).reshape(-1, lanes)

    async def run(self, acc, mult, shift):
        """Send the beats, wait for every output beat, and return them."""
        self.source.send(self.pack(acc, mult, shift))
        limit = CYCLES_PER_BEAT_LIMIT * len(acc) + 100
        for _ in range(limit):
            await RisingEdge(self.dut.clk)
            if len(self.sink.payloads) >= len(acc):
                break
        assert len(self.sink.payloads) == len(acc), (
            f"hung: {len(self.sink.payloads)} of {len(acc)} beats out after {limit} cycles "
            f"(seed {self.seed})")
        await ClockCycles(self.dut.clk, 8)  # an extra beat would show up here
        assert len(self.sink.payloads) == len(acc), (
            f"{len(self.sink.payloads) - len(acc)} beats more than were sent (seed {self.seed})")
        assert not self.sink.violations, "stream rule broken: " + "; ".join(self.sink.violations)
        return self.unpack(self.sink.payloads)

    def check(self, got, acc, mult, shift):
        expected = self.model.reference(acc, mult, shift)
        mismatch = np.argwhere(got != expected)
        if len(mismatch):
            beat, lane = mismatch[0]
            raise AssertionError(
                f"{len(mismatch)} of {got.size} values differ (seed {self.seed}); first at beat "
                f"{beat} lane {lane}: requantize(acc={acc[beat, lane]}, mult={mult[beat]}, "
                f"shift={shift[beat]}) = {expected[beat, lane]}, RTL gave {got[beat, lane]}")
        np.testing.assert_array_equal(got, expected)


@cocotb.test()
@cocotb.parametrize(idle=STALL_PATTERNS, backpressure=STALL_PATTERNS)
async def matches_numpy_under_stalls(dut, idle, backpressure):
    """Directed edge cases plus random beats, crossed with every source/sink stall pattern."""
    tb = RequantTB(dut, idle, backpressure, salt=f"{idle}/{backpressure}")
    await tb.reset()
    acc, mult, shift = requant_beats(tb.rng, tb.model.lanes, RANDOM_BEATS)
    got = await tb.run(acc, mult, shift)
    tb.check(got, acc, mult, shift)
    dut._log.info("%d values bit-exact (idle=%s, backpressure=%s, %d cycles)",
                  got.size, idle, backpressure, tb.counter.cycle)


@cocotb.test()
async def cycles_match_expected(dut):
    """With no stalls, each burst takes exactly ``expected_cycles(beats)``."""
    tb = RequantTB(dut, salt="cycles")
    await tb.reset()
    for beats in (1, 2, 3, 17, 256):
        acc, mult, shift = (column[:beats] for column in requant_beats(tb.rng, tb.model.lanes, 0))
        first_out = len(tb.sink.transfer_cycles)
        first_in = len(tb.source.transfer_cycles)
        got = await tb.run(acc, mult, shift)
        measured = tb.sink.transfer_cycles[-1] - tb.source.transfer_cycles[first_in] + 1
        assert measured == tb.model.expected_cycles(beats), (
            f"{beats} beats took {measured} cycles, expected_cycles() says "
            f"{tb.model.expected_cycles(beats)}")
        tb.check(got[first_out:], acc, mult, shift)
        tb.sink.payloads.clear()
        tb.sink.transfer_cycles.clear()


@cocotb.test()
async def reset_empties_pipeline(dut):
    """A reset with beats in flight and the sink stalled leaves no valid output beat, and the
    block then works normally."""
    tb = RequantTB(dut, backpressure="none", salt="reset")
    await tb.reset()
    acc, mult, shift = (column[:6] for column in requant_beats(tb.rng, tb.model.lanes, 0))
    tb.sink.backpressure = lambda: True
    tb.source.send(tb.pack(acc, mult, shift))
    await ClockCycles(dut.clk, 10)
    assert dut.o_stream__valid.value == 1, "a stalled pipeline should hold a valid output beat"
    tb.source.stop()
    dut.i_stream__valid.value = 0
    await tb.reset()
    assert dut.o_stream__valid.value == 0, "output still valid after reset"
    tb.sink.backpressure = lambda: False
    tb.source = StreamSource(dut, "i_stream", dut.clk, tb.counter)
    got = await tb.run(acc, mult, shift)
    tb.check(got, acc, mult, shift)
