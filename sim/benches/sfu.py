"""cocotb bench: the special function unit's Verilog against :mod:`flightgen.isa.vector` (whose
expected outputs are the definitions of :mod:`flightgen.isa.special`).

``FLIGHTGEN_PARAMS`` holds the :class:`~flightgen.hw.sfu.SpecialFunctionUnit` parameters as
JSON; ``FLIGHTGEN_VECTORS`` sets how many random vectors each operation gets per length class
in ``random_vectors`` (default 100).
"""

import json
import os
import warnings

import cocotb
import numpy as np
from amaranth.hdl import UnusedElaboratable

from ...hw.sfu import SpecialFunctionUnit
from ...isa.vector import VectorOp, command_layout
from ..stimulus import vector_edge_cases, vector_operation
from .streams import STALL_PATTERNS, CommandBench

warnings.simplefilter("ignore", UnusedElaboratable)

PARAMS = json.loads(os.environ.get("FLIGHTGEN_PARAMS", "{}"))
VECTORS = int(os.environ.get("FLIGHTGEN_VECTORS", "100"))


def length_classes(lanes, max_length):
    """Length classes, each a sampler taking an rng and whether lengths must be even (RoPE):
    ``short`` (below one beat), ``ragged`` (more than a beat, not a whole number of beats: odd
    lengths, or for RoPE even ones), ``whole`` (whole beats) and ``long`` (half the buffer to
    all of it)."""
    def pick(rng, low, high, accept):
        while True:
            n = int(rng.integers(low, high + 1))
            if accept(n):
                return n

    def ragged(n, even):
        return n % lanes != 0 and (n % 2 == 0 if even else n % 2 == 1)

    return {
        "short": lambda rng, even: pick(rng, 1, max(lanes - 1, 2),
                                        lambda n: n % 2 == 0 or not even),
        "ragged": lambda rng, even: pick(rng, lanes + 1, 4 * lanes, lambda n: ragged(n, even)),
        "whole": lambda rng, even: lanes * int(rng.integers(1, 5)),
        "long": lambda rng, even: pick(rng, max(2 * lanes + 1, max_length // 2), max_length,
                                       lambda n: n % 2 == 0 or not even),
    }


class VectorTB(CommandBench):
    INPUTS = ("cmd", "a", "b")
    COMMAND_LAYOUT = command_layout

    def __init__(self, dut, idle="none", backpressure="none", salt=""):
        super().__init__(dut, idle, backpressure, salt)
        self.sfu = SpecialFunctionUnit(**PARAMS)

    async def run(self, ops, label=""):
        got = await self.transfer(ops, sum(self.sfu.expected_cycles(op) for op in ops))
        start = 0
        lanes = self.sfu.lanes
        for op in ops:
            beats = got[start:start + op.out_beats]
            start += op.out_beats
            values = []
            for payload in beats:
                for lane in range(lanes):
                    v = (payload >> (32 * lane)) & 0xFFFFFFFF
                    values.append(v - (1 << 32) if v >> 31 else v)
            values = np.array(values[:op.length], dtype=np.int64)
            mismatch = np.argwhere(values != op.expected)
            if len(mismatch):
                index = int(mismatch[0][0])
                raise AssertionError(
                    f"{op.op.name} of length {op.length}{label}: {len(mismatch)} of "
                    f"{op.length} values differ (seed {self.seed}); first at element {index}: "
                    f"expected {op.expected[index]}, RTL gave {values[index]}")


@cocotb.test()
@cocotb.parametrize(idle=STALL_PATTERNS, backpressure=STALL_PATTERNS)
async def every_op_under_stalls(dut, idle, backpressure):
    """Each operation on a vector of every length class, crossed with every stall pattern."""
    tb = VectorTB(dut, idle, backpressure, salt=f"{idle}/{backpressure}")
    await tb.reset()
    classes = length_classes(tb.sfu.lanes, tb.sfu.max_length)
    ops = [vector_operation(tb.rng, tb.sfu.lanes, op, sample(tb.rng, op == VectorOp.ROPE))
           for op in VectorOp for sample in classes.values()]
    await tb.run(ops)


@cocotb.test()
@cocotb.parametrize(idle=("none", "heavy"), backpressure=("none", "heavy"))
async def edge_vectors(dut, idle, backpressure):
    """Directed edge cases (:func:`flightgen.sim.stimulus.vector_edge_cases`)."""
    tb = VectorTB(dut, idle, backpressure, salt=f"edges/{idle}/{backpressure}")
    await tb.reset()
    await tb.run(vector_edge_cases(tb.sfu.lanes))


@cocotb.test()
@cocotb.parametrize(op=list(VectorOp))
async def random_vectors(dut, op):
    """``FLIGHTGEN_VECTORS`` random vectors of each length class, light stalls everywhere."""
    tb = VectorTB(dut, "light", "light", salt=f"random/{op.name}")
    await tb.reset()
    classes = length_classes(tb.sfu.lanes, tb.sfu.max_length)
    for name, sample in classes.items():
        for start in range(0, VECTORS, 50):
            ops = [vector_operation(tb.rng, tb.sfu.lanes, op, sample(tb.rng, op == VectorOp.ROPE))
                   for _ in range(min(50, VECTORS - start))]
            await tb.run(ops, label=f" ({name})")
        dut._log.info("%s, %s lengths: %d vectors bit-exact", op.name, name, VECTORS)


@cocotb.test()
async def cycles_match_expected(dut):
    """Without stalls every operation takes exactly ``expected_cycles()``."""
    tb = VectorTB(dut, salt="cycles")
    await tb.reset()
    classes = length_classes(tb.sfu.lanes, tb.sfu.max_length)
    for op in VectorOp:
        for sample in classes.values():
            operation = vector_operation(tb.rng, tb.sfu.lanes, op, sample(tb.rng,
                                                                           op == VectorOp.ROPE))
            first_cmd = len(tb.sources["cmd"].transfer_cycles)
            await tb.run([operation])
            measured = tb.measured_cycles(first_cmd)
            assert measured == tb.sfu.expected_cycles(operation), (
                f"{op.name} of length {operation.length} took {measured} cycles, "
                f"expected_cycles() says {tb.sfu.expected_cycles(operation)}")
