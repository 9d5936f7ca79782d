"""The scalar unit of the special function unit: divisions, reciprocals and reciprocal square
roots, once per vector.

Each operation is :mod:`flightgen.isa.numerics` bit for bit:

* ``FLOOR_DIV``: ``a // b`` (floor division, as numpy's), signed ``a``, positive ``b``;
* ``ROUND_DIV``: :func:`~flightgen.isa.numerics.div_round`, ``a / b`` rounded half to even;
* ``RECIPROCAL``: :func:`~flightgen.isa.numerics.reciprocal` of ``a``, a scale ``(mult, exp)``;
* ``RSQRT``: :func:`~flightgen.isa.numerics.rsqrt` of ``a``, a scale ``(mult, exp)``.

Dataflow
--------
One :class:`RestoringDivider` (one quotient bit per cycle) serves every operation, and an
:class:`IntegerSqrt` (one root bit per cycle) follows it for ``RSQRT``:

* the divisions divide ``|a|`` by ``b`` (96 quotient bits), then fix the sign and round;
* ``RECIPROCAL`` and ``RSQRT`` first normalise ``v = a`` with a priority encoder (its bit length
  ``n``) and a shifter, so the dividend is a constant: ``2**(15 + n) / v`` equals
  ``2**79 / (v * 2**(64 - n))`` (17 quotient bits), and ``2**(30 + 2c) // v`` with
  ``c = ceil(n / 2)`` equals ``2**94 // (v * 2**(64 - 2c))`` (33 quotient bits). Scaling the
  dividend and the divisor by the same power of two keeps the quotient and scales the remainder,
  so the rounding decision (``2 r`` against the divisor) is unchanged.
"""

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa.numerics import SCALE_BITS, div_round, reciprocal, rsqrt
from .arith import bit_length

__all__ = ["ScalarOp", "ScalarUnit", "RestoringDivider", "IntegerSqrt", "scalar_input_layout",
           "scalar_output_layout", "NUMERATOR_BITS", "DENOMINATOR_BITS", "RECIPROCAL_BITS",
           "RSQRT_BITS"]

#: Width of the signed numerator ``a`` of the divisions (and of their quotient).
NUMERATOR_BITS = 96
#: Width of the denominator ``b``: 1 <= b < 2**48.
DENOMINATOR_BITS = 48
#: :func:`~flightgen.isa.numerics.reciprocal` takes 1 <= v < 2**47.
RECIPROCAL_BITS = 47
#: :func:`~flightgen.isa.numerics.rsqrt` takes 1 <= v < 2**63 (positive int64).
RSQRT_BITS = 63
#: Width of ``exp`` in the output beat (exponents lie in [-62, -15]).
EXP_BITS = 8

# Divider geometry: the widest divisor is the normalised RSQRT operand (64 bits).
_DIVISOR_BITS = 64
# Quotient bits each operation needs (cycles in the divider). The normalised dividends,
# RECIPROCAL 2**(15 + n) * 2**(64 - n) = 2**79 and RSQRT 2**(30 + 2c) * 2**(64 - 2c) = 2**94,
# are a head below the divisor followed by that many zero bits.
_RECIPROCAL_STEPS = SCALE_BITS + 1  # quotient <= 2**16
_RSQRT_STEPS = 2 * SCALE_BITS + 1  # quotient <= 2**32
_RECIPROCAL_HEAD = 1 << (SCALE_BITS - 1 + _DIVISOR_BITS - _RECIPROCAL_STEPS)  # 2**62
_RSQRT_HEAD = 1 << (2 * (SCALE_BITS - 1) + _DIVISOR_BITS - _RSQRT_STEPS)  # 2**61
_ROOT_RADICAND_BITS = _RSQRT_STEPS  # the square root takes the 33-bit quotient: 17 root bits


