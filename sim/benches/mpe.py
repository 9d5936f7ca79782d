"""cocotb bench: the matrix engine's Verilog against :mod:`flightgen.isa.matrix` (whose expected
outputs are :func:`flightgen.isa.weights.linear`).

Runs inside the simulator (see :func:`flightgen.sim.runner.run`). ``FLIGHTGEN_PARAMS`` holds the
:class:`~flightgen.hw.mpe.MatrixEngine` parameters as JSON. ``FLIGHTGEN_REPORT``, when set, names
a JSON file the throughput test writes its cycle counts to.
"""

import json
import os
import warnings

import cocotb
import numpy as np
from amaranth.hdl import UnusedElaboratable
from cocotb.triggers import ClockCycles

from ...hw.mpe import MatrixEngine
from ...isa.matrix import MatrixMode, command_layout
from ...isa.sparse import PATTERNS
from ..stimulus import WEIGHT_FORMATS, matrix_operation
from .streams import STALL_PATTERNS, CommandBench, StreamSource

warnings.simplefilter("ignore", UnusedElaboratable)

PARAMS = json.loads(os.environ.get("FLIGHTGEN_PARAMS", "{}"))
INPUTS = ("cmd", "act", "weights", "masks", "scales")


def combinations():
    """Every mode x weight format x sparsity pattern with scaled results, and every mode x
    sparsity pattern (INT8 and INT4 with minimums) with raw integer results."""
    scaled = [(mode, weights, pattern, False) for mode in MatrixMode
              for weights in WEIGHT_FORMATS for pattern in PATTERNS]
    raw = [(mode, weights, pattern, True) for mode in MatrixMode
           for weights in ("int8", "int4-asym") for pattern in PATTERNS]
    return scaled + raw


def describe(op):
    return f"{op.label} ({op.groups} row groups, {op.blocks} blocks)"


class MatrixTB(CommandBench):
    """Sources on every input stream of the matrix engine and a sink on ``out``."""

    INPUTS = INPUTS
    COMMAND_LAYOUT = command_layout

    def __init__(self, dut, idle="none", backpressure="none", salt=""):
        super().__init__(dut, idle, backpressure, salt)
        self.engine = MatrixEngine(**PARAMS)
        self.geometry = self.engine.geometry

    def operation(self, mode, weights, pattern, **kwargs):
        op = matrix_operation(self.rng, self.geometry, mode, weights, pattern, **kwargs)
        op.label = (f"{MatrixMode(mode).name} {weights} {pattern[0]}:{pattern[1]}"
                    + (" raw" if op.command["raw"] else "")
                    + ("" if op.command["load"] else " (reused tile)"))
        return op

    def unpack(self, payload):
        lanes = self.geometry.lanes
        values = [(payload >> (32 * lane)) & 0xFFFFFFFF for lane in range(lanes)]
        return [v - (1 << 32) if v >> 31 else v for v in values]

    async def run(self, ops):
        """Send every command's beats, wait for every output beat, check them."""
        got = await self.transfer(ops, sum(self.engine.expected_cycles(op) for op in ops))
        start = 0
        for op in ops:
            values = np.array([self.unpack(p) for p in got[start:start + op.groups]],
                              dtype=np.int64)
            start += op.groups
            mismatch = np.argwhere(values != op.expected)
            if len(mismatch):
                group, lane = mismatch[0]
                raise AssertionError(
                    f"{describe(op)}: {len(mismatch)} of {values.size} values differ (seed "
                    f"{self.seed}); first at row group {group} lane {lane}: expected "
                    f"{op.expected[group, lane]}, RTL gave {values[group, lane]}")
            np.testing.assert_array_equal(values, op.expected)

    def sequence(self):
        """Every combination once, in random order, random sizes and groups of 32 or 64; about
        one command in four follows one of its mode and reuses its tile instead of loading."""
        ops = []
        combos = combinations()
        for index in self.rng.permutation(len(combos)):
            mode, weights, pattern, raw = combos[index]
            previous = ops[-1] if ops else None
            reuse = (previous is not None and previous.mode == mode
                     and self.rng.random() < 0.5)
            group = int(self.rng.choice([32, 64]))
            if reuse and previous.activations[0].shape[1] % group:
                group = 32
            ops.append(self.operation(mode, weights, pattern, group=group, load=not reuse,
                                      activations=previous.activations if reuse else None,
                                      raw=raw))
        return ops


