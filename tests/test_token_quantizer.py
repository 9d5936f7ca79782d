"""TokenQuantizer in amaranth.sim: per-vector quantization for attention, bit for bit against
flightgen.isa.numerics.quantize_per_token (PLAIN) and flightgen.isa.attention's fold,
weight_codes and split (FOLD), with stalls, backpressure, garbage lanes and exact cycles."""

from typing import NamedTuple

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from flightgen.hw import token_quantizer as token_quantizer_module
from flightgen.hw.arith import StepShift
from flightgen.hw.token_quantizer import TokenQuantizer, pack_scales
from flightgen.isa.attention import FOLD_BITS, fold, split, weight_codes
from flightgen.isa.numerics import quantize_per_token
from flightgen.sim.amaranth_streams import get_beats, put_beats

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class Vector(NamedTuple):
    values: np.ndarray  # int64, the `length` elements
    mult: np.ndarray  # FOLD: per-element scale multipliers (unsigned 16 bits)
    exp: np.ndarray  # FOLD: per-element scale exponents (signed 8 bits)
    fold: bool


def plain(values):
    values = np.asarray(values, dtype=np.int64)
    zeros = np.zeros(len(values), dtype=np.int64)
    return Vector(values, zeros, zeros, False)


def folded(probs, mult, exp):
    probs = np.asarray(probs, dtype=np.int64)
    return Vector(probs, np.broadcast_to(np.asarray(mult, dtype=np.int64), probs.shape).copy(),
                  np.broadcast_to(np.asarray(exp, dtype=np.int64), probs.shape).copy(), True)


def expected(vector):
    """Codes, low halves and scale of one vector, from the ISA functions only."""
    if vector.fold:
        codes, (mult, exp) = weight_codes(fold(vector.values, (vector.mult, vector.exp)))
        hi, lo = split(codes)
        return hi, lo, (int(mult), int(exp))
    codes, (mult, exp) = quantize_per_token(vector.values)
    return codes.astype(np.int64), np.zeros(len(vector.values), np.int64), (int(mult), int(exp))


# -- stimulus ---------------------------------------------------------------------------------

def random_plain(rng, length):
    """Values up to 2**bits in magnitude, bits in 4..31, sometimes with an int32 extreme."""
    bits = int(rng.integers(4, 32))
    values = rng.integers(-(2**bits), 2**bits, size=length, endpoint=True)
    values = np.clip(values, INT32_MIN, INT32_MAX)
    if rng.random() < 0.2:
        values[rng.integers(length)] = rng.choice([INT32_MIN, INT32_MAX])
    return plain(values)


def softmax_probs(rng, length):
    """Realistic Q0.16 probabilities: a softmax of random logits, in [0, 65536]."""
    logits = rng.normal(0, rng.uniform(0.5, 6), size=length)
    probs = np.exp(logits - logits.max())
    return np.round(probs / probs.sum() * 65536).astype(np.int64)


def random_fold(rng, length):
    """Softmax probabilities times realistic value scales (m in [2**15, 2**16), e in [-40, 10])."""
    return folded(softmax_probs(rng, length), rng.integers(2**15, 2**16, size=length),
                  rng.integers(-40, 10, size=length, endpoint=True))


def plain_edge_cases(lanes):
    cases = [
        plain([0] * (2 * lanes + 1)),  # all zero
        plain([INT32_MIN]), plain([INT32_MAX]), plain([INT32_MIN, INT32_MAX, -1, 1, 0]),
        plain([INT32_MAX, INT32_MAX - 1, -(2**30), 12345]),
        plain([1]), plain([-1]), plain([1, -1, 0]), plain([-(2**20), 2**20 - 1, 5]),  # neg peak
        plain([-16, 15, 8, -8, 3]),
    ]
    for drop in range(1, 9):  # narrowing to 24 bits with exact halves, both parities
        odd = 2 * np.arange(-6, 6) + 1
        ties = odd << (drop - 1)
        peak = 2**(23 + drop)  # bit length 24 + drop, so exactly `drop` bits narrow away
        cases.append(plain(np.concatenate([[peak - 1], ties, [-peak + (1 << (drop - 1))]])))
        cases.append(plain(np.concatenate([[-peak], ties])))  # a negative peak
    for j in (1, 5, 12, 23, 24, 30):  # code ties: peak 2**j, v = +-2**(j - 1) gives +-63.5
        cases.append(plain([2**j, 2**(j - 1), -(2**(j - 1)), -3 * 2**(j - 2) if j > 1 else 0]))
    return cases


