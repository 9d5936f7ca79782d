"""On-chip buffers: banked block RAM / UltraRAM memories for activations, weights (double
buffered), outputs and scales.

Every buffer is a :class:`BankedBuffer`: ``banks`` independent memories, so ``banks`` lanes
read (and write) one word each in the same cycle. A word address ``a`` lives in bank
``a % banks`` (the low ``log2(banks)`` bits), row ``a // banks`` (the high bits); the ports take
the row, the bank is the port's index. :class:`DoubleBuffer` adds two halves that a writer
and a reader exchange on ``swap``.

Mapping onto primitives
-----------------------
Each bank is one :class:`amaranth.lib.memory.Memory` (one copy per read port) of ``width`` by
``rows`` (twice that in a double buffer) with one write and one read port, and carries the
attribute ``ram_style`` = ``"block"`` or ``"ultra"``, which Yosys (``memory_libmap``) and Vivado
both obey, so a buffer never lands in LUT RAM or flip-flops. A ``width`` x ``rows`` memory takes

* :func:`bram36_count` BRAM36 (a RAMB18 counts as half): the cheapest single aspect ratio,
  ``min(ceil(rows / d) * ceil(width / w))`` over the simple-dual-port shapes of a RAMB36E2
  (32K x 1, 16K x 2, 8K x 4, 4K x 9, 2K x 18, 1K x 36, 512 x 72) and, at half the cost, of a
  RAMB18E2 (16K x 1, 8K x 2, 4K x 4, 2K x 9, 1K x 18, 512 x 36);
* :func:`uram288_count` URAM288: ``ceil(rows / 4096) * ceil(width / 72)``; the URAM288 is
  4096 x 72 with no initial contents, deeper memories cascade.

``primitive="auto"`` (:func:`choose_primitive`) picks UltraRAM when it takes the smaller share
of one SLR of the U280 (320 URAM288 against 672 BRAM36), i.e. when a bank would need more than
``672 / 320 = 2.1`` BRAM36 per URAM288.
"""

import dataclasses
from dataclasses import dataclass
from math import ceil

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

__all__ = ["BankedBuffer", "BufferConfig", "BufferSpec", "DEFAULT_BUFFERS", "DoubleBuffer",
           "OnChipBuffers", "PRIMITIVES", "SIM_BUFFERS", "bram36_count", "choose_primitive",
           "uram288_count"]

#: Values of ``primitive``: ``"auto"`` resolves to one of the others (:func:`choose_primitive`).
PRIMITIVES = ("auto", "bram", "uram")

#: Simple-dual-port (rows, width) shapes of one RAMB36E2 and of one RAMB18E2 (half a BRAM36).
BRAM36_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
BRAM18_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))

#: Rows and width of one URAM288.
URAM_ROWS, URAM_WIDTH = 4096, 72

#: BRAM36 and URAM288 in one SLR of the U280 (``auto`` weighs the primitives by them).
SLR_BRAM36, SLR_URAM288 = 672, 320

#: The ``ram_style`` attribute each primitive puts on its memories.
RAM_STYLE = {"bram": "block", "uram": "ultra"}

#: Most read ports per bank (each one is a copy of the bank).
MAX_READ_PORTS = 4


