"""The accelerator core: instruction fetch, the dispatcher, per-unit queues with tokens, the
memory engine, the compute units, the on-chip buffers and the Vitis control registers.

It executes programs with exactly the semantics of :mod:`flightgen.isa.machine` (the ISA
simulator), which documents the machine; this module documents the hardware.

Block diagram::

    s_axi_control -> ControlSlave -- start, args (program, length, r1..r7, hbm pointers)
    m_axi_program -> Fetch -> Decoder -> dispatcher (SYS) -+-> LOAD queue   -> LoadEngine
                                                           +-> STORE queue  -> StoreEngine
                                                           +-> MATRIX queue -> MatrixUnit
                                                           +-> VECTOR queue -> VectorUnit
                                                           +-> BarrierEngine -> m_axi_sync
    LoadEngine (AR, R) and StoreEngine (AW, W, B) share the ports m_axi_hbm0 ...
    TokenMatrix between the five units; buffers VEC, ACT, WGT, META shared by the units.
    BarrierEngine (``CoreConfig.barrier`` only): BARRIER's flags on the exchange port's channel.

Run
---
The host writes the arguments and sets ``ap_start``. The core clears its tokens, error and
counters, fetches ``length`` instructions from ``program``, runs them, and signals ``done``
when the dispatcher has stopped (``HALT`` or an error) and no unit can move; it never hangs.
The status registers then hold the error code, the ``pc`` it belongs to, the cycles of the
run and the instructions retired.

A core with ``CoreConfig.barrier`` has one more master, ``sync`` (``m_axi_sync``), and one
more pointer, ``sync``, after the ``hbm`` pointers: the host sets it to the same buffer as the
exchange port's (``hbm{hbm_ports - 1}``), the channel the group shares. The dispatcher runs a
``BARRIER`` (after its tokens) on the :class:`~flightgen.hw.barrier.BarrierEngine` and waits
for it: the flag written, the peers' flags met, then it retires the ``BARRIER`` and releases
its tokens. A barrier whose peers do not come within the engine's timeout ends the run with
``BARRIER`` at its pc; an error response, with ``AXI``. While it waits the core is not idle
(a peer may come later), so no ``DEADLOCK`` is reported.

Contract
--------
* Buffer contents survive between runs (no reset touches them); tokens, queues, the error and
  the matrix engine's tile do not.
* ``retire``: each unit's retired instructions (``valid`` for one cycle with the ``pc``), in
  the unit's order, for benches comparing per-instruction order with the ISA simulator. A
  unit's last buffer write for an instruction happens in or before the cycle it retires.
* ``dispatched``: ``valid`` for one cycle with the ``pc`` of each instruction the dispatcher
  passes to a unit's queue or takes itself (a ``SYS``), in program order.
* ``buffer_writes``: each buffer bank's write port as the bank sees it (``en``, ``line``:
  the buffer's line, ``data``), in the order of :func:`write_monitors` (one per buffer, and
  one per bank of ``WGT`` and ``META``), so a bench can mirror the buffers and check what each
  instruction wrote (the C++ harness's ``--check``).

These three are outputs for simulation only; the Vitis top leaves them unconnected and
synthesis removes them.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..isa.instructions import FORMATS, REGISTERS, WORD_BITS, Buffer, Opcode, SysOp, Unit
from ..isa.machine import BANKED, ErrorCode
from .axi import BURST_INCR, RESP_OKAY, axi4_lite_signature, axi4_signature, beats_to_boundary
from .barrier import BARRIER_TIMEOUT, BarrierEngine, check_timeout
from .beats import LINE_ADDR_BITS, WriteArbiter, read_port_signature
from .buffers import BankedBuffer
from .control import ControlSlave, RegisterMap
from .dispatch import UNITS, Decoder, TokenMatrix, decoded_layout
from .memory import LoadEngine, StoreEngine
from .units import MatrixUnit, VectorUnit

__all__ = ["Core", "Fetch", "register_map", "STATUS", "buffer_write_signature",
           "write_monitors"]

ADDR_BITS = 64
#: Store bursts awaiting their write response (a KV-cache token is one short burst per row).
STORE_OUTSTANDING = 32
#: Read-only status registers of the control map.
STATUS = (("error", 4), ("error_pc", 32), ("cycles", 64), ("retired", 32))
_N = len(Unit)


def register_map(config):
    """The control registers of a core with ``config`` (see :class:`~flightgen.hw.control.
    RegisterMap`): pointers ``program`` and ``hbm0``.. (and ``sync`` with ``config.barrier``:
    the barrier engine's master, set to the exchange port's buffer), scalars ``length``
    (instructions) and the length registers ``r1``..``r7``, then :data:`STATUS`."""
    pointers = ("program",) + tuple(f"hbm{p}" for p in range(config.hbm_ports))
    if config.barrier:
        pointers += ("sync",)
    return RegisterMap(pointers, ("length",) + tuple(f"r{i}" for i in range(1, REGISTERS)),
                       STATUS)


def buffer_write_signature(line_bits):
    """One buffer bank's write port as the core's ``buffer_writes`` output shows it."""
    return wiring.Signature({"en": Out(1), "line": Out(LINE_ADDR_BITS), "data": Out(line_bits)})


def write_monitors(config):
    """``(buffer, bank)`` of each entry of the core's ``buffer_writes``: every buffer in
    :class:`~flightgen.isa.instructions.Buffer` order, ``WGT`` and ``META`` with their
    ``load_lanes`` banks (line ``l`` in bank ``l % load_lanes``), the others with one."""
    return tuple((b, bank) for b in Buffer
                 for bank in range(config.load_lanes if b in BANKED else 1))


fetch_layout = data.StructLayout({"word": WORD_BITS, "pc": 32, "end": 1, "bad": 1})


class Fetch(wiring.Component):
    """Read a program: ``count`` 32-byte words from byte address ``base`` (line aligned).

    Contract
    --------
    * After ``start``, ``o`` carries words ``pc = 0, 1, ...`` in order, then one transfer with
      ``end`` set and ``pc = count``. ``bad`` marks a word whose read response was an error.
    * ``stop`` (held high) ends the run: no more reads are issued, ``o`` stops, and reads in
      flight are absorbed; ``idle`` is high once none is left.
    * Reads are bursts of at most :attr:`BURST` lines within one 4 KiB block, issued while the
      line queue has room for them, so ``rready`` is always high.
    """

    BURST = 8
    QUEUE = 16

    def __init__(self, line_bits):
        self.line_bits = line_bits
        super().__init__({
            "start": In(1), "stop": In(1), "base": In(ADDR_BITS), "count": In(32),
            "o": Out(stream.Signature(fetch_layout)),
            "axi": Out(axi4_signature(ADDR_BITS, line_bits)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.line_bits
        per = w // WORD_BITS
        line_bytes = w // 8
        log_bytes = line_bytes.bit_length() - 1
        axi = self.axi
        m.submodules.queue = queue = SyncFIFOBuffered(width=w + 1, depth=self.QUEUE)

        address = Signal(ADDR_BITS)
        lines_left = Signal(32)  # lines not yet requested
        outstanding = Signal(range(self.QUEUE + 1))
        active = Signal()
        count = Signal(32)
        m.d.comb += [axi.arburst.eq(BURST_INCR), axi.arsize.eq(log_bytes), axi.arcache.eq(0b0011),
                     axi.bready.eq(1), axi.rready.eq(1)]

        # burst length: the lines left, the burst limit, the 4 KiB block and the queue's room
        to_block = beats_to_boundary(address, log_bytes)
        limited = Signal(range(self.BURST + 1))
        m.d.comb += limited.eq(Mux(to_block < self.BURST, to_block, self.BURST))
        length = Signal(range(self.BURST + 1))
        m.d.comb += length.eq(Mux(lines_left < limited, lines_left, limited))
        room = self.QUEUE - queue.level - outstanding
        issue = active & ~self.stop & (lines_left != 0) & (room >= length)
        arvalid = Signal()
        m.d.comb += [axi.arvalid.eq(arvalid), axi.araddr.eq(address)]
        arlen = Signal(8)
        m.d.comb += axi.arlen.eq(arlen)
        accepted = axi.arvalid & axi.arready
        received = axi.rvalid & axi.rready
        with m.If(~arvalid & issue):
            m.d.sync += [arvalid.eq(1), arlen.eq(length - 1),
                         outstanding.eq(outstanding + length - received)]
        with m.Else():
            m.d.sync += outstanding.eq(outstanding - received)
        with m.If(accepted):
            m.d.sync += [arvalid.eq(0), address.eq(address + ((arlen + 1) << log_bytes)),
                         lines_left.eq(lines_left - arlen - 1)]
        m.d.comb += [queue.w_en.eq(received & ~self.stop),
                     queue.w_data.eq(Cat(axi.rdata, axi.rresp != RESP_OKAY))]

        # words out of lines
        pc = Signal(32)
        part = Signal(range(max(per, 2)))
        ended = Signal()
        line = queue.r_data
        out_word = Signal(WORD_BITS)
        m.d.comb += out_word.eq(line[:w].word_select(part, WORD_BITS) if per > 1 else line[:w])
        at_end = pc == count
        m.d.comb += [self.o.payload.word.eq(Mux(at_end, 0, out_word)),
                     self.o.payload.pc.eq(pc), self.o.payload.end.eq(at_end),
                     self.o.payload.bad.eq(~at_end & line[w]),
                     self.o.valid.eq(active & ~self.stop & ~ended & (at_end | queue.r_rdy))]
        with m.If(self.o.valid & self.o.ready):
            with m.If(at_end):
                m.d.sync += ended.eq(1)
            with m.Else():
                m.d.sync += pc.eq(pc + 1)
                if per > 1:
                    m.d.sync += part.eq(part + 1)
                last = (part == per - 1) | (pc + 1 == count)
                m.d.comb += queue.r_en.eq(last)
        with m.If(self.stop):
            m.d.comb += queue.r_en.eq(1)  # drain

        with m.If(self.stop):
            m.d.sync += active.eq(0)
        with m.If(self.start):  # a start wins over a stop in the same cycle
            lines = (self.count + per - 1) >> (per.bit_length() - 1)
            m.d.sync += [active.eq(1), ended.eq(0), pc.eq(0), part.eq(0),
                         count.eq(self.count), lines_left.eq(lines),
                         address.eq(self.base)]
        m.d.comb += self.idle.eq(~arvalid & (outstanding == 0))
        return m


class Core(wiring.Component):
    """One accelerator core.

    Parameters
    ----------
    config : flightgen.isa.machine.CoreConfig
    barrier_timeout : int
        Cycles a ``BARRIER`` waits for its peers before the run ends with ``BARRIER``
        (:class:`~flightgen.hw.barrier.BarrierEngine`; only with ``config.barrier``).

    Members
    -------
    control : Out(axi4_lite_signature(...))  (the AXI4-Lite slave: ``s_axi_control``)
    program : Out(axi4_signature(64, line_bits))  (instruction fetch: ``m_axi_program``)
    hbm : Out(axi4_signature(64, line_bits)).array(hbm_ports)  (``m_axi_hbm{p}``)
    sync : Out(axi4_signature(64, line_bits))  (``m_axi_sync``; only with ``config.barrier``)
    irq : Out(1)  (the Vitis ``interrupt``)
    retire : Out(ArrayLayout(StructLayout({"valid": 1, "pc": 32}), 5))  (per unit)
    dispatched : Out(StructLayout({"valid": 1, "pc": 32}))
    buffer_writes : Out(buffer_write_signature(line_bits)).array(len(write_monitors(config)))
    """

    def __init__(self, config, *, barrier_timeout=BARRIER_TIMEOUT):
        self.config = config
        self.registers = register_map(config)
        self.barrier_timeout = barrier_timeout
        barrier = {}
        if config.barrier:
            check_timeout(barrier_timeout)
            barrier = {"sync": Out(axi4_signature(ADDR_BITS, config.line_bits))}
        super().__init__({
            "control": Out(axi4_lite_signature(self.registers.addr_width)),
            "program": Out(axi4_signature(ADDR_BITS, config.line_bits)),
            "hbm": Out(axi4_signature(ADDR_BITS, config.line_bits)).array(config.hbm_ports),
            **barrier,
            "irq": Out(1),
            "retire": Out(data.ArrayLayout(data.StructLayout({"valid": 1, "pc": 32}), _N)),
            "dispatched": Out(data.StructLayout({"valid": 1, "pc": 32})),
            "buffer_writes": Out(buffer_write_signature(config.line_bits)).array(
                len(write_monitors(config))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        w = c.line_bits

        # -- control registers -----------------------------------------------------------------
        m.submodules.control = control = ControlSlave(self.registers)
        wiring.connect(m, wiring.flipped(self.control), control.axil)
        m.d.comb += self.irq.eq(control.interrupt)
        args = control.args
        registers = Signal(data.ArrayLayout(32, REGISTERS - 1))
        m.d.comb += registers.eq(Cat(*(getattr(args, f"r{i}") for i in range(1, REGISTERS))))

        running = Signal()
        start = Signal()
        m.d.comb += start.eq(control.start & ~running)

        def fresh(elaboratable):
            """``elaboratable`` with its state cleared when a run starts."""
            return ResetInserter({"sync": start})(elaboratable)

        # -- fetch and decode --------------------------------------------------------------------
        m.submodules.fetch = fetch = Fetch(w)
        wiring.connect(m, fetch.axi, wiring.flipped(self.program))
        m.d.comb += [fetch.start.eq(start), fetch.base.eq(args.program),
                     fetch.count.eq(args.length), control.idle.eq(~running & fetch.idle)]
        decoder = Decoder(c)
        m.submodules.decoder = fresh(decoder)
        m.d.comb += decoder.registers.eq(registers)
        stopped = Signal()  # the dispatcher takes no more instructions
        m.d.comb += fetch.stop.eq(stopped | ~running)

        # words go to the decoder; the end marker and bad reads become errors
        fetched = fetch.o.payload
        plain = ~fetched.end & ~fetched.bad
        # an end marker or a bad word is an error only once everything before it has been
        # dispatched: the decoder is empty and the dispatcher is not releasing a SYS
        in_order = Signal()
        m.d.comb += [decoder.i.payload.word.eq(fetched.word), decoder.i.payload.pc.eq(fetched.pc),
                     decoder.i.valid.eq(fetch.o.valid & plain),
                     fetch.o.ready.eq(Mux(plain, decoder.i.ready, in_order))]
        fetch_error = fetch.o.valid & ~plain & in_order

        # -- tokens, queues and units --------------------------------------------------------
        m.submodules.tokens = tokens = TokenMatrix(_N, c.token_limit)
        m.d.comb += tokens.clear.eq(start)
        queues = {}
        for unit in UNITS:
            queue = SyncFIFOBuffered(width=decoded_layout.size, depth=c.queue_depth)
            m.submodules[f"queue_{unit.name.lower()}"] = fresh(queue)
            queues[unit] = queue

        # engines
        m.submodules.load = load = LoadEngine(w, c.hbm_ports, lanes=c.load_lanes)
        # stores of KV-cache tokens are many short bursts: keep more of them in flight
        m.submodules.store = store = StoreEngine(w, c.hbm_ports, outstanding=STORE_OUTSTANDING,
                                                 lanes=c.load_lanes)
        m.submodules.matrix = matrix = MatrixUnit(c)
        m.submodules.vector = vector = VectorUnit(c)
        m.d.comb += [matrix.clear.eq(start), vector.clear.eq(start)]
        for p in range(c.hbm_ports):
            port = self.hbm[p]
            m.d.comb += [load.base[p].eq(getattr(args, f"hbm{p}")),
                         store.base[p].eq(getattr(args, f"hbm{p}"))]
            for name, member in port.signature.members.items():
                source = load if name[:1] in ("a", "r") and name.startswith(("ar", "r")) \
                    else store
                if member.flow == Out:
                    m.d.comb += getattr(port, name).eq(getattr(source.axi[p], name))
                else:
                    m.d.comb += getattr(source.axi[p], name).eq(getattr(port, name))

        # -- buffers: one write port each (arbitrated), read ports per reader -------------------
        # WGT and META (BANKED) have load_lanes banks (line l in bank l % load_lanes, row
        # l // load_lanes) written by the load engine alone, a striped load's lines in one
        # cycle; VEC and ACT have one bank and an arbiter among their writers.
        writers = {Buffer.VEC: ["load", "matrix", "vector"], Buffer.ACT: ["load", "quant", "lo"]}
        readers = {Buffer.VEC: ["a", "b"], Buffer.ACT: ["act"], Buffer.WGT: ["wgt"],
                   Buffer.META: ["mask", "scale"]}
        for b in c.stored:  # a read port (a copy of the memories) for each buffer stored from
            readers[b] = ["store", *readers[b]]
        lanes, log_lanes = c.load_lanes, c.load_lanes.bit_length() - 1
        monitors = {key: self.buffer_writes[k] for k, key in enumerate(write_monitors(c))}
        read_ports = {}
        write_inputs = {}
        buffers = {}
        for b in Buffer:
            # UltraRAM: the block RAM of an SLR goes to the matrix engine's activation tiles
            # and the SFU's tables (at full size the ACT buffer in block RAM would take the
            # core past an SLR's share); META in banks is short enough for block RAM (in
            # UltraRAM each of its banks would take as many as the whole buffer)
            banks = lanes if b in BANKED else 1
            kind = "auto" if b == Buffer.META and banks > 1 else "uram"
            buf = BankedBuffer(w, c.lines(b), banks, read_ports=len(readers[b]), primitive=kind)
            m.submodules[f"buffer_{b.name.lower()}"] = buffers[b] = buf
            for p, name in enumerate(readers[b]):
                read_ports[b, name] = buf.read[p]
            if b in BANKED:
                continue
            arbiter = WriteArbiter(len(writers[b]), w)
            m.submodules[f"arbiter_{b.name.lower()}"] = arbiter
            m.d.comb += [buf.write[0].en.eq(arbiter.en), buf.write[0].addr.eq(arbiter.addr),
                         buf.write[0].data.eq(arbiter.data)]
            monitor = monitors[b, 0]
            m.d.comb += [monitor.en.eq(arbiter.en), monitor.line.eq(arbiter.addr),
                         monitor.data.eq(arbiter.data)]
            for k, name in enumerate(writers[b]):
                write_inputs[b, name] = getattr(arbiter, f"i{k}")

        # the load engine's lines go to the buffer they name: lane 0 through the arbiters, all
        # lanes straight into the banks of WGT and META (2**stripe lines from an aligned line)
        lw = load.write.payload
        lane_data = [lw.data[i * w:(i + 1) * w] for i in range(lanes)]
        first_bank = lw.line[:log_lanes] if log_lanes else Const(0, 1)
        selected = [Signal(name=f"bank_sel{bank}") for bank in range(lanes)]
        bank_data = [Signal(w, name=f"bank_data{bank}") for bank in range(lanes)]
        with m.Switch(lw.stripe):
            for code in range(log_lanes + 1):
                with m.Case(code):
                    for bank in range(lanes):
                        m.d.comb += [selected[bank].eq((first_bank >> code) == (bank >> code)),
                                     bank_data[bank].eq(lane_data[bank % (1 << code)])]
        for b in BANKED:
            for bank, port in enumerate(buffers[b].write):
                m.d.comb += [port.en.eq(load.write.valid & (lw.buffer == b.value)
                                        & selected[bank]),
                             port.addr.eq(lw.line[log_lanes:]), port.data.eq(bank_data[bank])]
                monitor = monitors[b, bank]
                m.d.comb += [monitor.en.eq(port.en),
                             monitor.line.eq(Cat(Const(bank, log_lanes), lw.line[log_lanes:])),
                             monitor.data.eq(bank_data[bank])]
            with m.If(lw.buffer == b.value):
                m.d.comb += load.write.ready.eq(1)
        for b in writers:
            target = write_inputs[b, "load"]
            m.d.comb += [target.valid.eq(load.write.valid & (lw.buffer == b.value)),
                         target.payload.line.eq(lw.line), target.payload.data.eq(lane_data[0])]
            with m.If(lw.buffer == b.value):
                m.d.comb += load.write.ready.eq(target.ready)

        def connect_rows(ports, client):
            """A client reads a row of every bank of ``ports`` (the banks side by side)."""
            m.d.comb += client.data.eq(Cat(port.data for port in ports))
            for port in ports:
                m.d.comb += [port.en.eq(client.en), port.addr.eq(client.addr)]

        def connect_lines(ports, client, name):
            """A client reads single lines: line ``l`` is row ``l // banks`` of bank ``l %
            banks`` (the bank of the line read last drives ``data``)."""
            if len(ports) == 1:
                return connect_rows(ports, client)
            bank = Signal(log_lanes, name=f"{name}_bank")
            with m.If(client.en):
                m.d.sync += bank.eq(client.addr[:log_lanes])
            for k, port in enumerate(ports):
                m.d.comb += [port.en.eq(client.en), port.addr.eq(client.addr >> log_lanes)]
                with m.If(bank == k):
                    m.d.comb += client.data.eq(port.data)

        connect_rows(read_ports[Buffer.ACT, "act"], matrix.act)
        connect_rows(read_ports[Buffer.WGT, "wgt"], matrix.wgt)
        connect_lines(read_ports[Buffer.META, "mask"], matrix.mask, "mask")
        connect_lines(read_ports[Buffer.META, "scale"], matrix.scale, "scale")
        connect_rows(read_ports[Buffer.VEC, "a"], vector.a)
        connect_rows(read_ports[Buffer.VEC, "b"], vector.b)
        wiring.connect(m, matrix.w, write_inputs[Buffer.VEC, "matrix"])
        wiring.connect(m, vector.w_vec, write_inputs[Buffer.VEC, "vector"])
        wiring.connect(m, vector.w_act, write_inputs[Buffer.ACT, "quant"])
        wiring.connect(m, vector.w_lo, write_inputs[Buffer.ACT, "lo"])
        # the store engine reads the buffer it names (data from the buffer read last)
        store_buffer = Signal(2)
        with m.If(store.read_en):
            m.d.sync += store_buffer.eq(store.read_buffer)
        for b in c.stored:  # (the dispatcher refuses a STORE from another buffer)
            client = read_port_signature(w).create(path=("store", b.name.lower()))
            connect_lines(read_ports[b, "store"], client, f"store_{b.name.lower()}")
            m.d.comb += [client.en.eq(store.read_en & (store.read_buffer == b.value)),
                         client.addr.eq(store.read_line)]
            with m.If(store_buffer == b.value):
                m.d.comb += store.read_data.eq(client.data)

        # -- engine adapters: queue entry -> engine command; engine answer -> ErrorCode --------
        issue_valid, issue_ready, answer_valid, answer_ready, answer_code = {}, {}, {}, {}, {}
        for u in UNITS:
            issue_valid[u] = Signal(name=f"issue_valid_{u.name.lower()}")
            answer_ready[u] = Signal(name=f"answer_ready_{u.name.lower()}")
        current = {u: Signal(decoded_layout, name=f"current_{u.name.lower()}") for u in UNITS}
        for u, engine in ((Unit.LOAD, load), (Unit.STORE, store)):
            f = FORMATS[Opcode.LOAD](current[u].word)
            for name in engine.cmd.payload.shape().members:
                m.d.comb += getattr(engine.cmd.payload, name).eq(getattr(f, name))
            m.d.comb += engine.cmd.valid.eq(issue_valid[u])
            issue_ready[u] = engine.cmd.ready
            answer_valid[u] = engine.done.valid
            answer_code[u] = Mux(engine.done.payload, ErrorCode.AXI, ErrorCode.NONE)
            m.d.comb += engine.done.ready.eq(answer_ready[u])
        for u, engine in ((Unit.MATRIX, matrix), (Unit.VECTOR, vector)):
            m.d.comb += [engine.cmd.valid.eq(issue_valid[u]), engine.cmd.payload.eq(current[u]),
                         engine.done.ready.eq(answer_ready[u])]
            issue_ready[u] = engine.cmd.ready
            answer_valid[u] = engine.done.valid
            answer_code[u] = engine.done.payload.as_value()

        # -- unit sequencers -----------------------------------------------------------------
        events = []  # (valid, pc, code) error events
        unit_stuck, unit_empty, unit_head = {}, {}, {}
        retired = Signal(32)
        for u in UNITS:
            name = u.name.lower()
            queue = queues[u]
            head = Signal(decoded_layout, name=f"head_{name}")
            m.d.comb += head.eq(queue.r_data)
            head_header = FORMATS[Opcode.SYS](head.word).header
            # issued instructions awaiting their answer: pc and release mask, in order
            flight = SyncFIFOBuffered(width=32 + _N, depth=c.flight(u))
            m.submodules[f"flight_{name}"] = fresh(flight)
            left = Signal(_N, name=f"release_{name}")
            done_pc = Signal(32, name=f"done_pc_{name}")
            can_take = (head_header.wait & ~tokens.available[u.value]) == 0
            giveable = left & ~tokens.full[u.value]
            seq = Module()
            m.submodules[f"sequencer_{name}"] = fresh(seq)
            # the issuer: tokens, then the engine takes the instruction
            with seq.FSM(name=f"issue_{name}") as issuer:
                with seq.State("IDLE"):
                    with seq.If(running & queue.r_rdy & can_take & flight.w_rdy):
                        seq.d.comb += [queue.r_en.eq(1),
                                       tokens.take[u.value].eq(head_header.wait)]
                        seq.d.sync += current[u].eq(head)
                        seq.next = "ISSUE"
                with seq.State("ISSUE"):
                    header = FORMATS[Opcode.SYS](current[u].word).header
                    seq.d.comb += [issue_valid[u].eq(1),
                                   flight.w_data.eq(Cat(current[u].pc, header.release))]
                    with seq.If(issue_ready[u]):
                        seq.d.comb += flight.w_en.eq(1)
                        seq.next = "IDLE"
            # the releaser: answers in order, then the tokens
            with seq.FSM(name=f"release_{name}") as releaser:
                with seq.State("WAIT"):
                    with seq.If(answer_valid[u] & flight.r_rdy):
                        seq.d.comb += [answer_ready[u].eq(1), flight.r_en.eq(1),
                                       self.retire[u.value].valid.eq(1),
                                       self.retire[u.value].pc.eq(flight.r_data[:32])]
                        seq.d.sync += [left.eq(flight.r_data[32:]),
                                       done_pc.eq(flight.r_data[:32])]
                        with seq.If(flight.r_data[32:] != 0):
                            seq.next = "RELEASE"
                with seq.State("RELEASE"):
                    seq.d.comb += tokens.give[u.value].eq(giveable)
                    seq.d.sync += left.eq(left & ~giveable)
                    with seq.If((left & ~giveable) == 0):
                        seq.next = "WAIT"
            # stuck: the issuer cannot start anything and the releaser has nothing it can do
            empty = queue.level == 0
            releasing_blocked = releaser.ongoing("RELEASE") & (giveable == 0)
            answered = releaser.ongoing("WAIT") & (flight.level == 0)
            stuck = Signal(name=f"stuck_{name}")
            m.d.comb += stuck.eq(
                issuer.ongoing("IDLE") & (empty | (queue.r_rdy & ~can_take) | ~flight.w_rdy) &
                (answered | releasing_blocked))
            unit_stuck[u] = stuck
            unit_empty[u] = issuer.ongoing("IDLE") & empty & answered
            blocked_pc = Signal(33, name=f"blocked_{name}")  # bit 32: none
            m.d.comb += blocked_pc.eq(Mux(releasing_blocked, done_pc,
                                          Mux(empty, 1 << 32, head.pc)))
            unit_head[u] = blocked_pc
            events.append((releaser.ongoing("WAIT") & answer_valid[u] & flight.r_rdy &
                           (answer_code[u] != ErrorCode.NONE), flight.r_data[:32],
                           answer_code[u]))

        # -- the dispatcher --------------------------------------------------------------------
        d = decoder.o.payload
        dh = FORMATS[Opcode.SYS](d.word).header
        sys_left = Signal(_N)
        sys_op = Signal(4)
        sys_pc = Signal(32)
        sys_can_take = (dh.wait & ~tokens.available[Unit.SYS.value]) == 0
        sys_giveable = sys_left & ~tokens.full[Unit.SYS.value]
        dispatch_error = Signal()
        dispatch_blocked = Signal(33, init=1 << 32)  # pc of a blocked SYS, bit 32: none
        disp = Module()
        m.submodules.dispatcher = fresh(disp)
        halt = Signal()
        # a BARRIER goes to the barrier engine once its tokens are taken (the engine is idle
        # whenever the dispatcher runs); the dispatcher waits for it, then retires it
        ds = FORMATS[Opcode.SYS](d.word)
        barrier_op = Signal()
        barrier_error = Signal()
        if c.barrier:
            m.submodules.barrier = barrier = BarrierEngine(w, self.barrier_timeout)
            wiring.connect(m, barrier.axi, wiring.flipped(self.sync))
            m.d.comb += [barrier.base.eq(args.sync), barrier.stop.eq(stopped),
                         barrier_op.eq(ds.op == SysOp.BARRIER),
                         barrier.cmd.payload.addr.eq(ds.addr),
                         barrier.cmd.payload.slot.eq(ds.slot),
                         barrier.cmd.payload.peers.eq(ds.peers),
                         barrier.cmd.payload.value.eq(ds.value)]
            sys_ready = ~barrier_op | barrier.cmd.ready
        else:
            sys_ready = 1

        def retire_sys(pc):
            """The SYS at ``pc`` retires; its tokens go next."""
            disp.d.comb += [self.retire[Unit.SYS.value].valid.eq(1),
                            self.retire[Unit.SYS.value].pc.eq(pc)]
            disp.next = "RELEASE"

        with disp.FSM(name="dispatch") as dispatch:
            with disp.State("RUN"):
                with disp.If(running & ~stopped & decoder.o.valid):
                    with disp.If(d.error != ErrorCode.NONE):
                        disp.d.comb += [decoder.o.ready.eq(1), dispatch_error.eq(1)]
                    with disp.Elif(d.unit == Unit.SYS):
                        disp.d.comb += dispatch_blocked.eq(d.pc)
                        with disp.If(sys_can_take & sys_ready):
                            disp.d.comb += [decoder.o.ready.eq(1),
                                         tokens.take[Unit.SYS.value].eq(dh.wait),
                                         self.dispatched.valid.eq(1)]
                            disp.d.sync += [sys_left.eq(dh.release), sys_op.eq(ds.op),
                                         sys_pc.eq(d.pc)]
                            if c.barrier:
                                with disp.If(barrier_op):
                                    disp.d.comb += barrier.cmd.valid.eq(1)
                                    disp.next = "BARRIER"
                                with disp.Else():
                                    retire_sys(d.pc)
                            else:
                                retire_sys(d.pc)
                    with disp.Else():
                        for u in UNITS:
                            with disp.If(d.unit == u):
                                disp.d.comb += [queues[u].w_en.eq(1), queues[u].w_data.eq(d),
                                             decoder.o.ready.eq(queues[u].w_rdy),
                                             self.dispatched.valid.eq(queues[u].w_rdy)]
            with disp.State("RELEASE"):
                disp.d.comb += tokens.give[Unit.SYS.value].eq(sys_giveable)
                disp.d.sync += sys_left.eq(sys_left & ~sys_giveable)
                with disp.If((sys_left & ~sys_giveable) != 0):
                    disp.d.comb += dispatch_blocked.eq(sys_pc)
                with disp.Else():
                    disp.next = "RUN"
                    disp.d.comb += halt.eq(sys_op == SysOp.HALT.value)
            if c.barrier:
                with disp.State("BARRIER"):
                    disp.d.comb += barrier.done.ready.eq(1)
                    with disp.If(barrier.done.valid):
                        with disp.If(barrier.done.payload == ErrorCode.NONE):
                            retire_sys(sys_pc)
                        with disp.Else():  # the error stops the dispatcher; tokens stay taken
                            disp.d.comb += barrier_error.eq(1)
                            disp.next = "RUN"
        m.d.comb += self.dispatched.pc.eq(d.pc)
        m.d.comb += in_order.eq(decoder.i.ready & ~decoder.o.valid & dispatch.ongoing("RUN") &
                                ~halt)
        events.append((dispatch_error, d.pc, d.error.as_value()))
        if c.barrier:
            events.append((barrier_error, sys_pc, barrier.done.payload.as_value()))
        events.append((running & ~stopped & fetch_error, fetch.o.payload.pc,
                       Mux(fetch.o.payload.end, ErrorCode.PROGRAM_END, ErrorCode.AXI)))

        # -- errors: the lowest pc wins ----------------------------------------------------------
        error_valid = Signal()
        error_code = Signal(ErrorCode)
        error_pc = Signal(32)
        best_valid, best_pc, best_code = error_valid, error_pc, error_code.as_value()
        for index, (valid, pc, code) in enumerate(events):
            v = Signal(name=f"err_v{index}")
            p = Signal(32, name=f"err_pc{index}")
            k = Signal(4, name=f"err_code{index}")
            better = valid & (~best_valid | (pc < best_pc))
            m.d.comb += [v.eq(best_valid | valid), p.eq(Mux(better, pc, best_pc)),
                         k.eq(Mux(better, code, best_code))]
            best_valid, best_pc, best_code = v, p, k
        m.d.sync += [error_valid.eq(best_valid), error_pc.eq(best_pc), error_code.eq(best_code)]
        with m.If((best_valid | halt) & running):
            m.d.sync += stopped.eq(1)

        # -- end of run: nothing can move ----------------------------------------------------
        # the dispatcher cannot move: stopped, or releasing to full pairs, or (below) holding an
        # instruction for a full queue or a SYS whose tokens are not there
        dispatcher_stuck = stopped | (dispatch.ongoing("RELEASE") & (sys_giveable == 0) &
                                      (sys_left != 0))
        dispatch_waiting = Signal()
        with m.If(dispatch.ongoing("RUN") & decoder.o.valid & ~stopped &
                  (d.error == ErrorCode.NONE)):
            with m.If(d.unit == Unit.SYS):
                m.d.comb += dispatch_waiting.eq(~sys_can_take)
            for u in UNITS:
                with m.If(d.unit == u):
                    m.d.comb += dispatch_waiting.eq(~queues[u].w_rdy)
        # a barrier waiting for its peers is not stuck: they may come (it times out instead)
        barrier_waiting = dispatch.ongoing("BARRIER") if c.barrier else 0
        quiet = Signal()
        m.d.comb += quiet.eq(running & (dispatcher_stuck | dispatch_waiting) & fetch.idle &
                             Cat(*unit_stuck.values()).all() & ~barrier_waiting)
        settled = Signal(2)
        with m.If(quiet):
            m.d.sync += settled.eq(Mux(settled == 3, 3, settled + 1))
        with m.Else():
            m.d.sync += settled.eq(0)
        finish = quiet & (settled == 3)
        all_empty = Cat(*unit_empty.values()).all()
        drained = stopped & all_empty & ~dispatch.ongoing("RELEASE")
        candidates = list(unit_head.values()) + [dispatch_blocked]
        lowest = candidates[0]
        for index, cand in enumerate(candidates[1:]):
            smaller = Signal(33, name=f"lowest{index}")
            m.d.comb += smaller.eq(Mux(cand < lowest, cand, lowest))
            lowest = smaller
        with m.If(finish & ~drained & ~best_valid):
            m.d.sync += [error_valid.eq(1), error_code.eq(ErrorCode.DEADLOCK),
                         error_pc.eq(lowest[:32])]

        # -- run control, counters and status ------------------------------------------------
        cycles = Signal(64)
        with m.If(start):
            m.d.sync += [running.eq(1), stopped.eq(0), error_valid.eq(0),
                         error_code.eq(ErrorCode.NONE), error_pc.eq(0), cycles.eq(0),
                         retired.eq(0)]
        with m.Elif(running):
            m.d.sync += [cycles.eq(cycles + 1),
                         retired.eq(retired + sum(Cat(*(self.retire[u.value].valid
                                                        for u in Unit))))]
        with m.If(finish):
            m.d.sync += running.eq(0)
            m.d.comb += control.done.eq(1)
        # internal signals a test may sample in amaranth.sim (FLIGHTGEN_PROBE in test_core.py)
        self.probes = {"running": running, "stopped": stopped, "start": start,
                       "fetch_valid": fetch.o.valid, "fetch_end": fetch.o.payload.end,
                       "fetch_idle": fetch.idle, "dec_i_ready": decoder.i.ready,
                       "dec_o_valid": decoder.o.valid, "dec_err": decoder.o.payload.error,
                       "quiet": quiet, "halt": halt, "arvalid": fetch.axi.arvalid,
                       "rvalid": fetch.axi.rvalid, "ctl_start": control.start,
                       "ctl_idle": control.idle}
        m.d.comb += [control.status.error.eq(error_code), control.status.error_pc.eq(error_pc),
                     control.status.cycles.eq(cycles), control.status.retired.eq(retired)]
        return m
