"""A cycle model of the core: when each instruction of a program retires, without the RTL.

:func:`estimate` replays a program through the core's structure with times instead of data:

* the fetch unit brings instruction words from the program port (one line per cycle after the
  memory latency), the dispatcher takes one per cycle into its unit's queue (``queue_depth``
  entries);
* each unit starts its oldest instruction once the tokens it waits for are released and the
  unit is free (``LOAD``: fewer than ``load_flight`` loads unreleased);
* durations come from the blocks' own cycle formulas (``expected_cycles`` of the matrix
  engine, the SFU, the quantizers, the rescaler, the store engine) plus each unit's
  buffer-access overheads (:class:`Timing`);
* loads share one R path, whatever their ports (the load engine receives the lines of its
  oldest command only): each burst's beats follow its address by the memory latency and wait
  for that path, one beat per cycle for the whole core (a striped load's beat brings a line
  from each of its ports; :attr:`Timing.hbm_efficiency` of a beat on a board projection);
  in a tensor-parallel group the exchange channel is one for all the cores, so a load or
  store there takes ``peers`` cycles a beat (the cores trade at the same barrier);
* a ``MATRIX`` streams at the pace of the slower of the engine's steps and its stream
  readers (one buffer row a cycle each; ``WGT``'s rows are ``load_lanes`` lines).

The overheads of :class:`Timing` were fitted against Verilator traces of the core (memory
latency 40, no stalls); ``tests/test_perf.py`` holds the model within 3% of the RTL's cycles.
"""

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

from ..hw.barrier import BarrierEngine
from ..hw.gearbox import Widener
from ..hw.memory import LoadEngine, StoreEngine
from ..hw.mpe import MatrixEngine
from ..hw.rescale import AttentionRescaler
from ..hw.sfu import SpecialFunctionUnit
from ..hw.token_quantizer import TokenQuantizer
from ..isa.instructions import REGISTERS, Opcode, SysOp, Unit
from ..isa.machine import resolve_program
from ..isa.matrix import MatrixStreams
from ..isa.vector import VectorOp

__all__ = ["Timing", "estimate", "estimate_group", "Estimate", "Deadlock"]


class Deadlock(ValueError):
    """A program the cycle model cannot finish (the core would stop with ``DEADLOCK``)."""


@dataclass(frozen=True)
class Timing:
    """Memory latency and the core's fixed overheads, in cycles."""

    #: Cycles from a read address to its first data beat (the memory).
    latency: int = 40
    #: Program start to the first instruction word at the dispatcher, beyond the latency.
    fetch: int = 15
    #: A load's start to its first burst address.
    load_issue: int = 3
    #: A load's last beat to its release.
    load_release: int = 2
    #: Idle R cycles between two loads' data on a port.
    load_gap: int = 1
    #: Beats per R cycle the memory sustains in a burst: 1.0 for the harness's memory (what
    #: the fit was made against); a board projection passes the HBM's assumed efficiency
    #: (:data:`flightgen.sim.projection.HBM_EFFICIENCY`), so a burst of ``n`` beats holds
    #: the R path ``n / hbm_efficiency`` cycles.
    hbm_efficiency: float = 1.0
    #: Cycles a unit adds to its block's own count (buffer reads and writes around it):
    #: MATRIX, VECTOR (SFU), QUANT (beats plus this), TOKEN, RESCALE, STORE.
    matrix: int = 8
    #: Extra cycles of a matrix command that loads a new activation tile.
    matrix_load: int = 7
    vector: int = 8
    quant: int = 55
    token_extra: int = 4
    #: Extra cycles of a TOKEN with the fold (two code halves out).
    token_fold: int = 21
    rescale: int = 15
    store: int = 4
    #: A release to the waiting unit's start.
    token: int = 1

    @property
    def barrier(self):
        """A ``BARRIER`` from its last core's arrival to its end: the barrier engine's flag
        write and one read of the flags (:meth:`~flightgen.hw.barrier.BarrierEngine.
        expected_cycles`; the harness's memory answers a cycle after its latency)."""
        return BarrierEngine.expected_cycles(self.latency + 1)


@dataclass
class Estimate:
    """``cycles`` of the run and ``trace``: ``(unit, pc, retire cycle)`` per instruction;
    ``busy``: per unit (``"load"``, ``"store"``, ``"matrix"``, ``"vector"``, ``"sys"``) the
    cycles in which it has an instruction under way (for the load unit: a load in flight,
    its memory latency included); ``waits``: per unit, its idle cycles before an instruction
    by what that instruction's start waited for last: a token from a unit (its name), or
    ``"dispatch"`` (the instruction reached the unit's queue late: the program's fetch, a
    ``BARRIER``'s wait for the group, or another unit's full queue holding the dispatcher).
    A unit's busy and waiting cycles add up to the cycle after its last instruction
    retires."""

    cycles: int
    trace: list
    busy: dict = field(default_factory=dict)
    waits: dict = field(default_factory=dict)


