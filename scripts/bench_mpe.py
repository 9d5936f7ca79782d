#!/usr/bin/env python3
"""Benchmark the matrix engine's sparsity speed-up on its Verilog (Verilator): one INT4 weight
matrix, dense and pruned to 8:16, 4:16, 2:16 and 2:4, run in MV and MM mode on a resident
activation tile. Cycle counts are deterministic and each equals ``expected_cycles()``.

Prints a table and writes JSON (default ``bench_mpe.json``).

    python scripts/bench_mpe.py --chain 16 --vpus 2 -o bench_mpe.json
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from flightgen.errors import FlightgenError
from flightgen.files import write_atomic
from flightgen.hw.mpe import MatrixEngine
from flightgen.sim import runner


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", type=int, default=16, help="Packed DSPs per VPU.")
    parser.add_argument("--vpus", type=int, default=2, help="VPUs.")
    parser.add_argument("--max-k", type=int, default=2048, help="Activation memory (codes); "
                        "the benchmark uses K = min(2048, max-k).")
    parser.add_argument("-o", "--output", default="bench_mpe.json", help="JSON output file.")
    args = parser.parse_args(argv)
    params = {"chain": args.chain, "vpus": args.vpus, "max_k": args.max_k}
    try:
        engine = MatrixEngine(**params)
    except ValueError as error:
        parser.error(str(error))
    try:
        model = runner.build(engine, f"mpe_c{args.chain}_v{args.vpus}", log=lambda _: None)
        with tempfile.TemporaryDirectory() as folder:
            report = Path(folder) / "report.json"
            runner.run(model, "flightgen.sim.benches.mpe", name="bench-mpe",
                       test_filter="sparse_speedup", log=lambda _: None,
                       extra_env={"FLIGHTGEN_PARAMS": json.dumps(params),
                                  "FLIGHTGEN_REPORT": str(report)})
            result = json.loads(report.read_text())
    except (FlightgenError, runner.BenchFailure) as error:
        sys.exit(f"error: {error}")
    print(f"matrix engine: chain {result['chain']}, {result['vpus']} VPUs, {result['dsps']} "
          f"MAC-array DSP48E2, K = {result['k']}, INT4 weights")
    print(f"{'mode':<4}  {'pattern':>7}  {'rows':>5}  {'tokens':>6}  {'cycles':>7}  "
          f"{'dense-equivalent MACs/DSP/cycle':>31}  {'vs dense':>8}")
    for row in result["results"]:
        print(f"{row['mode']:<4}  {row['pattern']:>7}  {row['rows']:>5}  {row['tokens']:>6}  "
              f"{row['cycles']:>7}  {row['dense_macs_per_dsp_cycle']:>31.3f}  "
              f"{row['speedup']:>7.3f}x")
    write_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
