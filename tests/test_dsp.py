"""PackedMultiplier in amaranth.sim: products, latency, enable, and the lane budget."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.dsp import LANE_BITS, LANE_PRODUCTS, PackedMultiplier


def test_lane_budget():
    # eight products of |a| <= 127, |w| <= 128 fit the 18-bit signed lane; nine do not
    assert LANE_PRODUCTS == 8
    assert 8 * 127 * 128 < 2 ** (LANE_BITS - 1) <= 9 * 127 * 128


def test_products_latency_and_enable():
    rng = np.random.default_rng(11)
    edges = [-128, -127, -1, 0, 1, 127]
    cases = [(a, b, w) for a in edges for b in edges for w in edges]
    cases += [tuple(int(v) for v in rng.integers(-128, 128, 3)) for _ in range(300)]
    dut = PackedMultiplier()
    seen = []

    async def bench(ctx):
        pending = []
        for index, (a0, a1, w) in enumerate(cases):
            enable = index % 7 != 3  # a held cycle now and then
            ctx.set(dut.en, enable)
            ctx.set(dut.a0, a0)
            ctx.set(dut.a1, a1)
            ctx.set(dut.w, w)
            await ctx.tick()
            if enable:
                pending.append((a0, a1, w))
                if len(pending) > PackedMultiplier.LATENCY:
                    pending.pop(0)
                if len(pending) == PackedMultiplier.LATENCY:
                    seen.append((pending[0], ctx.get(dut.p0), ctx.get(dut.p1)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) > 300
    for (a0, a1, w), p0, p1 in seen:
        assert (p0, p1) == PackedMultiplier.reference(a0, a1, w), (a0, a1, w)


@pytest.mark.parametrize("width", [7, 10, "8"])
def test_width_is_validated(width):
    with pytest.raises(ValueError, match=rf"^operand width must be 8 or 9 bits, not {width!r}$"):
        PackedMultiplier(width)
