"""Memory engines: the ``LOAD`` and ``STORE`` units of the core, AXI4 masters toward HBM.

Each engine executes one resolved, checked descriptor at a time (the dispatcher has resolved
the adaptive fields and checked the port, the counts, the alignment and the buffer range), with
exactly the semantics of :meth:`flightgen.isa.machine.Machine._load` and
:meth:`~flightgen.isa.machine.Machine._store`: ``count3`` planes of ``count2`` rows, row
``(i3, i2)`` at byte ``addr + i3 stride3 + i2 stride2`` of port ``port``.

Both engines have one AXI4 master per HBM port (``axi[p]``, 64-bit addresses, data as wide as a
buffer line) and add the port's base address ``base[p]`` (the host's buffer pointer, a multiple
of the line size) to every address. They split their transfers into INCR bursts of full-width
beats that never cross a 4 KiB boundary (:data:`~flightgen.hw.axi.BOUNDARY`), with a constant
ID 0, so responses come back in order. :class:`LoadEngine` drives only the AR and R channels of
its masters (AW, W and B tied idle: ``awvalid = wvalid = 0``, ``bready = 1``);
:class:`StoreEngine` drives only AW, W and B (``arvalid = 0``, ``rready = 1``). The core merges
the two onto its top-level ports: AR/R from the load engine, AW/W/B from the store engine.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..isa.machine import striped_bytes
from .axi import BOUNDARY, BURST_INCR, RESP_OKAY, axi4_signature, beats_to_boundary

__all__ = ["LoadEngine", "StoreEngine", "load_command_layout", "store_command_layout",
           "ADDR_BITS", "AXCACHE"]

#: AXI address bits of the HBM masters.
ADDR_BITS = 64
#: ``AxCACHE`` of every burst: normal, non-cacheable, bufferable (what Vitis kernels issue).
AXCACHE = 0b0011

_COMMAND_FIELDS = {"buffer": 2, "line": 16, "port": 5, "addr": 40, "length": 16, "count2": 12,
                   "stride2": 32, "count3": 12, "stride3": 32}

#: A resolved ``LOAD``: ``length`` counts lines per row; ``addr``, ``stride2``, ``stride3``
#: are multiples of the line size; rows striped over ``2**stripe`` ports.
load_command_layout = data.StructLayout({**_COMMAND_FIELDS, "stripe": 2})
#: A resolved ``STORE``: ``length`` counts bytes per row; any alignment; logical addresses
#: of a region striped over ``2**stripe`` ports.
store_command_layout = data.StructLayout({**_COMMAND_FIELDS, "stripe": 2})

#: Entries of the store engine's W queue (the credit of its beat pipeline is one less).
_W_QUEUE = 8
#: Entries of the load engine's R queue.
_R_QUEUE = 4
#: Commands the load engine holds at once (issuing, receiving, writing).
_RECORDS = 4


def _validate(line_bits, ports, outstanding):
    if type(line_bits) is not int or line_bits not in (256, 512):
        raise ValueError(f"line_bits must be 256 or 512, not {line_bits!r}")
    if type(ports) is not int or not 1 <= ports <= 32:
        raise ValueError(f"ports must be 1 to 32, not {ports!r}")
    if type(outstanding) is not int or outstanding < 1:
        raise ValueError(f"outstanding must be at least 1, not {outstanding!r}")


def _validate_lanes(lanes, ports):
    if lanes not in (1, 2, 4, 8) or lanes > ports:
        raise ValueError(f"lanes must be 1, 2, 4 or 8 and at most the ports ({ports}), not "
                         f"{lanes!r}")


def _rows(command, base):
    """Absolute start address of every row of a descriptor, in order (i3 outer, i2 inner)."""
    for i3 in range(command["count3"]):
        for i2 in range(command["count2"]):
            yield base + command["addr"] + i3 * command["stride3"] + i2 * command["stride2"]


def _tie_reads(m, bus):
    """Leave a master's read channels idle."""
    m.d.comb += [bus.arvalid.eq(0), bus.rready.eq(1)]


def _tie_writes(m, bus):
    """Leave a master's write channels idle."""
    m.d.comb += [bus.awvalid.eq(0), bus.wvalid.eq(0), bus.bready.eq(1)]