def fold_edge_cases(lanes):
    cases = [
        folded([0, 0, 0], [2**15, 0, 65535], [0, -40, 10]),  # all zero
        folded([65536, 100, 5], [0, 0, 0], [0, 0, 0]),  # m = 0: all zero
        folded([65536, 32768, 1], [0, 65535, 2**15], [127, -128, 5]),
        folded([-65536, 30000, -5, 7], 45000, [-20, -20, 3, 3]),  # negative p
        folded([INT32_MAX, INT32_MIN, 1, -1], 65535, [127, 127, 127, -128]),  # saturation
        folded([INT32_MAX, 3, -7], [65535, 65535, 1], [16, 40, 100]),  # saturation at +2**47-1
        folded([INT32_MIN, 2**30], [65535, 65535], [20, 0]),  # saturation at -2**47
        folded([INT32_MIN, INT32_MAX], [65535, 65535], [0, 0]),  # the largest unsaturated
        folded([3, 5, -3, -5, 1, -1], 1, -1),  # the fold's own ties: 1.5, 2.5, -1.5, -2.5, ...
        folded([2**31 - 1, 2**20, 17], [65535, 3, 1], [-47, -48, -128]),  # deep right shifts
        folded([65536], [2**15], [-40]),  # a single smallest weight
    ]
    for drop in (1, 9, 17, 24):  # narrowing ties: w = odd * 2**(drop - 1) next to a peak
        peak_bits = 24 + drop  # the peak 2**(peak_bits - 1) has this bit length
        odd = 2 * np.arange(-4, 4) + 1
        probs = np.concatenate([[2**30], odd])
        exps = np.concatenate([[peak_bits - 31], np.full(len(odd), drop - 1)])
        cases.append(folded(probs, 1, exps))
    for j in (3, 20, 40):  # code ties: peak 2**j, w = +-2**(j - 1) gives +-8191.5
        cases.append(folded([1, 1, -1, 3], 1, [j, j - 1, j - 1, j - 2]))
    return cases


def lengths(lanes):
    return sorted({1, max(lanes - 1, 1), lanes, lanes + 1, 2 * lanes + 3, 37, 101, 255, 300})


# -- the harness ------------------------------------------------------------------------------

def simulate(quantizer, vectors, stall=0.0, seed=0, garbage=True, tail=16):
    """Run ``vectors`` as back-to-back commands; return per-vector ``(codes, lo, (mult, exp))``
    and the transfer cycles of every stream."""
    rng = np.random.default_rng(seed)
    lanes = quantizer.lanes
    in_layout = quantizer.i.payload.shape()
    cmd_layout = quantizer.cmd.payload.shape()

    def stalls(stream_seed):
        stream_rng = np.random.default_rng([seed, stream_seed])
        return (lambda: bool(stream_rng.random() < stall)) if stall else (lambda: False)

    beats, out_beats = [], 0
    for vector in vectors:
        count = quantizer.beats(len(vector.values))
        pad = count * lanes - len(vector.values)
        # lanes past the length hold garbage (or zeros)
        junk_values = rng.integers(INT32_MIN, INT32_MAX, size=pad, endpoint=True)
        junk_scales = rng.integers(0, 2**24, size=pad)
        if not garbage:
            junk_values, junk_scales = junk_values * 0, junk_scales * 0
        values = np.concatenate([vector.values, junk_values]).reshape(count, lanes)
        scales = np.concatenate([pack_scales(vector.mult, vector.exp),
                                 junk_scales]).reshape(count, lanes)
        one_pass = [in_layout.const({"value": [int(v) for v in value_row],
                                     "scale": [int(s) for s in scale_row]})
                    for value_row, scale_row in zip(values, scales, strict=True)]
        beats += one_pass + one_pass  # the vector arrives twice
        out_beats += count
    got = {}

    async def commands(ctx):
        got["cmd"] = await put_beats(ctx, quantizer.cmd, [
            cmd_layout.const({"length": len(v.values), "fold": int(v.fold)}) for v in vectors],
            stalls(1))

    async def source(ctx):
        got["i"] = await put_beats(ctx, quantizer.i, beats, stalls(2))

    def sink(name, count, stream_seed):
        async def bench(ctx):
            port = getattr(quantizer, name)
            got[name] = await get_beats(ctx, port, count, stalls(stream_seed))
            ctx.set(port.ready, 1)  # nothing more may appear
            for _ in range(tail):
                _, _, valid = await ctx.tick().sample(port.valid)
                assert not valid, f"an extra transfer on {name}"
        return bench

    sim = Simulator(quantizer)
    sim.add_clock(1e-8)
    sim.add_testbench(commands, background=True)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink("o", out_beats, 3))
    sim.add_testbench(sink("scale", len(vectors), 4))
    sim.run()

    results, position = [], 0
    out_payloads, out_cycles = got["o"]
    scale_payloads, scale_cycles = got["scale"]
    last_out = []
    for vector, scale in zip(vectors, scale_payloads, strict=True):
        length = len(vector.values)
        count = quantizer.beats(length)
        payloads = out_payloads[position:position + count]
        codes = np.array([int(c) for p in payloads for c in p.codes], dtype=np.int64)
        lo = np.array([int(c) for p in payloads for c in p.lo], dtype=np.int64)
        # lanes past the length are 0
        np.testing.assert_array_equal(codes[length:], 0)
        np.testing.assert_array_equal(lo[length:], 0)
        results.append((codes[:length], lo[:length], (int(scale.mult), int(scale.exp))))
        last_out.append(out_cycles[position + count - 1] if count else None)
        position += count
    cycles = {"cmd": got["cmd"], "i": got["i"], "o": out_cycles, "scale": scale_cycles,
              "last_o": last_out}
    return results, cycles


