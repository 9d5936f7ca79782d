"""Stimulus generators shared by the unit tests and the cocotb benches.

Each generator returns directed edge cases first, then random values, from a numpy generator the
caller seeds, so a bench and a unit test of the same block exercise the same corners.
"""

import numpy as np

from ..isa.numerics import ACC_BITS, REQUANT_MULT_BITS, REQUANT_SHIFT_BITS

__all__ = ["requant_beats", "matrix_operation", "vector_operation", "vector_edge_cases",
           "random_instruction", "random_programs", "quantizer_groups", "WEIGHT_FORMATS"]

_ACC_MIN, _ACC_MAX = -(2 ** (ACC_BITS - 1)), 2 ** (ACC_BITS - 1) - 1
_MULT_MAX = 2**REQUANT_MULT_BITS - 1
_SHIFT_MAX = 2**REQUANT_SHIFT_BITS - 1


def _beats(accs, mult, shift, lanes):
    """Pack a flat list of accumulators into beats that share ``mult`` and ``shift``."""
    accs = np.asarray(accs, dtype=np.int64)
    accs = np.concatenate([accs, np.zeros(-len(accs) % lanes, dtype=np.int64)])
    beats = accs.reshape(-1, lanes)
    return beats, np.full(len(beats), mult, np.int64), np.full(len(beats), shift, np.int64)


