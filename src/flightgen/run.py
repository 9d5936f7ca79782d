"""``flightgen run``: generate text with a reference model, printing it as it is produced."""

import sys

from .errors import FlightgenError

__all__ = ["main", "load_cli_model", "quant_config", "make_backend", "backend_label"]


def load_cli_model(path, err):
    """Load the model a command names (default: the packaged SmolLM2), with its tokenizer."""
    from .compiler.frontends import load_model
    from .compiler.models import DEFAULT_MODEL

    path = path or DEFAULT_MODEL.locate()
    print(f"loading {path}", file=err, flush=True)
    model = load_model(path)
    if model.tokenizer is None:
        raise FlightgenError(f"{path}: no tokenizer (a checkpoint folder needs tokenizer.json)")
    return model


def quant_config(args):
    """The QuantConfig named by the CLI's quantization options."""
    from .sim.quant_model import QuantConfig

    return QuantConfig(weights=args.weights, group=args.group, symmetric=not args.asymmetric)


def make_backend(args, model):
    """The model object for ``--backend``."""
    if args.backend == "float":
        from .sim.float_model import FloatLlama

        if (args.weights, args.group, args.asymmetric) != ("gguf", 32, False):
            raise FlightgenError("--weights, --group and --asymmetric apply to the reference "
                                 "backend, not --backend float")

        return FloatLlama(model)
    from .sim.quant_model import QuantLlama

    try:
        return QuantLlama(model, quant_config(args))
    except ValueError as error:  # e.g. group scales too far apart to accumulate exactly
        raise FlightgenError(f"cannot quantize {model.source}: {error}") from None


def backend_label(args):
    return "float32" if args.backend == "float" else f"reference {quant_config(args).label}"


def main(args, out=None, err=None):
    """Run the ``run`` verb; returns the exit status."""
    from .sim.generate import TextStream, greedy

    out, err = out or sys.stdout, err or sys.stderr
    model = load_cli_model(args.model, err)
    prompt = model.tokenizer.encode(args.prompt)
    if not prompt:
        raise FlightgenError("the prompt is empty after tokenization")
    limit = model.config.context_length
    if len(prompt) + args.max_tokens > limit:
        raise FlightgenError(f"prompt ({len(prompt)} tokens) plus --max-tokens "
                             f"{args.max_tokens} exceeds the model's context of {limit}")
    backend = make_backend(args, model)
    stream = TextStream(model.tokenizer)
    print(args.prompt, end="", file=out, flush=True)

    def show(token):
        print(stream.push(token), end="", file=out, flush=True)

    result = greedy(backend, prompt, args.max_tokens, eos_id=model.tokenizer.eos_id,
                    on_token=show)
    print(file=out, flush=True)
    steps = max(len(result.tokens) - 1, 1)
    print(f"{backend_label(args)}: prompt {len(prompt)} tokens in {result.prefill_s:.2f} s, "
          f"{len(result.tokens)} tokens generated, "
          f"{result.decode_s / steps * 1e3:.0f} ms per decode step", file=err)
    return 0
