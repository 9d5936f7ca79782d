"""``flightgen sim``: run a compiled model binary on the simulated hardware and print its text.

The host sequence is :class:`flightgen.sim.host.Host`'s, on the RTL (the core's Verilog in the
C++ harness of :mod:`flightgen.sim.harness`) or on the ISA simulator. ``--check`` runs the ISA
simulator alongside the RTL and compares, for every run of every step, what each instruction
wrote: the harness reports the CRC-32 of each retired instruction's buffer lines or HBM bytes
(:func:`flightgen.isa.machine.written_spans`), the ISA simulator's trace holds the same, and
the first retirement that differs stops the generation, naming the instruction.
``--trace-from/--trace-to`` write an FST waveform of a window of one run's instructions.

:func:`generate` is the routine both ``sim`` and ``demo`` (:mod:`flightgen.demo`) use.
"""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FlightgenError
from .progress import progress

__all__ = ["main", "add_parser", "generate", "Generated", "TraceWindow"]


def add_parser(verbs, positive):
    """Add the ``sim`` verb to the CLI's subparsers."""
    p = verbs.add_parser(
        "sim",
        help="Generate text with a compiled model (.fgb) on the simulated hardware.",
        description="Load a model binary written by `flightgen compile`, build (once, cached) "
                    "the Verilator model of the hardware configuration it targets, run the "
                    "prompt and greedy decoding through the core's AXI4-Lite registers as a "
                    "host would, and print the text as it is generated. --backend isa runs the "
                    "ISA simulator instead. Progress (tokens, cycles, wall time) goes to "
                    "stderr.",
    )
    p.add_argument("binary", metavar="MODEL.fgb", help="A binary from `flightgen compile`.")
    p.add_argument("--prompt", required=True, help="Text to continue.")
    p.add_argument("--max-tokens", type=positive, default=8,
                   help="Most tokens to generate (default 8); stops early at end of sequence.")
    p.add_argument("--backend", choices=["rtl", "isa"], default="rtl",
                   help="'rtl' (default): the core's Verilog under Verilator; 'isa': the ISA "
                        "simulator.")
    p.add_argument("--check", action="store_true",
                   help="Run the ISA simulator alongside the RTL and stop at the first "
                        "instruction whose result (the buffer lines or HBM bytes it wrote) "
                        "differs from it.")
    p.add_argument("--latency", type=positive, default=40,
                   help="Simulated memory read latency in cycles (default 40).")
    add_trace_arguments(p)
    p.set_defaults(run=main)
    return p


def add_trace_arguments(p):
    """The waveform options of ``sim``."""
    g = p.add_argument_group(
        "waveform", "Write an FST waveform (GTKWave, Surfer) of a window of instructions of "
                    "one run: from the cycle the first is dispatched until the last retires. "
                    "Uses a separate Verilator build with tracing (built once, cached).")
    g.add_argument("--trace-from", type=_pc, metavar="PC",
                   help="First pc of the window (`flightgen disasm` lists the pcs).")
    g.add_argument("--trace-to", type=_pc, metavar="PC",
                   help="Last pc of the window (default: --trace-from + 100).")
    g.add_argument("--trace-step", type=_pc, default=1, metavar="N",
                   help="Which step to trace, counted from 1 as the progress lines count "
                        "positions (default 1, the first prompt token).")
    g.add_argument("--trace-core", type=_pc, default=0, metavar="CORE",
                   help="Which core's run of that step (default 0).")
    g.add_argument("--trace-file", default="trace.fst", metavar="PATH",
                   help="Where to write the waveform (default trace.fst).")


def _pc(text):
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return value


@dataclass(frozen=True)
class TraceWindow:
    """A waveform request: pcs ``[first, last]`` of ``core``'s run at step ``step`` (1-based)."""

    step: int
    core: int
    first: int
    last: int
    path: Path

    @classmethod
    def from_args(cls, args):
        """The window the command line asks for, or None."""
        if args.trace_from is None:
            if args.trace_to is not None:
                raise FlightgenError("--trace-to needs --trace-from")
            return None
        last = args.trace_from + 100 if args.trace_to is None else args.trace_to
        if last < args.trace_from:
            raise FlightgenError(f"--trace-to {last} is before --trace-from {args.trace_from}")
        if args.trace_step < 1:
            raise FlightgenError("--trace-step counts from 1")
        path = Path(args.trace_file)
        if not path.parent.is_dir():
            raise FlightgenError(f"{path.parent}: no such folder (for --trace-file)")
        return cls(args.trace_step, args.trace_core, args.trace_from, last, path)


