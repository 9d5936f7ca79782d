"""The barrier engine: ``BARRIER`` (tensor-parallel groups) on its own AXI4 master.

A core built with :attr:`CoreConfig.barrier <flightgen.isa.machine.CoreConfig.barrier>` meets
the other cores of its group through flags on the HBM channel they share (the exchange port,
:attr:`~flightgen.isa.machine.CoreConfig.exchange_port`). The dispatcher hands each
``BARRIER`` to a :class:`BarrierEngine` and waits for its answer; the engine writes the core's
flag, then reads the flag line until every peer has arrived, exactly as
:meth:`flightgen.isa.machine.Machine._arrive` and :meth:`~flightgen.isa.machine.Machine.
_flags_met`. It has its own master (the core's ``sync``, Vitis ``m_axi_sync``), which the host
points at the exchange port's buffer, so the load and store engines need not arbitrate.
"""

import numpy as np
from amaranth import C, Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.machine import ErrorCode
from .axi import BURST_INCR, RESP_OKAY, axi4_signature
from .memory import ADDR_BITS, AXCACHE

__all__ = ["BarrierEngine", "barrier_command_layout", "BARRIER_TIMEOUT", "check_timeout"]

#: Cycles a barrier waits for its peers (counted from its command) before it gives up with
#: :attr:`ErrorCode.BARRIER <flightgen.isa.machine.ErrorCode.BARRIER>`: 4.2 M cycles, about 14 ms
#: at 300 MHz, far longer than any step of a group's program between two barriers.
BARRIER_TIMEOUT = 1 << 22

#: A resolved ``BARRIER``: the flag line's byte address on the exchange port (a multiple of the
#: line), the core's ``slot``, the ``peers`` it meets and the ``value`` the flags must reach.
barrier_command_layout = data.StructLayout({"addr": 40, "slot": 3, "peers": 4, "value": 32})


def check_timeout(timeout):
    """Raise ``ValueError`` unless ``timeout`` is a positive number of cycles."""
    if type(timeout) is not int or timeout < 1:
        raise ValueError(f"barrier timeout must be a positive number of cycles, not {timeout!r}")


