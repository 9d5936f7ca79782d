"""The Vitis ``ap_ctrl_hs`` control slave: the AXI4-Lite register file through which a host (XRT,
or the cocotb benches) passes the kernel's arguments, starts it and waits for it.

One :class:`RegisterMap` describes the registers; it drives the hardware (:class:`ControlSlave`),
the pure-Python model (:class:`ControlModel`), the documentation and the kernel.xml.

Register map
------------
=========  ====================================================================================
Offset     Register
=========  ====================================================================================
``0x00``   Control: bit 0 ``ap_start``, bit 1 ``ap_done``, bit 2 ``ap_idle``, bit 3
           ``ap_ready``, bit 7 ``auto_restart``; other bits read 0.
``0x04``   Global interrupt enable (GIE), bit 0.
``0x08``   Interrupt enable (IER): bit 0 done, bit 1 ready.
``0x0C``   Interrupt status (ISR): bit 0 done, bit 1 ready.
``0x10``   The pointers, 8 bytes each (low word at the offset, high word 4 bytes above), then the
           scalars, 4 bytes each, then the status values, 4 bytes each if 32 bits wide or less,
           else 8 (low word first), in the order the :class:`RegisterMap` lists them.
=========  ====================================================================================

Register semantics (the contract; :class:`ControlModel` implements exactly this)
--------------------------------------------------------------------------------
* ``ap_start`` (R/W): writing 1 sets it; writing 0 does nothing (it never aborts a run). It reads
  1 from the write until the end of the run: when the core pulses ``done`` it clears, unless
  ``auto_restart`` is set, in which case it stays set and the core is started again. While
  ``ap_start`` is set, the core is not running a run, and the ``idle`` input is high, the
  ``start`` output pulses for one cycle and the run begins: so ``start`` pulses once per host
  start, never while a run is in progress, and a start written during a run is taken by that run
  (as in Vitis HLS, where ``ap_ready`` clears ``ap_start``; this kernel is not pipelined, so
  ``ap_ready`` is raised together with ``ap_done``).
* ``ap_done`` (R, clear on read): set when the core pulses ``done``; a read of the control
  register returns it and clears it. A ``done`` in the same cycle as the read is not lost (the
  read returns 0, the bit stays set).
* ``ap_idle`` (R): the ``idle`` input (registered), forced to 0 while a run is started or pending
  (``ap_start`` set, or the core not yet finished), so a host that reads the control register
  after writing ``ap_start`` never sees a stale idle.
* ``ap_ready`` (R, clear on read): set together with ``ap_done``, cleared by the same reads.
* ``auto_restart`` (R/W).
* GIE and IER (R/W). ISR bit 0 is set when ``done`` pulses with IER bit 0 set, bit 1 likewise
  with IER bit 1 (the ready event); writing 1 to an ISR bit toggles it (an event in the same cycle
  wins). ``interrupt = GIE & (ISR != 0)``.
* Control-register, GIE, IER and ISR writes take effect only when ``wstrb`` bit 0 is set.
  Argument registers are R/W, each byte written only when its ``wstrb`` bit is set. Status
  registers are read-only: they return the ``status`` input as it is when the read address is
  transferred, and writes to them are ignored. Unmapped addresses (within ``2**addr_width``
  bytes): writes are ignored, reads return 0. Address bits 0 and 1 are ignored. ``bresp`` and
  ``rresp`` are always OKAY.
* Reset: every R/W register, ``ap_start``, ``ap_done`` and ``ap_ready`` are 0.

AXI4-Lite behaviour
-------------------
* The write address and write data may arrive in either order or together, with any delays;
  each write gets exactly one response, in order. ``awready``, ``wready`` and ``arready`` depend
  only on registers, never on a ``valid`` input. ``bvalid``/``rvalid`` and their payloads hold
  until taken.
* A write takes effect in the cycle its later half (AW or W) is transferred, provided no response
  is waiting or the waiting one is being taken; ``bvalid`` rises :attr:`ControlSlave.WRITE_LATENCY`
  cycle later. One write per cycle is accepted while ``bready`` is held high.
* A read samples the registers in the cycle its address is transferred; ``rvalid`` rises
  :attr:`ControlSlave.READ_LATENCY` cycle later. ``arready`` is low while ``rvalid`` is high, so
  reads go at one per two cycles. A read and a write of the same register in the same cycle: the
  read returns the value before the write.
* Reads and writes proceed independently.
"""