@cocotb.test()
@cocotb.parametrize(idle=STALL_PATTERNS, backpressure=STALL_PATTERNS)
async def every_combination_under_stalls(dut, idle, backpressure):
    """Modes x precisions x sparsity patterns, crossed with every source/sink stall pattern."""
    tb = MatrixTB(dut, idle, backpressure, salt=f"{idle}/{backpressure}")
    await tb.reset()
    ops = tb.sequence()
    await tb.run(ops)
    dut._log.info("%d commands, %d values bit-exact (idle=%s, backpressure=%s, %d cycles)",
                  len(ops), sum(op.expected.size for op in ops), idle, backpressure,
                  tb.counter.cycle)


@cocotb.test()
async def cycles_match_expected(dut):
    """Without stalls, every combination takes exactly ``expected_cycles()``."""
    tb = MatrixTB(dut, salt="cycles")
    await tb.reset()
    for op in tb.sequence():
        first_cmd = len(tb.sources["cmd"].transfer_cycles)
        await tb.run([op])
        measured = tb.measured_cycles(first_cmd)
        assert measured == tb.engine.expected_cycles(op), (
            f"{describe(op)} took {measured} cycles, expected_cycles() says "
            f"{tb.engine.expected_cycles(op)}")


@cocotb.test()
async def sparse_speedup(dut):
    """One weight matrix, dense and pruned to each N:16, run on a resident tile (MV and MM):
    cycles per command, and 8:16 at least 1.9 times as fast as dense."""
    tb = MatrixTB(dut, salt="speedup")
    await tb.reset()
    g = tb.geometry
    k = min(2048, tb.engine.max_k)
    report = {"chain": g.chain, "vpus": g.vpus, "dsps": g.macs // 2, "k": k, "results": []}
    for mode, rows in ((MatrixMode.MV, 32 * g.lanes), (MatrixMode.MM, 64)):
        tile = tb.operation(mode, "int4", (16, 16), k=k, rows=2)
        await tb.run([tile])
        cycles = {}
        for pattern in PATTERNS:
            op = tb.operation(mode, "int4", pattern, k=k, rows=rows, load=False,
                              activations=tile.activations)
            first_cmd = len(tb.sources["cmd"].transfer_cycles)
            await tb.run([op])
            measured = tb.measured_cycles(first_cmd)
            assert measured == tb.engine.expected_cycles(op)
            cycles[pattern] = measured
            tokens = 1 if mode == MatrixMode.MV else g.lanes
            dense_macs = rows * k * tokens
            report["results"].append({
                "mode": mode.name, "pattern": f"{pattern[0]}:{pattern[1]}", "rows": rows,
                "tokens": tokens, "cycles": measured,
                "dense_macs_per_dsp_cycle": dense_macs / (measured * g.macs // 2),
                "speedup": cycles[(16, 16)] / measured})
            dut._log.info("%s %d:%d: %d cycles, %.3fx dense", mode.name, *pattern, measured,
                          cycles[(16, 16)] / measured)
        speedup = cycles[(16, 16)] / cycles[(8, 16)]
        assert speedup >= 1.9, f"{mode.name} 8:16 is only {speedup:.3f}x dense"
    if os.environ.get("FLIGHTGEN_REPORT"):
        with open(os.environ["FLIGHTGEN_REPORT"], "w") as file:
            json.dump(report, file, indent=1)


@cocotb.test()
async def reset_mid_command(dut):
    """A reset with a command half done leaves no output and no held beat; the next command
    then computes correctly."""
    tb = MatrixTB(dut, salt="reset")
    await tb.reset()
    op = tb.operation(MatrixMode.MV, "int8", (8, 16), k=256, rows=4 * tb.geometry.lanes)
    tb.sources["cmd"].send([command_layout.const(op.command).as_bits()])
    for name in INPUTS[1:]:
        tb.sources[name].send(op.beats[name])
    await ClockCycles(dut.clk, tb.engine.expected_cycles(op) // 2)
    for source in tb.sources.values():
        source.stop()
    for name in INPUTS:
        getattr(dut, f"{name}__valid").value = 0
    await tb.reset()
    await ClockCycles(dut.clk, 4)
    assert dut.out__valid.value == 0, "output valid after reset"
    tb.sources = {name: StreamSource(dut, name, dut.clk, tb.counter) for name in INPUTS}
    tb.sink.payloads.clear()
    again = tb.operation(MatrixMode.MM, "int4-asym", (2, 16))
    await tb.run([again])
