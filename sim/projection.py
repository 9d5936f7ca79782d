"""Projected decode speed of a model on a board: the cycle model over compiled programs.

:func:`project` compiles a model (config-only: the instructions are exact, the weights random)
for a board's full-size configuration, runs the cycle model (:func:`flightgen.sim.perf.
estimate`, held within 3% of the RTL by ``tests/test_perf.py``) over every core's decode
program at a context length, and adds it up:

* **decode step**: on a layer pipeline the cores run one after the other (one sequence), so
  a token takes the sum of the cores' cycles; a tensor-parallel group runs at once
  (:func:`flightgen.sim.perf.estimate_group`, barriers included), so a token takes the
  slowest core's cycles; tokens/s = clock / that;
* **HBM bytes per token**: what the decode programs' ``LOAD`` and ``STORE`` patterns move;
* **HBM roofline**: the connected pseudo-channels' bandwidth times :data:`HBM_EFFICIENCY`,
  divided by the bytes per token: the speed no schedule of these programs can beat;
* **prefill**: a prompt of ``prompt`` tokens is ``prompt - 1`` prefill steps and a decode
  step (prefill is token-serial: the MM mode is not scheduled yet);
* **utilisation**: HBM bytes per cycle against what the connected channels can move, and
  dense-equivalent MACs per cycle against every core's MAC array.

The model's per-instruction costs come from the hardware's structure (the blocks'
``expected_cycles``) and Verilator-fitted overheads. A 512-bit port at 225 MHz (14.4 GB/s)
asks a beat a cycle of a 14.375 GB/s pseudo-channel; :data:`HBM_EFFICIENCY` is the documented
assumption of how much of that the HBM controller sustains for long sequential bursts, and it
holds on both sides of the comparison: the roofline's bandwidth, and the cycle model's loads
(a burst of ``n`` beats takes ``n / HBM_EFFICIENCY`` cycles of the R path,
:attr:`flightgen.sim.perf.Timing.hbm_efficiency`). The RTL's memory in the tests that hold the
cycle model to Verilator answers a beat a cycle (efficiency 1).
"""

from dataclasses import asdict, dataclass

from ..compiler.build import compile_model, instruction_bytes
from ..compiler.layout import KVLayout, decode_registers
from ..compiler.passes import CompileConfig
from ..isa.instructions import Opcode
from ..isa.machine import resolve_program
from .perf import Timing, estimate, estimate_group

__all__ = ["HBM_EFFICIENCY", "Projection", "project", "macs_per_token"]

#: Fraction of a pseudo-channel's theoretical bandwidth sustained by long sequential reads
#: (an assumption, not a measurement: no board here).
HBM_EFFICIENCY = 0.9


@dataclass(frozen=True)
class Projection:
    """What :func:`project` found; every figure per decode step (one token)."""

    model: str
    board: str
    weights: str
    sparsity: str
    context: int
    cores: int
    clock_mhz: float
    core_cycles: list
    cycles: int
    parallel: str
    tokens_per_s: float
    hbm_bytes: int
    hbm_gbps: float
    roofline_tokens_per_s: float
    hbm_utilisation: float
    macs: int
    dsp_utilisation: float
    prefill_tokens: int
    prefill_ms: float
    instruction_mb: float
    #: Where the decode step's cycles go: per unit (``load``, ``store``, ``matrix``,
    #: ``vector``, ``sys``) ``{"busy": cycles, "waits": {cause: idle cycles}}``, of the
    #: slowest core (tensor parallel) or summed over the cores (layer pipeline); see
    #: :class:`~flightgen.sim.perf.Estimate`.
    units: dict

    def to_dict(self):
        return asdict(self)


def macs_per_token(model, context):
    """Multiply-accumulates of one decode step at ``context`` tokens (dense weights): every
    projection, the FFN, the LM head, and attention over the context."""
    head_dim = model.dim // model.n_heads
    kv = model.n_kv_heads * head_dim
    per_layer = model.dim * (2 * model.dim + 2 * kv) + 3 * model.dim * model.ffn_dim
    attention = 2 * model.n_heads * head_dim * context
    return model.n_layers * (per_layer + attention) + model.vocab_size * model.dim


