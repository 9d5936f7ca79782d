"""The machine the instructions run on, and the ISA simulator: the numpy semantics of every
instruction, of the dispatcher, the queues and the tokens, exactly as the core implements them.

Machine state
-------------
* **HBM**: ``hbm_ports`` byte-addressed memories, one per AXI4 master of the core (each is one
  HBM pseudo-channel on the U280, reached through the host's pointer argument for that port).
* **On-chip buffers** (:class:`~flightgen.isa.instructions.Buffer`), arrays of **lines** of
  ``line_bits`` bits (the AXI data width):

  ========  ================================================================================
  ``VEC``   FX vectors: the SFU's operands and results, the matrix engine's outputs, the
            quantizer's inputs; and the SFU's parameter operands (norm weights, RoPE phases)
  ``ACT``   activation beats of the matrix engine (written by ``QUANT`` or ``LOAD``)
  ``WGT``   weight beats of the matrix engine
  ``META``  mask and scale beats of the matrix engine
  ========  ================================================================================

  A stream beat of ``B`` bits occupies ``ceil(B / line_bits)`` consecutive lines, low bits
  first (the rest of its last line is unused), and the next beat starts on the next line. The
  beats: a vector beat is ``lanes`` signed 32-bit values (``lanes = 2 vpus``; the elements past
  a vector's end are written as 0); a parameter beat (the ``b`` operand of RMSNORM,
  LAYERNORM and ROPE) ``lanes`` 48-bit entries (:mod:`flightgen.isa.vector`); the ``b`` of ADD
  and MUL is a vector; matrix-engine beats as in :mod:`flightgen.isa.matrix`.
* The matrix engine's **activation tile** (``lanes`` tokens of up to ``max_blocks`` blocks),
  kept between commands so that a command may reuse it (``load = 0``).
* The **length registers** ``r1`` .. ``r7``, set by the host, read-only to the program.

Execution
---------
The dispatcher reads instruction ``pc = 0, 1, ...``, **resolves** it (adaptive fields from the
registers) and **checks** it; a legal instruction goes to its unit's queue (``queue_depth``
entries; the dispatcher waits while it is full), ``SYS`` runs in the dispatcher. Each unit is
two processes joined by a queue of ``CoreConfig.flight(unit)`` entries: an **issuer** takes
the oldest instruction once every token it waits for is there and executes it; a
**releaser** takes executed instructions in order and releases their tokens. At most
``token_limit`` tokens wait between a pair of units (a release beyond that waits). These are
Kahn process networks with bounded channels, so the outcome does not depend on timing: the
simulator may run the units in any order and reaches the state the core reaches, provided
the program orders every pair of conflicting accesses with tokens or queue order.

Errors (:class:`ErrorCode`): an illegal instruction stops the dispatcher before it is
queued; an error during execution also stops the dispatcher. Queued instructions still run.
The run ends when nothing can progress; the core then reports ``done`` with the error of the
lowest ``pc`` (an error never hangs the core). With no error, the run ends after ``HALT`` once
every queue has drained; if units remain blocked on tokens that can never come, that is a
``DEADLOCK``, reported at the lowest ``pc`` among the blocked instructions.
"""

import zlib
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
from amaranth.lib import enum

from . import attention, special
from . import matrix as matrix_isa
from .instructions import (
    ADAPTIVE,
    OPCODE_UNIT,
    REGISTERS,
    WORD_BYTES,
    Buffer,
    Opcode,
    SysOp,
    Unit,
    decode_fields,
)
from .matrix import (
    BITS_CODES,
    KEEP_CODES,
    Geometry,
    MatrixMode,
    MatrixStreams,
    check_code_bits,
    check_keeps,
    check_modes,
)
from .numerics import ACT_GROUP, quantize_per_group, quantize_per_token
from .vector import B_IS_VECTOR, MAX_LENGTH, READS_B, VectorOp

__all__ = ["CoreConfig", "SIM_CORE", "ErrorCode", "IllegalInstruction", "Resolved", "resolve",
           "Machine", "RunResult", "TraceEntry", "HBM_SPAN", "BANKED", "written_spans",
           "resolve_program", "run_group", "striped_bytes"]

_LINE_BITS = (256, 512)


class ErrorCode(enum.Enum, shape=4):
    """The core's error register."""
    NONE = 0
    #: The opcode is not one of :class:`~flightgen.isa.instructions.Opcode`.
    ILLEGAL_OPCODE = 1
    #: A reserved bit is set, a field holds a value with no meaning (an unknown buffer,
    #: operation or code width, a token to the instruction's own unit, a port the core does not
    #: have, a zero count, a resolved value too wide for its field, a block count beyond the
    #: engine, a vector longer than the SFU).
    BAD_FIELD = 2
    #: The lines an instruction reads or writes run past the end of a buffer.
    BUFFER_RANGE = 3
    #: A ``LOAD`` address or stride is not a multiple of the line size.
    MISALIGNED = 4
    #: A matrix command's window mask does not keep exactly N of 16 columns.
    BAD_MASK = 5
    #: An AXI transfer got an error response (here: it reached past the end of a port's memory).
    AXI = 6
    #: Units wait for tokens that can never come.
    DEADLOCK = 7
    #: The dispatcher read past the end of the program without meeting ``HALT``.
    PROGRAM_END = 8
    #: A ``BARRIER``'s peers never arrived (the ISA simulator: no core of the group can move;
    #: the hardware: it waited ``BARRIER_TIMEOUT`` cycles).
    BARRIER = 9


