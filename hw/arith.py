"""Arithmetic building blocks shared by the datapaths: round half to even and saturation.

These return Amaranth expressions; callers place the pipeline registers. Together they are the
hardware form of :func:`flightgen.isa.numerics.mul_round_shift` and
:func:`~flightgen.isa.numerics.saturate`.
"""

from amaranth import Cat, Const, Mux

__all__ = ["halve_shift", "round_half_even", "saturate"]


def halve_shift(value, shift):
    """First half of a round-half-to-even right shift of signed ``value`` by ``shift``
    (unsigned, a Value or an int): returns ``(shifted, sticky)`` where ``shifted`` is
    ``(value * 2) >> shift`` (its bit 0 is the guard bit, worth one half) and ``sticky`` says
    whether any bit below the guard bit was set."""
    doubled = Cat(Const(0, 1), value).as_signed()
    below = (Const(1, len(doubled)) << shift) - 1
    return doubled >> shift, (doubled.as_unsigned() & below).any()


def round_half_even(shifted, sticky):
    """Second half: the quotient rounded half to even, from :func:`halve_shift`'s outputs."""
    quotient = shifted[1:].as_signed()
    return quotient + (shifted[0] & (sticky | quotient[0]))


def saturate(value, bits):
    """Clip signed ``value`` to the signed ``bits``-bit range."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value > high, high, Mux(value < low, low, value))
