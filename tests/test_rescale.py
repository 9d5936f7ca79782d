"""Attention rescaler in amaranth.sim (the fast tier): bit-exactness against
:mod:`flightgen.isa.attention` for realistic and adversarial inputs, stalls, back-to-back
commands, cycle counts, mutants, Verilog conversion."""

import re

import numpy as np
import pytest
from amaranth import Const
from amaranth.back import verilog
from amaranth.sim import Simulator

from flightgen.hw import rescale
from flightgen.hw.arith import StepShift
from flightgen.hw.rescale import AttentionRescaler, RescaleMode, scale_word
from flightgen.isa.attention import fold, split, weight_codes
from flightgen.isa.numerics import quantize_per_token, rsqrt, scale_mul
from flightgen.isa.special import softmax
from flightgen.sim.amaranth_streams import get_beats, put_beats

SCORES, OUTPUT = RescaleMode.SCORES.value, RescaleMode.OUTPUT.value
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Probabilities of an idle source cycle and of a stalled sink cycle.
STALLS = {"none": (0.0, 0.0), "light": (0.25, 0.25), "heavy": (0.6, 0.6)}


class Command:
    """One command: its fields, its elements, and its expected results (from the isa)."""

    def __init__(self, dut, rng, mode, x, y, a, c=(0, 0)):
        self.mode, self.a, self.c = mode, (int(a[0]), int(a[1])), (int(c[0]), int(c[1]))
        self.x, self.y = np.asarray(x, np.int64), np.asarray(y, np.int64)
        self.length = len(self.x)
        self.beats = -(-self.length // dut.lanes)
        self.expected = np.zeros(self.beats * dut.lanes, np.int64)
        self.expected[:self.length] = dut.reference(mode, self.x, self.y, self.a, self.c)
        # lanes past the length hold garbage
        padded = [rng.integers(INT32_MIN, INT32_MAX, self.beats * dut.lanes, endpoint=True)
                  for _ in range(2)]
        padded[0][:self.length], padded[1][:self.length] = self.x, self.y
        self.x_beats, self.y_beats = (p.reshape(self.beats, dut.lanes) for p in padded)

    def payload(self):
        return {"mode": self.mode, "length": self.length, "a_mult": self.a[0],
                "a_exp": self.a[1], "c_mult": self.c[0], "c_exp": self.c[1]}


def simulate(dut, commands, stalls="none", seed=0):
    """Run the commands through ``dut``; return the output elements (beats flattened) and the
    cycles of every cmd, i and o transfer."""
    rng = np.random.default_rng(seed)
    idle_p, stall_p = STALLS[stalls]
    idle = lambda: bool(rng.random() < idle_p)  # noqa: E731
    stall = lambda: bool(rng.random() < stall_p)  # noqa: E731
    beats = [{"x": [int(v) for v in xs], "y": [int(v) for v in ys]}
             for command in commands for xs, ys in zip(command.x_beats, command.y_beats,
                                                       strict=True)]
    result = {}

    async def commander(ctx):
        result["cmd"] = await put_beats(ctx, dut.cmd, [c.payload() for c in commands], idle)

    async def source(ctx):
        result["i"] = await put_beats(ctx, dut.i, beats, idle)

    async def sink(ctx):
        payloads, result["o"] = await get_beats(ctx, dut.o, len(beats), stall)
        result["out"] = np.array([[p[lane] for lane in range(dut.lanes)] for p in payloads],
                                 dtype=np.int64).ravel()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(commander, background=True)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return result


def check(dut, commands, stalls="none", seed=0):
    result = simulate(dut, commands, stalls, seed)
    expected = np.concatenate([c.expected for c in commands] + [np.zeros(0, np.int64)])
    np.testing.assert_array_equal(result["out"], expected)
    return result


# -- stimulus ------------------------------------------------------------------------------

def realistic_scores(dut, rng, tokens, head_dim=64):
    """q . k dot products of per-token-quantized random FX vectors (|acc| < 2**20)."""
    q_codes, q_scale = quantize_per_token(rng.normal(0, 3 * 2**16, head_dim).astype(np.int64))
    k_fx = rng.normal(0, 2**16, (tokens, head_dim)) * rng.uniform(0.01, 8, (tokens, 1))
    k_codes, (k_mult, k_exp) = quantize_per_token(k_fx.astype(np.int64))
    acc = k_codes.astype(np.int64) @ q_codes.astype(np.int64)
    attn = rsqrt(head_dim)
    assert np.abs(acc).max() < 2**20
    assert -128 <= min(k_exp.min(), q_scale[1], attn[1]) <= max(k_exp.max(), q_scale[1]) < 128
    return Command(dut, rng, SCORES, acc, scale_word(k_mult, k_exp), q_scale, attn)


#: Multipliers worth a test: zero, tiny and unnormalised ones, the edges of normalised ones.
SPECIAL_MULTS = [0, 1, 2, 3, 255, 12345, 32767, 32768, 32769, 49151, 65535]


def pick_mults(rng, n):
    kind = rng.integers(0, 3, n)
    return np.choose(kind, [rng.choice(SPECIAL_MULTS, n), rng.integers(0, 2**16, n),
                            rng.integers(2**15, 2**16, n)])


def pick_values(rng, n, bits=32):
    """int32 values: extremes, tiny ones, full-range ones and ones of random magnitude."""
    edges = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX])
    magnitude = rng.integers(0, bits, n)
    kind = rng.integers(0, 4, n)
    return np.choose(kind, [rng.choice(edges, n), rng.integers(-8, 9, n),
                            rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True),
                            rng.integers(-(2**magnitude), 2**magnitude)])


