"""Arithmetic building blocks shared by the datapaths: round half to even and saturation.

These return Amaranth expressions; callers place the pipeline registers. Together they are the
hardware form of :func:`flightgen.isa.numerics.mul_round_shift` and
:func:`~flightgen.isa.numerics.saturate`.
"""

from amaranth import Array, Cat, Const, Mux, Signal, Value, signed

__all__ = ["bit_length", "clamp", "halve_shift", "round_half_even", "round_shift_saturate",
           "round_shift_saturate_steps", "saturate", "StepShift"]


def halve_shift(value, shift):
    """First half of a round-half-to-even right shift of signed ``value`` by ``shift``
    (unsigned, a Value or an int): returns ``(shifted, sticky)`` where ``shifted`` is
    ``(value * 2) >> shift`` (its bit 0 is the guard bit, worth one half) and ``sticky`` says
    whether any bit below the guard bit was set."""
    doubled = Cat(Const(0, 1), value).as_signed()
    return doubled >> shift, _below_guard(value, shift)


def _below_guard(value, shift):
    """Whether ``value`` has a set bit below bit ``shift - 1`` (the guard bit of a right shift
    by ``shift``, a Value, signed or not, or an int): an OR of each bit with a compare of
    ``shift`` against its constant position (no mask shifter, no subtractor)."""
    if isinstance(shift, int):
        return value[:max(shift - 1, 0)].any()
    return Cat(*(value[i] & above for i in range(len(value))
                 if (above := _greater(shift, i + 1)) is not None)).any()


def _greater(value, bound):
    """``value > bound`` for a constant ``bound``: ``None`` when it never holds in the range
    of ``value``'s shape, a constant 1 when it always does (the Verilog then holds no constant
    comparison, which Verilator's lint refuses)."""
    shape = Value.cast(value).shape()
    low = -(1 << (shape.width - 1)) if shape.signed else 0
    high = (1 << (shape.width - 1 if shape.signed else shape.width)) - 1
    if bound >= high:
        return None
    return Const(1) if bound < low else value > bound


def round_half_even(shifted, sticky):
    """Second half: the quotient rounded half to even, from :func:`halve_shift`'s outputs."""
    quotient = shifted[1:].as_signed()
    return quotient + (shifted[0] & (sticky | quotient[0]))


def clamp(value, low, high):
    """``value`` limited to ``[low, high]`` (constants)."""
    return Mux(value > high, high, Mux(value < low, low, value))


