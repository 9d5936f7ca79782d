"""The special function unit's contract: its command, stream layouts and what each operation
computes (the definitions of :mod:`flightgen.isa.special`, bit for bit).

The SFU (:class:`flightgen.hw.sfu.SpecialFunctionUnit`) works on one vector of ``length``
elements per command, ``lanes`` elements per beat (the last beat zero-padded).

Streams
-------
``cmd``  :data:`command_layout`.
``a``    the vector: ``lanes`` FX values (signed 32 bits) per beat.
``b``    the second operand, ``lanes`` entries per beat, each ``value`` (signed 32, low bits)
         and ``weight`` (signed 16, high bits): ADD/MUL take ``value``; RMSNORM the norm weight
         integers (:func:`~flightgen.isa.special.norm_weight`) in ``weight``; LAYERNORM the
         weights in ``weight`` and the bias (FX) in ``value``; ROPE the phase increment of each
         element's pair (:func:`~flightgen.isa.special.rope_frequencies`) in ``value`` (as an
         unsigned 32-bit number). Other operations read no ``b``.
``out``  the result: ``lanes`` values per beat (FX; softmax: Q0.16 probabilities).

Operations (``op``)
-------------------
=========  ==================================================================================
ADD        :func:`~flightgen.isa.special.add` (a, b)
MUL        :func:`~flightgen.isa.special.mul` (a, b)
SILU       :func:`~flightgen.isa.special.silu` (a)
GELU       :func:`~flightgen.isa.special.gelu` (a)
SOFTMAX    :func:`~flightgen.isa.special.softmax` (a, mask: element ``i`` kept when
           ``i < valid``; causal attention keeps positions up to the query's)
RMSNORM    :func:`~flightgen.isa.special.rms_norm` (a, weight, eps): ``frac`` is the weight's
           fraction bits, ``eps`` the epsilon in mean-square units
           (:func:`~flightgen.isa.special.eps_fixed`)
LAYERNORM  :func:`~flightgen.isa.special.layer_norm` (a, weight, bias, eps)
ROPE       :func:`~flightgen.isa.special.rope` of one head vector at ``position``
=========  ==================================================================================
"""

import numpy as np
from amaranth.lib import data, enum

from . import special

__all__ = ["VectorOp", "command_layout", "VectorOperation", "MAX_LENGTH", "READS_B",
           "B_IS_VECTOR", "pack_beats"]

#: Longest vector a command may name.
MAX_LENGTH = (1 << 16) - 1


class VectorOp(enum.Enum, shape=3):
    ADD = 0
    MUL = 1
    SILU = 2
    GELU = 3
    SOFTMAX = 4
    RMSNORM = 5
    LAYERNORM = 6
    ROPE = 7


#: Operations that read the ``b`` stream.
READS_B = frozenset({VectorOp.ADD, VectorOp.MUL, VectorOp.RMSNORM, VectorOp.LAYERNORM,
                     VectorOp.ROPE})
#: Operations whose ``b`` is an FX vector (the core reads it from ``VEC`` as vector beats and
#: passes its values with weight 0); the others read parameter entries (48 bits).
B_IS_VECTOR = frozenset({VectorOp.ADD, VectorOp.MUL})

command_layout = data.StructLayout({
    "op": VectorOp,
    "length": 16,
    "valid": 16,
    "frac": 8,
    "eps": 40,
    "position": 32,
})


def pack_beats(values, lanes, width):
    """Pack integers ``width`` bits each, ``lanes`` per beat, the last beat zero-padded; return
    the beats as integers."""
    values = [int(v) & ((1 << width) - 1) for v in np.asarray(values).ravel()]
    values += [0] * (-len(values) % lanes)
    return [sum(v << (width * j) for j, v in enumerate(values[i:i + lanes]))
            for i in range(0, len(values), lanes)]


class VectorOperation:
    """One SFU command with its stream beats and expected output.

    Parameters
    ----------
    lanes : int
    op : VectorOp
    a : array of int
        The FX vector (length 1 to :data:`MAX_LENGTH`; even for ROPE).
    b : array of int, optional
        ADD/MUL: the second FX vector.
    valid : int
        SOFTMAX: elements kept (default all).
    weight, bias : float arrays, eps : float
        RMSNORM / LAYERNORM parameters (float, as the model stores them).
    position : int, frequencies : array of int
        ROPE: the token position and the pair frequencies.

    Members
    -------
    command : dict
    beats : dict of stream name -> list of int
    expected : ndarray of int64, the output vector
    """

    def __init__(self, lanes, op, a, b=None, *, valid=None, weight=None, bias=None, eps=None,
                 position=0, frequencies=None):
        op = VectorOp(op)
        a = np.asarray(a, dtype=np.int64)
        n = a.size
        if not 1 <= n <= MAX_LENGTH:
            raise ValueError(f"vector length must be 1 to {MAX_LENGTH}, not {n}")
        frac, epsilon, value, weights = 0, 0, np.zeros(n, np.int64), np.zeros(n, np.int64)
        valid = n if valid is None else int(valid)
        if op in (VectorOp.ADD, VectorOp.MUL):
            value = np.asarray(b, dtype=np.int64)
            expected = (special.add if op == VectorOp.ADD else special.mul)(a, value)
        elif op == VectorOp.SILU:
            expected = special.silu(a)
        elif op == VectorOp.GELU:
            expected = special.gelu(a)
        elif op == VectorOp.SOFTMAX:
            if not 0 <= valid <= n:
                raise ValueError(f"softmax keeps 0 to {n} elements, not {valid}")
            expected = special.softmax(a, np.arange(n) < valid)
        elif op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
            weights, frac = special.norm_weight(weight)
            epsilon = special.eps_fixed(eps)
            if op == VectorOp.RMSNORM:
                expected = special.rms_norm(a, weight, eps)
            else:
                value = special.to_fx(bias)
                expected = special.layer_norm(a, weight, bias, eps)
        else:
            if n % 2:
                raise ValueError(f"RoPE rotates pairs: the length must be even, not {n}")
            frequencies = np.asarray(frequencies, dtype=np.int64)
            value = np.repeat(frequencies, 2)
            expected = special.rope(a[None], [position], frequencies)[0]
        if not -128 <= frac < 128:
            raise ValueError(f"norm weight fraction bits {frac} out of range")
        self.op, self.lanes, self.length, self.a_values = op, lanes, n, a
        #: The ``value`` of each ``b`` entry (the second FX vector of ADD and MUL).
        self.b_values = np.asarray(value, dtype=np.int64)
        self.command = {"op": op, "length": n, "valid": valid, "frac": frac & 0xFF,
                        "eps": epsilon, "position": int(position) & 0xFFFFFFFF}
        self.beats = {"a": pack_beats(a, lanes, 32), "b": []}
        if op in READS_B:
            entries = (value & 0xFFFFFFFF) | ((weights & 0xFFFF) << 32)
            self.beats["b"] = pack_beats(entries, lanes, 48)
        self.expected = np.asarray(expected, dtype=np.int64)

    @property
    def out_beats(self):
        return -(-self.length // self.lanes)