class _Engine(wiring.Component):
    def __init__(self, line_bits, ports, outstanding, members):
        self.line_bits, self.ports, self.outstanding = line_bits, ports, outstanding
        self.line_bytes = line_bits // 8
        #: log2 of the bytes per beat: ``AxSIZE``.
        self.size = self.line_bytes.bit_length() - 1
        super().__init__({
            **members,
            "done": Out(stream.Signature(1)),
            "base": In(data.ArrayLayout(ADDR_BITS, ports)),
            "axi": Out(axi4_signature(ADDR_BITS, line_bits)).array(ports),
        })

    def _select(self, m, port, pairs):
        """Drive each ``target`` with member ``name`` of ``axi[port]``."""
        with m.Switch(port):
            for p in range(self.ports):
                with m.Case(p):
                    m.d.comb += [target.eq(getattr(self.axi[p], name)) for target, name in pairs]

    def _stripe_low(self, m, stripe):
        """``2**stripe - 1`` for the stripe codes the engine takes (0 for the others)."""
        low = Signal(3)
        with m.Switch(stripe):
            for code in range(1, self.lanes.bit_length()):
                with m.Case(code):
                    m.d.comb += low.eq((1 << code) - 1)
        return low

    def _select_base(self, m, port):
        base = Signal(ADDR_BITS)
        with m.Switch(port):
            for p in range(self.ports):
                with m.Case(p):
                    m.d.comb += base.eq(self.base[p])
        return base