def adversarial_scores(dut, rng, length, a, c):
    """Any acc, any k scale; half the k exponents balance a and c, so that the final shift
    lands where results are neither 0 nor saturated, the others lie anywhere in [-128, 127]."""
    acc = pick_values(rng, length)
    k_mult = pick_mults(rng, length)
    balanced = np.clip(-a[1] - c[1] - 30 + rng.integers(-24, 25, length), -128, 127)
    k_exp = np.where(rng.random(length) < 0.5, balanced, rng.integers(-128, 128, length))
    if length >= 4:
        k_exp[:4] = [-128, 127, -128, 127]
    garbage = rng.integers(0, 2**8, length) << 24  # the upper bits of a scale word are ignored
    word = (scale_word(k_mult, k_exp) | garbage).astype(np.uint32).astype(np.int32)
    return Command(dut, rng, SCORES, acc, word, a, c)


def scores_ties(dut, rng, length):
    """Exact halves in the final rounding (acc / 2, acc odd) and in the first normalisation
    (3 * k_mult odd, 17 bits, so the dropped bit is exactly one half)."""
    final = Command(dut, rng, SCORES, rng.integers(-2**20, 2**20, length) | 1,
                    scale_word(np.full(length, 2**15), -10), (2**15, -10), (2**15, -10))
    k_mult = rng.integers(21846, 43691, length) | 1
    first = Command(dut, rng, SCORES, rng.integers(-2**30, 2**30, length),
                    scale_word(k_mult, -6), (3, -6), (2**15, -6))
    return [final, first]


def realistic_output(dut, rng, tokens=96, head_dim=64):
    """hi and lo dot products of split 15-bit weight codes (softmax probabilities folded with
    the value scales) with INT8 value codes, and the weights' scale."""
    probs = softmax(rng.normal(0, 2 * 2**16, tokens).astype(np.int64))
    v_codes, v_scale = quantize_per_token(
        (rng.normal(0, 2**16, (tokens, head_dim)) * rng.uniform(0.05, 4, (tokens, 1)))
        .astype(np.int64))
    codes, w_scale = weight_codes(fold(probs, v_scale))
    hi, lo = split(codes)
    assert -128 <= w_scale[1] < 128
    v_codes = v_codes.astype(np.int64)
    return Command(dut, rng, OUTPUT, hi @ v_codes, lo @ v_codes, w_scale)


def extreme_output(dut, rng, length, a):
    return Command(dut, rng, OUTPUT, pick_values(rng, length), pick_values(rng, length), a)


#: OUTPUT scales: ties (shift 1 and 2), left shifts to exactly -2**31 and just past, the full
#: exponent range, zero and unnormalised multipliers.
OUTPUT_SCALES = [(1, 15), (3, 14), (1, 47), (1, 48), (2, 46), (65535, 127), (65535, -128),
                 (0, 5), (1, -128), (32768, -30), (40000, -20), (7, 0), (12345, 25), (255, 60)]


