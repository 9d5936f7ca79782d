"""The ordering contract, checked: does a program order every pair of conflicting accesses?

The ISA simulator's result is the core's only when every two instructions of different units
that touch the same buffer line or HBM byte (at least one of them writing) are ordered by
tokens or queue order (:mod:`flightgen.isa.machine`). :func:`check_ordering` proves this for
one program and one set of registers, or names the first pairs that are not ordered.

It replays the dispatch abstractly (no data) and gives every instruction a **vector clock**:
for each unit, the last instruction of that unit known to have **completed** when this one
starts. What is known:

* a unit other than ``LOAD`` runs one instruction at a time, in order;
* the load unit starts a ``LOAD`` only when at most ``load_flight - 1`` earlier loads have not
  released, so load ``i - load_flight`` has completed;
* a token from ``A`` means ``A`` and every earlier instruction of its unit have completed
  (the releaser is in order), and everything known when ``A`` started; the ``n``-th token
  from unit ``U`` to unit ``W`` is taken by the ``n``-th instruction of ``W`` that waits for
  ``U``.

HBM ranges are the bounding ranges of the transfer patterns (conservative; a striped
``LOAD``'s or ``STORE``'s on each of its ports).
"""

from collections import deque

import numpy as np

from .instructions import REGISTERS, Buffer, Opcode, SysOp, Unit
from .machine import IllegalInstruction, _words, resolve

__all__ = ["check_ordering", "Hazard"]

_UNITS = len(Unit)


class Hazard:
    """Two unordered conflicting accesses: ``first`` and ``second`` are ``(unit, pc)``, in
    program order, and ``kind`` says what they do in that order (``read after write``: the
    second reads what the first writes, but may run before it)."""

    def __init__(self, kind, where, first, second):
        self.kind, self.where, self.first, self.second = kind, where, first, second

    def __repr__(self):
        (u1, p1), (u2, p2) = self.first, self.second
        return (f"{self.kind} on {self.where}: {Unit(u1).name} pc {p1} and "
                f"{Unit(u2).name} pc {p2} are not ordered")


def check_ordering(config, program, registers=(0,) * (REGISTERS - 1), limit=20):
    """Return the :class:`Hazard` s of ``program`` (at most ``limit``; empty when every
    conflicting pair is ordered). The program must dispatch to ``HALT`` without an illegal
    instruction (ValueError otherwise)."""
    words = _words(program)
    per_unit = {u: [] for u in Unit}
    for pc, word in enumerate(words):
        try:
            instruction = resolve(config, word, registers, pc)
        except IllegalInstruction as error:
            raise ValueError(f"pc {pc}: {error}") from None
        per_unit[instruction.unit].append(instruction)
        if instruction.opcode == Opcode.SYS and instruction.fields["op"] == SysOp.HALT.value:
            break
    else:
        raise ValueError("the program has no HALT")
    hazards = []
    state = _State(config, {u.value: [i.pc for i in per_unit[u]] for u in Unit})
    fifos = {(s, d): deque() for s in range(_UNITS) for d in range(_UNITS)}
    position = {u: 0 for u in Unit}
    clocks = {u: [] for u in Unit}  # vector clock at start, per instruction of the unit
    while True:
        progress = False
        for unit in Unit:
            queue = per_unit[unit]
            while position[unit] < len(queue):
                index = position[unit]
                instruction = queue[index]
                sources = [s for s in range(_UNITS) if instruction.wait >> s & 1]
                if any(not fifos[(s, unit.value)] for s in sources):
                    break
                clock = np.full(_UNITS, -1, np.int64)
                if index:
                    clock = np.maximum(clock, clocks[unit][index - 1])
                    lag = config.load_flight if unit == Unit.LOAD else 1
                    clock[unit.value] = max(clock[unit.value], index - lag)
                for s in sources:
                    source_unit, source_index, source_clock = fifos[(s, unit.value)].popleft()
                    clock = np.maximum(clock, source_clock)
                    clock[source_unit] = max(clock[source_unit], source_index)
                clocks[unit].append(clock)
                hazards += state.access(unit.value, index, instruction, clock)
                if len(hazards) >= limit:
                    return hazards[:limit]
                for d in range(_UNITS):
                    if instruction.release >> d & 1:
                        fifos[(unit.value, d)].append((unit.value, index, clock))
                position[unit] += 1
                progress = True
        if not progress:
            break
    stuck = [(u.name, per_unit[u][position[u]].pc) for u in Unit
             if position[u] < len(per_unit[u])]
    if stuck:
        raise ValueError(f"the program deadlocks: {stuck[0][0]} pc {stuck[0][1]} waits for a "
                         "token that never comes")
    return hazards


