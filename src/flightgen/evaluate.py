"""``flightgen eval``: accuracy of quantized configurations against the float model."""

import json
import sys
import time

from .errors import FlightgenError
from .files import write_atomic

__all__ = ["main"]


def main(args, out=None, err=None):
    """Run the ``eval`` verb; returns the exit status."""
    from .run import load_cli_model
    from .sim.accuracy import as_json, evaluate, parse_config, shipped_text

    out, err = out or sys.stdout, err or sys.stderr
    try:
        configs = [parse_config(item.strip()) for item in args.configs.split(",") if item.strip()]
    except ValueError as error:
        raise FlightgenError(str(error)) from None
    if not configs:
        raise FlightgenError("--configs names no configuration")
    if args.text:
        try:
            with open(args.text, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise FlightgenError(f"{args.text}: cannot read the text ({error})") from None
    else:
        text = shipped_text()
    model = load_cli_model(args.model, err)
    path = model.source
    tokens = model.tokenizer.encode(text)[:args.max_tokens]
    if len(tokens) < 2:
        raise FlightgenError("the text has fewer than 2 tokens")
    if len(tokens) > model.config.context_length:
        raise FlightgenError(f"the text has {len(tokens)} tokens, more than the model's "
                             f"context of {model.config.context_length}; use --max-tokens")
    started = time.monotonic()

    def progress(label, done, total):
        print(f"\r{label}: {done}/{total} tokens", end="" if done < total else "\n", file=err,
              flush=True)

    try:
        rows = evaluate(model, tokens, configs, progress)
    except ValueError as error:  # a configuration that does not fit the model's shapes
        raise FlightgenError(f"cannot evaluate {path}: {error}") from None
    width = max(len(row.config) for row in rows)
    print(f"{len(tokens) - 1} next-token predictions on {args.text or 'the shipped text'}; "
          f"float32 perplexity {rows[0].perplexity_float:.3f}", file=out)
    print(f"{'configuration':<{width}}  {'top-1 agree':>11}  {'perplexity':>10}  "
          f"{'vs float':>8}  {'top-1 text':>10}", file=out)
    for row in rows:
        print(f"{row.config:<{width}}  {row.top1_agreement:>11.2%}  {row.perplexity_quant:>10.3f}"
              f"  {row.perplexity_quant / row.perplexity_float - 1:>+8.2%}  "
              f"{row.top1_text_quant:>10.2%}", file=out)
    result = as_json(rows, model=str(path), text=args.text or "shipped",
                     seconds=round(time.monotonic() - started, 1))
    write_atomic(args.json, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=out)
    return 0
