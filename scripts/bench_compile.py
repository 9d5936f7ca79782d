#!/usr/bin/env python3
"""Benchmark the compiler: instruction storage of length-adaptive programs and compile time.

* LLaMA2-7B (config-only, random weights, W4) for the ``u280`` target, every context length
  up to 2048: the instruction bytes of flightgen's dynamic mode (one prefill and one decode
  program per core serve every length) and of the bucketed mode (one program per prefill
  bucket of 128 and decode bucket of 16, as FlightLLM), and the config-only compile time
  (compile and write the binary).
* SmolLM2-135M with its weights for the ``sim`` target: the compile time (load, compile,
  write) and the instruction bytes of both modes.

FlightLLM's own figure is derived from the program sizes its artifact's profiler reports
(decode ~3.45 MB per program; prefill 34 MB at 128 tokens, 139 MB at 512, linear in the
bucket's length): 128 decode buckets and 16 prefill buckets up to 2048 tokens.

Prints a table and writes JSON (default ``bench_compile.json``). Wall times are measured on
the machine it runs on.

    python scripts/bench_compile.py -o bench_compile.json
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from flightgen.compile import _configs
from flightgen.compiler.binary import write_binary
from flightgen.compiler.build import compile_model, instruction_bytes
from flightgen.compiler.passes import CompileConfig
from flightgen.compiler.target import TARGETS
from flightgen.errors import FlightgenError
from flightgen.files import write_atomic

CONTEXT = 2048


def flightllm_bucket_bytes(context=CONTEXT):
    """FlightLLM's bucketed storage for every length up to ``context``, from its profiler's
    program sizes (decode 3.45 MB per bucket of 16; prefill linear through 34 MB at 128 and
    139 MB at 512 tokens, per bucket of 128)."""
    decode = context // 16 * 3.45e6
    slope = (139e6 - 34e6) / (512 - 128)
    prefill = sum(34e6 + slope * (length - 128) for length in range(128, context + 1, 128))
    return decode + prefill


def timed_compile(folder, name, target, config, **model):
    started = time.perf_counter()
    binary = compile_model(target, config, **model)
    path = Path(folder) / f"{name}.fgb"
    write_binary(path, binary)
    seconds = time.perf_counter() - started
    return binary, seconds, path.stat().st_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="bench_compile.json", help="JSON output file.")
    args = parser.parse_args(argv)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            llama = _configs()["llama2-7b"]
            for mode in ("dynamic", "bucket"):
                config = CompileConfig(weights="int4-g32-sym", mode=mode, context=CONTEXT)
                binary, seconds, size = timed_compile(folder, f"llama-{mode}", TARGETS["u280"],
                                                      config, model_config=llama)
                rows.append({"model": "LLaMA2-7B (config-only, W4)", "target": "u280 x3",
                             "mode": mode, "programs": len(binary.programs),
                             "instructions": sum(len(p.words) // 32 for p in binary.programs),
                             "instruction_bytes": instruction_bytes(binary),
                             "file_bytes": size, "seconds": seconds,
                             "context": binary.layout["capacity"]})
            from flightgen.compiler.frontends import load_model
            from flightgen.compiler.models import DEFAULT_MODEL

            for mode in ("dynamic", "bucket"):
                started = time.perf_counter()
                model = load_model(DEFAULT_MODEL.locate())
                load = time.perf_counter() - started
                binary, seconds, size = timed_compile(folder, f"smollm2-{mode}", TARGETS["sim"],
                                                      CompileConfig(mode=mode), model=model)
                rows.append({"model": "SmolLM2-135M (weights)", "target": "sim x1",
                             "mode": mode, "programs": len(binary.programs),
                             "instructions": sum(len(p.words) // 32 for p in binary.programs),
                             "instruction_bytes": instruction_bytes(binary),
                             "file_bytes": size, "seconds": load + seconds,
                             "context": binary.layout["capacity"]})
    except FlightgenError as error:
        sys.exit(f"error: {error}")
    flightllm = flightllm_bucket_bytes()
    print(f"{'model':<28}  {'target':<7}  {'mode':<7}  {'programs':>8}  {'instructions':>12}  "
          f"{'instr. bytes':>12}  {'context':>7}  {'compile':>8}")
    for row in rows:
        print(f"{row['model']:<28}  {row['target']:<7}  {row['mode']:<7}  {row['programs']:>8}  "
              f"{row['instructions']:>12,}  {row['instruction_bytes'] / 1e6:>9.2f} MB  "
              f"{row['context']:>7}  {row['seconds']:>6.1f} s")
    print(f"FlightLLM, bucketed, LLaMA2-7B up to {CONTEXT} tokens (from its profiler's program "
          f"sizes): {flightllm / 1e9:.2f} GB")
    write_atomic(args.output, json.dumps({"context": CONTEXT, "results": rows,
                                          "flightllm_bucket_bytes": flightllm}, indent=1) + "\n")


if __name__ == "__main__":
    main()