class BarrierEngine(wiring.Component):
    """Execute resolved ``BARRIER`` s: write a flag, poll the flag line until the peers are
    there.

    Parameters
    ----------
    line_bits : int
        AXI data width, 256 or 512.
    timeout : int
        Cycles after which a barrier whose peers are missing gives up (at least 1; default
        :data:`BARRIER_TIMEOUT`).

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Contract
    --------
    * The issuer guarantees a checked command (as :func:`flightgen.isa.machine.resolve`):
      ``addr`` a multiple of the line, ``1 <= peers <= min(8, line_bytes / 4)``,
      ``slot < peers``.
    * One command at a time: ``cmd`` is ready while the engine is idle (``busy`` low).
    * Each command writes ``value`` (32-bit, little-endian) at byte ``base + addr + 4 slot``:
      one single-beat burst at ``base + addr`` whose ``WSTRB`` enables those 4 bytes; the W
      beat follows the AW transfer, never with it. After an OKAY write response it reads the
      line at ``base + addr`` (single-beat bursts, one at a time, the next address in the
      cycle after a beat that does not pass) until its first ``peers`` 32-bit words are all
      ``>= value`` (unsigned).
    * ``done`` carries one :class:`~flightgen.isa.machine.ErrorCode` per command: ``NONE``
      once the flags are met (the flag write is then complete: every peer reads it);
      ``AXI`` when the write response or a read beat is not OKAY; ``BARRIER`` when a read
      that does not pass ends at or after ``timeout`` cycles from the ``cmd`` transfer, or
      while ``stop`` is high (the core's dispatcher has stopped on an earlier error). A
      transaction in flight always completes first, so ``done`` never leaves the bus with a
      burst outstanding.
    * Latency with a memory that answers every burst ``latency`` cycles after its address (or
      its W beat), never stalls, and flags already met: :meth:`expected_cycles`, from the
      ``cmd`` transfer to the ``done`` transfer, both included, ``done`` always ready.
    * Reset returns the engine to idle (a burst in flight is abandoned; the core resets the
      engine only with the whole design).

    Members
    -------
    cmd : In(stream.Signature(barrier_command_layout))
    done : Out(stream.Signature(ErrorCode))
    base : In(64)
        Byte address of the exchange port's memory (the host's pointer), added to ``addr``.
    stop : In(1)
        Give up instead of polling again (the answer is ``BARRIER``).
    busy : Out(1)
        A command is under way (accepted, its ``done`` not yet transferred).
    axi : Out(axi4_signature(64, line_bits))
        Its own master on the exchange port's channel: AW, W, B, then AR, R.
    """

    def __init__(self, line_bits, timeout=BARRIER_TIMEOUT):
        if type(line_bits) is not int or line_bits not in (256, 512):
            raise ValueError(f"line_bits must be 256 or 512, not {line_bits!r}")
        check_timeout(timeout)
        self.line_bits, self.timeout = line_bits, timeout
        self.line_bytes = line_bits // 8
        #: Most peers a barrier meets: 32-bit flags of one line, at most 8.
        self.max_peers = min(8, self.line_bytes // 4)
        super().__init__({
            "cmd": In(stream.Signature(barrier_command_layout)),
            "done": Out(stream.Signature(ErrorCode)),
            "base": In(ADDR_BITS),
            "stop": In(1),
            "busy": Out(1),
            "axi": Out(axi4_signature(ADDR_BITS, line_bits)),
        })

    @staticmethod
    def reference(line, peers, value):
        """Whether a barrier meeting ``peers`` cores with ``value`` passes on the flag line
        ``line`` (bytes): each of its first ``peers`` little-endian 32-bit words is at least
        ``value``."""
        flags = np.frombuffer(bytes(line), "<u4")[:peers]
        return bool((flags >= (value & 0xFFFFFFFF)).all())

    @staticmethod
    def expected_cycles(latency):
        """Cycles of a barrier whose flags are met at its first read, from the ``cmd``
        transfer to the ``done`` transfer (both included), with a memory of fixed
        ``latency`` that never stalls: the command, AW, W, ``latency`` to B, AR,
        ``latency`` to R, ``done``."""
        return 2 * latency + 5

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        size = self.line_bytes.bit_length() - 1
        words = self.line_bits // 32

        command = Signal(barrier_command_layout)
        address = Signal(ADDR_BITS)
        elapsed = Signal(range(self.timeout + 1))
        answer = Signal(ErrorCode)
        m.d.comb += [
            axi.awaddr.eq(address), axi.araddr.eq(address),
            axi.awlen.eq(0), axi.arlen.eq(0), axi.awsize.eq(size), axi.arsize.eq(size),
            axi.awburst.eq(BURST_INCR), axi.arburst.eq(BURST_INCR),
            axi.awcache.eq(AXCACHE), axi.arcache.eq(AXCACHE),
            # the value in every word; the strobes pick the slot's
            axi.wdata.eq(Cat(command.value for _ in range(words))),
            axi.wstrb.eq(C(0xF, 4) << (command.slot << 2)),
            axi.wlast.eq(1),
            self.done.payload.eq(answer),
        ]
        with m.If(elapsed != self.timeout):
            m.d.sync += elapsed.eq(elapsed + 1)

        # the flags: word k passes when k is not a peer or it has reached the value
        passes = Cat(*((command.peers <= k) | (axi.rdata.word_select(k, 32) >= command.value)
                       for k in range(self.max_peers)))
        met = Signal()
        m.d.comb += met.eq(passes.all())

        with m.FSM(name="barrier"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [command.eq(self.cmd.payload),
                                 address.eq(self.base + self.cmd.payload.addr),
                                 elapsed.eq(1)]
                    m.next = "ADDRESS"
            with m.State("ADDRESS"):  # the flag's write address
                m.d.comb += [axi.awvalid.eq(1), self.busy.eq(1)]
                with m.If(axi.awready):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [axi.wvalid.eq(1), self.busy.eq(1)]
                with m.If(axi.wready):
                    m.next = "RESPONSE"
            with m.State("RESPONSE"):
                m.d.comb += [axi.bready.eq(1), self.busy.eq(1)]
                with m.If(axi.bvalid):
                    with m.If(axi.bresp != RESP_OKAY):
                        m.d.sync += answer.eq(ErrorCode.AXI)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "POLL"
            with m.State("POLL"):  # the flag line's read address
                m.d.comb += [axi.arvalid.eq(1), self.busy.eq(1)]
                with m.If(axi.arready):
                    m.next = "FLAGS"
            with m.State("FLAGS"):
                m.d.comb += [axi.rready.eq(1), self.busy.eq(1)]
                with m.If(axi.rvalid):
                    with m.If(axi.rresp != RESP_OKAY):
                        m.d.sync += answer.eq(ErrorCode.AXI)
                        m.next = "DONE"
                    with m.Elif(met):
                        m.d.sync += answer.eq(ErrorCode.NONE)
                        m.next = "DONE"
                    with m.Elif(self.stop | (elapsed == self.timeout)):
                        m.d.sync += answer.eq(ErrorCode.BARRIER)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "POLL"
            with m.State("DONE"):
                m.d.comb += [self.done.valid.eq(1), self.busy.eq(1)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m
