#!/usr/bin/env python3
"""Benchmark decode workloads on the core's Verilog (Verilator, SIM_CORE): the HBM read
bandwidth of the weight port and the cycles of a decode FFN layer and of a full decoder layer,
with a memory that answers every burst after 40 cycles and never stalls (so the port's peak
is one line per cycle). Each run is also checked against the ISA simulator, bit for bit.

Prints a table and writes JSON (default ``bench_core.json``).

    python scripts/bench_core.py -o bench_core.json
"""

import argparse
import json
import sys

import numpy as np

from flightgen.errors import FlightgenError
from flightgen.files import write_atomic
from flightgen.isa.machine import SIM_CORE
from flightgen.sim import runner
from flightgen.sim.programs import decoder_layer, ffn_block
from flightgen.sim.system import compare, core_model, run_core, simulate

LATENCY = 40


def workloads(seed):
    rng = np.random.default_rng(seed)
    ffn, _ = ffn_block(SIM_CORE, rng, 256, 256, bits=8, hbm_bytes=1 << 19)
    yield "decode FFN (256 x 256, INT8)", ffn, (0,) * 7
    layer = decoder_layer(SIM_CORE, rng, dim=256, heads=4, kv_heads=2, head_dim=64,
                          hidden=256, capacity=64, position=10, bits=8, hbm_bytes=1 << 20)
    yield "decoder layer (dim 256, 4/2 heads of 64, L = 11, INT8)", layer, layer.registers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2026, help="Random weights' seed.")
    parser.add_argument("-o", "--output", default="bench_core.json", help="JSON output file.")
    args = parser.parse_args(argv)
    results = []
    try:
        model = core_model(SIM_CORE, log=lambda _: None)
        for name, builder, registers in workloads(args.seed):
            words = builder.words()
            runs, images = run_core(model, SIM_CORE, [words], builder.hbm, [registers],
                                    stall=0.0, latency=(LATENCY, LATENCY), name="bench-core")
            machine, expected = simulate(SIM_CORE, words, builder.hbm, registers)
            compare(runs[0], expected, images, machine)
            beats, first, last = runs[0].reads[0]
            results.append({"workload": name, "instructions": len(words),
                            "cycles": runs[0].cycles, "weight_lines": beats,
                            "read_window": last - first + 1,
                            "utilisation": runs[0].read_bandwidth(0)})
    except (FlightgenError, runner.BenchFailure, AssertionError) as error:
        sys.exit(f"error: {error}")
    print(f"core {SIM_CORE.line_bits}-bit lines, chain {SIM_CORE.chain}, {SIM_CORE.vpus} VPUs; "
          f"memory latency {LATENCY} cycles, no stalls; port peak = 1 line per cycle")
    print(f"{'workload':<56}  {'instr':>5}  {'cycles':>7}  {'lines read':>10}  "
          f"{'read window':>11}  {'of peak':>7}")
    for row in results:
        print(f"{row['workload']:<56}  {row['instructions']:>5}  {row['cycles']:>7}  "
              f"{row['weight_lines']:>10}  {row['read_window']:>11}  "
              f"{100 * row['utilisation']:>6.1f}%")
    write_atomic(args.output, json.dumps({"config": SIM_CORE.to_dict(), "latency": LATENCY,
                                          "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