import keyword
from dataclasses import dataclass
from typing import NamedTuple

from amaranth import C, Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .axi import RESP_OKAY, axi4_lite_signature

__all__ = [
    "AP_DONE",
    "AP_IDLE",
    "AP_READY",
    "AP_START",
    "ARGS_OFFSET",
    "AUTO_RESTART",
    "CONTROL",
    "GIE",
    "IER",
    "ISR",
    "ControlModel",
    "ControlSlave",
    "Register",
    "RegisterMap",
]

#: Offset of the control register.
CONTROL = 0x00
#: Offset of the global interrupt enable register.
GIE = 0x04
#: Offset of the interrupt enable register.
IER = 0x08
#: Offset of the interrupt status register.
ISR = 0x0C
#: Offset of the first argument register.
ARGS_OFFSET = 0x10

#: Control register bits.
AP_START = 1 << 0
AP_DONE = 1 << 1
AP_IDLE = 1 << 2
AP_READY = 1 << 3
AUTO_RESTART = 1 << 7

_CONTROL_NAMES = {"control": CONTROL, "gie": GIE, "ier": IER, "isr": ISR}
_MIN_ADDR_WIDTH = 12


class Register(NamedTuple):
    """One register of a :class:`RegisterMap`.

    Members
    -------
    name : str
    offset : int
        Byte offset of the register (of its low word, if it has two).
    size_bytes : int
        4 or 8.
    kind : str
        ``"control"`` (the four ``ap_ctrl_hs`` registers), ``"pointer"``, ``"scalar"`` or
        ``"status"``.
    """
    name: str
    offset: int
    size_bytes: int
    kind: str


def _names(what, names):
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise ValueError(f"{what} must be a sequence of names, not {names!r}")
    return tuple(names)


@dataclass(frozen=True)
class RegisterMap:
    """The registers of an ``ap_ctrl_hs`` kernel: the four control registers, then its arguments
    and its read-only status values (the layout is in :mod:`flightgen.hw.control`).

    Parameters
    ----------
    pointers : tuple of str
        Names of the 64-bit pointer arguments (buffer addresses), in order.
    scalars : tuple of str
        Names of the 32-bit scalar arguments, in order.
    status : tuple of (str, int)
        Names and widths (1 to 64 bits) of the read-only status values, in order.

    Raises
    ------
    ValueError
        If a name is not a Python identifier (or starts with an underscore), is used twice, or
        is one of ``control``, ``gie``, ``ier``, ``isr``; if a status entry is not a
        ``(name, width)`` pair or its width is not from 1 to 64.
    """
    pointers: tuple = ()
    scalars: tuple = ()
    status: tuple = ()

    def __post_init__(self):
        pointers = _names("pointers", self.pointers)
        scalars = _names("scalars", self.scalars)
        if isinstance(self.status, str) or not isinstance(self.status, (tuple, list)):
            raise ValueError(f"status must be a sequence of (name, width) pairs, "
                             f"not {self.status!r}")
        status = []
        for entry in self.status:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise ValueError(f"status entries must be (name, width) pairs, not {entry!r}")
            status.append(tuple(entry))
        seen = set()
        for name in (*pointers, *scalars, *(name for name, _ in status)):
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) \
                    or name.startswith("_"):
                raise ValueError(f"register name must be a Python identifier without a leading "
                                 f"underscore, not {name!r}")
            if name in _CONTROL_NAMES:
                raise ValueError(f"register name {name!r} is reserved for a control register")
            if name in seen:
                raise ValueError(f"register name {name!r} is used twice")
            seen.add(name)
        for name, width in status:
            if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 64:
                raise ValueError(f"status {name!r} width must be from 1 to 64, not {width!r}")
        object.__setattr__(self, "pointers", pointers)
        object.__setattr__(self, "scalars", scalars)
        object.__setattr__(self, "status", tuple(status))

    @property
    def registers(self):
        """Every register, in address order (a list of :class:`Register`)."""
        registers = [Register(name, offset, 4, "control")
                     for name, offset in _CONTROL_NAMES.items()]
        offset = ARGS_OFFSET
        for name in self.pointers:
            registers.append(Register(name, offset, 8, "pointer"))
            offset += 8
        for name in self.scalars:
            registers.append(Register(name, offset, 4, "scalar"))
            offset += 4
        for name, width in self.status:
            size = 4 if width <= 32 else 8
            registers.append(Register(name, offset, size, "status"))
            offset += size
        return registers

    @property
    def size_bytes(self):
        """Bytes spanned by the map, from offset 0 to the end of its last register."""
        last = self.registers[-1]
        return last.offset + last.size_bytes

    @property
    def addr_width(self):
        """Address bits of the AXI4-Lite port: the smallest width, at least 12, that covers the
        map."""
        return max(_MIN_ADDR_WIDTH, (self.size_bytes - 1).bit_length())

    def offset(self, name):
        """Byte offset of the register ``name`` (of its low word, if it has two).

        Raises
        ------
        KeyError
            If there is no register called ``name``.
        """
        for register in self.registers:
            if register.name == name:
                return register.offset
        raise KeyError(f"no register named {name!r}")

    @property
    def args_layout(self):
        """Layout of the arguments: 64 bits per pointer, 32 per scalar."""
        return data.StructLayout({**{name: 64 for name in self.pointers},
                                  **{name: 32 for name in self.scalars}})

    @property
    def status_layout(self):
        """Layout of the status values."""
        return data.StructLayout(dict(self.status))

    def _words(self):
        """``{word offset: (register, bit offset)}`` for every argument and status word."""
        words = {}
        for register in self.registers:
            if register.kind != "control":
                for low in range(0, register.size_bytes, 4):
                    words[register.offset + low] = (register, low * 8)
        return words