class _State:
    """Last writer and latest readers of every buffer line and HBM range."""

    def __init__(self, config, pcs):
        self.config, self.pcs = config, pcs
        self.writer = {b: np.full((config.lines(b), 2), -1, np.int64) for b in Buffer}
        self.readers = {b: np.full((config.lines(b), _UNITS), -1, np.int64) for b in Buffer}
        self.stores = {p: [] for p in range(config.hbm_ports)}  # (start, end, unit, index)
        self.loads = {p: [] for p in range(config.hbm_ports)}

    def hazard(self, kind, where, unit, index, me):
        """``kind`` is named for the earlier access of the replay coming first; the hazard
        names the pair in program order."""
        other = (int(unit), self.pcs[int(unit)][int(index)])
        if other[1] > me[1]:
            first, second = kind.split(" after ")
            prefix = "HBM " if first.startswith("HBM ") else ""
            kind = f"{prefix}{second} after {first.removeprefix('HBM ')}"
            return Hazard(kind, where, me, other)
        return Hazard(kind, where, other, me)

    def access(self, unit, index, instruction, clock):
        """Check one instruction's accesses against what is known complete; record them."""
        out = []
        me = (unit, instruction.pc)
        for buffer, line, lines in instruction.reads:
            out += self._after_writer(buffer, line, lines, unit, clock, me, "read after write")
            self.readers[buffer][line:line + lines, unit] = index
        for buffer, line, lines in instruction.writes:
            where = f"{buffer.name} lines {line}..{line + lines - 1}"
            out += self._after_writer(buffer, line, lines, unit, clock, me, "write after write")
            readers = self.readers[buffer][line:line + lines]
            for other in range(_UNITS):
                latest = readers[:, other].max(initial=-1)
                if other != unit and latest > clock[other]:
                    out.append(self.hazard("write after read", where, other, latest, me))
            self.writer[buffer][line:line + lines] = (unit, index)
        f = instruction.fields
        if instruction.opcode in (Opcode.LOAD, Opcode.STORE) and f["length"]:
            load = instruction.opcode == Opcode.LOAD
            stripe = 1 << f.get("stripe", 0)  # each port of a stripe has its share
            line = self.config.line_bytes
            row = f["length"] // stripe * line if load else f["length"]
            start = f["addr"]
            end = (start + (f["count3"] - 1) * f["stride3"] + (f["count2"] - 1) * f["stride2"]
                   + row)
            if not load and stripe > 1:  # logical bytes: their lines on every port's share
                start, end = start // (line * stripe) * line, -(-end // (line * stripe)) * line
            kind = "HBM read after write" if load else "HBM write after read"
            for port in range(f["port"], f["port"] + stripe):
                for s, e, u, i in (self.stores if load else self.loads)[port]:
                    if s < end and start < e and i > clock[u]:
                        out.append(self.hazard(kind, f"port {port} bytes {max(s, start):#x}..",
                                               u, i, me))
                (self.loads if load else self.stores)[port].append((start, end, unit, index))
        return out

    def _after_writer(self, buffer, line, lines, unit, clock, me, kind):
        """The lines' last writers of other units (or earlier loads, which overlap) must be
        known complete."""
        writers = self.writer[buffer][line:line + lines]
        out = []
        for other in np.unique(writers[:, 0]):
            if other < 0 or (other == unit and unit != Unit.LOAD.value):
                continue
            latest = writers[writers[:, 0] == other, 1].max()
            if latest > clock[other]:
                out.append(self.hazard(kind, f"{buffer.name} lines {line}..{line + lines - 1}",
                                       other, latest, me))
        return out
