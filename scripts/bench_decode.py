#!/usr/bin/env python3
"""Projected decode speed on the Alveo U280: LLaMA2-7B dense W4 (a float16 scale per 32 or
per 128 weights), W8 and 8:16-sparse W4, and OPT-6.7B, against the HBM roofline and
FlightLLM's reported figure.

Each LLaMA2-7B row is :func:`flightgen.sim.projection.project`: the model compiled
config-only for the ``u280`` configuration (3 cores, 30 pseudo-channels, 225 MHz) with its
cores a tensor-parallel group (all at once, each on its share of every layer, meeting at
barriers on a 31st, shared channel), and one row as a layer pipeline (``--parallel layers``:
one core at a time); the cycle
model (within 3% of the RTL, ``tests/test_perf.py``) over every core's decode program at the
context length, the HBM bytes the programs move, the roofline of the connected channels at
:data:`~flightgen.sim.projection.HBM_EFFICIENCY`, and the instruction storage. OPT-6.7B does
not compile (OPT needs ReLU, LayerNorm, biases and learned positions, which the compiler does
not support): its row gives only the roofline of its weights.

FlightLLM (Zeng et al., FPGA 2024) reports 55 tokens/s for LLaMA2-7B decode on the U280.

Prints a table and writes JSON (default ``bench_decode.json``).

    python scripts/bench_decode.py --context 512 -o bench_decode.json
"""

import argparse
import json
import sys

from flightgen.boards.alveo import U280
from flightgen.compile import _configs
from flightgen.compiler.passes import CompileConfig
from flightgen.compiler.target import board_target
from flightgen.errors import FlightgenError
from flightgen.files import write_atomic
from flightgen.sim.projection import HBM_EFFICIENCY, project

FLIGHTLLM_TOKENS_PER_S = 55.0
#: OPT-6.7B (Zhang et al. 2022): 32 layers, 4096 wide, FFN 16384, vocabulary 50272.
OPT_6_7B = {"layers": 32, "dim": 4096, "ffn": 16384, "vocab": 50272}


def opt_weight_bytes(bits_per_weight):
    """Weight bytes of OPT-6.7B's decoder matrices and LM head at ``bits_per_weight``."""
    o = OPT_6_7B
    matrices = o["layers"] * (4 * o["dim"] ** 2 + 2 * o["dim"] * o["ffn"]) + o["vocab"] * o["dim"]
    return matrices * bits_per_weight / 8


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=512,
                        help="Context length of the decode step (default 512).")
    parser.add_argument("-o", "--output", default="bench_decode.json")
    args = parser.parse_args(argv)
    layers = board_target(U280, "layers")
    target = board_target(U280)
    llama = _configs()["llama2-7b"]
    configs = [("W4 dense", CompileConfig(weights="int4-g32-sym"), target),
               ("W4 dense, g128", CompileConfig(weights="int4-g128-sym"), target),
               ("W4 g128, pipeline", CompileConfig(weights="int4-g128-sym"), layers),
               ("W8 dense", CompileConfig(weights="int8-g32-sym"), target),
               ("W4 + 8:16 FFN", CompileConfig(weights="int4-g32-sym", sparsity="8:16"),
                target)]
    rows = []
    for label, config, chosen in configs:
        try:
            p = project("llama2-7b", llama, U280, chosen, config, args.context,
                        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        except FlightgenError as error:  # a configuration the compiler refuses: say why
            rows.append({"model": "LLaMA2-7B", "config": label, "tokens_per_s": None,
                         "hbm_bytes": None, "roofline_tokens_per_s": None,
                         "note": f"not compiled: {error}"})
            continue
        rows.append({**p.to_dict(), "model": "LLaMA2-7B", "config": label})
    ports = target.cores * target.local_ports
    bandwidth = ports * U280.hbm.channel_gbps * HBM_EFFICIENCY * 1e9
    for label, bits in (("W4 (weights only)", 4.5), ("W8 (weights only)", 8.5)):
        rows.append({"model": "OPT-6.7B", "config": label, "tokens_per_s": None,
                     "hbm_bytes": int(opt_weight_bytes(bits)),
                     "roofline_tokens_per_s": bandwidth / opt_weight_bytes(bits),
                     "note": "not compiled: OPT needs ReLU, LayerNorm, biases, learned "
                             "positions"})
    header = (f"{'model':<10} {'config':<18} {'tok/s':>7} {'roofline':>9} {'of roof':>8} "
              f"{'MB/token':>9} {'HBM util':>9} {'DSP util':>9} {'instr MB':>9}")
    print(f"U280, 3 cores x {target.local_ports} HBM ports (tensor parallel: one more each, to "
          f"a shared channel) at {target.clock_mhz:.0f} MHz, context {args.context}; "
          f"FlightLLM reports {FLIGHTLLM_TOKENS_PER_S:.0f} tok/s")
    print(header)
    for r in rows:
        speed = r.get("tokens_per_s")
        if speed:
            cells = (f"{speed:.1f}", f"{speed / r['roofline_tokens_per_s']:.1%}",
                     f"{r['hbm_utilisation']:.1%}", f"{r['dsp_utilisation']:.1%}",
                     f"{r['instruction_mb']:.2f}")
        else:
            cells = ("-",) * 5
        roof = r["roofline_tokens_per_s"]
        traffic = r["hbm_bytes"]
        print(f"{r['model']:<10} {r['config']:<18} {cells[0]:>7} "
              f"{f'{roof:.1f}' if roof else '-':>9} {cells[1]:>8} "
              f"{f'{traffic / 1e6:.0f}' if traffic else '-':>9} "
              f"{cells[2]:>9} {cells[3]:>9} {cells[4]:>9}")
        if r.get("note"):
            print(f"{'':<10} {r['note']}")
    write_atomic(args.output, json.dumps({
        "board": "u280", "context": args.context, "hbm_efficiency": HBM_EFFICIENCY,
        "flightllm_tokens_per_s": FLIGHTLLM_TOKENS_PER_S, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