class ControlModel:
    """Pure-Python model of a :class:`ControlSlave` at the level of whole AXI4-Lite transactions,
    the expected values of its tests.

    The modelled core is started at once whenever ``ap_start`` is set, it is not running and
    :attr:`idle` is true; it runs until :meth:`done`.

    Parameters
    ----------
    register_map : RegisterMap

    Attributes
    ----------
    args : dict of str to int
        Argument register values.
    status : dict of str to int
        The ``status`` input; set it as the hardware's input is set.
    idle : bool
        The core's ``idle`` input apart from its runs (true unless the core is held busy for
        another reason); change it with :meth:`set_idle`.
    running : bool
        A run was started and has not finished.
    starts : int
        Pulses of ``start`` so far.
    """

    def __init__(self, register_map):
        self.register_map = register_map
        self._words = register_map._words()
        self._addr_mask = (1 << register_map.addr_width) - 1
        self.args = {name: 0 for name in (*register_map.pointers, *register_map.scalars)}
        self.status = {name: 0 for name, _ in register_map.status}
        self.ap_start = self.ap_done = self.ap_ready = self.auto_restart = False
        self.gie = self.ier = self.isr = 0
        self.idle = True
        self.running = False
        self.starts = 0

    @property
    def interrupt(self):
        """Level of the ``interrupt`` output."""
        return bool(self.gie and self.isr)

    def _word(self, addr):
        return addr & self._addr_mask & ~3

    def _launch(self):
        if self.ap_start and not self.running and self.idle:
            self.running = True
            self.starts += 1

    def write(self, addr, data, strb=0xF):
        """An AXI4-Lite write of ``data`` (32 bits) to byte address ``addr``, bytes enabled by
        ``strb``."""
        word = self._word(addr)
        if word in (CONTROL, GIE, IER, ISR):
            if strb & 1:
                if word == CONTROL:
                    self.ap_start = self.ap_start or bool(data & AP_START)
                    self.auto_restart = bool(data & AUTO_RESTART)
                    self._launch()
                elif word == GIE:
                    self.gie = data & 1
                elif word == IER:
                    self.ier = data & 3
                else:
                    self.isr ^= data & 3
        elif word in self._words:
            register, shift = self._words[word]
            if register.kind != "status":
                mask = sum(0xFF << (8 * k) for k in range(4) if strb >> k & 1) << shift
                value = self.args[register.name]
                self.args[register.name] = (value & ~mask) | ((data << shift) & mask)

    def read(self, addr):
        """An AXI4-Lite read of byte address ``addr``: returns the 32-bit value (and clears
        ``ap_done`` and ``ap_ready`` when reading the control register)."""
        word = self._word(addr)
        if word == CONTROL:
            idle = self.idle and not self.running and not self.ap_start
            value = (AP_START * self.ap_start | AP_DONE * self.ap_done | AP_IDLE * idle
                     | AP_READY * self.ap_ready | AUTO_RESTART * self.auto_restart)
            self.ap_done = self.ap_ready = False
            return value
        if word == GIE:
            return self.gie
        if word == IER:
            return self.ier
        if word == ISR:
            return self.isr
        if word in self._words:
            register, shift = self._words[word]
            values = self.status if register.kind == "status" else self.args
            return values[register.name] >> shift & 0xFFFF_FFFF
        return 0

    def done(self):
        """The core pulses ``done``."""
        self.ap_done = self.ap_ready = True
        self.isr |= self.ier & 3
        self.running = False
        self.ap_start = self.ap_start and self.auto_restart
        self._launch()

    def set_idle(self, idle):
        """Set the core's ``idle`` input (apart from its runs)."""
        self.idle = bool(idle)
        self._launch()