def _check_shape(width, rows):
    for name, value in (("width", width), ("rows", rows)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, not {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value!r}")


def bram36_count(width, rows):
    """BRAM36 blocks (a RAMB18 counts as half) of a ``width`` x ``rows`` memory with one write
    and one read port: the best single aspect ratio of a RAMB36E2 or a RAMB18E2
    (:data:`BRAM36_SHAPES`, :data:`BRAM18_SHAPES`), as Yosys ``synth_xilinx`` maps it.

    Raises
    ------
    TypeError
        If ``width`` or ``rows`` is not an integer.
    ValueError
        If ``width`` or ``rows`` is less than 1.
    """
    _check_shape(width, rows)
    full = min(ceil(rows / d) * ceil(width / w) for d, w in BRAM36_SHAPES)
    half = min(ceil(rows / d) * ceil(width / w) for d, w in BRAM18_SHAPES)
    return min(float(full), half / 2)


def uram288_count(width, rows):
    """URAM288 blocks of a ``width`` x ``rows`` memory: ``ceil(rows / 4096) * ceil(width / 72)``.

    This is how the primitive is built (a fixed 72-bit width, cascaded in depth). Yosys may fold
    two or more rows of a narrow, deeper-than-4096 memory into one URAM word (byte enables and a
    read multiplexer), so its count is at most this, and equal whenever ``rows <= 4096`` or
    ``width % 72`` is 0 or at least 64.

    Raises
    ------
    TypeError
        If ``width`` or ``rows`` is not an integer.
    ValueError
        If ``width`` or ``rows`` is less than 1.
    """
    _check_shape(width, rows)
    return ceil(rows / URAM_ROWS) * ceil(width / URAM_WIDTH)


def choose_primitive(width, rows):
    """``"uram"`` if a ``width`` x ``rows`` memory takes a smaller share of one SLR in
    UltraRAM than in block RAM (``uram288_count / 320 < bram36_count / 672``), else ``"bram"``.

    Raises
    ------
    TypeError
        If ``width`` or ``rows`` is not an integer.
    ValueError
        If ``width`` or ``rows`` is less than 1.
    """
    uram = uram288_count(width, rows)
    return "uram" if uram * SLR_BRAM36 < bram36_count(width, rows) * SLR_URAM288 else "bram"


def _is_power_of_two(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        and value & (value - 1) == 0


@dataclass(frozen=True)
class BufferSpec:
    """Parameters of one buffer (JSON-serialisable with :func:`dataclasses.asdict`).

    Parameters
    ----------
    width : int
        Bits per word, at least 1.
    depth : int
        Words (of every bank together; of one half if ``double``), a power of two, at least
        ``banks``.
    banks : int
        Independent memories, a power of two.
    read_ports : int
        Read ports per bank, 1 to 4. Each is a copy of the bank (one write port feeds them all).
    primitive : str
        ``"auto"``, ``"bram"`` (RAMB36E2/RAMB18E2) or ``"uram"`` (URAM288).
    double : bool
        Two halves exchanged by ``swap`` (:class:`DoubleBuffer`).

    Raises
    ------
    TypeError
        If ``width`` is not an integer.
    ValueError
        If a parameter is out of range.
    """

    width: int
    depth: int
    banks: int = 1
    read_ports: int = 1
    primitive: str = "auto"
    double: bool = False

    def __post_init__(self):
        if not isinstance(self.width, int) or isinstance(self.width, bool):
            raise TypeError(f"width must be an integer, not {self.width!r}")
        if self.width < 1:
            raise ValueError(f"width must be at least 1, not {self.width!r}")
        if not _is_power_of_two(self.banks):
            raise ValueError(f"banks must be a power of two, not {self.banks!r}")
        if not _is_power_of_two(self.depth):
            raise ValueError(f"depth must be a power of two, not {self.depth!r}")
        if self.depth < self.banks:
            raise ValueError(f"depth must be at least banks ({self.banks}), not {self.depth!r}")
        if (not isinstance(self.read_ports, int) or isinstance(self.read_ports, bool)
                or not 1 <= self.read_ports <= MAX_READ_PORTS):
            raise ValueError(f"read_ports must be from 1 to {MAX_READ_PORTS}, "
                             f"not {self.read_ports!r}")
        if self.primitive not in PRIMITIVES:
            raise ValueError(f"primitive must be 'auto', 'bram' or 'uram', "
                             f"not {self.primitive!r}")
        if not isinstance(self.double, bool):
            raise ValueError(f"double must be True or False, not {self.double!r}")

    @property
    def rows(self):
        """Rows per bank that a port addresses: ``depth // banks``."""
        return self.depth // self.banks

    @property
    def memory_rows(self):
        """Rows of each bank memory: :attr:`rows`, twice that if ``double``."""
        return self.rows * (2 if self.double else 1)

    @property
    def resolved_primitive(self):
        """``"bram"`` or ``"uram"``: ``primitive``, with ``"auto"`` resolved by
        :func:`choose_primitive` on one bank memory."""
        if self.primitive == "auto":
            return choose_primitive(self.width, self.memory_rows)
        return self.primitive

    @property
    def copies(self):
        """Bank memories: ``banks * read_ports``."""
        return self.banks * self.read_ports

    @property
    def kib(self):
        """Capacity in KiB (both halves if ``double``; read-port copies not counted)."""
        return self.width * self.memory_rows * self.banks / 8 / 1024

    @property
    def primitives(self):
        """Predicted primitives: ``{"bram36": float, "uram288": int}``, :attr:`copies` times
        :func:`bram36_count` or :func:`uram288_count` of one bank memory."""
        if self.resolved_primitive == "uram":
            return {"bram36": 0.0,
                    "uram288": self.copies * uram288_count(self.width, self.memory_rows)}
        return {"bram36": self.copies * bram36_count(self.width, self.memory_rows),
                "uram288": 0}

    def build(self):
        """A :class:`DoubleBuffer` if ``double``, else a :class:`BankedBuffer`."""
        kind = DoubleBuffer if self.double else BankedBuffer
        return kind(self.width, self.depth, self.banks, read_ports=self.read_ports,
                    primitive=self.primitive)


@dataclass(frozen=True)
class BufferConfig:
    """The on-chip buffers of one core (JSON-serialisable with :meth:`to_dict`).

    Members
    -------
    activation : BufferSpec
        Activation buffer: the matrix engine's inputs (FlightLLM's B buffer).
    weight : BufferSpec
        Weight buffer, double buffered: HBM fills one half while the engine reads the other
        (FlightLLM's A buffer).
    output : BufferSpec
        Output / global buffer: matrix-engine results and special-function operands (two read
        ports for two-operand element-wise work).
    scale : BufferSpec
        Scale / meta buffer: block scales and sparsity metadata.
    """

    activation: BufferSpec
    weight: BufferSpec
    output: BufferSpec
    scale: BufferSpec

    def items(self):
        """``(name, spec)`` pairs in field order."""
        return tuple((field.name, getattr(self, field.name))
                     for field in dataclasses.fields(self))

    @property
    def primitives(self):
        """Predicted primitives of all buffers: ``{"bram36": float, "uram288": int}``."""
        return {key: sum(spec.primitives[key] for _, spec in self.items())
                for key in ("bram36", "uram288")}

    def to_dict(self):
        """The configuration as nested plain dicts."""
        return dataclasses.asdict(self)


#: A U280 core: 48 BRAM36 and 160 URAM288 (7 % and 50 % of one SLR), 4.69 MiB.
#: Activations: 16 lanes x 64 bits (128 INT8 codes a cycle), 128 KiB. Weights: 64 lanes x 64
#: bits (4096 bits a cycle, 8 HBM pseudo-channels of 512 bits), 2 MiB per half. Outputs: 16
#: lanes x 64 bits with two read ports, 512 KiB. Scales: 8 lanes x 32 bits, 64 KiB.
DEFAULT_BUFFERS = BufferConfig(
    activation=BufferSpec(width=64, depth=16384, banks=16),
    weight=BufferSpec(width=64, depth=262144, banks=64, double=True),
    output=BufferSpec(width=64, depth=65536, banks=16, read_ports=2),
    scale=BufferSpec(width=32, depth=16384, banks=8),
)

#: A small configuration for simulation tests.
SIM_BUFFERS = BufferConfig(
    activation=BufferSpec(width=16, depth=64, banks=4),
    weight=BufferSpec(width=16, depth=32, banks=4, double=True),
    output=BufferSpec(width=32, depth=64, banks=4, read_ports=2),
    scale=BufferSpec(width=8, depth=32, banks=2),
)


class BankedBuffer(wiring.Component):
    """``banks`` independent memories of ``width``-bit words, one write port and ``read_ports``
    read ports each, in block RAM or UltraRAM.

    Contract
    --------
    * Banking: word address ``a`` is bank ``a % banks``, row ``a // banks`` (:meth:`split`).
      Port ``write[b]`` and ports ``read[p][b]`` reach bank ``b`` only and take its row; all
      banks and ports work in the same cycle, with no conflicts.
    * Read: synchronous, latency 1. When ``en`` is high in cycle ``t``, ``data`` shows row
      ``addr`` from cycle ``t + 1`` and holds it until the cycle after the next read with
      ``en`` high. ``en`` is high unless driven (``ReadPort.Signature``).
    * Write: when ``en`` is high in cycle ``t``, row ``addr`` holds ``data`` from cycle
      ``t + 1``: a read issued in ``t + 1`` returns it. A read of the row being written in the
      same cycle returns the old contents.
    * Reset does not touch the contents; they are zero in simulation and after configuration
      of a block RAM, and must not be relied on.

    Parameters
    ----------
    width, depth, banks, read_ports, primitive
        See :class:`BufferSpec`; ``depth`` counts the words of all banks.

    Members
    -------
    write : Out(WritePort.Signature(addr_width=log2(rows), shape=width)).array(banks)
        Per bank: ``en``, ``addr`` (row), ``data``.
    read : Out(ReadPort.Signature(addr_width=log2(rows), shape=width)).array(read_ports, banks)
        ``read[p][b]``: port ``p`` of bank ``b``: ``en``, ``addr`` (row), ``data``.

    Raises
    ------
    TypeError
        If ``width`` is not an integer.
    ValueError
        If a parameter is out of range (:class:`BufferSpec`).
    """

    #: Cycles from a read with ``en`` high to its ``data``.
    LATENCY = 1

    def __init__(self, width, depth, banks=1, *, read_ports=1, primitive="auto"):
        self._spec = self._make_spec(width, depth, banks, read_ports, primitive)
        super().__init__(self._members())

    @staticmethod
    def _make_spec(width, depth, banks, read_ports, primitive):
        return BufferSpec(width, depth, banks, read_ports, primitive)

    def _members(self):
        s = self._spec
        row_bits = (s.rows - 1).bit_length()
        return {
            "write": Out(WritePort.Signature(addr_width=row_bits, shape=s.width)).array(s.banks),
            "read": Out(ReadPort.Signature(addr_width=row_bits, shape=s.width))
            .array(s.read_ports, s.banks),
        }

    @property
    def spec(self):
        """The :class:`BufferSpec` of this buffer."""
        return self._spec

    @property
    def width(self):
        """Bits per word."""
        return self._spec.width

    @property
    def depth(self):
        """Words of all banks (of one half, for a :class:`DoubleBuffer`)."""
        return self._spec.depth

    @property
    def banks(self):
        """Independent memories."""
        return self._spec.banks

    @property
    def rows(self):
        """Rows per bank that a port addresses."""
        return self._spec.rows

    @property
    def read_ports(self):
        """Read ports per bank."""
        return self._spec.read_ports

    @property
    def primitive(self):
        """``"bram"`` or ``"uram"`` (``"auto"`` resolved)."""
        return self._spec.resolved_primitive

    @property
    def primitives(self):
        """Predicted primitives (:attr:`BufferSpec.primitives`)."""
        return self._spec.primitives

    def split(self, address):
        """``(bank, row)`` of word ``address``: ``(address % banks, address // banks)``."""
        if not 0 <= address < self.depth:
            raise ValueError(f"address must be from 0 to {self.depth - 1}, not {address!r}")
        return address % self.banks, address // self.banks

    def join(self, bank, row):
        """Word address of ``row`` of ``bank``: ``row * banks + bank``."""
        return row * self.banks + bank

    def _row_addresses(self, m):
        """Memory row of a write port's and of a read port's ``addr`` (hook for halves)."""
        return (lambda addr: addr), (lambda addr: addr)

    def elaborate(self, platform):
        m = Module()
        s = self._spec
        write_row, read_row = self._row_addresses(m)
        attrs = {"ram_style": RAM_STYLE[s.resolved_primitive]}
        for bank in range(s.banks):
            write = self.write[bank]
            # One memory per read port, all written alike: a bank with two read ports and a
            # write port needs three addresses, more than a primitive has.
            for port in range(s.read_ports):
                memory = Memory(shape=s.width, depth=s.memory_rows, init=[], attrs=attrs)
                m.submodules[f"bank{bank}_port{port}"] = memory
                memory_write = memory.write_port()
                memory_read = memory.read_port()
                read = self.read[port][bank]
                m.d.comb += [
                    memory_write.en.eq(write.en),
                    memory_write.addr.eq(write_row(write.addr)),
                    memory_write.data.eq(write.data),
                    memory_read.en.eq(read.en),
                    memory_read.addr.eq(read_row(read.addr)),
                    read.data.eq(memory_read.data),
                ]
        return m


class DoubleBuffer(BankedBuffer):
    """A :class:`BankedBuffer` with two halves of ``depth`` words: a writer fills one while the
    reader reads the other, and ``swap`` exchanges them (the weight buffer).

    Contract
    --------
    * Everything of :class:`BankedBuffer`, with ``write`` reaching only the *fill* half and
      ``read`` only the *read* half; row addresses are relative to the half. The writer and
      the reader never see the same half, so a read never meets a write.
    * After reset the reader sees half 0 and the writer fills half 1 (``read_half`` is 0).
    * ``swap`` high in cycle ``t`` exchanges the halves at the end of cycle ``t``: reads and
      writes of cycle ``t`` still use the old halves (a read issued in ``t`` returns old-half
      data in ``t + 1``); from cycle ``t + 1`` the reader sees every write up to and including
      cycle ``t``, and the writer fills the half the reader left. The buffer does not check
      that either side is done; the controller swaps when both are.

    Parameters
    ----------
    width, depth, banks, read_ports, primitive
        See :class:`BufferSpec`; ``depth`` counts the words of one half. Each bank memory has
        ``2 * depth / banks`` rows (the half is the top row-address bit).

    Members
    -------
    write, read
        As for :class:`BankedBuffer`, into one half.
    swap : In(1)
        Exchange the halves at the end of this cycle.
    read_half : Out(1)
        The half the reader sees; the writer fills the other.
    """

    @staticmethod
    def _make_spec(width, depth, banks, read_ports, primitive):
        return BufferSpec(width, depth, banks, read_ports, primitive, double=True)

    def _members(self):
        return {**super()._members(), "swap": In(1), "read_half": Out(1)}

    def _row_addresses(self, m):
        half = Signal()
        with m.If(self.swap):
            m.d.sync += half.eq(~half)
        m.d.comb += self.read_half.eq(half)
        return (lambda addr: Cat(addr, ~half)), (lambda addr: Cat(addr, half))


class OnChipBuffers(wiring.Component):
    """The four buffers of a :class:`BufferConfig`, side by side.

    Parameters
    ----------
    config : BufferConfig

    Members
    -------
    activation, weight, output, scale : Out(...)
        The members of each buffer (:class:`BankedBuffer`, the weight buffer a
        :class:`DoubleBuffer`), under the buffer's name.
    """

    def __init__(self, config=DEFAULT_BUFFERS):
        if not isinstance(config, BufferConfig):
            raise TypeError(f"config must be a BufferConfig, not {config!r}")
        self.config = config
        self._buffers = {name: spec.build() for name, spec in config.items()}
        super().__init__({name: Out(buffer.signature) for name, buffer in self._buffers.items()})

    @property
    def buffers(self):
        """``{name: component}`` of the buffers."""
        return dict(self._buffers)

    def elaborate(self, platform):
        m = Module()
        for name, buffer in self._buffers.items():
            m.submodules[name] = buffer
            # Member by member: wiring.connect cannot flip the port arrays (Amaranth 0.5).
            signature = buffer.signature
            for (_, member, inner), (_, _, outer) in zip(
                    signature.flatten(buffer), signature.flatten(getattr(self, name)),
                    strict=True):
                m.d.comb += outer.eq(inner) if member.flow == Out else inner.eq(outer)
        return m
