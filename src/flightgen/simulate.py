"""``flightgen sim``: run a compiled model binary on the simulated hardware and print its text.

The host sequence is :class:`flightgen.sim.host.Host`'s, on the RTL (the core's Verilog in the
C++ harness of :mod:`flightgen.sim.harness`) or on the ISA simulator. ``--check`` runs the ISA
simulator alongside the RTL and, after every step, compares every byte each ``STORE`` of the
step's programs wrote (KV-cache slots, the hand-over state, the logits); it stops at the first
``STORE`` whose bytes differ, naming it.
"""

import sys
import time

from .errors import FlightgenError

__all__ = ["main", "add_parser", "store_ranges"]


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
                   help="Run the ISA simulator alongside the RTL and stop at the first STORE "
                        "whose bytes differ from it.")
    p.add_argument("--latency", type=positive, default=40,
                   help="Simulated memory read latency in cycles (default 40).")
    p.set_defaults(run=main)
    return p


def store_ranges(config, program, registers):
    """``(pc, port, first byte, bytes)`` of every row each ``STORE`` of ``program`` writes
    with ``registers`` (a program that resolves; others stop at the first illegal word)."""
    from .isa.instructions import Opcode, SysOp
    from .isa.machine import IllegalInstruction, _words, resolve

    out = []
    for pc, word in enumerate(_words(program)):
        try:
            instruction = resolve(config, word, registers, pc)
        except IllegalInstruction:
            break
        f = instruction.fields
        if instruction.opcode == Opcode.STORE and f["length"]:
            for i3 in range(f["count3"]):
                for i2 in range(f["count2"]):
                    out.append((pc, f["port"],
                                f["addr"] + i3 * f["stride3"] + i2 * f["stride2"], f["length"]))
        if instruction.opcode == Opcode.SYS and f["op"] == SysOp.HALT.value:
            break
    return out


class _Checked:
    """A backend that runs the RTL and the ISA simulator side by side and compares what every
    STORE wrote after each run."""

    def __init__(self, rtl, isa, config):
        self.rtl, self.isa, self.config = rtl, isa, config
        self.step = None

    def read(self, core, port, address, size):
        return self.rtl.read(core, port, address, size)

    def write(self, core, port, address, data):
        self.rtl.write(core, port, address, data)
        self.isa.write(core, port, address, data)

    def run(self, core, program, registers):
        import numpy as np

        result = self.rtl.run(core, program, registers)
        expected = self.isa.run(core, program, registers)
        if result[:2] != expected[:2]:
            raise FlightgenError(f"--check: {self.step}: core {core} stopped with error "
                                 f"{int(result[0])} at pc {result[1]}, the ISA simulator with "
                                 f"{int(expected[0])} at pc {expected[1]}")
        for pc, port, address, size in store_ranges(self.config, program.words, registers):
            got = self.rtl.read(core, port, address, size)
            want = self.isa.read(core, port, address, size)
            if not np.array_equal(got, want):
                first = int(np.nonzero(got != want)[0][0])
                raise FlightgenError(
                    f"--check: {self.step}: core {core} {program.phase} program, STORE at pc "
                    f"{pc} wrote different bytes than the ISA simulator (port {port}, byte "
                    f"{address + first:#x}: RTL {got[first]}, ISA {want[first]})")
        return result


def main(args, out=None, err=None):
    """Run the ``sim`` verb; returns the exit status."""
    import numpy as np

    from .compiler.binary import read_binary
    from .compiler.target import Target
    from .compiler.tokenizer import Tokenizer
    from .sim.generate import TextStream
    from .sim.host import Host, IsaBackend

    out, err = out or sys.stdout, err or sys.stderr
    started = time.perf_counter()

    def say(message):
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=err, flush=True)

    binary = read_binary(args.binary)
    if binary.tokenizer is None:
        raise FlightgenError(f"{args.binary}: the binary carries no tokenizer")
    tokenizer = Tokenizer.from_string(binary.tokenizer, **binary.metadata.get("tokenizer", {}))
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise FlightgenError("the prompt is empty after tokenization")
    capacity = binary.layout["capacity"]
    if len(prompt) + args.max_tokens > capacity:
        raise FlightgenError(f"prompt ({len(prompt)} tokens) plus --max-tokens "
                             f"{args.max_tokens} exceeds the binary's KV cache of {capacity}")
    if args.check and args.backend != "rtl":
        raise FlightgenError("--check compares the RTL with the ISA simulator: use it with "
                             "--backend rtl")
    target = Target.from_dict(binary.target)
    rtl = None
    if args.backend == "rtl":
        from .sim.harness import RtlBackend

        say(f"building the Verilator model of {target.name} (cached after the first build)")
        rtl = RtlBackend(binary, latency=args.latency, log=say)
        backend = _Checked(rtl, IsaBackend(binary), target.core) if args.check else rtl
    else:
        backend = IsaBackend(binary)
    try:
        host = Host(binary, backend)
        stream = TextStream(tokenizer)
        cycles, steps = [], []

        def step(token, phase, label):
            if isinstance(backend, _Checked):
                backend.step = f"step {host.position} ({label})"
            before = rtl.cycles if rtl is not None else 0
            t = time.perf_counter()
            logits = host.step(token, phase)
            used = (rtl.cycles - before) if rtl is not None else 0
            cycles.append(used)
            steps.append((phase, used, time.perf_counter() - t))
            say(f"{label} {host.position}/{len(prompt) + args.max_tokens}: "
                + (f"{used:,} cycles, " if rtl is not None else "")
                + f"{time.perf_counter() - t:.1f} s")
            return logits

        say(f"prompt: {len(prompt)} tokens on {args.backend}"
            + (" with --check" if args.check else ""))
        for token in prompt[:-1]:
            step(int(token), "prefill", "prefill")
        logits = step(int(prompt[-1]), "decode", "prefill")
        print(args.prompt, end="", file=out, flush=True)
        generated = []
        while True:
            token = int(np.argmax(logits))
            generated.append(token)
            print(stream.push(token), end="", file=out, flush=True)
            if token == tokenizer.eos_id or len(generated) >= args.max_tokens:
                break
            logits = step(token, "decode", "decode")
        print(file=out, flush=True)
    finally:
        if rtl is not None:
            rtl.close()
    decode = [c for phase, c, _ in steps if phase == "decode"]
    summary = f"{len(generated)} tokens generated in {time.perf_counter() - started:.1f} s"
    if rtl is not None and decode:
        per_token = sum(decode) / len(decode)
        summary += (f"; {per_token:,.0f} cycles per decode step, projected "
                    f"{target.clock_mhz * 1e6 / per_token:.1f} tokens/s at "
                    f"{target.clock_mhz:.0f} MHz")
    print(summary, file=err)
    return 0
