"""The core's Verilog under Verilator, driven through AXI4-Lite as a host does, with HBM and
program memories answering under random latency and backpressure on every AXI channel,
against the ISA simulator: error codes and pcs, each unit's retired instructions in order,
every HBM byte. Also the decode read bandwidth, the always-on-chip property (AXI traffic of
chained decode FFN layers) and random instruction words. Every test runs on the C++ harness
by default and on the cocotb bench (flightgen.sim.benches.core) in the slow tier
(tests/rtl.py), so the default run builds no cocotb model of the whole core; the harness's
own fuzz (tests/test_harness.py) stands in for the cocotb one here."""

import os

import numpy as np
import pytest
from configs import STRIPED
from rtl import BENCHES, run_checked

from flightgen.isa.assembly import assemble
from flightgen.isa.machine import SIM_CORE, CoreConfig, ErrorCode
from flightgen.sim.programs import decoder_layer, ffn_block, ffn_chain
from flightgen.sim.stimulus import random_programs
from flightgen.sim.system import core_model, run_core, simulate

pytestmark = pytest.mark.verilator

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))
#: AXI conditions: (ready stall probability, read latency range).
CONDITIONS = {"fast": (0.0, (1, 1)), "stalled": (0.3, (1, 40))}


def _check(bench, words, hbm, registers=(0,) * 7, condition="stalled", name="core"):
    stall, latency = CONDITIONS[condition]
    return run_checked(bench, SIM_CORE, words, hbm, registers, stall=stall, latency=latency,
                       seed=SEED, name=name)


LOAD_STORE = """
    load  buffer=vec line=3 port=1 addr=0x200 length=2 count2=3 stride2=0x400 release=store
    store buffer=vec line=3 port=0 addr=0x1005 length=150 wait=load release=sys
    load  buffer=wgt line=0 port=0 addr=0x40+r1*32 length=1+r1 count3=2 stride3=0x1000 \
release=store
    store buffer=wgt line=0 port=1 addr=0x3003 length=7 count2=9 stride2=0x21 count3=2 \
stride3=0x777 wait=load
    load  buffer=meta line=9 port=1 addr=0xfe0 length=3 release=store
    store buffer=meta line=9 port=0 addr=0x2ff1 length=80 wait=load
    sync  wait=store
    halt
""".replace("\\\n", "")


@pytest.mark.parametrize("bench", BENCHES)
@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_load_store_patterns(bench, condition):
    rng = np.random.default_rng(SEED)
    hbm = [rng.integers(0, 256, 1 << 14, dtype=np.uint8) for _ in range(SIM_CORE.hbm_ports)]
    _check(bench, assemble(LOAD_STORE), hbm, (3, 0, 0, 0, 0, 0, 0), condition)


@pytest.mark.parametrize("bits, pattern", [(4, None), (8, (8, 16)), (4, (2, 4)), (2, (4, 16))])
@pytest.mark.parametrize("bench", BENCHES)
def test_ffn_block(bench, bits, pattern):
    """The decode FFN (RMSNorm, gate/up, SiLU, product, down, residual), weights streamed
    double-buffered from HBM, under stalls."""
    rng = np.random.default_rng(SEED + bits)
    builder, _ = ffn_block(SIM_CORE, rng, 128, 256, bits=bits, pattern=pattern,
                           hbm_bytes=1 << 18)
    run = _check(bench, builder.words(), builder.hbm, name=f"ffn-{bits}")
    assert run.error == ErrorCode.NONE


@pytest.mark.parametrize("bench", BENCHES)
@pytest.mark.parametrize("position", [0, 21])
def test_decoder_layer(bench, position):
    """A full LLaMA-style decoder layer, one decode step: RMSNorm, q/k/v projections, RoPE,
    the token's key and value quantized into the INT8 KV cache, grouped-query attention over
    the cache (raw scores, rescale, softmax, folded value scales, two-pass P @ V), output
    projection, residual, and the FFN; under random AXI latency and backpressure, equal to
    the ISA simulator in every HBM byte (the cache included) and every retired instruction.
    (tests/test_programs.py checks the ISA simulator's layer against numpy.)"""
    rng = np.random.default_rng(SEED + position)
    builder = decoder_layer(SIM_CORE, rng, dim=64, heads=4, kv_heads=2, head_dim=16,
                            hidden=128, capacity=64, position=position, hbm_bytes=1 << 18)
    run = _check(bench, builder.words(), builder.hbm, builder.registers, name="layer")
    assert run.error == ErrorCode.NONE
    print(f"decoder layer at position {position}: {len(builder.text)} instructions, "
          f"{run.cycles} cycles")