class ScalarOp(enum.Enum, shape=2):
    """Operation of a :class:`ScalarUnit` beat."""
    #: ``a // b``
    FLOOR_DIV = 0
    #: ``div_round(a, b)``
    ROUND_DIV = 1
    #: ``reciprocal(a)``
    RECIPROCAL = 2
    #: ``rsqrt(a)``
    RSQRT = 3


#: One operation. ``b`` is ignored by ``RECIPROCAL`` and ``RSQRT``.
scalar_input_layout = data.StructLayout({
    "op": ScalarOp,
    "a": signed(NUMERATOR_BITS),
    "b": unsigned(DENOMINATOR_BITS),
})

#: One result. ``quotient`` is set by the divisions, ``mult`` and ``exp`` by ``RECIPROCAL`` and
#: ``RSQRT`` (the scale ``mult * 2**exp``); the fields an operation does not set are 0.
scalar_output_layout = data.StructLayout({
    "quotient": signed(NUMERATOR_BITS),
    "mult": unsigned(SCALE_BITS),
    "exp": signed(EXP_BITS),
})


def _check_width(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")


class RestoringDivider(wiring.Component):
    """Sequential unsigned divider: one quotient bit per cycle.

    Divides the dividend ``head * 2**steps + (numerator >> (numerator_bits - steps))`` by
    ``divisor``: the ``steps`` most significant bits of ``numerator`` follow ``head``, the
    partial remainder the division starts from. With ``head = 0`` and ``steps =
    numerator_bits`` this is ``numerator // divisor``; a nonzero ``head`` skips quotient bits
    known to be zero.

    Contract
    --------
    * A cycle with ``start`` high and ``busy`` low captures the operands; ``busy`` is then high
      for exactly ``steps`` cycles, after which ``quotient`` and ``remainder`` hold
      ``divmod(dividend, divisor)`` until the next start. ``start`` is ignored while busy.
    * Preconditions: ``head < divisor`` (so the quotient is below ``2**steps``) and the low
      ``numerator_bits - steps`` bits of ``numerator`` are zero. Otherwise the results are
      unspecified, in the same number of cycles.
    * Reset: idle (``busy`` low).

    Parameters
    ----------
    numerator_bits : int
        Width ``N`` of ``numerator`` and ``quotient``, at least 1.
    divisor_bits : int
        Width ``M`` of ``divisor``, ``head`` and ``remainder``, at least 1.

    Members
    -------
    start : In(1)
    head : In(M)
    numerator : In(N)
    divisor : In(M)
    steps : In(range(N + 1))
    busy : Out(1)
    quotient : Out(N)
    remainder : Out(M)

    Raises
    ------
    TypeError
        If a width is not an integer.
    ValueError
        If a width is less than 1.
    """

    def __init__(self, numerator_bits, divisor_bits):
        _check_width("numerator_bits", numerator_bits)
        _check_width("divisor_bits", divisor_bits)
        self.numerator_bits, self.divisor_bits = numerator_bits, divisor_bits
        super().__init__({
            "start": In(1),
            "head": In(divisor_bits),
            "numerator": In(numerator_bits),
            "divisor": In(divisor_bits),
            "steps": In(range(numerator_bits + 1)),
            "busy": Out(1),
            "quotient": Out(numerator_bits),
            "remainder": Out(divisor_bits),
        })

    @staticmethod
    def reference(head, numerator, divisor, steps, numerator_bits):
        """``(quotient, remainder)`` of the dividend the divider forms (Python integers)."""
        dividend = (head << steps) + (numerator >> (numerator_bits - steps))
        return divmod(dividend, divisor)

    @staticmethod
    def expected_cycles(steps):
        """Cycles ``busy`` stays high after a start."""
        return steps

    def elaborate(self, platform):
        m = Module()
        n, width = self.numerator_bits, self.divisor_bits
        count = Signal(range(n + 1))
        # Numerator bits still to come (top) above the quotient bits produced so far (bottom).
        bits = Signal(n)
        remainder = Signal(width)
        divisor = Signal(width)
        m.d.comb += [self.busy.eq(count != 0), self.quotient.eq(bits),
                     self.remainder.eq(remainder)]

        trial = Cat(bits[-1], remainder)  # 2 * remainder + next numerator bit, < 2 * divisor
        fits = trial >= divisor
        with m.If(count != 0):
            m.d.sync += [
                remainder.eq(Mux(fits, trial - divisor, trial)),
                bits.eq(Cat(fits, bits[:-1])),
                count.eq(count - 1),
            ]
        with m.Elif(self.start):
            m.d.sync += [
                remainder.eq(self.head),
                bits.eq(self.numerator),
                divisor.eq(self.divisor),
                count.eq(self.steps),
            ]
        return m


class IntegerSqrt(wiring.Component):
    """Sequential integer square root, digit by digit: one root bit per cycle.

    Contract
    --------
    * A cycle with ``start`` high and ``busy`` low captures ``radicand``; ``busy`` is then high
      for exactly ``ceil(radicand_bits / 2)`` cycles, after which ``root`` holds
      ``isqrt(radicand)`` until the next start. ``start`` is ignored while busy.
    * Reset: idle (``busy`` low).

    Parameters
    ----------
    radicand_bits : int
        Width of ``radicand``, at least 1.

    Members
    -------
    start : In(1)
    radicand : In(radicand_bits)
    busy : Out(1)
    root : Out(ceil(radicand_bits / 2))

    Raises
    ------
    TypeError
        If ``radicand_bits`` is not an integer.
    ValueError
        If ``radicand_bits`` is less than 1.
    """

    def __init__(self, radicand_bits):
        _check_width("radicand_bits", radicand_bits)
        self.radicand_bits = radicand_bits
        self.root_bits = (radicand_bits + 1) // 2
        super().__init__({
            "start": In(1),
            "radicand": In(radicand_bits),
            "busy": Out(1),
            "root": Out(self.root_bits),
        })

    def expected_cycles(self):
        """Cycles ``busy`` stays high after a start."""
        return self.root_bits

    def elaborate(self, platform):
        m = Module()
        k = self.root_bits
        count = Signal(range(k + 1))
        pending = Signal(2 * k)  # radicand bits still to come, two per cycle from the top
        remainder = Signal(k + 1)  # radicand prefix - root**2 <= 2 * root
        root = Signal(k)
        m.d.comb += [self.busy.eq(count != 0), self.root.eq(root)]

        trial = Cat(pending[-2:], remainder)  # 4 * remainder + next two bits
        test = Cat(Const(1, 2), root)  # 4 * root + 1: (2 root + 1)**2 - (2 root)**2
        fits = trial >= test
        with m.If(count != 0):
            m.d.sync += [
                remainder.eq(Mux(fits, trial - test, trial)),
                root.eq(Cat(fits, root[:-1])),
                pending.eq(pending << 2),
                count.eq(count - 1),
            ]
        with m.Elif(self.start):
            m.d.sync += [remainder.eq(0), root.eq(0), pending.eq(self.radicand),
                         count.eq(k)]
        return m


_RANGES = {
    # op: range of a (low, high exclusive, how the bounds read)
    ScalarOp.FLOOR_DIV: (-(1 << (NUMERATOR_BITS - 1)), 1 << (NUMERATOR_BITS - 1),
                         "[-2**95, 2**95)"),
    ScalarOp.ROUND_DIV: (-(1 << (NUMERATOR_BITS - 1)), 1 << (NUMERATOR_BITS - 1),
                         "[-2**95, 2**95)"),
    ScalarOp.RECIPROCAL: (1, 1 << RECIPROCAL_BITS, "[1, 2**47)"),
    ScalarOp.RSQRT: (1, 1 << RSQRT_BITS, "[1, 2**63)"),
}
_DENOMINATOR_RANGE = (1, 1 << DENOMINATOR_BITS, "[1, 2**48)")


class ScalarUnit(wiring.Component):
    """Sequential scalar arithmetic of the special function unit, one operation at a time.

    Computes, bit for bit (see :meth:`reference`):

    * ``FLOOR_DIV``: ``quotient = a // b``, for ``-2**95 <= a < 2**95`` and ``1 <= b < 2**48``;
    * ``ROUND_DIV``: ``quotient = div_round(a, b)`` (round half to even), same ranges;
    * ``RECIPROCAL``: ``(mult, exp) = reciprocal(a)``, for ``1 <= a < 2**47``;
    * ``RSQRT``: ``(mult, exp) = rsqrt(a)``, for ``1 <= a < 2**63``.

    ``mult`` lies in ``[2**15, 2**16)`` (the numerics functions carry a rounded ``2**16`` into
    the exponent) and ``exp`` in ``[-62, -15]``.

    Contract
    --------
    * Cycles: :meth:`expected_cycles`, which depend on the operation only. From the input
      transfer to the output transfer, both included, with a sink that is always ready,
      ``FLOOR_DIV`` and ``ROUND_DIV`` take 100 cycles, ``RECIPROCAL`` 21 and ``RSQRT`` 55:
      ``4 + D`` with ``D`` the divider's quotient bits (96, 96, 17, 33; one per cycle), plus
      ``1 + 17`` for the square root of ``RSQRT`` (17 root bits, one per cycle). The 4 are the
      input transfer, operand preparation, the cycle that registers the result and the output
      transfer.
    * Throughput: one operation at a time. ``i_stream.ready`` is high only while the unit is
      idle; the next operation can transfer the cycle after the result is taken, so
      back-to-back operations take the sum of their cycles.
    * Backpressure: the result stays valid, unchanged, until it is taken; ``o_stream`` obeys the
      Amaranth stream rules (valid does not depend on ready).
    * Operands outside the ranges above give unspecified results in the same number of cycles;
      :meth:`reference` rejects them.
    * Reset: the unit empties and goes idle; no output beat is valid after reset.

    Members
    -------
    i_stream : In(stream.Signature(scalar_input_layout))
        The operation ``op`` (:class:`ScalarOp`) and its operands: ``a`` (signed 96 bits: the
        numerator, or ``v`` of ``RECIPROCAL`` and ``RSQRT``), ``b`` (unsigned 48 bits: the
        denominator).
    o_stream : Out(stream.Signature(scalar_output_layout))
        ``quotient`` (signed 96 bits), ``mult`` (unsigned 16 bits), ``exp`` (signed 8 bits).
    """

    #: Divider quotient bits (cycles) per operation.
    DIVIDE_STEPS = {ScalarOp.FLOOR_DIV: NUMERATOR_BITS, ScalarOp.ROUND_DIV: NUMERATOR_BITS,
                    ScalarOp.RECIPROCAL: _RECIPROCAL_STEPS, ScalarOp.RSQRT: _RSQRT_STEPS}
    #: Square-root bits (cycles) of ``RSQRT``.
    ROOT_STEPS = (_ROOT_RADICAND_BITS + 1) // 2

    def __init__(self):
        super().__init__({
            "i_stream": In(stream.Signature(scalar_input_layout)),
            "o_stream": Out(stream.Signature(scalar_output_layout)),
        })

    # -- the model side ------------------------------------------------------------------------

    @staticmethod
    def reference(op, a, b=1):
        """Compute the output beats for the given operations (numpy).

        Parameters
        ----------
        op : ScalarOp or array_like of ScalarOp
            One operation for every beat, or one per beat.
        a, b : array_like of int
            Operands, broadcast against ``op`` and each other. Numerators beyond int64 may be
            given as Python integers (an object array). ``b`` is ignored by ``RECIPROCAL`` and
            ``RSQRT``.

        Returns
        -------
        quotient : numpy.ndarray of object (Python integers)
        mult, exp : numpy.ndarray of int64
            The fields of the output beats; those an operation does not set are 0.

        Raises
        ------
        ValueError
            If an operand lies outside its operation's range.
        """
        ops = np.vectorize(lambda o: ScalarOp(o).value, otypes=[np.int64])(
            np.asarray(op, dtype=object))
        a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
        ops, a, b = np.broadcast_arrays(ops, a, b)
        a = np.vectorize(int, otypes=[object])(a) if a.size else a
        b = np.vectorize(int, otypes=[object])(b) if b.size else b
        quotient = np.zeros(ops.shape, dtype=object)
        mult = np.zeros(ops.shape, dtype=np.int64)
        exp = np.zeros(ops.shape, dtype=np.int64)
        for operation, (low, high, bounds) in _RANGES.items():
            chosen = ops == operation.value
            if not chosen.any():
                continue
            for value in a[chosen]:
                if not low <= value < high:
                    raise ValueError(f"{operation.name} needs a in {bounds}, not {value}")
            if operation in (ScalarOp.RECIPROCAL, ScalarOp.RSQRT):
                function = reciprocal if operation == ScalarOp.RECIPROCAL else rsqrt
                mult[chosen], exp[chosen] = function(a[chosen].astype(np.int64))
                continue
            low, high, bounds = _DENOMINATOR_RANGE
            for value in b[chosen]:
                if not low <= value < high:
                    raise ValueError(f"{operation.name} needs b in {bounds}, not {value}")
            num, den = a[chosen], b[chosen]
            narrow = np.array([-(1 << 63) <= value < 1 << 63 for value in num], dtype=bool)
            result = np.empty(num.shape, dtype=object)
            if operation == ScalarOp.FLOOR_DIV:
                result[narrow] = np.floor_divide(num[narrow].astype(np.int64),
                                                 den[narrow].astype(np.int64))
                result[~narrow] = np.floor_divide(num[~narrow], den[~narrow])  # Python //
            else:
                result[narrow] = div_round(num[narrow].astype(np.int64),
                                           den[narrow].astype(np.int64))
                result[~narrow] = [_div_round_wide(n, d) for n, d in
                                   zip(num[~narrow], den[~narrow], strict=True)]
            quotient[chosen] = [int(value) for value in result]
        return quotient, mult, exp

    def expected_cycles(self, op, a=None, b=None):
        """Cycles of one operation from its input transfer to its output transfer, both
        included, with a sink that is always ready. The count depends on ``op`` only (the
        operands are accepted so that a whole operation can be passed)."""
        op = ScalarOp(op)
        cycles = 4 + self.DIVIDE_STEPS[op]
        if op == ScalarOp.RSQRT:
            cycles += self.ROOT_STEPS + 1
        return cycles

    # -- the hardware ------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        m.submodules.divider = divider = RestoringDivider(NUMERATOR_BITS, _DIVISOR_BITS)
        m.submodules.root = root = IntegerSqrt(_ROOT_RADICAND_BITS)

        # The operation, captured at the input transfer.
        op = Signal(ScalarOp)
        a = Signal(signed(NUMERATOR_BITS))
        b = Signal(unsigned(DENOMINATOR_BITS))
        result = Signal(scalar_output_layout)
        m.d.comb += self.o_stream.payload.eq(result)

        # Operand preparation: |a| for the divisions; for RECIPROCAL and RSQRT the bit length
        # n of v = a and the normalised divisor v * 2**(64 - n) (64 - 2 ceil(n / 2) for RSQRT),
        # which lies in [2**63, 2**64) (RSQRT: [2**62, 2**64)).
        negative = a < 0
        magnitude = Mux(negative, -a, a).as_unsigned()[:NUMERATOR_BITS]
        v = a.as_unsigned()[:_DIVISOR_BITS]
        length = bit_length(m, v)
        half = (length + 1) >> 1
        normalise = Signal(range(_DIVISOR_BITS))
        m.d.comb += normalise.eq(Mux(op == ScalarOp.RSQRT, _DIVISOR_BITS - 2 * half,
                                     _DIVISOR_BITS - length))
        with m.Switch(op):
            with m.Case(ScalarOp.FLOOR_DIV, ScalarOp.ROUND_DIV):
                m.d.comb += [divider.head.eq(0), divider.numerator.eq(magnitude),
                             divider.divisor.eq(b), divider.steps.eq(NUMERATOR_BITS)]
            with m.Case(ScalarOp.RECIPROCAL):
                m.d.comb += [divider.head.eq(_RECIPROCAL_HEAD), divider.numerator.eq(0),
                             divider.divisor.eq(v << normalise),
                             divider.steps.eq(_RECIPROCAL_STEPS)]
            with m.Case(ScalarOp.RSQRT):
                m.d.comb += [divider.head.eq(_RSQRT_HEAD), divider.numerator.eq(0),
                             divider.divisor.eq(v << normalise),
                             divider.steps.eq(_RSQRT_STEPS)]

        # Divisions: the floor quotient and remainder from |a| = q b + r, then half to even.
        q, r = divider.quotient, divider.remainder
        inexact = r != 0
        floor_quotient = Mux(negative, -(q + inexact), q)
        floor_remainder = Mux(negative & inexact, b - r, r)
        twice = Cat(Const(0, 1), floor_remainder)
        round_up = (twice > b) | ((twice == b) & floor_quotient[0])

        # RECIPROCAL: round the 17-bit quotient half to even (twice the remainder against the
        # normalised divisor; an exact half cannot occur, but the rule is kept as numerics
        # states it), then carry 2**16 into the exponent.
        twice_v = Cat(Const(0, 1), r)
        rounded = q[:_RECIPROCAL_STEPS] + ((twice_v > divider.divisor)
                                           | ((twice_v == divider.divisor) & q[0]))
        reciprocal_carry = rounded[SCALE_BITS]
        # RSQRT: the root is in [2**15, 2**16]; 2**16 carries likewise.
        root_carry = root.root[SCALE_BITS]
        exp_base = Const(-(SCALE_BITS - 1), signed(EXP_BITS))  # exp = -(15 + n or c) + carry
        m.d.comb += root.radicand.eq(q[:_ROOT_RADICAND_BITS])

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    m.d.sync += [op.eq(self.i_stream.payload.op), a.eq(self.i_stream.payload.a),
                                 b.eq(self.i_stream.payload.b)]
                    m.next = "PREPARE"
            with m.State("PREPARE"):
                m.d.comb += divider.start.eq(1)
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                with m.If(~divider.busy):
                    m.d.sync += result.eq(0)
                    with m.Switch(op):
                        with m.Case(ScalarOp.FLOOR_DIV):
                            m.d.sync += result.quotient.eq(floor_quotient)
                            m.next = "OUTPUT"
                        with m.Case(ScalarOp.ROUND_DIV):
                            m.d.sync += result.quotient.eq(floor_quotient + round_up)
                            m.next = "OUTPUT"
                        with m.Case(ScalarOp.RECIPROCAL):
                            m.d.sync += [
                                result.mult.eq(Mux(reciprocal_carry, 1 << (SCALE_BITS - 1),
                                                   rounded)),
                                result.exp.eq(exp_base - length + reciprocal_carry),
                            ]
                            m.next = "OUTPUT"
                        with m.Case(ScalarOp.RSQRT):
                            m.d.comb += root.start.eq(1)
                            m.next = "ROOT"
            with m.State("ROOT"):
                with m.If(~root.busy):
                    m.d.sync += [
                        result.mult.eq(Mux(root_carry, 1 << (SCALE_BITS - 1), root.root)),
                        result.exp.eq(exp_base - half + root_carry),
                    ]
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += self.o_stream.valid.eq(1)
                with m.If(self.o_stream.ready):
                    m.next = "IDLE"
        return m


def _div_round_wide(numerator, denominator):
    """:func:`~flightgen.isa.numerics.div_round` on Python integers of any size."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    return quotient + (twice > denominator or (twice == denominator and quotient & 1 == 1))
