"""Requantizer Verilog under Verilator (cocotb bench flightgen.sim.benches.requant), bit for bit
against flightgen.isa.numerics.requantize, under every crossed stall pattern."""

import json
from pathlib import Path

import numpy as np
import pytest
from amaranth import Module, Mux
from amaranth.lib import wiring
from scripts_runner import run_script

from flightgen.hw.requant import Requantizer
from flightgen.sim import runner
from flightgen.sim.stimulus import requant_beats
from flightgen.sim.toolchain import fst_problem

BENCH = "flightgen.sim.benches.requant"
STALL_CROSSES = 16  # 4 source patterns x 4 sink patterns, each a cocotb test
OTHER_TESTS = 2  # cycles_match_expected, reset_empties_pipeline

pytestmark = pytest.mark.verilator


def bench_env(lanes, random_beats):
    return {"FLIGHTGEN_PARAMS": json.dumps({"lanes": lanes}),
            "FLIGHTGEN_RANDOM_BEATS": random_beats}


@pytest.mark.parametrize(("lanes", "random_beats"), [pytest.param(1, 9000, marks=pytest.mark.slow),
                                                     (4, 2000)])
def test_bit_exact_under_stalls(lanes, random_beats):
    values = requant_beats(np.random.default_rng(0), lanes, random_beats)[0].size
    assert values >= 10_000  # per stall configuration: the bench's stimulus size is fixed
    model = runner.build(Requantizer(lanes), f"requant_l{lanes}")
    records = runner.run(model, BENCH, name=f"requant-l{lanes}",
                         extra_env=bench_env(lanes, random_beats))
    assert len(records) == STALL_CROSSES + OTHER_TESTS


class SymmetricSaturation(wiring.Component):
    """A plausible bug: a requantizer that saturates to [-127, 127]."""

    def __init__(self, lanes):
        self.inner = Requantizer(lanes)
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        wiring.connect(m, wiring.flipped(self.i_stream), inner.i_stream)
        m.d.comb += [self.o_stream.valid.eq(inner.o_stream.valid),
                     inner.o_stream.ready.eq(self.o_stream.ready)]
        for lane in range(self.inner.lanes):
            value = inner.o_stream.payload[lane]
            m.d.comb += self.o_stream.payload[lane].eq(Mux(value == -128, -127, value))
        return m


def test_bench_catches_a_wrong_design():
    model = runner.build(SymmetricSaturation(2), "requant_mutant")
    with pytest.raises(runner.BenchFailure) as failure:
        runner.run(model, BENCH, name="requant-mutant", extra_env=bench_env(2, 0),
                   test_filter=r"matches_numpy_under_stalls/idle=light/backpressure=heavy")
    message = str(failure.value)
    assert "1 of 1 cocotb tests failed" in message
    assert "RTL gave -127" in message and "= -128" in message
    assert "FLIGHTGEN_SEED=" in message


@pytest.mark.parametrize("waves", [
    pytest.param("fst", marks=pytest.mark.skipif(fst_problem() is not None,
                                                 reason=str(fst_problem()))),
    "vcd",
])
def test_waveform_on_request(waves):
    lines = []
    model = runner.build(Requantizer(1), "requant_l1", waves=waves)
    runner.run(model, BENCH, name=f"requant-waves-{waves}", extra_env=bench_env(1, 0),
               test_filter=r"reset_empties_pipeline", log=lines.append)
    written = [line.split(": ", 1)[1] for line in lines if line.startswith("waveform: ")]
    assert len(written) == 1 and written[0].endswith(f".{waves}")
    assert Path(written[0]).stat().st_size > 0


def test_benchmark_script_writes_its_table_and_json(tmp_path):
    stdout, result = run_script("bench_requant.py", ["--lanes", 1, "--random-beats", 0],
                                tmp_path / "bench.json", timeout=600)
    assert result["lanes"] == 1 and len(result["tests"]) == STALL_CROSSES + OTHER_TESTS
    cycles = {row["test"]: row["cycles"] for row in result["tests"]}
    # Without stalls the directed beats stream back to back: at least one cycle per beat.
    beats = requant_beats(np.random.default_rng(0), 1, 0)[0].shape[0]
    assert cycles["matches_numpy_under_stalls/idle=none/backpressure=none"] >= beats
    assert "cycles_match_expected" in stdout

