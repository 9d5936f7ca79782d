"""Build Amaranth components into Verilator models and run cocotb benches on them.

:func:`build` converts a component to Verilog and compiles it with Verilator once per distinct
design: the cache key is a hash of the generated Verilog, the Verilator version, the build flags
and the waveform format, so changing a parameter (or the generator) makes a new model and
nothing stale is ever reused. Builds are guarded by a file lock and marked complete only when
they finish, so an interrupted build is redone, never trusted.

:func:`run` runs a cocotb test module on a built model with an explicit seed, prints that seed,
and raises :class:`BenchFailure` (an :class:`AssertionError`, so pytest reports it as an ordinary
test failure) naming each failing cocotb test with its message.

Environment variables
---------------------
``FLIGHTGEN_SEED``
    Seed for every bench run (default: derived from the bench's name, so runs are repeatable).
    A failure message prints the seed it used; set this variable to reproduce it.
``FLIGHTGEN_WAVES``
    ``fst`` or ``vcd``: build with tracing and write a waveform next to the results.
``FLIGHTGEN_CACHE``
    Cache folder (default ``$XDG_CACHE_HOME/flightgen`` or ``~/.cache/flightgen``).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlightgenError
from .toolchain import find_verilator, fst_problem, verilator_env

__all__ = [
    "VERILATOR_WAIVERS",
    "BenchFailure",
    "BenchRecord",
    "VerilatorModel",
    "cache_dir",
    "resolve_seed",
    "waves_format",
    "build",
    "run",
    "build_harness",
]

#: Verilator warnings that Amaranth's Verilog trips and that are fatal by default. Each is a
#: property of the conversion, not of a design error:
#:
#: ``WIDTHEXPAND``/``WIDTHTRUNC``
#:     Yosys' ``write_verilog`` emits operands of mixed widths and relies on Verilog's implicit
#:     extension and truncation, whose semantics Amaranth already fixed exactly.
#: ``CASEINCOMPLETE``
#:     Amaranth ``Switch``/FSM processes become ``case`` statements without a ``default`` when
#:     the remaining values cannot occur.
VERILATOR_WAIVERS = ("-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE")

_WAVE_FORMATS = ("fst", "vcd")
#: Bench runs without an explicit ``test_dir`` go to ``<cache>/runs``; the most recent this many
#: are kept (logs, results, waveforms), older ones are deleted.
KEEP_RUNS = 50


class BenchFailure(AssertionError):
    """One or more cocotb tests failed (or the simulator died)."""


@dataclass(frozen=True)
class VerilatorModel:
    """A compiled Verilator model of one design.

    Members
    -------
    toplevel : str
        Verilog module name.
    build_dir : Path
        The cache folder that holds the executable and ``<toplevel>.v``.
    waves : str or None
        ``"fst"``, ``"vcd"`` or ``None`` (built without tracing).
    """

    toplevel: str
    build_dir: Path
    waves: str | None

    @property
    def verilog(self):
        """Path of the generated Verilog."""
        return self.build_dir / f"{self.toplevel}.v"


def cache_dir():
    """Return the root of flightgen's cache folder."""
    if os.environ.get("FLIGHTGEN_CACHE"):
        return Path(os.environ["FLIGHTGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flightgen"


def resolve_seed(name):
    """Return the seed for the bench run called ``name``.

    ``FLIGHTGEN_SEED`` wins when set; otherwise the seed is a stable hash of ``name``, so every
    run of the same bench is repeatable.
    """
    value = os.environ.get("FLIGHTGEN_SEED", "").strip()
    if value:
        try:
            return int(value, 0)
        except ValueError:
            raise FlightgenError(f"FLIGHTGEN_SEED must be an integer, not {value!r}") from None
    return zlib.crc32(name.encode())


def waves_format():
    """Return the waveform format requested by ``FLIGHTGEN_WAVES`` (``None`` if unset)."""
    value = os.environ.get("FLIGHTGEN_WAVES", "").strip().lower()
    if not value:
        return None
    if value not in _WAVE_FORMATS:
        raise FlightgenError(f"FLIGHTGEN_WAVES must be one of fst, vcd, not {value!r}")
    return value


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _activate(verilator):
    os.environ.update(verilator_env(verilator))


def build(component, toplevel, *, waves=None, log=print):
    """Convert ``component`` to Verilog and compile it with Verilator, once per design.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The design; its signature becomes the Verilog ports (``i_stream__payload``, ...).
    toplevel : str
        Verilog module name.
    waves : str or None
        ``"fst"`` or ``"vcd"`` to build with tracing. Defaults to ``FLIGHTGEN_WAVES``.
    log : callable
        Receives one line when a model is built and when a cached one is reused.

    Returns
    -------
    VerilatorModel
    """
    from amaranth.back import verilog  # deferred: conversion loads Yosys
    from cocotb_tools.runner import get_runner

    waves = waves if waves is not None else waves_format()
    if waves is not None and waves not in _WAVE_FORMATS:
        raise FlightgenError(f"waves must be one of fst, vcd, not {waves!r}")
    if waves == "fst" and fst_problem():
        raise FlightgenError(fst_problem())
    verilator = find_verilator()
    text = verilog.convert(component, name=toplevel, emit_src=False)
    build_args = list(VERILATOR_WAIVERS) + (["--trace-fst"] if waves == "fst" else [])
    key = hashlib.sha256(json.dumps({
        "verilog": text,
        "verilator": [verilator.version, str(verilator.executable)],
        "build_args": build_args,
        "waves": waves,
        "python": sys.version_info[:2],
    }, sort_keys=True).encode()).hexdigest()[:16]
    build_dir = cache_dir() / "verilator" / f"{toplevel}-{key}"
    model = VerilatorModel(toplevel, build_dir, waves)
    stamp = build_dir / "complete"

    with _locked(build_dir.with_name(build_dir.name + ".lock")):
        if stamp.is_file():
            stamp.touch()  # its last use (flightgen cache --prune)
            log(f"reusing Verilator model {build_dir}")
            return model
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        model.verilog.write_text(text)
        _activate(verilator)
        started = time.monotonic()
        log(f"building Verilator model {toplevel} in {build_dir} "
            f"(Verilator {verilator.version_str}, {verilator.source})")
        runner = get_runner("verilator")
        try:
            runner.build(
                sources=[model.verilog],
                hdl_toplevel=toplevel,
                build_dir=build_dir,
                build_args=build_args,
                timescale=("1ns", "1ps"),
                waves=waves is not None,
                log_file=build_dir / "build.log",
            )
        except (Exception, SystemExit) as error:
            tail = _tail(build_dir / "build.log")
            raise FlightgenError(
                f"Verilator build of {toplevel} failed ({error}); log: {build_dir / 'build.log'}"
                + (f"\n{tail}" if tail else "")) from None
        stamp.write_text(f"{time.monotonic() - started:.1f} s\n")
        log(f"built {toplevel} in {time.monotonic() - started:.1f} s")
    return model


def _prune(folder, keep):
    """Delete all but the ``keep`` most recent subfolders of ``folder``."""
    runs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:max(len(runs) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def build_harness(component, toplevel, harness, *, trace=False, log=print):
    """Compile ``component`` with a C++ ``main`` (no cocotb) into an executable, once per design.

    For exhaustive checks that need millions of cycles: ``harness`` is C++ source that drives
    the Verilated model ``V<toplevel>`` directly. With ``trace`` the model can write FST
    waveforms (Verilator ``--trace-fst``; the harness sees ``FG_TRACE`` defined); that build
    is slower to compile and to run, so it is a separate executable. Cached like
    :func:`build`, keyed by the Verilog, the harness, ``trace`` and the Verilator version.
    Returns the executable's path.
    """
    from amaranth.back import verilog  # deferred: conversion loads Yosys

    verilator = find_verilator()
    text = verilog.convert(component, name=toplevel, emit_src=False)
    key = hashlib.sha256(json.dumps({
        "verilog": text, "harness": harness, "waivers": VERILATOR_WAIVERS,
        "verilator": [verilator.version, str(verilator.executable)], "trace": trace,
    }, sort_keys=True).encode()).hexdigest()[:16]
    build_dir = cache_dir() / "harness" / f"{toplevel}{'-trace' if trace else ''}-{key}"
    executable = build_dir / "harness"
    with _locked(build_dir.with_name(build_dir.name + ".lock")):
        if (build_dir / "complete").is_file():
            (build_dir / "complete").touch()  # its last use (flightgen cache --prune)
            log(f"reusing harness {executable}")
            return executable
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        (build_dir / f"{toplevel}.v").write_text(text)
        (build_dir / "harness.cpp").write_text(harness)
        env = {**os.environ, **verilator_env(verilator)}
        command = [str(verilator.executable), "--cc", "--exe", "--build", "-j", "2", "-O3",
                   "-CFLAGS", "-O2", *VERILATOR_WAIVERS, "--top-module", toplevel,
                   *(["--trace-fst", "-CFLAGS", "-DFG_TRACE"] if trace else []),
                   "-Mdir", str(build_dir / "obj"), "-o", str(executable),
                   str(build_dir / "harness.cpp"), str(build_dir / f"{toplevel}.v")]
        started = time.monotonic()
        log(f"building harness {toplevel} in {build_dir}")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        (build_dir / "build.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            raise FlightgenError(f"Verilator build of the {toplevel} harness failed; log: "
                                 f"{build_dir / 'build.log'}\n{_tail(build_dir / 'build.log')}")
        (build_dir / "complete").write_text(f"{time.monotonic() - started:.1f} s\n")
    return executable


def _tail(path, lines=20):
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass(frozen=True)
class BenchRecord:
    """Outcome of one cocotb test.

    Members
    -------
    name : str
    failure : str or None
        The failure message, or ``None`` if the test passed.
    sim_time_ns : float
        Simulated time the test took (benches run a 10 ns clock).
    real_time_s : float
        Wall time the test took.
    """

    name: str
    failure: str | None
    sim_time_ns: float
    real_time_s: float


def _records(results_xml):
    """Return a :class:`BenchRecord` for each test in a cocotb results file."""
    records = []
    for case in ET.parse(results_xml).iter("testcase"):
        failure = None
        for bad in (*case.iter("failure"), *case.iter("error")):
            failure = bad.get("message") or (bad.text or "").strip() or bad.tag
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        records.append(BenchRecord(case.get("name", "?"), failure,
                                   float(properties.get("sim_time_duration") or 0),
                                   float(case.get("time") or 0)))
    return records


def run(model, test_module, *, name=None, seed=None, test_filter=None, extra_env=None,
        test_dir=None, log=print):
    """Run the cocotb tests of ``test_module`` on ``model``.

    Parameters
    ----------
    model : VerilatorModel
        From :func:`build`.
    test_module : str
        Dotted name of the cocotb test module (e.g. ``"flightgen.sim.benches.requant"``).
    name : str
        Names this run for seeding and output folders; defaults to ``test_module``.
    seed : int
        Overrides :func:`resolve_seed`.
    test_filter : str
        Regular expression: run only the cocotb tests whose names it matches.
    extra_env : dict
        Environment for the bench (e.g. the design parameters as JSON).
    test_dir : path
        Where results (and waveforms) go; defaults to a fresh folder under ``<cache>/runs``,
        of which the :data:`KEEP_RUNS` most recent are kept.
    log : callable
        Receives the seed line and where waveforms were written.

    Returns
    -------
    list of BenchRecord
        One per cocotb test that ran (all passed).

    Raises
    ------
    BenchFailure
        If any cocotb test failed or the simulator exited abnormally. The message names each
        failing test, its message, and how to reproduce it.
    """
    from cocotb_tools.runner import get_runner

    name = name or test_module
    seed = resolve_seed(name) if seed is None else seed
    log(f"cocotb seed {seed} for {name} (reproduce with FLIGHTGEN_SEED={seed})")
    if test_dir is None:
        runs = cache_dir() / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        _prune(runs, keep=KEEP_RUNS - 1)
        test_dir = Path(tempfile.mkdtemp(prefix=f"{model.toplevel}-", dir=runs))
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    results.unlink(missing_ok=True)

    _activate(find_verilator())
    runner = get_runner("verilator")
    exit_status = 0
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=model.toplevel,
            hdl_toplevel_lang="verilog",  # required when this runner did not do the build
            build_dir=model.build_dir,
            test_dir=test_dir,
            test_filter=test_filter,
            seed=seed,
            extra_env={k: str(v) for k, v in (extra_env or {}).items()},
            waves=model.waves is not None,
            results_xml=str(results.resolve()),
            log_file=test_dir / "sim.log",
        )
    except SystemExit as error:  # cocotb exits when a test fails under pytest
        exit_status = error.code if isinstance(error.code, int) else 1

    reproduce = f"reproduce with FLIGHTGEN_SEED={seed}; log: {test_dir / 'sim.log'}"
    if not results.is_file():
        raise BenchFailure(
            f"{name}: the simulator produced no results (exit status {exit_status}); {reproduce}"
            + f"\n{_tail(test_dir / 'sim.log')}")
    records = _records(results)
    failures = [record for record in records if record.failure is not None]
    if failures:
        lines = [f"{name}: {len(failures)} of {len(records)} cocotb tests failed (seed {seed}):"]
        lines += [f"  {record.name}: {record.failure}" for record in failures]
        lines.append(f"  {reproduce}")
        raise BenchFailure("\n".join(lines))
    if not records:
        raise BenchFailure(f"{name}: no cocotb test ran; {reproduce}")
    if exit_status:
        raise BenchFailure(f"{name}: simulator exited with status {exit_status}; {reproduce}")
    if model.waves is not None:
        log(f"waveform: {test_dir / ('dump.' + model.waves)}")
    return records
