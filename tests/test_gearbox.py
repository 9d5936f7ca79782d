"""Lane gearboxes (flightgen.hw.gearbox) under amaranth.sim: parts and joined beats equal the
slicing of the input, with partial last beats and random stalls on every stream."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightgen.hw.gearbox import Narrower, Widener
from flightgen.sim.amaranth_streams import get_beats, put_beats

WIDE, NARROW = 96, 24  # four 24-bit parts per beat


def parts_of(beats, count):
    """The first ``count`` NARROW-bit parts of WIDE-bit beats, low part first."""
    mask = (1 << NARROW) - 1
    return [(beats[i // 4] >> (NARROW * (i % 4))) & mask for i in range(count)]


def run(dut, vectors, inputs, outputs, seed):
    """Per vector: its part count on ``cmd``, its input payloads, the number of outputs."""
    rng = np.random.default_rng(seed)
    got = []

    def stall():
        return rng.random() < 0.3

    async def commands(ctx):
        await put_beats(ctx, dut.cmd, [{"parts": parts} for parts, _, _ in vectors], stall)

    async def source(ctx):
        for _, payloads, _ in vectors:
            await put_beats(ctx, dut.i, payloads, stall)

    async def sink(ctx):
        for _, _, count in vectors:
            payloads, _ = await get_beats(ctx, dut.o, count, stall)
            got.append([int(p) for p in payloads])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(commands, background=True)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_narrower_sends_the_parts_and_drops_the_tail(seed):
    rng = np.random.default_rng(seed)
    vectors = []
    for parts in (1, 4, 5, 7, 8, 13):
        beats = [int(rng.integers(0, 1 << 62)) << 34 | int(rng.integers(0, 1 << 34))
                 for _ in range(-(-parts // 4))]
        vectors.append((parts, beats, parts))
    got = run(Narrower(WIDE, NARROW), vectors, "i", "o", seed)
    assert got == [parts_of(beats, parts) for parts, beats, _ in vectors]


@pytest.mark.parametrize("seed", [1, 2])
def test_widener_joins_parts_and_zero_fills_the_tail(seed):
    rng = np.random.default_rng(seed)
    vectors, expected = [], []
    for parts in (1, 4, 6, 8, 11):
        values = [int(v) for v in rng.integers(0, 1 << NARROW, parts)]
        vectors.append((parts, values, -(-parts // 4)))
        expected.append([sum(v << (NARROW * k) for k, v in enumerate(values[j:j + 4]))
                         for j in range(0, parts, 4)])
    assert run(Widener(NARROW, WIDE), vectors, "i", "o", seed) == expected


def test_gearboxes_check_their_widths():
    with pytest.raises(ValueError, match="^a 40-bit part does not divide a 96-bit beat$"):
        Narrower(96, 40)
    with pytest.raises(ValueError, match="^a 192-bit part does not divide a 96-bit beat$"):
        Widener(192, 96)


#: Two fields per element, as a token quantizer's input: 8 elements of 7 bits, then their 5-bit
#: companions (a 96-bit beat, four parts of two elements of each).
FIELDS = (7, 5)


def pack_fields(columns):
    """A beat of the fields' element lists, each field's elements low first, field after field."""
    value, offset = 0, 0
    for width, elements in zip(FIELDS, columns, strict=True):
        for element in elements:
            value |= element << offset
            offset += width
    return value


def field_beats(rng, parts):
    """Random elements for ``parts`` parts: per wide beat, one list per field."""
    lanes = WIDE // sum(FIELDS)
    return [[[int(v) for v in rng.integers(0, 1 << width, lanes)] for width in FIELDS]
            for _ in range(-(-parts // 4))]


@pytest.mark.parametrize("seed", [1, 2])
def test_gearboxes_cut_and_join_every_field(seed):
    """With ``fields``, part k holds elements 2k, 2k + 1 of each field, laid out as a beat of
    two elements; the widener puts them back in place (zeros past the last part)."""
    rng = np.random.default_rng(seed)
    narrow_vectors, wide_vectors, expected_parts, expected_beats = [], [], [], []
    for parts in (1, 4, 6, 9):
        beats = field_beats(rng, parts)
        wide_vectors.append((parts, [pack_fields(b) for b in beats], parts))
        expected_parts.append([pack_fields([column[2 * (k % 4):2 * (k % 4) + 2]
                                            for column in beats[k // 4]])
                               for k in range(parts)])
        narrow_vectors.append((parts, expected_parts[-1], len(beats)))
        # element i of beat j travels in part 4 j + i // 2: zero unless that part was sent
        kept = [[[e if 4 * j + i // 2 < parts else 0 for i, e in enumerate(column)]
                 for column in beat] for j, beat in enumerate(beats)]
        expected_beats.append([pack_fields(b) for b in kept])
    assert run(Narrower(WIDE, NARROW, FIELDS), wide_vectors, "i", "o", seed) == expected_parts
    assert run(Widener(NARROW, WIDE, FIELDS), narrow_vectors, "i", "o", seed) == expected_beats


def test_gearboxes_check_their_fields():
    with pytest.raises(ValueError, match="^fields of 7\\+6 bits per element do not divide a "
                                         "24-bit part$"):
        Narrower(WIDE, NARROW, (7, 6))


@pytest.mark.parametrize("seed", [1, 2])
def test_widener_takes_the_shared_bits_of_the_last_part(seed):
    """With ``shared``, each part ends in bits that hold for its whole beat (a group scale): the
    beat is the parts' other bits joined, then the shared bits of its last part."""
    rng = np.random.default_rng(seed)
    shared = 6
    vectors, expected = [], []
    for parts in (1, 4, 7):
        values = [int(v) for v in rng.integers(0, 1 << NARROW, parts)]
        tags = [int(t) for t in rng.integers(0, 1 << shared, parts)]
        vectors.append((parts, [v | t << NARROW for v, t in zip(values, tags, strict=True)],
                        -(-parts // 4)))
        expected.append([sum(v << (NARROW * k) for k, v in enumerate(values[j:j + 4]))
                         | tags[min(j + 3, parts - 1)] << WIDE for j in range(0, parts, 4)])
    dut = Widener(NARROW + shared, WIDE + shared, shared=shared)
    assert run(dut, vectors, "i", "o", seed) == expected
