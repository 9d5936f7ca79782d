"""The core's Verilog in the C++ harness (`flightgen.sim.harness`): a compiled model run by the
host on the RTL equals the ISA simulator, errors stop the core where the ISA simulator stops,
and the hand-scheduled workloads take the cycles the cocotb bench measures."""

import os

import numpy as np
import pytest
from configs import STRIPED
from model_files import write_gguf

from flightgen.compiler.build import compile_model
from flightgen.compiler.frontends import load_model
from flightgen.compiler.passes import CompileConfig
from flightgen.compiler.target import TARGETS, Target
from flightgen.isa.assembly import assemble
from flightgen.isa.machine import SIM_CORE, ErrorCode
from flightgen.sim.harness import (
    CoreHarness,
    HarnessError,
    HarnessTimeout,
    RtlBackend,
    build_harness,
    run_program,
)
from flightgen.sim.host import Host, IsaBackend
from flightgen.sim.programs import decoder_layer, ffn_block
from flightgen.sim.stimulus import random_programs
from flightgen.sim.system import program_bytes, simulate

pytestmark = pytest.mark.verilator

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))
SMALL = TARGETS["sim-small"]
PROMPT = [5, 17, 200, 3]
DECODE_STEPS = 3


@pytest.fixture(scope="module")
def executable():
    return build_harness(SIM_CORE)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(write_gguf(tmp_path_factory.mktemp("tiny") / "m.gguf"))


def _check_generation(binary):
    """Prefill and decode on the RTL next to the ISA simulator: equal logits at every decode
    step and an equal KV cache."""
    isa = Host(binary)
    with RtlBackend(binary) as backend:
        rtl = Host(binary, backend)
        np.testing.assert_array_equal(rtl.prefill(PROMPT), isa.prefill(PROMPT))
        cycles = [backend.cycles]
        for _ in range(DECODE_STEPS):
            token = int(np.argmax(isa.logits()))
            np.testing.assert_array_equal(rtl.step(token, "decode"), isa.step(token, "decode"))
            cycles.append(backend.cycles)
        for layer in range(binary.model["n_layers"]):
            for got, want in zip(rtl.cache(layer), isa.cache(layer), strict=True):
                np.testing.assert_array_equal(got, want)
        assert backend.runs == binary.target["cores"] * (len(PROMPT) + DECODE_STEPS)
        print(f"{binary.target['cores']} core(s): cycles per decode step "
              f"{np.diff(cycles).tolist()}")


@pytest.mark.parametrize("cores", [1, 2])
def test_tiny_model_on_the_rtl_equals_the_isa_simulator(tiny, executable, cores):
    """The tiny model (FFN 96: the down projection's commands have 3 blocks, and its SFU
    commands leave zero beats to pad, which once corrupted the next QUANT)."""
    binary = compile_model(SMALL.with_cores(cores), CompileConfig(), model=tiny)
    _check_generation(binary)


def test_striped_model_on_the_rtl_equals_the_isa_simulator_instruction_by_instruction(tiny):
    """A core whose load unit takes two lines a cycle (WGT in two banks, each with its own
    write monitor): the tiny model with striped weight tiles, every instruction's writes
    compared with the ISA simulator's (``--check``), and the same logits."""
    from flightgen.simulate import _Checked

    binary = compile_model(Target("striped", STRIPED, channel_bytes=1 << 24), CompileConfig(),
                           model=tiny)
    isa = Host(binary)
    with RtlBackend(binary, check=True) as rtl:
        checked = _Checked(rtl, IsaBackend(binary), STRIPED)
        host = Host(binary, checked)
        for step, token in enumerate(PROMPT):
            checked.step = f"step {step + 1}"
            phase = "prefill" if step < len(PROMPT) - 1 else "decode"
            got, want = host.step(token, phase), isa.step(token, phase)
        np.testing.assert_array_equal(got, want)


def test_decode_workloads_take_the_cocotb_bench_cycles(executable):
    """The workloads of scripts/bench_core.py (same seed, so the same weights) with a latency of
    40 cycles and no stalls: every HBM byte equal to the ISA simulator, and the cycles, lines
    read and read window the cocotb bench measures (docs/hardware.md): the harness's memories
    keep the cocotb memory model's timing exactly."""
    rng = np.random.default_rng(2026)
    ffn, _ = ffn_block(SIM_CORE, rng, 256, 256, bits=8, hbm_bytes=1 << 19)
    layer = decoder_layer(SIM_CORE, rng, dim=256, heads=4, kv_heads=2, head_dim=64, hidden=256,
                          capacity=64, position=10, bits=8, hbm_bytes=1 << 20)
    for builder, registers, cycles, lines, window in (
            (ffn, (0,) * 7, 8_437, 7_808, 7_898),
            (layer, layer.registers, 19_506, 15_568, 18_967)):
        words = builder.words()
        run, hbm = run_program(executable, SIM_CORE, words, builder.hbm, registers, latency=40)
        machine, expected = simulate(SIM_CORE, words, builder.hbm, registers)
        assert (run.error, run.error_pc) == (ErrorCode.NONE, 0)
        for got, want in zip(hbm, machine.hbm, strict=True):
            np.testing.assert_array_equal(got, want)
        beats, first, last = run.reads[0]
        assert (run.cycles, beats, last - first + 1) == (cycles, lines, window)