@pytest.mark.parametrize("bench", BENCHES)
def test_decode_read_bandwidth(bench):
    """An MV-dominated decode FFN (INT8 weights, so the matrix engine takes one line per
    cycle, as fast as the port delivers): the weight port's R channel is busy >= 90% of the
    cycles from the first read address to the last beat. Memory latency 40 cycles, no
    stalls: the port peak is one line per cycle."""
    rng = np.random.default_rng(SEED)
    builder, _ = ffn_block(SIM_CORE, rng, 256, 256, bits=8, hbm_bytes=1 << 19)
    run = run_checked(bench, SIM_CORE, builder.words(), builder.hbm, latency=(40, 40),
                      name="bandwidth")
    utilisation = run.read_bandwidth(0)
    beats, first, last = run.reads[0]
    print(f"decode FFN: {beats} lines read in {last - first + 1} cycles: "
          f"{100 * utilisation:.1f}% of the port peak ({run.cycles} cycles in all)")
    assert utilisation >= 0.90


@pytest.mark.parametrize("bench", BENCHES)
def test_activations_stay_on_chip(bench):
    """Two chained decode FFN layers: the only HBM reads are the weights, the norm weights and
    the first input; the only write is the final output. Activations never cross AXI."""
    rng = np.random.default_rng(SEED)
    builder = ffn_chain(SIM_CORE, rng, 128, 256, layers=2, hbm_bytes=1 << 18)
    run = run_checked(bench, SIM_CORE, builder.words(), builder.hbm, stall=0.2,
                      latency=(1, 20), seed=SEED, name="on-chip")
    line = SIM_CORE.line_bytes
    read = sum(beats for beats, _, _ in run.reads) * line
    expected_read = builder.weight_bytes + builder.parameter_bytes + builder.input_bytes
    print(f"read {read} bytes: weights {builder.weight_bytes}, norm weights "
          f"{builder.parameter_bytes}, input {builder.input_bytes}")
    assert read == expected_read
    assert sum(run.written) == builder.output_bytes


