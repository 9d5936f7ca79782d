"""ScalarUnit in amaranth.sim (the fast tier): FLOOR_DIV, ROUND_DIV, RECIPROCAL and RSQRT bit
for bit against flightgen.isa.numerics, exact cycle counts, backpressure and reset; and the
generic divider and square root it is built from."""

import math
from fractions import Fraction

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from flightgen.hw.scalar import IntegerSqrt, RestoringDivider, ScalarOp, ScalarUnit
from flightgen.isa.numerics import div_round, reciprocal, rsqrt
from flightgen.sim.amaranth_streams import get_beats, put_beats
from flightgen.sim.benches.streams import stall_pattern

DIVISIONS = (ScalarOp.FLOOR_DIV, ScalarOp.ROUND_DIV)
#: Random operations per op in test_op_matches_numerics.
RANDOM = 300
PERIOD = 1e-8


# -- stimulus --------------------------------------------------------------------------------

def log_uniform(rng, max_bits, count):
    """Positive Python integers whose bit length is uniform in [1, max_bits]."""
    values = []
    for bits in rng.integers(1, max_bits + 1, count):
        low = int.from_bytes(rng.bytes(16), "little") & ((1 << (int(bits) - 1)) - 1)
        values.append((1 << (int(bits) - 1)) | low)
    return values


def directed(op):
    """Edge cases of ``op``: ``(a, b)`` pairs."""
    if op in DIVISIONS:
        small = [0, 1, 2, 3, 5, 7]
        powers = [2**k + d for k in (16, 47, 48, 63, 64, 94) for d in (-1, 0, 1)]
        nums = small + powers + [2**95 - 1]
        nums += [-n for n in nums if n] + [-(2**95)]
        dens = [1, 2, 3, 2**47 - 1, 2**47, 2**48 - 1]
        pairs = [(n, d) for n in nums for d in dens]
        # exact halves (ties, both parities of the quotient) and their neighbours
        for d in (2, 6, 2**47, 2**48 - 2):
            for k in (0, 1, 2, 3, 2**40, 2**40 + 1):
                for step in (-1, 0, 1):
                    tie = k * d + d // 2 + step
                    pairs += [(tie, d), (-tie, d)]
        return pairs
    bits = 47 if op == ScalarOp.RECIPROCAL else 63
    values = {2**k + d for k in range(bits) for d in (-1, 0, 1)} | {3, 5, 6, 7, 2**bits - 1}
    return [(v, 0) for v in sorted(values) if 1 <= v < 2**bits]


