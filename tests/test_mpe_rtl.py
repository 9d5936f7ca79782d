"""Matrix engine Verilog under Verilator (cocotb bench flightgen.sim.benches.mpe): every mode x
precision x sparsity bit for bit against flightgen.isa under every crossed stall pattern, exact
cycle counts, the 8:16 speed-up, reset."""

import json
from unittest import mock

import pytest
from scripts_runner import run_script

from flightgen.hw.mpe import MatrixEngine
from flightgen.sim import runner

BENCH = "flightgen.sim.benches.mpe"
#: The bench configuration: chains of 16 (the U280 design point), 2 VPUs.
PARAMS = {"chain": 16, "vpus": 2, "max_k": 2048}
STALL_CROSSES = 16
OTHER_TESTS = 3  # cycles_match_expected, sparse_speedup, reset_mid_command

pytestmark = pytest.mark.verilator


def test_bit_exact_cycles_and_speedup(tmp_path):
    model = runner.build(MatrixEngine(**PARAMS), "mpe_c16_v2")
    report = tmp_path / "speedup.json"
    records = runner.run(model, BENCH, name="mpe-c16-v2",
                         extra_env={"FLIGHTGEN_PARAMS": json.dumps(PARAMS),
                                    "FLIGHTGEN_REPORT": str(report)})
    assert len(records) == STALL_CROSSES + OTHER_TESTS
    results = json.loads(report.read_text())["results"]
    speedup = {(r["mode"], r["pattern"]): r["speedup"] for r in results}
    assert speedup["MV", "8:16"] >= 1.9 and speedup["MM", "8:16"] >= 1.9


@pytest.mark.slow
def test_bench_catches_a_missing_overflow_correction():
    """A plausible bug: the overflow-adjust unit forgets the low lane's borrow. The bench must
    name the command and the first wrong value."""
    import flightgen.hw.chain as chain

    def split_without_borrow(product):
        return product[:18].as_signed(), product[18:].as_signed()

    params = {"chain": 8, "vpus": 1, "max_k": 512}
    with mock.patch.object(chain, "split", split_without_borrow):
        model = runner.build(MatrixEngine(**params), "mpe_mutant")
    with pytest.raises(runner.BenchFailure) as failure:
        runner.run(model, BENCH, name="mpe-mutant",
                   extra_env={"FLIGHTGEN_PARAMS": json.dumps(params)},
                   test_filter=r"every_combination_under_stalls/idle=light/backpressure=light")
    message = str(failure.value)
    assert "1 of 1 cocotb tests failed" in message
    assert "values differ" in message and "RTL gave" in message


def test_benchmark_script_writes_its_table_and_json(tmp_path):
    stdout, result = run_script("bench_mpe.py", ["--chain", 16, "--vpus", 2, "--max-k", 2048],
                                tmp_path / "bench.json")
    rows = {(r["mode"], r["pattern"]): r for r in result["results"]}
    assert len(rows) == 10 and rows["MV", "16:16"]["speedup"] == 1.0
    assert "vs dense" in stdout and "8:16" in stdout
