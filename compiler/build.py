"""The compiler's driver: a model to a :class:`~flightgen.compiler.binary.Binary`.

``frontend -> IR (build_graph) -> passes (run_pipeline) -> codegen (step programs, HBM
images) -> binary``. :func:`compile_model` is what ``flightgen compile`` runs.

The binary's ``layout`` is the host's contract (the ISA-simulator host in
:mod:`flightgen.sim.host`, the RTL host and the XRT host follow it):

* ``embedding``: the FX embedding table, ``row_bytes`` per token, in ``pieces`` (rows
  ``first`` .. ``first + rows - 1`` at ``core``/``port``/``address``); before each step the
  host copies the token's row to ``input`` (a device-side copy on a board).
* Registers ``r1`` .. ``r7``: :func:`flightgen.compiler.layout.decode_registers` of a
  :class:`~flightgen.compiler.layout.KVLayout` (the core's config, ``head_dim``,
  ``capacity``) at the token's position, the same for every core.
* Each core runs its program of the step's phase (``decode`` for the last prompt token and
  every generated one, ``prefill`` for the others) and bucket (dynamic: 0; else the smallest
  bucket of that phase holding ``position + 1``). A layer pipeline: in core order; after
  core ``c`` the host copies ``handoffs[c]`` (the hidden state, ``bytes`` long) to core
  ``c + 1``. A tensor-parallel target (``target.parallel``): every core at once (they meet
  at barriers); before the first step of a sequence the host zeroes the barrier ``flags``
  (a line on the shared channel).
* ``logits``: after a decode step, ``count`` FX logits in line format on the last core (on
  the shared channel of a tensor-parallel target).
"""

import time

import numpy as np

from .._version import __version__
from .binary import PHASES, Binary, Image, Program
from .codegen import buckets, build_images, step_program
from .ir import build_graph
from .passes import CompileConfig, Context, run_pipeline

__all__ = ["compile_model", "CompileConfig"]


def compile_model(target, config=None, *, model=None, model_config=None,
                  progress=None, dump=None, verify=True):
    """Compile ``model`` (a ModelDescription) or, config-only, a bare ``model_config``
    (LlamaConfig: random HBM images) for ``target``; return a Binary.

    ``progress(message)`` is told each stage; ``dump`` is a folder for the IR after each
    pass. ``verify`` proves that the programs order every conflicting access
    (:func:`flightgen.isa.hazards.check_ordering`) at the first and last position they serve:
    every dynamic program, and the first and last bucket of each phase.
    """
    config = CompileConfig() if config is None else config
    started = time.perf_counter()
    timings = {}
    say = progress or (lambda message: None)
    llama = model.config if model is not None else model_config
    graph = build_graph(llama, model)
    ctx = Context(target, config, say)
    run_pipeline(graph, ctx, dump)
    timings["passes"] = time.perf_counter() - started
    capacity = ctx.results["buffers"].capacity
    programs = []
    for core in range(target.cores):
        for phase in PHASES:
            choices = buckets(config.mode, phase, capacity)
            say(f"codegen core {core} {phase}: " + (
                "dynamic" if choices == [0] else f"{len(choices)} buckets"))
            for bucket in choices:
                words = step_program(graph, ctx, core, phase, bucket)
                data = b"".join(int(w).to_bytes(32, "little") for w in words)
                programs.append(Program(core, phase, bucket, data))
    timings["codegen"] = time.perf_counter() - started - timings["passes"]
    if verify:
        _verify(ctx, programs, llama, capacity, say)
        timings["verify"] = time.perf_counter() - started - timings["passes"] - \
            timings["codegen"]
    sizes = ctx.results["channel_bytes"]
    if model is not None:
        say("weight images")
        images = [Image(channel, data.tobytes(), len(data))
                  for channel, data in sorted(build_images(graph, ctx).items())]
    else:
        images = [Image(channel, None, -(-size // 4096) * 4096,
                        {"kind": "random", "seed": config.seed + channel})
                  for channel, size in sorted(sizes.items())]
    timings["images"] = time.perf_counter() - started - sum(timings.values())
    places = ctx.results["places"]
    row = places["embedding"]["row_bytes"]
    layout = {
        "mode": config.mode,
        "capacity": capacity,
        "head_dim": llama.head_dim,
        "embedding": places["embedding"],
        "input": places["input"],
        "handoffs": [{"from": places[f"handoff.{c}.out"], "to": places[f"handoff.{c + 1}.in"],
                      "bytes": row} for c in range(target.cores - 1) if not target.tensor],
        "logits": {**places["logits"], "count": llama.vocab_size},
        "caches": [[{part: places[f"kv.{layer}.{kv}.{part}"] for part in ("k", "v", "ks", "vs")}
                    for kv in range(llama.n_kv_heads)] for layer in range(llama.n_layers)],
        "buckets": {phase: buckets(config.mode, phase, capacity) for phase in PHASES},
        "partition": graph.attrs["partition"],
        **({"flags": places["exchange.flags"]} if target.tensor else {}),
        "channels": {str(k): v for k, v in sorted(sizes.items())},
    }
    tokenizer = None
    metadata = {"flightgen": __version__, "passes": _pass_names(),
                "tiles": graph.attrs["tiles"], "timings": timings}
    if model is not None:
        metadata["source"] = str(model.source)
        if model.tokenizer is not None:
            tokenizer = model.tokenizer.to_string()
            metadata["tokenizer"] = model.tokenizer.special
    else:
        metadata["source"] = "config-only (random weights)"
    binary = Binary(target=target.to_dict(), config=config.to_dict(), model=llama.to_dict(),
                    layout=layout, programs=programs, images=images, tokenizer=tokenizer,
                    metadata=metadata)
    # for tools and tests: the annotated IR and every HBM placement (not stored in the file)
    binary.graph, binary.places = graph, places
    return binary


def _verify(ctx, programs, llama, capacity, say):
    from ..isa.hazards import check_ordering
    from .layout import KVLayout, decode_registers
    from .passes import CompileError

    core = ctx.target.core
    layout = KVLayout(core, llama.head_dim, capacity)
    chosen = []
    for key in sorted({(p.core, p.phase) for p in programs}):
        group = [p for p in programs if (p.core, p.phase) == key]
        chosen += group if len(group) <= 2 else [group[0], group[-1]]
    say(f"verify the ordering of {len(chosen)} programs")
    for program in chosen:
        last = (program.bucket or capacity) - 1
        first = 0 if not program.bucket else max(0, program.bucket - 16)
        for position in (first, last):
            hazards = check_ordering(core, program.words, decode_registers(layout, position))
            if hazards:
                raise CompileError(f"internal: core {program.core} {program.phase} program "
                                   f"(bucket {program.bucket}) at position {position}: "
                                   f"{hazards[0]}")


def _pass_names():
    from .passes import PIPELINE
    return [p.name for p in PIPELINE]


def instruction_bytes(binary):
    """Bytes of every instruction stream of ``binary``."""
    return int(np.sum([len(p.words) for p in binary.programs]))
