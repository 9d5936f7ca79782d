"""The host side of a compiled model: what a host does around each step, on any backend.

:class:`Host` follows the binary's ``layout`` (see :mod:`flightgen.compiler.build`): it copies
the token's embedding row to the input slot, sets the length registers, runs each core's
program for the step's phase and bucket (a layer pipeline: in core order, handing the hidden
state from core to core; a tensor-parallel group: all at once, with ``run_group``), and
reads the logits. The backend runs one program on one core: :class:`IsaBackend` is the ISA
simulator (one :class:`~flightgen.isa.machine.Machine` per core, a group with
:func:`~flightgen.isa.machine.run_group`); the RTL backend (Verilator) uses the same
sequence for a layer pipeline.
"""

import numpy as np

from ..compiler.binary import BinaryError
from ..compiler.layout import KVLayout, decode_registers
from ..compiler.target import Target
from ..errors import FlightgenError
from ..isa.machine import ErrorCode, Machine, run_group, striped_bytes

__all__ = ["Host", "IsaBackend", "StepError"]


class StepError(FlightgenError):
    """A core stopped with an error code while running a step."""


class IsaBackend:
    """Each core's HBM channels and an ISA simulator per core.

    Parameters
    ----------
    binary : flightgen.compiler.binary.Binary
    """

    def __init__(self, binary):
        self.target = Target.from_dict(binary.target)
        c = self.target.core
        self.channels = {}
        for image in binary.images:
            data = np.array(binary.image_bytes(image), dtype=np.uint8)  # a writable copy
            self.channels[image.channel] = data
        self.machines = []
        for core in range(self.target.cores):
            machine = Machine(c, hbm_bytes=c.line_bytes)
            machine.hbm = [self.memory(core, port) for port in range(c.hbm_ports)]
            self.machines.append(machine)
        self._words = {}
        #: The last run's :class:`~flightgen.isa.machine.RunResult` (its trace included).
        self.last_result = None
        #: The last group run's results, one per core.
        self.last_results = None

    def memory(self, core, port):
        """The bytes of ``port`` of ``core`` (its channel)."""
        channel = self.target.channel(core, port)
        if channel not in self.channels:
            self.channels[channel] = np.zeros(4096, np.uint8)
        return self.channels[channel]

    def read(self, core, port, address, size):
        """``size`` bytes of ``port`` of ``core`` from ``address`` (a copy)."""
        return self.memory(core, port)[address:address + size].copy()

    def write(self, core, port, address, data):
        """Write bytes to ``port`` of ``core`` at ``address``."""
        data = np.frombuffer(bytes(data), np.uint8)
        self.memory(core, port)[address:address + len(data)] = data

    def _program_words(self, program):
        key = id(program)
        if key not in self._words:
            raw = np.frombuffer(program.words, np.uint8).reshape(-1, 32)
            self._words[key] = [int.from_bytes(row.tobytes(), "little") for row in raw]
        return self._words[key]

    def run(self, core, program, registers):
        """Run ``program`` (a :class:`~flightgen.compiler.binary.Program`) on ``core``;
        return ``(error code, error pc, message, instructions)``."""
        words = self._program_words(program)
        result = self.machines[core].run(words, registers)
        self.last_result = result
        return result.error, result.error_pc, result.message, len(result.trace)

    def run_group(self, programs, registers):
        """Run ``programs[c]`` on every core ``c`` of a tensor-parallel group at once; return
        ``(error code, error pc, message, instructions)`` per core."""
        results = run_group(self.machines, [self._program_words(p) for p in programs],
                            registers)
        self.last_results = results
        return [(r.error, r.error_pc, r.message, len(r.trace)) for r in results]


