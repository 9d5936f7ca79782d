"""``flightgen demo``: the default model generates text on the core's Verilog, checked.

With no arguments it compiles SmolLM2-135M-Instruct for the ``sim`` configuration (cached),
builds the Verilator model of that core (cached), runs a built-in prompt and a short greedy
continuation through the host sequence on the RTL with ``--check`` (every instruction's
result compared with the ISA simulator), checks the tokens against the quantized model
reference (:class:`flightgen.sim.quant_model.QuantLlama`), and ends with a summary: tokens,
cycles and HBM bytes per token, and the projected tokens/s of the same programs at the
target's clock (225 MHz).
"""

import hashlib
import sys
import time
from pathlib import Path

from .errors import FlightgenError
from .progress import progress

__all__ = ["add_parser", "main", "DEMO_PROMPT", "DEMO_TOKENS"]

#: The built-in prompt and how many tokens the demo generates by default (sized so that the
#: whole demo, the first Verilator build included, stays under 15 minutes on 2 cores).
DEMO_PROMPT = "The capital of France is"
DEMO_TOKENS = 8
#: The hardware configuration the demo compiles for.
DEMO_TARGET = "sim"


def add_parser(verbs, positive):
    """Add the ``demo`` verb to the CLI's subparsers."""
    p = verbs.add_parser(
        "demo",
        help="SmolLM2-135M generates text on the simulated Verilog, checked bit for bit.",
        description="Compile the default model (SmolLM2-135M-Instruct) for the 'sim' "
                    "configuration (cached), build the Verilator model of its core (cached), "
                    "generate a short greedy continuation of a built-in prompt on the RTL with "
                    "--check (every instruction's result compared with the ISA simulator), "
                    "check the tokens against the quantized model reference, and summarise "
                    "cycles, HBM traffic and projected tokens/s per token.",
    )
    p.add_argument("--prompt", default=DEMO_PROMPT,
                   help=f"Text to continue (default {DEMO_PROMPT!r}).")
    p.add_argument("--max-tokens", type=positive, default=DEMO_TOKENS,
                   help=f"Tokens to generate (default {DEMO_TOKENS}); each takes about 40 s "
                        "of simulation.")
    p.set_defaults(run=main)
    return p


def _binary_key(model_path, target_name):
    """What the cached binary depends on: the model file, the target and the compiler's and
    the ISA's sources (any change to them compiles again)."""
    from . import __version__, compiler, isa
    from .files import hash_sources

    digest = hashlib.sha256()
    stat = Path(model_path).stat()
    digest.update(f"{__version__}|{Path(model_path).resolve()}|{stat.st_size}|"
                  f"{stat.st_mtime_ns}|{target_name}".encode())
    hash_sources(digest, compiler, isa)
    return digest.hexdigest()[:16]


def compiled_default_model(say):
    """The default model, loaded, and its binary for :data:`DEMO_TARGET`, compiled once and
    cached under the flightgen cache folder."""
    from .compiler.binary import read_binary, write_binary
    from .compiler.build import compile_model
    from .compiler.frontends import load_model
    from .compiler.models import DEFAULT_MODEL
    from .compiler.passes import CompileConfig
    from .compiler.target import load_target
    from .sim.runner import cache_dir

    path = DEFAULT_MODEL.locate()
    say(f"loading {DEFAULT_MODEL.name} from {path}")
    model = load_model(path)
    key = _binary_key(path, DEMO_TARGET)
    cached = cache_dir() / "demo" / f"smollm2-135m-{DEMO_TARGET}-{key}.fgb"
    if cached.is_file():
        cached.touch()  # its last use (flightgen cache --prune)
        say(f"reusing the compiled binary {cached}")
        return model, read_binary(cached)
    say(f"compiling {DEFAULT_MODEL.name} for '{DEMO_TARGET}'")
    binary = compile_model(load_target(DEMO_TARGET), CompileConfig(), model=model,
                           progress=say)
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_binary(cached, binary)
    say(f"wrote {cached}")
    return model, binary


def reference_tokens(model, prompt_ids, count, eos_id):
    """Greedy tokens of the quantized model reference after ``prompt_ids``."""
    import numpy as np

    from .sim.quant_model import QuantLlama

    reference = QuantLlama(model)
    cache = reference.new_cache(len(prompt_ids) + count)
    logits = reference.forward(prompt_ids, cache)[-1]
    tokens = []
    while True:
        tokens.append(int(np.argmax(logits)))
        if tokens[-1] == eos_id or len(tokens) >= count:
            return tokens
        logits = reference.forward(tokens[-1:], cache)[-1]


def main(args, out=None, err=None):
    """Run the ``demo`` verb; returns the exit status."""
    from .compiler.target import Target
    from .compiler.tokenizer import Tokenizer
    from .simulate import generate, summary

    out, err = out or sys.stdout, err or sys.stderr
    started = time.perf_counter()
    say = progress(err)

    model, binary = compiled_default_model(say)
    result = generate(binary, args.prompt, args.max_tokens, backend="rtl", check=True,
                      out=out, say=say)
    say("the quantized model reference (numpy) on the same prompt")
    tokenizer = Tokenizer.from_string(binary.tokenizer, **binary.metadata.get("tokenizer", {}))
    expected = reference_tokens(model, result.prompt, args.max_tokens, tokenizer.eos_id)
    if result.tokens != expected:
        pairs = zip(result.tokens, expected, strict=False)  # one may have ended early
        first = next((i for i, (a, b) in enumerate(pairs) if a != b),
                     min(len(result.tokens), len(expected)))
        raise FlightgenError(f"token {first + 1} differs from the quantized reference: "
                             f"{result.tokens} on the RTL, {expected} in the reference")
    target = Target.from_dict(binary.target)
    seconds = time.perf_counter() - started
    print(f"{len(result.tokens)} tokens from the Verilog of '{target.name}', every "
          f"instruction checked against the ISA simulator, identical to the quantized "
          f"reference; total {seconds:.1f} s", file=err)
    print(summary(result, target), file=err)
    return 0
