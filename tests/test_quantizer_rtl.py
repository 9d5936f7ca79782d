"""Block quantizer Verilog under Verilator (cocotb bench flightgen.sim.benches.quantizer), bit
for bit against flightgen.isa.numerics.quantize_per_group under every stall cross, and exact
cycles."""

import json

import pytest

from flightgen.hw.quantizer import BlockQuantizer
from flightgen.sim import runner

BENCH = "flightgen.sim.benches.quantizer"

pytestmark = pytest.mark.verilator


@pytest.mark.parametrize(("lanes", "group"), [(4, 32), (16, 64)])
def test_bit_exact_under_stalls(lanes, group):
    params = {"lanes": lanes, "group": group}
    model = runner.build(BlockQuantizer(**params), f"quantizer_l{lanes}_g{group}")
    records = runner.run(model, BENCH, name=f"quantizer-l{lanes}-g{group}",
                         extra_env={"FLIGHTGEN_PARAMS": json.dumps(params),
                                    "FLIGHTGEN_GROUPS": 200})
    assert len(records) == 16 + 1
