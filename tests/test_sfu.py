"""SpecialFunctionUnit in amaranth.sim (the fast tier): every operation against
flightgen.isa.special through flightgen.isa.vector, with stalls, odd lengths and exact
cycles."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.sfu import ERROR_CODES, LaneArray, LaneOp, SpecialFunctionUnit
from flightgen.isa.numerics import mul_round_shift
from flightgen.isa.special import saturate_fx
from flightgen.isa.vector import VectorOp, command_layout
from flightgen.sim.amaranth_streams import refuse_command, run_commands
from flightgen.sim.stimulus import vector_edge_cases, vector_operation


def simulate(sfu, operations, stall=None, seed=0):
    got, cycles = run_commands(sfu, operations, ("a", "b"), command_layout, stall, seed)
    results, start = [], 0
    for op in operations:
        beats = got[start:start + op.out_beats]
        start += op.out_beats
        values = np.array([int(v) for beat in beats for v in beat], dtype=np.int64)
        results.append(values[:op.length])
    return results, cycles


def check(results, operations):
    for values, op in zip(results, operations, strict=True):
        assert values.shape == op.expected.shape
        mismatch = np.argwhere(values != op.expected)
        assert not len(mismatch), (op.op.name, op.length, int(mismatch[0][0]),
                                   int(values[mismatch[0][0]]), int(op.expected[mismatch[0][0]]))


@pytest.mark.parametrize("op", list(VectorOp))
def test_every_op_under_stalls(op):
    sfu = SpecialFunctionUnit(4, 256)
    rng = np.random.default_rng(op.value)
    lengths = [2, 7, 16, 33, 64] if op != VectorOp.ROPE else [2, 6, 16, 64]
    ops = [vector_operation(rng, 4, op, n) for n in lengths]
    results, _ = simulate(sfu, ops, stall=0.3)
    check(results, ops)


def test_edge_vectors():
    """All-equal vectors, large negatives, saturation, fully and singly masked softmax rows."""
    sfu = SpecialFunctionUnit(4, 256)
    ops = vector_edge_cases(4)
    results, _ = simulate(sfu, ops, stall=0.2, seed=1)
    check(results, ops)


@pytest.mark.parametrize("op", list(VectorOp))
def test_cycles_equal_expected(op):
    sfu = SpecialFunctionUnit(4, 256)
    rng = np.random.default_rng(100 + op.value)
    for length in (2, 12, 61 if op != VectorOp.ROPE else 62):
        operation = vector_operation(rng, 4, op, length)
        results, cycles = simulate(sfu, [operation])
        check(results, [operation])
        measured = cycles["out"][-1] - cycles["cmd"][0] + 1
        assert measured == sfu.expected_cycles(operation), (op.name, length, measured)


@pytest.mark.parametrize(("change", "code"), [
    ({"length": 0}, ERROR_CODES["bad_length"]), ({"length": 257}, ERROR_CODES["bad_length"]),
    ({"op": VectorOp.ROPE, "length": 5}, ERROR_CODES["odd_rope"]),
    ({"op": VectorOp.SOFTMAX, "length": 5, "valid": 6}, ERROR_CODES["bad_valid"])])
def test_refused_command_sets_error_and_reads_nothing(change, code):
    sfu = SpecialFunctionUnit(4, 256)
    command = {"op": VectorOp.ADD, "length": 8, "valid": 8, "frac": 0, "eps": 0, "position": 0}
    command.update(change)
    assert refuse_command(sfu, command, command_layout, ("a", "b")) == (code, 1)


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="^lanes must be a power of two from 2 to 64, not 3$"):
        SpecialFunctionUnit(3)
    with pytest.raises(ValueError, match="^max_length must be a positive multiple of 4, "
                                         "not 30$"):
        SpecialFunctionUnit(4, 30)


@pytest.mark.parametrize("op", ["NORMALIZE", "NORM"])
def test_lane_scaling_over_every_shift(op):
    """The lanes' rounding scale of NORMALIZE and NORM with the multiplier and the right shift
    over their whole ranges (beyond the clamps too): ``sat(round(v * mult * 2**-shift))`` with
    ``v = x`` (NORMALIZE) or ``(x - mean) * w`` plus the bias (NORM), bit for bit against
    the ISA's rounding rule."""
    lanes = 2
    dut = LaneArray(lanes)
    rng = np.random.default_rng(11 if op == "NORM" else 12)
    cases = []
    for shift in range(-48, 80):
        for _ in range(3):
            cases.append({"shift": shift, "mult": int(rng.integers(0, 1 << 17)),
                          "mean": int(rng.integers(-(1 << 32), 1 << 32)),
                          "x": [int(v) >> int(rng.integers(0, 32)) for v in
                                rng.integers(-(1 << 31), 1 << 31, lanes)],
                          "bw": [int(v) for v in rng.integers(-(1 << 15), 1 << 15, lanes)],
                          "bv": [int(v) for v in rng.integers(-(1 << 31), 1 << 31, lanes)]})
    cases += [{**cases[0], "x": [-1, 1], "mean": 0, "bw": [1, -1], "mult": 1, "shift": s}
              for s in range(-48, 4)]
    got = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.op, LaneOp[op])
        for case in cases:
            for name in ("shift", "mult", "mean"):
                ctx.set(getattr(dut, name), case[name])
            for lane in range(lanes):
                for name in ("x", "bw", "bv"):
                    ctx.set(getattr(dut, name)[lane], case[name][lane])
            ctx.set(dut.i_valid, 1)
            await ctx.tick()
            ctx.set(dut.i_valid, 0)
            for _ in range(LaneArray.LATENCY - 1):
                await ctx.tick()
            assert ctx.get(dut.o_valid)
            got.append([ctx.get(dut.o_y[lane]) for lane in range(lanes)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for case, values in zip(cases, got, strict=True):
        x = np.array(case["x"], object)
        v = x if op == "NORMALIZE" else (x - case["mean"]) * np.array(case["bw"], object)
        scaled = mul_round_shift(v, case["mult"], case["shift"])
        if op == "NORM":
            scaled = scaled + np.array(case["bv"], object)
        assert values == [int(y) for y in saturate_fx(scaled)], case
