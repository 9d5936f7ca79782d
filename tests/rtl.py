"""Run a program on the core's Verilog through either bench and compare it with the ISA
simulator. The two benches drive the same Verilog with the same memory timing
(tests/test_harness.py holds the harness to the cocotb bench's cycles):

- ``"cocotb"``: the cocotb system bench (:func:`flightgen.sim.system.run_core`), Python
  monitors on every unit and bank; a few thousand cycles a second.
- ``"harness"``: the C++ harness (:func:`flightgen.sim.harness.run_program`), each
  instruction's writes checked by CRC; about a hundred times faster.

Tests that need a core configuration only for a few programs run them on the harness by
default and on the cocotb bench in the slow tier (:data:`BENCHES`), so that each
configuration is built once per tier.
"""

from functools import cache

import pytest

from flightgen.isa.machine import ErrorCode
from flightgen.sim.harness import build_harness, first_difference, run_program
from flightgen.sim.system import compare, core_model, run_core, simulate

#: Parametrisation over the two benches: the harness in the default run, cocotb when slow.
BENCHES = ["harness", pytest.param("cocotb", marks=pytest.mark.slow)]


@cache
def _cocotb(config, barrier_timeout=None):
    """The cocotb model of ``config``, converted once per process (build_harness keeps its
    own table)."""
    return core_model(config, barrier_timeout=barrier_timeout)


def run_checked(bench, config, program, hbm, registers=(0,) * 7, *, stall=0.0,
                latency=(1, 1), seed=1, name="core", barrier_timeout=None):
    """Run ``program`` with ``hbm`` and ``registers`` on ``bench``; assert that the error and
    pc, each unit's retired instructions and every HBM byte equal the ISA simulator's (on the
    harness also what each instruction wrote). ``seed`` seeds the harness's stalls (the
    cocotb bench seeds from ``name``: :func:`flightgen.sim.runner.resolve_seed`); a barrier
    core is built with ``barrier_timeout`` (``None``: the default). Returns the run."""
    machine, expected = simulate(config, program, hbm, registers)
    if bench == "cocotb":
        runs, images = run_core(_cocotb(config, barrier_timeout), config, [program], hbm,
                                [registers], stall=stall, latency=latency, name=name)
        run = runs[0]
    else:
        executable = build_harness(config, barrier_timeout=barrier_timeout)
        run, images = run_program(executable, config, program, hbm, registers, check=True,
                                  stall=stall, latency=latency, seed=seed)
        if expected.error == ErrorCode.NONE:
            difference = first_difference(run.retirements, expected.trace)
            assert difference is None, (
                f"the RTL's writes differ from the ISA simulator's: (pc, unit, cycle, RTL crc, "
                f"ISA crc) = {difference}")
    compare(run, expected, images, machine)
    return run
