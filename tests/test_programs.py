"""The hand-scheduled workloads of flightgen.sim.programs on the ISA simulator, against a
direct numpy computation of the same layers with the flightgen.isa functions: checks the
programs' data layouts, tokens and registers (the RTL benches then compare the RTL with the
ISA simulator on them)."""

import os

import numpy as np
import pytest
from configs import STRIPED

from flightgen.isa import attention as A
from flightgen.isa import special as S
from flightgen.isa.machine import SIM_CORE, ErrorCode, Machine
from flightgen.isa.numerics import quantize_per_group, quantize_per_token
from flightgen.isa.weights import linear
from flightgen.sim.programs import decoder_layer, ffn_chain

SEED = int(os.environ.get("FLIGHTGEN_SEED", "2026"))
EPS = 1e-5


def _linear(weight, values):
    codes, scale = quantize_per_group(values[None])
    return linear(codes, scale, weight)[0]


def _ffn(layer, x):
    h = S.rms_norm(x[None], layer["norm"], EPS)[0]
    gate, up = _linear(layer["gate"], h), _linear(layer["up"], h)
    return S.add(x, _linear(layer["down"], S.mul(S.silu(gate), up)))


def _run(builder, registers=(0,) * 7):
    machine = Machine(builder.config, hbm_bytes=len(builder.hbm[0]))
    for port, image in enumerate(builder.hbm):
        machine.hbm[port][:] = image
    result = machine.run(builder.words(), registers)
    assert result.error == ErrorCode.NONE, result.message
    return machine


def _vector(machine, port, address, length):
    """An FX vector stored in line format (one beat of ``lanes`` values per line)."""
    c = machine.config
    lines = -(-length // c.lanes)
    raw = machine.hbm[port][address:address + lines * c.line_bytes]
    values = raw.reshape(lines, c.line_bytes)[:, :4 * c.lanes].copy().view(np.int32)
    return values.ravel()[:length].astype(np.int64)


@pytest.mark.parametrize("config, bits, pattern", [(SIM_CORE, 4, None), (SIM_CORE, 8, (8, 16)),
                                                   (STRIPED, 4, (8, 16)), (STRIPED, 8, None)])
def test_ffn_chain_is_the_ffn(config, bits, pattern):
    rng = np.random.default_rng(SEED)
    builder = ffn_chain(config, rng, 128, 256, layers=2, bits=bits, pattern=pattern)
    machine = _run(builder)
    x = builder.x
    for layer in builder.layers:
        x = _ffn(layer, x)
    np.testing.assert_array_equal(_vector(machine, 1, 0, 128), x)


@pytest.mark.parametrize("position", [0, 5, 37])
def test_decoder_layer_is_the_layer(position):
    """Attention over an INT8 KV cache (GQA, RoPE) and the FFN, one decode step."""
    rng = np.random.default_rng(SEED + position)
    b = decoder_layer(SIM_CORE, rng, dim=64, heads=4, kv_heads=2, head_dim=16, hidden=128,
                      capacity=64, position=position)
    machine = _run(b, b.registers)
    w, hd, heads = b.weights, b.head_dim, 4
    x = b.x
    h = S.rms_norm(x[None], b.norm, EPS)[0]
    q = S.rope(_linear(w["attn_q"], h).reshape(1, heads, hd), [position], b.frequencies)[0]
    k = S.rope(_linear(w["attn_k"], h).reshape(1, 2, hd), [position], b.frequencies)[0]
    v = _linear(w["attn_v"], h).reshape(2, hd)
    q_codes, q_scale = quantize_per_token(q)
    k_codes, k_scale = quantize_per_token(k)
    v_codes, v_scale = quantize_per_token(v)
    cache = b.cache
    keys, values = cache["k"].copy(), cache["v"].copy()
    k_mult, k_exp = (a.copy() for a in cache["k_scale"])
    v_mult, v_exp = (a.copy() for a in cache["v_scale"])
    keys[:, position], values[:, position] = k_codes, v_codes
    k_mult[:, position], k_exp[:, position] = k_scale
    v_mult[:, position], v_exp[:, position] = v_scale
    seen = position + 1
    out = []
    for head in range(heads):
        kv = head // b.group_heads
        acc = keys[kv, :seen] @ q_codes[head]
        scores = A.scores(acc, (q_scale[0][head], q_scale[1][head]),
                          (k_mult[kv, :seen], k_exp[kv, :seen]), b.attn_scale)
        probs = S.softmax(scores)
        codes, scale = A.weight_codes(A.fold(probs, (v_mult[kv, :seen], v_exp[kv, :seen])))
        out.append(A.output(codes @ values[kv, :seen], scale))
    x = S.add(x, _linear(w["attn_output"], np.concatenate(out)))
    x = _ffn(b.layers[0], x)
    np.testing.assert_array_equal(_vector(machine, 0, b.output, 64), x)
