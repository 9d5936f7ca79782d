"""SFU Verilog under Verilator (cocotb bench flightgen.sim.benches.sfu): every operation bit for
bit against flightgen.isa.special, every length class (odd lengths included) under every stall
cross, random vectors per length class, exact cycles. All in the slow tier (the build takes
about two minutes): the default run has the SFU's Verilog in the whole core, every instruction's
writes checked against the ISA simulator on the C++ harness (tests/test_harness.py,
tests/test_core_rtl.py), and every operation and length class in amaranth.sim
(tests/test_sfu.py). The full count of 1,000 random vectors per operation and length class is
slow too."""

import json
from unittest import mock

import pytest

from flightgen.hw.sfu import SpecialFunctionUnit
from flightgen.sim import runner

BENCH = "flightgen.sim.benches.sfu"
PARAMS = {"lanes": 4, "max_length": 256}
OPS = 8

pytestmark = pytest.mark.verilator


def run(vectors, test_filter=None):
    model = runner.build(SpecialFunctionUnit(**PARAMS), "sfu_l4")
    return runner.run(model, BENCH, name=f"sfu-l4-{vectors}", test_filter=test_filter,
                      extra_env={"FLIGHTGEN_PARAMS": json.dumps(PARAMS),
                                 "FLIGHTGEN_VECTORS": vectors})


@pytest.mark.slow
def test_bit_exact_under_stalls_and_cycles():
    records = run(20)
    assert len(records) == 16 + 4 + OPS + 1


@pytest.mark.slow
def test_thousand_random_vectors_per_length_class():
    records = run(1000, test_filter="random_vectors/")
    assert len(records) == OPS


@pytest.mark.slow
def test_bench_catches_a_rounding_bug():
    """A plausible bug: the lanes round down instead of half to even. The bench names the
    operation, the element and the two values."""
    import flightgen.hw.sfu as sfu

    def round_down(shifted, sticky):
        return shifted[1:].as_signed()

    with mock.patch.object(sfu, "round_half_even", round_down):
        model = runner.build(SpecialFunctionUnit(**PARAMS), "sfu_mutant")
    with pytest.raises(runner.BenchFailure) as failure:
        runner.run(model, BENCH, name="sfu-mutant",
                   extra_env={"FLIGHTGEN_PARAMS": json.dumps(PARAMS)},
                   test_filter=r"every_op_under_stalls/idle=light/backpressure=light")
    message = str(failure.value)
    assert "1 of 1 cocotb tests failed" in message
    assert "values differ" in message and "RTL gave" in message
