"""cocotb bench: the block quantizer's Verilog against
:func:`flightgen.isa.numerics.quantize_per_group`.

``FLIGHTGEN_PARAMS`` holds the :class:`~flightgen.hw.quantizer.BlockQuantizer` parameters as
JSON; ``FLIGHTGEN_GROUPS`` sets how many random groups follow the directed ones per test.
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

from ...hw.quantizer import BlockQuantizer, reference_beats
from ..stimulus import quantizer_groups
from .streams import STALL_PATTERNS, CycleCounter, StreamSink, StreamSource, stall_pattern

warnings.simplefilter("ignore", UnusedElaboratable)

PARAMS = json.loads(os.environ.get("FLIGHTGEN_PARAMS", "{}"))
GROUPS = int(os.environ.get("FLIGHTGEN_GROUPS", "200"))


async def run(dut, idle, backpressure, salt):
    quantizer = BlockQuantizer(**PARAMS)
    seed = cocotb.RANDOM_SEED
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    Clock(dut.clk, 10, unit="ns").start()
    counter = CycleCounter(dut.clk)
    source = StreamSource(dut, "i", dut.clk, counter, idle=stall_pattern(idle, rng))
    sink = StreamSink(dut, "o", dut.clk, counter, backpressure=stall_pattern(backpressure, rng),
                      reset=dut.rst)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    values = quantizer_groups(rng, quantizer.group, GROUPS)
    beats = values.reshape(-1, quantizer.lanes)
    source.send([sum((int(v) & 0xFFFFFFFF) << (32 * k) for k, v in enumerate(beat))
                 for beat in beats])
    limit = 40 * quantizer.expected_cycles(len(beats))
    for _ in range(limit):
        await RisingEdge(dut.clk)
        if len(sink.payloads) >= len(beats):
            break
    assert len(sink.payloads) == len(beats), f"hung after {limit} cycles (seed {seed})"
    assert not sink.violations, "; ".join(sink.violations)
    lanes = quantizer.lanes
    codes = np.array([[((p >> (8 * k)) & 0xFF) - (256 if (p >> (8 * k + 7)) & 1 else 0)
                       for k in range(lanes)] for p in sink.payloads], dtype=np.int64)
    mult = np.array([(p >> (8 * lanes)) & 0xFFFF for p in sink.payloads], dtype=np.int64)
    exp = np.array([((p >> (8 * lanes + 16)) & 0xFF) - (256 if (p >> (8 * lanes + 23)) & 1
                                                        else 0) for p in sink.payloads])
    expected = reference_beats(quantizer, values)
    for name, got, want in (("codes", codes, expected[0]), ("mult", mult, expected[1]),
                            ("exp", exp, expected[2])):
        mismatch = np.argwhere(np.asarray(got) != np.asarray(want))
        if len(mismatch):
            beat = int(mismatch[0][0])
            group = beat // quantizer.beats
            raise AssertionError(
                f"{name} differ in {len(mismatch)} places (seed {seed}); first at beat {beat} "
                f"(group {group}): expected {np.asarray(want)[beat]}, RTL gave "
                f"{np.asarray(got)[beat]}")
    return counter.cycle, len(beats), source.transfer_cycles, sink.transfer_cycles


@cocotb.test()
@cocotb.parametrize(idle=STALL_PATTERNS, backpressure=STALL_PATTERNS)
async def matches_numpy_under_stalls(dut, idle, backpressure):
    """Directed and random groups, crossed with every source/sink stall pattern."""
    await run(dut, idle, backpressure, f"{idle}/{backpressure}")


@cocotb.test()
async def cycles_match_expected(dut):
    """Without stalls, a burst takes exactly ``expected_cycles()`` and the input never
    stalls."""
    _, beats, inputs, outputs = await run(dut, "none", "none", "cycles")
    quantizer = BlockQuantizer(**PARAMS)
    assert inputs == list(range(inputs[0], inputs[0] + beats)), "the input stalled"
    measured = outputs[-1] - inputs[0] + 1
    assert measured == quantizer.expected_cycles(beats), (
        f"{beats} beats took {measured} cycles, expected_cycles() says "
        f"{quantizer.expected_cycles(beats)}")