def saturate(value, bits):
    """Clip signed ``value`` to the signed ``bits``-bit range."""
    return clamp(value, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def round_shift_saturate(value, shift, bits, *, max_right, max_left):
    """``saturate(round_half_even(value * 2**-shift), bits)`` for a signed ``value`` and a
    signed ``shift`` (a Value) clamped to ``[-max_left, max_right]`` first (a right shift
    beyond the width of ``value`` gives what one by that width does; callers choose
    ``max_left`` so that larger left shifts saturate anyway). One window of ``bits + 2``
    bits is cut from ``value * 2**-shift`` by a single shifter, rather than a full-width
    right shift, a full-width left shift and a saturating compare of both.

    The window holds ``floor(value / 2**shift)`` and the guard bit; the sticky bit is any bit
    of ``value`` below the guard; the result saturates when ``value`` has a bit of magnitude
    at or above ``2**(bits + shift)`` (the window would lose it; for a negative ``value``
    with ``shift < -bits`` always, -1 included), else the rounded window saturates to
    ``bits``."""
    n = len(value)
    s = clamp(shift, -max_left, max_right)
    # value * 2**(max_left + 1): its bit max_left + 1 + i is value's bit i; the guard bit of
    # value * 2**-s is bit t of it
    t = (s + max_left).as_unsigned()[:(max_right + max_left).bit_length()]
    window = (Cat(Const(0, max_left + 1), value).as_signed() >> t)[:bits + 2]
    sticky = _below_guard(value, s)
    sign = value[-1]
    lost = []
    for i in range(max(bits - max_left, 0), n - 1):
        above = _greater(s, i - bits)  # s > i - bits: bit i stays in the window
        if above is None:
            lost.append(value[i] ^ sign)
        elif not isinstance(above, Const):  # (as s <= i - bits: ABC maps it smaller here)
            lost.append((value[i] ^ sign) & (s <= i - bits))
    if max_left > bits:  # the window below bit 0: its top bit is no sign, so -1 is lost too
        lost.append(sign & (s < -bits))
    return _round_window(window, sticky, Cat(*lost).any(), sign, bits)


def round_shift_saturate_steps(value, steps, bits, *, step, low, high):
    """:func:`round_shift_saturate` for a shift of ``step * steps`` bits: ``saturate(
    round_half_even(value * 2**-(step * steps)), bits)`` for a signed ``value`` and a signed
    ``steps`` (a Value) clamped to ``[low, high]`` first.

    With the shift a multiple of ``step``, the window of ``bits + 2`` bits is one of
    ``high - low + 1`` fixed slices of ``value`` (a multiplexer, no shifter), and so are the
    sticky bit (any bit below the guard) and the lost bit (a bit the window would drop,
    which saturates the result). A caller with a shift of any value splits it into
    ``step * steps - fine`` and applies the ``fine`` left shift (``0 <= fine < step``)
    before, where it is cheaper: the block scaler does it in its multiplier's operand."""
    n = len(value)
    sign = value[-1]
    pad = max(0, 1 - step * low)  # value's bit i is bit pad + i of the padded value
    top = pad + step * high + bits + 1
    padded = Cat(Const(0, pad), value, *([sign] * max(0, top - pad - n + 1)))
    windows, stickies, losts = [], [], []
    for k in range(low, high + 1):
        shift = step * k
        windows.append(padded[pad + shift - 1:pad + shift + bits + 1])
        stickies.append(value[:shift - 1].any() if shift >= 2 else Const(0, 1))
        # bits at or above shift + bits leave the window (the sign bit stays, unless the
        # window lies below bit 0)
        kept = max(shift + bits, 0)
        losts.append(Cat(*(value[i] ^ sign for i in range(kept, n - 1)),
                         sign if shift + bits < 0 else Const(0, 1)).any())
    clamped = clamp(steps, low, high)
    index = (clamped - low).as_unsigned()[:(high - low).bit_length()]
    return _round_window(Array(windows)[index], Array(stickies)[index], Array(losts)[index],
                         sign, bits)


class StepShift:
    """A right shift by a signed ``shift`` (a Value) clamped to ``[-max_left, max_right]``,
    split for :func:`round_shift_saturate_steps`: ``clamped = step * steps - fine`` with
    ``0 <= fine < step = 2**fine_bits``. The caller shifts one factor of its product left by
    :attr:`fine` (in a multiplier operand: a few bits wider) and rounds the product with
    :meth:`round`, which picks among ``high - low + 1`` windows instead of shifting.

    Members
    -------
    fine : Value, unsigned ``fine_bits``
    steps : Value, signed: to register beside the product (:attr:`steps_shape`)
    """

    def __init__(self, shift, *, max_right, max_left, fine_bits):
        self.step = 1 << fine_bits
        self.low, self.high = -(max_left >> fine_bits), -(-max_right >> fine_bits)
        clamped = clamp(shift, -max_left, max_right)
        self.fine = (-clamped).as_unsigned()[:fine_bits]
        self.steps = (clamped + self.fine) >> fine_bits

    @property
    def steps_shape(self):
        return signed(max(self.high.bit_length(), (-self.low - 1).bit_length()) + 1)

    def round(self, value, steps, bits):
        """``saturate(round_half_even(value * 2**-(step * steps)), bits)`` (``steps`` this
        split's :attr:`steps`, registered or not)."""
        return round_shift_saturate_steps(value, steps, bits, step=self.step, low=self.low,
                                          high=self.high)


def _round_window(window, sticky, lost, sign, bits):
    """The result of a window (the quotient's bits above its guard bit), the sticky bit below
    and whether bits were lost above: rounded half to even, saturated to ``bits``."""
    quotient = window[1:].as_signed()
    rounded = quotient + (window[0] & (sticky | quotient[0]))
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(lost, Mux(sign, low, high), saturate(rounded, bits))


def bit_length(m, value, name=None):
    """A priority encoder in ``m``: the bit length of unsigned ``value`` (0 for 0), as a
    combinational signal (:func:`flightgen.isa.numerics.bit_length` in hardware)."""
    length = Signal(range(len(value) + 1), name=name)
    m.d.comb += length.eq(0)
    for bit in range(len(value)):  # later (higher) bits take priority
        with m.If(value[bit]):
            m.d.comb += length.eq(bit + 1)
    return length
