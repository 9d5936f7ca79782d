"""The contract between compiler and hardware.

Numeric formats and the numpy semantics of every operation live here, written once and used by
the compiler, the hardware generator and every reference. This package imports no other
flightgen subpackage.
"""

from . import numerics

__all__ = ["numerics"]
