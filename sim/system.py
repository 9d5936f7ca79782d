"""Run programs on the core's Verilog (cocotb + Verilator) and compare with the ISA simulator.

:func:`core_model` builds (once, cached) the Verilator model of a
:class:`~flightgen.isa.machine.CoreConfig`; :func:`run_core` runs one program on it through the
bench :mod:`flightgen.sim.benches.core`, with HBM contents and length registers, under random
AXI latency and backpressure; :func:`compare` checks a run against
:meth:`flightgen.isa.machine.Machine.run` on the same inputs: error code and pc, every HBM
byte, and each unit's retired instructions in order.
"""

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..isa.instructions import Unit
from ..isa.machine import ErrorCode, Machine

__all__ = ["core_name", "core_model", "run_core", "CoreRun", "compare", "simulate"]

BENCH = "flightgen.sim.benches.core"


def core_name(config):
    """The top-level name of a core's Verilog for ``config`` (``core_sim`` for ``SIM_CORE``,
    else a CRC of the configuration)."""
    import zlib

    from ..isa.machine import SIM_CORE

    key = json.dumps(config.to_dict(), sort_keys=True).encode()
    return "core_sim" if config == SIM_CORE else f"core_{zlib.crc32(key):08x}"


def core_model(config, log=print, *, barrier_timeout=None):
    """The Verilator model of a core with ``config`` (built on first use, then cached);
    ``barrier_timeout`` as :func:`flightgen.sim.harness.build_harness`'s."""
    from ..hw.core import Core
    from . import runner

    options = {} if barrier_timeout is None or not config.barrier else {
        "barrier_timeout": barrier_timeout}
    return runner.build(Core(config, **options), core_name(config), log=log)


@dataclass
class CoreRun:
    """What a run on the RTL left: the status registers and the trace."""

    error: ErrorCode
    error_pc: int
    cycles: int
    retired: int
    #: ``(unit, pc, cycle)`` of every retired instruction, in retire order.
    trace: np.ndarray
    #: Per port: R beats, first read-address cycle and last R cycle.
    reads: list = field(default_factory=list)
    #: Per port: bytes written (enabled by the write strobes).
    written: list = field(default_factory=list)

    def unit_trace(self, unit):
        return [int(pc) for u, pc, _ in self.trace if u == Unit(unit).value]

    def read_bandwidth(self, port):
        """R beats per cycle on ``port`` from its first read address to its last beat."""
        beats, first, last = self.reads[port]
        return beats / max(last - first + 1, 1)


def run_core(model, config, programs, hbm, registers=None, *, stall=0.0, latency=(1, 1),
             timeout=2_000_000, seed=None, name="core"):
    """Run ``programs`` (a list of programs, each words or bytes) one after the other on the
    RTL, with ``hbm`` (one uint8 array per port, kept from run to run) and ``registers`` (one
    7-tuple per program).

    Returns ``(runs, hbm)``: a :class:`CoreRun` per program and the final HBM images.
    """
    from . import runner

    registers = registers or [(0,) * 7] * len(programs)
    with tempfile.TemporaryDirectory(prefix="flightgen-core-") as folder:
        job, result = Path(folder) / "job.npz", Path(folder) / "result.npz"
        arrays = {f"program{i}": np.frombuffer(program_bytes(p), np.uint8)
                  for i, p in enumerate(programs)}
        arrays.update({f"registers{i}": np.array(r, np.int64) for i, r in enumerate(registers)})
        arrays.update({f"hbm{p}": np.asarray(m, np.uint8) for p, m in enumerate(hbm)})
        np.savez(job, runs=len(programs), stall=stall, latency=np.array(latency),
                 timeout=timeout, **arrays)
        runner.run(model, BENCH, name=name, seed=seed,
                   extra_env={"FLIGHTGEN_PARAMS": json.dumps(config.to_dict()),
                              "FLIGHTGEN_JOB": str(job), "FLIGHTGEN_RESULT": str(result)})
        data = dict(np.load(result))
    ports = config.hbm_ports
    runs = [CoreRun(ErrorCode(int(data[f"error{i}"])), int(data[f"error_pc{i}"]),
                    int(data[f"cycles{i}"]), int(data[f"retired{i}"]), data[f"trace{i}"],
                    [(int(data[f"r_beats{i}_{p}"]), int(data[f"r_first{i}_{p}"]),
                      int(data[f"r_last{i}_{p}"])) for p in range(ports)],
                    [int(data[f"w_bytes{i}_{p}"]) for p in range(ports)])
            for i in range(len(programs))]
    return runs, [data[f"hbm{p}"] for p in range(ports)]


def program_bytes(program):
    """A program (words, or already bytes) as bytes, 32 per instruction."""
    if isinstance(program, (bytes, bytearray)):
        return bytes(program)
    return b"".join(int(w).to_bytes(32, "little") for w in program)


def simulate(config, program, hbm, registers=(0,) * 7):
    """Run the ISA simulator on the same inputs; return ``(machine, result)``."""
    machine = Machine(config, hbm_bytes=len(hbm[0]))
    for p, memory in enumerate(hbm):
        machine.hbm[p][:] = memory
    return machine, machine.run(program, registers)


def compare(run, expected, hbm=None, machine=None):
    """Assert that an RTL run equals the ISA simulator's: error and pc, each unit's retired
    instructions in order, and (given the RTL's ``hbm`` and the ``machine``) every HBM
    byte."""
    assert (run.error, run.error_pc) == (expected.error, expected.error_pc), (
        f"the RTL stopped with {run.error.name} at pc {run.error_pc}, the ISA simulator with "
        f"{expected.error.name} at pc {expected.error_pc} ({expected.message})")
    if expected.error != ErrorCode.NONE:
        return
    for unit in Unit:
        got = run.unit_trace(unit)
        want = [e.pc for e in expected.unit_trace(unit)]
        assert got == want, f"{unit.name} retired {got[:20]}..., the ISA simulator {want[:20]}..."
    if hbm is not None:
        for p, (got, want) in enumerate(zip(hbm, machine.hbm, strict=True)):
            differ = np.flatnonzero(got != want)
            assert differ.size == 0, (
                f"HBM port {p}: {differ.size} bytes differ from the ISA simulator, first at "
                f"{differ[0]:#x} (RTL {got[differ[0]]}, ISA {want[differ[0]]})")