class Host:
    """Runs a compiled model step by step on a backend.

    Parameters
    ----------
    binary : flightgen.compiler.binary.Binary
    backend : IsaBackend or an object with the same ``read``, ``write`` and ``run``
    """

    def __init__(self, binary, backend=None):
        self.binary = binary
        self.backend = backend or IsaBackend(binary)
        self.target = Target.from_dict(binary.target)
        self.layout = binary.layout
        self.kv = KVLayout(self.target.core, self.layout["head_dim"], self.layout["capacity"])
        self.position = 0
        self.instructions = 0

    @property
    def capacity(self):
        return self.layout["capacity"]

    def _copy(self, source, destination, size):
        data = self.backend.read(source["core"], source["port"], source["address"], size)
        self.backend.write(destination["core"], destination["port"], destination["address"],
                           data.tobytes())

    def _program(self, core, phase, length):
        choices = self.layout["buckets"][phase]
        bucket = 0 if choices == [0] else next((b for b in choices if b >= length), None)
        if bucket is None:
            raise BinaryError(f"no {phase} program holds a context of {length} tokens")
        return self.binary.program(core, phase, bucket)

    def step(self, token, phase):
        """Run ``token`` at the next position; return the FX logits (int64) after a
        ``decode`` step, None after a ``prefill`` step."""
        if self.position >= self.capacity:
            raise StepError(f"the KV cache holds {self.capacity} tokens")
        embedding = self.layout["embedding"]
        row = embedding["row_bytes"]
        piece = next(p for p in embedding["pieces"]
                     if p["first"] <= token < p["first"] + p["rows"])
        self._copy({**piece, "address": piece["address"] + (token - piece["first"]) * row},
                   self.layout["input"], row)
        registers = decode_registers(self.kv, self.position)
        if self.target.tensor:
            self._group_step(phase, registers)
        else:
            for core in range(self.target.cores):
                program = self._program(core, phase, self.position + 1)
                self._finished(core, phase, self.backend.run(core, program, registers))
                if core < self.target.cores - 1:
                    handoff = self.layout["handoffs"][core]
                    self._copy(handoff["from"], handoff["to"], handoff["bytes"])
        self.position += 1
        return self.logits() if phase == "decode" else None

    def _finished(self, core, phase, outcome):
        """Count a core's run ``(error, pc, message, instructions)``; raise on its error."""
        error, pc, message, count = outcome
        self.instructions += count
        if error != ErrorCode.NONE:
            raise StepError(f"core {core} stopped with {ErrorCode(error).name} at pc {pc} "
                            f"({phase}): {message}")

    def _group_step(self, phase, registers):
        if not hasattr(self.backend, "run_group"):
            raise StepError(f"{type(self.backend).__name__} runs one core at a time: a "
                            f"tensor-parallel binary needs a backend that runs the group")
        if self.position == 0:  # a new sequence: no flag of an earlier one may remain
            flags = self.layout["flags"]
            self.backend.write(flags["core"], flags["port"], flags["address"],
                               bytes(flags["bytes"]))
        programs = [self._program(core, phase, self.position + 1)
                    for core in range(self.target.cores)]
        for core, outcome in enumerate(self.backend.run_group(programs, registers)):
            self._finished(core, phase, outcome)

    def logits(self):
        """The FX logits the last decode step stored."""
        c = self.target.core
        where = self.layout["logits"]
        count = where["count"]
        lines = c.vector_lines(count)
        raw = self.backend.read(where["core"], where["port"], where["address"],
                                lines * c.line_bytes)
        per = c.beat_lines(32 * c.lanes) * c.line_bytes
        values = raw.reshape(-1, per)[:, :4 * c.lanes].copy().view("<i4")
        return values.ravel()[:count].astype(np.int64)

    def cache(self, layer):
        """The KV cache of ``layer`` as the steps so far stored it: ``(k_codes, k_words,
        v_codes, v_words)``, codes ``(position, kv_heads, head_dim)``, scale words
        ``(position, kv_heads)``."""
        regions = [{part: (self._region(p), 0) for part, p in kv.items()}
                   for kv in self.layout["caches"][layer]]
        rows = [[self.kv.read_token(memories, token) for memories in regions]
                for token in range(self.position)]
        k, v = (np.array([[h[i] for h in r] for r in rows]) for i in (0, 1))
        kw, vw = (np.array([[h[i] for h in r] for r in rows]) for i in (2, 3))
        return k, kw, v, vw

    def _region(self, where):
        """The bytes of a placed region; of one striped over ``s`` ports, the logical bytes
        (line ``l`` is line ``l // s`` of port ``port + l % s``)."""
        ways = where.get("stripe", 1)
        shares = [np.asarray(self.backend.read(where["core"], where["port"] + i,
                                               where["address"], where["bytes"] // ways))
                  for i in range(ways)]
        if ways == 1:
            return shares[0]
        ports, at = striped_bytes(np.arange(where["bytes"]), ways.bit_length() - 1,
                                  self.target.core.line_bytes)
        out = np.empty(where["bytes"], np.uint8)
        for i, share in enumerate(shares):
            out[ports == i] = share[at[ports == i]]
        return out

    def prefill(self, tokens):
        """Run a prompt; return the logits of its last token."""
        if not len(tokens):
            raise ValueError("the prompt is empty")
        for token in tokens[:-1]:
            self.step(int(token), "prefill")
        return self.step(int(tokens[-1]), "decode")

    def generate(self, tokens, max_tokens, stop=None):
        """Greedy generation: yield ``(token, logits)`` per generated token."""
        logits = self.prefill(tokens)
        for _ in range(max_tokens):
            token = int(np.argmax(logits))
            yield token, logits
            if token == stop or self.position >= self.capacity:
                return
            logits = self.step(token, "decode")
