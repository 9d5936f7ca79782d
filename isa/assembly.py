"""Assembler and disassembler: a readable text form of instruction words.

One instruction per line: a mnemonic, then ``field=value`` pairs in any order; ``#`` starts a
comment. Fields left out are 0 (``count2`` and ``count3`` default to 1). ::

    load   buffer=wgt line=0 port=1 addr=0x4000 length=16 release=matrix
    matrix mode=mv keep=8 bits=4 blocks=18 groups=r1*1 wgt=0 mask=0 scale=64 out=0 wait=load
    vector op=softmax length=r1 valid=r1 a=0 out=0
    quant  length=576 src=0 dst=0
    token  fold=1 length=r1 src=448 sc=464 dst=15 lo=18 scale=513
    rescale output=1 length=64 x=480 y=496 a=513 out=336
    store  buffer=vec line=0 port=0 addr=4096+r2*64 length=64 count2=1
    sync   wait=store
    barrier peers=3 slot=1 addr=0 value=2+r5*256 wait=store release=load
    halt

* Values are decimal or ``0x`` hexadecimal.
* ``wait`` and ``release`` take unit names joined by commas (``load,matrix``).
* An adaptive field takes ``imm + rN*mul`` (either part may be left out, ``rN`` alone means a
  multiplier of 1); every register in one instruction must be the same.
* ``buffer`` takes ``vec``, ``act``, ``wgt`` or ``meta``; ``vector op`` an operation name
  (:class:`flightgen.isa.vector.VectorOp`); ``matrix mode`` ``mv`` or ``mm``, ``keep`` the
  columns kept of 16 (16, 8, 4, 2), ``bits`` the code width (8, 4, 2), ``wgroup`` the weight
  group of the scale format (32, 64, 128, 256; ``pair=1`` packs two symmetric groups per
  word).
* ``.word 0x...`` is a raw word; the disassembler writes it for a word no mnemonic can
  express (an illegal opcode or field code), so ``assemble(disassemble(w)) == w`` for every
  word.
"""

import re

from .instructions import ADAPTIVE, WORD_BITS, Buffer, Opcode, SysOp, Unit, decode_fields, encode
from .matrix import BITS_CODES, KEEP_CODES, WGROUP_CODES, MatrixMode
from .vector import VectorOp

__all__ = ["AssemblyError", "assemble", "assemble_line", "disassemble", "disassemble_word"]

_MNEMONICS = {"load": Opcode.LOAD, "store": Opcode.STORE, "matrix": Opcode.MATRIX,
              "vector": Opcode.VECTOR, "quant": Opcode.QUANT, "token": Opcode.TOKEN,
              "rescale": Opcode.RESCALE}
_SYS = {op.name.lower(): op for op in SysOp}
#: Fields whose text is a name rather than a number: field -> {name: code}.
_NAMED = {
    "buffer": {b.name.lower(): b.value for b in Buffer},
    "mode": {m.name.lower(): m.value for m in MatrixMode},
    "keep": {str(k): v for k, v in KEEP_CODES.items()},
    "bits": {str(k): v for k, v in BITS_CODES.items()},
    "wgroup": {str(k): v for k, v in WGROUP_CODES.items()},
    "op": {o.name.lower(): o.value for o in VectorOp},
}
_UNIT_NAMES = {u.name.lower(): u.value for u in Unit}
_TERM = re.compile(r"^(?:(?P<imm>0x[0-9a-f]+|\d+))?(?:(?(imm)\+)r(?P<reg>[0-7])"
                   r"(?:\*(?P<mul>0x[0-9a-f]+|\d+))?)?$")


class AssemblyError(ValueError):
    """A line the assembler cannot encode; the message names the line."""


def _number(text):
    return int(text, 16) if text.startswith("0x") else int(text)