class ControlSlave(wiring.Component):
    """Vitis ``ap_ctrl_hs`` control slave on AXI4-Lite (the contract is in
    :mod:`flightgen.hw.control`).

    Parameters
    ----------
    register_map : RegisterMap

    Members
    -------
    axil : Out(axi4_lite_signature(register_map.addr_width))
        The AXI4-Lite slave port. :func:`~flightgen.hw.axi.axi4_lite_signature` is written from
        the slave side, so the member is ``Out`` (``awvalid`` is an input of this component).
    start : Out(1)
        One-cycle pulse: the core starts a run.
    args : Out(register_map.args_layout)
        The argument registers (64 bits per pointer, 32 per scalar).
    done : In(1)
        One-cycle pulse from the core at the end of a run.
    idle : In(1)
        High while the core is not running.
    status : In(register_map.status_layout)
        Read-only values for the host.
    interrupt : Out(1)
        ``GIE & (ISR != 0)``.

    Raises
    ------
    TypeError
        If ``register_map`` is not a :class:`RegisterMap`.
    """

    #: Cycles from the write taking effect (the transfer of its later half) to ``bvalid``.
    WRITE_LATENCY = 1
    #: Cycles from the read address transfer to ``rvalid``.
    READ_LATENCY = 1
    #: Cycles from a write of ``ap_start`` taking effect (or from ``done``, with
    #: ``auto_restart``) to the ``start`` pulse, when the core is idle.
    START_LATENCY = 2

    def __init__(self, register_map):
        if not isinstance(register_map, RegisterMap):
            raise TypeError(f"register map must be a RegisterMap, not {register_map!r}")
        self._register_map = register_map
        super().__init__({
            "axil": Out(axi4_lite_signature(register_map.addr_width)),
            "start": Out(1),
            "args": Out(register_map.args_layout),
            "done": In(1),
            "idle": In(1),
            "status": In(register_map.status_layout),
            "interrupt": Out(1),
        })

    @property
    def register_map(self):
        """The :class:`RegisterMap`."""
        return self._register_map

    def reference(self):
        """A fresh :class:`ControlModel` of this slave, in its reset state."""
        return ControlModel(self.register_map)

    def elaborate(self, platform):
        m = Module()
        bus = self.axil
        words = self.register_map._words()

        def word_index(addr):
            return addr[2:]

        # -- write channel: hold whichever of AW and W arrives first ---------------------------
        aw_full = Signal()
        aw_addr = Signal.like(bus.awaddr)
        w_full = Signal()
        w_data = Signal.like(bus.wdata)
        w_strb = Signal.like(bus.wstrb)
        commit = Signal()  # the write takes effect in this cycle
        waddr = Signal.like(bus.awaddr)
        wdata = Signal.like(bus.wdata)
        wstrb = Signal.like(bus.wstrb)
        m.d.comb += [
            bus.awready.eq(~aw_full),
            bus.wready.eq(~w_full),
            bus.bresp.eq(RESP_OKAY),
            bus.rresp.eq(RESP_OKAY),
            commit.eq((aw_full | bus.awvalid) & (w_full | bus.wvalid)
                      & (~bus.bvalid | bus.bready)),
            waddr.eq(Mux(aw_full, aw_addr, bus.awaddr)),
            wdata.eq(Mux(w_full, w_data, bus.wdata)),
            wstrb.eq(Mux(w_full, w_strb, bus.wstrb)),
        ]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        with m.If(commit):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
        with m.Else():
            with m.If(bus.awvalid & ~aw_full):
                m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr)]
            with m.If(bus.wvalid & ~w_full):
                m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]

        # -- control state -------------------------------------------------------------------
        ap_start = Signal()
        ap_done = Signal()
        ap_ready = Signal()
        auto_restart = Signal()
        gie = Signal()
        ier = Signal(2)
        isr = Signal(2)
        running = Signal()
        idle = Signal()
        launch = Signal()
        m.d.comb += [
            launch.eq(ap_start & ~running & self.idle & ~self.done),
            self.interrupt.eq(gie & isr.any()),
        ]
        m.d.sync += [self.start.eq(launch), idle.eq(self.idle)]
        with m.If(launch):
            m.d.sync += running.eq(1)
        with m.If(self.done):
            m.d.sync += [running.eq(0), ap_start.eq(ap_start & auto_restart)]

        # -- read channel ----------------------------------------------------------------------
        ar_take = Signal()
        read_value = Signal(32)
        m.d.comb += [bus.arready.eq(~bus.rvalid), ar_take.eq(bus.arvalid & ~bus.rvalid)]
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(ar_take):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(read_value)]
        with m.Switch(word_index(bus.araddr)):
            with m.Case(CONTROL >> 2):
                m.d.comb += read_value.eq(Cat(ap_start, ap_done, idle & ~running & ~ap_start,
                                              ap_ready, C(0, 3), auto_restart))
                with m.If(ar_take):  # clear on read; a done in this cycle wins (below)
                    m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]
            with m.Case(GIE >> 2):
                m.d.comb += read_value.eq(gie)
            with m.Case(IER >> 2):
                m.d.comb += read_value.eq(ier)
            with m.Case(ISR >> 2):
                m.d.comb += read_value.eq(isr)
            for offset, (register, shift) in words.items():
                source = self.status if register.kind == "status" else self.args
                with m.Case(offset >> 2):
                    m.d.comb += read_value.eq(source[register.name][shift:shift + 32])

        # -- register writes -------------------------------------------------------------------
        with m.If(commit):
            with m.Switch(word_index(waddr)):
                with m.Case(CONTROL >> 2):
                    with m.If(wstrb[0]):
                        m.d.sync += auto_restart.eq(wdata[7])
                        with m.If(wdata[0]):  # a host start wins over a done in this cycle
                            m.d.sync += ap_start.eq(1)
                with m.Case(GIE >> 2):
                    with m.If(wstrb[0]):
                        m.d.sync += gie.eq(wdata[0])
                with m.Case(IER >> 2):
                    with m.If(wstrb[0]):
                        m.d.sync += ier.eq(wdata[:2])
                with m.Case(ISR >> 2):
                    with m.If(wstrb[0]):
                        m.d.sync += isr.eq(isr ^ wdata[:2])
                for offset, (register, shift) in words.items():
                    if register.kind == "status":
                        continue
                    value = self.args[register.name]
                    with m.Case(offset >> 2):
                        for k in range(4):
                            with m.If(wstrb[k]):
                                m.d.sync += value[shift + 8 * k:shift + 8 * k + 8].eq(
                                    wdata[8 * k:8 * k + 8])

        # -- the done event: sets win over clear-on-read and toggles ---------------------------
        with m.If(self.done):
            m.d.sync += [ap_done.eq(1), ap_ready.eq(1)]
            for bit in range(2):
                with m.If(ier[bit]):
                    m.d.sync += isr[bit].eq(1)
        return m