def check(quantizer, vectors, **kwargs):
    results, cycles = simulate(quantizer, vectors, **kwargs)
    for index, (vector, (codes, lo, scale)) in enumerate(zip(vectors, results, strict=True)):
        want_codes, want_lo, want_scale = expected(vector)
        context = f"vector {index} (length {len(vector.values)}, fold {vector.fold})"
        np.testing.assert_array_equal(codes, want_codes, err_msg=context)
        np.testing.assert_array_equal(lo, want_lo, err_msg=context)
        assert scale == want_scale, context
    for index, last in enumerate(cycles["last_o"]):  # the scale follows the vector's codes
        if last is not None:
            assert cycles["scale"][index] > last
        if index + 1 < len(vectors):
            assert cycles["cmd"][index + 1] > cycles["scale"][index]
    return cycles


# -- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [4, 8])
def test_plain_equals_quantize_per_token_under_stalls(lanes):
    rng = np.random.default_rng(100 + lanes)
    vectors = plain_edge_cases(lanes)
    vectors += [random_plain(rng, length) for length in lengths(lanes)]
    vectors += [random_plain(rng, int(rng.integers(1, 80))) for _ in range(12)]
    check(TokenQuantizer(lanes), vectors, stall=0.3, seed=lanes)


@pytest.mark.parametrize("lanes", [4, 8])
def test_fold_equals_fold_weight_codes_split_under_stalls(lanes):
    rng = np.random.default_rng(200 + lanes)
    vectors = fold_edge_cases(lanes)
    vectors += [random_fold(rng, length) for length in lengths(lanes)]
    # adversarial random: any p, m and e
    for length in (1, lanes + 1, 50):
        vectors.append(folded(rng.integers(INT32_MIN, INT32_MAX, size=length, endpoint=True),
                              rng.integers(0, 2**16, size=length),
                              rng.integers(-128, 127, size=length, endpoint=True)))
    check(TokenQuantizer(lanes), vectors, stall=0.3, seed=10 + lanes)


@pytest.mark.parametrize(("lanes", "stall"), [(4, 0.6), (8, 0.5), (1, 0.3), (2, 0.4)])
def test_back_to_back_alternating_with_heavy_stalls(lanes, stall):
    rng = np.random.default_rng(300 + lanes)
    vectors = []
    for index in range(10):
        length = int(rng.choice([1, lanes, lanes + 1, 23, 64]))
        vectors.append(random_fold(rng, length) if index % 2 else random_plain(rng, length))
    check(TokenQuantizer(lanes), vectors, stall=stall, seed=lanes)


