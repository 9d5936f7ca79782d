"""The model compiler: frontends (GGUF, safetensors), IR, passes, code generation, binaries.

Imports :mod:`flightgen.isa` only: the compiler targets the instruction set, never the RTL.
"""