def directed_output(dut, rng):
    """Small values with left-shifting scales, int32 extremes and exact halves."""
    small = np.array([-3, -2, -1, 0, 1, 2, 3, 5, -5, 7])
    values = np.concatenate([small, [INT32_MIN, INT32_MAX, INT32_MIN + 1, INT32_MAX - 1]])
    hi = np.concatenate([np.zeros(len(values), np.int64), values, values])
    lo = np.concatenate([values, np.zeros(len(values), np.int64), values[::-1]])
    return [Command(dut, rng, OUTPUT, hi, lo, a) for a in OUTPUT_SCALES]


# -- tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [0, 3, 6, 65, 128, -4, "4", True, 4.0])
def test_rejects_bad_lanes(lanes):
    message = f"lanes must be a power of two from 1 to 64, not {lanes!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        AttentionRescaler(lanes)


def test_reference_checks_shapes():
    with pytest.raises(ValueError, match=r"^x and y must be vectors of one length, not "
                                         r"\(3,\) and \(2,\)$"):
        AttentionRescaler(4).reference(SCORES, [1, 2, 3], [1, 2], (1, 0), (1, 0))


@pytest.mark.parametrize(("lanes", "stalls"), [(4, "light"), (8, "heavy")])
def test_scores_realistic(lanes, stalls):
    dut = AttentionRescaler(lanes)
    rng = np.random.default_rng([1, lanes])
    commands = [realistic_scores(dut, rng, tokens, head_dim)
                for tokens, head_dim in [(200, 64), (37, 128), (lanes, 64), (1, 32)]]
    check(dut, commands, stalls, seed=lanes)


def adversarial_scores_commands(dut, rng):
    scales = [(32768, -20), (65535, 127), (65535, -128), (0, 0), (1, -128), (3, 50),
              (12345, -7), (32769, 0)]
    commands = []
    for a in scales:
        for c in [(32768, -20), (46341, -19), (3, 50)]:
            commands.append(adversarial_scores(dut, rng, 24, a, c))
    for _ in range(8):
        a = (int(pick_mults(rng, 1)[0]), int(rng.integers(-128, 128)))
        c = (int(pick_mults(rng, 1)[0]), int(rng.integers(-128, 128)))
        commands.append(adversarial_scores(dut, rng, 61, a, c))
    # every scale at a corner of its range: final shifts from about -400 to +415
    corners = [(1, -128), (65535, 127), (65535, -128), (1, 127)]
    k = np.array(corners * 4).T
    for a in corners:
        acc = rng.choice([INT32_MIN, INT32_MAX, -1, 1, 12345], len(k[0]))
        commands.append(Command(dut, rng, SCORES, acc, scale_word(*k), a, a))
    return commands + scores_ties(dut, rng, 64)


@pytest.mark.parametrize(("lanes", "stalls"), [(4, "heavy"), (8, "light")])
def test_scores_adversarial(lanes, stalls):
    dut = AttentionRescaler(lanes)
    rng = np.random.default_rng([2, lanes])
    commands = adversarial_scores_commands(dut, rng)
    outputs = np.concatenate([c.expected for c in commands])
    # the stimulus reaches both saturations, zeros, results in between, and final shifts
    # far beyond both ends of the datapath (2**-57 rounds everything to 0, 2**32 saturates)
    assert (outputs == INT32_MAX).any() and (outputs == INT32_MIN).any()
    assert ((outputs != 0) & (np.abs(outputs) < 2**30)).sum() > len(outputs) // 5
    shifts = np.concatenate([final_shifts(c) for c in commands])
    assert shifts.min() < -390 and shifts.max() > 410
    assert ((shifts > 0) & (shifts < 57)).sum() > len(shifts) // 3
    check(dut, commands, stalls, seed=lanes)


def final_shifts(command):
    """The right shift ``16 - exp`` of a SCORES command's final rounding, nonzero scales."""
    k_exp = (command.y >> 16) & 0xFF
    mult, exp = scale_mul(scale_mul(command.a, (command.y & 0xFFFF, k_exp - 2 * (k_exp & 0x80))),
                          command.c)
    return (16 - exp)[mult != 0]


@pytest.mark.parametrize(("lanes", "stalls"), [(4, "light"), (8, "heavy")])
def test_output(lanes, stalls):
    dut = AttentionRescaler(lanes)
    rng = np.random.default_rng([3, lanes])
    commands = [realistic_output(dut, rng), realistic_output(dut, rng, 500, 128)]
    commands += directed_output(dut, rng)
    commands += [extreme_output(dut, rng, 29, a) for a in OUTPUT_SCALES]
    commands += [extreme_output(dut, rng, 17, (int(pick_mults(rng, 1)[0]),
                                               int(rng.integers(-128, 128))))
                 for _ in range(8)]
    outputs = np.concatenate([c.expected for c in commands])
    assert (outputs == INT32_MAX).any() and (outputs == INT32_MIN).any()
    assert ((outputs != 0) & (np.abs(outputs) < 2**30)).sum() > len(outputs) // 4
    check(dut, commands, stalls, seed=lanes)


