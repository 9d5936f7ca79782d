#!/usr/bin/env python3
"""Measure each fixed-point definition in flightgen.isa against float64 over its input range.

Prints the markdown table of docs/numerics.md and writes JSON. Inputs are dense grids or
seeded random samples over each function's range, snapped to the input format first, so the
figures are the error of the definition, not of input rounding.

    python scripts/numerics_error.py -o numerics_error.json
"""

import argparse
import json
import math
import sys

import numpy as np

from flightgen.files import write_atomic
from flightgen.isa import numerics as N
from flightgen.isa import special as S

ONE, TRIG = S.ONE, 2**15


def measure():
    """Yield ``(function, domain, unit, error, error_kind)`` rows."""
    rng = np.random.default_rng(0)
    x = S.from_fx(S.to_fx(np.linspace(-30, 0, 300001)))
    error = np.abs(S.exp_neg(S.to_fx(x)) - np.exp(x) * ONE).max()
    yield "exp_neg", "[-30, 0]", "Q0.16", error, "LSB"

    x = S.from_fx(S.to_fx(np.linspace(-24, 24, 480001)))
    xf, sig = S.to_fx(x), 1 / (1 + np.exp(-x))
    phi = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    yield "sigmoid", "[-24, 24]", "Q0.16", np.abs(S.sigmoid(xf) - sig * ONE).max(), "LSB"
    yield "silu", "[-24, 24]", "FX", np.abs(S.silu(xf) - x * sig * ONE).max(), "LSB"
    yield "normal_cdf", "[-24, 24]", "Q0.16", np.abs(S.normal_cdf(xf) - phi * ONE).max(), "LSB"
    yield "gelu", "[-24, 24]", "FX", np.abs(S.gelu(xf) - x * phi * ONE).max(), "LSB"

    freqs = S.rope_frequencies(64, 100000.0)
    positions = np.arange(8192)
    cos, sin = S.rope_cos_sin(positions, freqs)
    angles = np.outer(positions, 100000.0 ** (-np.arange(32) * 2 / 64))
    error = max(np.abs(cos - np.cos(angles) * TRIG).max(),
                np.abs(sin - np.sin(angles) * TRIG).max())
    yield "rope_cos_sin", "positions 0..8191 (head_dim 64, theta 1e5)", "Q1.15", error, "LSB"

    vec = S.from_fx(S.to_fx(rng.standard_normal((512, 64)) * 2))
    angles = angles[:512]
    ref = np.empty_like(vec)
    ref[:, 0::2] = vec[:, 0::2] * np.cos(angles) - vec[:, 1::2] * np.sin(angles)
    ref[:, 1::2] = vec[:, 0::2] * np.sin(angles) + vec[:, 1::2] * np.cos(angles)
    got = S.rope(S.to_fx(vec)[:, None, :], np.arange(512), freqs)[:, 0, :]
    yield "rope", "x ~ N(0, 2), positions 0..511", "FX", np.abs(got - ref * ONE).max(), "LSB"

    scores = S.from_fx(S.to_fx(rng.standard_normal((500, 300)) * 6))
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    error = np.abs(S.softmax(S.to_fx(scores)) - probs * ONE).max()
    yield "softmax", "rows of 300, scores ~ N(0, 6)", "Q0.16", error, "LSB"

    v = S.from_fx(S.to_fx(rng.standard_normal((200, 576)) * rng.uniform(0.01, 30, (200, 1))))
    w, b = rng.uniform(-3, 3, 576), rng.uniform(-1, 1, 576)
    ref = v / np.sqrt((v**2).mean(-1, keepdims=True) + 1e-5) * w
    got = S.rms_norm(S.to_fx(v), w, 1e-5)
    error = (np.abs(got - ref * ONE) / (np.abs(ref).max(-1, keepdims=True) * ONE)).max()
    yield "rms_norm", "rows of 576, rms 0.01..30, abs(w) <= 3", "FX", error, "of row peak"
    centred = v - v.mean(-1, keepdims=True)
    ref = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * w + b
    got = S.layer_norm(S.to_fx(v), w, b, 1e-5)
    error = (np.abs(got - ref * ONE) / (np.abs(ref).max(-1, keepdims=True) * ONE)).max()
    yield "layer_norm", "as rms_norm, abs(b) <= 1", "FX", error, "of row peak"

    values = np.maximum(rng.integers(1, 2**47, size=100000) >> rng.integers(0, 47, 100000), 1)
    m, e = N.reciprocal(values)
    yield "reciprocal", "integers 1 .. 2**47", "scale", np.abs(m * 2.0**e * values - 1).max(), \
        "relative"
    m, e = N.rsqrt(values[:20000])
    error = np.abs(m * 2.0**e * np.sqrt(values[:20000]) - 1).max()
    yield "rsqrt", "integers 1 .. 2**47", "scale", error, "relative"

    t = rng.integers(-2**40, 2**40, size=(2000, 576)) >> rng.integers(0, 38, size=(2000, 1))
    codes, (sm, se) = N.quantize_per_token(t)
    step = np.abs(t).max(-1, keepdims=True) / 127
    error = (np.abs(codes * (sm * 2.0**se)[:, None] - t) / step).max()
    yield "quantize_per_token", "rows of 576, peaks 2**2 .. 2**40", "INT8", error, "code"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="numerics_error.json", help="JSON output file.")
    args = parser.parse_args(argv)
    rows = [dict(zip(("function", "domain", "unit", "error", "kind"), row, strict=True))
            for row in measure()]
    print("| function | inputs | output | max error vs float64 |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        error = f"{row['error']:.3g} {row['kind']}"
        print(f"| `{row['function']}` | {row['domain']} | {row['unit']} | {error} |")
        row["error"] = float(row["error"])
    write_atomic(args.output, json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
