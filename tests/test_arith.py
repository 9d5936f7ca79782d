"""The shared arithmetic blocks of flightgen.hw.arith in amaranth.sim, against the one
rounding rule of flightgen.isa.numerics (mul_round_shift) and its saturation."""

import numpy as np
import pytest
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from flightgen.hw.arith import StepShift, round_shift_saturate, round_shift_saturate_steps
from flightgen.isa.numerics import mul_round_shift


def evaluate(width, bits, block, cases):
    """``[(value, shift)] -> [result]`` of ``block(value, shift)`` (a ``bits``-bit expression)
    on a combinational module."""
    m = Module()
    value, shift = Signal(signed(width)), Signal(signed(10))
    out = Signal(signed(bits))
    m.d.comb += out.eq(block(value, shift))
    results = []

    async def bench(ctx):
        for v, s in cases:
            ctx.set(value, v)
            ctx.set(shift, s)
            results.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return results


def cases(width, max_right, max_left, rng, count=2000):
    """Random values of every magnitude (and the extremes, 0 and -1) with shifts over the
    whole clamped range and beyond it."""
    magnitudes = rng.integers(0, width, count)
    values = [int(rng.integers(0, 1 << 62)) << 20 | int(rng.integers(0, 1 << 20)) for _ in
              range(count)]
    values = [(v % (1 << int(b))) * (-1 if rng.random() < 0.5 else 1)
              for v, b in zip(values, magnitudes, strict=True)]
    values += [-(1 << (width - 1)), (1 << (width - 1)) - 1, 0, -1, 1]
    shifts = rng.integers(-max_left - 3, max_right + 4, len(values))
    picked = [(int(v), int(s)) for v, s in zip(values, shifts, strict=True)]
    # -1 and 1 at every shift: -1 saturates once the window lies below bit 0
    picked += [(v, s) for v in (-1, 1) for s in range(-max_left - 1, max_right + 2)]
    # round half to even at every shift: exact halves, either parity
    picked += [((2 * k + 1) << (s - 1), s) for k in (-3, -2, 1, 2) for s in range(1, 20)]
    return picked


@pytest.mark.parametrize(("width", "bits", "max_right", "max_left"),
                         [(81, 52, 82, 63), (50, 32, 63, 40), (68, 72, 70, 40), (48, 48, 48, 48)])
def test_round_shift_saturate_is_mul_round_shift(width, bits, max_right, max_left):
    rng = np.random.default_rng(width)
    picked = cases(width, max_right, max_left, rng)
    got = evaluate(width, bits, lambda value, shift: round_shift_saturate(
        value, shift, bits, max_right=max_right, max_left=max_left), picked)
    clamped = [min(max(s, -max_left), max_right) for _, s in picked]
    assert got == expected(picked, clamped, bits)


def expected(picked, shifts, bits):
    """``saturate(round_half_even(value * 2**-shift), bits)`` by the ISA's rounding rule."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    rounded = mul_round_shift(np.array([v for v, _ in picked], object), 1,
                              np.array(shifts, object))
    return [min(max(int(r), low), high) for r in rounded]


@pytest.mark.parametrize(("width", "bits", "step", "low", "high"),
                         [(87, 52, 8, -7, 11), (50, 32, 4, -3, 9), (40, 48, 16, -2, 3)])
def test_round_shift_saturate_steps_is_mul_round_shift(width, bits, step, low, high):
    # the block scaler's window (an 87-bit product, 52-bit terms, steps of 8), one whose
    # window is wider than the value, and coarse steps that leave the value's range
    rng = np.random.default_rng(width + step)
    picked = [(v, int(rng.integers(low - 2, high + 3))) for v, _ in
              cases(width, step * high, -step * low, rng)]
    picked += [(v, k) for v in (0, -1, 1, (1 << (width - 1)) - 1, -(1 << (width - 1)))
               for k in range(low - 1, high + 2)]
    # exact halves at every step, either parity
    picked += [((2 * j + 1) << (step * k - 1), k) for j in (-2, -1, 0, 1) for k in
               range(max(low, 1), high + 1) if step * k + 2 < width]
    got = evaluate(width, bits, lambda value, steps: round_shift_saturate_steps(
        value, steps, bits, step=step, low=low, high=high), picked)
    assert got == expected(picked, [step * min(max(k, low), high) for _, k in picked], bits)


@pytest.mark.parametrize(("max_right", "max_left", "fine_bits"), [(82, 63, 3), (70, 40, 3),
                                                                  (48, 48, 2)])
def test_step_shift_splits_the_clamped_shift(max_right, max_left, fine_bits):
    """``StepShift``: ``clamp(shift) == step * steps - fine`` with ``0 <= fine < step`` and
    ``steps`` within ``[low, high]`` and its shape, for every shift and beyond the clamps."""
    m = Module()
    shift = Signal(signed(10))
    split = StepShift(shift, max_right=max_right, max_left=max_left, fine_bits=fine_bits)
    fine, steps = Signal(fine_bits), Signal(split.steps_shape)
    m.d.comb += [fine.eq(split.fine), steps.eq(split.steps)]
    seen = []

    async def bench(ctx):
        for s in range(-max_left - 5, max_right + 6):
            ctx.set(shift, s)
            seen.append((s, ctx.get(fine), ctx.get(steps)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    for s, f, k in seen:
        assert split.step * k - f == min(max(s, -max_left), max_right), (s, f, k)
        assert 0 <= f < split.step and split.low <= k <= split.high, (s, f, k)