class _Checked:
    """A backend that runs the RTL and the ISA simulator side by side and, after each run,
    compares what every instruction wrote."""

    def __init__(self, rtl, isa, config):
        self.rtl, self.isa, self.config = rtl, isa, config
        self.step = None

    def read(self, core, port, address, size):
        return self.rtl.read(core, port, address, size)

    def write(self, core, port, address, data):
        self.rtl.write(core, port, address, data)
        self.isa.write(core, port, address, data)

    def run(self, core, program, registers):
        from .isa.assembly import disassemble_word
        from .sim.harness import first_difference

        self.rtl.start(core, program, registers)  # the RTL runs in its process meanwhile
        expected = self.isa.run(core, program, registers)
        result = self.rtl.finish(core)
        where = f"--check: {self.step}: core {core} {program.phase} program"
        if result[:2] != expected[:2]:
            raise FlightgenError(f"{where}: the RTL stopped with error {int(result[0])} at pc "
                                 f"{result[1]}, the ISA simulator with {int(expected[0])} at pc "
                                 f"{expected[1]}")
        difference = first_difference(self.rtl.last_run.retirements,
                                      self.isa.last_result.trace)
        if difference is not None:
            pc, unit, cycle, got, want = difference
            word = int.from_bytes(program.words[32 * pc:32 * pc + 32], "little")
            text = f"pc {pc} ({unit.name} unit: {disassemble_word(word)})"
            if got is None:
                raise FlightgenError(f"{where}: {text} ran on the ISA simulator but never "
                                     f"retired on the RTL")
            if want is None:
                raise FlightgenError(f"{where}: {text} retired on the RTL at cycle {cycle} "
                                     f"but the ISA simulator never ran it")
            raise FlightgenError(f"{where}: {text}, retired at cycle {cycle}, wrote different "
                                 f"data than the ISA simulator (CRC-32 {got:#010x} on the RTL, "
                                 f"{want:#010x} on the ISA simulator)")
        return result


@dataclass
class Generated:
    """What :func:`generate` did.

    Members
    -------
    prompt, tokens : list of int
        The prompt's ids and the generated ids.
    text : str
        The generated text (without the prompt).
    steps : list of (str, int, int, float)
        Per step: phase, cycles, HBM bytes moved (RTL only; 0 on the ISA simulator), wall
        seconds.
    seconds : float
        Wall time of the whole generation, the build included.
    """

    prompt: list
    tokens: list = field(default_factory=list)
    text: str = ""
    steps: list = field(default_factory=list)
    seconds: float = 0.0

    def decode_steps(self):
        """The steps that ran the decode programs (each produced a token; the prompt's last
        token is the first): ``(cycles, bytes)`` each."""
        return [(c, b) for phase, c, b, _ in self.steps if phase == "decode"]