@pytest.mark.parametrize("bench", BENCHES)
def test_decode_layer_traffic_is_weights_and_kv_cache(bench):
    """A decoder layer's AXI traffic, counted on the RTL: port 0 reads exactly the weights,
    the norm weights and RoPE phases and the input, and writes only the output; port 1 (the KV
    cache) reads exactly the cache of the L visible tokens (keys, transposed values and their
    scale words, once per query head) and writes exactly the new token's key and value codes
    and scale words. No activation crosses AXI."""
    position = 40
    rng = np.random.default_rng(SEED)
    b = decoder_layer(SIM_CORE, rng, dim=64, heads=4, kv_heads=2, head_dim=16, hidden=128,
                      capacity=64, position=position, hbm_bytes=1 << 18)
    run = run_checked(bench, SIM_CORE, b.words(), b.hbm, b.registers, stall=0.2,
                      latency=(1, 20), seed=SEED, name="traffic")
    line, layout, g = SIM_CORE.line_bytes, b.layout, SIM_CORE.geometry
    seen = position + 1
    groups = -(-seen // g.lanes)  # key row groups, and lines of scale words
    per_head = (groups * layout.key_group + 2 * groups * line
                + b.head_dim // g.lanes * -(-seen // 32) * 32 // g.chain * layout.beat)
    read = [beats * line for beats, _, _ in run.reads]
    print(f"port 0 read {read[0]} bytes, port 1 (KV) read {read[1]}, written "
          f"{run.written}")
    assert read[0] == b.weight_bytes + b.parameter_bytes + b.input_bytes
    assert read[1] == 4 * per_head
    assert run.written[0] == b.output_bytes
    padded = -(-b.head_dim // 32) * 32
    assert run.written[1] == 2 * (padded + b.head_dim + 2 * 4)


@pytest.mark.slow
def test_random_words_stop_the_core_with_the_isa_error():
    """Fuzz on the cocotb bench: random programs; after each, the core reports done with the
    error code and pc the ISA simulator gives (never a hang: the bench times out otherwise).
    Matrix commands are dense, so that no error depends on data left in the buffers by
    earlier runs. (The default run fuzzes the harness: tests/test_harness.py.)"""
    model = core_model(SIM_CORE)
    rng = np.random.default_rng(SEED)
    programs = random_programs(rng, 150)
    registers = [tuple(int(v) for v in rng.integers(0, 4, 7)) for _ in programs]
    hbm = [rng.integers(0, 256, 1 << 13, dtype=np.uint8) for _ in range(SIM_CORE.hbm_ports)]
    runs, _ = run_core(model, SIM_CORE, programs, hbm, registers, stall=0.2, latency=(1, 8),
                       timeout=400_000, name="fuzz")
    seen = {}
    for index, (words, regs, run) in enumerate(zip(programs, registers, runs, strict=True)):
        machine, expected = simulate(SIM_CORE, words, hbm, regs)
        seen[expected.error] = seen.get(expected.error, 0) + 1
        assert (run.error, run.error_pc) == (expected.error, expected.error_pc), (
            f"program {index}: RTL {run.error.name} at {run.error_pc}, ISA "
            f"{expected.error.name} at {expected.error_pc} ({expected.message})")
    print({code.name: n for code, n in seen.items()})
    assert len(seen) >= 5


WIDE = CoreConfig(line_bits=512)


@pytest.mark.parametrize("bench", BENCHES)
def test_512_bit_lines(bench):
    """The same core at the U280's port width (512-bit lines and AXI data): load/store
    patterns and a decode FFN under stalls, equal to the ISA simulator."""
    rng = np.random.default_rng(SEED)
    hbm = [rng.integers(0, 256, 1 << 14, dtype=np.uint8) for _ in range(WIDE.hbm_ports)]
    words = assemble(LOAD_STORE.replace("r1*32", "r1*64").replace("0xfe0", "0xfc0"))
    builder, _ = ffn_block(WIDE, rng, 128, 256, bits=4, pattern=(8, 16), hbm_bytes=1 << 18)
    for program, images, regs in ((words, hbm, (3, 0, 0, 0, 0, 0, 0)),
                                  (builder.words(), builder.hbm, (0,) * 7)):
        run_checked(bench, WIDE, program, images, regs, stall=0.3, latency=(1, 40),
                    seed=SEED, name="core-512")


STRIPED_LOADS = """
    load  buffer=wgt line=4 port=2 stripe=1 addr=0x40+r1*32 length=6 count2=2 stride2=0x400 \
release=store
    store buffer=wgt line=5 port=0 addr=0x1003 length=150 wait=load release=load
    load  buffer=wgt line=0 port=0 stripe=1 addr=0x2000 length=2+r1*2 count3=2 stride3=0x800 \
wait=store release=store
    store buffer=wgt line=0 port=3 addr=0x2001 length=500 wait=load release=load
    load  buffer=wgt line=17 port=1 addr=0x80 length=3 wait=store release=store
    store buffer=wgt line=16 port=1 addr=0x3005 length=160 wait=load release=load
    load  buffer=act line=9 port=3 addr=0x100 length=4 wait=store release=store
    store buffer=act line=9 port=2 stripe=1 addr=0x5fd3+r1*2 length=200 count2=3 \
stride2=0x93 wait=load release=load
    load  buffer=meta line=6 port=2 stripe=1 addr=0x600 length=10 wait=store release=store
    store buffer=meta line=7 port=3 addr=0x3007 length=200 wait=load release=sys
    sync  wait=store
    halt
""".replace("\\\n", "")


@pytest.mark.parametrize("bench", BENCHES)
def test_striped_loads(bench):
    """A core whose load unit takes two lines a cycle (``WGT`` and ``META`` in two banks):
    striped loads on either pair of ports and plain ones into both banks, stores back from
    every bank, a striped store (logical addresses, a line to each port in turn), and decode
    FFNs whose weights, scales and masks stream striped (INT8 dense,
    INT4 8:16) under stalls on every channel, equal to the ISA simulator."""
    rng = np.random.default_rng(SEED + 2)
    hbm = [rng.integers(0, 256, 1 << 14, dtype=np.uint8) for _ in range(STRIPED.hbm_ports)]
    programs = [(assemble(STRIPED_LOADS), hbm, (3, 0, 0, 0, 0, 0, 0))]
    for bits, pattern in ((8, None), (4, (8, 16))):
        builder, _ = ffn_block(STRIPED, rng, 128, 256, bits=bits, pattern=pattern,
                               hbm_bytes=1 << 18)
        assert any("stripe=1" in line for line in builder.text)
        programs.append((builder.words(), builder.hbm, (0,) * 7))
    for program, images, regs in programs:
        run = run_checked(bench, STRIPED, program, images, regs, stall=0.3, latency=(1, 40),
                          seed=SEED, name="core-striped")
        assert run.error == ErrorCode.NONE


@pytest.mark.slow
def test_benchmark_script_writes_its_table_and_json(tmp_path):
    from scripts_runner import run_script

    stdout, result = run_script("bench_core.py", [], tmp_path / "bench.json")
    rows = {r["workload"].split(" (")[0]: r for r in result["results"]}
    assert rows["decode FFN"]["utilisation"] >= 0.9
    assert "of peak" in stdout and "decoder layer" in rows