class _Units:
    """The blocks whose cycle formulas give the durations."""

    def __init__(self, config):
        self.config = config
        g = config.geometry
        self.mpe = MatrixEngine(g.chain, g.vpus)
        self.sfu = SpecialFunctionUnit(config.vector_datapath, config.vector_max)
        #: the widener's output register when the vector unit's datapaths take beats in parts
        self.gear = Widener.LATENCY if config.vector_datapath < config.lanes else 0
        self.token = TokenQuantizer(config.vector_datapath)
        self.rescale = AttentionRescaler(config.vector_datapath)
        self.load = LoadEngine(config.line_bits, config.hbm_ports, lanes=config.load_lanes)
        self.store = StoreEngine(config.line_bits, config.hbm_ports, outstanding=32,
                                 lanes=config.load_lanes)


def _duration(units, timing, instruction, pace=1.0):
    """Cycles of a non-LOAD instruction, from its start to its release; a ``STORE``'s beats
    take ``pace`` cycles each instead of one (:meth:`_Timeline._pace`)."""
    c, f = units.config, instruction.fields
    op = instruction.opcode
    if op == Opcode.MATRIX:
        if not (f["blocks"] and f["groups"]):
            return timing.matrix
        s = MatrixStreams(c.geometry, f)
        keep = {0: 16, 1: 8, 2: 4, 3: 2}[f["keep"]]
        steps = f["groups"] * c.geometry.steps(f["blocks"], keep)
        proxy = SimpleNamespace(beats={"act": [0] * s.act}, steps=steps, keep=keep,
                                geometry=units.mpe.geometry)
        # the stream readers take one buffer row a cycle (WGT's: load_lanes lines): when
        # one of them needs more cycles than the engine's steps, it sets the pace
        bits = c.beat_bits
        reads = max(s.weights * c.beat_lines(bits["weights"]) // c.load_lanes,
                    s.masks * c.beat_lines(bits["masks"]),
                    s.scales * c.beat_lines(bits["scales"]))
        slack = max(0, reads - steps * units.mpe.cycles_per_step(keep))
        return (units.mpe.expected_cycles(proxy) + slack + timing.matrix
                + (timing.matrix_load if f["load"] else 0))
    if op == Opcode.VECTOR:
        proxy = SimpleNamespace(op=VectorOp(f["op"]), length=f["length"])
        return units.sfu.expected_cycles(proxy) + units.gear + timing.vector
    if op == Opcode.QUANT:
        if c.vector_datapath == c.lanes:
            return -(-f["length"] // c.lanes) + timing.quant
        # every part of the activation beats, the zero beats that pad them included
        row_codes = c.geometry.row_codes
        parts = -(-f["length"] // row_codes) * row_codes // c.vector_datapath
        return parts + timing.quant + units.gear
    if op == Opcode.TOKEN:
        return (units.token.expected_cycles(f["length"]) + units.gear + timing.token_extra
                + (timing.token_fold if f["fold"] else 0))
    if op == Opcode.RESCALE:
        return units.rescale.expected_cycles(f["length"]) + units.gear + timing.rescale
    if op == Opcode.STORE:
        beats = sum(b for _, _, b in units.store.bursts(f))
        slower = math.ceil(beats * (pace - 1))
        return units.store.expected_cycles(f, timing.latency) + timing.store + slower
    return 1


def estimate(config, program, registers=(0,) * (REGISTERS - 1), timing=None):
    """Estimate the cycles of ``program`` on a core with ``config`` (a run that ends without an
    error) with ``timing`` (default :class:`Timing`); returns an :class:`Estimate`. A
    ``BARRIER`` passes on its own (its peers there already): :func:`estimate_group` models a
    tensor-parallel group. A program whose units wait for tokens that never come raises
    :class:`Deadlock`."""
    return estimate_group(config, [program], registers, timing)[0]


def estimate_group(config, programs, registers=(0,) * (REGISTERS - 1), timing=None):
    """Estimate a tensor-parallel group: ``programs[c]`` on core ``c``, all started at cycle
    0. The ``k``-th ``BARRIER`` of every core ends :attr:`Timing.barrier` cycles after the
    last core reached its own ``k``-th (its tokens taken); the dispatcher passes nothing
    after a barrier before it ends. Returns an :class:`Estimate` per core."""
    timing = Timing() if timing is None else timing
    arrivals = []  # per barrier: {core: cycle}
    cores = [_Timeline(config, program, registers, timing, index, arrivals, len(programs))
             for index, program in enumerate(programs)]
    while any([core.advance() for core in cores]):
        pass
    for index, core in enumerate(cores):
        core.check_finished(index)
    return [core.result() for core in cores]


class _Timeline:
    """The cycle model of one core's program (see the module), advanced as far as its
    barriers allow."""

    def __init__(self, config, program, registers, timing, index, arrivals, peers):
        self.config, self.timing, self.index = config, timing, index
        self.arrivals, self.peers = arrivals, peers
        self.units = _Units(config)
        self.instructions = list(resolve_program(config, program, registers))
        self.line_words = max(1, config.line_bits // 256)
        # dispatch: one per cycle, after fetch; a unit's queue holds queue_depth instructions
        self.per_unit = {u: [] for u in Unit}
        self.orders = {}
        for instruction in self.instructions:
            self.orders[instruction.pc] = len(self.per_unit[instruction.unit])
            self.per_unit[instruction.unit].append(instruction)
        self.start, self.end = {}, {}
        self.releases = {(s, d): [] for s in range(len(Unit)) for d in range(len(Unit))}
        self.taken = {(s, d): 0 for s in range(len(Unit)) for d in range(len(Unit))}
        self.taken_at = {(s, d): [] for s in range(len(Unit)) for d in range(len(Unit))}
        # the load engine receives the lines of its oldest command only, whatever the port:
        # one R path and one count of bursts in flight for all ports
        self.r_free = 0
        self.burst_ends = []  # last beat of each load burst
        self.position = {u: 0 for u in Unit}
        self.dispatched = {}
        self.pc = 0
        self.last_dispatch = timing.latency + timing.fetch - 1
        self.barrier = None  # the pc of a BARRIER the dispatcher waits for
        self.barriers = 0  # barriers reached so far
        self.trace = []
        # per unit: its first cycle free of instructions, busy cycles, idle cycles by cause
        self.free = {u: 0 for u in Unit}
        self.busy = {u: 0 for u in Unit}
        self.waits = {u: {} for u in Unit}

    def _barrier_end(self, instruction, t):
        """The end of a ``BARRIER`` this core reaches at ``t``, or None while a peer has not
        reached it."""
        number = self.barriers
        if len(self.arrivals) <= number:
            self.arrivals.append({})
        self.arrivals[number][self.index] = t
        if len(self.arrivals[number]) < self.peers:
            return None
        return max(self.arrivals[number].values()) + self.timing.barrier

    def advance(self):
        """Model as far as possible; whether anything moved."""
        config, timing, units = self.config, self.timing, self.units
        start, end, releases, taken = self.start, self.end, self.releases, self.taken
        moved = False
        while True:
            progress = False
            # the dispatcher
            while self.pc < len(self.instructions):
                if self.barrier is not None:
                    if self.barrier not in end:
                        break
                    self.last_dispatch = max(self.last_dispatch, end[self.barrier])
                    self.barrier = None
                instruction = self.instructions[self.pc]
                unit = instruction.unit
                order = self.orders[self.pc]
                t = max(self.last_dispatch + 1,
                        timing.latency + timing.fetch + self.pc // self.line_words)
                if unit != Unit.SYS and order >= config.queue_depth:
                    earlier = self.per_unit[unit][order - config.queue_depth]
                    if earlier.pc not in start:
                        break
                    t = max(t, start[earlier.pc] + 1)
                self.dispatched[self.pc] = t
                self.last_dispatch = t
                if _is_barrier(instruction):
                    self.barrier = instruction.pc
                self.pc += 1
                progress = True
            for unit in Unit:
                queue = self.per_unit[unit]
                while self.position[unit] < len(queue):
                    instruction = queue[self.position[unit]]
                    if instruction.pc not in self.dispatched:
                        break
                    if instruction.pc in start:  # a BARRIER waiting for its peers
                        finish = self._barrier_end(instruction, start[instruction.pc])
                        if finish is None:
                            break
                        self._finish(unit, instruction, finish)
                        progress = True
                        continue
                    waits = [s for s in range(len(Unit)) if instruction.wait >> s & 1]
                    if any(taken[(s, unit.value)] >= len(releases[(s, unit.value)])
                           for s in waits):
                        break
                    t, cause = self.dispatched[instruction.pc] + 1, "dispatch"
                    for s in waits:
                        ready = releases[(s, unit.value)][taken[(s, unit.value)]] + timing.token
                        if ready > t:
                            t, cause = ready, Unit(s).name.lower()
                        taken[(s, unit.value)] += 1
                    order = self.position[unit]
                    if order:
                        previous = queue[order - 1]
                        if unit == Unit.LOAD:
                            t = max(t, start[previous.pc] + 1)
                            if order >= config.load_flight:
                                t = max(t, end[queue[order - config.load_flight].pc])
                        else:
                            t = max(t, end[previous.pc] + 1)
                    start[instruction.pc] = t
                    idle = t - self.free[unit]
                    if idle > 0:
                        self.waits[unit][cause] = self.waits[unit].get(cause, 0) + idle
                    for s in waits:
                        self.taken_at[(s, unit.value)].append(t)
                    progress = True
                    if instruction.opcode == Opcode.LOAD:
                        finish = self._load(instruction, t, order, queue)
                    elif _is_barrier(instruction):
                        finish = self._barrier_end(instruction, t)
                        if finish is None:
                            break
                    else:
                        finish = t + _duration(units, timing, instruction,
                                               self._pace(instruction))
                    self._finish(unit, instruction, finish)
            moved |= progress
            if not progress:
                return moved

    def _pace(self, instruction):
        """Cycles a beat of ``instruction`` (a LOAD or STORE) takes on its channel: one over
        :attr:`Timing.hbm_efficiency`, times the cores moving data there at once: every core
        of the group on the exchange channel (they trade right before and after the same
        barrier: assumed to meet there, each taking a turn for every beat), else one."""
        c = self.config
        shared = c.barrier and instruction.fields.get("port") == c.exchange_port
        return (self.peers if shared else 1) / self.timing.hbm_efficiency

    def _load(self, instruction, t, order, queue):
        timing, units = self.timing, self.units
        f = instruction.fields
        pace = self._pace(instruction)
        finish = t
        address = t + timing.load_issue
        self.r_free += timing.load_gap
        for _, beats in units.load.bursts(f):
            if len(self.burst_ends) >= units.load.outstanding:  # one must complete first
                address = max(address, self.burst_ends[-units.load.outstanding] + 1)
            first = max(address + timing.latency, self.r_free)
            self.r_free = first + beats * pace
            finish = math.ceil(self.r_free) - 1
            self.burst_ends.append(finish)
            address += 1
        finish += timing.load_release
        if order:
            finish = max(finish, self.end[queue[order - 1].pc])  # in-order release
        return finish

    def _finish(self, unit, instruction, finish):
        if _is_barrier(instruction):
            self.barriers += 1
        self.end[instruction.pc] = finish
        self.trace.append((unit.value, instruction.pc, finish))
        # instructions of a unit start in order: the union of their spans, counted as they end
        self.busy[unit] += max(0, finish + 1 - max(self.start[instruction.pc], self.free[unit]))
        self.free[unit] = max(self.free[unit], finish + 1)
        for d in range(len(Unit)):
            if instruction.release >> d & 1:
                self.releases[(unit.value, d)].append(finish)
        self.position[unit] += 1

    def check_finished(self, index):
        """Raise :class:`Deadlock` unless every instruction retired, and when more tokens
        than ``token_limit`` would wait between two units: the core's releaser would stall
        there, which the model does not time (the ISA simulator and the RTL do)."""
        for instruction in self.instructions:
            if instruction.pc not in self.end:
                raise Deadlock(f"core {index}: {instruction.opcode.name} at pc "
                               f"{instruction.pc} ({instruction.unit.name}) never retires: it "
                               f"waits for tokens that never come, or for a peer")
        limit = self.config.token_limit
        for (s, d), times in self.releases.items():
            # (a token taken in the cycle another is released counts as gone first)
            events = sorted([(t, 1) for t in times] + [(t, -1) for t in self.taken_at[(s, d)]])
            waiting = 0
            for t, step in events:
                waiting += step
                if waiting > limit:
                    raise Deadlock(f"core {index}: at cycle {t} more than {limit} tokens from "
                                   f"{Unit(s).name} to {Unit(d).name} would wait: the core "
                                   f"would stall its releases there")

    def result(self):
        cycles = max(self.end.values()) if self.end else 0
        return Estimate(cycles, sorted(self.trace, key=lambda e: e[2]),
                        busy={u.name.lower(): n for u, n in self.busy.items()},
                        waits={u.name.lower(): dict(w) for u, w in self.waits.items()})


def _is_barrier(instruction):
    return (instruction.opcode == Opcode.SYS
            and instruction.fields["op"] == SysOp.BARRIER.value)
