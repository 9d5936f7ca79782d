"""BlockScaler in amaranth.sim: group scales, minimums and activation block scales applied to
block partials, bit for bit against flightgen.isa.weights.linear."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.scaler import BlockScaler
from flightgen.isa.numerics import quantize_per_group
from flightgen.isa.weights import GroupQuantized, linear


def block_terms(weight, codes):
    """Per-block P and X of one token (numpy), shape (blocks, rows)."""
    n, k = weight.shape
    blocks = k // 32
    w = weight.codes.astype(np.int64).reshape(n, blocks, 32)
    x = codes.astype(np.int64).reshape(blocks, 32)
    partial = np.einsum("nbk,bk->bn", w, x)
    kept = np.ones((n, k), bool) if weight.mask is None else weight.mask
    sums = np.einsum("nbk,bk->bn", kept.reshape(n, blocks, 32).astype(np.int64), x)
    return partial, sums


def simulate(lanes, rows):
    """Run BlockScaler over ``rows``: a list of per-row dicts of (blocks, lanes) arrays."""
    dut = BlockScaler(lanes)
    results = []

    async def bench(ctx):
        cycle = 0
        for row in rows:
            blocks = len(row["partial"])
            for b in range(blocks):
                while cycle % 5 == 2:  # stall now and then
                    ctx.set(dut.en, 0)
                    await ctx.tick()
                    cycle += 1
                ctx.set(dut.en, 1)
                ctx.set(dut.i_valid, 1)
                value = {name: [int(v) for v in row[name][b]] for name in
                         ("partial", "sums", "scale", "minimum", "mult", "exp")}
                ctx.set(dut.i_block, {**value, "first": b == 0, "last": b == blocks - 1})
                await ctx.tick()
                cycle += 1
                if ctx.get(dut.o_valid):
                    results.append([ctx.get(dut.o_value[lane]) for lane in range(lanes)])
        ctx.set(dut.i_valid, 0)
        for _ in range(3 * BlockScaler.LATENCY):
            ctx.set(dut.en, 1)
            await ctx.tick()
            if ctx.get(dut.o_valid):
                results.append([ctx.get(dut.o_value[lane]) for lane in range(lanes)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(results, dtype=np.int64)


@pytest.mark.parametrize(("bits", "symmetric"), [(8, True), (4, False), (8, False)])
def test_rows_equal_linear(bits, symmetric):
    rng = np.random.default_rng(bits * 2 + symmetric)
    lanes, k = 2, 192
    rows = []
    expected = []
    for trial in range(4):
        # weight scales from 2**-20 to 2**10: every float16 exponent field the rows can use
        spread = np.exp2(rng.uniform(-14, 16, (lanes, k)) if trial % 2 else 0)
        weight = GroupQuantized.from_float(rng.normal(0, 0.05 * (trial + 1), (lanes, k)) * spread,
                                           bits, 32 * (1 + trial % 2), symmetric)
        values = rng.normal(0, 2**16 * (trial + 1), (1, k)).astype(np.int64)
        values[0, :32] = 0  # a zero block: scale 0
        codes, (mult, exp) = quantize_per_group(values)
        expected.append(linear(codes, (mult, exp), weight)[0])
        partial, sums = block_terms(weight, codes[0])
        repeat = weight.group // 32
        scales = np.repeat(weight.scales, repeat, axis=1).T
        mins = (np.zeros_like(scales) if weight.mins is None
                else np.repeat(weight.mins, repeat, axis=1).T)
        row = {"partial": partial, "sums": sums, "scale": scales.view(np.uint16),
               "minimum": mins.view(np.uint16),
               "mult": np.repeat(mult[0][:, None], lanes, 1),
               "exp": np.repeat(exp[0][:, None], lanes, 1)}
        np.testing.assert_array_equal(
            BlockScaler.reference(partial, sums, scales, mins, row["mult"], row["exp"]),
            expected[-1])
        rows.append(row)
    np.testing.assert_array_equal(simulate(lanes, rows), np.array(expected))


def test_extremes_saturate_like_linear():
    # huge scales and activations: contributions saturate at LINEAR_TERM_BITS, rows at INT32
    lanes = 2
    partial = np.array([[520192, -520192], [-3, 5]])
    sums = np.array([[4064, -4064], [1, 1]])
    scales = np.array([[65504, -65504], [6e-8, 1.0]], np.float16)  # max, subnormal
    mins = np.array([[-65504, 2.0**-14], [0, -1]], np.float16)
    mult = np.array([[65535, 65535], [32768, 40000]])
    exp = np.array([[20, 20], [-40, -3]])
    expected = BlockScaler.reference(partial, sums, scales, mins, mult, exp)
    assert set(expected) <= {2**31 - 1, -(2**31)}
    row = {"partial": partial, "sums": sums, "scale": scales.view(np.uint16),
           "minimum": mins.view(np.uint16), "mult": mult, "exp": exp}
    np.testing.assert_array_equal(simulate(lanes, [row])[0], expected)


def test_random_fields_equal_reference():
    # every field over its whole range (float16 scales and minimums of any finite bit pattern,
    # any multiplier, exponents of any sign): every shift of a contribution, its clamps, the
    # windows of each step and the saturations, bit for bit against the numpy reference
    rng = np.random.default_rng(7)
    lanes, rows = 2, []

    def half(shape):
        bits = rng.integers(0, 1 << 16, shape).astype(np.uint16)
        return np.where(bits & 0x7C00 == 0x7C00, bits & 0x83FF, bits)  # finite

    for _ in range(60):
        blocks = int(rng.integers(1, 5))
        row = {"partial": rng.integers(-(1 << 21), 1 << 21, (blocks, lanes)),
               "sums": rng.integers(-(1 << 13), 1 << 13, (blocks, lanes)),
               "scale": half((blocks, lanes)), "minimum": half((blocks, lanes)),
               "mult": rng.integers(0, 1 << 16, (blocks, lanes)),
               "exp": rng.integers(-128, 128, (blocks, lanes))}
        if rng.random() < 0.3:  # small multipliers: products near zero, -1 among them
            row["mult"] = rng.integers(0, 3, (blocks, lanes))
            row["partial"] = rng.integers(-2, 2, (blocks, lanes))
        rows.append(row)
    expected = [BlockScaler.reference(r["partial"], r["sums"], r["scale"].view(np.float16),
                                      r["minimum"].view(np.float16), r["mult"], r["exp"])
                for r in rows]
    np.testing.assert_array_equal(simulate(lanes, rows), np.array(expected))
