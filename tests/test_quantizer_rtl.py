"""Block quantizer Verilog under Verilator (cocotb bench flightgen.sim.benches.quantizer), bit
for bit against flightgen.isa.numerics.quantize_per_group under every stall cross, and exact
cycles."""

import json
from unittest import mock

import pytest

from flightgen.hw.quantizer import BlockQuantizer
from flightgen.sim import runner

BENCH = "flightgen.sim.benches.quantizer"

pytestmark = pytest.mark.verilator


@pytest.mark.parametrize(("lanes", "group"),
                         [(4, 32), pytest.param(16, 64, marks=pytest.mark.slow)])
def test_bit_exact_under_stalls(lanes, group):
    params = {"lanes": lanes, "group": group}
    model = runner.build(BlockQuantizer(**params), f"quantizer_l{lanes}_g{group}")
    records = runner.run(model, BENCH, name=f"quantizer-l{lanes}-g{group}",
                         extra_env={"FLIGHTGEN_PARAMS": json.dumps(params),
                                    "FLIGHTGEN_GROUPS": 200})
    assert len(records) == 16 + 1


@pytest.mark.slow
def test_bench_catches_a_wrong_range():
    """A plausible bug: codes scaled to 128 levels (the full INT8 range) instead of 127."""
    import flightgen.hw.quantizer as quantizer

    params = {"lanes": 4, "group": 32}
    with mock.patch.object(quantizer, "_TOP", 128), \
            mock.patch.object(quantizer, "_MAGIC", -(-(1 << 33) // 128)):
        model = runner.build(BlockQuantizer(**params), "quantizer_mutant")
    with pytest.raises(runner.BenchFailure) as failure:
        runner.run(model, BENCH, name="quantizer-mutant",
                   extra_env={"FLIGHTGEN_PARAMS": json.dumps(params), "FLIGHTGEN_GROUPS": 50},
                   test_filter=r"matches_numpy_under_stalls/idle=light/backpressure=light")
    message = str(failure.value)
    assert "1 of 1 cocotb tests failed" in message and "RTL gave" in message
