"""Requantizer in amaranth.sim (the fast tier): parameters, bit-exactness under stalls, cycles."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.requant import Requantizer
from flightgen.sim.amaranth_streams import get_beats, put_beats
from flightgen.sim.benches.streams import stall_pattern
from flightgen.sim.stimulus import requant_beats


@pytest.mark.parametrize(("lanes", "error", "message"), [
    (0, ValueError, r"^lanes must be at least 1, not 0$"),
    (-3, ValueError, r"^lanes must be at least 1, not -3$"),
    ("4", TypeError, r"^lanes must be an integer, not '4'$"),
    (True, TypeError, r"^lanes must be an integer, not True$"),
])
def test_rejects_bad_lanes(lanes, error, message):
    with pytest.raises(error, match=message):
        Requantizer(lanes)


def test_reference_checks_shape():
    with pytest.raises(ValueError, match=r"^acc must have shape \(beats, 2\), not \(3, 4\)$"):
        Requantizer(2).reference(np.zeros((3, 4), np.int64), np.ones(3), np.ones(3))


def simulate(dut, acc, mult, shift, idle, backpressure):
    beats = [{"acc": [int(v) for v in row], "mult": int(m), "shift": int(s)}
             for row, m, s in zip(acc, mult, shift, strict=True)]
    result = {}

    async def source(ctx):
        result["in_cycles"] = await put_beats(ctx, dut.i_stream, beats, idle)

    async def sink(ctx):
        payloads, cycles = await get_beats(ctx, dut.o_stream, len(beats), backpressure)
        result["out"] = np.array([[p[i] for i in range(dut.lanes)] for p in payloads])
        result["out_cycles"] = cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return result


@pytest.mark.parametrize(("lanes", "idle", "backpressure"), [
    (1, "none", "none"),
    (2, "light", "heavy"),
    (3, "bursty", "light"),
])
def test_matches_numpy(lanes, idle, backpressure):
    rng = np.random.default_rng([lanes, len(idle), len(backpressure)])
    dut = Requantizer(lanes)
    acc, mult, shift = requant_beats(rng, lanes, random_beats=200)
    result = simulate(dut, acc, mult, shift, stall_pattern(idle, rng),
                      stall_pattern(backpressure, rng))
    np.testing.assert_array_equal(result["out"], dut.reference(acc, mult, shift))


@pytest.mark.parametrize("beats", [1, 5, 40])
def test_cycles_match_expected(beats):
    dut = Requantizer(2)
    acc, mult, shift = (c[:beats] for c in requant_beats(np.random.default_rng(0), 2, 0))
    result = simulate(dut, acc, mult, shift, stall_pattern("none", None),
                      stall_pattern("none", None))
    measured = result["out_cycles"][-1] - result["in_cycles"][0] + 1
    assert measured == dut.expected_cycles(beats)
    np.testing.assert_array_equal(result["out"], dut.reference(acc, mult, shift))