@dataclass(frozen=True)
class CoreConfig:
    """Parameters of one core: everything the ISA's semantics depend on.

    Members
    -------
    line_bits : int
        AXI data width and buffer line width, 256 or 512.
    chain, vpus : int
        Matrix engine geometry (:class:`flightgen.isa.matrix.Geometry`); the SFU and the
        quantizer have ``2 vpus`` lanes.
    max_blocks : int
        Largest ``blocks`` of a matrix command (activation memory: ``32 max_blocks`` codes per
        token).
    vector_max : int
        Longest SFU vector.
    vec_lines, act_lines, wgt_lines, meta_lines : int
        Buffer depths in lines (powers of two).
    hbm_ports : int
        AXI4 masters toward HBM (1 to 32).
    queue_depth, token_limit : int
        Entries per unit queue; most tokens outstanding between two units.
    load_flight : int
        ``LOAD`` instructions the load unit may start before the oldest has released its
        tokens (consecutive loads overlap; every other unit runs one at a time).
    code_bits : tuple of int
        Weight code widths the matrix engine unpacks (8 always; 4, 2):
        :func:`flightgen.isa.matrix.check_code_bits`. A ``MATRIX`` with another is illegal.
    keeps : tuple of int
        Hardware keeps the matrix engine supports (16, dense, always; 8, 4, 2 for N:16):
        :func:`flightgen.isa.matrix.check_keeps`. A ``MATRIX`` with another keep is illegal.
    modes : tuple of str
        Matrix modes the engine supports (``"mv"`` always, ``"mm"``): a ``MATRIX`` in another
        mode is illegal. Without MM the engine keeps one token lane of activations.
    vector_lanes : int
        Datapath lanes of the vector unit's SFU, block and token quantizers and attention
        rescaler (the work of a few vectors per token), a power of two below ``2 vpus``; 0
        (the default): one per beat element, ``2 vpus``. A narrower datapath takes each beat
        in parts: the same results, more cycles (timing only; no instruction changes meaning).
    barrier : bool
        The core meets the other cores of a tensor-parallel group with ``BARRIER``, whose flags
        live on its last HBM port, the **exchange port** (the cores of a group share that
        channel). Without it a ``BARRIER`` is illegal.
    store_buffers : tuple of str
        The buffers a ``STORE`` may read (``"vec"``, ``"act"``, ``"wgt"``, ``"meta"``; by
        default all four): a ``STORE`` from another is illegal. Each one costs a read port,
        a copy of the buffer's memories (``WGT`` in UltraRAM above all).
    load_lanes : int
        Lines the load unit can move in one cycle (1, 2, 4 or 8, at most ``hbm_ports``, and a
        weight beat holds whole rows of them): the widest ``LOAD`` stripe and the banks of
        ``WGT`` and ``META`` (:data:`BANKED`; line ``l`` in bank ``l % load_lanes``). The
        matrix unit reads ``load_lanes`` weight lines a cycle, so a ``MATRIX``'s ``wgt`` is a
        multiple of ``load_lanes``.
    """

    line_bits: int = 256
    chain: int = 8
    vpus: int = 2
    max_blocks: int = 64
    vector_max: int = 256
    vec_lines: int = 1024
    act_lines: int = 256
    wgt_lines: int = 1024
    meta_lines: int = 256
    hbm_ports: int = 2
    queue_depth: int = 8
    token_limit: int = 15
    load_flight: int = 4
    keeps: tuple = (16, 8, 4, 2)
    code_bits: tuple = (8, 4, 2)
    modes: tuple = ("mv", "mm")
    vector_lanes: int = 0
    load_lanes: int = 1
    barrier: bool = False
    store_buffers: tuple = ("vec", "act", "wgt", "meta")

    def __post_init__(self):
        geometry = Geometry(self.chain, self.vpus)
        # normalised (a JSON list reads back as the same configuration)
        object.__setattr__(self, "keeps", check_keeps(self.keeps))
        object.__setattr__(self, "code_bits", check_code_bits(self.code_bits))
        object.__setattr__(self, "modes", tuple(m.name.lower()
                                                for m in check_modes(self.modes)))
        names = {b.name.lower(): b for b in Buffer}
        stored = self.store_buffers
        if (isinstance(stored, str) or not hasattr(stored, "__iter__") or not stored
                or any(name not in names for name in stored)):
            raise ValueError(f"store_buffers must name one or more of {', '.join(names)}, not "
                             f"{stored!r}")
        object.__setattr__(self, "store_buffers",
                           tuple(name for name in names if name in set(stored)))
        if self.line_bits not in _LINE_BITS:
            raise ValueError(f"line_bits must be 256 or 512, not {self.line_bits!r}")
        for name in ("vec_lines", "act_lines", "wgt_lines", "meta_lines"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value & (value - 1) or value > 1 << 16:
                raise ValueError(f"{name} must be a power of two from 1 to 65536, not {value!r}")
        if not isinstance(self.hbm_ports, int) or not 1 <= self.hbm_ports <= 32:
            raise ValueError(f"hbm_ports must be 1 to 32, not {self.hbm_ports!r}")
        row_blocks = geometry.row_codes // ACT_GROUP
        if (not isinstance(self.max_blocks, int) or self.max_blocks < row_blocks
                or self.max_blocks % row_blocks or self.max_blocks >= 1 << 16):
            raise ValueError(f"max_blocks must be a multiple of {row_blocks} below 65536, not "
                             f"{self.max_blocks!r}")
        if not isinstance(self.vector_max, int) or not 1 <= self.vector_max <= MAX_LENGTH:
            raise ValueError(f"vector_max must be 1 to {MAX_LENGTH}, not {self.vector_max!r}")
        if not isinstance(self.queue_depth, int) or not 1 <= self.queue_depth <= 256:
            raise ValueError(f"queue_depth must be 1 to 256, not {self.queue_depth!r}")
        if not isinstance(self.token_limit, int) or not 1 <= self.token_limit <= 255:
            raise ValueError(f"token_limit must be 1 to 255, not {self.token_limit!r}")
        if not isinstance(self.load_flight, int) or not 1 <= self.load_flight <= 4:
            raise ValueError(f"load_flight must be 1 to 4, not {self.load_flight!r}")
        if (not isinstance(self.vector_lanes, int) or self.vector_lanes < 0
                or self.vector_lanes == 1 or self.vector_lanes > self.lanes
                or self.vector_lanes & (self.vector_lanes - 1)):
            raise ValueError(f"vector_lanes must be 0 or a power of two from 2 to {self.lanes},"
                             f" not {self.vector_lanes!r}")
        widest = min(8, self.hbm_ports, geometry.weight_bits // self.line_bits, self.wgt_lines,
                     self.meta_lines)
        if (not isinstance(self.load_lanes, int) or not 1 <= self.load_lanes <= max(1, widest)
                or self.load_lanes & (self.load_lanes - 1)):
            raise ValueError(f"load_lanes must be a power of two from 1 to {max(1, widest)} (8, "
                             f"the HBM ports, the weight beat's lines, WGT's and META's lines), "
                             f"not {self.load_lanes!r}")

    def flight(self, unit):
        """Instructions a unit may have started and not yet released: ``load_flight`` for
        ``LOAD``, 1 for the others."""
        return self.load_flight if Unit(unit) == Unit.LOAD else 1

    @property
    def geometry(self):
        return Geometry(self.chain, self.vpus)

    @property
    def exchange_port(self):
        """The HBM port the cores of a tensor-parallel group share: the last one."""
        return self.hbm_ports - 1

    @property
    def max_peers(self):
        """Most cores a ``BARRIER`` can meet: 32-bit flags of one line, at most 8."""
        return min(8, self.line_bytes // 4)

    @property
    def lanes(self):
        return 2 * self.vpus

    @property
    def line_bytes(self):
        return self.line_bits // 8

    def lines(self, buffer):
        """Depth of ``buffer`` in lines."""
        return getattr(self, f"{Buffer(buffer).name.lower()}_lines")

    def beat_lines(self, bits):
        """Lines one beat of ``bits`` bits occupies."""
        return -(-bits // self.line_bits)

    def vector_lines(self, length, bits=32):
        """Lines a vector of ``length`` ``bits``-bit elements occupies (``lanes`` per beat,
        each beat on whole lines)."""
        return -(-length // self.lanes) * self.beat_lines(bits * self.lanes)

    @property
    def beat_bits(self):
        """Beat widths of the streams kept in buffers, by name."""
        g = self.geometry
        return {"vector": 32 * self.lanes, "operand": 48 * self.lanes, "act": g.act_bits,
                "weights": g.weight_bits, "masks": g.mask_bits, "scales": 32 * self.lanes,
                "out": 32 * self.lanes}

    @property
    def vector_datapath(self):
        """Lanes of the vector unit's datapaths: :attr:`vector_lanes`, or :attr:`lanes` when
        0."""
        return self.vector_lanes or self.lanes

    @property
    def stored(self):
        """:attr:`store_buffers` as :class:`~flightgen.isa.instructions.Buffer` values."""
        return tuple(Buffer[name.upper()] for name in self.store_buffers)

    @property
    def matrix_modes(self):
        """:attr:`modes` as :class:`~flightgen.isa.matrix.MatrixMode` values."""
        return check_modes(self.modes)

    def to_dict(self):
        out = {**asdict(self), "keeps": list(self.keeps), "modes": list(self.modes),
               "store_buffers": list(self.store_buffers), "code_bits": list(self.code_bits)}
        if not self.barrier:  # binaries of cores without the barrier read as before
            del out["barrier"]
        for name in ("store_buffers", "code_bits"):  # (nor those of every store and width)
            if getattr(self, name) == getattr(CoreConfig, name):
                del out[name]
        return out


#: The configuration the simulation tests build.
SIM_CORE = CoreConfig()

#: The buffers in ``load_lanes`` banks, which a striped ``LOAD`` may fill.
BANKED = (Buffer.WGT, Buffer.META)


class IllegalInstruction(Exception):
    """An instruction the dispatcher refuses: ``code`` (:class:`ErrorCode`) and a message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = ErrorCode(code)


@dataclass(frozen=True)
class Resolved:
    """A checked instruction with its adaptive fields resolved."""

    pc: int
    opcode: Opcode
    unit: Unit
    wait: int
    release: int
    fields: dict
    #: ``(buffer, first line, lines)`` read and written, for the trace and the checks.
    reads: tuple = ()
    writes: tuple = ()


def _field_widths():
    from .instructions import fields
    return {op: {name.removeprefix("header."): width for name, _, width in fields(op)}
            for op in Opcode}


_WIDTHS = _field_widths()


def _span(config, buffer, line, beats, bits):
    """``(buffer, line, lines)`` of ``beats`` beats of ``bits`` bits from ``line``, checked."""
    lines = beats * config.beat_lines(bits)
    if line + lines > config.lines(buffer):
        raise IllegalInstruction(ErrorCode.BUFFER_RANGE,
                                 f"lines {line} to {line + lines - 1} of {buffer.name} are past "
                                 f"its {config.lines(buffer)} lines")
    return (buffer, line, lines)


def resolve(config, word, registers=(0,) * (REGISTERS - 1), pc=0):
    """Decode, resolve and check one instruction word the way the dispatcher does.

    Returns a :class:`Resolved`; raises :class:`IllegalInstruction` with the error code the
    core reports.
    """
    opcode, f = decode_fields(word)
    if opcode is None:
        raise IllegalInstruction(ErrorCode.ILLEGAL_OPCODE, f"illegal opcode {word & 0xF}")
    name = opcode.name.lower()

    def bad(message):
        raise IllegalInstruction(ErrorCode.BAD_FIELD, f"{name}: {message}")

    if f["spare"] or f["reserved"]:
        bad("reserved bits are set")
    unit = OPCODE_UNIT[opcode]
    own = 1 << unit.value
    if (f["wait"] | f["release"]) & own:
        bad(f"a {unit.name} instruction cannot wait for or release to its own unit")
    value = 0 if f["reg"] == 0 else int(registers[f["reg"] - 1])
    for adaptive in ADAPTIVE[opcode]:
        total = f[adaptive] + f.pop(f"{adaptive}_mul") * value
        if total >= 1 << _WIDTHS[opcode][adaptive]:
            bad(f"{adaptive} = {total} (with r{f['reg']} = {value}) does not fit its "
                f"{_WIDTHS[opcode][adaptive]} bits")
        f[adaptive] = total
    reads, writes = (), ()
    beats = config.beat_bits
    if opcode in (Opcode.LOAD, Opcode.STORE):
        if f["buffer"] not in {b.value for b in Buffer}:
            bad(f"unknown buffer {f['buffer']}")
        buffer = Buffer(f["buffer"])
        if opcode == Opcode.STORE and buffer not in config.stored:
            bad(f"the store unit reads {', '.join(b.name for b in config.stored)}, not "
                f"{buffer.name}")
        if f["port"] >= config.hbm_ports:
            bad(f"port {f['port']} but the core has {config.hbm_ports} HBM ports")
        if f["count2"] == 0 or f["count3"] == 0:
            bad("count2 and count3 must be at least 1")
        stripe = 1 << f["stripe"]
        if stripe > 1:
            if stripe > config.load_lanes:
                bad(f"a stripe of {stripe} ports but the load unit takes "
                    f"{config.load_lanes} line(s) a cycle")
            if opcode == Opcode.LOAD and buffer not in BANKED:
                bad(f"only WGT and META are banked for striped loads, not {buffer.name}")
            for key in ("port", "line", "length") if opcode == Opcode.LOAD else ("port",):
                if f[key] % stripe:
                    bad(f"{key} = {f[key]} is not a multiple of the stripe {stripe}")
            if f["port"] + stripe > config.hbm_ports:
                bad(f"ports {f['port']} to {f['port'] + stripe - 1} but the core has "
                    f"{config.hbm_ports} HBM ports")
        if opcode == Opcode.LOAD:
            step = config.line_bytes
            for key in ("addr", "stride2", "stride3"):
                if f[key] % step:
                    raise IllegalInstruction(ErrorCode.MISALIGNED,
                                             f"load: {key} = {f[key]:#x} is not a multiple of "
                                             f"the {step}-byte line")
            lines = f["length"] * f["count2"] * f["count3"]
            writes = (_span(config, buffer, f["line"], lines, config.line_bits),)
        else:
            total = f["length"] * f["count2"] * f["count3"]
            reads = (_span(config, buffer, f["line"], -(-total // config.line_bytes),
                           config.line_bits),)
    elif opcode == Opcode.MATRIX:
        if f["bits"] not in BITS_CODES.values():
            bad(f"unknown code width {f['bits']}")
        bits = {code: bits for bits, code in BITS_CODES.items()}[f["bits"]]
        if bits not in config.code_bits:
            bad(f"the engine unpacks INT{', INT'.join(map(str, config.code_bits))} codes, not "
                f"INT{bits}")
        keep = {code: keep for keep, code in KEEP_CODES.items()}[f["keep"]]
        if keep not in config.keeps:
            bad(f"the engine runs N:16 for N in {', '.join(map(str, config.keeps))}, not "
                f"{keep}:16")
        if MatrixMode(f["mode"]) not in config.matrix_modes:
            bad(f"the engine has no {MatrixMode(f['mode']).name} mode")
        if f["blocks"] > config.max_blocks:
            bad(f"{f['blocks']} blocks but the engine holds {config.max_blocks}")
        if f["wgt"] % config.load_lanes:
            bad(f"wgt = {f['wgt']} is not a multiple of WGT's {config.load_lanes} banks")
        if f["blocks"] and f["groups"]:
            s = MatrixStreams(config.geometry, f)
            reads = tuple(_span(config, buffer, f[key], count, beats[stream])
                          for buffer, key, count, stream in (
                              (Buffer.ACT, "act", s.act, "act"),
                              (Buffer.WGT, "wgt", s.weights, "weights"),
                              (Buffer.META, "mask", s.masks, "masks"),
                              (Buffer.META, "scale", s.scales, "scales")) if count)
            writes = (_span(config, Buffer.VEC, f["out"], s.out, beats["out"]),)
    elif opcode == Opcode.VECTOR:
        op = VectorOp(f["op"])
        if f["length"] > config.vector_max:
            bad(f"length {f['length']} but the SFU holds {config.vector_max}")
        if op == VectorOp.ROPE and f["length"] % 2:
            bad(f"RoPE rotates pairs: the length must be even, not {f['length']}")
        if f["length"]:
            count = -(-f["length"] // config.lanes)
            reads = (_span(config, Buffer.VEC, f["a"], count, beats["vector"]),)
            if op in READS_B:
                kind = "vector" if op in B_IS_VECTOR else "operand"
                reads += (_span(config, Buffer.VEC, f["b"], count, beats[kind]),)
            writes = (_span(config, Buffer.VEC, f["out"], count, beats["vector"]),)
    elif opcode == Opcode.QUANT:
        if f["length"] > config.max_blocks * ACT_GROUP:
            bad(f"length {f['length']} but the engine holds {config.max_blocks * ACT_GROUP}")
        if f["length"]:
            reads = (_span(config, Buffer.VEC, f["src"], -(-f["length"] // config.lanes),
                           beats["vector"]),)
            writes = (_span(config, Buffer.ACT, f["dst"],
                            -(-f["length"] // config.geometry.row_codes), beats["act"]),)
    elif opcode == Opcode.TOKEN:
        if f["length"] > config.max_blocks * ACT_GROUP:
            bad(f"length {f['length']} but the engine holds {config.max_blocks * ACT_GROUP}")
        if f["length"]:
            count = -(-f["length"] // config.lanes)
            acts = -(-f["length"] // config.geometry.row_codes)
            reads = (_span(config, Buffer.VEC, f["src"], count, beats["vector"]),)
            writes = (_span(config, Buffer.ACT, f["dst"], acts, beats["act"]),
                      _span(config, Buffer.VEC, f["scale"], 1, beats["vector"]))
            if f["fold"]:
                reads += (_span(config, Buffer.VEC, f["sc"], count, beats["vector"]),)
                writes += (_span(config, Buffer.ACT, f["lo"], acts, beats["act"]),)
    elif opcode == Opcode.RESCALE:
        if f["length"]:
            count = -(-f["length"] // config.lanes)
            reads = tuple(_span(config, Buffer.VEC, f[key], n, beats["vector"])
                          for key, n in (("x", count), ("y", count), ("a", 1)))
            writes = (_span(config, Buffer.VEC, f["out"], count, beats["vector"]),)
    elif f["op"] not in {o.value for o in SysOp}:
        bad(f"unknown operation {f['op']}")
    elif f["op"] == SysOp.BARRIER.value:
        if not config.barrier:
            bad("the core has no barrier (it is not part of a tensor-parallel group)")
        if not 1 <= f["peers"] <= config.max_peers:
            bad(f"peers = {f['peers']}: a barrier meets 1 to {config.max_peers} cores")
        if f["slot"] >= f["peers"]:
            bad(f"slot {f['slot']} but the barrier meets {f['peers']} cores")
        if f["addr"] % config.line_bytes:
            raise IllegalInstruction(ErrorCode.MISALIGNED,
                                     f"sys: barrier addr = {f['addr']:#x} is not a multiple of "
                                     f"the {config.line_bytes}-byte line")
        f["port"] = config.exchange_port  # where the flags live (not an encoded field)
    elif f["peers"] or f["slot"] or f["addr"] or f["value"]:
        bad(f"{SysOp(f['op']).name.lower()} has no operands (peers, slot, addr, value are 0)")
    return Resolved(pc, opcode, unit, f["wait"], f["release"], f, reads, writes)


@dataclass(frozen=True)
class TraceEntry:
    """One executed instruction: ``pc``, its unit, and the CRC-32 of what it wrote
    (:meth:`Machine.written_crc`), so two executions compare instruction by instruction."""

    pc: int
    unit: Unit
    opcode: Opcode
    crc: int


@dataclass
class RunResult:
    """Outcome of :meth:`Machine.run`."""

    error: ErrorCode = ErrorCode.NONE
    error_pc: int = 0
    message: str = ""
    #: Instructions executed, in the order the simulator ran them (per unit, program order).
    trace: list = field(default_factory=list)

    def unit_trace(self, unit):
        """The trace entries of one unit, in its (program) order."""
        return [e for e in self.trace if e.unit == Unit(unit)]


class Machine:
    """Machine state and the ISA simulator.

    Parameters
    ----------
    config : CoreConfig
    hbm_bytes : int
        Size of each port's memory (an access past it is an AXI error).
    """

    def __init__(self, config=SIM_CORE, hbm_bytes=1 << 20):
        self.config = config
        self.hbm = [np.zeros(hbm_bytes, np.uint8) for _ in range(config.hbm_ports)]
        self.buffers = {b: np.zeros((config.lines(b), config.line_bytes), np.uint8)
                        for b in Buffer}
        g = config.geometry
        self.tile = np.zeros((config.lanes, config.max_blocks * ACT_GROUP // g.row_codes,
                              -(-g.act_bits // 8)), np.uint8)

    # -- buffer access -----------------------------------------------------------------------

    def read_beats(self, buffer, line, beats, bits):
        """``beats`` beats of ``bits`` bits from ``line``: bytes, each beat ``ceil(bits / 8)``
        of them."""
        per = self.config.beat_lines(bits)
        if beats == 0:
            return b""
        rows = self.buffers[Buffer(buffer)][line:line + beats * per]
        return rows.reshape(beats, -1)[:, :-(-bits // 8)].tobytes()

    def write_beats(self, buffer, line, data, bits):
        """Write beats (bytes, ``ceil(bits / 8)`` each) from ``line``; each beat's unused
        bytes become 0."""
        per, size = self.config.beat_lines(bits), -(-bits // 8)
        data = np.frombuffer(bytes(data), np.uint8).reshape(-1, size)
        rows = np.zeros((len(data), per * self.config.line_bytes), np.uint8)
        rows[:, :size] = data
        self.buffers[Buffer(buffer)][line:line + len(data) * per] = rows.reshape(
            -1, self.config.line_bytes)

    def put_beats(self, buffer, line, beats, bits):
        """Write beats given as integers (e.g. the ``beats`` of a
        :class:`~flightgen.isa.matrix.MatrixOperation`) from ``line``."""
        size = -(-bits // 8)
        self.write_beats(buffer, line, b"".join(int(b).to_bytes(size, "little") for b in beats),
                         bits)

    def write_vector(self, line, values, bits=32):
        """Write integers as vector beats (``lanes`` per beat, the tail 0) from ``line``."""
        lanes = self.config.lanes
        values = np.asarray(values, dtype=np.int64)
        padded = np.zeros(-(-len(values) // lanes) * lanes, np.int64)
        padded[:len(values)] = values
        data = _pack(padded, bits)
        self.write_beats(Buffer.VEC, line, data, bits * lanes)

    def read_vector(self, line, length, bits=32):
        """Read ``length`` signed ``bits``-bit vector elements from ``line``."""
        lanes = self.config.lanes
        beats = -(-length // lanes)
        data = self.read_beats(Buffer.VEC, line, beats, bits * lanes)
        return _unpack(data, bits, beats * lanes)[:length]

    # -- execution ---------------------------------------------------------------------------

    def execute(self, instruction):
        """Execute one resolved instruction; return ``(error, crc)`` with the
        :meth:`written_crc` of what it wrote."""
        error = self._execute(instruction)
        return error, self.written_crc(instruction)

    def written_crc(self, instruction):
        """CRC-32 of what ``instruction`` wrote, as it now stands: the bytes of every span of
        :func:`written_spans`, in order (0 for an instruction that writes nothing, or a
        ``STORE`` past its port's memory, which writes nothing). The RTL harness computes
        the same at each retirement (``flightgen.sim.harness``), so two executions compare
        instruction by instruction."""
        crc = 0
        for kind, start, size in written_spans(instruction):
            if kind >= HBM_SPAN:
                memory = self.hbm[kind - HBM_SPAN]
                if start + size > len(memory):
                    return 0
                crc = zlib.crc32(memory[start:start + size], crc)
            else:
                crc = zlib.crc32(self.buffers[Buffer(kind)][start:start + size], crc)
        return crc

    def _execute(self, instruction):
        op, f = instruction.opcode, instruction.fields
        if op == Opcode.LOAD:
            return self._load(f)
        if op == Opcode.STORE:
            return self._store(f)
        if op == Opcode.MATRIX:
            return self._matrix(f) if f["blocks"] and f["groups"] else ErrorCode.NONE
        if f.get("length"):
            run = {Opcode.VECTOR: self._vector, Opcode.QUANT: self._quant,
                   Opcode.TOKEN: self._token, Opcode.RESCALE: self._rescale}.get(op)
            if run is not None:
                run(f)
        return ErrorCode.NONE

    def _load(self, f):
        c = self.config
        stripe = 1 << f["stripe"]
        # a striped row: line i from port port + i % stripe, line i // stripe of its share
        row = f["length"] // stripe * c.line_bytes
        starts = _row_addresses(f)
        if row == 0:
            return ErrorCode.NONE
        memories = self.hbm[f["port"]:f["port"] + stripe]
        if any(int(starts.max()) + row > len(memory) for memory in memories):
            return ErrorCode.AXI
        offsets = starts[:, None] + np.arange(row)[None, :]
        shares = [memory[offsets].reshape(len(starts), -1, c.line_bytes) for memory in memories]
        data = np.stack(shares, axis=2).reshape(-1, c.line_bytes)
        buffer = self.buffers[Buffer(f["buffer"])]
        buffer[f["line"]:f["line"] + len(data)] = data
        return ErrorCode.NONE

    def _store(self, f):
        c = self.config
        starts = _row_addresses(f)
        row = f["length"]
        if row == 0:
            return ErrorCode.NONE
        total = row * len(starts)
        ports, addresses = striped_bytes((starts[:, None] + np.arange(row)[None, :]).ravel(),
                                         f["stripe"], c.line_bytes)
        ports += f["port"]
        if any(int(addresses[ports == p].max(initial=-1)) >= len(self.hbm[p])
               for p in np.unique(ports)):
            return ErrorCode.AXI
        lines = -(-total // c.line_bytes)
        source = self.buffers[Buffer(f["buffer"])][f["line"]:f["line"] + lines].ravel()[:total]
        for p in np.unique(ports):
            here = ports == p
            self.hbm[p][addresses[here]] = source[here]
        return ErrorCode.NONE

    def _matrix(self, f):
        c, g = self.config, self.config.geometry
        s = MatrixStreams(g, f)
        bits = c.beat_bits
        if f["load"]:
            data = np.frombuffer(self.read_beats(Buffer.ACT, f["act"], s.act, g.act_bits),
                                 np.uint8).reshape(s.tokens, s.act_per_token, -1)
            self.tile[:s.tokens, :s.act_per_token] = data
        act = self.tile[:s.tokens, :s.act_per_token].tobytes()
        weights = self.read_beats(Buffer.WGT, f["wgt"], s.weights, bits["weights"])
        masks = self.read_beats(Buffer.META, f["mask"], s.masks, bits["masks"])
        scales = self.read_beats(Buffer.META, f["scale"], s.scales, bits["scales"])
        out, bad = matrix_isa.execute(g, f, act, weights, masks, scales)
        self.write_beats(Buffer.VEC, f["out"], _pack(out.ravel(), 32), bits["out"])
        return ErrorCode.BAD_MASK if bad else ErrorCode.NONE

    def _vector(self, f):
        op, n = VectorOp(f["op"]), f["length"]
        a = self.read_vector(f["a"], n)
        valid = min(f["valid"], n)
        if op in B_IS_VECTOR:
            value = self.read_vector(f["b"], n)
        elif op in READS_B:
            entries = self.read_vector(f["b"], n, 48)
            value = _signed(entries & 0xFFFFFFFF, 32)
            weight = _signed(entries >> 32 & 0xFFFF, 16)
        if op == VectorOp.ADD:
            out = special.add(a, value)
        elif op == VectorOp.MUL:
            out = special.mul(a, value)
        elif op == VectorOp.SILU:
            out = special.silu(a)
        elif op == VectorOp.GELU:
            out = special.gelu(a)
        elif op == VectorOp.SOFTMAX:
            out = special.softmax(a, np.arange(n) < valid)
        elif op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
            frac = f["frac"] - ((f["frac"] >> 7) << 8)
            if op == VectorOp.RMSNORM:
                out = special.rms_norm_fixed(a, weight, frac, f["eps"])
            else:
                out = special.layer_norm_fixed(a, weight, frac, value, f["eps"])
        else:
            phases = value[0::2] & 0xFFFFFFFF
            out = special.rope(a[None], [f["position"]], phases)[0]
        self.write_vector(f["out"], out)

    def _quant(self, f):
        g = self.config.geometry
        n = f["length"]
        beats = -(-n // g.row_codes)
        values = np.zeros(beats * g.row_codes, np.int64)
        values[:n] = self.read_vector(f["src"], n)
        codes, (mult, exp) = quantize_per_group(values)
        self._write_act(f["dst"], codes, mult, exp)

    def _write_act(self, line, codes, mult, exp):
        """Write codes (a whole number of activation beats) and their block scales to
        ``ACT`` from ``line``."""
        g = self.config.geometry
        beats = len(codes) // g.row_codes
        per_beat = g.row_codes // ACT_GROUP
        data = bytearray()
        for beat in range(beats):
            chunk = codes[beat * g.row_codes:(beat + 1) * g.row_codes].astype(np.uint8).tobytes()
            blocks = slice(beat * per_beat, (beat + 1) * per_beat)
            scales = (mult[blocks] & 0xFFFF) | ((exp[blocks] & 0xFF) << 16)
            data += chunk + _pack(scales, 24)
        self.write_beats(Buffer.ACT, line, bytes(data), g.act_bits)

    def _token(self, f):
        g = self.config.geometry
        n = f["length"]
        values = self.read_vector(f["src"], n)
        if f["fold"]:
            words = self.read_vector(f["sc"], n)
            values = attention.fold(values, _scale_word(words))
            codes, (mult, exp) = attention.weight_codes(values)
            halves = attention.split(codes)
        else:
            codes, (mult, exp) = quantize_per_token(values)
            halves = (codes,)
        padded = -(-n // g.row_codes) * g.row_codes
        zeros = np.zeros(padded // ACT_GROUP, np.int64)
        for line, half in zip((f["dst"], f["lo"])[:len(halves)], halves, strict=True):
            codes = np.zeros(padded, np.int64)
            codes[:n] = half
            self._write_act(line, codes, zeros, zeros)
        word = (int(mult) & 0xFFFF) | ((int(exp) & 0xFF) << 16)
        self.write_vector(f["scale"], [word])

    def _rescale(self, f):
        n = f["length"]
        x, y = self.read_vector(f["x"], n), self.read_vector(f["y"], n)
        a = _scale_word(self.read_vector(f["a"], 1)[0])
        if not f["output"]:
            c = (f["c_mult"], f["c_exp"] - ((f["c_exp"] >> 7) << 8))
            out = attention.scores(x, a, _scale_word(y), c)
        else:
            out = attention.output(attention.combine(x, y), a)
        self.write_vector(f["out"], out)

    # -- the dispatcher, queues and tokens ---------------------------------------------------

    def run(self, program, registers=(0,) * (REGISTERS - 1), max_instructions=1 << 24):
        """Run ``program`` (bytes, 32 per instruction, or a list of words) to the end.

        Returns a :class:`RunResult`. A ``BARRIER`` that waits for other cores ends the run
        with :attr:`ErrorCode.BARRIER` (a group runs with :func:`run_group`).
        """
        return _drive([self._run(program, registers, max_instructions)])[0]

    def _arrive(self, instruction):
        """A ``BARRIER`` writes its flag: the error code."""
        f = instruction.fields
        memory = self.hbm[f["port"]]
        if f["addr"] + self.config.line_bytes > len(memory):
            return ErrorCode.AXI
        at = f["addr"] + 4 * f["slot"]
        memory[at:at + 4] = np.frombuffer(int(f["value"]).to_bytes(4, "little"), np.uint8)
        return ErrorCode.NONE

    def _flags_met(self, instruction):
        """Whether every peer's flag of a ``BARRIER`` has reached its value."""
        f = instruction.fields
        at = f["addr"]
        flags = self.hbm[f["port"]][at:at + 4 * f["peers"]].view("<u4")
        return bool((flags >= f["value"]).all())

    def _run(self, program, registers, max_instructions):
        """The run as a generator: it yields (whether it moved since its last yield) when
        only a ``BARRIER`` waiting for its peers is left to move; sending True resumes it,
        False ends the barrier with :attr:`ErrorCode.BARRIER`. Returns the
        :class:`RunResult`."""
        words = _words(program)
        c = self.config
        registers = tuple(int(r) & 0xFFFFFFFF for r in registers)
        if len(registers) != REGISTERS - 1:
            raise ValueError(f"expected {REGISTERS - 1} length registers, not {len(registers)}")
        units = [u for u in Unit if u != Unit.SYS]
        queues = {u: deque() for u in units}
        tokens = np.zeros((len(Unit), len(Unit)), np.int64)  # [source, destination]
        pending = {u: None for u in Unit}  # an executed instruction still releasing
        flight = {u: deque() for u in units}  # executed, not yet releasing
        result = RunResult()
        errors = []
        pc, dispatching, sys_current, arrived = 0, True, None, False

        def can_take(waits, unit):
            return all(tokens[s, unit.value] > 0 for s in range(len(Unit)) if waits >> s & 1)

        def take(waits, unit):
            for s in range(len(Unit)):
                if waits >> s & 1:
                    tokens[s, unit.value] -= 1

        def try_release(unit):
            instruction = pending[unit]
            left = instruction.release
            for d in range(len(Unit)):
                if left >> d & 1 and tokens[unit.value, d] < c.token_limit:
                    tokens[unit.value, d] += 1
                    left &= ~(1 << d)
            pending[unit] = None if left == 0 else _with_release(instruction, left)
            return left != instruction.release

        executed = 0
        moved = False
        while True:
            progress = False
            # the dispatcher
            if pending[Unit.SYS] is not None:
                progress |= try_release(Unit.SYS)
            while dispatching and pending[Unit.SYS] is None:
                if sys_current is None:
                    if pc >= len(words):
                        errors.append((pc, ErrorCode.PROGRAM_END, "no HALT before the end"))
                        dispatching = False
                        break
                    try:
                        instruction = resolve(c, words[pc], registers, pc)
                    except IllegalInstruction as error:
                        errors.append((pc, error.code, str(error)))
                        dispatching = False
                        break
                    if instruction.unit != Unit.SYS:
                        if len(queues[instruction.unit]) >= c.queue_depth:
                            break
                        queues[instruction.unit].append(instruction)
                        pc += 1
                        progress = True
                        continue
                    sys_current = instruction
                    pc += 1
                    progress = True
                barrier = sys_current.fields["op"] == SysOp.BARRIER.value
                if not arrived:
                    if not can_take(sys_current.wait, Unit.SYS):
                        break
                    take(sys_current.wait, Unit.SYS)
                    progress = True
                if barrier and not arrived:
                    arrived = True
                    error = self._arrive(sys_current)
                    if error != ErrorCode.NONE:
                        errors.append((sys_current.pc, error, "sys: barrier: axi"))
                        sys_current, arrived, dispatching = None, False, False
                        break
                if barrier and not self._flags_met(sys_current):
                    break
                arrived = False
                result.trace.append(TraceEntry(sys_current.pc, Unit.SYS, Opcode.SYS,
                                               self.written_crc(sys_current)))
                if sys_current.fields["op"] == SysOp.HALT.value:
                    dispatching = False
                pending[Unit.SYS] = sys_current if sys_current.release else None
                sys_current = None
                progress = True
                if pending[Unit.SYS] is not None:
                    try_release(Unit.SYS)
            # the units: an issuer (waits for tokens, executes) and a releaser (in order)
            for unit in units:
                while True:
                    if pending[unit] is not None:
                        progress |= try_release(unit)
                        if pending[unit] is not None:
                            break
                    if not flight[unit]:
                        break
                    instruction, crc = flight[unit].popleft()
                    result.trace.append(TraceEntry(instruction.pc, unit, instruction.opcode, crc))
                    progress = True
                    if instruction.release:
                        pending[unit] = instruction
                queue = queues[unit]
                while (queue and len(flight[unit]) < c.flight(unit)
                       and can_take(queue[0].wait, unit)):
                    instruction = queue.popleft()
                    take(instruction.wait, unit)
                    error, crc = self.execute(instruction)
                    executed += 1
                    flight[unit].append((instruction, crc))
                    if error != ErrorCode.NONE:
                        errors.append((instruction.pc, error, f"{instruction.opcode.name.lower()}"
                                       f": {error.name.lower().replace('_', ' ')}"))
                        dispatching = False
                    progress = True
            if executed > max_instructions:
                raise RuntimeError(f"more than {max_instructions} instructions executed")
            moved |= progress
            if not progress:
                if arrived:  # only the barrier can move: the peers must
                    go_on = yield moved
                    moved = False
                    if not go_on:
                        errors.append((sys_current.pc, ErrorCode.BARRIER,
                                       "sys: barrier: the other cores of the group never "
                                       "arrived"))
                        sys_current, arrived, dispatching = None, False, False
                    continue
                break
        blocked = [q[0].pc for q in queues.values() if q]
        blocked += [i.pc for i in pending.values() if i is not None]
        if sys_current is not None:
            blocked.append(sys_current.pc)
        if not errors and blocked:
            errors.append((min(blocked), ErrorCode.DEADLOCK, "units wait for tokens that can "
                           "never come"))
        if errors:
            result.error_pc, result.error, result.message = min(errors, key=lambda e: e[0])
        return result


def run_group(machines, programs, registers=(0,) * (REGISTERS - 1), max_instructions=1 << 24):
    """Run the cores of a tensor-parallel group together: ``programs[i]`` on
    ``machines[i]``, each machine's exchange port (its last ``hbm`` memory) the same array.
    Returns their :class:`RunResult` s.

    The cores run by turns, each until only a ``BARRIER`` waiting for its peers is left to
    move; when a whole round moves nobody, the waiting barriers end with
    :attr:`ErrorCode.BARRIER`. The outcome does not depend on the turns when every
    exchange through HBM is ordered by barriers (the compiler's contract)."""
    exchange = {id(m.hbm[m.config.exchange_port]) for m in machines}
    if len(exchange) != 1:
        raise ValueError("the cores of a group must share their exchange port's memory")
    return _drive([m._run(p, registers, max_instructions)
                   for m, p in zip(machines, programs, strict=True)])


def _drive(runs):
    """Run the generators of :meth:`Machine._run` by turns; their results."""
    results = [None] * len(runs)
    alive = {}
    for index, run in enumerate(runs):
        try:
            next(run)
            alive[index] = run
        except StopIteration as stop:
            results[index] = stop.value
    go_on = True
    while alive:
        moved = False
        for index in list(alive):
            try:
                moved |= alive[index].send(go_on)
            except StopIteration as stop:
                results[index] = stop.value
                del alive[index]
                moved = True
        go_on = moved
    return results


#: The kind of a :func:`written_spans` span on HBM port ``p`` is ``HBM_SPAN + p``; a buffer's
#: is its :class:`~flightgen.isa.instructions.Buffer` value.
HBM_SPAN = 16


def written_spans(instruction):
    """What a resolved instruction writes, in order: ``(kind, start, size)`` spans, each a
    buffer (``kind`` its :class:`Buffer` value; ``size`` whole lines from line ``start``) or
    HBM port ``kind - HBM_SPAN`` (``size`` bytes from byte ``start``: every row of a
    ``STORE``'s pattern). The one definition of an instruction's result that
    :meth:`Machine.written_crc` and the RTL harness's ``--check`` share."""
    if instruction.opcode == Opcode.STORE:
        f = instruction.fields
        if not f["length"]:
            return []
        return [(HBM_SPAN + f["port"], int(a), f["length"]) for a in _row_addresses(f)]
    if instruction.opcode == Opcode.SYS and instruction.fields["op"] == SysOp.BARRIER.value:
        f = instruction.fields
        return [(HBM_SPAN + f["port"], f["addr"] + 4 * f["slot"], 4)]
    return [(Buffer(b).value, line, lines) for b, line, lines in instruction.writes]


def striped_bytes(addresses, stripe, line_bytes):
    """Where the logical byte ``addresses`` (an array) of a region striped over ``2**stripe``
    ports live: ``(port offsets, byte addresses on those ports)``. Line ``l`` of the region is
    line ``l >> stripe`` of port offset ``l % 2**stripe`` (what a striped ``LOAD`` reads)."""
    addresses = np.asarray(addresses, np.int64)
    lines, within = np.divmod(addresses, line_bytes)
    return lines & ((1 << stripe) - 1), (lines >> stripe) * line_bytes + within


def _row_addresses(f):
    """Start byte of every row of a LOAD/STORE pattern, in order."""
    i3, i2 = np.meshgrid(np.arange(f["count3"]), np.arange(f["count2"]), indexing="ij")
    return (f["addr"] + i3 * f["stride3"] + i2 * f["stride2"]).ravel().astype(np.int64)


def resolve_program(config, program, registers=(0,) * (REGISTERS - 1), *, until_illegal=False):
    """The resolved instructions of ``program`` (bytes or words) in program order, to its
    first ``HALT`` (included): what the dispatcher passes on. An illegal word raises
    :class:`IllegalInstruction`, or with ``until_illegal`` ends the sequence (the dispatcher
    stops there)."""
    for pc, word in enumerate(_words(program)):
        try:
            instruction = resolve(config, word, registers, pc)
        except IllegalInstruction:
            if until_illegal:
                return
            raise
        yield instruction
        if instruction.opcode == Opcode.SYS and instruction.fields["op"] == SysOp.HALT.value:
            return


def _with_release(instruction, release):
    return Resolved(instruction.pc, instruction.opcode, instruction.unit, instruction.wait,
                    release, instruction.fields, instruction.reads, instruction.writes)


def _words(program):
    if isinstance(program, (bytes, bytearray, memoryview)):
        program = bytes(program)
        if len(program) % WORD_BYTES:
            raise ValueError(f"a program is a whole number of {WORD_BYTES}-byte words, not "
                             f"{len(program)} bytes")
        return [int.from_bytes(program[i:i + WORD_BYTES], "little")
                for i in range(0, len(program), WORD_BYTES)]
    return [int(w) for w in program]


def _scale_word(words):
    """``(mult, exp)`` of scale words: ``mult`` in bits 0-15, ``exp`` (signed) in bits 16-23."""
    words = np.asarray(words, dtype=np.int64)
    return words & 0xFFFF, _signed(words >> 16 & 0xFF, 8)


def _signed(values, bits):
    values = np.asarray(values, dtype=np.int64)
    return values - ((values >> (bits - 1) & 1) << bits)


def _pack(values, bits):
    """Little-endian bytes of ``values`` as consecutive ``bits``-bit fields (``bits`` a
    multiple of 8)."""
    values = np.asarray(values, dtype=np.int64) & ((1 << bits) - 1)
    raw = (values[:, None] >> (8 * np.arange(bits // 8))) & 0xFF
    return raw.astype(np.uint8).tobytes()


def _unpack(data, bits, count):
    """Signed ``bits``-bit fields (``bits`` a multiple of 8) of little-endian bytes."""
    raw = np.frombuffer(bytes(data), np.uint8)[:count * bits // 8].reshape(count, bits // 8)
    values = (raw.astype(np.int64) << (8 * np.arange(bits // 8))).sum(axis=1)
    return _signed(values, bits) if bits < 64 else values