def requant_beats(rng, lanes, random_beats):
    """Return ``(acc, mult, shift)`` input beats for a requantizer with ``lanes`` lanes.

    The directed part covers: every accumulator in [-300, 300] at ``mult=1, shift=1`` (each one
    an exact half or an integer, with the saturation edges at 127.5 and -128.5); the extreme
    accumulators against the extreme multipliers at every interesting shift (0, 1, the 16/32/48
    boundaries and 63); and exact ties (``acc * mult`` an odd multiple of ``2**(shift - 1)``) at
    every shift from 1 to 46, with both even and odd quotients. The random part mixes uniform
    32-bit accumulators with log-uniform small ones, and shifts that are uniform over 0..63 with
    shifts chosen to land the result near the INT8 range.

    Returns
    -------
    acc : ndarray of int64, shape (beats, lanes)
    mult, shift : ndarray of int64, shape (beats,)
    """
    parts = [_beats(np.arange(-300, 301), 1, 1, lanes)]

    extremes = [_ACC_MIN, _ACC_MIN + 1, -(2**16), -1, 0, 1, 2**16, _ACC_MAX - 1, _ACC_MAX]
    for mult in (0, 1, 2, 2**15, _MULT_MAX):
        for shift in (0, 1, 2, 15, 16, 17, 31, 32, 33, 46, 47, 48, 49, _SHIFT_MAX):
            parts.append(_beats(extremes, mult, shift, lanes))

    for shift in range(1, 47):  # the one tie at shift 47, INT32_MIN * 2**15, is in `extremes`
        log_mult = int(rng.integers(max(0, shift - 31), min(15, shift - 1), endpoint=True))
        exponent = shift - 1 - log_mult  # acc = odd * 2**exponent makes acc * mult a tie
        largest = _ACC_MAX >> exponent  # |odd| may not exceed this
        half = rng.integers(max(-200, -((largest + 1) // 2)), min(200, (largest - 1) // 2),
                            size=4 * lanes, endpoint=True)
        parts.append(_beats((2 * half + 1) << exponent, 1 << log_mult, shift, lanes))

    wide = rng.integers(_ACC_MIN, _ACC_MAX, size=(random_beats, lanes), endpoint=True)
    small = np.sign(wide) * np.exp2(rng.uniform(0, 31, size=wide.shape)).astype(np.int64)
    acc = np.where(rng.random(wide.shape) < 0.5, wide, small)
    mult = rng.integers(0, _MULT_MAX, size=random_beats, endpoint=True)
    magnitude = np.abs(acc).max(axis=1) * np.maximum(mult, 1)
    near_int8 = np.maximum(np.ceil(np.log2(magnitude + 1)).astype(np.int64) - 7, 0)
    near_int8 = np.clip(near_int8 + rng.integers(-2, 3, size=random_beats), 0, _SHIFT_MAX)
    uniform = rng.integers(0, _SHIFT_MAX, size=random_beats, endpoint=True)
    shift = np.where(rng.random(random_beats) < 0.25, uniform, near_int8)
    parts.append((acc, mult, shift))

    acc, mult, shift = (np.concatenate(column) for column in zip(*parts, strict=True))
    return acc, mult, shift


#: Weight formats of the matrix-engine stimulus: name -> (bits, symmetric).
WEIGHT_FORMATS = {"int8": (8, True), "int8-asym": (8, False), "int4": (4, True),
                  "int4-asym": (4, False), "int2": (2, True), "int2-asym": (2, False)}


def matrix_operation(rng, geometry, mode, weights="int8", pattern=(16, 16), k=None, rows=None,
                     tokens=None, group=32, load=True, activations=None, raw=False):
    """A random :class:`flightgen.isa.matrix.MatrixOperation`.

    Weights are random normals quantized to ``weights`` (:data:`WEIGHT_FORMATS`) in groups of
    ``group``, then pruned to ``pattern``; their per-row spread of scales is large but within
    what :func:`flightgen.isa.weights.linear` accumulates exactly. Activations are FX vectors
    whose 32-blocks span 2**8 to 2**28 in magnitude (one block is all zero), quantized per
    block. ``k``, ``rows`` and ``tokens`` default to random sizes that exercise padding.
    ``activations`` (``(codes, scale)``, e.g. ``.activations`` of an earlier operation) reuses
    a tile instead. ``raw`` asks for the integer dot products.
    """
    from ..isa.matrix import MatrixMode, MatrixOperation
    from ..isa.numerics import quantize_per_group
    from ..isa.sparse import prune
    from ..isa.weights import GroupQuantized

    mode = MatrixMode(mode)
    g = geometry
    bits, symmetric = WEIGHT_FORMATS[weights]
    if activations is not None:
        k = activations[0].shape[1]
    if k is None:
        k = int(rng.integers(1, 6)) * max(group, 32)
    if rows is None:
        rows = 2 * int(rng.integers(1, 2 * g.vpus + 2))
    if tokens is None:
        tokens = 1 if mode == MatrixMode.MV else int(rng.integers(1, g.lanes + 1))
    row_scale = np.exp2(rng.uniform(-9, -1, (rows, 1)))
    values = rng.normal(0, 1, (rows, k)) * row_scale * np.exp2(rng.uniform(-3, 3, (rows, k)))
    weight = GroupQuantized.from_float(values, bits, group, symmetric)
    weight = prune(weight, *pattern)
    if activations is None:
        blocks = k // 32
        magnitude = np.exp2(rng.uniform(8, 28, (tokens, blocks, 1)))
        fx = (rng.normal(0, 1, (tokens, blocks, 32)) * magnitude).astype(np.int64)
        fx[:, int(rng.integers(0, blocks))] = 0
        activations = quantize_per_group(fx.reshape(tokens, k))
    codes, scale = activations
    operation = MatrixOperation(g, mode, weight, codes, scale, load=load, raw=raw)
    operation.activations = activations
    return operation


def vector_operation(rng, lanes, op, length, *, valid=None, scale=None):
    """A random :class:`flightgen.isa.vector.VectorOperation` of ``length`` elements.

    FX inputs are normals of a random magnitude from 2**-4 to 2**12 (``scale`` fixes it), with
    occasional saturating extremes; norm weights and biases are normals, epsilon 1e-5 or 1e-6;
    RoPE takes a random position and a head's frequencies (theta 10000).
    """
    from ..isa import special
    from ..isa.vector import VectorOp, VectorOperation

    op = VectorOp(op)
    magnitude = scale if scale is not None else 2.0 ** rng.uniform(-4, 12)
    a = special.to_fx(rng.normal(0, magnitude, length))
    if length > 4 and rng.random() < 0.3:
        a[rng.integers(0, length)] = rng.choice([-(2**31), 2**31 - 1])
    kwargs = {}
    if op in (VectorOp.ADD, VectorOp.MUL):
        kwargs["b"] = special.to_fx(rng.normal(0, 2.0 ** rng.uniform(-4, 12), length))
    elif op == VectorOp.SOFTMAX:
        kwargs["valid"] = int(rng.integers(0, length + 1)) if valid is None else valid
    elif op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
        kwargs["weight"] = rng.normal(1, 0.3, length) * 2.0 ** rng.uniform(-3, 3)
        kwargs["bias"] = rng.normal(0, 0.5, length)
        kwargs["eps"] = float(rng.choice([1e-5, 1e-6]))
    elif op == VectorOp.ROPE:
        kwargs["position"] = int(rng.integers(0, 1 << 20))
        kwargs["frequencies"] = special.rope_frequencies(length, 10000.0)
    return VectorOperation(lanes, op, a, **kwargs)


def vector_edge_cases(lanes):
    """Directed SFU commands: all-equal vectors, the int32 extremes (saturation, large
    negatives), table edges, fully and singly masked softmax rows, zero vectors for the norms,
    lengths that are not whole beats, RoPE at the last position with extreme frequencies."""
    from ..isa.vector import VectorOp, VectorOperation

    top, bottom = 2**31 - 1, -(2**31)
    return [
        VectorOperation(lanes, VectorOp.SOFTMAX, np.full(9, 12345)),
        VectorOperation(lanes, VectorOp.SOFTMAX, np.full(9, bottom), valid=0),
        VectorOperation(lanes, VectorOp.SOFTMAX, [top, bottom, 0, 5], valid=1),
        VectorOperation(lanes, VectorOp.SOFTMAX, [bottom, top, bottom, top, 7], valid=4),
        VectorOperation(lanes, VectorOp.SOFTMAX, np.full(7, bottom)),
        VectorOperation(lanes, VectorOp.SILU, [top, bottom, -(16 << 16), 16 << 16, 0, -1, 1]),
        VectorOperation(lanes, VectorOp.GELU, [top, bottom, -(8 << 16), 8 << 16, 0, -1, 1]),
        VectorOperation(lanes, VectorOp.ADD, [top, bottom, top], [top, bottom, bottom]),
        VectorOperation(lanes, VectorOp.MUL, [top, bottom, top], [top, bottom, bottom]),
        VectorOperation(lanes, VectorOp.RMSNORM, np.full(5, 7), weight=np.ones(5), eps=1e-5),
        VectorOperation(lanes, VectorOp.RMSNORM, np.zeros(3), weight=np.ones(3), eps=1e-6),
        VectorOperation(lanes, VectorOp.RMSNORM, [top, bottom, top], weight=[1, -2, 3],
                        eps=1e-5),
        VectorOperation(lanes, VectorOp.LAYERNORM, np.full(6, -3 << 16), weight=np.ones(6),
                        bias=np.full(6, 0.5), eps=1e-5),
        VectorOperation(lanes, VectorOp.LAYERNORM, [top, bottom, top, bottom, 1],
                        weight=np.linspace(-2, 2, 5), bias=np.zeros(5), eps=1e-6),
        VectorOperation(lanes, VectorOp.ROPE, [top, bottom, bottom, top],
                        position=(1 << 32) - 1, frequencies=[2**32 - 1, 1 << 30]),
        VectorOperation(lanes, VectorOp.ROPE, np.full(6, bottom), position=0,
                        frequencies=[0, 1, 2**31]),
    ]


def quantizer_groups(rng, group, count):
    """Groups of ``group`` FX values for the block quantizer: all-zero, all-equal, single-spike,
    int32-extreme and 24-bit-edge groups first, then ``count`` random groups of magnitudes
    2**0 to 2**31. Returns an int64 array ``(groups * group,)``."""
    top, bottom = 2**31 - 1, -(2**31)
    index = np.arange(group)
    directed = [np.zeros(group), np.full(group, 5), np.full(group, -(2**24)),
                np.full(group, bottom), np.where(index == min(3, group - 1), top, 0),
                np.where(index % 2, top, bottom), np.full(group, 1), np.full(group, 2**24 - 1),
                np.full(group, 2**24 + 1), np.where(index == 0, -(2**25) - 2, 1)]
    magnitude = 2.0 ** rng.uniform(0, 31, (count, 1))
    noise = np.clip(rng.normal(0, 1, (count, group)) * magnitude, bottom, top)
    return np.concatenate([np.array(directed), noise]).astype(np.int64).ravel()


def random_instruction(rng, limit, tokens=0.3, opcode=None):
    """A random instruction word with a legal opcode and its reserved bits clear.

    Each field ``name`` (header fields without their prefix) is uniform in
    ``[0, 2**min(width, limit(name, width)))``; ``wait`` and ``release`` are random with
    probability ``tokens``, else 0. ``opcode`` is random unless given. Returns
    ``(opcode, values)``; encode with
    :func:`flightgen.isa.instructions.encode` after any adjustment.
    """
    from ..isa.instructions import Opcode, fields

    if opcode is None:
        opcode = Opcode(int(rng.choice([o.value for o in Opcode])))
    values = {}
    for name, _, width in fields(opcode):
        name = name.removeprefix("header.")
        if name in ("opcode", "spare", "reserved"):
            continue
        values[name] = int(rng.integers(0, 1 << min(width, limit(name, width))))
    for key in ("wait", "release"):
        values[key] = int(rng.integers(0, 32)) if rng.random() < tokens else 0
    return opcode, values


#: Field limits (log2) of :func:`random_programs`: small enough that legal programs finish
#: quickly and touch few lines.
_SMALL_FIELDS = {"length": 3, "count2": 2, "count3": 2, "groups": 3, "blocks": 2, "stride2": 6,
                 "stride3": 6, "addr": 14, "line": 9, "act": 8, "wgt": 9, "mask": 8, "scale": 8,
                 "out": 9, "a": 9, "b": 9, "src": 9, "dst": 8, "valid": 5, "position": 8}


def random_programs(rng, count):
    """``count`` random programs of 1 to 5 words (lists of ints): raw random words, and
    legal-looking ones with small fields and random tokens; matrix commands are dense (so
    that no error depends on the buffers' contents); half the programs end with ``HALT``.
    Most stop with an error: fuzz for the dispatcher's checks and the error path."""
    from ..isa.instructions import Opcode, encode

    def limit(name, width):
        return 1 if name.endswith("_mul") else _SMALL_FIELDS.get(name, 2)

    programs = []
    for _ in range(count):
        words = []
        for _ in range(int(rng.integers(1, 6))):
            if rng.random() < 0.3:
                words.append(int.from_bytes(rng.bytes(32), "little"))
                continue
            opcode, values = random_instruction(rng, limit)
            if opcode == Opcode.SYS:
                values["op"] = int(rng.random() < 0.5)
            if opcode == Opcode.MATRIX:
                values["keep"] = 0
            if opcode in (Opcode.LOAD, Opcode.STORE) and rng.random() < 0.7:
                for key in ("addr", "stride2", "stride3"):
                    values[key] &= ~31
            words.append(encode(opcode, values))
        if rng.random() < 0.5:
            words.append(encode(Opcode.SYS, {"op": 1}))
        programs.append(words)
    return programs