def _traffic(config, program, registers):
    """HBM bytes the ``LOAD``s and ``STORE``s of ``program`` move."""
    total = 0
    for instruction in resolve_program(config, program, registers):
        f = instruction.fields
        if instruction.opcode == Opcode.LOAD:
            total += f["length"] * config.line_bytes * f["count2"] * f["count3"]
        elif instruction.opcode == Opcode.STORE:
            total += f["length"] * f["count2"] * f["count3"]
    return total


def project(name, model, board, target, config=None, context=512, prompt=128, progress=None):
    """Project decode of ``model`` (a LlamaConfig called ``name``) on ``board`` with
    ``target`` (its full-size configuration) compiled with ``config`` (a CompileConfig);
    returns a :class:`Projection`."""
    say = progress or (lambda message: None)
    config = CompileConfig() if config is None else config
    say(f"compiling {name} (config-only) for {target.name}")
    binary = compile_model(target, config, model_config=model, verify=False)
    capacity = binary.layout["capacity"]
    if context > capacity:
        from ..errors import FlightgenError

        raise FlightgenError(f"context {context} is beyond the KV cache of {capacity} tokens "
                             f"this configuration holds for {name}")
    kv = KVLayout(target.core, binary.layout["head_dim"], capacity)
    timing = Timing(hbm_efficiency=HBM_EFFICIENCY)
    decode_regs = decode_registers(kv, context - 1)
    decode = [binary.program(core, "decode").words for core in range(target.cores)]
    prefill = [binary.program(core, "prefill").words for core in range(target.cores)]
    traffic = sum(_traffic(target.core, program, decode_regs) for program in decode)
    prefill_regs = decode_registers(kv, prompt // 2)
    if target.tensor:
        say(f"cycle model: the {target.cores} cores' decode programs at position "
            f"{context - 1}, together")
        estimates = estimate_group(target.core, decode, decode_regs, timing)
        core_cycles = [e.cycles for e in estimates]
        cycles = max(core_cycles)
        units = _units([max(estimates, key=lambda e: e.cycles)])
        prefill_cycles = max(e.cycles for e in estimate_group(target.core, prefill,
                                                              prefill_regs, timing))
    else:
        estimates, prefill_cycles = [], 0
        for core in range(target.cores):
            say(f"cycle model: core {core} decode program at position {context - 1}")
            estimates.append(estimate(target.core, decode[core], decode_regs, timing))
            prefill_cycles += estimate(target.core, prefill[core], prefill_regs, timing).cycles
        core_cycles = [e.cycles for e in estimates]
        cycles = sum(core_cycles)
        units = _units(estimates)
    hz = target.clock_mhz * 1e6
    ports = target.cores * target.local_ports  # the weights' channels (not the shared one)
    hbm_gbps = ports * board.hbm.channel_gbps * HBM_EFFICIENCY
    macs = macs_per_token(model, context)  # dense-equivalent: pruned zeros count as work
    return Projection(
        model=name, board=board.name, weights=config.weights, sparsity=config.sparsity or "dense",
        context=context, cores=target.cores, clock_mhz=target.clock_mhz,
        core_cycles=core_cycles, cycles=cycles, tokens_per_s=hz / cycles,
        hbm_bytes=traffic, hbm_gbps=hbm_gbps,
        roofline_tokens_per_s=hbm_gbps * 1e9 / traffic,
        hbm_utilisation=traffic / cycles / (ports * target.core.line_bytes),
        parallel=target.parallel,
        macs=macs,
        dsp_utilisation=macs / (cycles * target.cores * target.core.geometry.macs),
        prefill_tokens=prompt,
        prefill_ms=((prompt - 1) * prefill_cycles + cycles) / hz * 1e3,
        instruction_mb=instruction_bytes(binary) / 1e6,
        units=units,
    )


def _units(estimates):
    """Per unit, busy cycles and idle cycles by cause (:class:`~flightgen.sim.perf.Estimate`)
    summed over ``estimates``: the slowest core of a tensor-parallel group, or every core of
    a layer pipeline (one at a time); the causes largest first."""
    units = {}
    for e in estimates:
        for name, busy in e.busy.items():
            unit = units.setdefault(name, {"busy": 0, "waits": {}})
            unit["busy"] += busy
            for cause, idle in e.waits[name].items():
                unit["waits"][cause] = unit["waits"].get(cause, 0) + idle
    for unit in units.values():
        unit["waits"] = dict(sorted(unit["waits"].items(), key=lambda kv: -kv[1]))
    return units
