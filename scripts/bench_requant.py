#!/usr/bin/env python3
"""Benchmark the simulation spine on the requantizer: Verilator build time, simulated cycles,
wall time and simulation speed of the cocotb bench under each stall configuration.

Prints a table and writes JSON (default ``bench_requant.json``). Figures are wall-clock
measurements of this machine; the cycle counts are deterministic for a given seed.

    python scripts/bench_requant.py --lanes 4 --random-beats 2000 -o bench_requant.json
"""

import argparse
import json
import sys
import time

from flightgen.files import write_atomic
from flightgen.hw.requant import Requantizer
from flightgen.sim import runner
from flightgen.sim.stimulus import requant_beats
from flightgen.sim.toolchain import find_verilator

CLOCK_NS = 10  # the benches' clock period


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=4, help="Requantizer lanes.")
    parser.add_argument("--random-beats", type=int, default=2000,
                        help="Random beats after the directed cases, per stall configuration.")
    parser.add_argument("-o", "--output", default="bench_requant.json", help="JSON output file.")
    args = parser.parse_args(argv)

    import numpy as np

    values = requant_beats(np.random.default_rng(0), args.lanes, args.random_beats)[0].size
    started = time.monotonic()
    model = runner.build(Requantizer(args.lanes), f"requant_l{args.lanes}", log=lambda _: None)
    build_s = time.monotonic() - started
    records = runner.run(model, "flightgen.sim.benches.requant", name="bench-requant",
                         extra_env={"FLIGHTGEN_PARAMS": json.dumps({"lanes": args.lanes}),
                                    "FLIGHTGEN_RANDOM_BEATS": args.random_beats},
                         log=lambda _: None)
    rows = []
    for record in records:
        cycles = round(record.sim_time_ns / CLOCK_NS)
        rows.append({"test": record.name.split(".")[-1], "cycles": cycles,
                     "wall_s": round(record.real_time_s, 3),
                     "kcycles_per_s": round(cycles / record.real_time_s / 1e3, 1)
                     if record.real_time_s else None})
    verilator = find_verilator()
    result = {"lanes": args.lanes, "values_per_stall_config": values,
              "verilator": verilator.version_str, "build_or_cache_s": round(build_s, 2),
              "tests": rows}

    width = max(len(row["test"]) for row in rows)
    print(f"requantizer, {args.lanes} lanes, {values} values per stall configuration, "
          f"Verilator {verilator.version_str}; build (or cache hit) {build_s:.1f} s")
    print(f"{'test':<{width}}  {'cycles':>8}  {'wall s':>7}  {'kcycles/s':>9}")
    for row in rows:
        print(f"{row['test']:<{width}}  {row['cycles']:>8}  {row['wall_s']:>7.3f}  "
              f"{row['kcycles_per_s'] if row['kcycles_per_s'] is not None else '-':>9}")
    write_atomic(args.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