def generate(binary, prompt, max_tokens, *, backend="rtl", check=False, latency=40,
             trace=None, out=None, say=None):
    """Prefill ``prompt`` (text) and decode greedily up to ``max_tokens`` tokens with the host
    sequence on ``backend`` ('rtl', 'isa', or a backend object with ``read``, ``write`` and
    ``run``, such as the board's :class:`flightgen.boards.xrt.XrtBackend`), printing the
    prompt and each piece of text to ``out`` as it is generated and progress lines to
    ``say``. Returns a :class:`Generated`.

    Raises
    ------
    FlightgenError
        For a bad request, an error stop of the core, or (``check``) the first instruction
        whose result differs from the ISA simulator's.
    """
    import numpy as np

    from .compiler.target import Target
    from .compiler.tokenizer import Tokenizer
    from .sim.generate import TextStream
    from .sim.host import Host, IsaBackend

    out = out or sys.stdout
    say = say or (lambda message: None)
    started = time.perf_counter()
    if binary.tokenizer is None:
        raise FlightgenError("the binary carries no tokenizer")
    tokenizer = Tokenizer.from_string(binary.tokenizer, **binary.metadata.get("tokenizer", {}))
    ids = [int(t) for t in tokenizer.encode(prompt)]
    if not ids:
        raise FlightgenError("the prompt is empty after tokenization")
    capacity = binary.layout["capacity"]
    if len(ids) + max_tokens > capacity:
        raise FlightgenError(f"prompt ({len(ids)} tokens) plus --max-tokens {max_tokens} "
                             f"exceeds the binary's KV cache of {capacity}")
    if not isinstance(backend, str):
        runner, backend = backend, "board"
    if check and backend != "rtl":
        raise FlightgenError("--check compares the RTL with the ISA simulator: use it with "
                             "--backend rtl")
    if trace is not None and backend != "rtl":
        raise FlightgenError("waveforms come from the RTL: use --trace-from with --backend rtl")
    target = Target.from_dict(binary.target)
    if target.tensor and backend == "rtl":
        raise FlightgenError("a tensor-parallel binary runs on the ISA simulator (--backend "
                             "isa): the RTL harness runs one core per process, not a group "
                             "sharing an exchange channel")
    if trace is not None and trace.core >= target.cores:
        raise FlightgenError(f"--trace-core {trace.core}: the binary has {target.cores} "
                             f"core(s)")
    if trace is not None:
        from .sim.toolchain import fst_problem

        problem = fst_problem()
        if problem:
            raise FlightgenError(f"cannot write FST waveforms: {problem}")
    rtl = None
    if backend == "rtl":
        from .sim.harness import RtlBackend

        say(f"building the Verilator model of {target.name}"
            + (" with waveform tracing" if trace else "") + " (cached after the first build)")
        rtl = RtlBackend(binary, latency=latency, check=check, trace=trace is not None,
                         log=say)
        isa = IsaBackend(binary) if check else None
        runner = _Checked(rtl, isa, target.core) if check else rtl
    elif backend == "isa":
        runner = IsaBackend(binary)
    result = Generated(ids)
    try:
        host = Host(binary, runner)
        stream = TextStream(tokenizer)
        total = len(ids) + max_tokens

        def step(token, phase, label):
            number = host.position + 1
            if check:
                runner.step = f"step {number} ({label})"
            if trace is not None and trace.step == number:
                rtl.trace_next(trace.core, trace.first, trace.last, trace.path)
            before = (rtl.cycles, rtl.bytes_moved) if rtl is not None else (0, 0)
            t = time.perf_counter()
            logits = host.step(token, phase)
            seconds = time.perf_counter() - t
            cycles, moved = ((rtl.cycles - before[0], rtl.bytes_moved - before[1])
                             if rtl is not None else (0, 0))
            result.steps.append((phase, cycles, moved, seconds))
            say(f"{label} {number}/{total}: "
                + (f"{cycles:,} cycles, {moved / 1e6:.1f} MB, " if rtl is not None else "")
                + f"{seconds:.1f} s")
            if trace is not None and trace.step == number:
                say(f"waveform of core {trace.core}, pcs {trace.first}..{trace.last}: "
                    f"{trace.path}" if trace.path.is_file() else
                    f"no waveform: core {trace.core} dispatched none of pcs {trace.first}.."
                    f"{trace.last} in step {number}")
            return logits

        say(f"prompt: {len(ids)} tokens on {backend}" + (" with --check" if check else ""))
        for token in ids[:-1]:
            step(token, "prefill", "prefill")
        logits = step(ids[-1], "decode", "prefill")
        print(prompt, end="", file=out, flush=True)
        pieces = []
        while True:
            token = int(np.argmax(logits))
            result.tokens.append(token)
            piece = stream.push(token)
            pieces.append(piece)
            print(piece, end="", file=out, flush=True)
            if token == tokenizer.eos_id or len(result.tokens) >= max_tokens:
                break
            logits = step(token, "decode", "decode")
        print(file=out, flush=True)
        result.text = "".join(pieces)
    finally:
        if rtl is not None:
            rtl.close()
    result.seconds = time.perf_counter() - started
    return result


def summary(result, target):
    """One line: tokens, wall time and, from the RTL, cycles and bytes per decode step and the
    projected tokens/s at the target's clock."""
    line = f"{len(result.tokens)} tokens generated in {result.seconds:.1f} s"
    decode = result.decode_steps()
    if decode and decode[0][0]:
        cycles = sum(c for c, _ in decode) / len(decode)
        moved = sum(b for _, b in decode) / len(decode)
        line += (f"; {cycles:,.0f} cycles and {moved / 1e6:.1f} MB of HBM traffic per decode "
                 f"step, projected {target.clock_mhz * 1e6 / cycles:.1f} tokens/s at "
                 f"{target.clock_mhz:.0f} MHz")
    return line


def main(args, out=None, err=None):
    """Run the ``sim`` verb; returns the exit status."""
    from .compiler.binary import read_binary
    from .compiler.target import Target

    out, err = out or sys.stdout, err or sys.stderr
    say = progress(err)

    trace = TraceWindow.from_args(args)
    binary = read_binary(args.binary)
    result = generate(binary, args.prompt, args.max_tokens, backend=args.backend,
                      check=args.check, latency=args.latency, trace=trace, out=out, say=say)
    print(summary(result, Target.from_dict(binary.target)), file=err)
    return 0