@pytest.mark.parametrize("position", [0, 21])
def test_decoder_layer_under_stalls(executable, position):
    """The decoder layer of tests/test_core_rtl.py under random latency and ready stalls:
    every HBM byte (the KV cache included) equal to the ISA simulator."""
    rng = np.random.default_rng(SEED + position)
    builder = decoder_layer(SIM_CORE, rng, dim=64, heads=4, kv_heads=2, head_dim=16,
                            hidden=128, capacity=64, position=position, hbm_bytes=1 << 18)
    words = builder.words()
    run, hbm = run_program(executable, SIM_CORE, words, builder.hbm, builder.registers,
                           latency=(1, 40), stall=0.3, seed=SEED + position)
    machine, expected = simulate(SIM_CORE, words, builder.hbm, builder.registers)
    assert (run.error, run.error_pc) == (expected.error, expected.error_pc) == (ErrorCode.NONE, 0)
    for got, want in zip(hbm, machine.hbm, strict=True):
        np.testing.assert_array_equal(got, want)


def test_errors_stop_the_core_where_the_isa_simulator_stops(executable):
    """Directed errors (an illegal opcode after a legal load, a load past the memory's end,
    a store past it) and 60 random programs under stalls: the RTL reports the ISA simulator's
    error code and pc every time, one harness process serving them all."""
    rng = np.random.default_rng(SEED)
    hbm = [rng.integers(0, 256, 1 << 13, dtype=np.uint8) for _ in range(SIM_CORE.hbm_ports)]
    directed = [
        assemble("load buffer=vec line=0 port=0 addr=0 length=1") + [0],
        assemble("load buffer=vec line=0 port=1 addr=0x1fe0 length=2"),
        assemble("store buffer=vec line=0 port=0 addr=0x1ff0 length=32"),
    ]
    programs = directed + random_programs(rng, 60)
    seen = {}
    with CoreHarness(executable, SIM_CORE, latency=(1, 8), stall=0.2, seed=SEED,
                     timeout=400_000) as harness:
        for port, memory in enumerate(hbm):
            harness.resize(port, len(memory))
            harness.write(port, 0, memory)
        for index, words in enumerate(programs):
            registers = tuple(int(v) for v in rng.integers(0, 4, 7))
            harness.load_program(program_bytes(words))
            run = harness.run(registers)
            machine, expected = simulate(SIM_CORE, words,
                                         [harness.read(p, 0, 1 << 13) for p in range(2)],
                                         registers)
            seen[expected.error] = seen.get(expected.error, 0) + 1
            assert (run.error, run.error_pc) == (expected.error, expected.error_pc), (
                f"program {index}: RTL {run.error.name} at {run.error_pc}, ISA "
                f"{expected.error.name} at {expected.error_pc} ({expected.message})")
            if index < len(directed):
                assert expected.error in (ErrorCode.ILLEGAL_OPCODE, ErrorCode.AXI)
    assert len(seen) >= 5


def test_harness_errors_are_flightgen_errors(executable):
    """A timeout, a request outside a memory and a dead process each raise a one-line
    :class:`HarnessError`; the harness keeps serving after the first two."""
    deadlock = assemble("sync wait=load")  # a token nobody sends
    with CoreHarness(executable, SIM_CORE, timeout=20) as harness:
        harness.load_program(program_bytes(assemble("halt")))  # fetching alone takes 40 cycles
        with pytest.raises(HarnessTimeout, match=r"did not finish in 20 cycles"):
            harness.run()
        with pytest.raises(HarnessError, match=r"reach past port 0's memory of 0 bytes"):
            harness.read(0, 0, 16)
        harness.resize(0, 4096)
        harness.write(0, 4, b"\x01\x02")
        assert harness.read(0, 0, 8).tolist() == [0, 0, 0, 0, 1, 2, 0, 0]
        harness.load_program(program_bytes(deadlock))
        run = harness.run(timeout=10_000)
        assert (run.error, run.error_pc) == (ErrorCode.DEADLOCK, 0)
        harness.process.kill()
        with pytest.raises(HarnessError, match=r"the core harness exited with status -9"):
            harness.read(0, 0, 8)
        harness.process.stdin.write(b"\0" * 8)  # a request left in the pipe's buffer
    # closing flushed it into the dead process: no BrokenPipeError, nothing left open
    assert harness.process.stdin.closed and harness.process.stdout.closed
    assert harness._log.closed


@pytest.mark.slow
def test_smollm2_decode_step_on_the_rtl(smollm2):
    """SmolLM2-135M compiled for the `sim` target: one decode step (and the prefill step
    before it) on the core's Verilog gives the ISA simulator's logits and KV cache. Prints the
    cycles per step and the simulation speed."""
    import time

    binary = compile_model(TARGETS["sim"], CompileConfig(), model=smollm2)
    isa = Host(binary)
    with RtlBackend(binary) as backend:
        rtl = Host(binary, backend)
        started = time.monotonic()
        rtl.step(1, "prefill")
        logits = rtl.step(2, "decode")
        seconds = time.monotonic() - started
        isa.step(1, "prefill")
        np.testing.assert_array_equal(logits, isa.step(2, "decode"))
        for layer in (0, binary.model["n_layers"] - 1):
            for got, want in zip(rtl.cache(layer), isa.cache(layer), strict=True):
                np.testing.assert_array_equal(got, want)
        print(f"SmolLM2-135M: {backend.last_cycles} cycles for the decode step, "
              f"{backend.cycles} for both steps in {seconds:.1f} s: "
              f"{backend.cycles / seconds:,.0f} cycles/s")


def test_a_finished_build_is_found_without_converting_again(executable, monkeypatch):
    """A new process (here: an emptied in-process table) finds the harness through the source
    index: no conversion to Verilog, no build."""
    from flightgen.sim import harness, runner

    def refuse(*args, **kwargs):
        raise AssertionError("converted or built again")

    monkeypatch.setattr(harness, "_BUILT", {})
    monkeypatch.setattr(runner, "build_harness", refuse)
    assert build_harness(SIM_CORE) == executable
