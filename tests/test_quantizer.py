"""BlockQuantizer in amaranth.sim: FX vectors to INT8 codes with one scale per group, bit for
bit against flightgen.isa.numerics.quantize_per_group, with stalls and exact cycles."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.quantizer import BlockQuantizer, reference_beats
from flightgen.sim.amaranth_streams import get_beats, put_beats
from flightgen.sim.stimulus import quantizer_groups


def groups(rng, quantizer, count):
    return quantizer_groups(rng, quantizer.group, count)


def simulate(quantizer, values, stall=None, seed=0):
    rng = np.random.default_rng(seed)
    idle = (lambda: bool(rng.random() < stall)) if stall else (lambda: False)
    beats = values.reshape(-1, quantizer.lanes)
    layout = quantizer.i.payload.shape()
    got = {}

    async def source(ctx):
        got["in"] = await put_beats(ctx, quantizer.i, [layout.const([int(v) for v in beat])
                                                       for beat in beats], idle)

    async def sink(ctx):
        got["out"] = await get_beats(ctx, quantizer.o, len(beats), idle)

    sim = Simulator(quantizer)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    payloads, out_cycles = got["out"]
    codes = np.array([[int(c) for c in p.codes] for p in payloads], dtype=np.int64)
    mult = np.array([int(p.mult) for p in payloads], dtype=np.int64)
    exp = np.array([int(p.exp) for p in payloads], dtype=np.int64)
    return (codes, mult, exp), got["in"], out_cycles


@pytest.mark.parametrize(("lanes", "group"), [(4, 32), (8, 64), (2, 2), (16, 32)])
def test_equals_quantize_per_group_under_stalls(lanes, group):
    quantizer = BlockQuantizer(lanes, group)
    values = groups(np.random.default_rng(lanes * group), quantizer, 60)
    (codes, mult, exp), _, _ = simulate(quantizer, values, stall=0.3)
    expected = reference_beats(quantizer, values)
    np.testing.assert_array_equal(codes, expected[0])
    np.testing.assert_array_equal(mult, expected[1])
    np.testing.assert_array_equal(exp, expected[2])


@pytest.mark.parametrize(("lanes", "group"), [(4, 32), (8, 64), (32, 32)])
def test_cycles_equal_expected(lanes, group):
    quantizer = BlockQuantizer(lanes, group)
    values = groups(np.random.default_rng(7), quantizer, 20)
    _, in_cycles, out_cycles = simulate(quantizer, values)
    beats = len(in_cycles)
    assert in_cycles == list(range(beats))  # the input never stalls
    assert out_cycles[-1] - in_cycles[0] + 1 == quantizer.expected_cycles(beats)


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="^lanes must be a power of two from 1 to 64, not 3$"):
        BlockQuantizer(3)
    with pytest.raises(ValueError, match="^group must be a positive multiple of 4, not 30$"):
        BlockQuantizer(4, 30)