def random_pairs(rng, op, count):
    """``count`` random operations of ``op``, magnitudes log-uniform."""
    if op in DIVISIONS:
        nums = log_uniform(rng, 95, count)
        signs = rng.integers(0, 2, count)
        dens = log_uniform(rng, 48, count)
        pairs = [(-n if s else n, d) for n, s, d in zip(nums, signs, dens, strict=True)]
        # a few random ties: (2k + 1) d / 2 for an even d
        for n, d in pairs[:count // 8]:
            d = 2 * max(d // 2, 1)
            k = abs(n) // (2 * d) * (1 if n >= 0 else -1)
            pairs.append((k * d + d // 2, d))
        return pairs
    bits = 47 if op == ScalarOp.RECIPROCAL else 63
    return [(v, 0) for v in log_uniform(rng, bits, count)]


def numerics_expected(op, pairs):
    """``(quotient, mult, exp)`` per pair, straight from flightgen.isa.numerics.

    The numerics functions take int64, so numerators beyond int64 are checked against exact
    rationals instead: Python's floor division, and ``round(Fraction)`` (half to even).
    """
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    zeros = [0] * len(pairs)
    if op in (ScalarOp.RECIPROCAL, ScalarOp.RSQRT):
        function = reciprocal if op == ScalarOp.RECIPROCAL else rsqrt
        mult, exp = function(np.array(a, dtype=np.int64))
        return zeros, list(mult), list(exp)
    quotient = []
    for n, d in zip(a, b, strict=True):
        if -(2**63) <= n < 2**63:
            narrow = np.array([n], np.int64), np.array([d], np.int64)
            value = np.floor_divide(*narrow) if op == ScalarOp.FLOOR_DIV else div_round(*narrow)
            quotient.append(int(value[0]))
        else:
            quotient.append(n // d if op == ScalarOp.FLOOR_DIV else round(Fraction(n, d)))
    return quotient, zeros, zeros


# -- simulation ------------------------------------------------------------------------------

def start(dut, *benches, limit):
    """Simulate ``dut`` with ``benches`` until they finish; fail after ``limit`` cycles (a hung
    design fails instead of hanging the suite)."""
    async def watchdog(ctx):
        await ctx.delay(limit * PERIOD)
        raise AssertionError(f"the testbenches did not finish within {limit} cycles")

    sim = Simulator(dut)
    sim.add_clock(PERIOD)
    for bench in benches:
        sim.add_testbench(bench)
    sim.add_testbench(watchdog, background=True)
    sim.run()


async def tick_until(ctx, signal):
    """Tick until ``signal`` is high at a clock edge. (``ctx.tick().until()`` does the same, but
    one abandoned by a failing simulation errors again when Python closes it.)"""
    while True:
        _, _, value = await ctx.tick().sample(signal)
        if value:
            return


def simulate(dut, ops, pairs, idle=lambda: False, backpressure=lambda: False):
    """Run operations through ``dut``; returns the output beats as ``(quotient, mult, exp)``
    and the cycles of the input and output transfers."""
    beats = [{"op": op, "a": a, "b": b} for op, (a, b) in zip(ops, pairs, strict=True)]
    result = {}

    async def source(ctx):
        result["in_cycles"] = await put_beats(ctx, dut.i_stream, beats, idle)

    async def sink(ctx):
        payloads, cycles = await get_beats(ctx, dut.o_stream, len(beats), backpressure)
        result["out"] = [(p.quotient, p.mult, p.exp) for p in payloads]
        result["out_cycles"] = cycles

    # generous: stalls add a few cycles per operation on each side
    start(dut, source, sink, limit=2 * sum(dut.expected_cycles(op) for op in ops) + 1000)
    return result


def reference_beats(ops, pairs):
    quotient, mult, exp = ScalarUnit.reference(ops, [p[0] for p in pairs], [p[1] for p in pairs])
    return [(int(q), int(m), int(e)) for q, m, e in zip(quotient, mult, exp, strict=True)]


# -- the unit --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(ScalarOp), ids=lambda op: op.name)
def test_op_matches_numerics(op):
    rng = np.random.default_rng([2024, op.value])
    count = RANDOM if op in DIVISIONS else 2 * RANDOM  # the scale operations are quick
    pairs = directed(op) + random_pairs(rng, op, count)
    dut = ScalarUnit()
    result = simulate(dut, [op] * len(pairs), pairs)

    quotient, mult, exp = numerics_expected(op, pairs)
    np.testing.assert_array_equal(np.array([o[0] for o in result["out"]], dtype=object),
                                  np.array(quotient, dtype=object))
    np.testing.assert_array_equal([o[1] for o in result["out"]], mult)
    np.testing.assert_array_equal([o[2] for o in result["out"]], exp)
    assert result["out"] == reference_beats([op] * len(pairs), pairs)
    if op not in DIVISIONS:  # normalised scales: the 2**16 carry went into the exponent
        assert all(2**15 <= m < 2**16 for m in mult)

    # Every operation takes expected_cycles; the next one transfers the cycle after.
    measured = np.subtract(result["out_cycles"], result["in_cycles"]) + 1
    np.testing.assert_array_equal(measured, [dut.expected_cycles(op, a, b) for a, b in pairs])
    np.testing.assert_array_equal(result["in_cycles"][1:], np.add(result["out_cycles"][:-1], 1))


def test_cycle_counts():
    dut = ScalarUnit()
    assert {op: dut.expected_cycles(op) for op in ScalarOp} == {
        ScalarOp.FLOOR_DIV: 100, ScalarOp.ROUND_DIV: 100, ScalarOp.RECIPROCAL: 21,
        ScalarOp.RSQRT: 55}
    assert dut.expected_cycles(3) == 55  # an op's value works too


@pytest.mark.parametrize(("idle", "backpressure"), [
    ("light", "heavy"),
    ("bursty", "light"),
    ("heavy", "bursty"),
])
def test_mixed_ops_under_stalls(idle, backpressure):
    rng = np.random.default_rng([len(idle), len(backpressure)])
    ops, pairs = [], []
    for op in ScalarOp:
        chosen = random_pairs(rng, op, 10)
        ops += [op] * len(chosen)
        pairs += chosen
    order = rng.permutation(len(ops))
    ops, pairs = [ops[i] for i in order], [pairs[i] for i in order]
    result = simulate(ScalarUnit(), ops, pairs, stall_pattern(idle, rng),
                      stall_pattern(backpressure, rng))
    assert result["out"] == reference_beats(ops, pairs)


def test_stalled_output_holds():
    dut = ScalarUnit()
    ops = list(ScalarOp)
    pairs = [(-(2**95), 3), (-7, 2), (2**46 + 1, 0), (2**62 + 12345, 0)]
    expected = reference_beats(ops, pairs)
    stall = 9
    seen = []

    async def bench(ctx):
        for op, (a, b) in zip(ops, pairs, strict=True):
            ctx.set(dut.i_stream.payload, {"op": op, "a": a, "b": b})
            ctx.set(dut.i_stream.valid, 1)
            await tick_until(ctx, dut.i_stream.ready)
            # offer the next operation at once: it must wait until the result is taken
            ctx.set(dut.i_stream.payload, {"op": ScalarOp.FLOOR_DIV, "a": 1, "b": 1})
            await tick_until(ctx, dut.o_stream.valid)
            held = []
            for _ in range(stall):
                assert ctx.get(dut.o_stream.valid)
                assert not ctx.get(dut.i_stream.ready)
                payload = ctx.get(dut.o_stream.payload)
                held.append((payload.quotient, payload.mult, payload.exp))
                await ctx.tick()
            assert held == [held[0]] * stall
            ctx.set(dut.i_stream.valid, 0)
            ctx.set(dut.o_stream.ready, 1)
            await ctx.tick()
            ctx.set(dut.o_stream.ready, 0)
            assert not ctx.get(dut.o_stream.valid)
            assert ctx.get(dut.i_stream.ready)
            seen.append(held[0])

    start(dut, bench, limit=1000)
    assert seen == expected


def test_reset_empties():
    dut = ScalarUnit()
    m = Module()
    m.domains.sync = sync = ClockDomain()
    m.submodules.dut = dut
    operation = {"op": ScalarOp.RSQRT, "a": 3, "b": 0}
    expected = reference_beats([ScalarOp.RSQRT], [(3, 0)])[0]

    async def run(ctx, reset_after=None):
        """Start ``operation``; reset ``reset_after`` cycles later, or return the result."""
        ctx.set(dut.i_stream.payload, operation)
        ctx.set(dut.i_stream.valid, 1)
        await tick_until(ctx, dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)
        if reset_after is not None:
            for _ in range(reset_after):
                await ctx.tick()
            ctx.set(sync.rst, 1)
            await ctx.tick()
            ctx.set(sync.rst, 0)
            return None
        await tick_until(ctx, dut.o_stream.valid)
        payload = ctx.get(dut.o_stream.payload)
        return payload.quotient, payload.mult, payload.exp

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        # reset in the divider, in the square root, and with the result waiting
        for reset_after in (5, 40):
            await run(ctx, reset_after)
            for _ in range(ScalarUnit().expected_cycles(ScalarOp.RSQRT) + 5):
                assert ctx.get(dut.i_stream.ready)
                assert not ctx.get(dut.o_stream.valid)
                await ctx.tick()
        ctx.set(dut.o_stream.ready, 0)
        assert await run(ctx) == expected
        ctx.set(sync.rst, 1)
        await ctx.tick()
        ctx.set(sync.rst, 0)
        assert not ctx.get(dut.o_stream.valid)
        assert ctx.get(dut.i_stream.ready)
        # and it works afterwards
        ctx.set(dut.o_stream.ready, 1)
        assert await run(ctx) == expected

    start(m, bench, limit=1000)


# -- the reference ---------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "a", "b", "message"), [
    (ScalarOp.FLOOR_DIV, 2**95, 1, r"^FLOOR_DIV needs a in \[-2\*\*95, 2\*\*95\), not "
                                   r"39614081257132168796771975168$"),
    (ScalarOp.ROUND_DIV, -(2**95) - 1, 1, r"^ROUND_DIV needs a in \[-2\*\*95, 2\*\*95\), not "
                                          r"-39614081257132168796771975169$"),
    (ScalarOp.FLOOR_DIV, 5, 0, r"^FLOOR_DIV needs b in \[1, 2\*\*48\), not 0$"),
    (ScalarOp.ROUND_DIV, 5, 2**48, r"^ROUND_DIV needs b in \[1, 2\*\*48\), not 281474976710656$"),
    (ScalarOp.RECIPROCAL, 0, 0, r"^RECIPROCAL needs a in \[1, 2\*\*47\), not 0$"),
    (ScalarOp.RECIPROCAL, 2**47, 0, r"^RECIPROCAL needs a in \[1, 2\*\*47\), not "
                                    r"140737488355328$"),
    (ScalarOp.RSQRT, -1, 0, r"^RSQRT needs a in \[1, 2\*\*63\), not -1$"),
    (ScalarOp.RSQRT, 2**63, 0, r"^RSQRT needs a in \[1, 2\*\*63\), not 9223372036854775808$"),
])
def test_reference_rejects_out_of_range(op, a, b, message):
    with pytest.raises(ValueError, match=message):
        ScalarUnit.reference(op, a, b)


def test_reference_ignores_b_of_scales():
    # b is not an operand of RECIPROCAL and RSQRT: any value goes, and changes nothing
    quotient, mult, exp = ScalarUnit.reference([ScalarOp.RECIPROCAL, ScalarOp.RSQRT], 12, -5)
    assert list(quotient) == [0, 0]
    np.testing.assert_array_equal(mult, [reciprocal(12)[0], rsqrt(np.array(12))[0]])
    np.testing.assert_array_equal(exp, [reciprocal(12)[1], rsqrt(np.array(12))[1]])


def test_reference_is_numerics():
    rng = np.random.default_rng(7)
    for op in ScalarOp:
        pairs = directed(op) + random_pairs(rng, op, 200)
        quotient, mult, exp = numerics_expected(op, pairs)
        assert reference_beats([op] * len(pairs), pairs) == list(zip(quotient, mult, exp,
                                                                     strict=True))


# -- the building blocks ---------------------------------------------------------------------

@pytest.mark.parametrize(("build", "error", "message"), [
    (lambda: RestoringDivider(0, 4), ValueError, r"^numerator_bits must be at least 1, not 0$"),
    (lambda: RestoringDivider(8, -2), ValueError, r"^divisor_bits must be at least 1, not -2$"),
    (lambda: RestoringDivider("8", 4), TypeError, r"^numerator_bits must be an integer, not '8'$"),
    (lambda: IntegerSqrt(0), ValueError, r"^radicand_bits must be at least 1, not 0$"),
    (lambda: IntegerSqrt(True), TypeError, r"^radicand_bits must be an integer, not True$"),
])
def test_rejects_bad_widths(build, error, message):
    with pytest.raises(error, match=message):
        build()


def run_block(dut, operands, results):
    """Start ``dut`` once per operand dict; returns (results, busy cycles) per start."""
    out = []

    async def bench(ctx):
        for operand in operands:
            for name, value in operand.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            busy = 0
            while ctx.get(dut.busy):
                await ctx.tick()
                busy += 1
            out.append((tuple(ctx.get(getattr(dut, name)) for name in results), busy))

    start(dut, bench, limit=100 * len(operands))
    return out


@pytest.mark.parametrize(("numerator_bits", "divisor_bits"), [(8, 4), (5, 9)])
def test_divider_is_divmod(numerator_bits, divisor_bits):
    rng = np.random.default_rng([numerator_bits, divisor_bits])
    dut = RestoringDivider(numerator_bits, divisor_bits)
    operands = []
    for _ in range(150):
        divisor = int(rng.integers(1, 2**divisor_bits))
        steps = int(rng.integers(0, numerator_bits + 1))
        head = int(rng.integers(0, divisor)) if rng.random() < 0.5 else 0
        numerator = int(rng.integers(0, 2**steps)) << (numerator_bits - steps)
        operands.append({"head": head, "numerator": numerator, "divisor": divisor,
                         "steps": steps})
    out = run_block(dut, operands, ("quotient", "remainder"))
    for operand, (result, busy) in zip(operands, out, strict=True):
        assert result == dut.reference(**operand, numerator_bits=numerator_bits), operand
        assert busy == dut.expected_cycles(operand["steps"])


@pytest.mark.parametrize("radicand_bits", [1, 7, 8])
def test_sqrt_is_isqrt(radicand_bits):
    dut = IntegerSqrt(radicand_bits)
    operands = [{"radicand": v} for v in range(2**radicand_bits)]
    out = run_block(dut, operands, ("root",))
    for operand, (result, busy) in zip(operands, out, strict=True):
        assert result == (math.isqrt(operand["radicand"]),)
        assert busy == dut.expected_cycles() == (radicand_bits + 1) // 2