@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_cycles_equal_expected(lanes):
    quantizer = TokenQuantizer(lanes)
    rng = np.random.default_rng(400)
    vectors = [random_plain(rng, length) if index % 2 else random_fold(rng, length)
               for index, length in enumerate((1, lanes, lanes + 1, 37, 100))]
    cycles = check(quantizer, vectors)
    in_position = out_position = 0
    for index, vector in enumerate(vectors):
        length, beats = len(vector.values), quantizer.beats(len(vector.values))
        start, end = cycles["cmd"][index], cycles["scale"][index]
        assert end - start + 1 == quantizer.expected_cycles(length)
        assert end - start + 1 == 2 * beats + 35
        if index + 1 < len(vectors):  # back to back: the next command in the next cycle
            assert cycles["cmd"][index + 1] == end + 1
        ins = cycles["i"][in_position:in_position + 2 * beats]
        outs = cycles["o"][out_position:out_position + beats]
        assert ins[:beats] == list(range(start + 1, start + 1 + beats))  # one beat per cycle
        assert ins[beats] - ins[beats - 1] == quantizer.PEAK_LATENCY + quantizer.SCALAR_CYCLES
        assert outs == [cycle + quantizer.LATENCY for cycle in ins[beats:]]
        in_position, out_position = in_position + 2 * beats, out_position + beats


def test_zero_length_is_a_no_op():
    quantizer = TokenQuantizer(4)
    empty = plain(np.zeros(0, dtype=np.int64))
    vectors = [empty, plain([5, -7, 9]), empty]
    results, cycles = simulate(quantizer, vectors)
    assert results[0][2] == (0, 0) and results[2][2] == (0, 0)
    assert len(cycles["o"]) == 1
    assert cycles["scale"][0] - cycles["cmd"][0] + 1 == quantizer.expected_cycles(0)


def test_reference_uses_the_isa_functions():
    quantizer = TokenQuantizer(4)
    rng = np.random.default_rng(5)
    for vector in [random_plain(rng, 33), random_fold(rng, 33), *fold_edge_cases(4)[:6]]:
        got = quantizer.reference(vector.values, pack_scales(vector.mult, vector.exp),
                                  vector.fold)
        want = expected(vector)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert (int(got[2][0]), int(got[2][1])) == want[2]
        pair = quantizer.reference(vector.values, (vector.mult, vector.exp), vector.fold)
        np.testing.assert_array_equal(pair[0], want[0])


def test_scale_exponent_fits_signed_8_bits():
    # The widest inputs: PLAIN peaks of every bit length up to 2**31, FOLD weights (saturated
    # to FOLD_BITS bits) up to 2**47; the exponent stays in [-29, 18], as documented.
    exps = []
    for bits, limit in ((8, 2**31), (15, 2**(FOLD_BITS - 1))):
        for length in range(limit.bit_length()):
            for peak in {1 << length, (2 << length) - 1, 3 << length >> 1}:
                if peak <= limit:
                    exps.append(int(quantize_per_token(np.array([peak, 1]), bits=bits)[1][1]))
    assert (min(exps), max(exps)) == (-29, 18)


def test_parameters_are_validated():
    for lanes in (0, 3, 128, 4.0):
        with pytest.raises(ValueError,
                           match=f"^lanes must be a power of two from 1 to 64, not {lanes!r}$"):
            TokenQuantizer(lanes)


# -- mutants: the tests above would notice a broken rounding or saturation --------------------

def _round_half_up(shifted, sticky):
    return shifted[1:].as_signed() + shifted[0]


class _WrappingStepShift(StepShift):
    def round(self, value, steps, bits):
        # saturates 16 bits too wide, then wraps to bits
        return super().round(value, steps, bits + 16)[:bits].as_signed()


def run_case(vectors):
    check(TokenQuantizer(4), vectors, stall=0.2)


TIES = [plain([2**12, -(2**11), 2**11]), folded([1, -1], 1, [20, 19])]
SATURATING = [folded([INT32_MAX, -5], [65535, 3], [10, 0])]


@pytest.mark.parametrize(("name", "mutant", "vectors"), [
    ("round_half_even", _round_half_up, TIES),
    ("StepShift", _WrappingStepShift, SATURATING),
])
def test_mutants_are_caught(monkeypatch, name, mutant, vectors):
    run_case(vectors)  # the real design passes
    monkeypatch.setattr(token_quantizer_module, name, mutant)
    with pytest.raises(AssertionError):
        run_case(vectors)


def test_verilog_conversion():
    text = verilog.convert(TokenQuantizer(4), name="token_quantizer")
    assert "module token_quantizer" in text