def assemble_line(text, line=1):
    """Encode one line; return the word, or ``None`` for a blank or comment line."""
    code = text.split("#", 1)[0].strip().lower()
    if not code:
        return None

    def fail(message):
        raise AssemblyError(f"line {line}: {message}: {text.strip()!r}")

    mnemonic, *pairs = code.split()
    if mnemonic == ".word":
        if len(pairs) != 1:
            fail(".word takes one value")
        try:
            word = _number(pairs[0])
        except ValueError:
            fail(f"{pairs[0]!r} is not a number")
        if not 0 <= word < 1 << WORD_BITS:
            fail(f"a word has {WORD_BITS} bits")
        return word
    if mnemonic in _SYS:
        opcode, values = Opcode.SYS, {"op": _SYS[mnemonic].value}
    elif mnemonic in _MNEMONICS:
        opcode, values = _MNEMONICS[mnemonic], {}
        if opcode in (Opcode.LOAD, Opcode.STORE):
            values = {"count2": 1, "count3": 1}
    else:
        fail(f"unknown mnemonic {mnemonic!r}")
    adaptive = ADAPTIVE[opcode]
    register = None
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value:
            fail(f"expected field=value, not {pair!r}")
        if name in ("wait", "release"):
            mask = 0
            for unit in value.split(","):
                if unit not in _UNIT_NAMES:
                    fail(f"unknown unit {unit!r}")
                mask |= 1 << _UNIT_NAMES[unit]
            values[name] = mask
            continue
        if name in _NAMED and not (opcode == Opcode.SYS and name == "op"):
            if value not in _NAMED[name]:
                fail(f"{name} must be one of {', '.join(_NAMED[name])}, not {value!r}")
            values[name] = _NAMED[name][value]
            continue
        match = _TERM.match(value)
        if not match or (match["reg"] is None and match["imm"] is None):
            fail(f"bad value {value!r} for {name}")
        if match["reg"] is not None:
            if name not in adaptive:
                fail(f"{name} is not adaptive")
            reg = int(match["reg"])
            if register is not None and register != reg:
                fail("one instruction can use one length register")
            register = reg
            values[f"{name}_mul"] = _number(match["mul"]) if match["mul"] else 1
        values[name] = _number(match["imm"]) if match["imm"] else 0
    if register is not None:
        values["reg"] = register
    try:
        return encode(opcode, values)
    except ValueError as error:
        fail(str(error))


def assemble(text):
    """Assemble a program; return its words (a list of ints)."""
    words = []
    for number, line in enumerate(text.splitlines(), 1):
        word = assemble_line(line, number)
        if word is not None:
            words.append(word)
    return words


def _units(mask):
    return ",".join(u.name.lower() for u in Unit if mask >> u.value & 1)


def disassemble_word(word):
    """The text of one word (``.word`` when no mnemonic expresses it)."""
    opcode, f = decode_fields(word)
    raw = f".word {word:#x}"
    if opcode is None or (opcode == Opcode.SYS and f["op"] not in {o.value for o in SysOp}):
        return raw
    reverse = {name: {v: k for k, v in table.items()} for name, table in _NAMED.items()}
    if opcode == Opcode.SYS:
        head, skip = SysOp(f["op"]).name.lower(), {"op"}
    else:
        head, skip = opcode.name.lower(), set()
    parts = [head]
    reg = f["reg"]
    adaptive = ADAPTIVE[opcode]
    for name, value in f.items():
        if name in ("opcode", "wait", "release", "reg") or name in skip or \
                name.endswith("_mul"):
            continue
        if name in adaptive and reg and f[f"{name}_mul"]:
            mul = f[f"{name}_mul"]
            term = f"r{reg}" if mul == 1 else f"r{reg}*{mul}"
            imm = f"{value:#x}" if name == "addr" else f"{value}"
            parts.append(f"{name}={imm}+{term}" if value else f"{name}={term}")
            continue
        if name in adaptive and f[f"{name}_mul"]:  # a multiplier with r0: keep it exact
            return raw
        if name in _NAMED and opcode != Opcode.SYS:
            if value not in reverse[name]:
                return raw
            if value or name in ("mode", "keep", "bits", "op", "buffer"):
                parts.append(f"{name}={reverse[name][value]}")
            continue
        if name in ("count2", "count3"):
            if value != 1:
                parts.append(f"{name}={value}")
            continue
        if value:
            parts.append(f"{name}={value:#x}" if name in ("addr", "stride2", "stride3",
                                                         "reserved", "spare") else
                         f"{name}={value}")
    if reg and not any(f.get(f"{name}_mul") for name in adaptive):
        return raw  # a register no field uses
    for name in ("wait", "release"):
        if f[name]:
            parts.append(f"{name}={_units(f[name])}")
    return " ".join(parts)


def disassemble(words):
    """The text of a program, one line per word, each with its index as a comment."""
    return "\n".join(f"{disassemble_word(w):<80} # {i}" for i, w in enumerate(words))