class LoadEngine(_Engine):
    """Execute resolved ``LOAD`` descriptors: HBM lines into on-chip buffer lines.

    Parameters
    ----------
    line_bits : int
        Buffer line and AXI data width, 256 or 512.
    ports : int
        AXI4 masters (HBM ports), 1 to 32.
    outstanding : int
        Most bursts in flight (address issued, last beat not yet received).
    max_burst : int or None
        Most beats per burst, 1 to ``4096 / line bytes`` (the default: a burst that starts on a
        4 KiB boundary fills it).
    lanes : int
        Lines moved per cycle at most: the widest stripe, 1, 2, 4 or 8 (at most ``ports``).

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Contract
    --------
    * Each ``cmd`` moves ``length * count2 * count3`` lines: row ``(i3, i2)`` (``i3`` outer) is
      read from byte ``base[port] + addr + i3 stride3 + i2 stride2`` of ``axi[port]`` and goes to
      ``write``, one transfer per line, in order, to lines ``line, line + 1, ...`` of
      ``buffer``. Bursts are exactly :meth:`bursts`, issued in order.
    * A **striped** command (``s = 2**stripe`` > 1; the issuer guarantees ``s <= lanes`` and
      that ``port``, ``line`` and ``length`` are multiples of ``s``, ``port + s <= ports``;
      the host, that the ports' ``base`` agree modulo 4 KiB) reads every row from ``s`` ports
      in lockstep: the same bursts of ``length / s`` beats (at the same offsets from each
      port's base) on ``axi[port]`` to ``axi[port + s - 1]`` (line ``i`` of the row is beat
      ``i // s`` of port ``port + i % s``). A ``write`` transfer then carries ``s`` lines:
      lines ``line``, ..., ``line + s - 1`` in lanes 0 to ``s - 1`` of ``data``. The R beats
      of the ``s`` ports are taken together, when all of them are valid.
    * ``done`` carries one transfer per command, after the command's last ``write`` transfer:
      1 if any of its read beats had ``RRESP`` other than OKAY (the lines are written all the
      same, with whatever data came), else 0. ``length = 0`` moves nothing and reports 0.
    * Commands overlap: ``cmd`` is ready once the previous command's addresses have all been
      issued (up to 4 commands held), so the next command's bursts follow without a gap;
      ``done`` reports the commands in order, each after its own last ``write``.
    * Throughput one line per cycle while the memory keeps up: up to ``outstanding`` bursts
      are requested ahead of the data (one address per cycle at most). A line's ``write``
      transfer comes 2 cycles after its R beat at the earliest. A read memory with a fixed
      latency and no stalls delivers a command in :meth:`expected_cycles`.
    * Backpressure: R beats wait in a queue of 4 lines; while it is full, ``rready`` is low.
      Nothing is dropped. Reset empties the engine (any burst in flight is abandoned).

    Members
    -------
    cmd : In(stream.Signature(load_command_layout))
    done : Out(stream.Signature(1))
    write : Out(stream.Signature(StructLayout({"buffer": 2, "line": 16, "stripe": 2,
                                               "data": lanes * line_bits})))
        ``line`` is the first line of the transfer; lane ``i`` of ``data`` (bits ``i
        line_bits`` up) is line ``line + i``; lanes ``2**stripe`` and up are don't-care.
    base : In(ArrayLayout(64, ports))
        Byte address of each port's memory, added to every address.
    axi : Out(axi4_signature(64, line_bits)).array(ports)
        Drives AR and R of every port (``arvalid`` only on the command's port); AW, W and B
        are tied idle.
    """

    def __init__(self, line_bits, ports, outstanding=8, max_burst=None, lanes=1):
        _validate(line_bits, ports, outstanding)
        _validate_lanes(lanes, ports)
        self.lanes = lanes
        most = BOUNDARY // (line_bits // 8)
        if max_burst is None:
            max_burst = most
        if type(max_burst) is not int or not 1 <= max_burst <= most:
            raise ValueError(f"max_burst must be 1 to {most}, not {max_burst!r}")
        self.max_burst = max_burst
        super().__init__(line_bits, ports, outstanding, {
            "cmd": In(stream.Signature(load_command_layout)),
            "write": Out(stream.Signature(data.StructLayout({
                "buffer": 2, "line": 16, "stripe": 2, "data": lanes * line_bits}))),
        })

    def bursts(self, command, base=0):
        """The ``(address, beats)`` of every burst of ``command`` (a dict of the resolved
        fields), in issue order; ``base`` is the port's base address. A striped command issues
        each burst on all its ports at once (a beat then brings ``2**stripe`` lines)."""
        out = []
        step = self.line_bytes
        for row in _rows(command, base):
            left = command["length"] >> command.get("stripe", 0)
            while left:
                beats = min(left, (BOUNDARY - row % BOUNDARY) // step, self.max_burst)
                out.append((row, beats))
                row += beats * step
                left -= beats
        return out

    def expected_cycles(self, command, latency, base=0):
        """Cycles from the ``cmd`` transfer to the ``done`` transfer (both included) with a
        memory that takes every address at once, answers a burst ``latency`` cycles after its
        address (R beats back to back, bursts in order) and a ``write`` sink and ``done`` that
        are always ready (the memory of :class:`flightgen.sim.axi_model.AxiMemoryModel`
        with ``latency=(latency, latency)`` and ``stall=0``)."""
        bursts = self.bursts(command, base)
        if not bursts:
            # the command's record, the R side's empty marker, the R queue, done
            return 7
        ends = []  # cycle of each burst's last R beat, counted from the cmd transfer
        r_free = 0  # first cycle the R channel is free
        issue = 1
        for k, (_, beats) in enumerate(bursts):
            issue += 1  # the AR register: one address per cycle at most
            if k >= self.outstanding:  # wait for an earlier burst's last beat
                issue = max(issue, ends[k - self.outstanding] + 2)
            first = max(issue + latency, r_free)
            ends.append(first + beats - 1)
            r_free = ends[-1] + 1
        # the R queue (2 cycles), the write transfer, done
        return ends[-1] + 3 + 1

    def _span(self, m, port, stripe):
        """The ports a command on ``port`` with ``stripe`` uses, as a mask of ``ports`` bits."""
        lanes = Signal(self.lanes)
        with m.Switch(stripe):
            for code in range(self.lanes.bit_length()):
                with m.Case(code):
                    m.d.comb += lanes.eq((1 << (1 << code)) - 1)
        mask = Signal(self.ports)
        m.d.comb += mask.eq(lanes << port)
        return mask

    def elaborate(self, platform):
        m = Module()
        step, shift = self.line_bytes, self.size
        # Three stages, each on its own command: the address side issues the bursts of the
        # newest command, the R side receives the lines of the oldest command still receiving,
        # the write side writes (and reports) the oldest command still writing. A striped
        # command runs its ports in lockstep: one address for all of them, one wide R beat.
        record = data.StructLayout({"port": 5, "stripe": 2, "buffer": 2, "line": 16,
                                    "lines": 40})
        m.submodules.records = records = SyncFIFOBuffered(width=record.size, depth=_RECORDS)
        entry = data.StructLayout({"data": self.lanes * self.line_bits, "buffer": 2,
                                   "line": 16, "stripe": 2, "last": 1, "error": 1, "empty": 1})
        m.submodules.queue = queue = SyncFIFOBuffered(width=entry.size, depth=_R_QUEUE)

        # -- the address side ------------------------------------------------------------------
        c = Signal(load_command_layout)
        plane, row, cur = Signal(ADDR_BITS), Signal(ADDR_BITS), Signal(ADDR_BITS)
        length = Signal(16)  # beats per row on each port
        left = Signal(16)
        i2, i3 = Signal(12), Signal(12)
        issuing = Signal()  # bursts of the newest command remain to be issued
        inflight = Signal(range(self.outstanding + 1))
        # addresses relative to the ports' bases (each port adds its own); the 4 KiB
        # boundaries are those of the first port's (a stripe's bases agree modulo 4 KiB)
        base = self._select_base(m, self.cmd.payload.port)
        low = Signal(12)
        new = self.cmd.payload
        start = new.addr
        new_length = new.length >> new.stripe
        m.d.comb += [self.cmd.ready.eq(~issuing & records.w_rdy),
                     records.w_en.eq(self.cmd.valid & self.cmd.ready),
                     records.w_data.eq(Cat(new.port, new.stripe, new.buffer, new.line,
                                           (new_length * new.count2 * new.count3)[:40]))]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [c.eq(new), low.eq(base[:12]), plane.eq(start), row.eq(start),
                         cur.eq(start),
                         length.eq(new_length), left.eq(new_length), i2.eq(0), i3.eq(0),
                         issuing.eq(new.length != 0)]

        # the address register: one address for the command's ports, held until each took it
        ar_addr, ar_len = Signal(ADDR_BITS), Signal(8)
        ar_wait = Signal(self.ports)  # ports that have not taken the address yet
        ar_ready = Cat(bus.arready for bus in self.axi)
        ar_mask = self._span(m, c.port, c.stripe)
        room = Signal(range(BOUNDARY // step + 1))
        cap = Signal.like(room)
        beats = Signal.like(room)
        m.d.comb += [room.eq(beats_to_boundary((cur[:12] + low)[:12], shift)),
                     cap.eq(Mux(room < self.max_burst, room, self.max_burst)),
                     beats.eq(Mux(left < cap, left, cap))]
        r_end = Signal()  # a burst's last beat is taken this cycle
        issue = issuing & ((ar_wait & ~ar_ready) == 0) & (inflight < self.outstanding)
        m.d.sync += ar_wait.eq(ar_wait & ~ar_ready)
        with m.If(issue):
            m.d.sync += [ar_wait.eq(ar_mask), ar_addr.eq(cur), ar_len.eq(beats - 1)]
            with m.If(beats != left):
                m.d.sync += [cur.eq(cur + (beats << shift)), left.eq(left - beats)]
            with m.Elif(i2 != c.count2 - 1):
                m.d.sync += [i2.eq(i2 + 1), row.eq(row + c.stride2), cur.eq(row + c.stride2),
                             left.eq(length)]
            with m.Elif(i3 != c.count3 - 1):
                m.d.sync += [i3.eq(i3 + 1), i2.eq(0), plane.eq(plane + c.stride3),
                             row.eq(plane + c.stride3), cur.eq(plane + c.stride3),
                             left.eq(length)]
            with m.Else():
                m.d.sync += issuing.eq(0)
        m.d.sync += inflight.eq(inflight + issue - r_end)

        # -- the R side: lines of the oldest receiving command, tagged for the write side -----
        rec = Signal(record)
        receiving = Signal()
        error = Signal()
        r_mask = self._span(m, rec.port, rec.stripe)
        r_valid = ((Cat(bus.rvalid for bus in self.axi) | ~r_mask) == (1 << self.ports) - 1)
        r_bad = Cat((bus.rresp != RESP_OKAY) for bus in self.axi) & r_mask
        r_last = Signal()
        self._select(m, rec.port, [(r_last, "rlast")])
        r_data = []  # lane i: port rec.port + i (lane i serves stripes above i only)
        for i in range(self.lanes):
            lane = Signal(self.line_bits, name=f"r_data{i}")
            align = 1 << i.bit_length()  # a stripe of more than i lanes starts on this
            with m.Switch(rec.port):
                for p in range(0, self.ports - i, 1 if i == 0 else align):
                    with m.Case(p):
                        m.d.comb += lane.eq(self.axi[p + i].rdata)
            r_data.append(lane)
        with m.If(~receiving & records.r_rdy):
            m.d.comb += records.r_en.eq(1)
            m.d.sync += [rec.eq(records.r_data), receiving.eq(1), error.eq(0)]
        tag = Signal(entry)
        take = Signal()
        m.d.comb += take.eq(receiving & (rec.lines != 0) & r_valid & queue.w_rdy)
        bad = take & r_bad.any()
        m.d.comb += [tag.data.eq(Cat(*r_data)), tag.buffer.eq(rec.buffer), tag.line.eq(rec.line),
                     tag.stripe.eq(rec.stripe), tag.last.eq(rec.lines == 1),
                     tag.error.eq(error | bad), tag.empty.eq(rec.lines == 0)]
        with m.If(take):
            m.d.sync += [rec.lines.eq(rec.lines - 1), rec.line.eq(rec.line + (1 << rec.stripe))]
            with m.If(bad):
                m.d.sync += error.eq(1)
            with m.If(rec.lines == 1):
                m.d.sync += receiving.eq(0)
        empty = receiving & (rec.lines == 0)
        with m.If(empty & queue.w_rdy):
            m.d.sync += receiving.eq(0)
        m.d.comb += [queue.w_en.eq(take | (empty & queue.w_rdy)), queue.w_data.eq(tag),
                     r_end.eq(take & r_last)]

        # -- the write side: lines to the buffers, then done --------------------------------
        head = Signal(entry)
        m.d.comb += head.eq(queue.r_data)
        reporting = Signal()
        report = Signal()
        m.d.comb += [self.write.payload.buffer.eq(head.buffer),
                     self.write.payload.line.eq(head.line),
                     self.write.payload.stripe.eq(head.stripe),
                     self.write.payload.data.eq(head.data),
                     self.write.valid.eq(queue.r_rdy & ~head.empty & ~reporting),
                     self.done.valid.eq(reporting), self.done.payload.eq(report)]
        with m.If(self.done.valid & self.done.ready):
            m.d.sync += reporting.eq(0)
        with m.If(queue.r_rdy & ~reporting):
            with m.If(head.empty):
                m.d.comb += queue.r_en.eq(1)
                m.d.sync += [reporting.eq(1), report.eq(0)]
            with m.Elif(self.write.ready):
                m.d.comb += queue.r_en.eq(1)
                with m.If(head.last):
                    m.d.sync += [reporting.eq(1), report.eq(head.error)]

        for p in range(self.ports):
            bus = self.axi[p]
            _tie_writes(m, bus)
            m.d.comb += [bus.arvalid.eq(ar_wait[p]), bus.araddr.eq(self.base[p] + ar_addr),
                         bus.arlen.eq(ar_len), bus.arsize.eq(shift), bus.arburst.eq(BURST_INCR),
                         bus.arcache.eq(AXCACHE),
                         bus.rready.eq(receiving & (rec.lines != 0) & r_mask[p] & r_valid
                                       & queue.w_rdy)]
        return m


class StoreEngine(_Engine):
    """Execute resolved ``STORE`` descriptors: on-chip buffer bytes into HBM, any alignment.

    Parameters
    ----------
    line_bits : int
        Buffer line and AXI data width, 256 or 512.
    ports : int
        AXI4 masters (HBM ports), 1 to 32.
    outstanding : int
        Most bursts awaiting their write response.
    lanes : int
        The widest stripe, 1, 2, 4 or 8 (at most ``ports``): the load unit's.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Contract
    --------
    * Each ``cmd`` writes ``length * count2 * count3`` bytes: the consecutive bytes of
      ``buffer`` from byte 0 of line ``line``, row ``(i3, i2)`` (``i3`` outer) to byte
      ``base[port] + addr + i3 stride3 + i2 stride2`` of ``axi[port]``. Bursts are exactly
      :meth:`bursts` (aligned addresses; ``wstrb`` enables exactly the row's bytes), in order;
      the W beats of a burst follow the acceptance of its address.
    * A **striped** command (``s = 2**stripe`` > 1; the issuer guarantees ``s <= lanes``,
      ``port`` a multiple of ``s`` and ``port + s <= ports``) writes logical addresses
      (:func:`flightgen.isa.machine.striped_bytes`): line ``l`` of them is line ``l // s`` of
      ``axi[port + l % s]``. Its bursts end at every line: each is one beat to one port.
    * ``done`` carries one transfer per command once every write response of the command has
      arrived (from whichever ports): 1 if any ``BRESP`` was not OKAY, else 0. ``length = 0``
      writes nothing and reports 0. One command at a time: ``cmd`` is ready only when the
      engine is idle; the engine takes every write response (``bready`` high) as its own.
    * Source lines are read through a port of latency 1 (``read_*``); the engine reads only
      lines whose bytes it writes. A beat whose bytes lie in one source line costs one read
      and one cycle; otherwise two (throughput one beat per cycle for row starts and source
      positions equal modulo the line size, one per two cycles at worst), plus a cycle per
      burst for its address; a beat is valid on W 4 cycles after its last read. With no
      stalls a command takes :meth:`expected_cycles`. Backpressure on W stalls the reads
      (the W queue holds 8 beats); nothing is dropped. Reset empties the engine (any burst in
      flight is abandoned).

    Members
    -------
    cmd : In(stream.Signature(store_command_layout))
    done : Out(stream.Signature(1))
    read_en : Out(1)
    read_buffer : Out(2)
    read_line : Out(16)
    read_data : In(line_bits)
        Buffer read port: with ``read_en`` high in cycle ``t``, ``read_data`` holds line
        ``read_line`` of ``read_buffer`` from cycle ``t + 1`` until the cycle after the next
        read.
    base : In(ArrayLayout(64, ports))
        Byte address of each port's memory, added to every address.
    axi : Out(axi4_signature(64, line_bits)).array(ports)
        Drives AW, W and B of every port (``awvalid``, ``wvalid`` only on each burst's port);
        AR and R are tied idle.
    """

    def __init__(self, line_bits, ports, outstanding=8, lanes=1):
        _validate(line_bits, ports, outstanding)
        _validate_lanes(lanes, ports)
        self.lanes = lanes
        super().__init__(line_bits, ports, outstanding, {
            "cmd": In(stream.Signature(store_command_layout)),
            "read_en": Out(1),
            "read_buffer": Out(2),
            "read_line": Out(16),
            "read_data": In(line_bits),
        })

    def bursts(self, command, bases=0):
        """The ``(port, address, beats)`` of every burst of ``command`` (a dict of the resolved
        fields), in issue order; ``bases`` is each port's base address (a sequence, or one
        for all). Addresses are aligned to the line size; the first and last beats of a row
        may be partial."""
        return [(port, addr, len(reads)) for port, addr, reads in self._plan(command, bases)]

    def _plan(self, command, bases):
        """Each burst's port, aligned address and the source reads (1 or 2) of each of its
        beats."""
        step = self.line_bytes
        stripe = command.get("stripe", 0)
        # an unstriped row's bursts end at 4 KiB boundaries of its port, a striped one's at
        # every line (the next line lives on the next port)
        boundary = step if stripe else BOUNDARY
        src = 0  # source byte of ``cur``
        for cur in _rows(command, 0):
            left = command["length"]
            while left:
                port, at = (int(x) for x in striped_bytes(cur, stripe, step))
                port += command["port"]
                at += bases[port] if isinstance(bases, list | tuple) else bases
                size = min(left, boundary - at % boundary)
                first, end = at % step, at % step + size
                beats = -(-end // step)
                reads = []
                for k in range(beats):
                    shift = (src - first + k * step) % step
                    lo = first if k == 0 else 0
                    hi = (end - 1) % step if k == beats - 1 else step - 1
                    reads.append((lo + shift < step) + (shift != 0 and hi + shift >= step))
                yield port, at - first, reads
                cur, src, left = cur + size, src + size, left - size

    def expected_cycles(self, command, latency, base=0):
        """Cycles from the ``cmd`` transfer to the ``done`` transfer (both included) with a
        memory that takes every address and beat at once and answers a burst's last beat
        ``latency`` cycles later (:class:`flightgen.sim.axi_model.AxiMemoryModel` with
        ``latency=(latency, latency)`` and ``stall=0``) and ``done`` always ready: a cycle per
        burst address, a cycle per source read, four from a beat's last read to W, then the
        write responses."""
        responses = []  # cycle of each burst's write response
        cycle = 1  # the first address
        for k, (_, _, reads) in enumerate(self._plan(command, base)):
            if k >= self.outstanding:  # wait for an earlier burst's response
                cycle = max(cycle, responses[k - self.outstanding] + 1)
            cycle += 1 + sum(reads)
            responses.append(cycle - 1 + 4 + latency)
        if not responses:
            return 2
        return responses[-1] + 2 + 1

    def elaborate(self, platform):
        m = Module()
        step, shift = self.line_bytes, self.size
        port_bits = _COMMAND_FIELDS["port"]
        # a W beat: its data, strobes, whether it ends its burst, and the burst's port
        w_beat = data.StructLayout({"data": self.line_bits, "strobes": step, "last": 1,
                                    "port": port_bits})
        m.submodules.queue = queue = SyncFIFOBuffered(width=w_beat.size, depth=_W_QUEUE)

        c = Signal(store_command_layout)
        plane, row, cur = Signal(ADDR_BITS), Signal(ADDR_BITS), Signal(ADDR_BITS)
        left = Signal(16)
        src = Signal(24)  # source byte of ``cur``, from byte 0 of line ``c.line``
        i2, i3 = Signal(12), Signal(12)
        waiting = Signal(range(self.outstanding + 1))  # bursts awaiting B
        error = Signal()

        # addresses are logical, relative to the ports' bases (``cur``); the burst at ``cur``
        # goes to port ``c.port + line % s``, line ``line // s`` of it (s = 2**stripe), and
        # holds at most ``left`` bytes up to the next 4 KiB boundary of the port (its base's
        # low bits: ``low``), or of a striped command, up to the next line
        low = Signal(12)
        stripe_low = self._stripe_low(m, c.stripe)
        port = Signal(port_bits)
        m.d.comb += port.eq(c.port | (cur[shift:shift + 3] & stripe_low))
        at = Signal(ADDR_BITS)  # the burst's byte on its port, from the base
        with m.Switch(c.stripe):
            for code in range(1, self.lanes.bit_length()):
                with m.Case(code):
                    m.d.comb += at.eq(Cat(cur[:shift], cur[shift + code:]))
            with m.Default():
                m.d.comb += at.eq(cur)
        room = Signal(range(BOUNDARY + 1))
        size = Signal(range(BOUNDARY + 1))
        first = Signal(shift)
        end = Signal(range(BOUNDARY + step))
        m.d.comb += [room.eq(Mux(stripe_low.any(), step - cur[:shift],
                                 BOUNDARY - (cur[:12] + low)[:12])),
                     size.eq(Mux(left < room, left, room)),
                     first.eq(cur[:shift]), end.eq(first + size)]
        aw_valid = Signal()
        aw_ready = Signal()
        self._select(m, port, [(aw_ready, "awready")])
        aw_addr = Signal(ADDR_BITS)
        m.d.comb += aw_addr.eq(self._select_base(m, port) + at)
        burst_port = Signal(port_bits)  # the port of the burst whose beats are requested

        # the current burst
        beats = Signal(range(BOUNDARY // step + 1))
        last_lane = Signal(shift)  # lane of the burst's last byte
        first_lane = Signal(shift)
        beat = Signal.like(beats)
        s0 = Signal(signed(26))  # source byte of lane 0 of the current beat
        phase = Signal()  # 1: the beat's second read

        # the beat pipeline: requests (reads), then capture, then the W queue
        inflight = Signal(range(4))  # beats requested, not yet in the W queue
        lo, hi = Signal(self.line_bits), Signal(self.line_bits)
        lanes = [Signal(shift, name="klo"), Signal(shift, name="khi")]
        klo, khi = lanes
        sh = Signal(shift)
        j = Signal(signed(26 - shift))
        m.d.comb += [klo.eq(Mux(beat == 0, first_lane, 0)),
                     khi.eq(Mux(beat == beats - 1, last_lane, step - 1)),
                     sh.eq(s0[:shift]), j.eq(s0[shift:])]
        need_lo = (klo + sh) < step
        need_hi = (sh != 0) & ((khi + sh) >= step)
        space = (queue.level + inflight) < _W_QUEUE - 1
        request = Signal()
        upper = Signal()  # the request reads line j + 1 (into ``hi``)
        ends = Signal()  # the request is the beat's last
        m.d.comb += [upper.eq(phase | ~need_lo), ends.eq(phase | ~need_lo | ~need_hi)]
        strobes = Signal(step)
        # byte k is written when klo <= k <= khi (the comparisons that are always true at
        # the ends are left out: Verilator rejects constant comparisons)
        m.d.comb += strobes.eq(Cat(*[
            (1 if k == step - 1 else (klo <= k)) & (1 if k == 0 else (khi >= k))
            for k in range(step)]))
        m.d.comb += [self.read_en.eq(request), self.read_buffer.eq(c.buffer),
                     self.read_line.eq(c.line + j + upper)]

        s1_valid, s1_upper, s1_end = Signal(), Signal(), Signal()
        beat_layout = data.StructLayout({"sh": shift, "strobes": step, "last": 1,
                                         "port": port_bits})
        s1_beat, s2_beat = Signal(beat_layout), Signal(beat_layout)
        s2_valid = Signal()
        m.d.sync += [s1_valid.eq(request), s1_upper.eq(upper), s1_end.eq(request & ends),
                     s1_beat.eq(Cat(sh, strobes, beat == beats - 1, burst_port)),
                     s2_valid.eq(s1_end),
                     s2_beat.eq(s1_beat)]
        with m.If(s1_valid):
            with m.If(s1_upper):
                m.d.sync += hi.eq(self.read_data)
            with m.Else():
                m.d.sync += lo.eq(self.read_data)
        window = Cat(lo, hi)
        aligned = Signal(self.line_bits)
        with m.Switch(s2_beat.sh):
            for k in range(step):
                with m.Case(k):
                    m.d.comb += aligned.eq(window[8 * k:8 * k + self.line_bits])
        tail = data.View(w_beat, queue.w_data)
        m.d.comb += [queue.w_en.eq(s2_valid), tail.data.eq(aligned),
                     tail.strobes.eq(s2_beat.strobes), tail.last.eq(s2_beat.last),
                     tail.port.eq(s2_beat.port)]
        m.d.sync += inflight.eq(inflight + (request & ends) - s2_valid)

        # -- the descriptor ----------------------------------------------------------------------
        base = self._select_base(m, self.cmd.payload.port)
        start = self.cmd.payload.addr
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [c.eq(self.cmd.payload), low.eq(base[:12]), plane.eq(start),
                                 row.eq(start), cur.eq(start),
                                 left.eq(self.cmd.payload.length), src.eq(0),
                                 i2.eq(0), i3.eq(0), error.eq(0)]
                    with m.If(self.cmd.payload.length == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ADDRESS"
            with m.State("ADDRESS"):
                m.d.comb += aw_valid.eq(waiting < self.outstanding)
                with m.If(aw_valid & aw_ready):
                    m.d.sync += [beats.eq((end + step - 1) >> shift), first_lane.eq(first),
                                 burst_port.eq(port),
                                 last_lane.eq(end - 1), beat.eq(0), phase.eq(0),
                                 s0.eq(src - first), cur.eq(cur + size), src.eq(src + size),
                                 left.eq(left - size)]
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += request.eq(space)
                with m.If(request & ~ends):
                    m.d.sync += phase.eq(1)
                with m.If(request & ends):
                    m.d.sync += [phase.eq(0), beat.eq(beat + 1), s0.eq(s0 + step)]
                    with m.If(beat == beats - 1):
                        m.next = "ADDRESS"
                        with m.If(left != 0):
                            pass  # the row's next burst
                        with m.Elif(i2 != c.count2 - 1):
                            m.d.sync += [i2.eq(i2 + 1), row.eq(row + c.stride2),
                                         cur.eq(row + c.stride2), left.eq(c.length)]
                        with m.Elif(i3 != c.count3 - 1):
                            m.d.sync += [i3.eq(i3 + 1), i2.eq(0), plane.eq(plane + c.stride3),
                                         row.eq(plane + c.stride3), cur.eq(plane + c.stride3),
                                         left.eq(c.length)]
                        with m.Else():
                            m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If((inflight == 0) & (queue.level == 0) & (waiting == 0)):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.valid.eq(1)
                with m.If(self.done.ready):
                    m.next = "IDLE"

        # -- write responses ---------------------------------------------------------------------
        # (bready is always high: every port's response is taken, a striped command's from
        # several ports in one cycle)
        m.d.comb += self.done.payload.eq(error)
        b_valid = Cat(bus.bvalid for bus in self.axi)
        b_taken = Signal(range(self.ports + 1))
        m.d.comb += b_taken.eq(sum(b_valid[p] for p in range(self.ports)))
        with m.If(Cat(bus.bvalid & (bus.bresp != RESP_OKAY) for bus in self.axi).any()):
            m.d.sync += error.eq(1)
        m.d.sync += waiting.eq(waiting + (aw_valid & aw_ready) - b_taken)

        # -- the masters ---------------------------------------------------------------------
        w_ready = Signal()
        head = data.View(w_beat, queue.r_data)
        self._select(m, head.port, [(w_ready, "wready")])
        m.d.comb += queue.r_en.eq(w_ready)
        for p in range(self.ports):
            bus = self.axi[p]
            _tie_reads(m, bus)
            m.d.comb += [bus.awvalid.eq(aw_valid & (port == p)),
                         bus.awaddr.eq(Cat(Const(0, shift), aw_addr[shift:])),
                         bus.awlen.eq(((end + step - 1) >> shift) - 1), bus.awsize.eq(shift),
                         bus.awburst.eq(BURST_INCR), bus.awcache.eq(AXCACHE),
                         bus.wvalid.eq(queue.r_rdy & (head.port == p)),
                         bus.wdata.eq(head.data), bus.wstrb.eq(head.strobes),
                         bus.wlast.eq(head.last),
                         bus.bready.eq(1)]
        return m
