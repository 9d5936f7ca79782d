"""cocotb bench: run programs on the core's Verilog as a host does.

Runs inside the simulator (see :func:`flightgen.sim.system.run_core`). ``FLIGHTGEN_PARAMS``
holds the :class:`~flightgen.isa.machine.CoreConfig` as JSON, ``FLIGHTGEN_JOB`` an ``.npz``
job, ``FLIGHTGEN_RESULT`` where the result goes.

Job: ``runs`` programs ``program{i}`` (bytes) with ``registers{i}`` (7 values each), the
memories ``hbm{p}``, ``stall``, ``latency`` (lo, hi), ``timeout`` (cycles per run). For each
run the bench writes the argument registers, sets ``ap_start`` and polls ``ap_done`` through
AXI4-Lite exactly as the host runner does, then reads the status registers. HBM persists from
run to run. It saves, per run ``i``: ``error{i}``, ``error_pc{i}``, ``cycles{i}``,
``retired{i}``, ``trace{i}`` (``(unit, pc, cycle)`` per retired instruction, in retire
order) and
per-port statistics (``r_beats{i}_{p}``, ``r_first{i}_{p}``, ``r_last{i}_{p}``,
``w_bytes{i}_{p}``: bytes written); and the final ``hbm{p}``.

A core with the barrier has one more master, ``sync``: its pointer is the exchange port's
base, and a second :class:`AxiMemory` on the exchange port's array answers it (its traffic
counts in that port's statistics), as the C++ harness does.
"""

import json
import os
import warnings

import cocotb
import numpy as np
from amaranth.hdl import UnusedElaboratable
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from ...hw.control import AP_DONE, AP_START, CONTROL
from ...hw.core import register_map
from ...isa.machine import CoreConfig
from .axi import AxiLiteHost, AxiMemory

warnings.simplefilter("ignore", UnusedElaboratable)

#: Bus address of the program memory and of HBM port ``p`` (``HBM_BASE * (p + 1)``).
PROGRAM_BASE = 0x4000_0000
HBM_BASE = 0x1_0000_0000


async def _trace(dut, units, into):
    width = 33
    cycle = 0
    while True:
        await RisingEdge(dut.clk)
        cycle += 1
        await ReadOnly()
        raw = int(dut.retire.value)
        if raw:
            for unit in range(units):
                entry = (raw >> (unit * width)) & ((1 << width) - 1)
                if entry & 1:
                    into.append((unit, entry >> 1, cycle))


@cocotb.test()
async def run_job(dut):
    config = CoreConfig(**json.loads(os.environ["FLIGHTGEN_PARAMS"]))
    job = dict(np.load(os.environ["FLIGHTGEN_JOB"]))
    seed = int(os.environ.get("COCOTB_RANDOM_SEED", os.environ.get("RANDOM_SEED", "1")))
    rng = np.random.default_rng(seed)
    cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    stall = float(job["stall"])
    lo, hi = (int(v) for v in job["latency"])
    program_memory = AxiMemory(dut, "program", np.zeros(32, np.uint8), PROGRAM_BASE, rng,
                               (lo, hi), stall)
    ports = []
    for p in range(config.hbm_ports):
        memory = job[f"hbm{p}"].astype(np.uint8)
        ports.append((memory, AxiMemory(dut, f"hbm__{p}", memory, HBM_BASE * (p + 1), rng,
                                        (lo, hi), stall)))
    # the channel of each port: its own model, and a barrier core's sync master on the
    # exchange port's
    channels = [[model] for _, model in ports]
    if config.barrier:
        exchange = config.exchange_port
        channels[exchange].append(AxiMemory(dut, "sync", ports[exchange][0],
                                            HBM_BASE * (exchange + 1), rng, (lo, hi), stall))
    trace = []
    cocotb.start_soon(_trace(dut, 5, trace))
    host = AxiLiteHost(dut)
    regs = register_map(config)
    await host.write64(regs.offset("program"), PROGRAM_BASE)
    for p in range(config.hbm_ports):
        await host.write64(regs.offset(f"hbm{p}"), HBM_BASE * (p + 1))
    if config.barrier:  # the exchange port's buffer
        await host.write64(regs.offset("sync"), HBM_BASE * (config.exchange_port + 1))
    timeout = int(job["timeout"])
    result = {}
    for run in range(int(job["runs"])):
        program = job[f"program{run}"].astype(np.uint8)
        # the fetch unit reads whole lines: a host's buffer is whole pages (zero-padded)
        program_memory.memory = np.zeros(-(-len(program) // 4096) * 4096, np.uint8)
        program_memory.memory[:len(program)] = program
        await host.write(regs.offset("length"), len(program) // 32)
        for index, value in enumerate(job[f"registers{run}"], 1):
            await host.write(regs.offset(f"r{index}"), int(value))
        for models in channels:
            for model in models:
                model.r_beats, model.first_ar, model.last_r = 0, None, None
                model.bytes_written = 0
        trace.clear()
        await host.write(CONTROL, AP_START)
        waited = 0
        while not await host.read(CONTROL) & AP_DONE:
            await ClockCycles(dut.clk, 20)
            waited += 24
            assert waited < timeout, f"run {run}: the core did not finish in {timeout} cycles"
        result.update({
            f"error{run}": await host.read(regs.offset("error")),
            f"error_pc{run}": await host.read(regs.offset("error_pc")),
            f"cycles{run}": await host.read64(regs.offset("cycles")),
            f"retired{run}": await host.read(regs.offset("retired")),
            f"trace{run}": np.array(trace, np.int64).reshape(-1, 3),
        })
        for p, models in enumerate(channels):
            firsts = [m.first_ar for m in models if m.first_ar is not None]
            lasts = [m.last_r for m in models if m.last_r is not None]
            result[f"r_beats{run}_{p}"] = sum(m.r_beats for m in models)
            result[f"r_first{run}_{p}"] = min(firsts, default=0)
            result[f"r_last{run}_{p}"] = max(lasts, default=0)
            result[f"w_bytes{run}_{p}"] = sum(m.bytes_written for m in models)
    for p, (memory, _) in enumerate(ports):
        result[f"hbm{p}"] = memory
    np.savez(os.environ["FLIGHTGEN_RESULT"], **result)