@pytest.mark.parametrize(("lanes", "stalls"), [(4, "heavy"), (8, "light"), (8, "none")])
def test_back_to_back_alternating(lanes, stalls):
    dut = AttentionRescaler(lanes)
    rng = np.random.default_rng([4, lanes])
    lengths = [1, lanes - 1, lanes, 2 * lanes + 1, 0, 13, 301, lanes + 1, 1, 0, 2]
    commands = []
    for index, length in enumerate(lengths):
        if index % 2:
            a = (int(pick_mults(rng, 1)[0]), int(rng.integers(-40, 10)))
            commands.append(extreme_output(dut, rng, length, a))
        else:
            commands.append(adversarial_scores(dut, rng, length, (40000, -10), (46341, -20)))
    check(dut, commands, stalls, seed=lanes)


@pytest.mark.parametrize("length", [1, 3, 4, 5, 130])
def test_cycles_match_expected(length):
    dut = AttentionRescaler(4)
    rng = np.random.default_rng(length)
    result = check(dut, [adversarial_scores(dut, rng, length, (32768, -20), (32768, -20))])
    assert result["i"][0] == result["cmd"][0] + 1  # the first beat follows its command
    assert result["o"][-1] - result["i"][0] + 1 == dut.expected_cycles(length)
    assert [o - i for i, o in zip(result["i"], result["o"], strict=True)] == \
        [dut.LATENCY] * len(result["i"])


def test_back_to_back_commands_leave_no_gap():
    dut = AttentionRescaler(4)
    rng = np.random.default_rng(5)
    lengths = [1, 7, 4, 1, 1, 9, 30]
    commands = [extreme_output(dut, rng, n, (32768, -10)) if k % 2 else
                adversarial_scores(dut, rng, n, (32768, -20), (32768, -20))
                for k, n in enumerate(lengths)]
    result = check(dut, commands)
    beats = sum(c.beats for c in commands)
    assert result["i"] == list(range(result["i"][0], result["i"][0] + beats))
    assert result["o"][-1] - result["i"][0] + 1 == beats + dut.LATENCY
    assert dut.expected_cycles(0) == 0


class _OffByOneStepShift(StepShift):
    """The final rounding of ``p + 1`` instead of ``p``: a right shift rounds it differently
    only at a tie whose quotient is even (up instead of to even) and one unit below a tie
    whose quotient is odd; a left shift is off wherever it does not saturate."""

    def round(self, value, steps, bits):
        return super().round(value + 1, steps, bits)


class _CoarseStepShift(StepShift):
    """The final shift without its fine part: ``8 q`` instead of ``8 q - f``."""

    def __init__(self, shift, **options):
        super().__init__(shift, **options)
        self.fine = Const(0, len(self.fine))


@pytest.mark.parametrize("mutant", [
    ("StepShift", _OffByOneStepShift),  # the final rounding
    ("StepShift", _CoarseStepShift),  # the final shift
    ("_round_up", lambda top, guard, sticky: guard),  # the scale normalisation
    ("_round_up", lambda top, guard, sticky: guard & sticky),  # ties always down
])
def test_mutants_are_caught(monkeypatch, mutant):
    name, replacement = mutant
    monkeypatch.setattr(rescale, name, replacement)
    dut = AttentionRescaler(4)
    rng = np.random.default_rng(6)
    commands = adversarial_scores_commands(dut, rng)[-12:] + directed_output(dut, rng)[:2]
    with pytest.raises(AssertionError):
        check(dut, commands)


def test_unmutated_directed_set_passes():
    """The mutant test's stimulus passes on the real design (so the mutants fail for their
    rounding, not for the stimulus)."""
    dut = AttentionRescaler(4)
    rng = np.random.default_rng(6)
    check(dut, adversarial_scores_commands(dut, rng)[-12:] + directed_output(dut, rng)[:2])


def test_converts_to_verilog():
    text = verilog.convert(AttentionRescaler(1), name="attention_rescaler")
    assert "module attention_rescaler" in text
